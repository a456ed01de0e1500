"""Memory budget: chunked propagation gives unchunked numbers; KFRA refuses before allocating."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from extensions.errors import MemoryBudgetError
from extensions.second_order import _Engine, _Stream, compute_second_order
from tests.extensions.nets import LOSS_CASES, NET_CASES, make_problem
from tests.extensions.test_second_order import build_trace

C_COLUMN = ["DiagGGNExact", "DiagHessian", "KFLR"]


def _trace(net_id: str, loss_id: str = "ce-mean", batch_size: int = 5):
    net = next(c for c in NET_CASES if c.id == net_id)
    loss = next(c for c in LOSS_CASES if c.id == loss_id)
    model, loss_fn, x, y = make_problem(net, loss, batch_size=batch_size)
    return build_trace(model, loss_fn, x, y)


def _assert_same(a: dict, b: dict) -> None:
    for q, values in a.items():
        for name, value in values.items():
            pairs = zip(value, b[q][name]) if isinstance(value, list) else [(value, b[q][name])]
            for x, y in pairs:
                torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-12, msg=f"{q} {name}")


CHUNK_CASES = [
    ("cnn-avgpool-adaptive", ["DiagGGNExact", "KFLR"]),
    ("mini-3c3d", ["DiagGGNExact", "KFLR"]),
    ("mlp-tanh-dropout-nobias", C_COLUMN),
]


@pytest.mark.parametrize(("net_id", "quantities"), CHUNK_CASES, ids=[c[0] for c in CHUNK_CASES])
def test_tiny_budget_chunks_columns_and_samples_without_changing_results(net_id, quantities):
    trace = _trace(net_id)
    start = len(trace.records) - 1
    # room for two (column, sample) pairs: forces both column and sample chunks
    budget = 4 * _Engine(trace, 1)._bytes_per_column_sample(start)
    v_step, n_step = _Engine(trace, budget).chunking(_Stream(3, None, start))
    assert (v_step, n_step) == (1, 2)
    big = compute_second_order(trace, quantities, memory_budget=2**30)
    small = compute_second_order(trace, quantities, memory_budget=budget)
    _assert_same(big, small)


def test_kfra_refuses_before_allocating_and_states_bytes():
    """A 5.8M-unit conv output would need a ~10^14-byte matrix: allocating it would fail
    differently (or take forever); the refusal is immediate and names the size."""
    model = nn.Sequential(nn.Conv2d(1, 64, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64 * 298**2, 2))
    x = torch.randn(1, 1, 300, 300)
    trace = build_trace(model, nn.CrossEntropyLoss(), x, torch.tensor([1]))
    h = 64 * 298 * 298
    start = time.perf_counter()
    with pytest.raises(MemoryBudgetError) as err:
        compute_second_order(trace, ["KFRA"])
    assert time.perf_counter() - start < 5.0
    msg = str(err.value)
    assert f"{h:,} x {h:,}" in msg and "KFRA" in msg
    stated = int(msg.split("need about ")[1].split(" bytes")[0].replace(",", ""))
    assert stated >= h * h * 4


def test_kfra_fits_budget_on_small_net():
    trace = _trace("mini-3c3d")
    res = compute_second_order(trace, ["KFRA"], memory_budget=2**24)
    assert set(res["KFRA"]) == set(trace.param_names.values())
    with pytest.raises(MemoryBudgetError):
        compute_second_order(trace, ["KFRA"], memory_budget=1_000)
