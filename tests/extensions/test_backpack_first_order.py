"""First-order quantities vs backpack-for-pytorch 1.7.1 on the real 3C3D and All-CNN-C.

3C3D runs in float64 (mean) and float32 (sum); All-CNN-C in float32 (BackPACK's grouped-conv path
takes ~1 min per float64 backward there on 2 cores), with tolerances relative to each tensor's
largest entry.
"""

from __future__ import annotations

import copy

import pytest
import torch

import extensions

backpack = pytest.importorskip("backpack", reason="backpack-for-pytorch is not installed")
problems = pytest.importorskip("problems")

pytestmark = pytest.mark.reference

#: our name -> (BackPACK extension class name, savefield)
SAVEFIELDS = {
    "BatchGrad": ("BatchGrad", "grad_batch"),
    "BatchL2Grad": ("BatchL2Grad", "batch_l2"),
    "SumGradSquared": ("SumGradSquared", "sum_grad_squared"),
    "Variance": ("Variance", "variance"),
}


CASES = [
    ("cifar10_3c3d", 2, torch.float64, "mean"),
    ("cifar10_3c3d", 3, torch.float32, "sum"),
    ("cifar100_allcnnc", 2, torch.float32, "mean"),
    ("cifar100_allcnnc", 2, torch.float32, "sum"),
]


@pytest.mark.parametrize(
    "name,batch_size,dtype,reduction",
    CASES,
    ids=[f"{c[0].split('_')[1]}-N{c[1]}-{str(c[2])[-7:]}-{c[3]}" for c in CASES],
)
def test_first_order_matches_backpack(name, batch_size, dtype, reduction):
    from backpack import extend
    from backpack import extensions as bp_ext

    problem = problems.get(name)
    torch.manual_seed(0)
    model = problem.model().to(dtype).train()
    loss_fn = problem.loss_fn(reduction=reduction)
    x = torch.randn(batch_size, 3, 32, 32, dtype=dtype)
    y = torch.randint(0, problem.num_classes, (batch_size,))

    bp_model = extend(copy.deepcopy(model))
    bp_loss = extend(copy.deepcopy(loss_fn))
    state = torch.get_rng_state()
    with backpack.backpack(*(getattr(bp_ext, cls)() for cls, _ in SAVEFIELDS.values())):
        bp_loss(bp_model(x), y).backward()

    torch.set_rng_state(state)  # the same dropout masks
    results = extensions.compute(model, loss_fn, x, y, list(SAVEFIELDS))

    bp_params = dict(bp_model.named_parameters())
    for q, (_, field) in SAVEFIELDS.items():
        assert list(results[q]) == list(bp_params)
        for pname, p in bp_params.items():
            close(results[q][pname], getattr(p, field), dtype)
    for p, bp_p in zip(model.parameters(), bp_params.values()):
        close(p.grad, bp_p.grad, dtype)


def close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    """Equal up to rounding: relative to the tensor's scale (float32 sums differ in order)."""
    rtol = 1e-9 if dtype == torch.float64 else 1e-4
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale * 1e-2)
