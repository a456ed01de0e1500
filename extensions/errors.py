"""Errors raised by ``extensions``: every one names the module, its position and the quantity."""

from __future__ import annotations


class ExtensionError(RuntimeError):
    """A quantity cannot be computed for this model; nothing is silently skipped."""

    def __init__(
        self,
        message: str,
        *,
        module: object | None = None,
        position: str | int | None = None,
        quantity: str | None = None,
    ):
        self.module = module
        self.position = position
        self.quantity = quantity
        where = []
        if quantity is not None:
            where.append(f"quantity {quantity}")
        if module is not None:
            where.append(f"module {type(module).__name__}")
        if position is not None:
            where.append(f"at position {position}")
        prefix = f"[{', '.join(where)}] " if where else ""
        super().__init__(prefix + message)


class UnsupportedModuleError(ExtensionError):
    """A module (or loss) has no rule for the requested quantity."""


class MemoryBudgetError(ExtensionError):
    """A quantity would need more memory than the budget allows (raised before allocating)."""
