"""Per-sample parameter gradients of ``Linear`` and ``Conv2d`` from layer inputs and output grads.

These are the hot loops of the first-order quantities (and of second-order ones that contract
backpropagated factors with layer inputs). Conventions:

* ``x`` is the layer input for ``N`` samples, ``g`` the gradient w.r.t. the layer output with
  ``M = V * N`` rows (``V >= 1`` stacked "columns", V-major: row ``m`` belongs to sample
  ``m % N``). First-order callers use ``V = 1``; second-order callers pass factor columns.
* Results keep the row index: ``linear_weight(x, g)`` is ``[M, out, in]``.
* Nothing is divided by N here; the loss's 1/N is already inside ``g``.

Example::

    >>> import torch
    >>> from torch import nn
    >>> conv = nn.Conv2d(2, 3, 3, stride=2, padding=1)
    >>> x = torch.randn(4, 2, 8, 8)
    >>> g = torch.randn(4, 3, 4, 4)
    >>> conv2d_weight(x, g, conv).shape
    torch.Size([4, 3, 2, 3, 3])
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from extensions import device_defaults

#: target number of elements of one chunk's unfolded input and of its output gradients (chunking
#: bounds peak memory and keeps the matmul operands cache-sized)
UNFOLD_CHUNK_ELEMENTS = device_defaults.CPU["UNFOLD_CHUNK_ELEMENTS"]  # 2**21
#: target number of elements of one chunk's per-sample weight gradients (the sums/squares taken
#: from them should not stream through main memory; measured on the 3C3D and All-CNN-C convs
#: with 1 and 10 rows per sample, 2-4 M elements per chunk are fastest)
ROWS_CHUNK_ELEMENTS = device_defaults.CPU["ROWS_CHUNK_ELEMENTS"]  # 2**22
#: up to this ``K = Cin kh kw`` a per-sample conv weight gradient ``[Cout, T] x [T, K]`` is formed
#: as ``[K, T] x [T, Cout]`` and copied into place: MKL's batched product with few (K) output
#: columns is slow (2 CPU threads, float32, GMAC/s plain / transposed incl. the copy, T = 784:
#: K = 25: 32 / 48, K = 75: 54 / 66, K = 150: 77 / 84, K = 288: 94 / 87; T = 144: K = 75: 59 / 63,
#: K = 150: 68 / 62). 3C3D's conv1 (K = 75) and All-CNN-C's (K = 27) take it.
TRANSPOSED_PRODUCT_MAX_K = device_defaults.CPU["TRANSPOSED_PRODUCT_MAX_K"]  # 127


#: buffers at least this large get transparent huge pages (CPU, Linux)
HUGE_PAGE_MIN_BYTES = 2**23
_HUGE_PAGE = 2**21
_MADV_HUGEPAGE = 14


@functools.cache
def _madvise():
    """``libc.madvise`` (or ``None`` where unavailable)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    fn = libc.madvise
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return fn


def empty_large(shape: tuple[int, ...], like: Tensor) -> Tensor:
    """``like.new_empty(shape)``; on CPU/Linux large buffers are advised to use huge pages.

    Large per-sample results are fresh ``mmap`` memory every step; with 4 KiB pages the page
    faults of their first write cost more than computing them (5x on a 300 MB BatchGrad buffer).
    ``madvise(MADV_HUGEPAGE)`` before the first touch is advisory and harmless elsewhere.
    """
    out = like.new_empty(shape)
    if out.device.type != "cpu" or out.numel() * out.element_size() < HUGE_PAGE_MIN_BYTES:
        return out
    madvise = _madvise()
    if madvise is not None:
        ptr = out.data_ptr()
        start = (ptr + _HUGE_PAGE - 1) & ~(_HUGE_PAGE - 1)
        stop = (ptr + out.numel() * out.element_size()) & ~(_HUGE_PAGE - 1)
        if stop > start:
            madvise(start, stop - start, _MADV_HUGEPAGE)
    return out


