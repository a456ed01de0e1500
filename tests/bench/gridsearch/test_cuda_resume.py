"""A grid-search run resumed from its checkpoint on a real CUDA device (``make gpu-check``).

The simulated versions (``meta`` standing in for the GPU) are in ``test_checkpoint.py``; this
one needs CUDA: the checkpoint holds the CUDA RNG stream, DiagGGN-MC draws its Monte-Carlo
labels from it, so a resume that did not restore it would diverge from the uninterrupted run.
"""

from __future__ import annotations

import math

import pytest
import torch

from bench.gridsearch.store import RunStore
from bench.gridsearch.train import train_run
from tests.bench.gridsearch.test_checkpoint import interrupted
from tests.bench.gridsearch.test_train import TinyProblem, config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _close(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-5, abs_tol=1e-7)
    except ValueError:
        return False


def test_resume_on_cuda_restores_the_cuda_rng_and_matches_the_whole_run(tmp_path, monkeypatch):
    base = config("DiagGGNMC", epochs=3)
    cfg = type(base).from_dict({**base.to_dict(), "device": "cuda"})
    whole = RunStore(tmp_path / "whole")
    assert train_run(cfg, whole, problem=TinyProblem()) == "finished"
    store = interrupted(tmp_path, monkeypatch, cfg, epochs_done=1)
    ckpt = torch.load(store.checkpoint_path(cfg.run_id), weights_only=True)
    assert "cuda" in ckpt["rng"]  # the CUDA stream was saved

    assert train_run(cfg, store, problem=TinyProblem()) == "finished"
    attempt = store.read_sidecar(cfg.run_id)["attempts"][-1]
    assert attempt["resumed_from_epoch"] == 1
    assert attempt["device"].startswith("cuda") and not attempt.get("rng_not_restored")
    got, want = store.read_rows(cfg.run_id), whole.read_rows(cfg.run_id)
    assert len(got) == len(want) == 4
    for row_got, row_want in zip(got, want, strict=True):
        for key in row_want:
            if key != "train_time_s":
                assert _close(row_got[key], row_want[key]), (key, row_got[key], row_want[key])
