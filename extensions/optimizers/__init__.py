"""The paper's curvature-preconditioned optimizers and the first-order baselines.

``make_optimizer(method, groups, lr, damping, **options)`` builds either; the training loop
(``bench.gridsearch.train``) gets the curvature per step from :func:`loss_and_curvature`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from .baselines import BASELINES, make_baseline
from .curvature_optimizer import (
    ALL_CURVATURES,
    CURVATURES,
    DIAGONAL,
    EIGEN,
    EXTENDED,
    KRONECKER,
    KRONECKER_EXPAND,
    CurvatureOptimizer,
)
from .curvature_source import BACKENDS, loss_and_curvature, resolve_backend

#: the paper's methods (Fig. 7 and its grid search)
METHODS = CURVATURES + BASELINES
#: methods beyond the paper, for a grid search that wants them: KFC conv factors and EKFAC
EXTENDED_METHODS = EXTENDED
ALL_METHODS = METHODS + EXTENDED_METHODS

__all__ = [
    "ALL_CURVATURES",
    "ALL_METHODS",
    "BACKENDS",
    "BASELINES",
    "CURVATURES",
    "DIAGONAL",
    "EIGEN",
    "EXTENDED",
    "EXTENDED_METHODS",
    "KRONECKER",
    "KRONECKER_EXPAND",
    "METHODS",
    "CurvatureOptimizer",
    "loss_and_curvature",
    "make_baseline",
    "make_optimizer",
    "resolve_backend",
]


def make_optimizer(
    method: str,
    groups: Iterable[dict[str, Any]],
    lr: float,
    damping: float | None = None,
    *,
    average: str | None = None,
    inverse_every: int = 1,
) -> torch.optim.Optimizer:
    """Build the optimizer of a method over L2 groups (``{"params": ..., "l2": delta}``).

    Args:
        method: a curvature (:data:`ALL_CURVATURES`) or a baseline (:data:`BASELINES`).
        groups: parameter groups with their L2 factor.
        lr: the learning rate.
        damping: lambda (curvature methods only).
        average: curvature estimate, ``"mean"`` or ``"fresh"`` (curvature methods only;
            default ``"mean"``, ``"fresh"`` for EKFAC).
        inverse_every: recompute inverses every k steps (curvature methods only).

    Returns:
        A :class:`CurvatureOptimizer` or a torch baseline optimizer.

    """
    if method in ALL_CURVATURES:
        if damping is None:
            raise ValueError(f"{method} needs a damping value")
        return CurvatureOptimizer(
            groups, method, lr, damping, average=average, inverse_every=inverse_every
        )
    if method in BASELINES:
        return make_baseline(method, groups, lr)
    raise ValueError(f"unknown method {method!r}; valid: {', '.join(ALL_METHODS)}")
