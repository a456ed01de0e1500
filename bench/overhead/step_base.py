"""The machinery every backend shares: :class:`Step` (one training step) and :class:`BaseBackend`.

It lives apart from :mod:`bench.overhead.backends` so that backends defined in other modules
(:mod:`bench.overhead.peers`) can subclass it while ``backends.BACKENDS`` lists them all.
"""

from __future__ import annotations

import importlib

from torch import Tensor, nn

from bench.spec import GRAD

PerParam = dict[str, Tensor]


class Step:
    """One training step of a backend; subclasses implement :meth:`backward_with_quantity`.

    Args:
        model: the network (owned by this step: backends may wrap or extend it).
        loss_fn: the mean-reduced loss module.
        quantity: ``"grad"`` or one of ``bench.spec.QUANTITIES``.

    """

    def __init__(self, model: nn.Module, loss_fn: nn.Module, quantity: str):
        self.model = model
        self.loss_fn = loss_fn
        self.quantity = quantity
        self.results: PerParam | None = None

    def __call__(self, inputs: Tensor, targets: Tensor) -> None:
        """Run one step on a batch (gradients in ``.grad``, the quantity in ``results``)."""
        self.clear()
        self.results = self.backward_with_quantity(inputs, targets)

    def backward_with_quantity(self, inputs: Tensor, targets: Tensor) -> PerParam | None:
        """Forward, loss and backward; return the quantity per parameter name (None for grad)."""
        loss = self.loss_fn(self.model(inputs), targets)
        loss.backward()
        return None

    def clear(self) -> None:
        """Drop gradients and results (like ``zero_grad(set_to_none=True)``)."""
        self.model.zero_grad(set_to_none=True)
        self.results = None

    def close(self) -> None:
        """Release what the step installed (hooks); a no-op for most backends."""


class BaseBackend:
    """Common parts: a name, the quantities it has, and the packages it needs."""

    name = "base"
    quantities: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()

    def available(self) -> tuple[bool, str]:
        """Whether the required packages import here, and why not."""
        for module in self.requires:
            try:
                importlib.import_module(module)
            except ImportError as err:
                return False, f"{self.name}: cannot import {module} ({err})"
        return True, ""

    def supports(self, quantity: str) -> bool:
        """Whether this backend has ``quantity`` (``grad`` always)."""
        return quantity == GRAD or quantity in self.quantities

    def step_fn(self, model: nn.Module, loss_fn: nn.Module, quantity: str) -> Step:
        """Build a :class:`Step` for ``quantity``; raise ``ValueError`` for one it does not have."""
        if not self.supports(quantity):
            valid = ", ".join((GRAD, *self.quantities))
            raise ValueError(f"backend {self.name} has no quantity {quantity!r}; it has: {valid}")
        return self._make_step(model, loss_fn, quantity)

    def note(self, model: nn.Module, input_shape: tuple[int, ...], quantity: str) -> str:
        """Label this backend's row of ``quantity`` on ``model`` (``differs: ...``), or ``""``."""
        return ""

    def _make_step(self, model: nn.Module, loss_fn: nn.Module, quantity: str) -> Step:
        return Step(model, loss_fn, quantity)
