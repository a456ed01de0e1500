"""The optimizers' methods beyond the paper (KFC-expand factors, EKFAC) vs dense oracles (float64).

Oracles: a damped step is ``theta - lr (C + gamma I)^-1 (g + delta theta)`` with the dense ``C``:
``kron(Q_B, Q_A) diag(lam) kron(Q_B, Q_A)^T`` for EKFAC (its damping is exact) and the
pi-damped Kronecker product for the expand factors; end to end, ``C`` comes from closed forms
(one linear layer: ``B = mean_n H_n``, ``A = mean_n x x^T``) and the brute-force GGN block.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import extensions
from extensions.optimizers import (
    ALL_METHODS,
    EXTENDED_METHODS,
    METHODS,
    CurvatureOptimizer,
    loss_and_curvature,
    make_optimizer,
)

DTYPE = torch.float64


def orthogonal(d: int) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(d, d, dtype=DTYPE))[0]


def ekfac_dense(value: list[torch.Tensor]) -> torch.Tensor:
    q = torch.kron(value[0], value[1]) if len(value) == 3 else value[0]
    return q @ torch.diag(value[-1].flatten()) @ q.T


def groups_of_l2(net, l2):
    weights = [p for n, p in net.named_parameters() if "bias" not in n]
    biases = [p for n, p in net.named_parameters() if "bias" in n]
    return [{"params": weights, "l2": l2}, {"params": biases, "l2": 0.0}]


@pytest.mark.parametrize("weight_shape", [(3, 4), (3, 2, 2, 2)], ids=["linear", "conv"])
@pytest.mark.parametrize("method", ["EKFAC", "EKFAC-exact"])
def test_ekfac_step_equals_the_dense_damped_solve(method, weight_shape):
    l2, lr, damping = 5e-3, 0.5, 0.1
    out, fan_in = weight_shape[0], math.prod(weight_shape[1:])
    w = torch.randn(weight_shape, dtype=DTYPE, requires_grad=True)
    b = torch.randn(out, dtype=DTYPE, requires_grad=True)
    w.grad, b.grad = torch.randn_like(w), torch.randn_like(b)
    value_w = [orthogonal(out), orthogonal(fan_in), torch.rand(out, fan_in, dtype=DTYPE)]
    value_b = [orthogonal(out), torch.rand(out, dtype=DTYPE)]
    w0, b0 = w.detach().clone(), b.detach().clone()
    groups = [{"params": [w], "l2": l2}, {"params": [b], "l2": 0.0}]
    CurvatureOptimizer(groups, method, lr, damping).step({w: value_w, b: value_b})

    dense_w = ekfac_dense(value_w) + (damping + l2) * torch.eye(out * fan_in, dtype=DTYPE)
    expected_w = w0.reshape(-1) - lr * torch.linalg.solve(dense_w, (w.grad + l2 * w0).flatten())
    torch.testing.assert_close(w.detach().reshape(-1), expected_w)
    dense_b = ekfac_dense(value_b) + damping * torch.eye(out, dtype=DTYPE)
    torch.testing.assert_close(b.detach(), b0 - lr * torch.linalg.solve(dense_b, b.grad))


def _linear_problem():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(4, 3)).to(DTYPE)
    x, y = torch.randn(8, 4, dtype=DTYPE), torch.randint(0, 3, (8,))
    return net, x, y


def _closed_form(net, x):
    """``B = mean_n H_n``, ``A = mean_n x x^T`` and the exact GGN block of the weight."""
    prob = torch.softmax(net(x), 1).detach()
    hess = torch.diag_embed(prob) - prob[:, :, None] * prob[:, None, :]
    ggn_w = torch.einsum("nab,ni,nj->aibj", hess, x, x).reshape(12, 12) / x.shape[0]
    return hess.mean(0), x.T @ x / x.shape[0], ggn_w


def test_ekfac_exact_step_on_a_linear_model_matches_the_closed_form():
    """EKFAC-exact: bases of the closed-form factors, ``lam = diag(K^T G K)``; one damped step."""
    net, x, y = _linear_problem()
    l2, lr, damping = 1e-2, 0.3, 1e-2
    b, a, ggn_w = _closed_form(net, x)
    q_b, q_a = torch.linalg.eigh(b).eigenvectors, torch.linalg.eigh(a).eigenvectors
    k = torch.kron(q_b, q_a)
    dense_w = k @ torch.diag(torch.diagonal(k.T @ ggn_w @ k)) @ k.T
    dense_b = q_b @ torch.diag(torch.diagonal(q_b.T @ b @ q_b)) @ q_b.T  # bias GGN block = B
    w0, b0 = net[0].weight.detach().clone(), net[0].bias.detach().clone()
    gw, gb = torch.autograd.grad(nn.functional.cross_entropy(net(x), y), list(net.parameters()))

    opt = make_optimizer("EKFAC-exact", groups_of_l2(net, l2), lr, damping)
    opt.step(loss_and_curvature(net, nn.CrossEntropyLoss(), x, y, "EKFAC-exact", "ours")[1])
    eye_w = torch.eye(12, dtype=DTYPE)
    expected_w = w0.reshape(-1) - lr * torch.linalg.solve(
        dense_w + (damping + l2) * eye_w, (gw + l2 * w0).reshape(-1)
    )
    torch.testing.assert_close(net[0].weight.detach().reshape(-1), expected_w)
    eye_b = torch.eye(3, dtype=DTYPE)
    expected_b = b0 - lr * torch.linalg.solve(dense_b + damping * eye_b, gb)
    torch.testing.assert_close(net[0].bias.detach(), expected_b)


def test_kflr_expand_method_uses_the_expand_factors():
    """On a conv net the curvature is ``KFLR(conv="expand")`` (differs from BackPACK's)."""
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 3)).to(DTYPE)
    x, y = torch.randn(5, 2, 4, 4, dtype=DTYPE), torch.randint(0, 3, (5,))
    loss_fn = nn.CrossEntropyLoss()
    expand = extensions.compute(net, loss_fn, x, y, extensions.KFLR(conv="expand"))["KFLR"]
    backpack = extensions.compute(net, loss_fn, x, y, "KFLR")["KFLR"]
    _, curvature = loss_and_curvature(net, loss_fn, x, y, "KFLR-expand", "ours")
    named = dict(net.named_parameters())
    for name, value in expand.items():
        for got, want in zip(curvature[named[name]], value, strict=True):
            torch.testing.assert_close(got, want)
    assert not torch.allclose(expand["0.weight"][1], backpack["0.weight"][1])


