"""The grid-search smoke, end to end: a sweep subprocess, kill -9 mid-run, resume, figures."""

from __future__ import annotations

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
