"""The real MNIST / Fashion-MNIST path end to end on tiny IDX files from a loopback HTTP server.

The four files are written in the official format (gzip of: two zero bytes, type code 0x08, the
number of dimensions, big-endian uint32 sizes, then the uint8 data; images ``[N, 28, 28]``, labels
``[N]``) under their official names. Download -> md5 -> decompress -> parse -> cache runs
unchanged; only the base URL and the expected md5s are those of the tiny files. The ``server``
fixture is in ``conftest.py``.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from problems.data import download, is_cached, load_problem_data, mnist
from problems.data.errors import (
    ArchiveFormatError,
    ChecksumError,
    DataNotFoundError,
    DownloadError,
)

NAMES = ["mnist", "fmnist"]


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array (written from the format description, not our parser)."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes(order="C")


def make_tiny_files(directory: Path, n_train: int = 20, n_test: int = 8, seed: int = 0) -> dict:
    """Write the four gzipped IDX files; return their md5s and the expected tensors."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    md5s = {}
    for name, array in arrays.items():
        payload = gzip.compress(idx_bytes(array))
        (directory / name).write_bytes(payload)
        md5s[name] = hashlib.md5(payload).hexdigest()
    images = list(arrays.values())
    return {
        "md5s": md5s,
        "x_train": images[0],
        "y_train": images[1],
        "x_test": images[2],
        "y_test": images[3],
    }


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_official_file_names_and_md5s():
    """The names torchvision's MNIST/FashionMNIST download; one md5 per file, all distinct."""
    assert mnist.FILES == (
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    )
    md5s = [m for spec in mnist.DATASETS.values() for m in spec.md5s]
    assert len(set(md5s)) == 8 and all(len(m) == 32 and int(m, 16) >= 0 for m in md5s)


@pytest.mark.parametrize("name", NAMES)
def test_download_verify_parse_cache_round_trip(server, tmp_path, name):
    url, www = server
    tiny = make_tiny_files(www)
    root = tmp_path / "data"
    assert not is_cached(name, root)
    path = download(name, root, base_url=url, md5s=tiny["md5s"], progress=False)
    assert path == root / f"{name}.pt"
    assert is_cached(name, root) and is_cached(f"{name}_x", root)
    assert not is_cached("fmnist" if name == "mnist" else "mnist", root)
    assert _leftovers(root) == sorted([f"{name}.pt", f"{name}.json"])  # no .part files
    x_train, y_train, x_test, y_test = mnist.load_mnist(name, root)
    assert x_train.shape == (20, 1, 28, 28) and x_train.dtype == torch.uint8
    assert y_train.dtype == torch.int64 and x_test.shape == (8, 1, 28, 28)
    np.testing.assert_array_equal(x_train[:, 0].numpy(), tiny["x_train"])
    np.testing.assert_array_equal(y_train.numpy(), tiny["y_train"])
    np.testing.assert_array_equal(x_test[:, 0].numpy(), tiny["x_test"])
    np.testing.assert_array_equal(y_test.numpy(), tiny["y_test"])
    assert mnist.read_marker(name, root)["file_md5s"] == tiny["md5s"]
    # cached: a second call does not download (the server is not even asked)
    assert download(name, root, base_url="http://127.0.0.1:9", progress=False) == path


