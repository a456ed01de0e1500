"""The four first-order quantities of one ``Linear`` / ``Conv2d`` call, from input and output grad.

BackPACK 1.7.1 shapes and scaling (``g`` already carries the loss's 1/N, see
``shared/spec/extensions.md`` §1.1 and §2): with per-sample contributions ``b_n`` (= ``g_n / N``
for a mean loss),

* ``BatchGrad`` = ``b_n``, ``[N, *p.shape]``;
* ``BatchL2Grad`` = ``||b_n||²``, ``[N]``;
* ``SumGradSquared`` = ``sum_n b_n²``, ``p.shape``;
* ``Variance`` = ``SumGradSquared / N - (sum_n b_n / N)²``, ``p.shape``.

:func:`layer_quantities` also returns the parameter gradients ``sum_n b_n``, derived from the
per-sample terms whenever those are formed anyway, so the caller can skip autograd's own weight
gradient ("never compute the weight gradient twice").
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from extensions import per_sample
from extensions.errors import UnsupportedModuleError
from extensions.quantities import FIRST_ORDER

BATCH_GRAD, BATCH_L2, SUM_GRAD_SQUARED, VARIANCE = FIRST_ORDER

#: modules with parameters that have first-order rules (exact class, like BackPACK)
SUPPORTED_MODULES = (nn.Linear, nn.Conv2d)

#: ``empty(param, shape, like)``: where a layer's BatchGrad buffer comes from (``param`` is
#: "weight"; a session passes its :class:`~extensions.buffers.BufferPool`)
Allocator = Callable[[str, tuple[int, ...], Tensor], Tensor]


def fresh(param: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """Allocate a new buffer on every call (the default :data:`Allocator`)."""
    return per_sample.empty_large(shape, like)


def check_module(module: nn.Module, position: str, quantity: str) -> None:
    """Raise :class:`UnsupportedModuleError` unless ``module`` has a first-order rule.

    Args:
        module: a module that owns parameters.
        position: its qualified name in the model (for the message).
        quantity: the requested quantity (for the message).

    """
    kind = type(module)
    if kind not in SUPPORTED_MODULES:
        valid = ", ".join(c.__name__ for c in SUPPORTED_MODULES)
        raise UnsupportedModuleError(
            f"no first-order rule for {kind.__name__} (exact classes supported: {valid})",
            module=module,
            position=position,
            quantity=quantity,
        )
    if kind is nn.Conv2d and (module.groups != 1 or module.padding_mode != "zeros"):
        raise UnsupportedModuleError(
            "Conv2d is supported with groups=1 and padding_mode='zeros' only, got "
            f"groups={module.groups}, padding_mode={module.padding_mode!r}",
            module=module,
            position=position,
            quantity=quantity,
        )


@dataclass
class LayerResult:
    """Gradients and first-order quantities of one layer call (``None`` where not needed)."""

    grad_weight: Tensor | None = None
    grad_bias: Tensor | None = None
    #: quantity name -> {"weight" | "bias": value}
    values: dict[str, dict[str, Tensor]] = field(default_factory=dict)

    def put(self, quantity: str, param: str, value: Tensor) -> None:
        """Store one quantity's value for ``param`` ("weight" or "bias")."""
        self.values.setdefault(quantity, {})[param] = value


def _from_sum_and_squares(
    res: LayerResult,
    param: str,
    wanted: Collection[str],
    grad: Tensor,
    sum_sq: Tensor | None,
    n: int,
) -> None:
    """Store SumGradSquared and Variance from ``sum_n b_n`` and ``sum_n b_n²``."""
    if SUM_GRAD_SQUARED in wanted:
        res.put(SUM_GRAD_SQUARED, param, sum_sq)
    if VARIANCE in wanted:
        res.put(VARIANCE, param, sum_sq / n - (grad / n).square())


def _bias_quantities(res: LayerResult, per_sample_bias: Tensor, wanted: Collection[str]) -> None:
    """Gradient and quantities of a bias from its per-sample gradients ``[N, out]``."""
    n = per_sample_bias.shape[0]
    res.grad_bias = per_sample_bias.sum(0)
    if BATCH_GRAD in wanted:
        res.put(BATCH_GRAD, "bias", per_sample_bias)
    squares = per_sample_bias.square()
    if BATCH_L2 in wanted:
        res.put(BATCH_L2, "bias", squares.sum(1))
    if SUM_GRAD_SQUARED in wanted or VARIANCE in wanted:
        _from_sum_and_squares(res, "bias", wanted, res.grad_bias, squares.sum(0), n)


