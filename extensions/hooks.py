"""Recording and dispatch machinery: what :func:`extensions.collect` installs on a model.

A :class:`Session` validates the model and loss before anything runs, then (``attach``)

* routes every ``Linear`` / ``Conv2d`` through a custom ``autograd.Function`` (instance-level
  ``forward`` override) whose backward computes the input gradient with autograd's own kernel and
  the first-order quantities plus the weight/bias gradients from per-sample terms, so the weight
  gradient is never computed twice; ``.grad`` is accumulated by autograd exactly as usual;
* for second-order quantities, records a :class:`~extensions.trace.Trace` with forward hooks
  (leaf modules in forward order, detached input/output, the exact dropout mask) and the loss
  call, and runs ``extensions.second_order.compute_second_order`` at the end of the same
  ``loss.backward()`` (``queue_callback`` from the first backward hook);
* detects misuse: a parameterised module called twice before the loss, a loss whose input is
  not the model output.

``detach`` removes every hook and override; the model is then exactly as before.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.profiler import record_function

from extensions import derivatives, first_order
from extensions import second_order as _second_order
from extensions.buffers import pool_for
from extensions.errors import ExtensionError, MemoryBudgetError, UnsupportedModuleError
from extensions.quantities import Quantity, resolve
from extensions.trace import LossRecord, Record, Trace, shape_only

#: loss modules with rules (exact classes) and their supported reductions
SUPPORTED_LOSSES = (nn.CrossEntropyLoss, nn.MSELoss)
SUPPORTED_REDUCTIONS = ("mean", "sum")


def resolve_all(quantities: Sequence[str | Quantity | type]) -> list[Quantity]:
    """Resolve names/objects to configured quantities; one configuration per name."""
    resolved: dict[str, Quantity] = {}
    for item in quantities:
        q = resolve(item)
        if q.name in resolved and resolved[q.name] != q:
            raise ValueError(
                f"quantity {q.name} requested twice with different settings: "
                f"{resolved[q.name]} and {q}; results are keyed by name"
            )
        resolved[q.name] = q
    return list(resolved.values())


def _is_leaf(module: nn.Module) -> bool:
    return next(module.children(), None) is None


class Session:
    """One ``collect`` context: validation, hooks, and the results being filled.

    Args:
        model: the network (any ``nn.Module``; leaf modules are dispatched on exact class).
        loss_fn: ``nn.CrossEntropyLoss`` or ``nn.MSELoss`` with reduction "mean" or "sum".
        quantities: names or configured quantity objects.
        memory_budget: bytes that quantity buffers may use (BatchGrad; passed to second order).

    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: nn.Module,
        quantities: Sequence[str | Quantity | type],
        memory_budget: int,
    ):
        self.model = model
        self.loss_fn = loss_fn
        self.quantities = resolve_all(quantities)
        self.first = [q.name for q in self.quantities if q.name in first_order.FIRST_ORDER]
        self.second = [q for q in self.quantities if q.is_second_order]
        self.memory_budget = memory_budget
        self.results: dict[str, dict[str, Any]] = {q.name: {} for q in self.quantities}
        self.param_names = {id(p): n for n, p in model.named_parameters()}
        self.param_order = list(self.param_names.values())
        self.module_names = {id(m): n for n, m in model.named_modules()}
        self.trace = Trace(param_names=dict(self.param_names))
        self._handles: list[Any] = []
        self._overridden: list[nn.Module] = []
        self._calls: dict[int, int] = {}
        self._pending_extra: dict[int, dict[str, Any]] = {}
        self._last_output: Tensor | None = None
        self._finish_queued = False
        self._batch_bytes = 0
        self.buffers = pool_for(model)  # outlives the context (weakly keyed by the model)
        self._validate()

    # -- validation ------------------------------------------------------------------------------

    @property
    def _all_names(self) -> str:
        return ", ".join(q.name for q in self.quantities)

    def _validate(self) -> None:
        """Raise before running for everything detectable statically."""
        quantity = self._all_names
        loss = self.loss_fn
        if type(loss) not in SUPPORTED_LOSSES or loss.reduction not in SUPPORTED_REDUCTIONS:
            valid = ", ".join(c.__name__ for c in SUPPORTED_LOSSES)
            raise UnsupportedModuleError(
                f"unsupported loss {type(loss).__name__}(reduction="
                f"{getattr(loss, 'reduction', None)!r}); supported: {valid} with reduction "
                f"{' or '.join(SUPPORTED_REDUCTIONS)}",
                module=loss,
                position="loss",
                quantity=quantity,
            )
        owner: dict[int, str] = {}
        for name, module in self.model.named_modules(remove_duplicate=False):
            if getattr(module, "inplace", False):
                raise UnsupportedModuleError(
                    "in-place modules break backward hooks and recorded inputs; "
                    "construct it with inplace=False",
                    module=module,
                    position=name,
                    quantity=quantity,
                )
            for p in module.parameters(recurse=False):
                if id(p) in owner and owner[id(p)] != name:
                    raise ExtensionError(
                        f"parameter used twice in one forward: shared by {owner[id(p)]!r} and "
                        f"{name!r}; individual quantities need each parameter used once",
                        module=module,
                        position=name,
                        quantity=quantity,
                    )
                owner[id(p)] = name
            if self.first and any(p.requires_grad for p in module.parameters(recurse=False)):
                first_order.check_module(module, name, ", ".join(self.first))
        if self.second:
            _second_order.check_supported(self.model, self.second)

    # -- attach / detach -------------------------------------------------------------------------

    def attach(self) -> None:
        """Install hooks and overrides (undone by :meth:`detach`)."""
        try:
            self._attach()
        except BaseException:
            self.detach()
            raise

    def _attach(self) -> None:
        hook = self._handles.append
        hook(self.model.register_forward_pre_hook(self._on_model_start))
        hook(self.model.register_forward_hook(self._on_model_end))
        hook(self.loss_fn.register_forward_hook(self._on_loss))
        for name, module in self.model.named_modules():
            params = [p for p in module.parameters(recurse=False) if p.requires_grad]
            if params:
                hook(module.register_forward_pre_hook(self._count_call))
            if self.first and params:
                self._override(module, _FORWARDS[type(module)])
            if self.second and _is_leaf(module):
                if isinstance(module, nn.Dropout):
                    self._override(module, _dropout_forward)
                elif type(module) is nn.MaxPool2d and not module.return_indices:
                    self._override(module, _maxpool_forward)
                hook(module.register_forward_hook(functools.partial(self._record, name)))

    def _override(self, module: nn.Module, forward: Any) -> None:
        module.forward = functools.partial(forward, self, module)
        self._overridden.append(module)

    def detach(self) -> None:
        """Remove all hooks and overrides; drop recorded tensors."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for module in self._overridden:
            module.__dict__.pop("forward", None)
        self._overridden.clear()
        self.trace.records = []
        self.trace.loss = None
        self._pending_extra.clear()
        self._last_output = None

    # -- forward-time hooks ----------------------------------------------------------------------

    def _position(self, module: nn.Module) -> str:
        return self.module_names.get(id(module), "?")

    def _on_model_start(self, module: nn.Module, args: Any) -> None:
        if torch.is_grad_enabled():
            self.trace.records = []
            self.trace.loss = None
            self._finish_queued = False  # in case a failed backward never ran the callback
            self._batch_bytes = 0

    def _on_model_end(self, module: nn.Module, args: Any, output: Any) -> None:
        if torch.is_grad_enabled():
            self._last_output = output

    def _count_call(self, module: nn.Module, args: Any) -> None:
        if not torch.is_grad_enabled():
            return
        count = self._calls.get(id(module), 0) + 1
        self._calls[id(module)] = count
        if count > 1:
            raise ExtensionError(
                "parameter used twice in one forward: this module was called again before the "
                "loss; individual quantities need each parameter used once per loss",
                module=module,
                position=self._position(module),
                quantity=self._all_names,
            )

    def _record(self, name: str, module: nn.Module, args: Any, output: Any) -> None:
        if not torch.is_grad_enabled():
            return
        extra = self._pending_extra.pop(id(module), {})
        rule = derivatives.rule_for(module)
        reads = rule.reads if rule is not None else ("input", "output")

        def keep(t: Tensor, what: str) -> Tensor:
            return t.detach() if what in reads else shape_only(t)

        self.trace.records.append(
            Record(
                name=name,
                position=len(self.trace.records),
                module=module,
                input=keep(args[0], "input"),
                output=keep(output, "output"),
                extra=extra,
            )
        )

    def _on_loss(self, module: nn.Module, args: Any, output: Tensor) -> None:
        if not torch.is_grad_enabled():
            return
        prediction, target = args[0], args[1]
        if self._last_output is None or prediction is not self._last_output:
            raise ExtensionError(
                "the loss input is not the model output (call loss_fn(model(x), y) directly; "
                "transform the output inside the model)",
                module=module,
                position="loss",
                quantity=self._all_names,
            )
        self._last_output = None
        self._calls.clear()
        if self.second:
            self.trace.loss = LossRecord(module=module, input=prediction.detach(), target=target)
        if output.requires_grad:
            output.register_hook(self._on_loss_grad)

    # -- backward-time ---------------------------------------------------------------------------

    def _on_loss_grad(self, grad: Tensor) -> None:
        self.queue_finish()

    def queue_finish(self) -> None:
        """At the start of a backward pass: drop the last results, queue :meth:`finish`.

        Dropping them first lets :attr:`buffers` reuse a BatchGrad buffer that nobody else holds.
        """
        if not self._finish_queued:
            self._finish_queued = True
            for values in self.results.values():
                values.clear()
            torch.autograd.Variable._execution_engine.queue_callback(self.finish)

    def allocator(self, module: nn.Module) -> first_order.Allocator:
        """BatchGrad buffers of ``module`` from :attr:`buffers` (reused across steps, contexts)."""
        key = self.module_names.get(id(module), id(module))
        return lambda param, shape, like: self.buffers.empty((key, param), shape, like)

    def store(self, module: nn.Module, res: first_order.LayerResult) -> None:
        """Put a layer's first-order values into the results under parameter names."""
        for quantity, values in res.values.items():
            for attr, value in values.items():
                self.results[quantity][self.param_names[id(getattr(module, attr))]] = value

    def reserve_batch(self, module: nn.Module, nbytes: int) -> None:
        """Account BatchGrad memory; raise before allocating beyond the budget."""
        self._batch_bytes += nbytes
        if self._batch_bytes > self.memory_budget:
            raise MemoryBudgetError(
                f"BatchGrad needs {self._batch_bytes / 2**20:.0f} MiB so far, over the "
                f"memory budget of {self.memory_budget / 2**20:.0f} MiB",
                module=module,
                position=self._position(module),
                quantity=first_order.BATCH_GRAD,
            )

    def finish(self) -> None:
        """End of backward: second-order quantities, then results in parameter order."""
        self._finish_queued = False
        self._batch_bytes = 0
        self._calls.clear()
        try:
            if self.second:
                if self.trace.loss is None:
                    raise ExtensionError(
                        "second-order quantities need the loss computed by loss_fn inside the "
                        "context",
                        module=self.loss_fn,
                        position="loss",
                        quantity=", ".join(q.name for q in self.second),
                    )
                with record_function("extensions::second_order"):
                    computed = _second_order.compute_second_order(
                        self.trace, self.second, self.memory_budget, self.buffers
                    )
                for quantity, values in computed.items():
                    self.results.setdefault(quantity, {}).update(values)
        finally:
            self.trace.records = []
            self.trace.loss = None
        for values in self.results.values():
            ordered = {n: values[n] for n in self.param_order if n in values}
            values.clear()
            values.update(ordered)


