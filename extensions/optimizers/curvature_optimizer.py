"""The paper's curvature-preconditioned optimizer (Dangel et al. 2020, Sec. 4 and App. C).

Per parameter, ``delta_theta = -lr [C + (lambda + delta) I]^{-1} (g + delta theta)``, with ``g``
the gradient of the **unregularised** minibatch loss, ``C`` a curvature from BackPACK's quantities
(``DiagGGNExact``, ``DiagGGNMC``: diagonal; ``KFAC``, ``KFLR``, ``KFRA``: Kronecker factors with
π-damping, see :mod:`.damped_inverse`) and ``delta`` the problem's L2 factor of the parameter's
group (0 for biases), added here as the paper's code did.

Beyond the paper (:data:`EXTENDED`): ``"KFAC-expand"`` / ``"KFLR-expand"`` (the KFC conv
factorisation, ``extensions.KFAC(conv="expand")``; same damping) and ``"EKFAC"`` /
``"EKFAC-exact"`` (``extensions.EKFAC`` / ``EKFACExact``): ``[Q_B, Q_A, lam]`` per weight, whose
damped inverse is exact, ``kron(Q_B, Q_A) diag(1 / (lam + gamma)) kron(Q_B, Q_A)^T``. An EKFAC
basis belongs to one batch, so EKFAC methods use this step's curvature only (``"fresh"``).

Faithful defaults (the anon release ``bpoptim``): the curvature is the running mean of all
minibatch curvatures since the start (``average="mean"``) and the inverse is recomputed every
step (``inverse_every=1``). ``average="fresh"`` uses this step's curvature only (the paper's
text); ``inverse_every=k`` reuses the inverse for k steps.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from .damped_inverse import (
    apply_eigen_basis_inverses,
    apply_kronecker_inverses,
    diagonal_inverse,
    eigen_basis_inverses,
    kronecker_inverses,
)
from .running_mean import update_running_mean

DIAGONAL = ("DiagGGNExact", "DiagGGNMC")
KRONECKER = ("KFAC", "KFLR", "KFRA")
#: the paper's curvatures (BackPACK's quantities; the grid search's default)
CURVATURES = DIAGONAL + KRONECKER
#: Kronecker factors ``[B, A]`` / ``[B]`` with the KFC ("expand") conv factorisation
KRONECKER_EXPAND = ("KFAC-expand", "KFLR-expand")
#: eigenvalue-corrected KFAC, ``[Q_B, Q_A, lam]`` / ``[Q_B, lam_b]`` (MC and exact loss Hessian)
EIGEN = ("EKFAC", "EKFAC-exact")
#: curvatures beyond the paper (``extensions`` only, no BackPACK backend)
EXTENDED = KRONECKER_EXPAND + EIGEN
#: every curvature :class:`CurvatureOptimizer` accepts
ALL_CURVATURES = CURVATURES + EXTENDED
AVERAGES = ("mean", "fresh")

#: A parameter's curvature: a tensor of its shape (diagonal) or ``[B, A]`` / ``[B]`` (Kronecker).
Curvature = Tensor | Sequence[Tensor]


class CurvatureOptimizer(torch.optim.Optimizer):
    """Damped-curvature preconditioned steps; call :meth:`step` with this batch's curvature.

    Args:
        params: parameters or groups; a group's ``"l2"`` is its L2 factor delta (default 0).
        curvature: one of :data:`ALL_CURVATURES`.
        lr: the learning rate alpha.
        damping: the damping lambda.
        average: ``"mean"`` (running mean since the start, faithful) or ``"fresh"``;
            ``None``: ``"fresh"`` for :data:`EIGEN`, else ``"mean"``.
        inverse_every: recompute the inverses every this many steps (1 = faithful).

    Example:
        >>> opt = CurvatureOptimizer(problem.l2_groups(model), "KFAC", lr=1e-2, damping=1e-3)
        >>> opt.step({param: results["KFAC"][name] for name, param in model.named_parameters()})

    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        curvature: str,
        lr: float,
        damping: float,
        *,
        average: str | None = None,
        inverse_every: int = 1,
    ):
        if curvature not in ALL_CURVATURES:
            valid = ", ".join(ALL_CURVATURES)
            raise ValueError(f"unknown curvature {curvature!r}; valid: {valid}")
        if average is None:
            average = "fresh" if curvature in EIGEN else "mean"
        if average not in AVERAGES:
            raise ValueError(f"unknown average {average!r}; valid: {', '.join(AVERAGES)}")
        if curvature in EIGEN and average != "fresh":
            raise ValueError(
                f"{curvature} gives an eigenbasis of this batch only; running means over bases "
                "are undefined: use average='fresh'"
            )
        if inverse_every < 1:
            raise ValueError(f"inverse_every must be >= 1, got {inverse_every}")
        if lr <= 0 or damping < 0:
            raise ValueError(f"need lr > 0 and damping >= 0, got lr={lr}, damping={damping}")
        self.curvature = curvature
        defaults = dict(
            lr=lr, damping=damping, l2=0.0, average=average, inverse_every=inverse_every
        )
        super().__init__(params, defaults)

    @property
    def is_kronecker(self) -> bool:
        """Whether the curvature comes as Kronecker factors."""
        return self.curvature in KRONECKER + KRONECKER_EXPAND

    @property
    def is_eigen(self) -> bool:
        """Whether the curvature comes as an EKFAC eigenbasis and eigenvalues."""
        return self.curvature in EIGEN

    @torch.no_grad()
    def step(self, curvature: Mapping[Tensor, Curvature]) -> None:  # type: ignore[override]
        """Update every parameter that has a gradient.

        Args:
            curvature: this batch's curvature per parameter (keys: the parameter tensors).

        Raises:
            KeyError: a parameter with a gradient has no curvature.

        """
        for group in self.param_groups:
            gamma = group["damping"] + group["l2"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p not in curvature:
                    raise KeyError(
                        f"no {self.curvature} curvature for a parameter of shape "
                        f"{tuple(p.shape)}; pass {{param: value}} for every trained parameter"
                    )
                self._update_estimate(self.state[p], curvature[p], group["average"])
                state = self.state[p]
                if state["updates"] % group["inverse_every"] == 0 or "inverse" not in state:
                    state["inverse"] = self._inverse(state["estimate"], gamma)
                direction = p.grad if group["l2"] == 0 else p.grad.add(p, alpha=group["l2"])
                p.add_(self._precondition(state["inverse"], direction), alpha=-group["lr"])
                state["updates"] += 1

    def _update_estimate(self, state: dict[str, Any], value: Curvature, average: str) -> None:
        t = state.get("updates", 0) if average == "mean" else 0
        state.setdefault("updates", 0)
        if self.is_kronecker or self.is_eigen:
            old = state.get("estimate") or [None] * len(value)
            state["estimate"] = [
                update_running_mean(m, x, t) for m, x in zip(old, value, strict=True)
            ]
        else:
            state["estimate"] = update_running_mean(state.get("estimate"), value, t)

    def _inverse(self, estimate: Curvature, gamma: float) -> Curvature:
        if self.is_kronecker:
            return kronecker_inverses(list(estimate), gamma)
        if self.is_eigen:
            return eigen_basis_inverses(list(estimate), gamma)
        return diagonal_inverse(estimate, gamma)

    def _precondition(self, inverse: Curvature, direction: Tensor) -> Tensor:
        if self.is_kronecker:
            return apply_kronecker_inverses(list(inverse), direction)
        if self.is_eigen:
            return apply_eigen_basis_inverses(list(inverse), direction)
        return inverse * direction
