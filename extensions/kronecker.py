"""Kronecker input factors ``A`` (shared by KFAC, KFLR and KFRA).

* Linear (2-d input ``x [N, in]``): ``A = x^T x / N``.
* Conv2d (groups = 1): ``A = (1/N) sum_n sum_t u_{n,t} u_{n,t}^T`` over the unfolded input patches
  ``u_{n,t} in R^{C_in k_h k_w}`` (index order ``(c, i, j)`` as ``F.unfold`` and the row-major
  flattened weight).

The convolution factor is the KFAC hot spot (``K = C_in k_h k_w`` up to 1728 on All-CNN-C).
:func:`conv2d_input_factor` exploits the patch structure instead of forming ``U U^T`` with the
unfolded ``U [K, N T]``: the block for kernel offsets ``(i, j), (i', j')`` only depends on the
row shift ``i' - i`` up to the range of rows summed, so per ``(i' - i, j, j')`` one batched matmul
gives per-row ``C x C`` Gram matrices whose strided row sums are all blocks with that shift. This
needs ``k_h k_w^2`` instead of ``k_h^2 k_w^2`` Gram products (3x fewer for 3x3 kernels).
:func:`conv2d_input_factor_unfold` is the direct definition (used as the test oracle).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from extensions import per_sample

#: rows per block of :func:`symmetric_gram` (measured on 2 CPU threads: K = 576..1728 runs
#: 1.3-1.7x faster than one ``u @ u.T``; smaller blocks lose more to matmul overhead)
GRAM_BLOCK_ROWS = 192
GRAM_MAX_BLOCKS = 6


def symmetric_gram(u: Tensor, out: Tensor | None = None) -> Tensor:
    """``u @ u.T`` (``[K, K]``) from the upper block triangle only, mirrored (a "syrk").

    Args:
        u: ``[K, M]``.
        out: if given, ``u @ u.T`` is added to it (``[K, K]``) and it is returned.

    """
    k = u.shape[0]
    blocks = min(GRAM_MAX_BLOCKS, max(1, k // GRAM_BLOCK_ROWS))
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


def _patch_matrix(x: Tensor, module: nn.Conv2d) -> Tensor:
    """Unfolded patches laid out as ``[C_in k_h k_w, N T]`` (one copy of a strided view)."""
    patches = per_sample.conv2d_patches(x, module)
    n, c, kh, kw, ho, wo = patches.shape
    return patches.permute(1, 2, 3, 0, 4, 5).reshape(c * kh * kw, n * ho * wo)


def conv2d_input_factor_unfold(x: Tensor, module: nn.Conv2d, max_elements: int = 2**26) -> Tensor:
    """Compute the definition ``(1/N) sum_n U_n U_n^T`` from unfolded patches, in chunks.

    Args:
        x: Layer input ``[N, C_in, H, W]``.
        module: The convolution.
        max_elements: Bound on the elements of one unfolded chunk.

    Returns:
        ``A`` of shape ``[K, K]``.

    """
    n = x.shape[0]
    k = x.shape[1] * module.kernel_size[0] * module.kernel_size[1]
    per_sample_elements = max(1, per_sample.conv2d_patches(x[:1], module).numel())
    step = max(1, min(n, max_elements // per_sample_elements))
    a = x.new_zeros(k, k)
    for n0 in range(0, n, step):
        u = _patch_matrix(x[n0 : n0 + step], module)  # [K, n T]
        symmetric_gram(u, out=a)
    return a / n


def conv2d_input_factor(x: Tensor, module: nn.Conv2d) -> Tensor:
    """``(1/N) sum_n sum_t u u^T`` over patches, from shifted per-row Gram matrices.

    Kernel-column shifts are stacked into one ``[k_w C, N W_out]`` matrix per padded input row;
    for every row shift ``di = i' - i`` one batched matmul over the needed rows gives all
    ``(j, j')`` blocks at once, and strided row sums give the blocks of every ``i``. Falls back to
    :func:`conv2d_input_factor_unfold` where that is cheaper (1x1 kernels, few channels, small
    images).

    Args:
        x: Layer input ``[N, C_in, H, W]``.
        module: The convolution (groups = 1, zero padding).

    Returns:
        ``A`` of shape ``[C_in k_h k_w, C_in k_h k_w]``.

    """
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = _conv_geometry(module)
    n, c = x.shape[:2]
    if not use_structured_input_factor(x, module):
        return conv2d_input_factor_unfold(x, module)
    xp = F.pad(x, (pw, pw, ph, ph)) if ph or pw else x
    hp, wp = xp.shape[-2:]
    ho = (hp - dh * (kh - 1) - 1) // sh + 1
    wo = (wp - dw * (kw - 1) - 1) // sw + 1
    # cols[u, (j, c), (n, b)] = xp[n, c, u, dw*j + sw*b]: what kernel column j sees in row u
    s_n, s_c, s_h, s_w = xp.stride()
    cols = xp.as_strided((hp, kw, c, n, wo), (s_h, dw * s_w, s_c, s_n, sw * s_w))
    cols = cols.reshape(hp, kw * c, n * wo)
    a6 = x.new_empty(c, kh, kw, c, kh, kw)
    for di in range(kh):
        starts = [dh * i for i in range(kh - di)]
        needed = sorted({u0 + sh * a for u0 in starts for a in range(ho)})
        where = {u: k for k, u in enumerate(needed)}
        left = _select_rows(cols, needed)
        right = _select_rows(cols, [u + dh * di for u in needed])
        gram = torch.bmm(left, right.transpose(1, 2))  # [R, kwC, kwC]
        del left, right
        gram = gram.view(len(needed), kw, c, kw, c)
        for i, u0 in enumerate(starts):
            block = _select_rows(gram, [where[u0 + sh * a] for a in range(ho)]).sum(0)
            block = block.permute(1, 0, 3, 2)  # [c, j, c', j']
            a6[:, i, :, :, i + di, :] = block
            if di > 0:
                a6[:, i + di, :, :, i, :] = block.permute(2, 3, 0, 1)
    return a6.reshape(c * kh * kw, c * kh * kw) / n


def _select_rows(t: Tensor, rows: list[int]) -> Tensor:
    """``t[rows]`` as a (strided) slice when ``rows`` is an arithmetic progression."""
    step = rows[1] - rows[0] if len(rows) > 1 else 1
    if step > 0 and all(b - a == step for a, b in zip(rows, rows[1:])):
        return t[rows[0] : rows[-1] + 1 : step]
    return t.index_select(0, torch.tensor(rows, device=t.device))


def use_structured_input_factor(x: Tensor, module: nn.Conv2d) -> bool:
    """Whether the row-shift algorithm is expected to beat the unfolded ``U U^T``.

    It needs ``k_h * rows`` instead of ``k_h^2 * H_out`` row-Gram units but runs smaller
    matmuls; measured on 3C3D/All-CNN-C layers it wins from 16 channels and 8 output rows on.
    """
    (kh, kw), (sh, _), (ph, _), (dh, _) = _conv_geometry(module)
    ho = (x.shape[-2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    return kh * kw > 1 and x.shape[1] >= 16 and ho >= 8
