"""One training step's loss and curvature: our ``extensions`` or the BackPACK reference.

``loss_and_curvature`` runs forward, the mean data loss and backward (filling ``.grad``) with the
curvature quantity switched on, and returns the loss (a 0-d tensor, not synced to the host) and
``{parameter tensor: curvature}`` for :class:`.CurvatureOptimizer`.

Backends: ``"ours"`` (``extensions.collect``), ``"backpack"`` (backpack-for-pytorch 1.7.1, the
reference) and ``"auto"`` (ours when ``extensions.collect`` exists, else BackPACK). The
curvature is always that of the unregularised data loss.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from .curvature_optimizer import ALL_CURVATURES, EXTENDED, Curvature

BACKENDS = ("auto", "ours", "backpack")

#: BackPACK extension class name -> attribute it writes on each parameter.
_BACKPACK_ATTRIBUTES = {
    "DiagGGNExact": "diag_ggn_exact",
    "DiagGGNMC": "diag_ggn_mc",
    "KFAC": "kfac",
    "KFLR": "kflr",
    "KFRA": "kfra",
}


def ours_available() -> bool:
    """Whether ``extensions.collect`` exists (our quantities are built)."""
    import extensions

    return callable(getattr(extensions, "collect", None))


def resolve_backend(backend: str) -> str:
    """Return the concrete backend for ``backend`` (``auto`` picks ours when it exists)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown curvature backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if backend == "auto":
        return "ours" if ours_available() else "backpack"
    return backend


def quantity_of(method: str):
    """Return the configured ``extensions`` quantity behind a curvature method name."""
    import extensions

    extended = {
        "KFAC-expand": extensions.KFAC(conv="expand"),
        "KFLR-expand": extensions.KFLR(conv="expand"),
        "EKFAC": extensions.EKFAC(),
        "EKFAC-exact": extensions.EKFACExact(),
    }
    return extended.get(method) or extensions.resolve(method)


def _ours(
    model: nn.Module, loss_fn: nn.Module, inputs: Tensor, targets: Tensor, method: str
) -> tuple[Tensor, dict[str, Curvature]]:
    import extensions

    quantity = quantity_of(method)
    with extensions.collect(model, loss_fn, quantity) as results:
        loss = loss_fn(model(inputs), targets)
        loss.backward()
    return loss.detach(), results[quantity.name]


def _backpack(
    model: nn.Module, loss_fn: nn.Module, inputs: Tensor, targets: Tensor, quantity: str
) -> tuple[Tensor, dict[str, Curvature]]:
    import backpack
    from backpack import extensions as bp_extensions

    backpack.extend(model)
    backpack.extend(loss_fn)
    attribute = _BACKPACK_ATTRIBUTES[quantity]
    with backpack.backpack(getattr(bp_extensions, quantity)()):
        loss = loss_fn(model(inputs), targets)
        loss.backward()
    values = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            values[name] = getattr(p, attribute)
            delattr(p, attribute)
    return loss.detach(), values


_IMPLEMENTATIONS: dict[str, Callable] = {"ours": _ours, "backpack": _backpack}


def loss_and_curvature(
    model: nn.Module,
    loss_fn: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    quantity: str,
    backend: str = "auto",
) -> tuple[Tensor, dict[Tensor, Curvature]]:
    """Forward, loss, backward with ``quantity``; return the loss and curvature per parameter.

    Args:
        model: the network (its ``.grad`` fields are accumulated into: zero them first).
        loss_fn: the mean data loss (no L2 term).
        inputs: a batch of inputs.
        targets: its targets.
        quantity: one of :data:`.ALL_CURVATURES` (:data:`.EXTENDED` ones: ``"ours"`` only).
        backend: one of :data:`BACKENDS`.

    Returns:
        ``(loss, {parameter: curvature})``; the loss is detached and stays on the device.

    """
    if quantity not in ALL_CURVATURES:
        raise ValueError(f"unknown curvature {quantity!r}; valid: {', '.join(ALL_CURVATURES)}")
    backend = resolve_backend(backend)
    if quantity in EXTENDED and backend != "ours":
        raise ValueError(f"{quantity} is computed by extensions only (backend 'ours')")
    loss, by_name = _IMPLEMENTATIONS[backend](model, loss_fn, inputs, targets, quantity)
    named = dict(model.named_parameters())
    return loss, {named[name]: value for name, value in by_name.items()}
