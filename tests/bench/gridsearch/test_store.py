"""The sweep: run ids, grids, the store (status, locks), best-setting selection, executors."""

from __future__ import annotations

import os

import numpy as np
import pytest

from bench.gridsearch.executors import InProcessExecutor, LocalPoolExecutor, make_executor
from bench.gridsearch.grid import BASELINE_LRS, PAPER_DAMPINGS, PAPER_LRS, RunConfig, grid
from bench.gridsearch.jobs import pending
from bench.gridsearch.store import RunStore, best_settings, load_runs, seed_runs, status_table
from bench.results_io import atomic_write_csv
from bench.spec import GRIDSEARCH_COLUMNS


def cfg(method="KFAC", lr=1e-3, damping=1e-2, **kw):
    return RunConfig("cifar10_3c3d", method, lr, damping, epochs=2, batch_size=32, **kw)


# ----------------------------------------------------------------------------- run ids


def test_run_id_ignores_float_noise_and_device():
    a = cfg(lr=np.logspace(-4, 0, 5)[1], damping=np.logspace(-4, 1, 6)[2])
    b = cfg(lr=1e-3, damping=1e-2, device="cuda")
    assert a.run_id == b.run_id
    assert RunConfig.from_dict(a.to_dict()).run_id == a.run_id


@pytest.mark.parametrize(
    "change",
    [
        {"lr": 1e-2},
        {"damping": 1e-1},
        {"seed": 43},
        {"options": {"average": "fresh"}},
        {"options": {"inverse_every": 20}},
        {"source": "synthetic"},
    ],
    ids=["lr", "damping", "seed", "average", "inverse_every", "source"],
)
def test_run_id_changes_with_what_changes_results(change):
    assert cfg(**change).run_id != cfg().run_id


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "LBFGS"}, "valid methods: DiagGGNExact"),
        ({"method": "KFAC", "damping": None}, "needs a damping"),
        ({"method": "Adam", "damping": 0.1}, "takes no damping"),
        ({"source": "imagenet"}, "valid: real, synthetic, cifar, mnist"),
    ],
    ids=["unknown_method", "curvature_without_damping", "baseline_with_damping", "source"],
)
def test_bad_configs_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        cfg(**kwargs)


# ----------------------------------------------------------------------------- grids


def test_paper_grid_sizes():
    assert np.allclose(PAPER_LRS, np.logspace(-4, 0, 5))
    assert np.allclose(PAPER_DAMPINGS, np.logspace(-4, 1, 6))
    assert np.allclose(BASELINE_LRS, np.logspace(-5, 2, 36))
    runs = grid(["cifar10_3c3d", "cifar100_allcnnc"])
    by = {}
    for r in runs:
        by[(r.problem, r.method)] = by.get((r.problem, r.method), 0) + 1
    assert by == {
        ("cifar10_3c3d", "DiagGGNExact"): 30,
        ("cifar10_3c3d", "DiagGGNMC"): 30,
        ("cifar10_3c3d", "KFAC"): 30,
        ("cifar10_3c3d", "KFLR"): 30,
        ("cifar10_3c3d", "Momentum"): 36,
        ("cifar10_3c3d", "Adam"): 36,
        ("cifar100_allcnnc", "DiagGGNMC"): 30,
        ("cifar100_allcnnc", "KFAC"): 30,
        ("cifar100_allcnnc", "Momentum"): 36,
        ("cifar100_allcnnc", "Adam"): 36,
    }
    assert len({r.run_id for r in runs}) == len(runs)


# ----------------------------------------------------------------------------- store


def fake_run(store, config, status, valid_accs):
    rows = [
        {c: 0 for c in GRIDSEARCH_COLUMNS} | {"run_id": config.run_id, "epoch": e, "valid_acc": a}
        for e, a in enumerate(valid_accs)
    ]
    atomic_write_csv(store.csv_path(config.run_id), rows, GRIDSEARCH_COLUMNS)
    store.write_sidecar(
        config.run_id, {"status": status, "identity": config.identity(), "config": config.to_dict()}
    )


def test_status_counts_and_stale_lock(tmp_path):
    store = RunStore(tmp_path)
    jobs = [cfg(lr=lr) for lr in (1e-4, 1e-3, 1e-2, 1e-1, 1.0)]
    fake_run(store, jobs[0], "finished", [0.1, 0.5])
    fake_run(store, jobs[1], "diverged", [0.1])
    fake_run(store, jobs[2], "failed", [])
    fake_run(store, jobs[3], "running", [0.1])  # no live lock -> interrupted
    (row,) = status_table(jobs + jobs[:1], store)  # a duplicate is counted once
    assert row["expected"] == 5
    assert [row[k] for k in ("finished", "diverged", "failed", "interrupted", "pending")] == [
        1,
        1,
        1,
        1,
        1,
    ]
    assert [j.run_id for j in pending(jobs, store)] == [j.run_id for j in jobs[2:]]

    with store.lock(jobs[3].run_id) as held:  # a live lock (this process) -> running
        assert held and store.status(jobs[3].run_id) == "running"
        with store.lock(jobs[3].run_id) as again:
            assert not again
    store.lock_path(jobs[4].run_id).write_text(f"{os.uname().nodename} 999999999")
    with store.lock(jobs[4].run_id) as taken:  # a dead process's lock is taken over
        assert taken


