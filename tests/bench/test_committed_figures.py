"""``curvbench figures`` rebuilds every committed figure and REPORT.md byte for byte.

The committed CSVs under ``results/`` are the input; the committed ``plots/`` and REPORT.md files
are the expected output. A changed CSV without regenerated figures, or a figure code change that
moves pixels, fails here (refresh with ``make figures`` and commit the result on purpose).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_figures_from_committed_results_are_byte_identical(tmp_path, capsys):
    results = tmp_path / "results"
    shutil.copytree(ROOT / "results", results)
    assert cli_main(["figures", "--results", str(results), "--plots", str(tmp_path / "plots")]) == 0
    written = [Path(line) for line in capsys.readouterr().out.split() if line.startswith("/")]
    assert written, "figures wrote nothing"
    compared = 0
    for path in written:
        rel = path.relative_to(tmp_path)
        committed = ROOT / rel
        assert committed.exists(), f"{rel} is written but not committed"
        assert path.read_bytes() == committed.read_bytes(), f"{rel} differs from the committed file"
        compared += 1
    committed_plots = {p.relative_to(ROOT) for p in (ROOT / "plots").rglob("*") if p.is_file()}
    assert committed_plots <= {p.relative_to(tmp_path) for p in written}, "stale committed plot"
    assert compared >= len(committed_plots)
