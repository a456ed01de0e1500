"""First-order quantities and per-sample kernels vs brute force (float64, small nets)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import extensions
from extensions import per_sample
from tests.extensions.nets import (
    LOSS_CASES,
    NET_CASES,
    individual_gradients,
    individual_gradients_vmap,
    make_problem,
    net_case,
)

FIRST = ("BatchGrad", "BatchL2Grad", "SumGradSquared", "Variance")
SUBSETS = [(q,) for q in FIRST] + [FIRST]


def expected(per_sample_grads: torch.Tensor, name: str) -> torch.Tensor:
    """BackPACK 1.7.1 definitions from per-sample contributions b_n (spec §2)."""
    b = per_sample_grads
    n = b.shape[0]
    if name == "BatchGrad":
        return b
    if name == "BatchL2Grad":
        return b.flatten(1).square().sum(1)
    sgs = b.square().sum(0)
    if name == "SumGradSquared":
        return sgs
    return sgs / n - (b.sum(0) / n).square()


def run_both(net, loss, quantities, batch_size=3):
    """Our quantities and .grad on one model, the brute-force reference on an un-hooked copy."""
    model, loss_fn, x, y = make_problem(net, loss, batch_size)
    reference = copy.deepcopy(model)
    state = torch.get_rng_state()
    ref = individual_gradients(reference, loss_fn, x, y, rng_state=state)
    torch.set_rng_state(state)
    results = extensions.compute(model, loss_fn, x, y, list(quantities))
    return model, results, ref


#: all four together for every loss; each one alone (its own code path) for one loss
COMBINATIONS = [(loss, FIRST) for loss in LOSS_CASES] + [
    (loss, (q,)) for loss in LOSS_CASES if loss.id == "ce-mean" for q in FIRST
]


@pytest.mark.parametrize(
    "loss,quantities", COMBINATIONS, ids=[f"{c[0].id}-{'+'.join(c[1])}" for c in COMBINATIONS]
)
@pytest.mark.parametrize("net", NET_CASES, ids=lambda c: c.id)
def test_quantities_match_brute_force(net, loss, quantities):
    model, results, ref = run_both(net, loss, quantities)
    names = [n for n, _ in model.named_parameters()]
    assert set(results) == set(quantities)
    for q in quantities:
        assert list(results[q]) == names
        for name in names:
            torch.testing.assert_close(results[q][name], expected(ref[name], q))
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[name].sum(0))


@pytest.mark.parametrize("net", [c for c in NET_CASES if not c.has_dropout], ids=lambda c: c.id)
def test_brute_force_oracles_agree(net):
    """The loop oracle equals torch.func.vmap(grad) (an independent second oracle)."""
    model, loss_fn, x, y = make_problem(net, LOSS_CASES[0], 4)
    loop = individual_gradients(model, loss_fn, x, y)
    vmapped = individual_gradients_vmap(model, loss_fn, x, y)
    for name in loop:
        torch.testing.assert_close(loop[name], vmapped[name])


def _string_padding_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding="same", dilation=2),
        nn.ReLU(),
        nn.Conv2d(3, 2, (2, 3), padding="same"),  # asymmetric 'same'
        nn.Tanh(),
        nn.Conv2d(2, 3, 3, padding="valid"),
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, 3),
    )


def _sequence_linear_net() -> nn.Sequential:
    """Linear on [N, S, F] inputs (sums over the middle dimension), then a reduction."""
    return nn.Sequential(
        nn.Unflatten(1, (3, 4)), nn.Linear(4, 5), nn.Tanh(), nn.Flatten(), nn.Linear(15, 3)
    )


def _gram_l2_net() -> nn.Sequential:
    """Small output maps (T=4): the Gram form of BatchL2Grad is chosen for the second conv."""
    return nn.Sequential(
        nn.Conv2d(2, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(32, 3)
    )


EXTRA_NETS = [
    ("string-padding", _string_padding_net, (2, 6, 6)),
    ("linear-3d-input", _sequence_linear_net, (12,)),
    ("gram-l2-conv", _gram_l2_net, (2, 6, 6)),
]


@pytest.mark.parametrize("quantities", SUBSETS, ids=lambda s: "+".join(s))
@pytest.mark.parametrize("build,shape", [e[1:] for e in EXTRA_NETS], ids=[e[0] for e in EXTRA_NETS])
def test_extra_layer_variants(build, shape, quantities):
    from tests.extensions.nets import NetCase

    net = NetCase("extra", build, shape)
    model, results, ref = run_both(net, LOSS_CASES[0], quantities, batch_size=4)
    for q in quantities:
        for name in ref:
            torch.testing.assert_close(results[q][name], expected(ref[name], q))
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[name].sum(0))


def test_gram_path_is_used_for_small_maps():
    conv = nn.Conv2d(8, 8, 3)
    assert per_sample.conv2d_gram_is_cheaper(conv, torch.zeros(1, 8, 2, 2))
    assert not per_sample.conv2d_gram_is_cheaper(nn.Conv2d(3, 64, 5), torch.zeros(1, 64, 28, 28))


def test_float32_grad_matches_autograd():
    """In float32, .grad derived from per-sample terms equals autograd's to ~1e-5 relative."""
    net = net_case("mini-3c3d")
    model, loss_fn, x, y = make_problem(net, LOSS_CASES[0], batch_size=16)
    model = model.float()
    x = x.float()
    reference = copy.deepcopy(model)
    loss_fn(reference(x), y).backward()
    extensions.compute(model, loss_fn, x, y, list(FIRST))
    for p, r in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, r.grad, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# per-sample kernels (V*N rows, chunking, padding variants)
