"""Portable checkpoints (issue 12 item 1): load on the CPU, move to the run's device, report RNG
streams that this device lacks, fall back past a corrupt checkpoint, never a crash loop.

A CPU cannot resume on CUDA, so the non-CPU device is ``meta``: like a GPU, its tensors are not
CPU tensors, and ``torch.set_rng_state`` refuses them (what made every CUDA resume fail).
"""

from __future__ import annotations

import pytest
import torch

from bench.gridsearch import train as train_module
from bench.gridsearch.store import RunStore
from bench.gridsearch.train import train_run
from tests.bench.gridsearch.test_train import Preempted, TinyProblem, config


def metrics(store, cfg):
    return [
        {k: v for k, v in r.items() if k != "train_time_s"} for r in store.read_rows(cfg.run_id)
    ]


def preempt_after(monkeypatch, epochs_done: int):
    """Make the next ``train_run`` die in epoch ``epochs_done + 1``; returns the undo."""
    real, calls = train_module._Run.train_epoch, []

    def epoch_then_die(self):
        calls.append(1)
        if len(calls) == epochs_done + 1:
            raise Preempted
        return real(self)

    monkeypatch.setattr(train_module._Run, "train_epoch", epoch_then_die)
    return lambda: monkeypatch.setattr(train_module._Run, "train_epoch", real)


def interrupted(tmp_path, monkeypatch, cfg, epochs_done):
    store = RunStore(tmp_path / "broken")
    undo = preempt_after(monkeypatch, epochs_done)
    with pytest.raises(Preempted):
        train_run(cfg, store, problem=TinyProblem())
    undo()
    return store


@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter")
def test_checkpoint_loads_on_cpu_and_moves_to_a_non_cpu_device(tmp_path, monkeypatch):
    cfg = config("Adam", lr=1e-3, epochs=3)
    store = interrupted(tmp_path, monkeypatch, cfg, epochs_done=1)
    saved = torch.load(store.checkpoint_path(cfg.run_id), weights_only=True)

    meta_cfg = type(cfg).from_dict({**cfg.to_dict(), "device": "meta"})
    real_load = train_module.load_data  # the data stays on the CPU: meta has no generator
    monkeypatch.setattr(
        train_module, "load_data", lambda c, p, d: real_load(c, p, torch.device("cpu"))
    )
    run = train_module._Run(meta_cfg, store, TinyProblem())
    (path, *_) = run.checkpoints()
    assert run.restore(path) == []
    assert run.epoch == 1 and run.rows == saved["rows"]
    assert all(p.device.type == "meta" for p in run.model.parameters())
    state = [t for s in run.optimizer.state.values() for k, t in s.items() if k != "step"]
    assert state and all(t.device.type == "meta" for t in state)
    assert torch.equal(torch.get_rng_state(), saved["rng"]["cpu"])


def test_cuda_rng_stream_resumed_on_cpu_is_reported_not_fatal(tmp_path, monkeypatch):
    cfg = config("Momentum", lr=1e-2, epochs=2)
    whole = RunStore(tmp_path / "whole")
    train_run(cfg, whole, problem=TinyProblem())
    store = interrupted(tmp_path, monkeypatch, cfg, epochs_done=1)
    path = store.checkpoint_path(cfg.run_id)
    ckpt = torch.load(path, weights_only=True)
    ckpt["rng"]["cuda"] = torch.zeros(16, dtype=torch.uint8)  # as a CUDA run would have saved
    torch.save(ckpt, path)

    assert train_run(cfg, store, problem=TinyProblem()) == "finished"
    attempt = store.read_sidecar(cfg.run_id)["attempts"][-1]
    assert attempt["resumed_from_epoch"] == 1
    assert "cuda" in attempt["rng_not_restored"][0]
    assert metrics(store, cfg) == metrics(whole, cfg)  # the CPU stream was restored


@pytest.mark.parametrize("broken", ["latest", "both"])
def test_truncated_checkpoint_falls_back_or_restarts(tmp_path, monkeypatch, broken):
    cfg = config("Momentum", lr=1e-2, epochs=3)
    whole = RunStore(tmp_path / "whole")
    train_run(cfg, whole, problem=TinyProblem())
    store = interrupted(tmp_path, monkeypatch, cfg, epochs_done=2)
    latest = store.checkpoint_path(cfg.run_id)
    paths = [latest, *(p for p in latest.parent.glob(f"{cfg.run_id}.*") if p != latest)]
    assert len(paths) == 2  # the last two are kept
    for path in paths[: 1 if broken == "latest" else 2]:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])

    assert train_run(cfg, store, problem=TinyProblem()) == "finished"
    attempt = store.read_sidecar(cfg.run_id)["attempts"][-1]
    if broken == "latest":
        assert attempt["resumed_from_epoch"] == 1 and len(attempt["bad_checkpoints"]) == 1
    else:
        assert "resumed_from_epoch" not in attempt and len(attempt["bad_checkpoints"]) == 2
        assert "restarted" in attempt
    assert metrics(store, cfg) == metrics(whole, cfg)
    assert not list((store.root / "checkpoints").glob("*"))


def test_torn_csv_is_rewritten_from_the_checkpoint_never_appended_to(tmp_path, monkeypatch, capsys):
    """Issue 13: a CSV cut mid-row (a copy, a full disk) is reported; the checkpoint's rows win."""
    cfg = config("Momentum", lr=1e-2, epochs=3)
    whole = RunStore(tmp_path / "whole")
    train_run(cfg, whole, problem=TinyProblem())
    store = interrupted(tmp_path, monkeypatch, cfg, epochs_done=1)
    csv = store.csv_path(cfg.run_id)
    csv.write_bytes(csv.read_bytes()[:-7])  # cut in the last row

    assert train_run(cfg, store, problem=TinyProblem()) == "finished"
    attempt = store.read_sidecar(cfg.run_id)["attempts"][-1]
    assert f"{csv.name}:3: " in attempt["torn_csv"] and attempt["resumed_from_epoch"] == 1
    assert "never appended to" in capsys.readouterr().out
    assert metrics(store, cfg) == metrics(whole, cfg)