@pytest.mark.parametrize("method", EXTENDED_METHODS)
def test_every_extended_method_trains_a_step_on_a_conv_net(method):
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 3)).to(DTYPE)
    x, y = torch.randn(6, 2, 4, 4, dtype=DTYPE), torch.randint(0, 3, (6,))
    loss_fn = nn.CrossEntropyLoss()
    opt = make_optimizer(method, groups_of_l2(net, 1e-3), 0.1, 1e-2)
    before = [p.detach().clone() for p in net.parameters()]
    for _ in range(2):
        net.zero_grad()
        opt.step(loss_and_curvature(net, loss_fn, x, y, method, "ours")[1])
    for p, old in zip(net.parameters(), before):
        assert torch.isfinite(p).all() and not torch.equal(p, old)


def test_method_lists():
    """The paper's list is unchanged (grid search default); the extended one is separate."""
    assert METHODS == ("DiagGGNExact", "DiagGGNMC", "KFAC", "KFLR", "KFRA", "Momentum", "Adam")
    assert EXTENDED_METHODS == ("KFAC-expand", "KFLR-expand", "EKFAC", "EKFAC-exact")
    assert ALL_METHODS == METHODS + EXTENDED_METHODS


def test_ekfac_refuses_a_running_mean_and_the_backpack_backend():
    p = torch.zeros(2, requires_grad=True)
    assert CurvatureOptimizer([p], "EKFAC", 0.1, 0.1).param_groups[0]["average"] == "fresh"
    with pytest.raises(ValueError, match="average='fresh'"):
        CurvatureOptimizer([p], "EKFAC", 0.1, 0.1, average="mean")
    net, x, y = _linear_problem()
    with pytest.raises(ValueError, match="backend 'ours'"):
        loss_and_curvature(net, nn.CrossEntropyLoss(), x, y, "EKFAC", "backpack")