def test_corrupt_file_raises_checksum_error_and_leaves_no_cache(server, tmp_path):
    url, www = server
    tiny = make_tiny_files(www)
    bad_file = www / "t10k-labels-idx1-ubyte.gz"
    payload = bytearray(bad_file.read_bytes())
    payload[len(payload) // 2] ^= 0xFF
    bad_file.write_bytes(bytes(payload))
    root = tmp_path / "data"
    with pytest.raises(ChecksumError) as err:
        download("mnist", root, base_url=url, md5s=tiny["md5s"], progress=False)
    message = str(err.value)
    assert bad_file.name in message and tiny["md5s"][bad_file.name] in message
    assert hashlib.md5(payload).hexdigest() in message
    assert not is_cached("mnist", root)
    assert _leftovers(root) == []  # all four temporary files are gone
    with pytest.raises(DataNotFoundError, match="curvbench data download mnist"):
        mnist.load_mnist("mnist", root)
    with pytest.raises(DataNotFoundError, match="synthetic"):
        load_problem_data("mnist_logreg", source="real", root=root)


def test_truncated_download_leaves_nothing_valid(server, tmp_path):
    url, www = server
    tiny = make_tiny_files(www)
    root = tmp_path / "data"
    with pytest.raises((DownloadError, ChecksumError)):
        download("fmnist", root, base_url=f"{url}/truncated", md5s=tiny["md5s"], progress=False)
    assert not is_cached("fmnist", root)
    assert _leftovers(root) == []


def test_official_md5s_refuse_other_files(server, tmp_path):
    url, www = server
    make_tiny_files(www)
    root = tmp_path / "data"
    with pytest.raises(ChecksumError, match=mnist.FILES[0]):
        download("mnist", root, base_url=url, progress=False)
    assert _leftovers(root) == []


def test_local_files_are_used_offline_and_left_alone(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    tiny = make_tiny_files(root)
    download("fmnist_2c2d", root, base_url="http://127.0.0.1:9", md5s=tiny["md5s"], progress=False)
    assert is_cached("fmnist", root)
    assert set(mnist.FILES) <= set(_leftovers(root))  # the user's files stay
    np.testing.assert_array_equal(
        mnist.load_mnist("fmnist", root)[0][:, 0].numpy(), tiny["x_train"]
    )


def test_a_partial_cache_is_not_valid(server, tmp_path):
    url, www = server
    tiny = make_tiny_files(www)
    root = tmp_path / "data"
    download("mnist", root, base_url=url, md5s=tiny["md5s"], progress=False)
    cache = root / "mnist.pt"
    cache.write_bytes(cache.read_bytes()[:-10])
    assert not is_cached("mnist", root)
    download("mnist", root, base_url=url, md5s=tiny["md5s"], progress=False)  # repairs
    assert is_cached("mnist", root)


# ---- parsing --------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(0,), (5,), (3, 28, 28), (2, 3, 4, 5)])
def test_parse_idx_round_trips(shape):
    array = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    parsed = mnist.parse_idx(idx_bytes(array))
    assert parsed.dtype == np.uint8 and parsed.shape == shape
    np.testing.assert_array_equal(parsed, array)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"\x00\x01\x08\x01" + struct.pack(">I", 1) + b"\x00", "magic"),
        (b"\x00\x00\x0d\x01" + struct.pack(">I", 1) + b"\x00\x00\x00\x00", "type code"),
        (b"\x00\x00\x08\x03" + struct.pack(">I", 1), "header truncated"),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 4) + b"\x00\x00\x00", "announces"),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 2) + b"\x00\x00\x00", "announces"),
        (b"\x00\x00", "magic"),
    ],
    ids=["magic", "float-type", "short-header", "truncated-data", "trailing-data", "tiny"],
)
def test_parse_idx_refuses_malformed_data(raw, match):
    with pytest.raises(ArchiveFormatError, match=match):
        mnist.parse_idx(raw)


def _files(tmp_path: Path, **arrays: np.ndarray) -> dict[str, Path]:
    """Write four gzipped IDX files with valid defaults, replacing those given by keyword."""
    rng = np.random.default_rng(0)
    content = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (4, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": np.array([0, 1, 2, 9], dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (2, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": np.array([3, 4], dtype=np.uint8),
    }
    content.update({k.replace("_", "-") + "-ubyte.gz": v for k, v in arrays.items()})
    paths = {}
    for name, array in content.items():
        paths[name] = tmp_path / name
        paths[name].write_bytes(gzip.compress(idx_bytes(array)))
    return paths


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"train_images_idx3": np.zeros((4, 32, 32), np.uint8)}, "expected"),
        ({"t10k_labels_idx1": np.array([3, 4, 5], np.uint8)}, "2 images but 3 labels"),
        ({"train_labels_idx1": np.array([0, 1, 10, 2], np.uint8)}, "labels outside"),
    ],
    ids=["image-size", "count-mismatch", "label-range"],
)
def test_parse_files_checks_shapes_counts_and_labels(tmp_path, bad, match):
    with pytest.raises(ArchiveFormatError, match=match):
        mnist.parse_files(_files(tmp_path, **bad), mnist.DATASETS["mnist"])


