"""One training run: DeepOBS protocol rows, divergence, checkpoint/resume equals uninterrupted."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from bench.gridsearch import train as train_module
from bench.gridsearch.grid import RunConfig
from bench.gridsearch.store import RunStore
from bench.gridsearch.train import train_run

DATA = {"n_train": 160, "n_test": 32, "train_eval_size": 32}  # 8 steps/epoch at batch 16


@dataclass(frozen=True)
class TinyProblem:
    """A stand-in problem (bench.spec.Problem) small enough for CPU tests, on CIFAR-shaped data."""

    name: str = "tiny"
    dataset: str = "cifar10"
    num_classes: int = 10
    l2: float = 1e-2
    batch_size: int = 16
    epochs: int = 2
    in_deepobs: bool = False

    def model(self):
        net = nn.Sequential(
            nn.Conv2d(3, 2, 5, stride=8), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 10)
        )
        return net

    def loss_fn(self, reduction="mean"):
        return nn.CrossEntropyLoss(reduction=reduction)

    def l2_groups(self, model):
        named = list(model.named_parameters())
        return [
            {"params": [p for n, p in named if "bias" not in n], "l2": self.l2},
            {"params": [p for n, p in named if "bias" in n], "l2": 0.0},
        ]

    def l2_penalty(self, model):
        return 0.5 * self.l2 * sum(p.pow(2).sum() for p in self.l2_groups(model)[0]["params"])


def config(method="KFAC", lr=0.05, damping=0.1, epochs=2, **options):
    return RunConfig(
        "tiny",
        method,
        lr,
        damping if method not in ("Momentum", "Adam") else None,
        seed=3,
        epochs=epochs,
        batch_size=16,
        source="synthetic",
        options={"data": DATA, "backend": "backpack", **options},
    )


def test_rows_follow_deepobs_protocol(tmp_path):
    store, cfg = RunStore(tmp_path), config(epochs=2)
    assert train_run(cfg, store, problem=TinyProblem()) == "finished"
    rows = store.read_rows(cfg.run_id)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert [int(r["step"]) for r in rows] == [0, 8, 16]
    assert float(rows[0]["train_time_s"]) == 0.0 < float(rows[1]["train_time_s"])

    # epoch-0 test loss/accuracy by hand: fresh seeded model, eval mode, CE + L2 per batch
    problem = TinyProblem()
    torch.manual_seed(cfg.seed)
    model = problem.model().eval()
    data = train_module.load_data(cfg, problem, torch.device("cpu"))
    with torch.no_grad():
        batches = list(data.test())
        loss = sum(nn.functional.cross_entropy(model(x), y) for x, y in batches) / len(batches)
        acc = sum((model(x).argmax(1) == y).float().mean() for x, y in batches) / len(batches)
    assert float(rows[0]["test_loss"]) == pytest.approx(
        float((loss + problem.l2_penalty(model)).detach())
    )
    assert float(rows[0]["test_acc"]) == pytest.approx(float(acc))

    sidecar = store.read_sidecar(cfg.run_id)
    assert sidecar["status"] == "finished" and len(sidecar["attempts"]) == 1
    assert [s for s, _ in sidecar["minibatch_losses"]] == [0, 10]
    assert sidecar["environment"]["torch"] == torch.__version__
    assert not store.checkpoint_path(cfg.run_id).exists()


class Preempted(Exception):
    """Raised by the patched epoch to simulate a kill between two epochs."""


@pytest.mark.parametrize(
    ("method", "options"),
    [("KFAC", {}), ("DiagGGNMC", {"average": "fresh", "inverse_every": 3}), ("Momentum", {})],
    ids=["kfac", "diagggnmc_fresh_every3", "momentum"],
)
def test_resumed_run_equals_uninterrupted_run(tmp_path, monkeypatch, method, options):
    cfg = config(method, epochs=3, **options)
    whole = RunStore(tmp_path / "whole")
    train_run(cfg, whole, problem=TinyProblem())

    broken = RunStore(tmp_path / "broken")
    real_epoch, calls = train_module._Run.train_epoch, []

    def epoch_then_die(self):
        calls.append(1)
        if len(calls) == 2:  # dies during the second epoch, after the first was checkpointed
            raise Preempted
        return real_epoch(self)

    monkeypatch.setattr(train_module._Run, "train_epoch", epoch_then_die)
    with pytest.raises(Preempted):
        train_run(cfg, broken, problem=TinyProblem())
    assert broken.read_sidecar(cfg.run_id)["status"] == "running"
    assert len(broken.read_rows(cfg.run_id)) == 2
    monkeypatch.setattr(train_module._Run, "train_epoch", real_epoch)
    assert train_run(cfg, broken, problem=TinyProblem()) == "finished"

    def metrics(store):
        return [
            {k: v for k, v in r.items() if k != "train_time_s"} for r in store.read_rows(cfg.run_id)
        ]

    assert metrics(broken) == metrics(whole)
    sidecar = broken.read_sidecar(cfg.run_id)
    assert len(sidecar["attempts"]) == 2 and sidecar["resumed"][0]["from_epoch"] == 1
    assert sidecar["attempts"][1]["resumed_from_epoch"] == 1
    assert sidecar["minibatch_losses"] == whole.read_sidecar(cfg.run_id)["minibatch_losses"]


@pytest.mark.parametrize("method", ["Momentum", "DiagGGNMC"])
def test_divergence_ends_run_and_keeps_rows(tmp_path, method):
    """NaN weights between logged steps make MC sampling raise: still a divergence."""
    store, cfg = RunStore(tmp_path), config(method, lr=1e8, damping=1e-8, epochs=3)
    assert train_run(cfg, store, problem=TinyProblem()) == "diverged"
    sidecar = store.read_sidecar(cfg.run_id)
    assert sidecar["status"] == "diverged" and sidecar["epochs_done"] < 3
    assert len(store.read_rows(cfg.run_id)) >= 1
    assert not store.checkpoint_path(cfg.run_id).exists()
    assert train_run(cfg, store, problem=TinyProblem()) == "diverged"  # not retried
    assert len(store.read_sidecar(cfg.run_id)["attempts"]) == 1


def test_finished_run_is_not_redone(tmp_path):
    store, cfg = RunStore(tmp_path), config("Adam", lr=1e-3, epochs=1)
    train_run(cfg, store, problem=TinyProblem())
    before = store.read_sidecar(cfg.run_id)
    assert train_run(cfg, store, problem=TinyProblem()) == "finished"
    assert store.read_sidecar(cfg.run_id) == before


def test_unknown_option_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="valid: average, inverse_every"):
        train_run(config(mystery=1), RunStore(tmp_path), problem=TinyProblem())
