"""``run_group``'s CUDA memory branch, simulated on CPU (issue 12, item 8).

One memory protocol for every backend: after the interleaved timing, every timed step is closed
and the cache emptied; then each variant, ours included, is built afresh from the same empty
state (only the staged batches allocated) and its peak above that baseline counts its model,
its pooled buffers and its per-step temporaries alike. ``torch.cuda`` is a fake allocator; the
backends are fakes whose allocations go through it.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from bench.overhead import run as overhead_run
from bench.overhead.plan import Measurement
from tests.bench.overhead.test_cuda_simulated import FakeAllocator

MB = 2**20
BATCHES = 50 * MB  # the staged batches: allocated once, before any variant
MODEL = 20 * MB
#: backend -> (pooled buffers kept from the first call until close, temporaries per step)
PROFILES = {
    "pytorch": (0, 10 * MB),
    "ours": (100 * MB, 5 * MB),  # ours: a scratch pool reused by every later step
    "backpack": (0, 105 * MB),  # BackPACK-like: fresh allocations every step
}


class FakeStep:
    """A step whose model, pool and temporaries live in the fake allocator."""

    def __init__(self, fake: FakeAllocator, backend: str) -> None:
        self.fake, (self.pool, self.temps) = fake, PROFILES[backend]
        self.pooled = False
        self.closed = False
        fake.alloc(MODEL)

    def __call__(self, inputs, targets) -> None:
        if not self.pooled:  # lazily, like ours' scratch_zeros
            self.fake.alloc(self.pool)
            self.pooled = True
        self.fake.alloc(self.temps)
        self.fake.free(self.temps)

    def clear(self) -> None:
        pass

    def close(self) -> None:
        if not self.closed:
            self.fake.free(MODEL + (self.pool if self.pooled else 0))
            self.closed = True


@pytest.fixture
def fake_cuda(monkeypatch):
    """The fake allocator; ``baselines`` gets the allocated bytes at each peak reset."""
    fake = FakeAllocator().install(monkeypatch)
    fake.baselines = []

    def reset(device=None) -> None:
        fake.baselines.append(fake.allocated)
        fake.peak = fake.allocated

    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", reset)
    monkeypatch.setattr(overhead_run, "problem_setup", lambda problem: SimpleNamespace())

    def batch_source(setup, batch_size, mode, device, seed=0):
        assert device.type == "cuda"
        fake.alloc(BATCHES)
        return lambda: (None, None)

    monkeypatch.setattr(overhead_run, "batch_source", batch_source)
    monkeypatch.setattr(
        overhead_run,
        "get_backend",
        lambda name: SimpleNamespace(name=name, available=lambda: (True, "")),
    )
    fake.built = []

    def build_step(setup, backend, quantity, device, seed=0):
        fake.built.append(backend.name)
        return FakeStep(fake, backend.name)

    monkeypatch.setattr(overhead_run, "build_step", build_step)
    return fake


def test_every_variant_ours_included_is_measured_from_the_same_empty_baseline(fake_cuda):
    plan = [
        Measurement("p", 32, "clean", "cuda", backend, quantity)
        for backend, quantity in [("pytorch", "grad"), ("ours", "DiagGGNMC"), ("backpack", "X")]
    ]
    options = overhead_run.RunOptions(rounds=2, warmup=1, memory=True, memory_steps=2)
    rows = {r["backend"]: r for r in overhead_run.run_group(plan, options)}
    assert {r["status"] for r in rows.values()} == {"ok"}
    # timed together first (3 builds), then each built alone again for its memory (3 more)
    assert fake_cuda.built == ["pytorch", "ours", "backpack"] * 2
    # the timed steps were closed before: every probe started with only the batches allocated
    assert fake_cuda.baselines == [BATCHES] * 3
    peaks = {name: r["peak_mem_mb"] for name, r in rows.items()}
    assert peaks == {
        "pytorch": pytest.approx((MODEL + 10 * MB) / MB),
        "ours": pytest.approx((MODEL + 100 * MB + 5 * MB) / MB),  # its pool counts
        "backpack": pytest.approx((MODEL + 105 * MB) / MB),
    }
    methods = {r["peak_mem_method"] for r in rows.values()}
    assert methods == {"cuda_max_memory_allocated_from_empty"}
    assert fake_cuda.allocated == BATCHES  # every step closed and released afterwards
