"""The optimizers beyond the paper as grid-search methods (issue 15): KFC-expand KFAC/KFLR, EKFAC.

They run on the paper's alpha x lambda grid when ``--methods`` asks for them, never by default,
and train like the paper's methods (loss decreases on a tiny synthetic problem, same run store).
"""

from __future__ import annotations

import pytest
import torch

from bench.gridsearch.cli import plan_from_argv
from bench.gridsearch.grid import (
    EXTENDED_METHODS,
    METHODS,
    PAPER_DEFAULT_METHODS,
    PAPER_METHODS,
    RunConfig,
    grid,
)
from bench.gridsearch.store import RunStore
from bench.gridsearch.train import train_run
from tests.bench.cli_cases import run_cli
from tests.bench.gridsearch.test_train import DATA, TinyProblem


def test_extended_methods_are_the_optimizers():
    from extensions.optimizers import EXTENDED, make_optimizer

    assert EXTENDED_METHODS == EXTENDED
    assert set(EXTENDED_METHODS) <= set(METHODS)
    for method in EXTENDED_METHODS:  # every grid method builds an optimizer
        make_optimizer(method, [torch.zeros(2, requires_grad=True)], 0.1, 1e-3)


def test_overhead_times_the_same_curvatures_under_the_same_names():
    from bench.overhead.backends import get_backend
    from bench.overhead.peers import EKFAC, EXPAND_QUANTITIES

    assert EKFAC in EXTENDED_METHODS and get_backend("ours").supports(EKFAC)
    expand = get_backend("ours_expand")
    assert {f"{q}-expand" for q in EXPAND_QUANTITIES} <= set(EXTENDED_METHODS)
    assert all(expand.supports(q) for q in EXPAND_QUANTITIES)


def test_extended_methods_are_never_defaults():
    assert all(not set(EXTENDED_METHODS) & set(ms) for ms in PAPER_METHODS.values())
    default = {j.method for j in grid(["tiny_unlisted"], lrs=[0.1], dampings=[1.0])}
    assert default == set(PAPER_DEFAULT_METHODS)
    runs, _ = plan_from_argv(["--problems", "cifar10_3c3d"])
    assert not {j.method for j in runs} & set(EXTENDED_METHODS)


def test_methods_flag_takes_extended_methods_on_the_paper_grid():
    argv = ["--problems", "cifar10_3c3d", "--methods", "EKFAC", "KFAC-expand", "Adam"]
    runs, _ = plan_from_argv([*argv, "--lrs", "0.1", "0.01", "--dampings", "1", "0.1", "0.01"])
    by_method = {m: [j for j in runs if j.method == m] for m in ("EKFAC", "KFAC-expand")}
    for method, jobs in by_method.items():
        assert len(jobs) == 6, method  # 2 lrs x 3 dampings, like a paper curvature method
        assert {(j.lr, j.damping) for j in jobs} == {
            (lr, d) for lr in (0.1, 0.01) for d in (1.0, 0.1, 0.01)
        }
        assert all(j.is_curvature for j in jobs)
    with pytest.raises(ValueError, match="needs a damping"):
        RunConfig("cifar10_3c3d", "EKFAC-exact", 0.1)


def test_unknown_method_still_errors_listing_valid_names():
    with pytest.raises(ValueError, match="valid methods: .*KFAC-expand.*EKFAC-exact"):
        RunConfig("cifar10_3c3d", "EKFAC-approx", 0.1, 1.0)
    proc = run_cli(["gridsearch", "run", "--methods", "EKFAC-approx"])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "argument --methods: invalid choice: 'EKFAC-approx'" in proc.stderr
    assert all(m in proc.stderr for m in EXTENDED_METHODS)


@pytest.mark.parametrize("method", EXTENDED_METHODS)
def test_extended_method_trains_on_a_tiny_problem(tmp_path, method):
    cfg = RunConfig(
        "tiny",
        method,
        0.05,
        0.1,
        seed=3,
        epochs=2,
        batch_size=16,
        source="synthetic",
        options={"data": DATA, "backend": "ours"},
    )
    store = RunStore(tmp_path)
    assert train_run(cfg, store, problem=TinyProblem()) == "finished"
    rows = store.read_rows(cfg.run_id)
    assert [int(r["step"]) for r in rows] == [0, 8, 16]
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert store.read_sidecar(cfg.run_id)["curvature_backend"] == "ours"


@pytest.mark.parametrize("method", ["EKFAC", "KFLR-expand"])
def test_steptime_times_extended_methods(method):
    from bench.gridsearch.steptime import _step_fn

    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    _step_fn(TinyProblem(), method, torch.device("cpu"), x, y, "ours")()
