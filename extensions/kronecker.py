"""Kronecker input factors ``A`` (shared by KFAC, KFLR and KFRA).

* Linear (2-d input ``x [N, in]``): ``A = x^T x / N``.
* Conv2d (groups = 1): ``A = (1/N) sum_n sum_t u_{n,t} u_{n,t}^T`` over the unfolded input patches
  ``u_{n,t} in R^{C_in k_h k_w}`` (index order ``(c, i, j)`` as ``F.unfold`` and the row-major
  flattened weight).

The convolution factor is the KFAC hot spot (``K = C_in k_h k_w`` up to 1728 on All-CNN-C).
:func:`conv2d_input_factor` exploits the patch structure instead of forming ``U U^T`` with the
unfolded ``U [K, N T]``: the block for kernel offsets ``(i, j), (i', j')`` is a sum of products of
input rows ``i' - i`` apart and (stride 1) columns ``j' - j`` apart, so one Gram matrix per
shift, with exact row ranges and a boundary-column correction, gives all blocks with that shift:
13 ``C x C`` Gram units instead of 81 for a 3x3 kernel (27 with column stride > 1).
:func:`conv2d_input_factor_unfold` is the direct definition (used as the test oracle).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from extensions import device_defaults, per_sample

#: rows per block of :func:`symmetric_gram` (measured on 2 CPU threads: K = 576..1728 runs
#: 1.3-1.7x faster than one ``u @ u.T``; smaller blocks lose more to matmul overhead)
GRAM_BLOCK_ROWS = device_defaults.CPU["GRAM_BLOCK_ROWS"]  # 192
GRAM_MAX_BLOCKS = device_defaults.CPU["GRAM_MAX_BLOCKS"]  # 6


def symmetric_gram(u: Tensor, out: Tensor | None = None) -> Tensor:
    """``u @ u.T`` (``[K, K]``) from the upper block triangle only, mirrored (a "syrk").

    Args:
        u: ``[K, M]``.
        out: if given, ``u @ u.T`` is added to it (``[K, K]``) and it is returned.

    """
    k = u.shape[0]
    max_blocks = device_defaults.tuned("GRAM_MAX_BLOCKS", u.device, GRAM_MAX_BLOCKS)
    blocks = min(max_blocks, max(1, k // GRAM_BLOCK_ROWS))
    if blocks == 1:
        return u @ u.t() if out is None else out.addmm_(u, u.t())
    if out is None:
        out = u.new_zeros(k, k)
    step = -(-k // blocks)
    for i in range(0, k, step):
        stop = min(k, i + step)
        row = u[i:stop] @ u[i:].t()  # [step, K - i]: the diagonal block and right of it
        out[i:stop, i:] += row
        out[stop:, i:stop] += row[:, stop - i :].t()
    return out


def linear_input_factor(x: Tensor) -> Tensor:
    """``x^T x / N`` for a 2-d input ``[N, in]``."""
    return symmetric_gram(x.t()) / x.shape[0]


def _conv_geometry(module: nn.Conv2d) -> tuple[tuple[int, int], ...]:
    return (
        tuple(module.kernel_size),
        tuple(module.stride),
        tuple(module.padding),
        tuple(module.dilation),
    )


def _patch_matrix(
    x: Tensor, module: nn.Conv2d, scratch: per_sample.Scratch = per_sample.fresh_scratch
) -> Tensor:
    """Unfolded patches laid out as ``[C_in k_h k_w, N T]`` (one copy of a strided view).

    The copy goes into ``scratch``'s ``"patch_matrix"`` temporary.
    """
    patches = per_sample.conv2d_patches(x, module)
    n, c, kh, kw, ho, wo = patches.shape
    permuted = patches.permute(1, 2, 3, 0, 4, 5)
    out = scratch("patch_matrix", permuted.numel(), x).view(permuted.shape)
    return out.copy_(permuted).view(c * kh * kw, n * ho * wo)


def conv2d_input_factor_unfold(
    x: Tensor,
    module: nn.Conv2d,
    max_elements: int = 2**26,
    scratch: per_sample.Scratch = per_sample.fresh_scratch,
) -> Tensor:
    """Compute the definition ``(1/N) sum_n U_n U_n^T`` from unfolded patches, in chunks.

    Args:
        x: Layer input ``[N, C_in, H, W]``.
        module: The convolution.
        max_elements: Bound on the elements of one unfolded chunk.
        scratch: gives the unfolded chunk's temporary (default: a new one per chunk).

    Returns:
        ``A`` of shape ``[K, K]``.

    """
    n = x.shape[0]
    k = x.shape[1] * module.kernel_size[0] * module.kernel_size[1]
    per_sample_elements = max(1, per_sample.conv2d_patches(x[:1], module).numel())
    step = max(1, min(n, max_elements // per_sample_elements))
    a = x.new_zeros(k, k)
    for n0 in range(0, n, step):
        u = _patch_matrix(x[n0 : n0 + step], module, scratch)  # [K, n T]
        symmetric_gram(u, out=a)
        del u  # the next chunk may reuse the temporary
    return a / n


def conv2d_input_factor(
    x: Tensor, module: nn.Conv2d, scratch: per_sample.Scratch = per_sample.fresh_scratch
) -> Tensor:
    """``(1/N) sum_n sum_t u u^T`` over patches, from per-row Gram matrices of shifted inputs.

    The block of kernel offsets ``(i, j), (i', j')`` sums products of input rows ``di = i' - i``
    apart. Per row shift one batched matmul over the needed input rows gives per-row Gram
    matrices, and strided row sums over them give the blocks of every ``i`` (the row range of
    ``i`` is exact, so padding and stride need no correction). Along columns:

    * column stride and dilation 1: per column shift ``dj = j' - j`` (``2 k_w - 1`` of them, ``k_w``
      for ``di = 0`` by symmetry) one Gram over all image columns, minus the few boundary columns
      kernel column ``j`` does not see (:func:`_column_shift_blocks`): ``k_w + (k_h - 1)
      (2 k_w - 1)`` Gram units instead of ``k_h^2 k_w^2`` for the unfolded ``U U^T`` (13 vs 81);
    * otherwise the ``k_w`` kernel columns are stacked (:func:`_kernel_column_blocks`):
      ``k_h k_w^2`` units.

    Falls back to :func:`conv2d_input_factor_unfold` where that is cheaper (1x1 kernels, few
    channels, small images).

    Args:
        x: Layer input ``[N, C_in, H, W]``.
        module: The convolution (groups = 1, zero padding).
        scratch: gives the temporaries (unfolded patches or the row algorithms' layouts).

    Returns:
        ``A`` of shape ``[C_in k_h k_w, C_in k_h k_w]``.

    """
    (kh, kw), (sh, _), (ph, _), (dh, _) = _conv_geometry(module)
    n, c = x.shape[:2]
    if not use_structured_input_factor(x, module):
        return conv2d_input_factor_unfold(x, module, scratch=scratch)
    h = x.shape[-2]
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    row_blocks = row_block_algorithm(x, module)(x, module, scratch)
    a6 = x.new_empty(c, kh, kw, c, kh, kw)
    for di in range(kh):
        starts = [dh * i for i in range(kh - di)]
        # a padding row on either side of a pair contributes nothing: leave the pair out
        live = [u for u in range(ph, ph + h) if u + dh * di < ph + h]
        seen = [[u0 + sh * a for a in range(ho)] for u0 in starts]
        needed = sorted({u for rows in seen for u in rows}.intersection(live))
        where = {u: k for k, u in enumerate(needed)}
        blocks_of = row_blocks(needed, dh * di) if needed else None
        for i, rows in enumerate(seen):
            picked = [where[u] for u in rows if u in where]
            block = blocks_of(picked) if picked else x.new_zeros(c, kw, c, kw)  # [c, j, c', j']
            a6[:, i, :, :, i + di, :] = block
            if di > 0:
                a6[:, i + di, :, :, i, :] = block.permute(2, 3, 0, 1)
    return a6.reshape(c * kh * kw, c * kh * kw) / n


#: ``row_blocks(needed, shift)`` -> ``blocks_of(rows)``: the ``[C, k_w, C, k_w]`` sums over the
#: padded input rows ``needed[rows]`` of the products of row ``u`` with row ``u + shift``
RowBlocks = Callable[[list[int], int], Callable[[list[int]], Tensor]]


def row_block_algorithm(
    x: Tensor, module: nn.Conv2d
) -> Callable[[Tensor, nn.Conv2d, per_sample.Scratch], RowBlocks]:
    """Pick the cheaper row-pair algorithm for ``module`` on images as wide as ``x``'s.

    Matmul columns per pair of input rows: stacked kernel columns ``k_w^2 W_out``; column shifts
    (column stride and dilation 1 only) ``(2 k_w - 1)`` shifts over ``W + 2 (k_w - 1)`` laid-out
    columns plus one per shift and boundary column. For a 3x3 kernel: 190 vs 288 on 32 'same'
    columns (All-CNN-C), but 110 vs 108 on 14 columns without padding (3C3D).
    """
    (_, kw), (_, sw), (_, pw), (_, dw) = _conv_geometry(module)
    if sw != 1 or dw != 1:
        return _kernel_column_blocks
    w = x.shape[-1]
    wo = w + 2 * pw - kw + 1
    unseen = _unseen_columns(w, kw, pw)
    boundary = len({q for cols in unseen.values() for q in cols})
    shifts = 2 * kw - 1
    column_shift = shifts * (w + 2 * (kw - 1)) + shifts * boundary
    return _column_shift_blocks if column_shift < kw * kw * wo else _kernel_column_blocks


def _unseen_columns(w: int, kw: int, pw: int) -> dict[int, list[int]]:
    """Image columns (of ``w``) that kernel column ``j`` never sees (stride 1, padding ``pw``)."""
    wo = w + 2 * pw - kw + 1
    return {j: [q for q in range(w) if not j <= q + pw < j + wo] for j in range(kw)}


def _kernel_column_blocks(
    x: Tensor, module: nn.Conv2d, scratch: per_sample.Scratch = per_sample.fresh_scratch
) -> RowBlocks:
    """Row-pair blocks from the ``k_w`` kernel columns stacked into one ``[k_w C, N W_out]``.

    The stacked columns are copied into ``scratch``'s ``"row_columns"`` temporary.
    """
    (_, kw), (_, sw), (ph, pw), (_, dw) = _conv_geometry(module)
    n, c = x.shape[:2]
    xp = F.pad(x, (pw, pw, ph, ph)) if ph or pw else x
    wo = (xp.shape[-1] - dw * (kw - 1) - 1) // sw + 1
    # cols[u, (j, c), (n, b)] = xp[n, c, u, dw*j + sw*b]: what kernel column j sees in row u
    s_n, s_c, s_h, s_w = xp.stride()
    cols = xp.as_strided((xp.shape[-2], kw, c, n, wo), (s_h, dw * s_w, s_c, s_n, sw * s_w))
    cols = scratch("row_columns", cols.numel(), x).view(cols.shape).copy_(cols)
    cols = cols.view(xp.shape[-2], kw * c, n * wo)

    def row_blocks(needed: list[int], shift: int) -> Callable[[list[int]], Tensor]:
        left = _select_rows(cols, needed)
        right = _select_rows(cols, [u + shift for u in needed])
        gram = torch.bmm(left, right.transpose(1, 2)).view(len(needed), kw, c, kw, c)
        return lambda rows: _select_rows(gram, rows).sum(0).permute(1, 0, 3, 2)

    return row_blocks


def _column_shift_blocks(
    x: Tensor, module: nn.Conv2d, scratch: per_sample.Scratch = per_sample.fresh_scratch
) -> RowBlocks:
    """Row-pair blocks from one Gram per column shift (column stride and dilation 1).

    The input is laid out once as ``[H_pad, C, N, W + 2 e]`` (``e = k_w - 1`` zero columns on
    both sides of every image row, and ``e`` zero guard elements at both ends), so the rows of
    one input row, shifted by ``dj`` columns, are a plain strided view of the same storage: the
    products that reach into a neighbouring image row or the guards meet a zero. Kernel column
    ``j`` sees image columns ``[j - p_w, j - p_w + W_out)``; the Gram over all columns counts the
    ones outside that range too, so their per-column products are subtracted. The layout
    lives in ``scratch``'s ``"row_layout"`` temporary (zeroed first).
    """
    (_, kw), _, (ph, pw), _ = _conv_geometry(module)
    n, c, h, w = x.shape
    e = kw - 1
    m = n * (w + 2 * e)  # one channel's share of an input row
    hp = h + 2 * ph
    buf = scratch("row_layout", hp * c * m + 2 * e, x).zero_()
    rows4 = buf[e : e + hp * c * m].view(hp, c, n, w + 2 * e)
    rows4[ph : ph + h, :, :, e : e + w] = x.permute(2, 1, 0, 3)
    unseen = _unseen_columns(w, kw, pw)
    boundary = sorted({q for cols in unseen.values() for q in cols})

    # the boundary columns and their neighbours within e: [H_pad, nb, 2e + 1, C, N] (small)
    window = torch.stack([rows4[..., q : q + 2 * e + 1] for q in boundary or [0]], 1)
    window = window.permute(0, 1, 4, 2, 3).contiguous()

    def shifted(dj: int) -> Tensor:
        """``[H_pad, C, m]``: every input row shifted by ``dj`` columns (a view of ``buf``)."""
        return buf.as_strided((hp, c, m), (c * m, m, 1), e + dj)

    def row_blocks(needed: list[int], shift: int) -> Callable[[list[int]], Tensor]:
        shifts = list(range(0 if shift == 0 else -e, kw))  # shift 0: the rest by symmetry
        left = _select_rows(shifted(0), needed)
        right = [_select_rows(shifted(dj), [u + shift for u in needed]) for dj in shifts]
        full = [torch.bmm(left, r.transpose(1, 2)) for r in right]  # [R, C, C] per shift

        # products of the boundary columns alone: [R, nb, C, shifts, C]
        lb = _select_rows(window, needed)[:, :, e].reshape(-1, c, n)
        rb = _select_rows(window, [u + shift for u in needed])[:, :, e + shifts[0] :]
        rb = rb.reshape(-1, len(shifts) * c, n)
        edges = torch.bmm(lb, rb.transpose(1, 2)).view(len(needed), -1, c, len(shifts), c)
        del lb, rb

        def blocks_of(rows: list[int]) -> Tensor:
            sums = _select_rows(edges, rows).sum(0)  # [nb, C, shifts, C]
            block = x.new_empty(c, kw, c, kw)
            for k, dj in enumerate(shifts):
                total = _select_rows(full[k], rows).sum(0)
                for j in range(max(0, -dj), min(kw, kw - dj)):
                    value = total
                    for q in unseen[j]:
                        value = value - sums[boundary.index(q), :, k]
                    block[:, j, :, j + dj] = value
                    if shift == 0 and dj > 0:
                        block[:, j + dj, :, j] = value.t()
            return block

        return blocks_of

    return row_blocks


def _select_rows(t: Tensor, rows: list[int]) -> Tensor:
    """``t[rows]`` as a (strided) slice when ``rows`` is an arithmetic progression."""
    step = rows[1] - rows[0] if len(rows) > 1 else 1
    if step > 0 and all(b - a == step for a, b in zip(rows, rows[1:])):
        return t[rows[0] : rows[-1] + 1 : step]
    return t.index_select(0, torch.tensor(rows, device=t.device))


def use_structured_input_factor(x: Tensor, module: nn.Conv2d) -> bool:
    """Whether the row-shift algorithm is expected to beat the unfolded ``U U^T``.

    It needs ``k_h * rows`` instead of ``k_h^2 * H_out`` row-Gram units but runs smaller
    matmuls. Measured against the unfolded ``U U^T`` with its patch matrix in a reused
    temporary (2 CPU threads, N=128): it wins from 16 channels and 3 output rows on (3C3D's
    conv3, 96 channels on 6x6: 20 vs 26 ms; All-CNN-C's conv7, 192 on 8x8: 77 vs 89 ms; 64
    channels 5x5 on 7x7: 59 vs 110 ms) and ties below 16 channels (3 or 8) and on 2x2 outputs.
    """
    (kh, kw), (sh, _), (ph, _), (dh, _) = _conv_geometry(module)
    ho = (x.shape[-2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    return kh * kw > 1 and x.shape[1] >= 16 and ho >= 3
