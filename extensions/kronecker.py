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


def linear_input_factor(x: Tensor) -> Tensor:
    """``x^T x / N`` for a 2-d input ``[N, in]``."""
    return x.t() @ x / x.shape[0]


def _conv_geometry(module: nn.Conv2d) -> tuple[tuple[int, int], ...]:
    return (
        tuple(module.kernel_size),
        tuple(module.stride),
        tuple(module.padding),
        tuple(module.dilation),
    )


def conv2d_unfold(x: Tensor, module: nn.Conv2d) -> Tensor:
    """Unfolded input patches ``[N, C_in k_h k_w, T]`` of a Conv2d."""
    kernel, stride, padding, dilation = _conv_geometry(module)
    return F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)


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
    per_sample = max(1, conv2d_unfold(x[:1], module).numel())
    step = max(1, min(n, max_elements // per_sample))
    a = x.new_zeros(k, k)
    for n0 in range(0, n, step):
        u = conv2d_unfold(x[n0 : n0 + step], module)  # [n, K, T]
        u = u.transpose(0, 1).reshape(k, -1)
        a.addmm_(u, u.t())
    return a / n


def conv2d_input_factor(x: Tensor, module: nn.Conv2d) -> Tensor:
    """``(1/N) sum_n sum_t u u^T`` over patches, computed from shifted per-row Gram matrices.

    Args:
        x: Layer input ``[N, C_in, H, W]``.
        module: The convolution (groups = 1, zero padding).

    Returns:
        ``A`` of shape ``[C_in k_h k_w, C_in k_h k_w]``.

    """
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = _conv_geometry(module)
    n, c = x.shape[:2]
    if kh * kw == 1:
        return conv2d_input_factor_unfold(x, module)
    xp = F.pad(x, (pw, pw, ph, ph)) if ph or pw else x
    hp, wp = xp.shape[-2:]
    ho = (hp - dh * (kh - 1) - 1) // sh + 1
    wo = (wp - dw * (kw - 1) - 1) // sw + 1
    # cols[j]: the input columns that kernel column j sees, laid out per padded row u: [Hp, C, N*Wo]
    cols = [
        xp[..., dw * j : dw * j + sw * (wo - 1) + 1 : sw].permute(2, 1, 0, 3).reshape(hp, c, n * wo)
        for j in range(kw)
    ]
    a6 = x.new_empty(c, kh, kw, c, kh, kw)
    last_row = sh * (ho - 1) + 1
    for di in range(kh):
        rows = hp - dh * di
        for j in range(kw):
            for j2 in range(kw):
                if di == 0 and j2 < j:
                    continue
                gram = torch.bmm(cols[j][:rows], cols[j2][dh * di : dh * di + rows].transpose(1, 2))
                for i in range(kh - di):
                    i2 = i + di
                    block = gram[dh * i : dh * i + last_row : sh].sum(0)
                    a6[:, i, j, :, i2, j2] = block
                    if (i2, j2) != (i, j):
                        a6[:, i2, j2, :, i, j] = block.t()
    return a6.reshape(c * kh * kw, c * kh * kw) / n
