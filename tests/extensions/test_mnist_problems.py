"""The ten quantities and the five curvature optimizers on the (Fashion-)MNIST problems.

* every quantity on ``mnist_logreg`` and ``fmnist_2c2d`` (N = 4, float64) against
  backpack-for-pytorch 1.7.1 (the MC ones draw for draw: both sides seed the global RNG before the
  forward pass); KFRA on mnist_logreg only;
* KFRA on fmnist_2c2d is refused before allocating, with the size of the dense matrix it would
  need (as on the CIFAR CNNs);
* one step of each curvature optimizer on mnist_logreg against the update rule written out
  densely (gridsearch spec §5.1: first step, the curvature is this batch's).
"""

from __future__ import annotations

import copy
import time

import pytest
import torch

import extensions
import problems
from extensions import MemoryBudgetError
from extensions.optimizers import CURVATURES, loss_and_curvature, make_optimizer

#: our quantity name -> BackPACK savefield
SAVEFIELDS = {
    "BatchGrad": "grad_batch",
    "BatchL2Grad": "batch_l2",
    "SumGradSquared": "sum_grad_squared",
    "Variance": "variance",
    "DiagGGNExact": "diag_ggn_exact",
    "DiagGGNMC": "diag_ggn_mc",
    "DiagHessian": "diag_h",
    "KFAC": "kfac",
    "KFLR": "kflr",
    "KFRA": "kfra",
}
#: quantities per problem: all ten on the logistic regression; KFRA is refused on 2C2D
QUANTITIES = {
    "mnist_logreg": list(extensions.QUANTITIES),
    "fmnist_2c2d": [q for q in extensions.QUANTITIES if q != "KFRA"],
}


_MODELS: dict[str, torch.nn.Module] = {}


def _initial_model(name: str) -> torch.nn.Module:
    """A copy of the problem's float64 model for seed 0 (2C2D's scipy init takes ~2 s: once)."""
    if name not in _MODELS:
        torch.manual_seed(0)
        _MODELS[name] = problems.get(name).model(dtype=torch.float64)
    return copy.deepcopy(_MODELS[name])


def _batch(name: str, n: int = 4, dtype=torch.float64):
    problem = problems.get(name)
    model = _initial_model(name).to(dtype)
    if name == "mnist_logreg":  # off the all-zero start, so the logits differ between classes
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, 0.05)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(n, *problem.input_shape, generator=gen, dtype=dtype)
    y = torch.randint(0, problem.num_classes, (n,), generator=gen)
    return problem, model, x, y


def _backpack(model, loss_fn, x, y, quantity):
    backpack = pytest.importorskip("backpack")
    from backpack import extensions as bp_extensions

    model, loss_fn = backpack.extend(copy.deepcopy(model)), backpack.extend(copy.deepcopy(loss_fn))
    torch.manual_seed(7)
    loss = loss_fn(model(x), y)
    with backpack.backpack(getattr(bp_extensions, quantity)()):
        loss.backward()
    return {n: getattr(p, SAVEFIELDS[quantity]) for n, p in model.named_parameters()}


#: 2C2D: ten BackPACK passes over 3.3M parameters (~20 s)
SLOW_2C2D = pytest.mark.slow


@pytest.mark.parametrize("name", list(QUANTITIES))
def test_every_quantity_runs_in_one_pass(name):
    """All quantities together (fmnist_2c2d: all but KFRA), shaped like the parameters, finite.

    (The first 2C2D test also pays for its scipy initialisation, ~2 s on an idle core.)
    """
    problem, model, x, y = _batch(name)
    res = extensions.compute(model, problem.loss_fn(), x, y, QUANTITIES[name])
    assert list(res) == QUANTITIES[name]
    for quantity, values in res.items():
        for pname, p in model.named_parameters():
            value = values[pname]
            parts = value if isinstance(value, list) else [value]
            assert all(torch.isfinite(v).all() for v in parts), (quantity, pname)
            if quantity in ("BatchGrad",):
                assert value.shape == (4, *p.shape)
            elif quantity == "BatchL2Grad":
                assert value.shape == (4,)
            elif not isinstance(value, list):
                assert value.shape == p.shape, (quantity, pname)


