"""The real CIFAR-10/100 source: download, md5 verification, safe reading, parsing and cache.

The official python-version archives are streamed to a temporary file (with a progress bar),
verified against their md5, read member by member straight from the tar (nothing is extracted to
disk; members with absolute paths, ``..`` or links are refused), unpickled with an unpickler that
only admits numpy arrays, and cached as one ``.pt`` file per data set holding uint8
``[N, 3, 32, 32]`` images and int64 labels. Download, verification and the atomic cache (the
marker records the verified md5) are ``problems.data.fetch``'s, shared with the MNIST source.

Locations: the data directory is ``root`` if given, else ``$CURVBENCH_DATA``, else
``$XDG_CACHE_HOME/curvbench``, else ``~/.cache/curvbench``. The download base URL is
``base_url`` if given, else ``$CURVBENCH_CIFAR_URL``, else the official Toronto URL.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from torch import Tensor

from problems.data import fetch
from problems.data.errors import ArchiveFormatError, UnsafeArchiveError
from problems.data.fetch import (
    ENV_DATA_DIR,
    data_dir,
    file_md5,
    load_cached,
    lookup_dataset,
    reset_unless_cached,
    stream_download,
    verified_file,
    write_cache,
)

__all__ = [
    "DATASETS",
    "ENV_DATA_DIR",
    "CifarSpec",
    "cache_file",
    "data_dir",
    "download",
    "file_md5",
    "is_cached",
    "load_cifar",
    "marker_file",
    "parse_archive",
    "read_marker",
    "resolve_dataset",
    "stream_download",
]

DEFAULT_BASE_URL = "https://www.cs.toronto.edu/~kriz"
ENV_BASE_URL = "CURVBENCH_CIFAR_URL"
IMAGE_SHAPE = (3, 32, 32)


@dataclass(frozen=True)
class CifarSpec:
    """Where a CIFAR data set comes from and how its archive is laid out."""

    name: str
    archive: str
    md5: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    num_classes: int


DATASETS: dict[str, CifarSpec] = {
    "cifar10": CifarSpec(
        name="cifar10",
        archive="cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        label_key="labels",
        num_classes=10,
    ),
    "cifar100": CifarSpec(
        name="cifar100",
        archive="cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        folder="cifar-100-python",
        train_files=("train",),
        test_files=("test",),
        label_key="fine_labels",
        num_classes=100,
    ),
}


def resolve_dataset(name: str) -> CifarSpec:
    """Look up a data set by its name or a problem name (``cifar10_3c3d`` -> cifar10)."""
    return lookup_dataset(DATASETS, name, "cifar10_3c3d")


def cache_file(dataset: str, root: str | os.PathLike | None = None) -> Path:
    """Return the path of the cached tensors of ``dataset``."""
    return fetch.cache_file(resolve_dataset(dataset).name, root)


def marker_file(dataset: str, root: str | os.PathLike | None = None) -> Path:
    """Return the path of the JSON marker that makes the cache of ``dataset`` valid."""
    return fetch.marker_file(resolve_dataset(dataset).name, root)


def read_marker(dataset: str, root: str | os.PathLike | None = None) -> dict | None:
    """Return the marker of a valid cache; None if it is missing, partial or inconsistent."""
    return fetch.read_marker(resolve_dataset(dataset).name, root)


def is_cached(dataset: str, root: str | os.PathLike | None = None) -> bool:
    """Whether a verified, complete cache of ``dataset`` exists in the data directory."""
    return read_marker(dataset, root) is not None


def _check_members(tar: tarfile.TarFile, archive: str) -> None:
    """Refuse archives whose members would escape the directory they are extracted to."""
    for member in tar.getmembers():
        path = PurePosixPath(member.name)
        if path.is_absolute() or ".." in path.parts or member.issym() or member.islnk():
            raise UnsafeArchiveError(
                f"{archive}: refusing unsafe member {member.name!r} (absolute, '..' or a link)"
            )


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits only what the CIFAR batches contain: numpy arrays and builtin containers."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"CIFAR batch refers to {module}.{name}, not allowed")
        return super().find_class(module, name)


def _read_batch(tar: tarfile.TarFile, member: str, label_key: str) -> tuple[Tensor, Tensor]:
    try:
        raw = tar.extractfile(member)
    except KeyError as err:
        raise ArchiveFormatError(f"archive lacks {member!r}") from err
    if raw is None:
        raise ArchiveFormatError(f"archive member {member!r} is not a file")
    batch = _NumpyOnlyUnpickler(io.BytesIO(raw.read()), encoding="latin1").load()
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or label_key not in batch:
        raise ArchiveFormatError(f"{member!r} lacks 'data' or {label_key!r}: {sorted(batch)}")
    data = np.asarray(batch["data"], dtype=np.uint8)
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (data.shape[0],):
        raise ArchiveFormatError(
            f"{member!r}: data {data.shape} / labels {labels.shape}, expected [N, 3072] / [N]"
        )
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return images, torch.from_numpy(labels.copy())


def parse_archive(path: str | os.PathLike, spec: CifarSpec) -> dict[str, Tensor]:
    """Read the train and test batches of a CIFAR python archive (nothing written to disk).

    Returns:
        ``{"x_train", "y_train", "x_test", "y_test"}``: uint8 ``[N, 3, 32, 32]``, int64 ``[N]``.

    """
    with tarfile.open(path, "r:*") as tar:
        _check_members(tar, Path(path).name)
        out = {}
        for split, files in (("train", spec.train_files), ("test", spec.test_files)):
            parts = [_read_batch(tar, f"{spec.folder}/{f}", spec.label_key) for f in files]
            out[f"x_{split}"] = torch.cat([p[0] for p in parts])
            out[f"y_{split}"] = torch.cat([p[1] for p in parts])
    for split in ("train", "test"):
        y = out[f"y_{split}"]
        if y.numel() and (y.min() < 0 or y.max() >= spec.num_classes):
            raise ArchiveFormatError(f"{split} labels outside [0, {spec.num_classes})")
    return out


def download(
    dataset: str,
    root: str | os.PathLike | None = None,
    *,
    force: bool = False,
    base_url: str | None = None,
    md5: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Fetch, verify, parse and cache a CIFAR data set; returns the cache file.

    An archive already lying in the data directory under its official name (for offline
    machines) is verified and used instead of downloading.

    Args:
        dataset: ``cifar10``, ``cifar100`` or a problem name.
        root: Data directory (see the module docstring for the default).
        force: Rebuild even if a valid cache exists.
        base_url: Where the archives live (default ``$CURVBENCH_CIFAR_URL`` or the official URL).
        md5: Expected archive md5 (default the official one).
        progress: Show a tqdm progress bar.
        timeout: Network timeout in seconds.

    Raises:
        ChecksumError: The archive's md5 differs (the bad file is removed).
        DownloadError: The download failed or ended early (the partial file is removed).

    """
    spec = resolve_dataset(dataset)
    cached = reset_unless_cached(spec.name, root, force)
    if cached is not None:
        return cached
    base = base_url or os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL
    with verified_file(
        data_dir(root), spec.archive, base, md5 or spec.md5, timeout=timeout, progress=progress
    ) as (path, actual):
        tensors = parse_archive(path, spec)
    return write_cache(tensors, spec.name, root, archive=spec.archive, archive_md5=actual)


def missing_message(dataset: str, root: str | os.PathLike | None = None) -> str:
    """How to get ``dataset`` when its cache is missing."""
    spec = resolve_dataset(dataset)
    directory = data_dir(root)
    return (
        f"{spec.name} is not cached in {directory}. Get it with `curvbench data download "
        f"{spec.name}` (add `--data-dir DIR` or set ${ENV_DATA_DIR} for another directory; "
        f"offline: put {spec.archive} into that directory first), or point `--data-dir` / "
        f"${ENV_DATA_DIR} at a directory that has it. Use source='synthetic' for data-free runs."
    )


def load_cifar(
    dataset: str, root: str | os.PathLike | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Load the cached ``(x_train, y_train, x_test, y_test)`` on the CPU (uint8 / int64).

    Raises:
        DataNotFoundError: No valid cache; the message says how to get one.

    """
    spec = resolve_dataset(dataset)
    return load_cached(spec.name, root, IMAGE_SHAPE, missing_message(spec.name, root))


#: The loader under the name every real source has (``problems.data.datasets.REAL_SOURCES``).
load = load_cifar
