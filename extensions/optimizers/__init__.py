"""The paper's curvature-preconditioned optimizers and the first-order baselines.

``make_optimizer(method, groups, lr, damping, **options)`` builds either; the training loop
(``bench.gridsearch.train``) gets the curvature per step from :func:`loss_and_curvature`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from .baselines import BASELINES, make_baseline
from .curvature_optimizer import CURVATURES, DIAGONAL, KRONECKER, CurvatureOptimizer
from .curvature_source import BACKENDS, loss_and_curvature, resolve_backend

METHODS = CURVATURES + BASELINES

__all__ = [
    "BACKENDS",
    "BASELINES",
    "CURVATURES",
    "DIAGONAL",
    "KRONECKER",
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
    average: str = "mean",
    inverse_every: int = 1,
) -> torch.optim.Optimizer:
    """Build the optimizer of a method over L2 groups (``{"params": ..., "l2": delta}``).

    Args:
        method: a curvature (:data:`CURVATURES`) or a baseline (:data:`BASELINES`).
        groups: parameter groups with their L2 factor.
        lr: the learning rate.
        damping: lambda (curvature methods only).
        average: curvature estimate, ``"mean"`` or ``"fresh"`` (curvature methods only).
        inverse_every: recompute inverses every k steps (curvature methods only).

    Returns:
        A :class:`CurvatureOptimizer` or a torch baseline optimizer.

    """
    if method in CURVATURES:
        if damping is None:
            raise ValueError(f"{method} needs a damping value")
        return CurvatureOptimizer(
            groups, method, lr, damping, average=average, inverse_every=inverse_every
        )
    if method in BASELINES:
        return make_baseline(method, groups, lr)
    raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
