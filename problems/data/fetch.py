"""What every real data source shares: the data directory, verified downloads and the tensor cache.

* ``data_dir``: ``root`` if given, else ``$CURVBENCH_DATA``, else ``$XDG_CACHE_HOME/curvbench``,
  else ``~/.cache/curvbench``.
* ``verified_file``: a file under its official name in the data directory (for offline machines)
  is md5-verified and used as is; otherwise it is streamed to a temporary file (with a progress
  bar), verified, handed to the caller and removed afterwards.
* ``write_cache`` / ``read_marker`` / ``load_cached``: one ``.pt`` file of uint8 images and int64
  labels per data set plus a JSON marker (format, data set, cache size, and whatever the source
  records, e.g. the archive md5). Both are written to a temporary file and moved into place with
  ``os.replace``, marker last, so an interrupted or corrupt download never leaves a cache that
  passes as valid.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import torch
from torch import Tensor
from tqdm.auto import tqdm

from problems.data.errors import (
    ChecksumError,
    DataNotFoundError,
    DownloadError,
    UnknownDatasetError,
)

ENV_DATA_DIR = "CURVBENCH_DATA"
CACHE_FORMAT = 1
_CHUNK_BYTES = 1 << 20
_Spec = TypeVar("_Spec")


def lookup_dataset(table: dict[str, _Spec], name: str, example: str) -> _Spec:
    """Look up a data set by its name or a problem name (``cifar10_3c3d`` -> ``cifar10``).

    Args:
        table: Canonical name -> spec.
        name: A data set name or a problem name (the part before the first ``_``; any case).
        example: A problem name for the error message.

    Raises:
        UnknownDatasetError: The message lists the valid names.

    """
    key = str(name).lower().split("_", 1)[0]
    if key not in table:
        raise UnknownDatasetError(
            f"unknown data set {name!r}; valid names: {', '.join(table)} "
            f"(or a problem name such as {example})"
        )
    return table[key]


def data_dir(root: str | os.PathLike | None = None) -> Path:
    """Return the data directory: ``root``, ``$CURVBENCH_DATA`` or the user cache (not created)."""
    if root is not None:
        return Path(root).expanduser()
    if os.environ.get(ENV_DATA_DIR):
        return Path(os.environ[ENV_DATA_DIR]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "curvbench"


def file_md5(path: str | os.PathLike) -> str:
    """Compute the md5 hex digest of a file, read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write(path: Path, write: Callable[[str], Any]) -> None:
    """Call ``write(tmp_path)`` then ``os.replace`` it onto ``path``; no partial file remains."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def stream_download(url: str, dest: Path, timeout: float = 60.0, progress: bool = True) -> str:
    """Stream ``url`` into ``dest`` with a progress bar; returns the md5 of the bytes received.

    Raises:
        DownloadError: On a network error or when fewer bytes than announced arrive.

    """
    digest = hashlib.md5()
    received = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:
            total = response.headers.get("Content-Length")
            total = int(total) if total is not None else None
            with tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=f"download {PurePosixPath(url).name}",
                disable=not progress,
            ) as bar:
                for chunk in iter(lambda: response.read(_CHUNK_BYTES), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except (OSError, ValueError) as err:  # URLError, HTTPError, IncompleteRead, timeouts
        raise DownloadError(f"download of {url} failed after {received} bytes: {err}") from err
    if total is not None and received != total:
        raise DownloadError(f"download of {url} ended early: {received} of {total} bytes")
    return digest.hexdigest()


@contextlib.contextmanager
def verified_file(
    directory: Path,
    filename: str,
    base_url: str,
    md5: str,
    *,
    timeout: float = 60.0,
    progress: bool = True,
) -> Iterator[tuple[Path, str]]:
    """Yield ``(path, md5)`` of ``filename``, verified; a downloaded copy is removed afterwards.

    Args:
        directory: The data directory (must exist). A file ``directory / filename`` is used
            offline instead of downloading (and left in place).
        filename: The official file name; the URL is ``base_url/filename``.
        base_url: Where the files live.
        md5: The expected md5 hex digest.
        timeout: Network timeout in seconds.
        progress: Show a tqdm progress bar.

    Raises:
        ChecksumError: The md5 differs (a downloaded file is removed; a local one is kept).
        DownloadError: The download failed or ended early (the partial file is removed).

    """
    expected = md5.lower()
    local = directory / filename
    if local.is_file():
        actual = file_md5(local)
        if actual != expected:
            raise ChecksumError(str(local), expected, actual, removed=False)
        yield local, actual
        return
    fd, tmp_name = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=directory)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        actual = stream_download(f"{base_url.rstrip('/')}/{filename}", tmp, timeout, progress)
        if actual != expected:
            raise ChecksumError(filename, expected, actual)
        yield tmp, actual
    finally:
        tmp.unlink(missing_ok=True)


def cache_file(name: str, root: str | os.PathLike | None = None) -> Path:
    """Return the path of the cached tensors of the data set ``name`` (a canonical name)."""
    return data_dir(root) / f"{name}.pt"


def marker_file(name: str, root: str | os.PathLike | None = None) -> Path:
    """Return the path of the JSON marker that makes the cache of ``name`` valid."""
    return data_dir(root) / f"{name}.json"


def read_marker(name: str, root: str | os.PathLike | None = None) -> dict | None:
    """Return the marker of a valid cache of ``name``; None if missing, partial or inconsistent."""
    marker, cache = marker_file(name, root), cache_file(name, root)
    try:
        info = json.loads(marker.read_text())
        valid = (
            info.get("format") == CACHE_FORMAT
            and info.get("dataset") == name
            and cache.stat().st_size == info.get("cache_bytes")
        )
    except (OSError, ValueError, AttributeError):
        return None
    return info if valid else None


def reset_unless_cached(name: str, root: str | os.PathLike | None, force: bool) -> Path | None:
    """Start a rebuild of ``name``'s cache unless a valid one exists (and ``force`` is off).

    Returns:
        The cache file if it is valid and not forced; else None, after creating the data
        directory and removing the marker (no stale marker while rebuilding).

    """
    if not force and read_marker(name, root) is not None:
        return cache_file(name, root)
    data_dir(root).mkdir(parents=True, exist_ok=True)
    marker_file(name, root).unlink(missing_ok=True)
    return None


def write_cache(
    tensors: dict[str, Tensor], name: str, root: str | os.PathLike | None, **info: Any
) -> Path:
    """Cache ``{"x_train", "y_train", "x_test", "y_test"}`` of ``name``, then its marker.

    Args:
        tensors: The parsed data set.
        name: Canonical data set name (the file names are ``name.pt`` / ``name.json``).
        root: Data directory.
        **info: Recorded in the marker (e.g. ``archive_md5``).

    Returns:
        The cache file.

    """
    cache, marker = cache_file(name, root), marker_file(name, root)
    atomic_write(cache, lambda tmp: torch.save(tensors, tmp))
    record = {
        "format": CACHE_FORMAT,
        "dataset": name,
        **info,
        "cache_file": cache.name,
        "cache_bytes": cache.stat().st_size,
        "n_train": int(tensors["x_train"].shape[0]),
        "n_test": int(tensors["x_test"].shape[0]),
    }
    atomic_write(marker, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2) + "\n"))
    return cache


def load_cached(
    name: str,
    root: str | os.PathLike | None,
    image_shape: tuple[int, int, int],
    missing: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Load the cached ``(x_train, y_train, x_test, y_test)`` of ``name`` (memory-mapped, CPU).

    Args:
        name: Canonical data set name.
        root: Data directory.
        image_shape: ``(C, H, W)`` the cached images must have.
        missing: The message of the error raised when there is no valid cache.

    Raises:
        DataNotFoundError: No valid cache (``missing``), or a malformed one.

    """
    if read_marker(name, root) is None:
        raise DataNotFoundError(missing)
    # memory-mapped: processes on one machine share the page cache; .to(device) copies once
    tensors = torch.load(cache_file(name, root), mmap=True, weights_only=True)
    x_train, y_train = tensors["x_train"], tensors["y_train"]
    x_test, y_test = tensors["x_test"], tensors["y_test"]
    for x, y in ((x_train, y_train), (x_test, y_test)):
        if x.dtype != torch.uint8 or x.shape[1:] != image_shape or y.shape != x.shape[:1]:
            raise DataNotFoundError(
                f"cache {cache_file(name, root)} is malformed; rebuild it with "
                f"`curvbench data download {name} --force`"
            )
    return x_train, y_train, x_test, y_test
