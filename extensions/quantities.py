"""The ten quantities as small configuration objects.

A quantity is identified by its ``name`` (the BackPACK class name); the functional API accepts
either the name or a configured instance (``DiagGGNMC(mc_samples=8)``), and results are keyed by
the name.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Quantity:
    """Base class: what is extracted at every parameter during backward."""

    @property
    def name(self) -> str:
        """The quantity's name, e.g. ``"BatchGrad"``."""
        return type(self).__name__

    @property
    def is_second_order(self) -> bool:
        """Whether the quantity backpropagates curvature factors (not only gradients)."""
        return isinstance(self, SECOND_ORDER_CLASSES)


@dataclass(frozen=True)
class BatchGrad(Quantity):
    """Individual gradients ``g_n / N`` (mean loss), shape ``[N, *p.shape]``."""


@dataclass(frozen=True)
class BatchL2Grad(Quantity):
    """Squared L2 norms of the individual gradients ``||g_n / N||^2``, shape ``[N]``."""


@dataclass(frozen=True)
class SumGradSquared(Quantity):
    """Second moment ``sum_n (g_n / N)^2`` (elementwise), shape ``p.shape``."""


@dataclass(frozen=True)
class Variance(Quantity):
    """``(1/N) sum_n (g_n/N)^2 - (grad/N)^2`` (BackPACK's scaling), shape ``p.shape``."""


@dataclass(frozen=True)
class DiagGGNExact(Quantity):
    """Exact diagonal of the generalised Gauss-Newton, shape ``p.shape``."""


@dataclass(frozen=True)
class DiagGGNMC(Quantity):
    """Monte-Carlo diagonal of the GGN with ``mc_samples`` sampled labels, shape ``p.shape``."""

    mc_samples: int = 1


@dataclass(frozen=True)
class DiagHessian(Quantity):
    """Exact diagonal of the Hessian (of the data loss), shape ``p.shape``."""


@dataclass(frozen=True)
class KFAC(Quantity):
    """Kronecker factors with an MC loss Hessian: weight ``[B, A]``, bias ``[B]``."""

    mc_samples: int = 1


@dataclass(frozen=True)
class KFLR(Quantity):
    """Kronecker factors with the exact loss Hessian: weight ``[B, A]``, bias ``[B]``."""


@dataclass(frozen=True)
class KFRA(Quantity):
    """Kronecker factors with the batch-averaged recursive output factor: ``[B, A]`` / ``[B]``."""


FIRST_ORDER_CLASSES = (BatchGrad, BatchL2Grad, SumGradSquared, Variance)
SECOND_ORDER_CLASSES = (DiagGGNExact, DiagGGNMC, DiagHessian, KFAC, KFLR, KFRA)
#: the quantity names, first order then second order (bench.spec.QUANTITIES mirrors them)
FIRST_ORDER = tuple(cls.__name__ for cls in FIRST_ORDER_CLASSES)
SECOND_ORDER = tuple(cls.__name__ for cls in SECOND_ORDER_CLASSES)
QUANTITIES = FIRST_ORDER + SECOND_ORDER
#: default bytes that quantity buffers may use (BatchGrad, second-order factors)
DEFAULT_MEMORY_BUDGET = 8 * 2**30

BY_NAME: dict[str, type[Quantity]] = {
    cls.__name__: cls for cls in FIRST_ORDER_CLASSES + SECOND_ORDER_CLASSES
}


def resolve(quantity: str | Quantity) -> Quantity:
    """Return a configured quantity from a name or an instance (unknown names list valid ones)."""
    if isinstance(quantity, Quantity):
        return quantity
    if isinstance(quantity, type) and issubclass(quantity, Quantity):
        return quantity()
    try:
        return BY_NAME[quantity]()
    except (KeyError, TypeError):
        valid = ", ".join(BY_NAME)
        raise ValueError(f"unknown quantity {quantity!r}; valid names: {valid}") from None