@pytest.mark.reference
@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=SLOW_2C2D) if n == "fmnist_2c2d" else n for n in QUANTITIES]
)
def test_every_quantity_runs_and_matches_backpack(name):
    problem, model, x, y = _batch(name)
    quantities = QUANTITIES[name]
    ours = {}
    for quantity in quantities:  # one at a time: the MC draws then match BackPACK's
        torch.manual_seed(7)
        ours.update(extensions.compute(model, problem.loss_fn(), x, y, [quantity]))
    assert set(ours) == set(quantities)
    params = dict(model.named_parameters())
    for quantity in quantities:
        ref = _backpack(model, problem.loss_fn(), x, y, quantity)
        assert list(ours[quantity]) == list(params), quantity
        for pname, expected in ref.items():
            mine = ours[quantity][pname]
            pairs = (
                zip(mine, expected, strict=True)
                if isinstance(expected, list)
                else [(mine, expected)]
            )
            for a, b in pairs:
                assert torch.isfinite(a).all()
                atol = 1e-9 * float(b.abs().max()) + 1e-30
                torch.testing.assert_close(
                    a, b, rtol=1e-7, atol=atol, msg=lambda m, q=quantity, n=pname: f"{q} {n}: {m}"
                )


def test_kfra_runs_on_mnist_logreg_and_equals_kflr():
    """One linear layer: KFRA's backpropagated matrix is the last layer's, so KFRA == KFLR."""
    problem, model, x, y = _batch("mnist_logreg")
    res = extensions.compute(model, problem.loss_fn(), x, y, ["KFRA", "KFLR"])
    for pname in dict(model.named_parameters()):
        for a, b in zip(res["KFRA"][pname], res["KFLR"][pname], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    g, a = res["KFRA"]["dense.weight"]
    assert g.shape == (10, 10) and a.shape == (784, 784)


@pytest.mark.parametrize(
    ("dtype", "budget"),
    [
        (torch.float64, extensions.DEFAULT_MEMORY_BUDGET),
        (torch.float32, 2**30),  # in float32 the dense matrices alone would fit the 8 GiB default
    ],
    ids=["float64-default-budget", "float32-1GiB"],
)
def test_kfra_is_refused_on_fmnist_2c2d_before_allocating(dtype, budget):
    problem, model, x, y = _batch("fmnist_2c2d", dtype=dtype)
    with torch.no_grad():  # the widest activation: conv1's output, 32 x 28 x 28
        h = model.conv1(x[:1]).numel()
    assert h == 25_088
    start = time.perf_counter()
    with pytest.raises(MemoryBudgetError) as err:
        extensions.compute(model, problem.loss_fn(), x, y, ["KFRA"], memory_budget=budget)
    assert time.perf_counter() - start < 10.0
    msg = str(err.value)
    assert "KFRA" in msg and f"{h:,} x {h:,}" in msg
    stated = int(msg.split("need about ")[1].split(" bytes")[0].replace(",", ""))
    assert stated >= h * h * torch.finfo(dtype).bits // 8 and stated > budget


# ---- the curvature optimizers on mnist_logreg ------------------------------------------------


def _expected_step(curvature, grad, lr, damping):
    """The update rule of gridsearch spec §5.1, written out densely (no eigendecomposition)."""
    if isinstance(curvature, torch.Tensor):  # diagonal
        return -lr * grad / (curvature + damping)
    if len(curvature) == 1:  # a bias: (B + lambda I)^-1 g
        (b,) = curvature
        eye = torch.eye(b.shape[0], dtype=b.dtype)
        return -lr * torch.linalg.solve(b + damping * eye, grad)
    g, a = curvature  # BackPACK order [G, A]; pi-damped factors
    pi = torch.sqrt((torch.trace(a) / a.shape[0]) / (torch.trace(g) / g.shape[0]))
    g_damped = g + (damping**0.5 / pi) * torch.eye(g.shape[0], dtype=g.dtype)
    a_damped = a + (pi * damping**0.5) * torch.eye(a.shape[0], dtype=a.dtype)
    return -lr * torch.linalg.solve(g_damped, torch.linalg.solve(a_damped, grad.T).T)


@pytest.mark.parametrize("method", CURVATURES)
def test_each_curvature_optimizer_takes_the_update_rule_step_on_mnist_logreg(method):
    problem = problems.get("mnist_logreg")
    torch.manual_seed(0)
    model = problem.model(dtype=torch.float64)  # DeepOBS's start: all zeros
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(8, 1, 28, 28, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 10, (8,), generator=gen)
    lr, damping = 0.1, 1e-2
    opt = make_optimizer(method, problem.l2_groups(model), lr=lr, damping=damping)
    opt.zero_grad()
    loss, curvature = loss_and_curvature(model, problem.loss_fn(), x, y, method, backend="ours")
    before = {p: p.detach().clone() for p in model.parameters()}
    expected = {p: _expected_step(curvature[p], p.grad, lr, damping) for p in model.parameters()}
    opt.step(curvature)
    for pname, p in model.named_parameters():
        step = p.detach() - before[p]
        assert step.abs().max() > 0, pname
        torch.testing.assert_close(step, expected[p], rtol=1e-6, atol=1e-12, msg=pname)
    # a descent direction: the damped curvature is positive definite
    slope = sum((p.grad * (p.detach() - before[p])).sum() for p in model.parameters())
    assert slope < 0 and loss > 0
