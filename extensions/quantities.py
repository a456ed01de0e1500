"""The ten quantities (and EKFAC) as small configuration objects.

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
        return isinstance(self, SECOND_ORDER_CLASSES + EXTRA_CLASSES)


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


#: convolution factorisations of the Kronecker quantities (see :class:`KFAC`)
CONV_FACTORISATIONS = ("backpack", "expand")


class _ConvOption:
    """Validates the ``conv`` field of the Kronecker quantities."""

    def __post_init__(self) -> None:
        if self.conv not in CONV_FACTORISATIONS:
            raise ValueError(
                f"{type(self).__name__}: unknown conv factorisation {self.conv!r}; "
                f"valid: {', '.join(CONV_FACTORISATIONS)}"
            )


@dataclass(frozen=True)
class KFAC(_ConvOption, Quantity):
    """Kronecker factors with an MC loss Hessian: weight ``[B, A]``, bias ``[B]``.

    ``kron(B, A)`` approximates the GGN block of the row-major flattened weight. With ``s`` the
    backpropagated loss-Hessian columns at the layer output (``1/sqrt(N)`` of a mean loss and
    ``1/sqrt(M)`` of ``M`` MC samples included), ``u`` the unfolded input patches and ``S`` the
    number of output positions of a convolution (``S = 1`` for ``Linear``, where both
    factorisations agree):

    * ``conv="backpack"`` (default; BackPACK 1.7.1): ``B = sum_{v,n} (sum_s s)(sum_s s)^T`` (the
      bias GGN), ``A = (1/N) sum_{n,s} u u^T``;
    * ``conv="expand"`` (KFC, Grosse & Martens 2016; curvlinops' ``kfac_approx="expand"``):
      ``B = sum_{v,n,s} s s^T``, ``A = (1/(N S)) sum_{n,s} u u^T``. The bias gets the same
      ``B``. Equal to curvlinops' ``KFACLinearOperator`` factors (separate weight and bias).
    """

    mc_samples: int = 1
    conv: str = "backpack"


@dataclass(frozen=True)
class KFLR(_ConvOption, Quantity):
    """Kronecker factors with the exact loss Hessian: weight ``[B, A]``, bias ``[B]``.

    ``conv`` as for :class:`KFAC`; ``conv="expand"`` equals curvlinops' ``KFACLinearOperator``
    with ``fisher_type="type-2"``.
    """

    conv: str = "backpack"


@dataclass(frozen=True)
class KFRA(Quantity):
    """Kronecker factors with the batch-averaged recursive output factor: ``[B, A]`` / ``[B]``."""


@dataclass(frozen=True)
class EKFAC(_ConvOption, Quantity):
    """Eigenvalue-corrected KFAC (George et al. 2018) with ``mc_samples`` MC loss-Hessian columns.

    Per weight ``[Q_B, Q_A, lam]``, per bias ``[Q_B, lam_b]``: ``Q_B`` ``[out, out]`` and ``Q_A``
    ``[K, K]`` are the eigenvectors (``torch.linalg.eigh``) of the :class:`KFAC` factors ``B``
    and ``A`` (factorisation ``conv``, default ``"expand"`` as curvlinops), and ``lam``
    ``[out, K]`` the corrected eigenvalues, the second moment of the per-(column, sample)
    gradients ``G_{v,n}`` (``[out, K]``, scaled as the columns of :class:`KFAC`) in that basis::

        lam = sum_{v,n} (Q_B^T G_{v,n} Q_A) ** 2          lam_b = sum_{v,n} (Q_B^T g_{v,n}) ** 2

    so that the GGN block of the row-major flattened weight is approximated by
    ``kron(Q_B, Q_A) @ diag(lam.flatten()) @ kron(Q_B, Q_A).T``. Equal to curvlinops'
    ``EKFACLinearOperator`` (``fisher_type="mc"``, separate weight and bias) when the same
    labels are drawn. The MC columns are shared with :class:`KFAC` / :class:`DiagGGNMC` of the
    same ``mc_samples`` (same draw).
    """

    mc_samples: int = 1
    conv: str = "expand"


@dataclass(frozen=True)
class EKFACExact(_ConvOption, Quantity):
    """:class:`EKFAC` with the exact loss Hessian (curvlinops' ``fisher_type="type-2"``).

    Same format; the factors are those of :class:`KFLR` (factorisation ``conv``).
    """

    conv: str = "expand"


FIRST_ORDER_CLASSES = (BatchGrad, BatchL2Grad, SumGradSquared, Variance)
SECOND_ORDER_CLASSES = (DiagGGNExact, DiagGGNMC, DiagHessian, KFAC, KFLR, KFRA)
#: quantities beyond BackPACK's ten (not part of :data:`QUANTITIES` nor the benchmark grid)
EXTRA_CLASSES = (EKFAC, EKFACExact)
#: the quantity names, first order then second order (bench.spec.QUANTITIES mirrors them)
FIRST_ORDER = tuple(cls.__name__ for cls in FIRST_ORDER_CLASSES)
SECOND_ORDER = tuple(cls.__name__ for cls in SECOND_ORDER_CLASSES)
QUANTITIES = FIRST_ORDER + SECOND_ORDER
EXTRA = tuple(cls.__name__ for cls in EXTRA_CLASSES)
#: default bytes that quantity buffers may use (BatchGrad, second-order factors)
DEFAULT_MEMORY_BUDGET = 8 * 2**30

BY_NAME: dict[str, type[Quantity]] = {
    cls.__name__: cls for cls in FIRST_ORDER_CLASSES + SECOND_ORDER_CLASSES
}
#: every quantity :func:`resolve` accepts by name (BackPACK's ten and :data:`EXTRA`)
ALL_BY_NAME: dict[str, type[Quantity]] = {
    **BY_NAME,
    **{cls.__name__: cls for cls in EXTRA_CLASSES},
}


def resolve(quantity: str | Quantity) -> Quantity:
    """Return a configured quantity from a name or an instance (unknown names list valid ones)."""
    if isinstance(quantity, Quantity):
        return quantity
    if isinstance(quantity, type) and issubclass(quantity, Quantity):
        return quantity()
    try:
        return ALL_BY_NAME[quantity]()
    except (KeyError, TypeError):
        valid = ", ".join(ALL_BY_NAME)
        raise ValueError(f"unknown quantity {quantity!r}; valid names: {valid}") from None