#: ``scratch(name, numel, like)``: a flat temporary of ``numel`` elements that the caller may
#: overwrite freely and drops before it asks for ``name`` again (a session passes
#: :meth:`extensions.buffers.BufferPool.scratch`, which reuses one buffer per name on CPU)
Scratch = Callable[[str, int, Tensor], Tensor]


def fresh_scratch(name: str, numel: int, like: Tensor) -> Tensor:
    """Allocate a new buffer on every call (the default :data:`Scratch`)."""
    return empty_large((numel,), like)


# ------------------------------------------------------------------------------------------------
# Linear
# ------------------------------------------------------------------------------------------------


def _rows_per_sample(x: Tensor, g: Tensor) -> int:
    """V, the number of gradient rows per sample (``g.shape[0] = V * x.shape[0]``)."""
    n, m = x.shape[0], g.shape[0]
    if m % n != 0:
        raise ValueError(f"gradient rows {m} are not a multiple of the batch size {n}")
    return m // n


def _flat3(x: Tensor) -> Tensor:
    """``[N, ..., F]`` -> ``[N, S, F]`` (``S = 1`` for 2-d inputs)."""
    return x.reshape(x.shape[0], -1, x.shape[-1])


def linear_weight(x: Tensor, g: Tensor, out: Tensor | None = None) -> Tensor:
    """Per-row weight gradients of ``Linear``: ``[M, out, in]`` from ``x`` and ``g``.

    ``x [N, ..., in]``, ``g [M, ..., out]``; middle dimensions are summed over, as autograd does.
    ``out`` (2-d inputs only: ``[M, out, in]``, contiguous) receives the result.
    """
    v = _rows_per_sample(x, g)
    if x.dim() == 2:
        if out is None:
            out = empty_large((g.shape[0], g.shape[1], x.shape[1]), g)
        gv = g.unflatten(0, (v, x.shape[0])).unsqueeze(3)  # [V, N, out, 1]
        torch.mul(gv, x.unsqueeze(1), out=out.view(v, x.shape[0], g.shape[1], x.shape[1]))
        return out
    g3 = _flat3(g).unflatten(0, (v, x.shape[0]))  # [V, N, S, out]
    return torch.matmul(g3.transpose(-1, -2), _flat3(x)).flatten(0, 1)


def linear_bias(g: Tensor) -> Tensor:
    """Per-row bias gradients of ``Linear``: ``g [M, ..., out]`` -> ``[M, out]``."""
    return g if g.dim() == 2 else _flat3(g).sum(1)


def linear_weight_sq_norm(x: Tensor, g: Tensor) -> Tensor:
    """Squared Frobenius norms ``||g_m x_mᵀ||²`` of per-row weight gradients, ``[M]``.

    2-d inputs use ``||x_n||² ||g_m||²`` (no ``[M, out, in]`` tensor); 3-d inputs a Gram form.
    """
    v = _rows_per_sample(x, g)
    if x.dim() == 2:
        return (g.square().sum(1).unflatten(0, (v, -1)) * x.square().sum(1)).flatten()
    x3, g3 = _flat3(x), _flat3(g).unflatten(0, (v, x.shape[0]))
    gram_x = torch.bmm(x3, x3.transpose(1, 2))  # [N, S, S]
    gram_g = torch.matmul(g3, g3.transpose(-1, -2))  # [V, N, S, S]
    return (gram_g * gram_x).sum((-1, -2)).flatten()


def linear_bias_sq_norm(g: Tensor) -> Tensor:
    """Squared norms of per-row bias gradients, ``[M]``."""
    return linear_bias(g).square().sum(1)


def linear_weight_sum_sq(x: Tensor, g: Tensor) -> Tensor:
    """``sum_m (g_m x_mᵀ)²`` (elementwise), ``[out, in]``; no per-row tensors for 2-d inputs."""
    v = _rows_per_sample(x, g)
    if x.dim() == 2:
        g2 = g.square().unflatten(0, (v, -1)).sum(0)  # [N, out]
        return g2.T @ x.square()
    return linear_weight(x, g).square().sum(0)


