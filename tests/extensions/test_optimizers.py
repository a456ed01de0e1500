"""The paper's curvature optimizers against closed forms and dense oracles (float64)."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from extensions.optimizers import (
    CurvatureOptimizer,
    loss_and_curvature,
    make_optimizer,
)
from extensions.optimizers.curvature_source import ours_available
from extensions.optimizers.damped_inverse import (
    EPS,
    clamped_inverse,
    eigen_inverse,
    kronecker_inverses,
)
from extensions.optimizers.running_mean import update_running_mean

DTYPE = torch.float64


def spd(d: int, scale: float = 1.0) -> torch.Tensor:
    m = torch.randn(d, d, dtype=DTYPE)
    return scale * (m @ m.T / d + 0.1 * torch.eye(d, dtype=DTYPE))


def two_groups(shapes_weight, shapes_bias, l2):
    weights = [torch.randn(s, dtype=DTYPE, requires_grad=True) for s in shapes_weight]
    biases = [torch.randn(s, dtype=DTYPE, requires_grad=True) for s in shapes_bias]
    for p in weights + biases:
        p.grad = torch.randn_like(p)
    return [{"params": weights, "l2": l2}, {"params": biases, "l2": 0.0}], weights, biases


# ----------------------------------------------------------------------------- diagonal


@pytest.mark.parametrize("curvature", ["DiagGGNExact", "DiagGGNMC"])
@pytest.mark.parametrize("l2", [0.0, 2e-3], ids=["no_l2", "l2"])
def test_diagonal_step_equals_closed_form(curvature, l2):
    groups, weights, biases = two_groups([(3, 4)], [(3,)], l2)
    lr, damping = 0.3, 1e-2
    before = [p.detach().clone() for p in weights + biases]
    curv = {p: torch.rand_like(p) for p in weights + biases}
    CurvatureOptimizer(groups, curvature, lr, damping).step(curv)
    for p, old, delta in zip(weights + biases, before, [l2, 0.0]):
        expected = old - lr * (p.grad + delta * old) / (curv[p] + damping + delta)
        torch.testing.assert_close(p.detach(), expected)


# ----------------------------------------------------------------------------- Kronecker


def damped_kron_dense(b, a, gamma):
    """The dense damped block: kron(B + sqrt(g)/pi I, A + pi sqrt(g) I), pi from the traces."""
    pi = math.sqrt((torch.trace(a).item() / a.shape[0]) / (torch.trace(b).item() / b.shape[0]))
    eye_b = torch.eye(b.shape[0], dtype=DTYPE)
    eye_a = torch.eye(a.shape[0], dtype=DTYPE)
    root = math.sqrt(gamma)
    return torch.kron(b + root / pi * eye_b, a + root * pi * eye_a)


@pytest.mark.parametrize(
    "weight_shape",
    [(3, 4), (3, 2, 2, 2)],
    ids=["linear_3x4", "conv_3x2x2x2"],
)
@pytest.mark.parametrize("curvature", ["KFAC", "KFLR", "KFRA"])
def test_kronecker_step_equals_dense_inverse(weight_shape, curvature):
    l2, lr, damping = 5e-3, 0.5, 0.1
    groups, (w,), (b,) = two_groups([weight_shape], [(weight_shape[0],)], l2)
    out, fan_in = weight_shape[0], math.prod(weight_shape[1:])
    factors_w = [spd(out, 2.0), spd(fan_in, 0.3)]
    factor_b = [spd(out)]
    w0, b0 = w.detach().clone(), b.detach().clone()
    CurvatureOptimizer(groups, curvature, lr, damping).step({w: factors_w, b: factor_b})

    dense = damped_kron_dense(*factors_w, damping + l2)
    direction = (w.grad + l2 * w0).reshape(-1)
    expected_w = w0.reshape(-1) - lr * torch.linalg.solve(dense, direction)
    torch.testing.assert_close(w.detach().reshape(-1), expected_w)

    dense_b = factor_b[0] + damping * torch.eye(out, dtype=DTYPE)  # no pi, no L2 on biases
    expected_b = b0 - lr * torch.linalg.solve(dense_b, b.grad)
    torch.testing.assert_close(b.detach(), expected_b)


def test_eigen_inverse_clamps_inverse_eigenvalues():
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=DTYPE))
    evals = torch.tensor([-1.0, 0.0, 2.0], dtype=DTYPE)
    matrix = q @ torch.diag(evals) @ q.T
    expected = q @ torch.diag(torch.tensor([0.0, 1.0 / EPS, 0.5], dtype=DTYPE)) @ q.T
    torch.testing.assert_close(eigen_inverse(matrix, 0.0), expected, rtol=1e-6, atol=1e-2)


def with_eigenvalues(evals: list[float]) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(len(evals), len(evals), dtype=DTYPE))
    return q @ torch.diag(torch.tensor(evals, dtype=DTYPE)) @ q.T


@pytest.mark.parametrize(
    ("evals", "shift"),
    [
        ([0.5, 1.0, 3.0, 10.0], 0.0),  # well conditioned: the Cholesky route
        ([0.0, 0.0, 1.0, 2.0], 1e-3),  # singular factor, damped
        ([1e-10, 1.0, 2.0, 4.0], 0.0),  # 1/1e-10 > 1/EPS: the upper clamp binds
        ([-1.0, 0.0, 2.0, 3.0], 0.0),  # indefinite and singular: both clamps bind
        ([-1e-3, 1.0, 2.0, 3.0], 2e-3),  # damped just past zero
    ],
    ids=["spd", "singular_damped", "below_eps", "indefinite", "barely_pd"],
)
def test_clamped_inverse_equals_the_eigh_formula(evals, shift):
    """Oracle: the paper's clamped eigen-inverse, float64, whichever route is taken."""
    matrix = with_eigenvalues(evals)
    expected = eigen_inverse(matrix, shift)
    scale = expected.abs().max()
    torch.testing.assert_close(clamped_inverse(matrix, shift) / scale, expected / scale)