# ------------------------------------------------------------------------------------------------

CONVS = [
    ("stride2-pad1", lambda: nn.Conv2d(2, 3, 3, stride=2, padding=1), 7),
    ("same-dilated-rect", lambda: nn.Conv2d(2, 3, (3, 2), padding="same", dilation=2), 6),
    ("valid", lambda: nn.Conv2d(2, 4, 3, padding="valid"), 6),
    ("1x1", lambda: nn.Conv2d(3, 2, 1), 5),
    (
        "mixed-stride-dilation",
        lambda: nn.Conv2d(2, 3, 5, stride=(2, 1), padding=(2, 1), dilation=(1, 2)),
        9,
    ),
    ("gram-size", lambda: nn.Conv2d(8, 8, 3), 4),
]


def _conv_rows_brute_force(x, g, conv):
    """Per-row weight gradients by autograd on single samples (row m uses sample m % N)."""
    n = x.shape[0]
    rows = []
    for m in range(g.shape[0]):
        w = conv.weight.detach().clone().requires_grad_()
        out = torch.nn.functional.conv2d(
            x[m % n : m % n + 1], w, None, conv.stride, conv.padding, conv.dilation
        )
        rows.append(torch.autograd.grad(out, w, g[m : m + 1])[0])
    return torch.stack(rows)


@pytest.mark.parametrize("narrow", [None, 0, 10**6], ids=["auto", "plain", "transposed"])
@pytest.mark.parametrize("chunk", [None, 2], ids=["auto-chunk", "chunk2"])
@pytest.mark.parametrize("v", [1, 3], ids=["V1", "V3"])
@pytest.mark.parametrize("make,size", [c[1:] for c in CONVS], ids=[c[0] for c in CONVS])
def test_conv2d_kernels(make, size, v, chunk, narrow, monkeypatch):
    """Per-row kernels vs autograd; ``narrow``: the K bound of the transposed product."""
    if narrow is not None:
        monkeypatch.setattr(per_sample, "TRANSPOSED_PRODUCT_MAX_K", narrow)
    conv = make().double()
    x = torch.randn(5, conv.in_channels, size, size, dtype=torch.float64)
    out = conv(x)
    g = torch.randn(v * 5, *out.shape[1:], dtype=torch.float64)
    ref = _conv_rows_brute_force(x, g, conv)
    torch.testing.assert_close(per_sample.conv2d_weight(x, g, conv, chunk), ref)
    torch.testing.assert_close(
        per_sample.conv2d_weight_sq_norm(x, g, conv, chunk), ref.flatten(1).square().sum(1)
    )
    torch.testing.assert_close(
        per_sample.conv2d_weight_sum_sq(x, g, conv, chunk), ref.square().sum(0)
    )
    torch.testing.assert_close(per_sample.conv2d_bias(g), g.sum((2, 3)))
    torch.testing.assert_close(per_sample.conv2d_bias_sq_norm(g), g.sum((2, 3)).square().sum(1))
    unfolded = per_sample.conv2d_unfold(x, conv)
    assert unfolded.shape == (5, conv.weight[0].numel(), out.shape[2] * out.shape[3])


