"""Where runs train (issue 12 items 2, 4, 5, 6), simulated on a CPU-only machine.

* the device ``auto`` is resolved in the process that trains, not on the submitting host;
* ``--slurm-gpus`` and ``--device`` agree at submit time, and what is submitted names the store
  and the data directory by absolute paths;
* every attempt records host, device, CUDA_VISIBLE_DEVICES and wall time; ``status`` shows the
  devices finished runs used;
* a local GPU pool maps its slots onto the parent's CUDA_VISIBLE_DEVICES (indices or UUIDs);
* ``pyproject.toml`` claims only Pythons that have what the executors use.
"""

from __future__ import annotations

import pytest
import tomllib
import torch

from bench.cli import main
from bench.gridsearch import cli, executors
from bench.gridsearch.executors import LocalPoolExecutor
from bench.gridsearch.store import HOSTNAME_ENV, RunStore
from bench.gridsearch.train import resolve_device, train_run
from tests.bench.cli_cases import ROOT
from tests.bench.gridsearch.test_store import tiny_runs
from tests.bench.gridsearch.test_train import TinyProblem, config


@pytest.mark.parametrize("has_gpu", [True, False])
def test_auto_is_resolved_in_the_training_process(monkeypatch, has_gpu):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: has_gpu)
    assert resolve_device("auto").type == ("cuda" if has_gpu else "cpu")
    assert resolve_device("cpu").type == "cpu"


class Captured:
    """Stands in for the SLURM executor: records what would be submitted."""

    def __init__(self):
        self.kwargs, self.jobs, self.roots = {}, [], []

    def make(self, kind, **kwargs):
        self.kwargs = {"kind": kind, **kwargs}
        return self

    def run(self, jobs, store):
        self.jobs += jobs
        self.roots.append(store.root)


SLURM_SWEEP = ["gridsearch", "run", "--executor", "slurm", "--problems", "cifar10_3c3d",
               "--methods", "Adam", "--baseline-lrs", "0.01", "--no-best"]  # fmt: skip


@pytest.mark.parametrize(("flags", "device"), [(["--slurm-gpus", "1"], "cuda"), ([], "auto")])
def test_slurm_sweep_from_a_login_node_without_gpu(tmp_path, monkeypatch, flags, device):
    """The submitting host has no GPU: the tasks' device is not decided here."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(cli, "check_slurm_available", lambda: None, raising=False)
    captured = Captured()
    monkeypatch.setattr(executors, "make_executor", captured.make)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    main([*SLURM_SWEEP, *flags, "--out", "rel/store", "--data-dir", "data"])
    assert captured.jobs and {job.device for job in captured.jobs} == {device}
    assert captured.roots == [tmp_path / "rel" / "store"]  # absolute in what is submitted
    assert captured.kwargs["setup"][0] == f"export CURVBENCH_DATA={tmp_path / 'data'}"


def test_every_attempt_records_where_it_ran_and_status_shows_it(tmp_path, monkeypatch, capsys):
    from tests.bench.gridsearch.test_checkpoint import interrupted

    cfg = config("Momentum", lr=1e-2, epochs=2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-1234")
    monkeypatch.setenv(HOSTNAME_ENV, "node-7")
    store = interrupted(tmp_path, monkeypatch, cfg, epochs_done=1)
    monkeypatch.setenv(HOSTNAME_ENV, "node-8")
    assert train_run(cfg, store, problem=TinyProblem()) == "finished"
    attempts = store.read_sidecar(cfg.run_id)["attempts"]
    assert [a["host"] for a in attempts] == ["node-7", "node-8"]
    for attempt in attempts:
        assert attempt["device"] == "cpu" and attempt["device_name"]
        assert attempt["cuda_visible_devices"] == "GPU-1234"
        assert attempt["wall_s"] > 0

    cli.print_status([cfg], store, [], best=False)
    header, row, *_ = capsys.readouterr().out.splitlines()
    assert header.split()[-1] == "devices"
    assert f"cpu ({attempts[-1]['device_name']}) x1" in row


@pytest.mark.parametrize(
    ("parent", "gpus", "slots"),
    [
        ("2,3", ["0", "1"], ["2", "3"]),
        ("GPU-aa11,GPU-bb22", ["1"], ["GPU-bb22"]),
        (None, ["5", "7"], ["5", "7"]),
        ("0,1", ["GPU-cc33"], ["GPU-cc33"]),
    ],
)
def test_pool_slots_follow_the_parents_visible_devices(monkeypatch, parent, gpus, slots):
    if parent is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", parent)
    assert LocalPoolExecutor(gpus=gpus).slot_devices == slots


def test_pool_slot_beyond_the_parents_list_is_an_error(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4")
    with pytest.raises(ValueError, match="GPU 1 is not visible"):
        LocalPoolExecutor(gpus=["0", "1"])


def test_pool_workers_see_the_parents_gpus(tmp_path, monkeypatch):
    """The real pool: under CUDA_VISIBLE_DEVICES=2,3 the two slots' runs see 2 and 3."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    store, jobs = RunStore(tmp_path), tiny_runs(2)
    LocalPoolExecutor(runs_per_slot=1, gpus=["0", "1"], threads_per_run=1).run(jobs, store)
    seen = sorted(store.read_sidecar(j.run_id)["attempts"][0]["cuda_visible_devices"] for j in jobs)
    assert seen == ["2", "3"]


def test_claimed_python_has_what_the_pool_uses():
    """ProcessPoolExecutor(max_tasks_per_child=...) exists from Python 3.11 on."""
    claim = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert claim.startswith(">=")
    major, minor = (int(x) for x in claim[2:].split(".")[:2])
    assert (major, minor) >= (3, 11), claim
