"""Second-order quantities vs backpack-for-pytorch 1.7.1 on the real 3C3D and All-CNN-C (batch 2).

float64, train mode (All-CNN-C's dropout active). The MC quantities (DiagGGNMC, KFAC) are
compared draw for draw: both sides seed the global RNG before the forward pass, draw the same
dropout masks, and sample the labels with ``Categorical(softmax(f))`` after the forward pass.
KFRA: BackPACK cannot run it on these nets (dense 50k x 50k matrices); ours refuses up front.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import extensions
from extensions.errors import MemoryBudgetError
from extensions.second_order import compute_second_order
from tests.extensions.test_second_order import build_trace

backpack = pytest.importorskip("backpack")
problems = pytest.importorskip("problems")

SAVEFIELDS = {
    "DiagGGNExact": "diag_ggn_exact",
    "DiagGGNMC": "diag_ggn_mc",
    "DiagHessian": "diag_h",
    "KFAC": "kfac",
    "KFLR": "kflr",
}
#: which quantities each net is checked for; All-CNN-C's exact C-column quantities use the
#: 10-class variant (same modules, 10x fewer columns) to keep the suite fast. DiagHessian equals
#: DiagGGNExact on these ReLU nets (same code path); KFLR shares DiagGGNExact's columns and
#: KFAC's input factors, so it is compared on 3C3D only.
CASES = [
    ("cifar10_3c3d", "DiagGGNExact"),
    ("cifar10_3c3d", "KFLR"),
    ("cifar10_3c3d", "KFAC"),
    ("cifar10_3c3d", "DiagGGNMC"),
    ("cifar10_allcnnc", "DiagGGNExact"),
    ("cifar100_allcnnc", "KFAC"),
    ("cifar100_allcnnc", "DiagGGNMC"),
]


#: BackPACK 1.7.1's AvgPool2d Jacobian builds a float32 transposed convolution, so All-CNN-C
#: (AvgPool head) is compared in float32
DTYPES = {
    "cifar10_3c3d": torch.float64,
    "cifar10_allcnnc": torch.float32,
    "cifar100_allcnnc": torch.float32,
}
RTOL = {torch.float64: 1e-7, torch.float32: 2e-4}


def _problem(name: str, batch_size: int = 2):
    problem = problems.get(name)
    torch.manual_seed(0)
    dtype = DTYPES[name]
    model = problem.model().to(dtype).train()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch_size, 3, 32, 32, generator=gen, dtype=torch.float64).to(dtype)
    y = torch.randint(0, problem.num_classes, (batch_size,), generator=gen)
    return model, problem.loss_fn(), x, y


def _ours(model, loss_fn, x, y, quantity):
    torch.manual_seed(7)
    return extensions.compute(model, loss_fn, x, y, [quantity])[quantity]


def _backpack(model, loss_fn, x, y, quantity):
    from backpack import backpack as backpack_ctx
    from backpack import extend, extensions

    model = extend(model)
    loss_fn = extend(loss_fn)
    torch.manual_seed(7)
    loss = loss_fn(model(x), y)
    with backpack_ctx(getattr(extensions, quantity)()):
        loss.backward()
    field = SAVEFIELDS[quantity]
    out = {n: getattr(p, field) for n, p in model.named_parameters()}
    for p in model.parameters():
        delattr(p, field)
    return out


@pytest.mark.reference
@pytest.mark.parametrize(("net", "quantity"), CASES, ids=[f"{n}-{q}" for n, q in CASES])
def test_matches_backpack(net, quantity):
    model, loss_fn, x, y = _problem(net)
    ours = _ours(model, loss_fn, x, y, quantity)
    ref = _backpack(model, loss_fn, x, y, quantity)
    assert set(ours) == set(ref)
    rtol = RTOL[x.dtype]
    for name, value in ref.items():
        mine = ours[name]
        pairs = zip(mine, value) if isinstance(value, list) else [(mine, value)]
        if isinstance(value, list):
            assert len(mine) == len(value), name
        for a, b in pairs:
            atol = rtol * float(b.abs().max()) + 1e-30
            torch.testing.assert_close(
                a, b, rtol=rtol, atol=atol, msg=lambda m, n=name: f"{n}: {m}"
            )


@pytest.mark.reference
def test_kfra_refused_on_3c3d():
    model, loss_fn, x, y = _problem("cifar10_3c3d", batch_size=1)
    model = model.float()
    trace = build_trace(model, loss_fn, x.float(), y)
    with pytest.raises(MemoryBudgetError, match=r"dense [\d,]+ x [\d,]+ matrix .* bytes"):
        compute_second_order(trace, ["KFRA"])


def test_backpack_nets_are_sequential_of_supported_modules():
    from extensions.second_order import check_supported

    for name in DTYPES:
        model = problems.get(name).model()
        assert isinstance(model, nn.Sequential)
        check_supported(model, list(SAVEFIELDS))
