"""Per-module derivative rules for the second-order backward pass: one table keyed by module type.

Every rule works on a stack of backpropagated columns ``mat`` of shape ``[V, N, *out_shape]``
(V columns, N samples) and the module's recorded input/output. A :class:`ModuleRule` holds

* ``jac_t``: ``[V, N, *out] -> [V, N, *in]``, the transposed Jacobian applied to every column
  (masks and gathers for ReLU/MaxPool/Dropout, never dense Jacobians). Elementwise rules
  multiply ``mat`` in place: callers pass columns they own and do not reuse;
* ``kfra``: the batch-averaged dense rule ``G_out [h_out, h_out] -> (1/N) sum_n J_n^T G_out J_n``;
* ``second_derivative``: for elementwise activations, ``d^2 out / d in^2`` (for DiagHessian's
  residual ``diag(sigma''(in) * grad_out)``); ``None`` where it vanishes.

Parameterised modules (Linear, Conv2d) additionally have entries in ``extensions.second_order``'s
extraction step; their ``jac_t`` here is the input Jacobian only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from extensions import device_defaults, per_sample
from extensions.trace import Record

JacT = Callable[[Record, Tensor], Tensor]
Kfra = Callable[[Record, Tensor], Tensor]
SecondDerivative = Callable[[Record], Tensor]


@dataclass(frozen=True)
class ModuleRule:
    """How one module type maps backpropagated columns (see module docstring)."""

    jac_t: JacT
    kfra: Kfra | None = None
    second_derivative: SecondDerivative | None = None
    #: for elementwise modules: ``d out / d in`` per sample (``jac_t`` multiplies by it in place)
    derivative: Callable[[Record], Tensor] | None = None
    #: recorded tensors ("input", "output") whose *values* the second-order pass reads for this
    #: module (rules, extraction, input factors); the others are kept as shapes only
    #: (:func:`~extensions.trace.shape_only`), so the forward keeps no extra activation alive
    reads: frozenset[str] = frozenset()


def scratch_zeros(rec: Record, shape: tuple[int, ...], like: Tensor, what: str) -> Tensor:
    """Return a zeroed ``shape`` buffer, from the session's pool (``rec.extra["_buffers"]``).

    Reusing last step's memory saves the page faults of a fresh large allocation on CPU (a
    max-pool backward of 10 columns on 3C3D is 257 MB); a buffer still referenced is never
    handed out twice (see :class:`~extensions.buffers.BufferPool`). Only for scratch that is
    large at few layers: the pool keeps one buffer per key alive between steps (with every conv
    backward's output pooled, All-CNN-C's DiagGGNMC read 929 MB peak RSS; 811 MB without).
    """
    pool = rec.extra.get("_buffers")
    if pool is None:
        return like.new_zeros(shape)
    return pool.empty((rec.position, what), shape, like).zero_()


def scratch_for(rec: Record) -> per_sample.Scratch:
    """Return the session pool's :meth:`~extensions.buffers.BufferPool.scratch` (or fresh ones).

    For temporaries that never leave the function asking (a patch matrix, rotated per-sample
    gradients): on CPU a fresh 30 MB temporary costs ~7,000 page faults (8 ms, 3C3D conv1's
    patch matrix), a reused one none.
    """
    pool = rec.extra.get("_buffers")
    return per_sample.fresh_scratch if pool is None else pool.scratch


def _merge(mat: Tensor) -> tuple[Tensor, int]:
    """``[V, N, *s] -> [V*N, *s]`` and V."""
    return mat.reshape(mat.shape[0] * mat.shape[1], *mat.shape[2:]), mat.shape[0]


def _split(mat: Tensor, v: int) -> Tensor:
    return mat.reshape(v, mat.shape[0] // v, *mat.shape[1:])


# ---------------------------------------------------------------------------------------------
# Elementwise: activations and dropout (Jacobian = diag(d), d per sample)
# ---------------------------------------------------------------------------------------------


def relu_derivative(rec: Record) -> Tensor:
    """``d out / d in`` of ReLU from the recorded output (``out > 0`` iff ``in > 0``; 0 at 0)."""
    return (rec.output > 0).to(rec.output.dtype)


def sigmoid_derivative(rec: Record) -> Tensor:
    """``s (1 - s)`` from the recorded output."""
    s = rec.output
    return s * (1 - s)


def tanh_derivative(rec: Record) -> Tensor:
    """``1 - t^2`` from the recorded output."""
    return 1 - rec.output**2


def sigmoid_second_derivative(rec: Record) -> Tensor:
    """``s (1 - s) (1 - 2 s)``."""
    s = rec.output
    return s * (1 - s) * (1 - 2 * s)


def tanh_second_derivative(rec: Record) -> Tensor:
    """``-2 t (1 - t^2)``."""
    t = rec.output
    return -2 * t * (1 - t**2)


def dropout_derivative(rec: Record) -> Tensor:
    """Return the dropout multiplier ``mask / (1 - p)`` (train mode) or ones (eval / p = 0).

    The mask is read from ``rec.extra["mask"]``: a boolean keep-mask or a float 0/1 keep-mask is
    scaled by ``1 / (1 - p)``; a float mask already holding ``0`` and ``1/(1-p)`` is used as is.
    """
    module = rec.module
    cached = rec.extra.get("_multiplier")
    if cached is not None:
        return cached
    if not module.training or module.p == 0:
        return torch.ones_like(rec.input)
    if module.p == 1:  # everything dropped (no 0/0 from the scale)
        return torch.zeros_like(rec.input)
    mask = rec.extra.get("mask")
    if mask is None:
        raise ValueError(
            f"Dropout at position {rec.position} ran in train mode but its mask was not recorded "
            "(Record.extra['mask'])"
        )
    if mask.dtype == torch.bool:
        return mask.to(rec.input.dtype) / (1 - module.p)
    scaled = bool((mask.max() > 1.0 + 1e-6).item()) if mask.numel() else False
    mask = mask.to(rec.input.dtype)
    return mask if scaled else mask / (1 - module.p)


def prepare(rec: Record, multipliers: bool = True) -> None:
    """Precompute per-record state once (activation/dropout derivative, max-pool argmax).

    Tensors stored there have the batch as leading dimension, so sample-chunk views slice them,
    and the rules do no host synchronisation per chunk. ``multipliers=False`` skips the
    activation/dropout derivatives (an activation-sized tensor each): worth it only when columns
    pass a record more than once (several streams or chunks); a single pass computes them on the
    fly.
    """
    rule = rule_for(rec.module)
    if rule is not None and rule.derivative is not None:
        if multipliers:
            rec.extra["_multiplier"] = rule.derivative(rec)
    elif isinstance(rec.module, nn.MaxPool2d):
        maxpool2d_indices(rec)


def _elementwise_rule(
    derivative: Callable[[Record], Tensor],
    second: SecondDerivative | None = None,
    apply: Callable[[Record, Tensor], Tensor | None] | None = None,
    reads: frozenset[str] = frozenset({"output"}),
) -> ModuleRule:
    """Build the rule multiplying by ``derivative``: the cached one (``prepare``), else computed.

    ``apply(rec, mat)`` (ReLU, Dropout) multiplies ``mat`` in place without forming the float
    derivative (a fresh, page-faulted activation-sized temporary on CPU when columns pass once);
    it may return ``None`` to fall back to ``derivative``.
    """

    def jac_t(rec: Record, mat: Tensor) -> Tensor:
        # in place: the engine owns every propagated ``mat`` (see ``prepare`` for the cache)
        cached = rec.extra.get("_multiplier")
        if cached is not None:
            return mat.mul_(cached)
        done = apply(rec, mat) if apply is not None else None
        return mat.mul_(derivative(rec)) if done is None else done

    def kfra(rec: Record, g: Tensor) -> Tensor:
        d = derivative(rec).flatten(1)  # [N, h]
        return g * (d.t() @ d) / d.shape[0]

    return ModuleRule(
        jac_t=jac_t, kfra=kfra, second_derivative=second, derivative=derivative, reads=reads
    )


# ---------------------------------------------------------------------------------------------
# Linear maps independent of the sample: Linear (input part), Conv2d, ZeroPad2d, pools, Flatten
# ---------------------------------------------------------------------------------------------


def linear_jac_t(rec: Record, mat: Tensor) -> Tensor:
    """``mat @ W`` (works for any number of leading dimensions)."""
    return mat @ rec.module.weight.detach()


def linear_kfra(rec: Record, g: Tensor) -> Tensor:
    """``W^T G W``."""
    w = rec.module.weight.detach()
    return w.t() @ g @ w


#: output elements per transposed-convolution call in :func:`conv2d_jac_t`: chunking the
#: columns bounds the kernel's im2col-sized scratch (2-3x the output unchunked) and runs faster
#: on CPU (All-CNN-C, 200 columns: 0.29 -> 0.15 s, 239 -> 80 MB)
JAC_T_CHUNK_ELEMENTS = device_defaults.CPU["JAC_T_CHUNK_ELEMENTS"]  # 2**21


def conv2d_jac_t(rec: Record, mat: Tensor) -> Tensor:
    """Transposed convolution of every column (``F.conv_transpose2d``), in chunks of columns."""
    m = rec.module
    flat, v = _merge(mat)  # a view also for a cropped ``mat`` (only the last dims are cut)
    out = flat.new_empty(flat.shape[0], *rec.input.shape[1:])
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = m.kernel_size, m.stride, m.padding, m.dilation
    h_out, w_out = flat.shape[-2:]
    output_padding = (
        out.shape[-2] - ((h_out - 1) * sh - 2 * ph + dh * (kh - 1) + 1),
        out.shape[-1] - ((w_out - 1) * sw - 2 * pw + dw * (kw - 1) + 1),
    )
    weight = m.weight.detach()
    elements = device_defaults.tuned("JAC_T_CHUNK_ELEMENTS", flat.device, JAC_T_CHUNK_ELEMENTS)
    rows = device_defaults.thread_balanced(max(1, elements // max(1, out[0].numel())), out.device)
    for start in range(0, flat.shape[0], rows):
        out[start : start + rows] = F.conv_transpose2d(
            flat[start : start + rows],
            weight,
            None,
            m.stride,
            m.padding,
            output_padding,
            1,
            m.dilation,
        )
    return _split(out, v)


def zeropad2d_jac_t(rec: Record, mat: Tensor) -> Tensor:
    """Crop the padded border (negative padding), into a contiguous tensor.

    The cropped view itself would cost more downstream than this copy: an in-place ReLU
    backward on it runs 4x slower than copy plus ReLU (3C3D, 10 MB: 7.6 vs 1.7 ms on 2 CPU
    threads), and every later ``flatten`` copies it anyway.
    """
    left, right, top, bottom = rec.module.padding
    h, w = mat.shape[-2:]
    return mat[..., top : h - bottom, left : w - right].contiguous()


def maxpool2d_with_indices(module: nn.MaxPool2d, x: Tensor) -> tuple[Tensor, Tensor]:
    """``module(x)`` and its flat argmax indices ``[N, C, Ho*Wo]`` (as autograd's backward uses)."""
    out, idx = F.max_pool2d(
        x,
        module.kernel_size,
        module.stride,
        module.padding,
        module.dilation,
        ceil_mode=module.ceil_mode,
        return_indices=True,
    )
    return out, idx.flatten(2)


def maxpool2d_indices(rec: Record) -> Tensor:
    """Flat argmax indices ``[N, C, Ho*Wo]`` into each ``H*W`` input channel (recomputed)."""
    cached = rec.extra.get("_maxpool_indices")
    if cached is not None:
        return cached
    _, idx = maxpool2d_with_indices(rec.module, rec.input)
    rec.extra["_maxpool_indices"] = idx
    return idx


def maxpool2d_jac_t(rec: Record, mat: Tensor) -> Tensor:
    """Scatter-add every column onto the argmax positions (handles overlapping windows)."""
    idx = maxpool2d_indices(rec)  # [N, C, T]
    v, n, c = mat.shape[:3]
    h, w = rec.input.shape[-2:]
    src = mat.reshape(v, n, c, -1)
    out = scratch_zeros(rec, (v, n, c, h * w), mat, "maxpool2d_jac_t")
    out.scatter_add_(3, idx.unsqueeze(0).expand(v, -1, -1, -1), src)
    return out.reshape(v, n, c, h, w)


def avgpool2d_jac_t(rec: Record, mat: Tensor) -> Tensor:
    """PyTorch's avg-pool backward applied to every column."""
    m = rec.module
    flat, v = _merge(mat)
    shape = (flat.shape[0], *rec.input.shape[1:])
    out = torch.ops.aten.avg_pool2d_backward(
        flat,
        flat.new_zeros(()).expand(shape),
        _pair(m.kernel_size),
        _pair(m.stride if m.stride is not None else m.kernel_size),
        _pair(m.padding),
        m.ceil_mode,
        m.count_include_pad,
        m.divisor_override,
    )
    return _split(out, v)


def adaptive_avgpool2d_jac_t(rec: Record, mat: Tensor) -> Tensor:
    """PyTorch's adaptive-avg-pool backward applied to every column."""
    flat, v = _merge(mat)
    shape = (flat.shape[0], *rec.input.shape[1:])
    out = torch.ops.aten._adaptive_avg_pool2d_backward(
        flat.contiguous(), flat.new_zeros(()).expand(shape)
    )
    return _split(out, v)


def flatten_jac_t(rec: Record, mat: Tensor) -> Tensor:
    """Reshape every column to the input shape."""
    return mat.reshape(mat.shape[0], *rec.input.shape)


def _pair(x: int | tuple[int, ...]) -> list[int]:
    return list(x) if isinstance(x, tuple | list) else [x, x]


def sample_independent_kfra(jac_t: JacT) -> Kfra:
    """KFRA rule ``J^T G J`` for a map whose Jacobian J does not depend on the sample.

    The columns of G are pushed through ``jac_t`` twice (rows, then columns), using one sample's
    shapes.
    """

    def kfra(rec: Record, g: Tensor) -> Tensor:
        one = Record(rec.name, rec.position, rec.module, rec.input[:1], rec.output[:1], {})
        h_out = g.shape[0]
        gt = jac_t(one, g.reshape(h_out, 1, *rec.output.shape[1:]))  # [h_out, 1, *in]
        gt = gt.reshape(h_out, -1).t().contiguous()  # [h_in, h_out] = (J^T G)^T... symmetric G
        out = jac_t(one, gt.reshape(gt.shape[0], 1, *rec.output.shape[1:]))
        return out.reshape(gt.shape[0], -1)

    return kfra


def maxpool2d_kfra(rec: Record, g: Tensor) -> Tensor:
    """``(1/N) sum_n J_n^T G J_n``: scatter G's rows and columns onto each sample's argmax."""
    idx = maxpool2d_indices(rec)  # [N, C, T]
    n, c, t = idx.shape
    h_in = rec.input[0].numel()
    hw = rec.input.shape[-2] * rec.input.shape[-1]
    offsets = (torch.arange(c, device=idx.device) * hw).view(1, c, 1)
    flat = (idx + offsets).reshape(n, c * t)  # output unit -> flat input unit, per sample
    out = g.new_zeros(h_in, h_in)
    for i in range(n):
        rows = g.new_zeros(h_in, g.shape[1]).index_add_(0, flat[i], g)
        out.index_add_(1, flat[i], rows)
    return out / n


def flatten_kfra(rec: Record, g: Tensor) -> Tensor:
    """Flatten is the identity on the flattened representation."""
    return g


def _identity_jac_t(rec: Record, mat: Tensor) -> Tensor:
    return mat


def relu_apply(rec: Record, mat: Tensor) -> Tensor:
    """Zero ``mat`` where the ReLU output is 0, in place: autograd's own ReLU backward kernel.

    ``mat * (out > 0)`` with a boolean mask runs about 10x slower on CPU (a float copy of the mask
    per call).
    """
    out = rec.output.expand_as(mat)
    return torch.ops.aten.threshold_backward.grad_input(mat, out, 0, grad_input=mat)


def dropout_apply(rec: Record, mat: Tensor) -> Tensor | None:
    """``mat * keep / (1 - p)`` in place, in train mode with a recorded boolean mask (else None).

    In eval mode (or ``p = 0``) dropout is the identity: ``mat`` is returned as it is; with
    ``p = 1`` its Jacobian is zero.
    """
    module, mask = rec.module, rec.extra.get("mask")
    if not module.training or module.p == 0:
        return mat
    if module.p == 1:
        return mat.zero_()
    if mask is not None and mask.dtype == torch.bool:
        return mat.mul_(mask).mul_(1 / (1 - module.p))
    return None


_RELU = _elementwise_rule(relu_derivative, apply=relu_apply)
_SIGMOID = _elementwise_rule(sigmoid_derivative, sigmoid_second_derivative)
_TANH = _elementwise_rule(tanh_derivative, tanh_second_derivative)
_DROPOUT = _elementwise_rule(dropout_derivative, apply=dropout_apply, reads=frozenset())

_INPUT = frozenset({"input"})  # Linear/Conv2d: extraction and input factors; MaxPool2d: argmax

#: The single dispatch table (exact class, like BackPACK).
RULES: dict[type[nn.Module], ModuleRule] = {
    nn.Linear: ModuleRule(jac_t=linear_jac_t, kfra=linear_kfra, reads=_INPUT),
    nn.Conv2d: ModuleRule(
        jac_t=conv2d_jac_t, kfra=sample_independent_kfra(conv2d_jac_t), reads=_INPUT
    ),
    nn.ZeroPad2d: ModuleRule(jac_t=zeropad2d_jac_t, kfra=sample_independent_kfra(zeropad2d_jac_t)),
    nn.MaxPool2d: ModuleRule(jac_t=maxpool2d_jac_t, kfra=maxpool2d_kfra, reads=_INPUT),
    nn.AvgPool2d: ModuleRule(jac_t=avgpool2d_jac_t, kfra=sample_independent_kfra(avgpool2d_jac_t)),
    nn.AdaptiveAvgPool2d: ModuleRule(
        jac_t=adaptive_avgpool2d_jac_t, kfra=sample_independent_kfra(adaptive_avgpool2d_jac_t)
    ),
    nn.Flatten: ModuleRule(jac_t=flatten_jac_t, kfra=flatten_kfra),
    nn.Dropout: _DROPOUT,
    nn.ReLU: _RELU,
    nn.Sigmoid: _SIGMOID,
    nn.Tanh: _TANH,
    nn.Identity: ModuleRule(jac_t=_identity_jac_t, kfra=flatten_kfra),
}


def rule_for(module: nn.Module) -> ModuleRule | None:
    """Return the rule for ``module``'s exact class, or ``None``."""
    return RULES.get(type(module))