# ------------------------------------------------------------------------------------------------
# Conv2d
# ------------------------------------------------------------------------------------------------


def _conv_padding(module: nn.Conv2d) -> tuple[tuple[int, int, int, int] | None, tuple[int, int]]:
    """``(explicit F.pad amounts or None, unfold padding)`` for a zero-padded ``Conv2d``."""
    if module.padding_mode != "zeros":
        raise ValueError(f"only padding_mode='zeros' is supported, got {module.padding_mode!r}")
    if isinstance(module.padding, str):
        pad = tuple(module._reversed_padding_repeated_twice)
        return (pad if any(pad) else None), (0, 0)
    return None, tuple(module.padding)


def conv2d_patches(x: Tensor, module: nn.Conv2d) -> Tensor:
    """Strided view ``[N, Cin, kh, kw, H_out, W_out]`` of a ``Conv2d``'s (padded) input patches.

    No copy is made; reshape or permute it into the layout you need (:func:`conv2d_unfold`, the
    Kronecker input factors). One strided copy is several times faster than ``F.unfold``
    (``im2col``) on CPU.
    """
    explicit, (ph, pw) = _conv_padding(module)
    if explicit is not None:
        x = F.pad(x, explicit)
    elif ph or pw:
        x = F.pad(x, (pw, pw, ph, ph))
    n, c, h, w = x.shape
    (kh, kw), (dh, dw), (sh, sw) = module.kernel_size, module.dilation, module.stride
    ho = (h - dh * (kh - 1) - 1) // sh + 1
    wo = (w - dw * (kw - 1) - 1) // sw + 1
    s_n, s_c, s_h, s_w = x.stride()
    return x.as_strided(
        (n, c, kh, kw, ho, wo),
        (s_n, s_c, s_h * dh, s_w * dw, s_h * sh, s_w * sw),
        x.storage_offset(),
    )


def conv2d_unfold(x: Tensor, module: nn.Conv2d, buf: Tensor | None = None) -> Tensor:
    """Input patches of a ``Conv2d`` (groups=1): ``x [N, Cin, H, W]`` -> ``[N, Cin*kh*kw, T]``.

    ``T = H_out * W_out``; the patch index is ordered like ``weight.flatten(1)``. Same values as
    ``F.unfold``. With ``buf`` (flat, at least ``N*K*T`` elements) the patches are written into it.
    """
    patches = conv2d_patches(x, module)
    n, c, kh, kw, ho, wo = patches.shape
    if buf is None:
        return patches.reshape(n, c * kh * kw, ho * wo)
    out = buf[: patches.numel()].view(patches.shape).copy_(patches)
    return out.view(n, c * kh * kw, ho * wo)


def conv2d_chunk_size(x: Tensor, module: nn.Conv2d, g: Tensor, rows: int | None = None) -> int:
    """Return the samples per chunk (bounded by the unfold, output-gradient and result sizes).

    ``rows`` is the number of gradient rows per sample formed at once (default: all of ``g``'s).
    """
    kh, kw = module.kernel_size
    k = module.in_channels * kh * kw
    v = rows or g.shape[0] // x.shape[0]
    t = g.shape[-2] * g.shape[-1]
    unfold_elements = device_defaults.tuned(
        "UNFOLD_CHUNK_ELEMENTS", x.device, UNFOLD_CHUNK_ELEMENTS
    )
    rows_elements = device_defaults.tuned("ROWS_CHUNK_ELEMENTS", x.device, ROWS_CHUNK_ELEMENTS)
    by_unfold = unfold_elements // max(k * t, 1)
    by_grad = unfold_elements // max(v * module.out_channels * t, 1)
    by_rows = rows_elements // max(v * module.out_channels * k, 1)
    step = max(1, min(x.shape[0], by_unfold, by_grad, by_rows))
    return device_defaults.thread_balanced(step, x.device)