def test_clamped_inverse_skips_eigh_when_certified(monkeypatch):
    """A damped 785x785 Gram factor (mnist_logreg's KFAC A) is inverted without ``eigh``."""
    x = torch.rand(128, 785)
    factor = x.T @ x / 128
    expected = eigen_inverse(factor.double(), 0.1)

    def no_eigh(*args, **kwargs):
        raise AssertionError("eigh called on a certified factor")

    monkeypatch.setattr(torch.linalg, "eigh", no_eigh)
    got = clamped_inverse(factor, 0.1)
    torch.testing.assert_close(got.double(), expected, rtol=1e-3, atol=1e-4)


def test_clamped_inverse_certifies_in_float64_when_float32_is_too_coarse(monkeypatch):
    """Trace 1e5, smallest eigenvalue 0.5: float32's bound (~4.8) fails, float64's passes."""
    from extensions.optimizers.damped_inverse import _eigenvalues_above_eps

    matrix64 = with_eigenvalues([1e5] + [0.5] * 399)
    matrix = matrix64.float()
    assert not bool(_eigenvalues_above_eps(matrix, torch.float32))
    expected = eigen_inverse(matrix.double(), 0.0)

    def no_eigh(*args, **kwargs):
        raise AssertionError("eigh called on a factor certified in float64")

    monkeypatch.setattr(torch.linalg, "eigh", no_eigh)
    got = clamped_inverse(matrix, 0.0)
    # float32 inverse of a condition-2e5 matrix: errors ~ cond * u * ||inverse|| (||inverse|| = 2)
    torch.testing.assert_close(got.double(), expected, rtol=0.0, atol=2e-2)


def test_clamped_inverse_falls_back_to_eigh_below_eps(monkeypatch):
    """An eigenvalue below EPS defeats the certificate: ``eigh`` (and its clamp) is used."""
    calls = []
    eigh = torch.linalg.eigh
    monkeypatch.setattr(torch.linalg, "eigh", lambda m: calls.append(m) or eigh(m))
    clamped_inverse(with_eigenvalues([1e-10, 1.0, 2.0]), 0.0)
    assert len(calls) == 1


def test_degenerate_trace_gives_pi_one():
    b = torch.zeros(2, 2, dtype=DTYPE)
    a = spd(3)
    inv_b, inv_a = kronecker_inverses([b, a], 0.04)
    torch.testing.assert_close(inv_b, torch.eye(2, dtype=DTYPE) / 0.2)
    torch.testing.assert_close(inv_a, torch.linalg.inv(a + 0.2 * torch.eye(3, dtype=DTYPE)))


# ----------------------------------------------------------------------------- estimate / inverse


