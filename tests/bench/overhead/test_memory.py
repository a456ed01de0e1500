"""The peak-memory probes (CPU twins of the CUDA paths, and the fresh-process RSS probe)."""

import functools

import pytest
import torch

from bench.overhead import memory
from bench.overhead.run import classify_error


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_peak_memory_sees_an_allocation():
    def alloc():
        torch.empty(64 * 2**20, dtype=torch.uint8, device="cuda").fill_(1)

    assert memory.cuda_peak_memory_mb(alloc, "cuda") >= 63


def _allocating_step(megabytes: int):
    """Picklable factory (importable parts only): a step allocating ``megabytes`` of ones."""
    return functools.partial(functools.partial, torch.ones, megabytes * 2**18)


def test_subprocess_rss_sees_the_step_and_not_the_setup():
    big = memory.subprocess_peak_rss_mb(_allocating_step(300))
    small = memory.subprocess_peak_rss_mb(_allocating_step(1))
    assert 280 <= big["peak_mem_mb"] <= 400, big
    assert small["peak_mem_mb"] < 60, small


def test_subprocess_rss_cap_turns_a_big_allocation_into_oom():
    with pytest.raises(Exception) as info:
        memory.subprocess_peak_rss_mb(_allocating_step(2000), cap_mb=500)
    assert classify_error(info.value) == "oom", repr(info.value)


def test_subprocess_errors_come_back_as_text_with_their_type_names():
    with pytest.raises(memory.SubprocessError) as info:
        memory.subprocess_peak_rss_mb(functools.partial(functools.partial, torch.ones, -1))
    assert "RuntimeError" in info.value.type_names and "negative" in str(info.value)


@pytest.mark.parametrize(
    ("names", "status"),
    [(["MemoryBudgetError", "ExtensionError"], "oom"), (["UnsupportedModuleError"], "unsupported")],
    ids=["budget", "unsupported"],
)
def test_subprocess_errors_are_classified_by_their_original_type(names, status):
    assert classify_error(memory.SubprocessError(names, "message")) == status
