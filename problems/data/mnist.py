"""The real MNIST and Fashion-MNIST source: the official IDX files, md5-verified, parsed and cached.

Each data set is four gzipped IDX files (``train-images-idx3-ubyte.gz``, ``train-labels-...``,
``t10k-images-...``, ``t10k-labels-...``), the files torchvision's ``MNIST`` / ``FashionMNIST``
download and DeepOBS's PyTorch ``mnist`` / ``fmnist`` data sets read through torchvision (its TF
data sets read the same files, fetched by ``deepobs_prepare_data.sh``). Each file is fetched (or
taken from the data directory, offline), verified against torchvision's md5, decompressed in
memory and parsed; the four are cached together as ``mnist.pt`` / ``fmnist.pt`` (uint8
``[N, 1, 28, 28]`` images, int64 labels) with the atomic cache and marker of
``problems.data.fetch`` (the marker records every file's md5).

Download base URL: ``base_url`` if given, else ``$CURVBENCH_MNIST_URL`` / ``$CURVBENCH_FMNIST_URL``,
else the default below. MNIST's original host ``http://yann.lecun.com/exdb/mnist/`` (DeepOBS's
script) now often refuses downloads; torchvision's first mirror serves the identical files.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from problems.data.errors import ArchiveFormatError
from problems.data.fetch import (
    ENV_DATA_DIR,
    data_dir,
    load_cached,
    lookup_dataset,
    read_marker,
    reset_unless_cached,
    verified_file,
    write_cache,
)

#: The official file names, in the order (train images, train labels, test images, test labels).
FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
IMAGE_SHAPE = (1, 28, 28)
#: IDX type code of unsigned bytes (the only one the four files use).
_IDX_UBYTE = 0x08


@dataclass(frozen=True)
class MnistSpec:
    """Where an MNIST-format data set comes from.

    Attributes:
        name: ``mnist`` or ``fmnist``.
        base_url: Default download location of the four files.
        env_url: Environment variable that overrides ``base_url``.
        md5s: The md5 of each file in ``FILES`` (torchvision's ``resources``).
        num_classes: 10.

    """

    name: str
    base_url: str
    env_url: str
    md5s: tuple[str, str, str, str]
    num_classes: int = 10


DATASETS: dict[str, MnistSpec] = {
    "mnist": MnistSpec(
        name="mnist",
        base_url="https://ossci-datasets.s3.amazonaws.com/mnist",
        env_url="CURVBENCH_MNIST_URL",
        md5s=(
            "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "d53e105ee54ea40749a09fcbcd1e9432",
            "9fb629c4189551a2d022fa330f9573f3",
            "ec29112dd5afa0611ce80d1b7f02629c",
        ),
    ),
    "fmnist": MnistSpec(
        name="fmnist",
        base_url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com",
        env_url="CURVBENCH_FMNIST_URL",
        md5s=(
            "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "25c81989df183df01b3e8a0aad5dffbe",
            "bef4ecab320f06d8554ea6380940ec79",
            "bb300cfdad3c16e7a12a480ee83cd310",
        ),
    ),
}


def resolve_dataset(name: str) -> MnistSpec:
    """Look up a data set by its name or a problem name (``fmnist_2c2d`` -> fmnist)."""
    return lookup_dataset(DATASETS, name, "mnist_logreg")


def is_cached(dataset: str, root: str | os.PathLike | None = None) -> bool:
    """Whether a verified, complete cache of ``dataset`` exists in the data directory."""
    return read_marker(resolve_dataset(dataset).name, root) is not None


def parse_idx(raw: bytes, what: str = "IDX data") -> np.ndarray:
    """Parse an (uncompressed) IDX file of unsigned bytes.

    The format: two zero bytes, the type code (``0x08``: uint8), the number of dimensions ``d``,
    ``d`` big-endian uint32 sizes, then the data in C order.

    Args:
        raw: The file's bytes.
        what: A name for error messages.

    Returns:
        A uint8 array of the stored shape.

    Raises:
        ArchiveFormatError: A bad header, another type code, or a size mismatch.

    """
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ArchiveFormatError(f"{what}: not an IDX file (bad magic number)")
    if raw[2] != _IDX_UBYTE:
        raise ArchiveFormatError(f"{what}: IDX type code {raw[2]:#04x}, expected 0x08 (uint8)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ArchiveFormatError(f"{what}: IDX header truncated")
    shape = tuple(int(v) for v in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64))
    if len(raw) - header != expected:
        raise ArchiveFormatError(
            f"{what}: {len(raw) - header} data bytes, the header {shape} announces {expected}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def read_idx_gz(path: str | os.PathLike) -> np.ndarray:
    """Decompress and parse a gzipped IDX file (``parse_idx``); corrupt gzip is a format error."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as err:
        raise ArchiveFormatError(f"{Path(path).name}: not a valid gzip file: {err}") from err
    return parse_idx(raw, Path(path).name)


def parse_files(paths: dict[str, Path], spec: MnistSpec) -> dict[str, Tensor]:
    """Parse the four files (``FILES`` -> path) of an MNIST-format data set.

    Returns:
        ``{"x_train", "y_train", "x_test", "y_test"}``: uint8 ``[N, 1, 28, 28]``, int64 ``[N]``.

    Raises:
        ArchiveFormatError: Wrong shapes, image/label counts that differ, or labels outside
            ``[0, num_classes)``.

    """
    out = {}
    for split, (images_file, labels_file) in (("train", FILES[:2]), ("test", FILES[2:])):
        images, labels = read_idx_gz(paths[images_file]), read_idx_gz(paths[labels_file])
        if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE[1:] or labels.ndim != 1:
            raise ArchiveFormatError(
                f"{split}: images {images.shape} / labels {labels.shape}, "
                "expected [N, 28, 28] / [N]"
            )
        if images.shape[0] != labels.shape[0]:
            raise ArchiveFormatError(
                f"{split}: {images.shape[0]} images but {labels.shape[0]} labels"
            )
        if labels.size and labels.max() >= spec.num_classes:
            raise ArchiveFormatError(f"{split} labels outside [0, {spec.num_classes})")
        out[f"x_{split}"] = torch.from_numpy(images.copy()).unsqueeze(1)
        out[f"y_{split}"] = torch.from_numpy(labels.astype(np.int64))
    return out


def download(
    dataset: str,
    root: str | os.PathLike | None = None,
    *,
    force: bool = False,
    base_url: str | None = None,
    md5s: dict[str, str] | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Fetch, verify, parse and cache MNIST or Fashion-MNIST; returns the cache file.

    Files already lying in the data directory under their official names (for offline machines)
    are verified and used instead of downloading.

    Args:
        dataset: ``mnist``, ``fmnist`` or a problem name.
        root: Data directory (default ``$CURVBENCH_DATA`` or the user cache).
        force: Rebuild even if a valid cache exists.
        base_url: Where the files live (default ``$CURVBENCH_MNIST_URL`` /
            ``$CURVBENCH_FMNIST_URL`` or the official location).
        md5s: Expected md5 per file name (default the official ones; missing names keep theirs).
        progress: Show a tqdm progress bar.
        timeout: Network timeout in seconds.

    Raises:
        ChecksumError: A file's md5 differs (a downloaded file is removed, a local one kept).
        DownloadError: A download failed or ended early (the partial file is removed).

    """
    spec = resolve_dataset(dataset)
    cached = reset_unless_cached(spec.name, root, force)
    if cached is not None:
        return cached
    base = base_url or os.environ.get(spec.env_url) or spec.base_url
    expected = {**dict(zip(FILES, spec.md5s)), **(md5s or {})}
    directory = data_dir(root)
    with contextlib.ExitStack() as stack:
        fetched = {
            f: stack.enter_context(
                verified_file(directory, f, base, expected[f], timeout=timeout, progress=progress)
            )
            for f in FILES
        }
        tensors = parse_files({f: path for f, (path, _) in fetched.items()}, spec)
    return write_cache(tensors, spec.name, root, file_md5s={f: m for f, (_, m) in fetched.items()})


def missing_message(dataset: str, root: str | os.PathLike | None = None) -> str:
    """How to get ``dataset`` when its cache is missing."""
    spec = resolve_dataset(dataset)
    return (
        f"{spec.name} is not cached in {data_dir(root)}. Get it with `curvbench data download "
        f"{spec.name}` or problems.data.download({spec.name!r}) (another directory: --data-dir / "
        f"root=DIR or ${ENV_DATA_DIR}; offline: put {', '.join(FILES)} into that directory "
        "first). Use source='synthetic' for data-free runs."
    )


def load_mnist(
    dataset: str, root: str | os.PathLike | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Load the cached ``(x_train, y_train, x_test, y_test)`` on the CPU (uint8 / int64).

    Raises:
        DataNotFoundError: No valid cache; the message says how to get one.

    """
    spec = resolve_dataset(dataset)
    return load_cached(spec.name, root, IMAGE_SHAPE, missing_message(spec.name, root))


#: The loader under the name every real source has (``problems.data.datasets.REAL_SOURCES``).
load = load_mnist
