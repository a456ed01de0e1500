"""``bench.options``: the validators every command shares (parse-time errors, exit 2)."""

from __future__ import annotations

import argparse

import pytest

from bench import options


def _parse(type_, text):
    parser = argparse.ArgumentParser(prog="t", exit_on_error=False)
    parser.add_argument("--x", type=type_)
    return parser.parse_args(["--x", text]).x


@pytest.mark.parametrize(
    ("type_", "text", "expected"),
    [
        (options.positive_int, "3", 3),
        (options.nonnegative_int, "0", 0),
        (options.int_at_least(2, 4), "4", 4),
        (options.positive_float, "1e-3", 1e-3),
        (options.nonnegative_float, "0", 0.0),
        (options.float_in(0, 1, high_open=True), "0.5", 0.5),
        (options.device, "cuda:1", "cuda:1"),
        (options.device, "cpu", "cpu"),
        (options.one_of(["a", "b"], "problem"), "b", "b"),
    ],
)
def test_valid_values_parse(type_, text, expected):
    assert _parse(type_, text) == expected


@pytest.mark.parametrize(
    ("type_", "text", "message"),
    [
        (options.positive_int, "0", "must be an integer >= 1, got '0'"),
        (options.positive_int, "x", "must be an integer >= 1, got 'x'"),
        (options.nonnegative_int, "-1", "must be an integer >= 0"),
        (options.int_at_least(2, 4), "5", "must be an integer in 2..4"),
        (options.positive_float, "0", "must be a number > 0, got '0'"),
        (options.positive_float, "nan", "must be a number > 0"),
        (options.positive_float, "abc", "must be a number > 0, got 'abc'"),
        (options.float_in(0, 1, high_open=True), "1", "must be a number >= 0 and < 1"),
        (options.device, "gpu", "unsupported device 'gpu'; valid: cpu, cuda, cuda:N"),
        (options.device, "mps", "unsupported device 'mps'"),
        (options.device, "cpu:0", "unsupported device"),
        (options.one_of(["a", "b"], "problem"), "c", "unknown problem 'c'; valid: a, b"),
    ],
)
def test_bad_values_name_the_option_and_the_range(type_, text, message):
    with pytest.raises(argparse.ArgumentError) as err:
        _parse(type_, text)
    assert message in str(err.value)
    assert "argument --x" in str(err.value)


def test_output_dir_refuses_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    assert options.output_dir(str(tmp_path / "new" / "dir")) == tmp_path / "new" / "dir"
    with pytest.raises(argparse.ArgumentTypeError, match="is a file"):
        options.output_dir(str(tmp_path / "f" / "sub"))
    with pytest.raises(argparse.ArgumentTypeError, match="does not exist"):
        options.existing_dir(str(tmp_path / "missing"))


def test_require_device_without_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    options.require_device("cpu")
    with pytest.raises(options.DeviceUnavailable, match="no CUDA device"):
        options.require_device("cuda")


def test_require_device_index_beyond_the_visible_gpus(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    options.require_device("cuda:1")
    with pytest.raises(options.DeviceUnavailable, match="has 2 CUDA device"):
        options.require_device("cuda:2")