def test_running_mean_is_uniform_mean_since_start():
    values = [torch.randn(4, dtype=DTYPE) for _ in range(6)]
    mean = None
    for t, v in enumerate(values):
        mean = update_running_mean(mean, v, t)
        torch.testing.assert_close(mean, torch.stack(values[: t + 1]).mean(0))


@pytest.mark.parametrize(
    ("average", "inverse_every"),
    [("mean", 1), ("fresh", 1), ("mean", 2), ("fresh", 3)],
    ids=["mean_every1", "fresh_every1", "mean_every2", "fresh_every3"],
)
def test_estimate_and_inverse_schedule(average, inverse_every):
    p = torch.randn(5, dtype=DTYPE, requires_grad=True)
    lr, damping = 0.1, 0.05
    opt = CurvatureOptimizer(
        [p], "DiagGGNMC", lr, damping, average=average, inverse_every=inverse_every
    )
    seen, used = [], None
    for t in range(5):
        p.grad = torch.randn_like(p)
        c = torch.rand_like(p)
        seen.append(c)
        estimate = torch.stack(seen).mean(0) if average == "mean" else c
        if t % inverse_every == 0:
            used = estimate  # the inverse is rebuilt from this step's estimate
        old = p.detach().clone()
        opt.step({p: c})
        torch.testing.assert_close(p.detach(), old - lr * p.grad / (used + damping))


# ----------------------------------------------------------------------------- checkpoints


def tiny_net():
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).to(DTYPE)


def fake_curvature(net, method, step):
    gen = torch.Generator().manual_seed(step)
    out = {}
    for p in net.parameters():
        if method.startswith("Diag"):
            out[p] = torch.rand(p.shape, generator=gen, dtype=DTYPE)
        else:
            dims = [p.shape[0]] if p.dim() == 1 else [p.shape[0], p[0].numel()]
            out[p] = [
                (lambda m: m @ m.T)(torch.rand(d, d, generator=gen, dtype=DTYPE)) for d in dims
            ]
    return out


def train_steps(net, opt, method, steps):
    for step in steps:
        gen = torch.Generator().manual_seed(100 + step)
        for p in net.parameters():
            p.grad = torch.randn(p.shape, generator=gen, dtype=DTYPE)
        if method in ("Momentum", "Adam"):
            opt.step()
        else:
            opt.step(fake_curvature(net, method, step))


