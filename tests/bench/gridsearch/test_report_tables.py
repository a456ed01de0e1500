"""REPORT.md's tables of the paper's best α/λ beside ours and of step-time ratios (issue 14)."""

from __future__ import annotations

import json

import pandas as pd

from bench.gridsearch.figures import best_runs, make_all
from bench.gridsearch.report_tables import best_hyperparameter_lines, steptime_lines


def _table(rows):
    base = dict(source="synthetic", epochs=3, batch_size=128, options=json.dumps({}), seed=42,
                final=True, status="finished")  # fmt: skip
    return pd.DataFrame([{**base, **r} for r in rows])


def _row(lines, problem, method):
    return next(line for line in lines if line.startswith(f"| {problem} | {method} |"))


def test_best_hyperparameters_sit_beside_the_papers_with_the_grid_size():
    table = _table(
        [
            dict(problem="mnist_logreg", method="KFAC", lr=1e-2, damping=1e-2, valid_acc=0.5),
            dict(problem="mnist_logreg", method="KFAC", lr=1e-1, damping=1e-2, valid_acc=0.7),
            dict(
                problem="mnist_logreg", method="KFAC", lr=1e-1, damping=1e-2, valid_acc=0.1, seed=43
            ),  # fmt: skip
            dict(problem="fmnist_2c2d", method="KFRA", lr=1e-3, damping=1.0, valid_acc=0.2),
        ]
    )
    lines = best_hyperparameter_lines([("store", table, best_runs(table))])
    kfac = _row(lines, "mnist_logreg", "KFAC")
    assert "| 0.01 / 0.01 (int) |" in kfac  # App. C table
    assert "α=0.1, λ=0.01 (`store`: synthetic, 3 ep; best of 2)" in kfac  # seed 43 not a setting
    assert "| 1 / 10 (edge) | — (no run) |" in _row(lines, "cifar10_3c3d", "KFLR")
    assert "— (not run)" in _row(lines, "fmnist_2c2d", "KFRA")  # the paper had no KFRA there
    assert not any(line.startswith("| cifar100_allcnnc | KFRA |") for line in lines)


def test_a_store_that_ran_one_setting_says_so_and_names_its_truncation():
    table = _table(
        [
            dict(
                problem="mnist_logreg",
                method="KFRA",
                lr=1e-2,
                damping=1e-2,
                valid_acc=0.4,
                options=json.dumps({"max_steps_per_epoch": 10}),
            )
        ]  # fmt: skip
    )
    lines = best_hyperparameter_lines([("full", table, best_runs(table))])
    assert "(`full`: synthetic, 3 ep, 10 steps/ep; 1 setting run)" in _row(
        lines, "mnist_logreg", "KFRA"
    )


def test_steptime_table_reads_every_csv(tmp_path):
    assert steptime_lines(tmp_path) == []
    pd.DataFrame(
        [
            dict(
                problem="mnist_logreg",
                method="Momentum",
                batch_size=128,
                device="cpu",
                rounds=20,
                median_s=0.002,
                ratio_to_sgd=1.0,
            ),
            dict(
                problem="mnist_logreg",
                method="KFAC",
                batch_size=128,
                device="cpu",
                rounds=20,
                median_s=0.05,
                ratio_to_sgd=25.0,
            ),
        ]  # fmt: skip
    ).to_csv(tmp_path / "steptime_cpu_mnist_logreg.csv", index=False)
    lines = steptime_lines(tmp_path)
    row = next(line for line in lines if "steptime_cpu_mnist_logreg.csv" in line)
    assert row == (
        "| `steptime_cpu_mnist_logreg.csv` | mnist_logreg | 128 | 20 | 2.0 ms | — | — | — | 25 "
        "| — | — |"
    )
    assert any("shared with other jobs" in line for line in lines)


def test_the_generated_report_carries_both_tables(tmp_path):
    results = tmp_path / "gridsearch"
    results.mkdir()
    pd.DataFrame(
        [
            dict(
                problem="fmnist_2c2d",
                method="Momentum",
                batch_size=128,
                device="cpu",
                rounds=3,
                median_s=0.5,
                ratio_to_sgd=1.0,
            )
        ]  # fmt: skip
    ).to_csv(results / "steptime_cpu_fmnist_2c2d.csv", index=False)
    make_all(results, tmp_path / "plots")
    report = (results / "REPORT.md").read_text()
    assert "## Best hyperparameters: the paper (App. C) beside ours" in report
    assert "| mnist_logreg | KFRA | 0.01 / 0.01 (int) | — (no run) |" in report
    assert "## Step time relative to SGD-momentum" in report
    assert "| `steptime_cpu_fmnist_2c2d.csv` | fmnist_2c2d | 128 | 3 | 500.0 ms |" in report
