"""The first-order baselines of the paper's Fig. 7: SGD with momentum 0.9 and Adam.

L2 is coupled as in DeepOBS (the gradient of ``0.5 delta ||w||^2`` is added to the gradient):
torch's ``weight_decay`` of SGD and Adam does exactly that, per group (delta on weights, 0 on
biases).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

BASELINES = ("Momentum", "Adam")
MOMENTUM = 0.9
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def make_baseline(
    method: str, groups: Iterable[dict[str, Any]], lr: float
) -> torch.optim.Optimizer:
    """Build a baseline optimizer over L2 groups (``{"params": ..., "l2": delta}``).

    Args:
        method: ``"Momentum"`` or ``"Adam"``.
        groups: parameter groups with their L2 factor.
        lr: the learning rate.

    Returns:
        ``torch.optim.SGD(momentum=0.9)`` or ``torch.optim.Adam``, weight decay = delta per group.

    """
    torch_groups = [
        {"params": list(g["params"]), "weight_decay": float(g.get("l2", 0.0))} for g in groups
    ]
    if method == "Momentum":
        return torch.optim.SGD(torch_groups, lr=lr, momentum=MOMENTUM)
    if method == "Adam":
        return torch.optim.Adam(torch_groups, lr=lr, betas=ADAM_BETAS, eps=ADAM_EPS)
    raise ValueError(f"unknown baseline {method!r}; valid: {', '.join(BASELINES)}")
