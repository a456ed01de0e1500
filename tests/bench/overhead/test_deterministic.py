"""``--deterministic`` and our MaxPool2d rules (issue 12, item 11).

``extensions/derivatives.py`` uses ``scatter_add_`` (``maxpool2d_jac_t``, every second-order
quantity through a MaxPool2d) and ``index_add_`` (``maxpool2d_kfra``). Both have deterministic
CUDA kernels that torch picks under ``torch.use_deterministic_algorithms(True)`` (on the CPU
they are deterministic anyway), so the rules need no refusal of their own: under the flag
``--deterministic`` sets (:class:`bench.overhead.numerics.Numerics`), they must run without
raising and give bitwise-identical results on two runs. The CUDA case is the one that matters
(``make gpu-check`` runs it); the CPU case checks the code path on every machine.
"""

from __future__ import annotations

import pytest
import torch

import extensions
from bench.overhead.numerics import Numerics
from tests.extensions.nets import LOSS_CASES, make_problem, net_case

#: every quantity whose backward reaches our MaxPool2d rules (DiagGGNMC seeded per run)
QUANTITIES = ["DiagGGNExact", "DiagGGNMC", "DiagHessian", "KFAC", "KFLR", "KFRA", "EKFAC"]

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    ),
]


@pytest.fixture
def deterministic():
    """``--deterministic``'s flags for the test; the defaults again afterwards."""
    Numerics(deterministic=True).apply()
    yield
    Numerics().apply()


def _spy(monkeypatch, name: str, calls: list[str]) -> None:
    """Record each call of ``Tensor.<name>`` with whether deterministic mode was on."""
    original = getattr(torch.Tensor, name)

    def spy(self, *args, **kwargs):
        calls.append(f"{name}:{torch.are_deterministic_algorithms_enabled()}")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, name, spy)


def _run(device: str) -> dict[str, dict[str, torch.Tensor]]:
    model, loss_fn, x, y = make_problem(net_case("mini-3c3d"), LOSS_CASES[0], batch_size=4)
    model, x, y = model.to(device), x.to(device), y.to(device)
    torch.manual_seed(7)  # DiagGGNMC's sampled labels
    return extensions.compute(model, loss_fn, x, y, QUANTITIES)


@pytest.mark.parametrize("device", DEVICES)
def test_our_scatter_rules_are_bitwise_reproducible_under_deterministic(
    device, deterministic, monkeypatch
):
    calls: list[str] = []
    _spy(monkeypatch, "scatter_add_", calls)
    _spy(monkeypatch, "index_add_", calls)
    first, second = _run(device), _run(device)  # raises if a kernel has no deterministic version
    assert "scatter_add_:True" in calls and "index_add_:True" in calls  # the rules ran, flag on
    assert not [c for c in calls if c.endswith(":False")]
    assert first.keys() == second.keys() == set(QUANTITIES)
    for quantity, per_param in first.items():
        for name, value in per_param.items():
            other = second[quantity][name]
            pairs = zip(value, other) if isinstance(value, list | tuple) else [(value, other)]
            for a, b in pairs:
                assert a.device.type == device
                assert torch.equal(a, b), f"{quantity} {name} differs between two runs"
