"""The overhead harness's CUDA paths, simulated on CPU (issue 12, items 8, 9, 10, 12).

``torch.cuda`` is monkeypatched: a fake allocator for the memory API, fake events for timing, a
machine without CUDA for the device checks.
"""

from __future__ import annotations

import gc
import weakref
from types import SimpleNamespace

import pytest
import torch

from bench.overhead import memory, timing
from bench.overhead.run import classify_error


class FakeAllocator:
    """A caching allocator's counters: allocated bytes, their peak since the last reset."""

    def __init__(self) -> None:
        self.allocated = 0
        self.peak = 0
        self.events: list[str] = []

    def alloc(self, n: int) -> None:
        self.allocated += n
        self.peak = max(self.peak, self.allocated)

    def free(self, n: int) -> None:
        self.allocated -= n

    def install(self, monkeypatch) -> FakeAllocator:
        cuda = torch.cuda
        monkeypatch.setattr(cuda, "synchronize", lambda device=None: None)
        monkeypatch.setattr(cuda, "empty_cache", lambda: self.events.append("empty_cache"))
        monkeypatch.setattr(cuda, "memory_allocated", lambda device=None: self.allocated)
        monkeypatch.setattr(cuda, "max_memory_allocated", lambda device=None: self.peak)

        def reset(device=None) -> None:
            self.peak = self.allocated

        monkeypatch.setattr(cuda, "reset_peak_memory_stats", reset)
        return self


MB = 2**20


# ---- item 8: one memory protocol for every backend, from the same empty state -------------


def test_cuda_peak_memory_counts_pooled_buffers_built_with_the_variant(monkeypatch):
    fake = FakeAllocator().install(monkeypatch)
    fake.alloc(50 * MB)  # the staged batches: there for every variant alike

    def build():  # a backend that allocates a persistent pool when its step is built (ours)
        fake.alloc(100 * MB)

        def call():  # and 10 MB of temporaries per step (BackPACK-like fresh allocations)
            fake.alloc(10 * MB)
            fake.free(10 * MB)

        return call

    released = []
    peak = memory.cuda_peak_memory_from_empty_mb(
        build, "cuda", steps=2, release=lambda fn: released.append(fake.free(100 * MB))
    )
    assert peak == pytest.approx(110)  # pool + temporaries, above the batches only
    assert released and fake.allocated == 50 * MB
    assert fake.events.count("empty_cache") >= 2  # freed before and after


def test_every_variant_is_measured_from_the_same_baseline(monkeypatch):
    fake = FakeAllocator().install(monkeypatch)
    pools = {"ours": 100 * MB, "backpack": 0}
    temps = {"ours": 5 * MB, "backpack": 105 * MB}
    peaks = {}
    for name in ("ours", "backpack"):

        def build(name=name):
            fake.alloc(pools[name])
            return lambda: (fake.alloc(temps[name]), fake.free(temps[name]))

        peaks[name] = memory.cuda_peak_memory_from_empty_mb(
            build, "cuda", steps=1, release=lambda fn, name=name: fake.free(pools[name])
        )
    assert peaks == {"ours": pytest.approx(105), "backpack": pytest.approx(105)}


# ---- item 9: an OOM's tensors are released before the next variant -------------------------


def test_failed_variant_tensors_are_released_before_the_next_variant(monkeypatch):
    fake = FakeAllocator().install(monkeypatch)
    refs = []
    seen_at_release = []
    monkeypatch.setattr(
        torch.cuda, "empty_cache", lambda: seen_at_release.append(refs[0]() is None)
    )
    gc.disable()  # the release must not depend on a lucky collection (frames form no cycles)
    try:

        def oom():
            big = torch.ones(1000)
            refs.append(weakref.ref(big))
            raise RuntimeError("CUDA out of memory. Tried to allocate 40.00 GiB")

        cleared = []
        result = timing.interleaved_times(
            {"a": oom, "b": lambda: None},
            rounds=2,
            warmup=0,
            device="cuda",
            on_error={"a": lambda: cleared.append("a")},
        )
    finally:
        gc.enable()
    assert refs[0]() is None  # nothing keeps the failed call's tensors alive
    assert seen_at_release == [True]  # already gone when the cache was emptied
    assert cleared == ["a"] and set(result.times) == {"b"}
    err = result.errors["a"]
    assert "Tried to allocate 40.00 GiB" in str(err) and err.__traceback__ is None
    assert classify_error(err) == "oom"
    assert fake.allocated == 0