@pytest.mark.parametrize("v", [1, 2], ids=["V1", "V2"])
@pytest.mark.parametrize("shape", [(5, 4), (5, 2, 4)], ids=["2d-input", "3d-input"])
def test_linear_kernels(shape, v):
    x = torch.randn(*shape, dtype=torch.float64)
    g = torch.randn(v * 5, *shape[1:-1], 3, dtype=torch.float64)
    ref = torch.stack([torch.einsum("...o,...i->oi", g[m], x[m % 5]) for m in range(v * 5)])
    torch.testing.assert_close(per_sample.linear_weight(x, g), ref)
    torch.testing.assert_close(
        per_sample.linear_weight_sq_norm(x, g), ref.flatten(1).square().sum(1)
    )
    torch.testing.assert_close(per_sample.linear_weight_sum_sq(x, g), ref.square().sum(0))
    torch.testing.assert_close(per_sample.linear_bias(g), g.reshape(v * 5, -1, 3).sum(1))
    torch.testing.assert_close(
        per_sample.linear_bias_sq_norm(g), g.reshape(v * 5, -1, 3).sum(1).square().sum(1)
    )


def test_rows_must_be_a_multiple_of_the_batch():
    with pytest.raises(ValueError, match="multiple of the batch size"):
        per_sample.linear_weight(torch.zeros(4, 3), torch.zeros(5, 2))


@pytest.mark.parametrize("layout", ["contiguous", "channels-last", "batch-slice"])
@pytest.mark.parametrize("make,size", [c[1:] for c in CONVS], ids=[c[0] for c in CONVS])
def test_strided_unfold_equals_f_unfold(make, size, layout):
    conv = make()
    x = torch.randn(6, conv.in_channels, size, size)
    ref = F.unfold(
        F.pad(x, conv._reversed_padding_repeated_twice) if isinstance(conv.padding, str) else x,
        conv.kernel_size,
        dilation=conv.dilation,
        padding=0 if isinstance(conv.padding, str) else conv.padding,
        stride=conv.stride,
    )
    if layout == "channels-last":
        x = x.to(memory_format=torch.channels_last)
    elif layout == "batch-slice":
        x, ref = x[2:5], ref[2:5]
    assert torch.equal(per_sample.conv2d_unfold(x, conv), ref)


@pytest.mark.parametrize("numel", [10, 2**22], ids=["small", "huge-page-sized"])
def test_empty_large_is_an_ordinary_buffer(numel):
    like = torch.zeros(1, dtype=torch.float64)
    out = per_sample.empty_large((numel,), like)
    assert out.shape == (numel,) and out.dtype == torch.float64 and out.device == like.device
    out.fill_(2.0)
    assert out.sum().item() == 2.0 * numel


@pytest.mark.parametrize("rows_bound", [2**22, 1], ids=["all-rows", "one-row-per-chunk"])
def test_conv2d_weight_sum_sq_of_a_strided_column_view(rows_bound, monkeypatch):
    """A ``[V, N, ...]`` cropped (non-contiguous) view gives the same sums, with rows chunked."""
    monkeypatch.setattr(per_sample, "ROWS_CHUNK_ELEMENTS", rows_bound)
    conv = torch.nn.Conv2d(2, 3, 3, padding=1).double()
    x = torch.randn(5, 2, 6, 6, dtype=torch.float64)
    padded = torch.randn(4, 5, 3, 7, 7, dtype=torch.float64)
    view = padded[..., :6, :6]  # what a ZeroPad2d backward hands on
    assert not view.is_contiguous()
    ref = _conv_rows_brute_force(x, view.reshape(20, 3, 6, 6), conv)
    torch.testing.assert_close(per_sample.conv2d_weight_sum_sq(x, view, conv), ref.square().sum(0))
