"""Backends against brute force: per-sample gradients and norms in float64 on a tiny net."""

import copy

import pytest
import torch
from torch import nn

from bench.overhead.backends import BACKENDS, BaseBackend, get_backend
from bench.spec import GRAD, QUANTITIES

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")
N = 5


def tiny_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(3 * 3 * 3, 4),
        nn.Sigmoid(),
        nn.Linear(4, 3),
    ).double()


@pytest.fixture(scope="module")
def problem():
    net = tiny_net()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(N, 2, 6, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (N,), generator=gen)
    per_sample = {}  # brute force: g_n / N of the mean loss, one autograd.grad per sample
    names, params = zip(*net.named_parameters())
    for i in range(N):
        loss = nn.functional.cross_entropy(net(x[i : i + 1]), y[i : i + 1])
        for name, g in zip(names, torch.autograd.grad(loss, params)):
            per_sample.setdefault(name, []).append(g / N)
    per_sample = {k: torch.stack(v) for k, v in per_sample.items()}
    net.zero_grad()
    nn.functional.cross_entropy(net(x), y).backward()
    grad = {k: p.grad.clone() for k, p in net.named_parameters()}
    return net, x, y, per_sample, grad


def _available(name):
    ok, why = get_backend(name).available()
    if not ok:
        pytest.skip(why)


def _run(name, quantity, problem):
    net, x, y, _, _ = problem
    step = get_backend(name).step_fn(copy.deepcopy(net), nn.CrossEntropyLoss(), quantity)
    step(x, y)
    return step


PER_SAMPLE_CASES = [
    (b, q) for b in BACKENDS for q in ("BatchGrad", "BatchL2Grad") if get_backend(b).supports(q)
]


@pytest.mark.parametrize(("backend", "quantity"), PER_SAMPLE_CASES, ids=lambda v: str(v))
def test_per_sample_quantities_match_brute_force(backend, quantity, problem):
    _available(backend)
    _, _, _, per_sample, _ = problem
    step = _run(backend, quantity, problem)
    if quantity == "BatchGrad":
        assert step.results.keys() == per_sample.keys()
        for name, expected in per_sample.items():
            torch.testing.assert_close(step.results[name], expected, rtol=1e-10, atol=1e-12)
    else:
        expected = sum(g.flatten(1).pow(2).sum(1) for g in per_sample.values())
        got = sum(step.results.values())  # per parameter, or one "all" entry (opacus)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


KFRA_FLOAT64 = pytest.mark.xfail(
    strict=True, reason="BackPACK 1.7.1 KFRA through MaxPool2d fails in float64 (scatter dtype)"
)
ALL_CASES = [
    pytest.param(b, q, marks=KFRA_FLOAT64 if (b == "backpack" and q == "KFRA") else ())
    for b in BACKENDS
    for q in (GRAD, *QUANTITIES)
    if get_backend(b).supports(q)
]


@pytest.mark.parametrize(("backend", "quantity"), ALL_CASES)
def test_every_step_fills_the_plain_gradient(backend, quantity, problem):
    _available(backend)
    _, _, _, _, grad = problem
    step = _run(backend, quantity, problem)
    inner = getattr(step, "_inner", step.model)
    for name, p in inner.named_parameters():
        torch.testing.assert_close(p.grad, grad[name], rtol=1e-10, atol=1e-12)
    if quantity != GRAD:
        assert step.results, "a quantity step must keep its results"
    step.clear()
    assert step.results is None
    assert all(p.grad is None for p in inner.parameters())


def test_backpack_clear_drops_its_per_parameter_fields(problem):
    _available("backpack")
    step = _run("backpack", "SumGradSquared", problem)
    assert all(hasattr(p, "sum_grad_squared") for p in step.model.parameters())
    step.clear()
    assert not any(hasattr(p, "sum_grad_squared") for p in step.model.parameters())


def test_unknown_backend_lists_valid_names():
    with pytest.raises(ValueError, match="valid backends: pytorch, ours, ours_perstep, backpack"):
        get_backend("nope")


def test_unsupported_quantity_is_refused_with_the_list():
    with pytest.raises(ValueError, match="has no quantity 'KFAC'; it has: grad, BatchGrad"):
        get_backend("loop").step_fn(tiny_net(), nn.CrossEntropyLoss(), "KFAC")


@pytest.mark.parametrize("name", ["ours", "ours_perstep"])
def test_ours_is_always_available(name):
    assert get_backend(name).available() == (True, "")


def test_missing_package_makes_backend_unavailable():
    class Missing(BaseBackend):
        name = "missing"
        requires = ("curvbench_no_such_module_xyz",)

    ok, why = Missing().available()
    assert not ok and "curvbench_no_such_module_xyz" in why


def test_per_step_pattern_leaves_no_hooks_and_equals_the_long_context(problem):
    """``ours_perstep`` opens ``collect`` per step: same results as ``ours``, hooks gone after."""
    x, y = problem[1], problem[2]
    long_lived = _run("ours", "BatchGrad", problem)
    per_step = _run("ours_perstep", "BatchGrad", problem)
    for name, value in long_lived.results.items():
        torch.testing.assert_close(per_step.results[name], value)
    model = per_step.model
    hooks = [
        m for m in model.modules() if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
    ]
    assert hooks == [], "the per-step context must remove its hooks when the step ends"
    first = per_step.results
    per_step(x, y)  # a second step: a new context; the first step's held result is untouched
    for name, value in long_lived.results.items():
        torch.testing.assert_close(first[name], value)