def test_a_stored_failure_keeps_the_message_not_the_frames():
    refs = []

    def oom():
        big = torch.ones(1000)
        refs.append(weakref.ref(big))
        raise RuntimeError("CUDA out of memory. Tried to allocate 40.00 GiB")

    gc.disable()
    try:
        result = timing.interleaved_times({"a": oom}, rounds=1, warmup=0)
        alive = refs[0]() is not None
    finally:
        gc.enable()
    assert not alive  # today's stored exception kept its traceback, and the tensor with it
    assert "Tried to allocate 40.00 GiB" in str(result.errors["a"])


@pytest.mark.parametrize(
    "message",
    [
        "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
        "cuDNN error: CUDNN_STATUS_NOT_ENOUGH_WORKSPACE",
        "cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
    ],
    ids=["cublas", "cudnn-workspace", "cudnn-alloc"],
)
def test_cublas_and_cudnn_allocation_failures_are_oom(message):
    assert classify_error(RuntimeError(message)) == "oom"
    assert classify_error(timing.CapturedError.of(RuntimeError(message))) == "oom"


# ---- item 12: device time on CUDA ---------------------------------------------------------


class FakeEvent:
    """``torch.cuda.Event``: the device took 7 ms between the two records."""

    clock = [0.0]

    def __init__(self, enable_timing: bool = False) -> None:
        assert enable_timing
        self.at = None

    def record(self, stream=None) -> None:
        FakeEvent.clock[0] += 7.0
        self.at = FakeEvent.clock[0]

    def synchronize(self) -> None:
        pass

    def elapsed_time(self, other: FakeEvent) -> float:
        return other.at - self.at


def test_device_time_call_reads_cuda_events_not_the_host_clock(monkeypatch):
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    assert timing.device_time_call(lambda: None, "cuda") == pytest.approx(0.007)
    assert timing.device_time_call(lambda: None, "cpu") < 0.007  # the CPU keeps its clock


def test_profile_ranges_use_device_time_on_cuda():
    from bench.overhead import profile_step

    event = SimpleNamespace(cpu_time_total=1_000.0, device_time_total=25_000.0)  # microseconds
    assert profile_step.event_seconds(event, torch.device("cuda")) == pytest.approx(0.025)
    assert profile_step.event_seconds(event, torch.device("cpu")) == pytest.approx(0.001)
    prof = SimpleNamespace(events=lambda: [SimpleNamespace(name="step::backward", **vars(event))])
    assert profile_step._ranges(prof, 5, torch.device("cuda")) == {"step::backward": 0.005}


# ---- item 10: --device cuda without CUDA, before any work, in every command -----------------


def _no_work(*args, **kwargs):
    raise AssertionError("work started although the device does not exist")


@pytest.mark.parametrize("command", ["compare_table", "gate", "profile_step", "overhead"])
def test_device_cuda_without_cuda_is_one_line_before_any_work(command, monkeypatch, capsys):
    from bench.overhead import (
        cli,
        cli_compare_table,
        cli_gate,
        cli_profile_step,
        compare_table,
        gate,
        profile_step,
    )

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(compare_table, "measure", _no_work)
    monkeypatch.setattr(gate, "measure_ratios", _no_work)
    monkeypatch.setattr(profile_step, "profile_variant", _no_work)
    monkeypatch.setattr("bench.overhead.plan.default_plan", _no_work)
    argv = ["--device", "cuda"]
    if command == "profile_step":
        argv = ["tiny_cnn", "KFAC", *argv]
    main = {
        "compare_table": cli_compare_table.main,
        "gate": cli_gate.main,
        "profile_step": cli_profile_step.main,
        "overhead": cli.main,
    }[command]
    assert main(argv) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.count("\n") == 1 and "has no CUDA device" in out.err
