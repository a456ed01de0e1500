"""Monte-Carlo quantities (DiagGGNMC, KFAC) converge to their exact counterparts.

With M sampled labels the relative error of the MC estimate decays like ``1/sqrt(M)``; at
``M = 4000`` it is a few percent, so the tolerance below (10 %) is violated by any wrong scaling
(a missing ``1/M``, ``1/N`` or ``sqrt(2)`` changes the result by a factor >= 1.4).
"""

from __future__ import annotations

import pytest
import torch

from extensions.second_order import compute_second_order
from tests.extensions.nets import LOSS_CASES, NET_CASES, make_problem
from tests.extensions.test_second_order import build_trace

MANY = 4000
TOLERANCE = 0.1
CASES = [
    ("mlp-sigmoid", "ce-mean"),
    ("cnn-zeropad-maxpool-ceil", "ce-sum"),
    ("mini-allcnnc", "mse-mean"),
    ("cnn-stride2-pad-dilation", "mse-sum"),
]


def _trace(net_id: str, loss_id: str):
    net = next(c for c in NET_CASES if c.id == net_id)
    loss = next(c for c in LOSS_CASES if c.id == loss_id)
    model, loss_fn, x, y = make_problem(net, loss, batch_size=3)
    return build_trace(model, loss_fn, x, y)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize(("net_id", "loss_id"), CASES, ids=[f"{n}-{loss}" for n, loss in CASES])
def test_mc_converges_to_exact(net_id, loss_id):
    from extensions.quantities import KFAC, DiagGGNMC

    trace = _trace(net_id, loss_id)
    exact = compute_second_order(trace, ["DiagGGNExact", "KFLR"])
    torch.manual_seed(1)
    mc = compute_second_order(trace, [DiagGGNMC(mc_samples=MANY), KFAC(mc_samples=MANY)])
    for name, value in exact["DiagGGNExact"].items():
        err = _rel_err(mc["DiagGGNMC"][name], value)
        assert err < TOLERANCE, f"DiagGGNMC {name}: relative error {err:.3f}"
    for name, value in exact["KFLR"].items():
        err = _rel_err(mc["KFAC"][name][0], value[0])
        assert err < TOLERANCE, f"KFAC B {name}: relative error {err:.3f}"
        if len(value) == 2:  # the input factor A is deterministic and shared
            torch.testing.assert_close(mc["KFAC"][name][1], value[1])


def test_single_sample_is_noisy_and_seeded():
    """One sample is far from exact (the test above is not vacuous) and reproducible by seed."""
    trace = _trace("mlp-sigmoid", "ce-mean")
    exact = compute_second_order(trace, ["DiagGGNExact"])["DiagGGNExact"]
    torch.manual_seed(3)
    one = compute_second_order(trace, ["DiagGGNMC"])["DiagGGNMC"]
    torch.manual_seed(3)
    again = compute_second_order(trace, ["DiagGGNMC"])["DiagGGNMC"]
    errs = [_rel_err(one[n], exact[n]) for n in exact]
    assert max(errs) > 2 * TOLERANCE
    for name in one:
        torch.testing.assert_close(one[name], again[name], rtol=0, atol=0)


def test_mc_samples_must_be_positive():
    from extensions.quantities import DiagGGNMC

    trace = _trace("mlp-sigmoid", "ce-mean")
    with pytest.raises(ValueError, match="mc_samples"):
        compute_second_order(trace, [DiagGGNMC(mc_samples=0)])
