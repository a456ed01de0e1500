"""The numeric flags every overhead measurement runs under: TF32, cuDNN, determinism.

PyTorch's defaults differ between kernels (cuDNN convolutions may use TF32, matmuls not) and a
library may flip them; a ratio compares two steps only if both ran under the same flags. The
harness therefore sets every flag explicitly before a group is measured and again before each
variant's first call, and records them in the sidecar (``config.numerics``).

Defaults: full float32 (no TF32 anywhere, ``float32_matmul_precision="highest"``), no
``cudnn.benchmark``, nondeterministic kernels allowed. ``--tf32`` allows TF32 in matmuls and cuDNN;
``--deterministic`` calls ``torch.use_deterministic_algorithms(True)`` (and sets
``cudnn.deterministic``, clears ``cudnn.benchmark``, sets ``CUBLAS_WORKSPACE_CONFIG``).

Under ``--deterministic`` our MaxPool2d rules (``extensions/derivatives.py``: ``scatter_add_`` in
the transposed Jacobian, ``index_add_`` in KFRA's) run on torch's deterministic CUDA kernels
(torch documents both as deterministic in this mode), which are slower than the default ones:
the quantities in :data:`SCATTER_QUANTITIES` on a network with MaxPool2d are timed, but not
comparable with a run without the flag. An operation that has no deterministic CUDA kernel raises
in torch; its row is ``unsupported`` with torch's message.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

import torch

#: ours' quantities whose backward passes through ``scatter_add_`` / ``index_add_`` on a network
#: with MaxPool2d (every second-order quantity propagates through the pooling layer)
SCATTER_QUANTITIES = ("DiagGGNExact", "DiagGGNMC", "DiagHessian", "KFAC", "KFLR", "KFRA")
#: what torch says when an operation has no deterministic kernel (classified ``unsupported``)
NONDETERMINISTIC_MESSAGE = "does not have a deterministic implementation"


@dataclass(frozen=True)
class Numerics:
    """The flags a measurement runs under (see the module docstring)."""

    tf32: bool = False
    cudnn_benchmark: bool = False
    deterministic: bool = False

    def apply(self) -> dict[str, Any]:
        """Set every flag; return :func:`current_flags` (what is now in force)."""
        # the precision call first: it also sets matmul.allow_tf32
        torch.set_float32_matmul_precision("high" if self.tf32 else "highest")
        torch.backends.cuda.matmul.allow_tf32 = self.tf32
        torch.backends.cudnn.allow_tf32 = self.tf32
        torch.backends.cudnn.benchmark = self.cudnn_benchmark and not self.deterministic
        torch.backends.cudnn.deterministic = self.deterministic
        if self.deterministic:
            # cuBLAS needs this before its first handle for deterministic matmuls
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(self.deterministic)
        return current_flags()

    def record(self) -> dict[str, Any]:
        """Apply; return the requested settings and the flags in force (for the sidecar)."""
        return {"requested": asdict(self), "flags": self.apply()}


def current_flags() -> dict[str, Any]:
    """Every flag that changes which kernels run, as torch reports it now."""
    return {
        "cuda_matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "deterministic_algorithms": bool(torch.are_deterministic_algorithms_enabled()),
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }


def scatter_affected(problems: list[str], quantities: list[str], backends: list[str]) -> list[str]:
    """Describe the (problem, quantity) pairs of ours that ``--deterministic`` slows down."""
    if "ours" not in backends:
        return []
    from bench.overhead.problem_setup import problem_setup

    hit = [q for q in quantities if q in SCATTER_QUANTITIES]
    out = []
    for problem in problems:
        model = problem_setup(problem).model_fn()
        if hit and any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules()):
            out.append(f"{problem}: {' '.join(hit)}")
    return out


def current_flags_text(numerics: Numerics) -> str:
    """One line of the flags ``numerics`` puts in force (for the plan printout)."""
    flags = numerics.apply()
    return ", ".join(f"{k}={v}" for k, v in flags.items() if k != "cublas_workspace_config")
