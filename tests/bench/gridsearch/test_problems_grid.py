"""The grid search on the paper's four problems (issue 14): sources, per-problem methods, sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.gridsearch.cli import plan_from_argv
from bench.gridsearch.grid import (
    CURVATURE_METHODS,
    PAPER_METHODS,
    PAPER_PROBLEMS,
    RunConfig,
    canonical_source,
)
from bench.gridsearch.store import RunStore
from bench.gridsearch.train import train_run

ROOT = Path(__file__).resolve().parents[3]


def test_committed_runs_keep_their_ids():
    """Every committed sidecar's config still hashes to its file name (no run id moved)."""
    sidecars = [
        p
        for p in (ROOT / "results" / "gridsearch" / "reference").glob("*/*.json")
        if not p.name.startswith(".")
    ]
    assert sidecars
    for path in sidecars:
        config = RunConfig.from_dict(json.loads(path.read_text())["config"])
        assert config.run_id == path.stem, path


def test_real_data_names_hash_alike():
    cifar = RunConfig("cifar10_3c3d", "Momentum", 0.01, source="cifar")
    assert RunConfig("cifar10_3c3d", "Momentum", 0.01, source="real").run_id == cifar.run_id
    assert RunConfig("cifar10_3c3d", "Momentum", 0.01).run_id == cifar.run_id  # default: real
    mnist = RunConfig("mnist_logreg", "Momentum", 0.01, source="mnist")
    assert RunConfig("mnist_logreg", "Momentum", 0.01, source="real").run_id == mnist.run_id
    synthetic = RunConfig("mnist_logreg", "Momentum", 0.01, source="synthetic")
    assert synthetic.run_id != mnist.run_id
    assert canonical_source("fmnist_2c2d", "real") == "real"
    for problem, source in (("mnist_logreg", "cifar"), ("cifar10_3c3d", "mnist")):
        with pytest.raises(ValueError, match="does not fit"):
            RunConfig(problem, "Adam", 0.01, source=source)
    with pytest.raises(ValueError, match="unknown source"):
        RunConfig("mnist_logreg", "Adam", 0.01, source="imagenet")


def test_paper_methods_per_problem():
    assert PAPER_PROBLEMS == ("mnist_logreg", "fmnist_2c2d", "cifar10_3c3d", "cifar100_allcnnc")
    kfra = [p for p, methods in PAPER_METHODS.items() if "KFRA" in methods]
    assert kfra == ["mnist_logreg"]
    assert set(PAPER_METHODS["mnist_logreg"]) >= set(CURVATURE_METHODS)
    grid, _ = plan_from_argv(
        ["--problems", *PAPER_PROBLEMS, "--lrs", "0.1", "--dampings", "1", "--baseline-lrs", "0.1"]
    )
    by_problem = {p: sorted({j.method for j in grid if j.problem == p}) for p in PAPER_PROBLEMS}
    assert by_problem == {p: sorted(PAPER_METHODS[p]) for p in PAPER_PROBLEMS}
    assert {j.source for j in grid} == {"real"}
    assert {j.epochs for j in grid if j.problem == "mnist_logreg"} == {50}


def test_cli_refuses_unknown_source(capsys):
    from bench.cli import main

    with pytest.raises(SystemExit):
        main(["gridsearch", "status", "--source", "imagenet"])
    assert "invalid choice" in capsys.readouterr().err


def test_mnist_synthetic_sizes_reach_the_run(tmp_path):
    argv = ["--problems", "mnist_logreg", "--source", "synthetic", "--methods", "KFRA",
            "--lrs", "0.01", "--dampings", "0.01", "--epochs", "1", "--batch-size", "16",
            "--n-train", "200", "--n-test", "48", "--train-eval-size", "32"]  # fmt: skip
    (job,), _ = plan_from_argv(argv)
    assert job.options == {"data": {"n_test": 48, "n_train": 200, "train_eval_size": 32}}
    store = RunStore(tmp_path)
    assert train_run(job, store) == "finished"
    rows = store.read_rows(job.run_id)
    # 200 images: 40 held out (a fifth), 160 train = 10 steps of 16 (drop_last)
    assert [int(r["step"]) for r in rows] == [0, 10]
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])  # KFRA trains


def test_smoke_grid_covers_every_method_on_every_paper_problem():
    from bench.gridsearch.smoke import SMOKE_ARGS

    grid, seeds = plan_from_argv(SMOKE_ARGS[False])
    covered = {(j.problem, j.method) for j in grid}
    assert covered == {(p, m) for p in PAPER_PROBLEMS for m in PAPER_METHODS[p]}
    assert {j.source for j in grid} == {"synthetic"} and len(seeds) >= 2
    assert all(j.options["max_steps_per_epoch"] <= 2 for j in grid)


def test_committed_smoke_reference_is_done():
    """The committed smoke store holds every run its grid (and the seed reruns) expects."""
    from bench.gridsearch.smoke import expected_jobs

    out = ROOT / "results" / "gridsearch" / "reference" / "smoke"
    grid, reruns = expected_jobs(out, False, plan_from_argv)
    store = RunStore(out)
    assert reruns, "no best setting chosen"
    assert all(store.is_done(j.run_id) for j in grid + reruns)