def test_best_setting_by_final_valid_acc(tmp_path):
    store = RunStore(tmp_path)
    jobs = [cfg(lr=lr, damping=d) for lr in (1e-3, 1e-2) for d in (1e-2, 1e-1)]
    base = [cfg("Adam", lr=lr, damping=None) for lr in (1e-4, 1e-3)]
    accs = {0: [0.1, 0.9, 0.6], 1: [0.1, 0.2, 0.7], 2: [0.1, 0.3, 0.7], 3: [0.1, 2.0]}
    for i, job in enumerate(jobs):
        fake_run(store, job, "diverged" if i == 3 else "finished", accs[i])
    assert best_settings(jobs + base, store)[("cifar10_3c3d", "Adam")] is None  # not done
    fake_run(store, base[0], "finished", [0.1, 0.4])
    fake_run(store, base[1], "diverged", [0.1])
    best = best_settings(jobs + base, store)
    # final (not best-ever) accuracy, tie -> first in grid order, diverged never wins
    assert best[("cifar10_3c3d", "KFAC")] == jobs[1]
    assert best[("cifar10_3c3d", "Adam")] == base[0]
    reruns = seed_runs(best, seeds=(42, 43, 44))
    assert [r.seed for r in reruns] == [42, 43, 44, 42, 43, 44]
    assert reruns[0].run_id == jobs[1].run_id  # the grid seed's run is reused

    table = load_runs(store)
    assert set(table["run_id"]) == {j.run_id for j in jobs + base}
    assert table.groupby("run_id")["final"].sum().eq(1).all()


# ----------------------------------------------------------------------------- executors


def test_make_executor_picks_in_process_for_one_slot():
    assert isinstance(make_executor("local"), InProcessExecutor)
    assert isinstance(make_executor("local", jobs=2), LocalPoolExecutor)
    pool = make_executor("local", jobs=1, runs_per_slot=1, gpus=["0", "1"])
    assert isinstance(pool, InProcessExecutor)  # -j 1: one slot
    pool = make_executor("local", jobs=2, runs_per_slot=2, gpus=["0", "1", "2"])
    assert pool.slot_devices == ["0", "1"] and pool.runs_per_slot == 2
    with pytest.raises(ValueError, match="valid: local, slurm"):
        make_executor("kubernetes")


def tiny_runs(n):
    return [
        RunConfig(
            "cifar10_3c3d",
            "Momentum",
            lr,
            None,
            epochs=1,
            batch_size=32,
            source="synthetic",
            options={
                "max_steps_per_epoch": 1,
                "data": {"n_train": 160, "n_test": 32, "train_eval_size": 32},
            },
        )
        for lr in (0.01, 0.02, 0.03, 0.04)[:n]
    ]


def test_process_pool_sets_one_gpu_slot_per_worker(tmp_path):
    """CPU twin of the GPU slots: each run's process sees its slot's CUDA_VISIBLE_DEVICES."""
    store, jobs = RunStore(tmp_path), tiny_runs(2)
    LocalPoolExecutor(runs_per_slot=1, gpus=["5", "7"], threads_per_run=1).run(jobs, store)
    seen = []
    for job in jobs:
        sidecar = store.read_sidecar(job.run_id)
        assert sidecar["status"] == "finished"
        seen.append(sidecar["attempts"][0]["cuda_visible_devices"])
    assert sorted(seen) == ["5", "7"]
    assert len({store.read_sidecar(j.run_id)["attempts"][0]["pid"] for j in jobs}) == 2
    before = [store.read_sidecar(j.run_id) for j in jobs]
    InProcessExecutor().run(jobs, store)  # nothing left to do
    assert [store.read_sidecar(j.run_id) for j in jobs] == before


def test_failed_run_is_recorded_and_does_not_stop_the_sweep(tmp_path):
    store = RunStore(tmp_path)
    bad = RunConfig("cifar10_3c3d", "Adam", 0.01, None, epochs=1, batch_size=32,
                    source="synthetic", options={"data": {"n_train": 10}})  # fmt: skip
    good = tiny_runs(1)[0]
    InProcessExecutor().run([bad, good], store)
    assert store.status(bad.run_id) == "failed"
    assert "batch_size 32 exceeds" in store.read_sidecar(bad.run_id)["error"]
    assert store.status(good.run_id) == "finished"
