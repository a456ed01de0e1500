"""The public API: :func:`compute` (one call) and :func:`collect` (your own training loop).

Example::

    >>> import torch
    >>> from torch import nn
    >>> import extensions
    >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    >>> loss_fn = nn.CrossEntropyLoss()
    >>> x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 5, (8,))
    >>> res = extensions.compute(model, loss_fn, x, y, ["BatchGrad", extensions.Variance()])
    >>> res["BatchGrad"]["0.weight"].shape
    torch.Size([8, 4, 3, 3, 3])
    >>> with extensions.collect(model, loss_fn, "BatchL2Grad") as results:
    ...     loss = loss_fn(model(x), y)
    ...     loss.backward()
    >>> results["BatchL2Grad"]["3.bias"].shape
    torch.Size([8])

Conventions (BackPACK 1.7.1, ``shared/spec/extensions.md``): the loss's 1/N is inside the
per-sample terms (``BatchGrad = g_n / N`` for a mean loss); results are overwritten by every
backward pass, ``.grad`` accumulates exactly as plain autograd. Second-order quantities are
computed at the end of the same ``loss.backward()`` (an autograd ``queue_callback``), so results
are complete as soon as ``backward()`` returns. Large buffers are reused by later backward passes
of the same model, in this context or a later one (a per-model pool, freed with the model or by
:func:`extensions.release`), unless something outside still refers to them
(:class:`~extensions.buffers.BufferPool`): a result you keep is never overwritten.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn

from extensions.hooks import Session
from extensions.quantities import DEFAULT_MEMORY_BUDGET, Quantity

Results = dict[str, dict[str, Any]]


def _flatten(quantities: Sequence[Any]) -> list[Any]:
    """Accept ``collect(m, l, "A", B())`` as well as ``collect(m, l, ["A", B()])``."""
    flat: list[Any] = []
    for item in quantities:
        if isinstance(item, list | tuple):
            flat.extend(item)
        else:
            flat.append(item)
    return flat


@contextmanager
def collect(
    model: nn.Module,
    loss_fn: nn.Module,
    *quantities: str | Quantity | type | Sequence[str | Quantity | type],
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> Iterator[Results]:
    """Compute quantities during every ``loss.backward()`` inside the context.

    Use ``loss = loss_fn(model(x), y); loss.backward()`` inside; the loss may be extended
    afterwards (``loss + penalty``), but its input must be the model output. Hooks are removed
    on exit; a model used outside the context runs exactly the stock modules.

    Args:
        model: the network; parameterised modules must be ``nn.Linear`` / ``nn.Conv2d``
            (groups=1) for first-order quantities.
        loss_fn: ``nn.CrossEntropyLoss`` or ``nn.MSELoss`` (reduction "mean" or "sum").
        *quantities: names (``"BatchGrad"``) or configured objects (``DiagGGNMC(mc_samples=8)``),
            or one list of them.
        memory_budget: bytes quantity buffers may use; exceeding it raises
            :class:`~extensions.errors.MemoryBudgetError` before allocating.

    Yields:
        ``{quantity name: {parameter name: value}}``, filled by each backward pass.

    Raises:
        ExtensionError: (subclasses) for unsupported modules/losses, in-place modules,
            parameters used twice, a loss not applied to the model output.
        ValueError: for an unknown quantity name (the message lists the valid names).

    """
    session = Session(model, loss_fn, _flatten(quantities), memory_budget)
    session.attach()
    try:
        yield session.results
    finally:
        session.detach()


def compute(
    model: nn.Module,
    loss_fn: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    quantities: Sequence[str | Quantity | type] | str | Quantity,
    *,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> Results:
    """Forward, loss, backward (filling ``.grad`` like plain autograd) and the quantities.

    Args:
        model: the network (see :func:`collect`).
        loss_fn: the loss module (see :func:`collect`).
        inputs: a batch of inputs.
        targets: the matching targets.
        quantities: names or configured quantity objects (or a single one).
        memory_budget: bytes quantity buffers may use.

    Returns:
        ``{quantity name: {parameter name (model.named_parameters()): value}}``.

    """
    if isinstance(quantities, str | Quantity | type):
        quantities = [quantities]
    with collect(model, loss_fn, list(quantities), memory_budget=memory_budget) as results:
        loss = loss_fn(model(inputs), targets)
        loss.backward()
    return results