# ------------------------------------------------------------------------------------------------
# forward overrides
# ------------------------------------------------------------------------------------------------


def _batch_bytes(session: Session, module: nn.Module, x: Tensor, ctx: Any) -> None:
    if first_order.BATCH_GRAD in session.first:
        numel = sum(
            p.numel()
            for p, need in ((module.weight, ctx.needs_input_grad[1]), (module.bias, True))
            if p is not None and need and p.requires_grad
        )
        session.reserve_batch(module, x.shape[0] * numel * x.element_size())


class _FirstOrder(torch.autograd.Function):
    """``F.linear`` / ``F.conv2d`` (groups=1) whose backward also yields first-order quantities.

    The weight gradient is the sum of the per-sample terms when a quantity forms them; otherwise,
    and for the input gradient, autograd's own kernels run.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, session, module):
        ctx.save_for_backward(x, weight)
        ctx.session, ctx.module = session, module
        ctx.has_bias = bias is not None
        if isinstance(module, nn.Conv2d):
            return F.conv2d(x, weight, bias, module.stride, module.padding, module.dilation)
        return F.linear(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: Tensor):
        x, weight = ctx.saved_tensors
        session, module = ctx.session, ctx.module
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        session.queue_finish()
        _batch_bytes(session, module, x, ctx)
        with record_function(f"extensions::first_order::{type(module).__name__}"):
            res = first_order.layer_quantities(
                module,
                x,
                g,
                need_w,
                need_b and ctx.has_bias,
                session.first,
                session.allocator(module),
                session.buffers.scratch,
            )
        session.store(module, res)
        autograd_weight = need_w and res.grad_weight is None
        backward = _conv2d_backward if isinstance(module, nn.Conv2d) else _linear_backward
        grad_x, grad_w = backward(module, x, weight, g, need_x, autograd_weight)
        return grad_x, (grad_w if autograd_weight else res.grad_weight), res.grad_bias, None, None


def _linear_backward(
    module: nn.Linear, x: Tensor, weight: Tensor, g: Tensor, need_x: bool, need_w: bool
) -> tuple[Tensor | None, Tensor | None]:
    """Input and/or weight gradient of a linear layer (no bias); any leading dimensions."""
    grad_x = g @ weight if need_x else None
    grad_w = g.flatten(0, -2).T @ x.flatten(0, -2) if need_w else None
    return grad_x, grad_w


def _conv2d_backward(
    module: nn.Conv2d, x: Tensor, weight: Tensor, g: Tensor, need_x: bool, need_w: bool
) -> tuple[Tensor | None, Tensor | None]:
    """Input and/or weight gradient of a conv with autograd's own kernel (no bias)."""
    if not (need_x or need_w):
        return None, None
    if isinstance(module.padding, str):  # 'same'/'valid': let autograd resolve the padding
        with torch.enable_grad():
            xx = x.detach().requires_grad_(need_x)
            ww = weight.detach().requires_grad_(need_w)
            out = F.conv2d(xx, ww, None, module.stride, module.padding, module.dilation)
            inputs = [t for t, need in ((xx, need_x), (ww, need_w)) if need]
            grads = iter(torch.autograd.grad(out, inputs, g))
        return (next(grads) if need_x else None), (next(grads) if need_w else None)
    grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
        g,
        x,
        weight,
        None,
        list(module.stride),
        list(module.padding),
        list(module.dilation),
        False,
        [0, 0],
        1,
        [need_x, need_w, False],
    )
    return grad_x, grad_w


