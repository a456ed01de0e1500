"""The ways of computing a quantity during one training step, behind ``bench.spec.Backend``.

Every backend turns ``(model, loss_fn, quantity)`` into a :class:`Step`: a callable doing one
training step (zero the gradients, forward, loss, backward with the quantity) on a batch. After a
call, ``step.results`` holds the quantity per parameter name in BackPACK's scaling (per-sample
gradients ``g_n / N`` of the mean loss, squared norms of those), so backends are comparable;
``step.clear()`` drops them (the harness calls it outside the clock so that results of many
variants do not pile up).

Backends: ``pytorch`` (the plain gradient only: the reference), ``ours`` (``extensions``),
``backpack`` and ``backpack_savemem`` (BackPACK 1.7.1, default conv path and
``weight_jac_t_save_memory``), ``torch.func`` (``vmap(grad)`` per-sample gradients and norms),
``opacus`` (``GradSampleModule`` per-sample gradients, ghost-clipping norms) and ``loop``
(per-sample gradients from N backward passes); ``ours_perstep`` opens ours' context per step, and
``ours_expand`` / ``ours_perstep_expand`` time ours' KFAC/KFLR with the peers' KFC "expand" conv
factors (the same quantity as the peers' rows). Optional packages are imported lazily; a missing
one makes the backend unavailable (reported, not raised).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from bench.overhead.peers import (
    EXPAND_OURS,
    EXPAND_QUANTITIES,
    NEW_QUANTITIES,
    PEER_BACKENDS,
    has_conv,
)
from bench.overhead.step_base import BaseBackend, PerParam, Step
from bench.spec import GRAD, QUANTITIES

__all__ = ["BACKENDS", "BaseBackend", "PerParam", "Step", "get_backend"]


class PytorchBackend(BaseBackend):
    """The plain gradient (forward, mean loss, ``backward()``): the reference of every ratio."""

    name = "pytorch"


# --------------------------------------------------------------------------------------------
# ours
# --------------------------------------------------------------------------------------------


def configured_quantity(quantity: str, conv: str | None = None) -> Any:
    """Return our quantity object for ``quantity`` (with the conv factorisation ``conv``, if set).

    Results stay keyed by the plain name (``KFAC(conv="expand")`` is ``"KFAC"``).
    """
    from extensions import quantities

    configured = quantities.resolve(quantity)
    return configured if conv is None else dataclasses.replace(configured, conv=conv)


class OursStep(Step):
    """A training step inside ``extensions.collect`` (entered once, like BackPACK's ``extend``).

    The context stays open for the step's lifetime (a training loop would enter it once);
    ``close()`` removes the hooks. ``conv`` picks the Kronecker quantities' conv factorisation
    (``None``: the quantity's default, BackPACK's).
    """

    def __init__(
        self, model: nn.Module, loss_fn: nn.Module, quantity: str, conv: str | None = None
    ):
        super().__init__(model, loss_fn, quantity)
        self._stack = contextlib.ExitStack()
        self._collected: dict[str, dict[str, Any]] | None = None
        if quantity != GRAD:
            import extensions

            self._collected = self._stack.enter_context(
                extensions.collect(model, loss_fn, configured_quantity(quantity, conv))
            )

    def backward_with_quantity(self, inputs: Tensor, targets: Tensor) -> PerParam | None:
        """Forward, loss and backward with our hooks; keep the quantity."""
        super().backward_with_quantity(inputs, targets)
        if self._collected is None:
            return None
        return dict(self._collected[self.quantity])

    def clear(self) -> None:
        """Drop gradients and our per-parameter results."""
        super().clear()
        if self._collected is not None:
            for per_param in self._collected.values():
                per_param.clear()

    def close(self) -> None:
        """Remove the hooks."""
        self._stack.close()


class OursPerStepStep(Step):
    """A training step that opens ``extensions.collect`` around each step (BackPACK's pattern).

    ``with extensions.collect(...)`` is entered and left in every call, as a user writes
    ``with backpack(...):`` around each backward; the results stay readable after the context.
    ``conv`` as for :class:`OursStep`.
    """

    def __init__(
        self, model: nn.Module, loss_fn: nn.Module, quantity: str, conv: str | None = None
    ):
        super().__init__(model, loss_fn, quantity)
        self._configured = configured_quantity(quantity, conv)

    def backward_with_quantity(self, inputs: Tensor, targets: Tensor) -> PerParam | None:
        """Enter the context, forward, loss, backward, leave; keep the quantity."""
        import extensions

        with extensions.collect(self.model, self.loss_fn, self._configured) as collected:
            super().backward_with_quantity(inputs, targets)
        return dict(collected[self.quantity])


class OursBackend(BaseBackend):
    """Our own ``extensions`` package (``extensions.collect``): always available."""

    name = "ours"
    quantities = QUANTITIES

    def supports(self, quantity: str) -> bool:
        """Have the ten quantities, and ``EKFAC`` where ``extensions`` offers it (``EXTRA``)."""
        if quantity in NEW_QUANTITIES:
            from extensions import quantities

            return quantity in (*quantities.QUANTITIES, *quantities.EXTRA)
        return super().supports(quantity)

    def _make_step(self, model: nn.Module, loss_fn: nn.Module, quantity: str) -> Step:
        return OursStep(model, loss_fn, quantity)


# --------------------------------------------------------------------------------------------
# BackPACK
# --------------------------------------------------------------------------------------------


def backpack_extension(quantity: str) -> Any:
    """Build the BackPACK 1.7.1 extension object for ``quantity`` (MC quantities: one sample)."""
    from backpack import extensions as bpext

    if quantity in ("DiagGGNMC", "KFAC"):
        return getattr(bpext, quantity)(mc_samples=1)
    return getattr(bpext, quantity)()


class BackpackStep(Step):
    """``loss.backward()`` inside ``with backpack(extension)`` on an extended model."""

    def __init__(self, model: nn.Module, loss_fn: nn.Module, quantity: str, save_memory: bool):
        from backpack import extend

        super().__init__(extend(model), extend(loss_fn), quantity)
        self.save_memory = save_memory
        self.extension = None if quantity == GRAD else backpack_extension(quantity)

    def backward_with_quantity(self, inputs: Tensor, targets: Tensor) -> PerParam | None:
        """Backward with the extension (and the save-memory conv path when asked)."""
        from backpack import backpack
        from backpack.core.derivatives.convnd import weight_jac_t_save_memory

        if self.extension is None:
            return super().backward_with_quantity(inputs, targets)
        with weight_jac_t_save_memory(self.save_memory), backpack(self.extension):
            loss = self.loss_fn(self.model(inputs), targets)
            loss.backward()
        field = self.extension.savefield
        return {name: getattr(p, field) for name, p in self.model.named_parameters()}

    def clear(self) -> None:
        """Drop gradients and BackPACK's per-parameter results."""
        super().clear()
        if self.extension is not None:
            for p in self.model.parameters():
                if hasattr(p, self.extension.savefield):
                    delattr(p, self.extension.savefield)


class BackpackBackend(BaseBackend):
    """BackPACK 1.7.1 with its default convolution weight-Jacobian path."""

    name = "backpack"
    quantities = QUANTITIES
    requires = ("backpack",)
    save_memory = False

    def _make_step(self, model: nn.Module, loss_fn: nn.Module, quantity: str) -> Step:
        return BackpackStep(model, loss_fn, quantity, self.save_memory)


class BackpackSaveMemoryBackend(BackpackBackend):
    """BackPACK inside ``weight_jac_t_save_memory(True)`` (the first-order conv quantities)."""

    name = "backpack_savemem"
    #: the quantities whose conv rule goes through ``weight_jac_t_mat_prod``
    quantities = ("BatchGrad", "SumGradSquared", "Variance")
    save_memory = True


# --------------------------------------------------------------------------------------------
# torch.func
# --------------------------------------------------------------------------------------------


class FuncStep(Step):
    """Per-sample gradients by ``vmap(grad(loss of one sample))``; ``.grad`` = their mean."""

    def __init__(self, model: nn.Module, loss_fn: nn.Module, quantity: str):
        super().__init__(model, loss_fn, quantity)
        from torch.func import functional_call, grad, vmap

        def sample_loss(params: PerParam, buffers: PerParam, x: Tensor, y: Tensor) -> Tensor:
            out = functional_call(model, (params, buffers), (x.unsqueeze(0),))
            return loss_fn(out, y.unsqueeze(0))

        self._per_sample = vmap(
            grad(sample_loss), in_dims=(None, None, 0, 0), randomness="different"
        )

    def backward_with_quantity(self, inputs: Tensor, targets: Tensor) -> PerParam | None:
        """Per-sample gradients (or their squared norms), and the mean gradient in ``.grad``."""
        if self.quantity == GRAD:
            return super().backward_with_quantity(inputs, targets)
        params = {k: v.detach() for k, v in self.model.named_parameters()}
        buffers = {k: v.detach() for k, v in self.model.named_buffers()}
        per_sample = self._per_sample(params, buffers, inputs, targets)
        n = inputs.shape[0]
        named = dict(self.model.named_parameters())
        results: PerParam = {}
        for name, g in per_sample.items():
            scaled = g / n  # BackPACK's scaling: g_n / N
            named[name].grad = scaled.sum(0)
            if self.quantity == "BatchGrad":
                results[name] = scaled
            else:  # BatchL2Grad
                results[name] = scaled.flatten(1).pow(2).sum(1)
        return results


class FuncBackend(BaseBackend):
    """``torch.func`` per-sample gradients (``vmap(grad)``, dropout with different randomness)."""

    name = "torch.func"
    quantities = ("BatchGrad", "BatchL2Grad")
    requires = ("torch.func",)

    def _make_step(self, model: nn.Module, loss_fn: nn.Module, quantity: str) -> Step:
        return FuncStep(model, loss_fn, quantity)


# --------------------------------------------------------------------------------------------
# Opacus
# --------------------------------------------------------------------------------------------


class OpacusStep(Step):
    """``GradSampleModule`` (per-sample gradients) or ghost clipping (per-sample norms)."""

    def __init__(self, model: nn.Module, loss_fn: nn.Module, quantity: str):
        from opacus.grad_sample import GradSampleModule
        from opacus.grad_sample.grad_sample_module_fast_gradient_clipping import (
            GradSampleModuleFastGradientClipping,
        )

        if quantity == "BatchL2Grad":
            wrapped = GradSampleModuleFastGradientClipping(
                model, loss_reduction="mean", use_ghost_clipping=True, max_grad_norm=1.0
            )
        elif quantity == "BatchGrad":
            wrapped = GradSampleModule(model, loss_reduction="mean")
        else:
            wrapped = model
        super().__init__(wrapped, loss_fn, quantity)
        self._inner = model

    def backward_with_quantity(self, inputs: Tensor, targets: Tensor) -> PerParam | None:
        """Backward through the wrapped model; read ``grad_sample`` or the norm samples."""
        super().backward_with_quantity(inputs, targets)
        n = inputs.shape[0]
        if self.quantity == "BatchGrad":
            # Opacus stores gradients of the per-sample losses (g_n); BackPACK's scaling is g_n/N.
            return {k: p.grad_sample / n for k, p in self._inner.named_parameters()}
        if self.quantity == "BatchL2Grad":
            norms = self.model.get_norm_sample()  # ||g_n|| over all parameters
            return {"all": (norms / n).pow(2)}
        return None

    def clear(self) -> None:
        """Drop gradients and per-sample gradients."""
        self.model.zero_grad(set_to_none=True)
        for p in self._inner.parameters():
            p.grad_sample = None
        self.results = None


class OpacusBackend(BaseBackend):
    """Opacus 1.6: ``GradSampleModule`` and ghost-clipping norms (one backward)."""

    name = "opacus"
    quantities = ("BatchGrad", "BatchL2Grad")
    requires = ("opacus",)

    def _make_step(self, model: nn.Module, loss_fn: nn.Module, quantity: str) -> Step:
        return OpacusStep(model, loss_fn, quantity)


# --------------------------------------------------------------------------------------------
# for-loop
# --------------------------------------------------------------------------------------------


class LoopStep(Step):
    """N forward/backward passes of one sample each (the paper's for-loop baseline)."""

    def backward_with_quantity(self, inputs: Tensor, targets: Tensor) -> PerParam | None:
        """Per-sample gradients by ``autograd.grad``; ``.grad`` = their mean."""
        if self.quantity == GRAD:
            return super().backward_with_quantity(inputs, targets)
        names, params = zip(*self.model.named_parameters())
        n = inputs.shape[0]
        per_sample: list[tuple[Tensor, ...]] = []
        for i in range(n):
            loss = self.loss_fn(self.model(inputs[i : i + 1]), targets[i : i + 1])
            per_sample.append(torch.autograd.grad(loss, params))
        results = {}
        for j, (name, p) in enumerate(zip(names, params)):
            stacked = torch.stack([g[j] for g in per_sample]) / n
            p.grad = stacked.sum(0)
            results[name] = stacked
        return results


class LoopBackend(BaseBackend):
    """Per-sample gradients by N separate backward passes."""

    name = "loop"
    quantities = ("BatchGrad",)

    def _make_step(self, model: nn.Module, loss_fn: nn.Module, quantity: str) -> Step:
        return LoopStep(model, loss_fn, quantity)


class OursPerStepBackend(OursBackend):
    """Ours with ``extensions.collect`` opened around every step (the per-step usage pattern)."""

    name = "ours_perstep"

    def _make_step(self, model: nn.Module, loss_fn: nn.Module, quantity: str) -> Step:
        if quantity == GRAD:
            return OursStep(model, loss_fn, quantity)
        return OursPerStepStep(model, loss_fn, quantity)


class OursExpandBackend(OursBackend):
    """Ours KFAC/KFLR with the KFC "expand" conv factors: what the peers' KFAC/KFLR compute.

    ``extensions.KFAC(conv="expand")`` / ``KFLR(conv="expand")`` in one long-lived ``collect``
    context. On a network with convolutions these are the same quantities as curvlinops', ASDL's
    and nngeometry's KFAC/KFLR (whose rows are labelled ``differs`` against ours with BackPACK's
    factors); without convolutions both factorisations agree.
    """

    name = "ours_expand"
    quantities = EXPAND_QUANTITIES
    conv = "expand"

    def supports(self, quantity: str) -> bool:
        """KFAC and KFLR (and ``grad``)."""
        return BaseBackend.supports(self, quantity)

    def note(self, model: nn.Module, input_shape: tuple[int, ...], quantity: str) -> str:
        """Say which factorisation the row times (where it differs from ours' default)."""
        return EXPAND_OURS if quantity in self.quantities and has_conv(model) else ""

    def _make_step(self, model: nn.Module, loss_fn: nn.Module, quantity: str) -> Step:
        return OursStep(model, loss_fn, quantity, None if quantity == GRAD else self.conv)


class OursPerStepExpandBackend(OursExpandBackend):
    """:class:`OursExpandBackend` with ``collect`` opened around every step (per-step pattern)."""

    name = "ours_perstep_expand"

    def _make_step(self, model: nn.Module, loss_fn: nn.Module, quantity: str) -> Step:
        if quantity == GRAD:
            return OursStep(model, loss_fn, quantity)
        return OursPerStepStep(model, loss_fn, quantity, self.conv)


#: backend name -> factory, in the order tables and figures list them
BACKENDS: dict[str, Callable[[], BaseBackend]] = {
    "pytorch": PytorchBackend,
    "ours": OursBackend,
    "ours_perstep": OursPerStepBackend,
    "backpack": BackpackBackend,
    "backpack_savemem": BackpackSaveMemoryBackend,
    "torch.func": FuncBackend,
    "opacus": OpacusBackend,
    "loop": LoopBackend,
    **PEER_BACKENDS,
    "ours_expand": OursExpandBackend,
    "ours_perstep_expand": OursPerStepExpandBackend,
}
#: the backends measured by default (``pytorch`` is always run as the reference)
DEFAULT_BACKENDS = (
    "ours",
    "ours_perstep",
    "ours_expand",
    "ours_perstep_expand",
    "backpack",
    "backpack_savemem",
    "torch.func",
    "opacus",
    "loop",
    *PEER_BACKENDS,
)


def get_backend(name: str) -> BaseBackend:
    """Return the backend called ``name``; an unknown name lists the valid ones."""
    try:
        return BACKENDS[name]()
    except KeyError:
        raise ValueError(
            f"unknown backend {name!r}; valid backends: {', '.join(BACKENDS)}"
        ) from None
