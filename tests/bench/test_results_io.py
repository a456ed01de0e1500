"""Atomic result files, resume by key, and the environment sidecar."""

import json
import math
import os

import pytest

from bench import environment, results_io

COLS = ("k", "value")


def test_atomic_csv_round_trip_leaves_no_temp_files(tmp_path):
    path = tmp_path / "sub" / "r.csv"
    results_io.atomic_write_csv(
        path, [{"k": "a", "value": 1.5}, {"k": "b", "value": math.nan}], COLS
    )
    assert results_io.read_csv_rows(path) == [{"k": "a", "value": "1.5"}, {"k": "b", "value": ""}]
    assert [p.name for p in path.parent.iterdir()] == ["r.csv"]


def test_extra_keys_become_trailing_columns(tmp_path):
    path = results_io.atomic_write_csv(tmp_path / "r.csv", [{"k": "a", "extra": 2}], COLS)
    assert path.read_text().splitlines()[0] == "k,value,extra"


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = results_io.atomic_write_text(tmp_path / "f.txt", "old")

    def boom(*args):
        raise OSError("disk full")

    monkeypatch.setattr(results_io.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        results_io.atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_upsert_replaces_rows_with_the_same_key_and_keeps_order(tmp_path):
    path = tmp_path / "r.csv"
    results_io.upsert_csv(path, [{"k": "a", "value": 1}, {"k": "b", "value": 2}], COLS, ["k"])
    results_io.upsert_csv(path, [{"k": "b", "value": 3}, {"k": "c", "value": 4}], COLS, ["k"])
    assert [(r["k"], r["value"]) for r in results_io.read_csv_rows(path)] == [
        ("a", "1"), ("b", "3"), ("c", "4")
    ]  # fmt: skip
    assert results_io.existing_keys(path, ["k"]) == {("a",), ("b",), ("c",)}


def test_missing_files_read_as_empty(tmp_path):
    assert results_io.read_csv_rows(tmp_path / "none.csv") == []
    assert results_io.read_json(tmp_path / "none.json", default={"x": 1}) == {"x": 1}


def test_environment_sidecar_is_json_and_names_the_essentials(tmp_path):
    env = environment.collect_environment("cpu")
    results_io.atomic_write_json(tmp_path / "env.json", env)
    loaded = json.loads((tmp_path / "env.json").read_text())
    for key in ("torch", "num_threads", "device_name", "commit", "time_utc", "packages"):
        assert key in loaded
    assert loaded["device_type"] == "cpu"


def test_git_commit_outside_a_repository_is_none(tmp_path):
    assert environment.git_commit(tmp_path) == {"commit": None, "dirty": None}


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_writes_get_the_mode_open_would_give(tmp_path, umask):
    """A result is readable by whom the umask allows (mkstemp's own 0o600 would hide it from the
    group on a cluster's shared filesystem); a rewrite keeps the file's mode."""
    old = os.umask(umask)
    results_io._umask.cache_clear()  # read once per process; this test changes it
    try:
        path = results_io.atomic_write_text(tmp_path / "r.csv", "a\n")
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask
        path.chmod(0o640)
        results_io.atomic_write_text(path, "b\n")
        assert path.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)
        results_io._umask.cache_clear()