def test_not_gzip_is_a_format_error(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(b"not gzip at all")
    with pytest.raises(ArchiveFormatError, match="gzip"):
        mnist.read_idx_gz(path)


# ---- the DeepOBS protocol on cached (Fashion-)MNIST -----------------------------------------


@pytest.mark.parametrize("name", ["mnist_logreg", "fmnist_2c2d"])
def test_split_sizes_and_scaling_on_a_scaled_down_set(tmp_path, name):
    """120 training images -> DeepOBS's split scaled by 1/500: 100 train, 20 valid; drop_last."""
    root = tmp_path / "data"
    root.mkdir()
    tiny = make_tiny_files(root, n_train=120, n_test=30)
    download(name, root, md5s=tiny["md5s"], progress=False)
    data = load_problem_data(name, source="real", root=root, batch_size=8, train_eval_size=20)
    assert data.source == "mnist" and data.augment is False
    assert (data.n_train, data.n_valid, data.n_test) == (100, 20, 30)
    assert (data.train_steps, len(data.train_eval()), len(data.valid()), len(data.test())) == (
        12,  # 100 // 8
        2,  # 20 // 8
        2,
        3,  # 30 // 8
    )
    # ToTensor only: uint8 / 255 in float32, no normalisation, no augmentation
    x, y = next(iter(data.test()))
    expected = torch.from_numpy(tiny["x_test"][:8]).unsqueeze(1).float().div(255)
    assert x.dtype == torch.float32 and x.shape == (8, 1, 28, 28)
    assert torch.equal(x, expected)
    assert y.tolist() == tiny["y_test"][:8].tolist()
    # train batches are the raw images too, and come from the train part only
    raw = torch.from_numpy(tiny["x_train"]).unsqueeze(1).float().div(255)
    train_rows = set(data.train_indices.tolist())
    for xb, _ in data.train():
        for image in xb:
            (matches,) = torch.nonzero((raw == image).flatten(1).all(1), as_tuple=True)
            assert matches.numel() >= 1 and set(matches.tolist()) & train_rows
    with pytest.raises(ValueError, match="source 'cifar' does not serve"):
        load_problem_data(name, source="cifar", root=root)
    with pytest.raises(ValueError, match="RGB"):
        load_problem_data(name, source="real", root=root, batch_size=8, augment=True)


def test_cli_download_and_status(server, tmp_path, monkeypatch, capsys):
    from bench import cli

    url, www = server
    tiny = make_tiny_files(www)
    spec = mnist.DATASETS["fmnist"]
    official = dict(zip(mnist.FILES, spec.md5s))
    monkeypatch.setitem(
        mnist.DATASETS, "fmnist", dataclasses.replace(spec, md5s=tuple(tiny["md5s"].values()))
    )
    root = str(tmp_path / "data")
    argv = ["data", "download", "fmnist_2c2d", "--data-dir", root, "--url", url, "--quiet"]
    assert cli.main(argv) == 0
    assert "fmnist: cached 20 train + 8 test" in capsys.readouterr().out
    assert cli.main(["data", "status", "--data-dir", root]) == 0
    out = capsys.readouterr().out
    assert "fmnist    cached    20 train + 8 test" in out and "(official)" in out
    assert "mnist     missing" in out and "curvbench data download mnist" in out
    monkeypatch.setitem(mnist.DATASETS, "fmnist", spec)  # the official md5s again: not official
    assert cli.main(["data", "status", "--data-dir", root]) == 0
    assert "NOT the official files" in capsys.readouterr().out
    assert cli.main(argv + ["--force"]) == 1  # the tiny files fail the official md5s
    assert "fmnist" in capsys.readouterr().err
    assert not is_cached("fmnist", root)
    assert official == dict(zip(mnist.FILES, spec.md5s))
