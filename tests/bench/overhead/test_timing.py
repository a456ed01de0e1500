"""The interleaved timer and its summaries (CPU twins of the CUDA paths)."""

import statistics

import numpy as np
import pytest
import torch

from bench.overhead import timing


@pytest.mark.parametrize("count", [1, 2, 5])
def test_rotated_order_lets_every_variant_lead_once_per_cycle(count):
    names = [f"v{i}" for i in range(count)]
    orders = [timing.rotated_order(names, r) for r in range(count)]
    assert {o[0] for o in orders} == set(names)
    assert all(sorted(o) == names for o in orders)


@pytest.mark.parametrize(
    "times", [[0.3], [0.1, 0.4], [5.0, 1.0, 2.0, 3.0, 4.0], [0.2, 0.2, 0.9, 0.1]], ids=str
)
def test_summary_matches_numpy(times):
    s = timing.Summary.of(times)
    assert s.median_s == pytest.approx(np.median(times))
    q1, q3 = np.percentile(times, [25, 75])
    assert s.iqr_s == pytest.approx(q3 - q1)
    assert s.min_s == min(times) and s.rounds == len(times)


def test_summary_of_nothing_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        timing.Summary.of([])


def test_interleaved_rotates_warms_up_and_survives_a_failing_variant():
    calls, cleared = [], []

    def make(name):
        return lambda: calls.append(name)

    def broken():
        calls.append("bad")
        raise RuntimeError("boom")

    fns = {"a": make("a"), "b": make("b"), "bad": broken, "c": make("c")}
    result = timing.interleaved_times(
        fns, rounds=3, warmup=1, after={"a": lambda: cleared.append("a")}
    )
    assert set(result.times) == {"a", "b", "c"}
    assert all(len(v) == 3 for v in result.times.values())  # warm-up not recorded
    assert isinstance(result.errors["bad"], RuntimeError)
    assert calls.count("bad") == 1  # dropped after its failure
    assert calls.count("a") == 4 and cleared.count("a") == 4
    firsts = [calls[0]] + [calls[i] for i in (4, 7, 10)]  # round starts (bad ran once, round 0)
    assert len(set(firsts)) > 1, f"order did not rotate: {calls}"


def test_interleaved_rejects_zero_rounds():
    with pytest.raises(ValueError, match="rounds"):
        timing.interleaved_times({"a": lambda: None}, rounds=0)


def test_time_call_synchronises_cuda_around_the_clock(monkeypatch):
    events = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append("sync"))
    timing.time_call(lambda: events.append("call"), "cuda")
    assert events == ["sync", "call", "sync"]
    events.clear()
    timing.time_call(lambda: events.append("call"), "cpu")  # the CPU twin: same path, no sync
    assert events == ["call"]


def test_time_call_measures_elapsed_time():
    import time

    assert timing.time_call(lambda: time.sleep(0.05), "cpu") >= 0.045


def test_statistics_quantiles_inclusive_is_numpy_linear():
    values = [1.0, 2.0, 4.0, 8.0, 9.0]
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    assert (q1, q3) == tuple(np.percentile(values, [25, 75]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_time_call_counts_the_kernels_not_the_launch():
    cycles = 50_000_000  # tens of ms of GPU spinning at any clock; the launch returns at once
    torch.cuda.synchronize()
    host = timing.time_call(lambda: torch.cuda._sleep(cycles), "cpu")  # the launch alone
    device = timing.device_time_call(lambda: torch.cuda._sleep(cycles), "cuda")
    torch.cuda.synchronize()
    assert device > 0.005 and device > 5 * host, (device, host)
