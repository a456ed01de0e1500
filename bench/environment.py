"""The environment sidecar: what ran where, recorded next to every result file.

``collect_environment(device)`` returns a JSON-serialisable dict (torch / CUDA / cuDNN versions,
device name, driver, threads, git commit, cudnn.benchmark, UTC time, package versions). Both the
overhead benchmark and the grid search write it beside their CSVs.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

#: Packages whose versions are recorded when installed.
RECORDED_PACKAGES = ("numpy", "pandas", "backpack-for-pytorch", "opacus", "deepobs", "curvbench")


def git_commit(repo: str | Path | None = None) -> dict[str, Any]:
    """Return the current commit hash and whether the work tree has uncommitted changes.

    Args:
        repo: a directory inside the repository (default: this file's repository).

    Returns:
        ``{"commit": sha or None, "dirty": bool or None}``; ``None`` outside a git checkout.

    """
    cwd = Path(repo) if repo is not None else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": sha, "dirty": bool(status.strip())}


def package_versions(names: tuple[str, ...] = RECORDED_PACKAGES) -> dict[str, str | None]:
    """Installed versions of ``names`` (``None`` for a package that is not installed)."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cpu_model() -> str:
    """Return the CPU model name (from /proc/cpuinfo on Linux, else ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def nvidia_driver_version() -> str | None:
    """Return the NVIDIA driver version from ``nvidia-smi`` (``None`` when unavailable)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=True,
            timeout=20,
        ).stdout
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return None
    first = out.strip().splitlines()
    return first[0].strip() if first else None


def device_info(device: str | torch.device) -> dict[str, Any]:
    """Name and memory of ``device``; for CUDA also capability, driver and cuDNN settings."""
    device = torch.device(device)
    info: dict[str, Any] = {"device": str(device), "device_type": device.type}
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        info.update(
            device_name=props.name,
            device_memory_gb=round(props.total_memory / 2**30, 2),
            compute_capability=f"{props.major}.{props.minor}",
            driver=nvidia_driver_version(),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            cudnn_benchmark=bool(torch.backends.cudnn.benchmark),
            cudnn_deterministic=bool(torch.backends.cudnn.deterministic),
        )
    else:
        info.update(device_name=cpu_model(), cpu_count=os.cpu_count())
    return info


def collect_environment(device: str | torch.device = "cpu") -> dict[str, Any]:
    """Everything that identifies a measurement's environment, as a JSON-serialisable dict.

    Args:
        device: the device the measurements ran on.

    Returns:
        A flat dict with torch / CUDA / cuDNN versions, device name, driver, threads, git commit,
        cudnn.benchmark, UTC time, python, platform and package versions.

    """
    env: dict[str, Any] = {
        "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": platform.node(),
        "torch": torch.__version__,
        "torch_cuda_build": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "num_threads": torch.get_num_threads(),
        "num_interop_threads": torch.get_num_interop_threads(),
        "default_dtype": str(torch.get_default_dtype()),
    }
    env.update(device_info(device))
    env.update(git_commit())
    env["packages"] = package_versions()
    return env


def slug(text: str) -> str:
    """``"NVIDIA H200 NVL"`` -> ``"nvidia-h200-nvl"`` (lower case, runs of other chars -> ``-``)."""
    return "-".join("".join(c if c.isalnum() else " " for c in text.lower()).split()) or "unknown"


def machine_slug(device: str | torch.device = "cpu") -> str:
    """Return a file-name-safe name of the machine a device belongs to, for result files.

    CUDA: the GPU's name (``nvidia-h200``); CPU: the core count (``cpu-2core``), since ratios on a
    CPU depend mostly on how many cores share the work.
    """
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return slug(torch.cuda.get_device_name(index))
    return f"{device.type}-{os.cpu_count() or 1}core"