def _first_order_forward(session: Session, module: nn.Linear | nn.Conv2d, x: Tensor) -> Tensor:
    return _FirstOrder.apply(x, module.weight, module.bias, session, module)


def _dropout_forward(session: Session, module: nn.Dropout, x: Tensor) -> Tensor:
    """``nn.Dropout.forward`` that also keeps the mask; draws exactly like ``F.dropout``."""
    if not module.training or module.p == 0.0 or x.numel() == 0:
        return x
    if module.p == 1.0:
        mask = torch.zeros_like(x, dtype=torch.bool)
        out = x * 0.0
    else:
        out, mask = torch.native_dropout(x, module.p, True)
    if torch.is_grad_enabled():
        scale = 1.0 / (1.0 - module.p) if module.p < 1 else 0.0
        session._pending_extra[id(module)] = {"mask": mask, "scale": scale}
    return out


def _maxpool_forward(session: Session, module: nn.MaxPool2d, x: Tensor) -> Tensor:
    """``nn.MaxPool2d.forward`` that keeps the argmax indices autograd computes anyway."""
    if not torch.is_grad_enabled():
        return module.__class__.forward(module, x)
    out, idx = derivatives.maxpool2d_with_indices(module, x)
    session._pending_extra[id(module)] = {"_maxpool_indices": idx}
    return out


_FORWARDS = {nn.Linear: _first_order_forward, nn.Conv2d: _first_order_forward}