def conv2d_weight_chunks(
    x: Tensor,
    g: Tensor,
    module: nn.Conv2d,
    chunk_size: int | None = None,
    out: Tensor | None = None,
    scratch: Scratch | None = None,
) -> Iterator[tuple[int, int, Tensor]]:
    """Per-row weight gradients in chunks of samples: yields ``(start, stop, [V, n, Cout, K])``.

    ``start:stop`` indexes samples (the chunk covers rows ``v*N + start:stop`` for every v),
    ``K = Cin*kh*kw``. Peak extra memory is one chunk's unfolded input and result. With ``out``
    (``[V, N, Cout, K]``, contiguous) the blocks are written straight into it (for ``K <=``
    :data:`TRANSPOSED_PRODUCT_MAX_K` from a transposed ``"rows_t"`` temporary).
    With ``scratch``, each chunk's unfolded input goes into its ``"unfold"`` temporary and, without
    ``out``, each block into its ``"rows"`` temporary: a block is then valid only until the next
    one is yielded (square it in place if you like), and nothing is allocated per chunk.
    """
    n = x.shape[0]
    v = _rows_per_sample(x, g)
    gv = g.reshape(v, n, g.shape[1], -1)  # [V, N, Cout, T]
    step = chunk_size or conv2d_chunk_size(x, module, g)
    cout, k = g.shape[1], module.weight[0].numel()
    narrow = k <= device_defaults.tuned(
        "TRANSPOSED_PRODUCT_MAX_K", x.device, TRANSPOSED_PRODUCT_MAX_K
    )
    for start in range(0, n, step):
        stop = min(n, start + step)
        m = stop - start
        buf = None if scratch is None else scratch("unfold", m * k * gv.shape[-1], x)
        unfolded = conv2d_unfold(x[start:stop], module, buf)  # [n, K, T]
        del buf
        if out is not None:
            block = out[:, start:stop]
        elif scratch is not None:
            block = scratch("rows", v * m * cout * k, g).view(v, m, cout, k)
        else:
            block = g.new_empty(v, m, cout, k)
        for i in range(v):
            _conv_rows(gv[i, start:stop], unfolded, block[i], narrow, scratch)
        yield start, stop, block
        del block, unfolded  # drop the temporaries' views: the next chunk reuses them


def _conv_rows(
    g: Tensor, unfolded: Tensor, out: Tensor, narrow: bool, scratch: Scratch | None
) -> None:
    """``out [n, Cout, K] = g [n, Cout, T] @ unfolded [n, K, T]^T``.

    ``narrow`` (:data:`TRANSPOSED_PRODUCT_MAX_K`): form ``[K, T] x [T, Cout]`` in ``scratch``'s
    ``"rows_t"`` temporary, then copy it into ``out`` transposed.
    """
    if not narrow:
        torch.bmm(g, unfolded.transpose(1, 2), out=out)
        return
    n, cout, k = out.shape
    tmp = (scratch or fresh_scratch)("rows_t", n * k * cout, g).view(n, k, cout)
    out.copy_(torch.bmm(unfolded, g.transpose(1, 2), out=tmp).transpose(1, 2))


def conv2d_weight(x: Tensor, g: Tensor, module: nn.Conv2d, chunk_size: int | None = None) -> Tensor:
    """Per-row weight gradients of a ``Conv2d`` (groups=1): ``[M, *weight.shape]``.

    Args:
        x: layer input ``[N, Cin, H, W]``.
        g: gradient w.r.t. the layer output, ``[M, Cout, H_out, W_out]``, ``M = V * N``.
        module: the convolution (stride, padding, dilation are read from it).
        chunk_size: samples per chunk (default: from :data:`UNFOLD_CHUNK_ELEMENTS`).

    """
    n = x.shape[0]
    v = _rows_per_sample(x, g)
    out = empty_large((v, n, module.out_channels, module.weight[0].numel()), g)
    for _ in conv2d_weight_chunks(x, g, module, chunk_size, out=out):
        pass
    return out.view(v * n, *module.weight.shape)


def conv2d_bias(g: Tensor) -> Tensor:
    """Per-row bias gradients of a ``Conv2d``: ``g [M, Cout, H_out, W_out]`` -> ``[M, Cout]``."""
    return g.sum((2, 3))


