"""Scratch temporaries: :meth:`BufferPool.scratch` and the chunked conv loops that use it.

The first-order conv loop writes each chunk's unfolded input and per-sample rows into named
temporaries and squares the rows in place; these tests check the values against per-sample
autograd (float64, several chunks) and that the temporaries really are reused, chunk after chunk
and step after step, without a held view ever being overwritten.
"""

import pytest
import torch
from torch import nn

from extensions import first_order, per_sample
from extensions.buffers import BufferPool


def test_scratch_is_reused_once_free():
    pool = BufferPool()
    like = torch.zeros(1)
    a = pool.scratch("rows", 100, like)
    ptr = a.data_ptr()
    del a
    b = pool.scratch("rows", 60, like)  # smaller: a view of the same memory
    assert b.data_ptr() == ptr and b.numel() == 60
    del b
    c = pool.scratch("rows", 200, like)  # larger: grown, the old one forgotten
    assert c.numel() == 200 and len(pool) == 1


def test_a_held_scratch_is_never_handed_out_twice():
    pool = BufferPool()
    like = torch.zeros(1)
    a = pool.scratch("rows", 10, like)
    a.fill_(1.0)
    b = pool.scratch("rows", 10, like)
    b.fill_(2.0)
    assert a.data_ptr() != b.data_ptr() and torch.all(a == 1.0)
    view = b[:5]
    del b
    c = pool.scratch("rows", 10, like)  # a view of the last buffer is alive: a new one
    assert c.data_ptr() != view.data_ptr()


def test_names_and_dtypes_do_not_share():
    pool = BufferPool()
    a = pool.scratch("rows", 10, torch.zeros(1))
    b = pool.scratch("unfold", 10, torch.zeros(1))
    c = pool.scratch("rows", 10, torch.zeros(1, dtype=torch.float64))
    assert len({a.data_ptr(), b.data_ptr(), c.data_ptr()}) == 3
    assert c.dtype == torch.float64


def test_scratch_off_cpu_is_fresh_and_not_kept():
    """Off CPU (here the meta device) the caching allocator is left to do its job."""
    pool = BufferPool()
    out = pool.scratch("rows", 10, torch.zeros(1, device="meta"))
    assert out.device.type == "meta" and out.numel() == 10 and len(pool) == 0


SUBSETS = [
    ["SumGradSquared", "Variance", "BatchL2Grad"],
    ["BatchGrad", "SumGradSquared", "BatchL2Grad"],
    ["BatchGrad"],
]


def _brute_force(conv, x, g):
    rows = []
    for i in range(x.shape[0]):
        w = conv.weight.detach().clone().requires_grad_()
        out = nn.functional.conv2d(x[i : i + 1], w, None, conv.stride, conv.padding)
        rows.append(torch.autograd.grad(out, w, g[i : i + 1])[0])
    return torch.stack(rows)


@pytest.mark.parametrize("narrow", [False, True], ids=["plain-product", "transposed-product"])
@pytest.mark.parametrize("wanted", SUBSETS, ids=lambda s: "+".join(s))
def test_chunked_conv_quantities_with_a_pooled_scratch(wanted, narrow, monkeypatch):
    """Several chunks per call, two calls: exact values, and one buffer per temporary's name.

    ``narrow``: the per-sample rows are formed transposed (``[K, T] x [T, Cout]``) and copied.
    """
    monkeypatch.setattr(per_sample, "ROWS_CHUNK_ELEMENTS", 3 * 4 * 18)  # 3 samples per chunk
    monkeypatch.setattr(per_sample, "TRANSPOSED_PRODUCT_MAX_K", 18 if narrow else 17)  # K = 18
    conv = nn.Conv2d(2, 4, 3, padding=1).double()
    x = torch.randn(8, 2, 5, 5, dtype=torch.float64)
    g = torch.randn(8, 4, 5, 5, dtype=torch.float64)
    ref = _brute_force(conv, x, g)
    pool = BufferPool()
    seen: dict[str, set[int]] = {}

    def scratch(name, numel, like):
        out = pool.scratch(name, numel, like)
        seen.setdefault(name, set()).add(out.data_ptr())
        return out

    for _ in range(2):
        res = first_order.conv2d_quantities(conv, x, g, True, False, wanted, scratch=scratch)
        torch.testing.assert_close(res.grad_weight, ref.sum(0))
        values = {q: v["weight"] for q, v in res.values.items()}
        if "BatchGrad" in wanted:
            torch.testing.assert_close(values["BatchGrad"], ref)
        if "BatchL2Grad" in wanted:
            torch.testing.assert_close(values["BatchL2Grad"], ref.flatten(1).square().sum(1))
        if "SumGradSquared" in wanted:
            torch.testing.assert_close(values["SumGradSquared"], ref.square().sum(0))
        if "Variance" in wanted:
            mean = ref.mean(0)
            torch.testing.assert_close(values["Variance"], ref.square().mean(0) - mean.square())
    expected = {"unfold"} | ({"squares"} if "BatchGrad" in wanted else {"rows"})
    if wanted == ["BatchGrad"]:
        expected = {"unfold"}
    if narrow:
        expected.add("rows_t")
    assert set(seen) == expected
    assert all(len(ptrs) == 1 for ptrs in seen.values()), seen  # reused, chunk after chunk


def test_zeropad_backward_hands_on_a_contiguous_crop():
    """A cropped view would make the next in-place ReLU backward 4x slower (strided kernel)."""
    from extensions import derivatives
    from extensions.trace import Record

    pad = nn.ZeroPad2d((0, 1, 0, 1))
    mat = torch.randn(2, 3, 4, 6, 6)
    rec = Record(name="pad", position=0, module=pad, input=None, output=None, extra={})
    out = derivatives.zeropad2d_jac_t(rec, mat)
    assert out.is_contiguous() and torch.equal(out, mat[..., :5, :5])
