"""The real CIFAR path end to end on tiny archives served from a loopback HTTP server.

The archives have the official layout (``cifar-10-batches-py/data_batch_1..5``, ``test_batch``,
``batches.meta``; ``cifar-100-python/train``, ``test``, ``meta``) and pickles like the originals
(uint8 ``data`` [N, 3072], row-major R, G, B planes; list labels; CIFAR-100 with fine and coarse
labels). Download -> md5 -> read -> parse -> cache runs unchanged; only the base URL and the
expected md5 are those of the tiny archive. The ``server`` fixture is in ``conftest.py``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import cli
from problems.data import cifar, load_problem_data
from problems.data.errors import (
    ArchiveFormatError,
    ChecksumError,
    DataNotFoundError,
    DownloadError,
    UnsafeArchiveError,
)

PER_BATCH = 4  # images per tiny batch


def _batch_pickle(data: np.ndarray, labels: list[int], label_key: str, bytes_keys: bool) -> bytes:
    batch = {
        "batch_label": "tiny",
        "data": data,
        label_key: labels,
        "filenames": ["x.png"] * len(labels),
    }
    if label_key == "fine_labels":
        batch["coarse_labels"] = [y // 5 for y in labels]
    if bytes_keys:  # like the Python 2 originals read with encoding="bytes"
        batch = {k.encode(): v for k, v in batch.items()}
    raw = pickle.dumps(batch, protocol=2)
    if bytes_keys:  # the originals name numpy 1's module path
        raw = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    return raw


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def make_tiny_archive(spec: cifar.CifarSpec, directory: Path, seed: int = 0) -> dict:
    """Write a tiny archive in the official layout; return its md5 and the expected tensors."""
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    expected = {}
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        _add(tar, f"{spec.folder}/{'batches.meta' if spec.num_classes == 10 else 'meta'}", b"meta")
        for split, files in (("train", spec.train_files), ("test", spec.test_files)):
            xs, ys = [], []
            for i, f in enumerate(files):
                data = rng.integers(0, 256, size=(PER_BATCH, 3072), dtype=np.uint8)
                labels = [int(v) for v in rng.integers(0, spec.num_classes, size=PER_BATCH)]
                _add(
                    tar,
                    f"{spec.folder}/{f}",
                    _batch_pickle(data, labels, spec.label_key, i % 2 == 0),
                )
                xs.append(data)
                ys += labels
            # the documented layout: 1024 red, then 1024 green, then 1024 blue values, row-major
            data = np.concatenate(xs)
            expected[f"x_{split}"] = np.stack(
                [data[:, c * 1024 : (c + 1) * 1024].reshape(-1, 32, 32) for c in range(3)], axis=1
            )
            expected[f"y_{split}"] = np.array(ys)
    payload = buffer.getvalue()
    path = directory / spec.archive
    path.write_bytes(payload)
    return {"md5": hashlib.md5(payload).hexdigest(), "path": path, **expected}


SPECS = [pytest.param(cifar.DATASETS[n], id=n) for n in ("cifar10", "cifar100")]


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


@pytest.mark.parametrize("spec", SPECS)
def test_download_verify_parse_cache_round_trip(server, tmp_path, spec):
    url, www = server
    tiny = make_tiny_archive(spec, www)
    root = tmp_path / "data"
    assert not cifar.is_cached(spec.name, root)
    path = cifar.download(spec.name, root, base_url=url, md5=tiny["md5"], progress=False)
    assert path == root / f"{spec.name}.pt"
    assert cifar.is_cached(spec.name, root)
    assert _leftovers(root) == sorted([f"{spec.name}.pt", f"{spec.name}.json"])  # no archive/.part
    x_train, y_train, x_test, y_test = cifar.load_cifar(spec.name, root)
    n_train = PER_BATCH * len(spec.train_files)
    assert x_train.shape == (n_train, 3, 32, 32) and x_train.dtype == torch.uint8
    assert y_train.dtype == torch.int64 and x_test.shape == (PER_BATCH, 3, 32, 32)
    np.testing.assert_array_equal(x_train.numpy(), tiny["x_train"])
    np.testing.assert_array_equal(y_train.numpy(), tiny["y_train"])
    np.testing.assert_array_equal(x_test.numpy(), tiny["x_test"])
    np.testing.assert_array_equal(y_test.numpy(), tiny["y_test"])
    assert cifar.read_marker(spec.name, root)["archive_md5"] == tiny["md5"]


def test_cached_data_feeds_load_problem_data(server, tmp_path):
    url, www = server
    tiny = make_tiny_archive(cifar.DATASETS["cifar10"], www)
    root = tmp_path / "data"
    cifar.download("cifar10_3c3d", root, base_url=url, md5=tiny["md5"], progress=False)
    data = load_problem_data(
        "cifar10_3c3d", root=root, batch_size=2, valid_size=4, train_eval_size=4
    )
    assert (data.n_train, data.n_valid, data.n_test) == (16, 4, 4)
    x, y = next(iter(data.test()))
    mean = torch.tensor([0.49139968, 0.48215841, 0.44653091]).view(1, 3, 1, 1)
    std = torch.tensor([0.24703223, 0.24348513, 0.26158784]).view(1, 3, 1, 1)
    expected = (torch.from_numpy(tiny["x_test"][:2]).float() / 255 - mean) / std
    torch.testing.assert_close(x, expected)
    assert y.tolist() == tiny["y_test"][:2].tolist()


def test_corrupt_archive_raises_checksum_error_and_leaves_no_cache(server, tmp_path):
    url, www = server
    spec = cifar.DATASETS["cifar10"]
    tiny = make_tiny_archive(spec, www)
    payload = bytearray(tiny["path"].read_bytes())
    payload[len(payload) // 2] ^= 0xFF
    tiny["path"].write_bytes(bytes(payload))
    bad_md5 = hashlib.md5(payload).hexdigest()
    root = tmp_path / "data"
    with pytest.raises(ChecksumError) as err:
        cifar.download("cifar10", root, base_url=url, md5=tiny["md5"], progress=False)
    message = str(err.value)
    assert spec.archive in message and tiny["md5"] in message and bad_md5 in message
    assert not cifar.is_cached("cifar10", root)
    assert _leftovers(root) == []  # the bad temp file is gone
    with pytest.raises(DataNotFoundError, match="curvbench data download cifar10"):
        cifar.load_cifar("cifar10", root)
    with pytest.raises(DataNotFoundError, match="--data-dir"):
        load_problem_data("cifar10_3c3d", source="cifar", root=root)


def test_truncated_download_leaves_nothing_valid(server, tmp_path):
    url, www = server
    tiny = make_tiny_archive(cifar.DATASETS["cifar10"], www)
    root = tmp_path / "data"
    with pytest.raises((DownloadError, ChecksumError)):
        cifar.download(
            "cifar10", root, base_url=f"{url}/truncated", md5=tiny["md5"], progress=False
        )
    assert not cifar.is_cached("cifar10", root)
    assert _leftovers(root) == []


def test_unreachable_server_is_a_download_error(tmp_path):
    with pytest.raises(DownloadError, match="failed"):
        cifar.download(
            "cifar10", tmp_path, base_url="http://127.0.0.1:9", progress=False, timeout=5
        )
    assert not cifar.is_cached("cifar10", tmp_path)


def test_partial_cache_is_not_valid(server, tmp_path):
    url, www = server
    tiny = make_tiny_archive(cifar.DATASETS["cifar100"], www)
    root = tmp_path / "data"
    cifar.download("cifar100", root, base_url=url, md5=tiny["md5"], progress=False)
    cache = cifar.cache_file("cifar100", root)
    cache.write_bytes(cache.read_bytes()[:-10])  # truncated after the fact
    assert not cifar.is_cached("cifar100", root)
    cifar.download("cifar100", root, base_url=url, md5=tiny["md5"], progress=False)  # repairs
    assert cifar.is_cached("cifar100", root)
    cifar.marker_file("cifar100", root).unlink()  # a cache without marker is not valid either
    assert not cifar.is_cached("cifar100", root)


def test_local_archive_is_used_offline(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    tiny = make_tiny_archive(cifar.DATASETS["cifar10"], root)
    cifar.download("cifar10", root, base_url="http://127.0.0.1:9", md5=tiny["md5"], progress=False)
    assert cifar.is_cached("cifar10", root)
    np.testing.assert_array_equal(cifar.load_cifar("cifar10", root)[0].numpy(), tiny["x_train"])
    other = tmp_path / "other"
    other.mkdir()
    make_tiny_archive(cifar.DATASETS["cifar10"], other, seed=1)
    with pytest.raises(ChecksumError, match="replace or delete"):
        cifar.download("cifar10", other, md5=tiny["md5"], progress=False)
    assert (other / "cifar-10-python.tar.gz").exists()  # the user's file is left alone


def _write_tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in members.items():
            _add(tar, name, payload)


@pytest.mark.parametrize("name", ["../evil", "/abs/evil", "cifar-10-batches-py/../../evil"])
def test_path_traversal_is_refused(tmp_path, name):
    archive = tmp_path / "a" / "x.tar.gz"
    archive.parent.mkdir()
    _write_tar(archive, {name: b"boom"})
    with pytest.raises(UnsafeArchiveError, match="unsafe member"):
        cifar.parse_archive(archive, cifar.DATASETS["cifar10"])
    assert _leftovers(tmp_path) == ["a"] and _leftovers(tmp_path / "a") == ["x.tar.gz"]


def test_pickles_with_code_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    spec = cifar.DATASETS["cifar100"]
    archive = tmp_path / "x.tar.gz"
    _write_tar(archive, {f"{spec.folder}/train": pickle.dumps({"data": Evil()}, protocol=2)})
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        cifar.parse_archive(archive, spec)


def test_wrong_layout_is_a_format_error(tmp_path):
    spec = cifar.DATASETS["cifar100"]
    archive = tmp_path / "x.tar.gz"
    bad = np.zeros((2, 100), dtype=np.uint8)
    _write_tar(archive, {f"{spec.folder}/train": _batch_pickle(bad, [0, 1], "fine_labels", False)})
    with pytest.raises(ArchiveFormatError, match="3072"):
        cifar.parse_archive(archive, spec)


def test_data_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("CURVBENCH_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cifar.data_dir() == tmp_path / "xdg" / "curvbench"
    monkeypatch.setenv("CURVBENCH_DATA", str(tmp_path / "env"))
    assert cifar.data_dir() == tmp_path / "env"
    assert cifar.data_dir(tmp_path / "arg") == tmp_path / "arg"


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError, match="cifar10, cifar100"):
        cifar.resolve_dataset("mnist")
    assert cifar.resolve_dataset("cifar100_allcnnc").name == "cifar100"


def test_cli_download_and_status(server, tmp_path, monkeypatch, capsys):
    url, www = server
    spec = cifar.DATASETS["cifar10"]
    tiny = make_tiny_archive(spec, www)
    monkeypatch.setitem(cifar.DATASETS, "cifar10", dataclasses.replace(spec, md5=tiny["md5"]))
    root = str(tmp_path / "data")
    argv = ["data", "download", "cifar10_3c3d", "--data-dir", root, "--url", url, "--quiet"]
    assert cli.main(argv) == 0
    assert cli.main(["data", "status", "--data-dir", root]) == 0
    out = capsys.readouterr().out
    assert "cifar10: cached 20 train + 4 test" in out
    assert "cifar100  missing" in out and "curvbench data download cifar100" in out
    assert cli.main(["data", "download", "imagenet", "--data-dir", root]) == 2
    assert "valid names: cifar10, cifar100, mnist, fmnist" in capsys.readouterr().err
    monkeypatch.setitem(cifar.DATASETS, "cifar10", spec)  # the official md5 again: a mismatch
    assert cli.main(argv + ["--force"]) == 1
    assert "checksum mismatch" in capsys.readouterr().err
    assert not cifar.is_cached("cifar10", root)