def conv2d_bias_sq_norm(g: Tensor) -> Tensor:
    """Squared norms of per-row conv bias gradients, ``[M]``."""
    return conv2d_bias(g).square().sum(1)


def conv2d_gram_is_cheaper(module: nn.Conv2d, g: Tensor) -> bool:
    """Whether the Gram form (cost ~ T²(Cout + K)) beats per-row gradients (~ T Cout K)."""
    t = g.shape[-2] * g.shape[-1]
    k = module.weight[0].numel()
    return t * (module.out_channels + k) < module.out_channels * k


def conv2d_weight_sq_norm(
    x: Tensor, g: Tensor, module: nn.Conv2d, chunk_size: int | None = None
) -> Tensor:
    """Squared Frobenius norms of per-row conv weight gradients, ``[M]``.

    Per layer, the cheaper of the Gram form over output positions
    (``sum_{t,t'} (G_mᵀG_m)_{tt'} (U_nᵀU_n)_{tt'}``) and chunked per-row gradients; never holds
    more than one chunk of per-row tensors.
    """
    n = x.shape[0]
    v = _rows_per_sample(x, g)
    out = g.new_empty(v, n)
    if conv2d_gram_is_cheaper(module, g):
        gv = g.reshape(v, n, g.shape[1], -1)
        step = chunk_size or conv2d_chunk_size(x, module, g)
        for start in range(0, n, step):
            stop = min(n, start + step)
            u = conv2d_unfold(x[start:stop], module)  # [n, K, T]
            gram_u = torch.bmm(u.transpose(1, 2), u)  # [n, T, T]
            gc = gv[:, start:stop]
            gram_g = torch.matmul(gc.transpose(-1, -2), gc)  # [V, n, T, T]
            out[:, start:stop] = (gram_g * gram_u).sum((-1, -2))
    else:
        for start, stop, block in conv2d_weight_chunks(x, g, module, chunk_size):
            out[:, start:stop] = torch.linalg.vector_norm(block.flatten(2), dim=2).square()
    return out.flatten()


def conv2d_weight_sum_sq(
    x: Tensor, g: Tensor, module: nn.Conv2d, chunk_size: int | None = None
) -> Tensor:
    """``sum_m (per-row weight gradient)²`` (elementwise), ``weight.shape``, chunked.

    ``g`` is ``[M, Cout, H_out, W_out]`` (``M = V * N``, V-major) or ``[V, N, Cout, H_out, W_out]``
    with any strides (e.g. a cropped view: only one chunk is ever copied). One batched matmul per
    chunk forms several of a sample's rows at once (``[n, v*Cout, T] @ [n, T, K]``), so the
    unfolded input is neither copied nor broadcast per row; rows are chunked too, so a chunk's
    result stays within :data:`ROWS_CHUNK_ELEMENTS` also for many columns (100 classes).
    """
    n = x.shape[0]
    gv = g if g.dim() == 5 else g.unflatten(0, (_rows_per_sample(x, g), n))
    v = gv.shape[0]
    cout, k = module.out_channels, module.weight[0].numel()
    rows_elements = device_defaults.tuned("ROWS_CHUNK_ELEMENTS", x.device, ROWS_CHUNK_ELEMENTS)
    v_step = max(1, min(v, rows_elements // (cout * k)))
    acc = g.new_zeros(cout, k)
    step = chunk_size or conv2d_chunk_size(x, module, g, rows=v_step)
    for start in range(0, n, step):
        stop = min(n, start + step)
        unfolded = conv2d_unfold(x[start:stop], module).transpose(1, 2)  # [n, T, K]
        for v0 in range(0, v, v_step):
            v1 = min(v, v0 + v_step)
            gc = gv[v0:v1, start:stop].transpose(0, 1).reshape(stop - start, (v1 - v0) * cout, -1)
            rows = torch.bmm(gc, unfolded)  # [n, v*Cout, K]
            acc += rows.square_().view(-1, cout, k).sum(0)
    return acc.view_as(module.weight)
