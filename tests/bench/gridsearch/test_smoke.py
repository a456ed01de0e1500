"""The grid-search smoke, end to end: a sweep subprocess, kill -9 mid-run, resume, figures."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from bench.gridsearch import smoke
from bench.gridsearch.cli import plan_from_argv
from bench.gridsearch.smoke import run_smoke


def test_smoke_kill_and_resume(tmp_path):
    report = run_smoke(
        tmp_path / "gridsearch" / "smoke", tmp_path / "plots", plan_from_argv, quick=True
    )
    assert report.ok, report.summary()
    assert report.finished_before_kill and report.interrupted
    assert report.runs == 5  # 3 grid runs + 1 new seed rerun per method
    names = {p.name for p in report.figures}
    assert "REPORT.md" in names
    assert "heatmap_cifar10_3c3d_synthetic_DiagGGNMC.png" in names
    assert "gridsearch_fig7_cifar10_3c3d_synthetic.png" in names  # Fig. 7 learning curves


def _state(pid: int) -> str:
    """The process state letter from /proc (``T``: stopped)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
@pytest.mark.parametrize(
    ("after_stop", "killed"),
    [
        ((["a"], ["b"]), True),  # still mid-way while frozen: kill now
        ((["a", "b"], []), False),  # b finished between the poll and the stop: go on
    ],
)
def test_kill_point_is_checked_while_the_sweep_is_frozen(monkeypatch, after_stop, killed):
    """The CI failure 'no run was mid-way at the kill': the mid-way run finished before the kill.

    The check after SIGSTOP must see the store as the kill will leave it, and a sweep whose
    moment passed must be continued, not left stopped.
    """
    proc = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        monkeypatch.setattr(smoke, "_kill_point", lambda store, grid: after_stop)
        assert smoke._frozen_at_kill_point(proc, None, []) is killed
        time.sleep(0.1)
        assert (_state(proc.pid) == "T") is killed
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# ---- the output folder: only what the smoke created is deleted (issue 13) ------------------

RUN_A, RUN_B = "0123456789abcdef", "fedcba9876543210"


def _smoke_made(out: Path) -> set[str]:
    """Write the files a smoke leaves in its store; return them (relative to ``out``)."""
    files = {f"{RUN_A}.csv", f"{RUN_A}.json", f"checkpoints/{RUN_B}.pt", "REPORT.md"}
    for rel in files:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text("smoke")
    return files


def test_a_user_file_in_a_marked_folder_survives_the_next_smoke(tmp_path):
    out = tmp_path / "smoke"
    smoke.prepare_out(out, keep=False)
    smoke.write_marker(out, _smoke_made(out), [])
    (out / "notes.txt").write_text("mine")  # added by the user after the smoke
    (out / "mine").mkdir()
    (out / "mine" / "data.csv").write_text("mine too")
    prepared = smoke.prepare_out(out, keep=False)
    left = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert left == {"notes.txt", "mine/data.csv", smoke.MARKER}
    assert not (out / "checkpoints").exists()  # emptied by the deletion, so removed
    assert prepared.foreign == {"notes.txt", "mine/data.csv"}


def test_an_older_marker_clears_the_run_files_only(tmp_path):
    out = tmp_path / "smoke"
    out.mkdir()
    (out / smoke.MARKER).write_text("made by `curvbench gridsearch smoke`; cleared by its next run")
    _smoke_made(out)
    (out / "notes.txt").write_text("mine")
    smoke.prepare_out(out, keep=False)
    assert {p.name for p in out.rglob("*") if p.is_file()} == {"notes.txt", smoke.MARKER}


def test_run_files_the_smoke_did_not_record_are_refused_not_deleted(tmp_path):
    out = tmp_path / "smoke"
    smoke.prepare_out(out, keep=False)
    (out / f"{RUN_B}.json").write_text("{}")  # not in the marker's list
    with pytest.raises(smoke.SmokeRefused, match="run files the smoke did not record"):
        smoke.prepare_out(out, keep=False)
    assert (out / f"{RUN_B}.json").read_text() == "{}"


def test_an_interrupted_smoke_still_records_what_it_created(tmp_path, monkeypatch):
    out = tmp_path / "smoke"
    (out / "keep-me").mkdir(parents=True)
    (out / smoke.MARKER).write_text("{}")
    (out / "keep-me" / "x.txt").write_text("mine")

    def interrupted(out, *args):
        _smoke_made(out)
        raise KeyboardInterrupt

    monkeypatch.setattr(smoke, "_sweep_kill_resume", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_smoke(out, tmp_path / "plots", plan_from_argv, quick=True)
    assert set(smoke.read_marker(out)["files"]) == _smoke_made(out)
    smoke.prepare_out(out, keep=False)
    assert {p.name for p in out.rglob("*") if p.is_file()} == {"x.txt", smoke.MARKER}


# ---- the device the sweep trains on (make gpu-check: cuda) ---------------------------------


def _flag(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_the_smoke_trains_on_the_device_it_is_given(tmp_path, monkeypatch):
    cpu, cuda = smoke._command(tmp_path, True), smoke._command(tmp_path, True, "cuda")
    assert _flag(cpu, "--device") == "cpu" and _flag(cuda, "--device") == "cuda"
    assert _flag(cpu, "--epochs") == "2" and _flag(cpu, "--max-steps-per-epoch") == "2"
    # on a GPU two steps take milliseconds: longer epochs leave a mid-way moment to kill in
    assert _flag(cuda, "--epochs") == "3" and _flag(cuda, "--max-steps-per-epoch") == "10"
    assert smoke.smoke_args(False, "cuda:1") == [
        "cuda:1" if a == "cpu" else a for a in smoke.SMOKE_ARGS[False]
    ]
    grid, _ = smoke.expected_jobs(tmp_path, True, plan_from_argv, "cuda")
    assert len(grid) == 3 and {j.epochs for j in grid} == {3}
    seen = []
    monkeypatch.setattr(smoke, "_sweep_kill_resume", lambda *a: seen.append(a[3]))
    monkeypatch.setattr("bench.gridsearch.figures.make_all", lambda results, plots: [])
    run_smoke(tmp_path / "s", tmp_path / "plots", plan_from_argv, quick=True, device="cuda")
    assert seen == ["cuda"]
