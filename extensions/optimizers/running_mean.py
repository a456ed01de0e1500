"""The curvature estimate the paper's code actually used: a running mean of the minibatch values.

``bpoptim``'s moving average is ``m <- (1 - a_t) m + a_t x_t`` with ``a_t = min(1/(t+1), 0.9)``,
``t`` the number of previous updates, and ``m = x`` on the first update. Since ``1/(t+1) <= 0.5``
for ``t >= 1`` the cap never binds: the estimate is the uniform mean of every minibatch curvature
since the start of training (``gridsearch.md`` §5.1 item 2).
"""

from __future__ import annotations

from torch import Tensor

#: ``alpha`` of ``bpoptim``'s ``MovingAverage`` (the cap on the update weight).
MAX_WEIGHT = 0.9


def update_weight(t: int) -> float:
    """Return the weight ``a_t`` of the new value after ``t`` previous updates (1 when t = 0)."""
    return 1.0 if t == 0 else min(1.0 / (t + 1), MAX_WEIGHT)


def update_running_mean(mean: Tensor | None, value: Tensor, t: int) -> Tensor:
    """Return the running mean after folding in ``value`` (``t`` previous updates).

    Args:
        mean: the current estimate (``None`` before the first update).
        value: this step's curvature (same shape).
        t: the number of previous updates.

    Returns:
        A new tensor (``value`` itself is never aliased).

    """
    weight = update_weight(t)
    if mean is None or weight == 1.0:
        return value.detach().clone()
    return mean.mul(1.0 - weight).add_(value.detach(), alpha=weight)
