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
