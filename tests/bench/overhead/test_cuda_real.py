"""The overhead harness's CUDA fixes on a real GPU (``make gpu-check``; skipped without CUDA).

Simulated on CPU in ``test_cuda_simulated.py`` and ``test_run_cuda_memory.py``; here the real
caching allocator and CUDA events: the from-empty peak-memory protocol, a failed (OOM) variant's
tensors released, device time read from events.
"""

from __future__ import annotations

import time

import pytest
import torch

# the memory probes are imported through ``run``, whichever module defines them
from bench.overhead import run as overhead_run
from bench.overhead import timing
from bench.overhead.plan import Measurement

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

MB = 2**20
DEVICE = torch.device("cuda")


def test_peak_from_empty_counts_a_pool_built_with_the_variant():
    overhead_run.release_memory(DEVICE)
    before = torch.cuda.memory_allocated(DEVICE)
    kept = []

    def build():
        kept.append(torch.empty(64 * MB, dtype=torch.uint8, device=DEVICE))  # a pool

        def call():
            tmp = torch.empty(32 * MB, dtype=torch.uint8, device=DEVICE)  # temporaries
            del tmp

        return call

    peak = overhead_run.cuda_peak_memory_from_empty_mb(build, DEVICE, 2, lambda fn: kept.clear())
    assert peak == pytest.approx(96, abs=2)  # pool + temporaries (block rounding)
    assert torch.cuda.memory_allocated(DEVICE) == before  # released afterwards


def test_run_group_measures_every_variant_from_empty_on_cuda():
    plan = [
        Measurement("tiny_mlp", 8, "clean", "cuda", backend, quantity)
        for backend, quantity in [("pytorch", "grad"), ("ours", "DiagGGNExact")]
    ]
    options = overhead_run.RunOptions(rounds=2, warmup=1, memory=True)
    overhead_run.release_memory(DEVICE)
    before = torch.cuda.memory_allocated(DEVICE)
    rows = {r["backend"]: r for r in overhead_run.run_group(plan, options)}
    assert {r["status"] for r in rows.values()} == {"ok"}, rows
    for row in rows.values():
        assert row["peak_mem_method"] == "cuda_max_memory_allocated_from_empty"
        assert row["peak_mem_mb"] > 0
    assert rows["ours"]["peak_mem_mb"] >= rows["pytorch"]["peak_mem_mb"]
    overhead_run.release_memory(DEVICE)
    assert torch.cuda.memory_allocated(DEVICE) == before  # nothing of any variant stays


def test_an_oom_variants_tensors_are_released_before_the_next_variant():
    overhead_run.release_memory(DEVICE)
    before = torch.cuda.memory_allocated(DEVICE)
    seen = []

    def oom():
        held = torch.empty(256 * MB, dtype=torch.uint8, device=DEVICE)  # noqa: F841
        torch.empty(2**50, dtype=torch.uint8, device=DEVICE)  # a real allocator OOM

    def after_it():
        seen.append(torch.cuda.memory_allocated(DEVICE))

    result = overhead_run.interleaved_times(
        {"a": oom, "b": after_it}, rounds=1, warmup=0, device=DEVICE
    )
    assert overhead_run.classify_error(result.errors["a"]) == "oom"
    assert seen == [before]  # the 256 MB the failed call held were freed before b ran
    assert torch.cuda.memory_allocated(DEVICE) == before


def test_device_time_is_the_kernels_time_not_the_launch():
    torch.cuda._sleep(1_000)  # warm up the kernel
    torch.cuda.synchronize(DEVICE)
    cycles = 200_000_000  # ~0.1 s on a 1-2 GHz GPU clock

    start = time.perf_counter()
    torch.cuda._sleep(cycles)
    launch = time.perf_counter() - start  # the host returns before the kernel ends
    torch.cuda.synchronize(DEVICE)

    device_s = timing.device_time_call(lambda: torch.cuda._sleep(cycles), DEVICE)
    host_s = timing.time_call(lambda: torch.cuda._sleep(cycles), DEVICE)  # synchronised clock
    assert device_s > 10 * launch
    assert device_s == pytest.approx(host_s, rel=0.25)