def groups_of(net):
    weights = [p for n, p in net.named_parameters() if "weight" in n]
    biases = [p for n, p in net.named_parameters() if "bias" in n]
    return [{"params": weights, "l2": 1e-3}, {"params": biases, "l2": 0.0}]


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("DiagGGNExact", {}),
        ("KFAC", {}),
        ("KFLR", {"inverse_every": 3}),
        ("DiagGGNMC", {"average": "fresh"}),
        ("Momentum", {}),
        ("Adam", {}),
    ],
    ids=["diagggn", "kfac", "kflr_every3", "diagggnmc_fresh", "momentum", "adam"],
)
def test_optimizer_state_survives_checkpoint(method, options):
    damping = None if method in ("Momentum", "Adam") else 1e-2
    net = tiny_net()
    opt = make_optimizer(method, groups_of(net), 0.05, damping, **options)
    train_steps(net, opt, method, range(4))
    buffer = io.BytesIO()
    torch.save({"model": net.state_dict(), "opt": opt.state_dict()}, buffer)
    train_steps(net, opt, method, range(4, 8))

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    net2 = tiny_net()
    net2.load_state_dict(saved["model"])
    opt2 = make_optimizer(method, groups_of(net2), 0.05, damping, **options)
    opt2.load_state_dict(saved["opt"])
    train_steps(net2, opt2, method, range(4, 8))
    for a, b in zip(net.parameters(), net2.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ----------------------------------------------------------------------------- end to end


def brute_force_ggn(net, x, y):
    """(1/N) sum_n J_n^T H_n J_n of mean cross-entropy, by torch.func, on the flat params."""
    names = [n for n, _ in net.named_parameters()]
    params = {n: p.detach() for n, p in net.named_parameters()}
    flat = torch.cat([p.reshape(-1) for p in params.values()])
    sizes = [p.numel() for p in params.values()]

    def logits(theta):
        chunks = dict(zip(names, torch.split(theta, sizes)))
        shaped = {n: chunks[n].reshape(params[n].shape) for n in names}
        return torch.func.functional_call(net, shaped, (x,))

    jac = torch.func.jacrev(logits)(flat)  # [N, C, P]
    prob = torch.softmax(logits(flat), dim=1)
    hess = torch.diag_embed(prob) - prob[:, :, None] * prob[:, None, :]
    return torch.einsum("ncp,ncd,ndq->pq", jac, hess, jac) / x.shape[0], sizes


BACKENDS = [
    "backpack",
    pytest.param(
        "ours",
        marks=pytest.mark.skipif(not ours_available(), reason="extensions.collect not built yet"),
    ),
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_diagggn_step_on_tiny_problem_matches_brute_force(backend):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).to(DTYPE)
    x, y = torch.randn(6, 3, dtype=DTYPE), torch.randint(0, 3, (6,))
    l2, lr, damping = 1e-2, 0.2, 1e-3
    ggn, sizes = brute_force_ggn(net, x, y)
    diag = torch.split(torch.diagonal(ggn), sizes)
    before = [p.detach().clone() for p in net.parameters()]
    grads = torch.autograd.grad(nn.functional.cross_entropy(net(x), y), list(net.parameters()))

    opt = make_optimizer("DiagGGNExact", groups_of_l2(net, l2), lr, damping)
    loss, curvature = loss_and_curvature(net, nn.CrossEntropyLoss(), x, y, "DiagGGNExact", backend)
    opt.step(curvature)
    for (name, p), old, g, c in zip(net.named_parameters(), before, grads, diag):
        delta = 0.0 if "bias" in name else l2
        expected = old - lr * (g + delta * old) / (c.reshape(old.shape) + damping + delta)
        torch.testing.assert_close(p.detach(), expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_kflr_step_on_linear_model_matches_closed_form(backend):
    """One linear layer: B = mean_n H_n, A = mean_n x x^T (known in closed form)."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(4, 3)).to(DTYPE)
    x, y = torch.randn(8, 4, dtype=DTYPE), torch.randint(0, 3, (8,))
    l2, lr, damping = 1e-2, 0.3, 1e-2
    prob = torch.softmax(net(x), 1).detach()
    b = (torch.diag_embed(prob) - prob[:, :, None] * prob[:, None, :]).mean(0)
    a = x.T @ x / x.shape[0]
    w0, b0 = net[0].weight.detach().clone(), net[0].bias.detach().clone()
    gw, gb = torch.autograd.grad(nn.functional.cross_entropy(net(x), y), list(net.parameters()))

    opt = make_optimizer("KFLR", groups_of_l2(net, l2), lr, damping)
    opt.step(loss_and_curvature(net, nn.CrossEntropyLoss(), x, y, "KFLR", backend)[1])
    dense = damped_kron_dense(b, a, damping + l2)
    expected_w = w0.reshape(-1) - lr * torch.linalg.solve(dense, (gw + l2 * w0).reshape(-1))
    torch.testing.assert_close(net[0].weight.detach().reshape(-1), expected_w)
    expected_b = b0 - lr * torch.linalg.solve(b + damping * torch.eye(3, dtype=DTYPE), gb)
    torch.testing.assert_close(net[0].bias.detach(), expected_b)


def groups_of_l2(net, l2):
    weights = [p for n, p in net.named_parameters() if "bias" not in n]
    biases = [p for n, p in net.named_parameters() if "bias" in n]
    return [{"params": weights, "l2": l2}, {"params": biases, "l2": 0.0}]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"curvature": "Shampoo"}, "valid: DiagGGNExact"),
        ({"average": "ema"}, "valid: mean, fresh"),
        ({"inverse_every": 0}, "inverse_every"),
    ],
    ids=["unknown_curvature", "unknown_average", "bad_inverse_every"],
)
def test_bad_options_raise_clear_errors(kwargs, message):
    p = torch.zeros(2, requires_grad=True)
    args = {"curvature": "KFAC", "lr": 0.1, "damping": 0.1} | kwargs
    with pytest.raises(ValueError, match=message):
        CurvatureOptimizer([p], **args)


def test_missing_curvature_names_the_parameter():
    p = torch.zeros(2, 3, requires_grad=True)
    p.grad = torch.ones_like(p)
    with pytest.raises(KeyError, match=r"shape \(2, 3\)"):
        CurvatureOptimizer([p], "DiagGGNMC", 0.1, 0.1).step({})