def linear_quantities(
    x: Tensor,
    g: Tensor,
    need_weight: bool,
    need_bias: bool,
    wanted: Collection[str],
    empty: Allocator = fresh,
) -> LayerResult:
    """First-order quantities and parameter gradients of ``nn.Linear``.

    Args:
        x: layer input ``[N, ..., in]``.
        g: gradient w.r.t. the layer output ``[N, ..., out]``.
        need_weight: whether the weight requires grad.
        need_bias: whether there is a bias requiring grad.
        wanted: the requested first-order quantity names.
        empty: allocates the BatchGrad buffer.

    """
    res = LayerResult()
    n = x.shape[0]
    if need_bias:
        _bias_quantities(res, per_sample.linear_bias(g), wanted)
    if not need_weight:
        return res
    if x.dim() == 2:
        res.grad_weight = g.T @ x
        if BATCH_GRAD in wanted:
            out = empty("weight", (n, g.shape[1], x.shape[1]), g)
            res.put(BATCH_GRAD, "weight", per_sample.linear_weight(x, g, out=out))
        if BATCH_L2 in wanted:
            res.put(BATCH_L2, "weight", per_sample.linear_weight_sq_norm(x, g))
        if SUM_GRAD_SQUARED in wanted or VARIANCE in wanted:
            sum_sq = per_sample.linear_weight_sum_sq(x, g)
            _from_sum_and_squares(res, "weight", wanted, res.grad_weight, sum_sq, n)
        return res
    per_w = per_sample.linear_weight(x, g)
    res.grad_weight = per_w.sum(0)
    if BATCH_GRAD in wanted:
        res.put(BATCH_GRAD, "weight", per_w)
    if BATCH_L2 in wanted:
        res.put(BATCH_L2, "weight", per_w.flatten(1).square().sum(1))
    if SUM_GRAD_SQUARED in wanted or VARIANCE in wanted:
        _from_sum_and_squares(res, "weight", wanted, res.grad_weight, per_w.square().sum(0), n)
    return res


def conv2d_quantities(
    module: nn.Conv2d,
    x: Tensor,
    g: Tensor,
    need_weight: bool,
    need_bias: bool,
    wanted: Collection[str],
    empty: Allocator = fresh,
    scratch: per_sample.Scratch = per_sample.fresh_scratch,
) -> LayerResult:
    """First-order quantities of ``nn.Conv2d`` (groups=1); the weight gradient only if derived.

    The per-sample weight gradients are formed in chunks of samples (bounded memory) when a
    quantity needs them; then ``grad_weight`` is their sum. If only ``BatchL2Grad`` is wanted and
    the Gram form is cheaper, ``grad_weight`` stays ``None`` (the caller lets autograd compute it).

    Args:
        module: the convolution.
        x: layer input ``[N, Cin, H, W]``.
        g: gradient w.r.t. the layer output ``[N, Cout, H_out, W_out]``.
        need_weight: whether the weight requires grad.
        need_bias: whether there is a bias requiring grad.
        wanted: the requested first-order quantity names.
        empty: allocates the BatchGrad buffer.
        scratch: gives the per-chunk temporaries (unfolded input, per-sample rows, squares).

    """
    res = LayerResult()
    n = x.shape[0]
    if need_bias:
        _bias_quantities(res, per_sample.conv2d_bias(g), wanted)
    if not need_weight:
        return res
    needs_rows = BATCH_GRAD in wanted or SUM_GRAD_SQUARED in wanted or VARIANCE in wanted
    if not needs_rows and per_sample.conv2d_gram_is_cheaper(module, g):
        res.put(BATCH_L2, "weight", per_sample.conv2d_weight_sq_norm(x, g, module))
        return res
    cout, k = module.out_channels, module.weight[0].numel()
    grad = g.new_zeros(cout, k)
    batch = empty("weight", (n, cout, k), g) if BATCH_GRAD in wanted else None
    norms = g.new_empty(n) if BATCH_L2 in wanted else None
    sum_sq = g.new_zeros(cout, k) if (SUM_GRAD_SQUARED in wanted or VARIANCE in wanted) else None
    out = None if batch is None else batch.unsqueeze(0)
    chunks = per_sample.conv2d_weight_chunks(x, g, module, out=out, scratch=scratch)
    for start, stop, block in chunks:
        rows = block[0]  # [n, Cout, K]: a slice of ``batch`` if that is wanted, else a temporary
        grad += rows.sum(0)
        if norms is not None or sum_sq is not None:
            if batch is None:
                squares = rows.square_()  # the temporary is ours to overwrite
            else:
                buf = scratch("squares", rows.numel(), rows).view_as(rows)
                squares = torch.square(rows, out=buf)
                del buf
            if norms is not None:
                norms[start:stop] = squares.sum((1, 2))
            if sum_sq is not None:
                sum_sq += squares.sum(0)
            del squares
        del block, rows  # the temporaries are reused by the next chunk only if nothing holds them
    shape = module.weight.shape
    res.grad_weight = grad.view(shape)
    if batch is not None:
        res.put(BATCH_GRAD, "weight", batch.view(n, *shape))
    if norms is not None:
        res.put(BATCH_L2, "weight", norms)
    if sum_sq is not None:
        _from_sum_and_squares(res, "weight", wanted, res.grad_weight, sum_sq.view(shape), n)
    return res


def layer_quantities(
    module: nn.Module,
    x: Tensor,
    g: Tensor,
    need_weight: bool,
    need_bias: bool,
    wanted: Collection[str],
    empty: Allocator = fresh,
    scratch: per_sample.Scratch = per_sample.fresh_scratch,
) -> LayerResult:
    """Dispatch on the (exact) module class; see :func:`linear_quantities`."""
    with torch.no_grad():
        if type(module) is nn.Linear:
            return linear_quantities(x, g, need_weight, need_bias, wanted, empty)
        return conv2d_quantities(module, x, g, need_weight, need_bias, wanted, empty, scratch)
