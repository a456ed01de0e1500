"""The contracts between curvbench's packages, in one file (AlgoPerf-style).

``problems`` builds networks and data, ``extensions`` computes quantities during backward,
``bench`` times and trains. Each package implements the protocols below structurally; nothing
here holds logic. Read this file before touching an interface.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn

from problems.registry import PROBLEMS as PROBLEMS  # re-exported: the one list of names

# --------------------------------------------------------------------------------------------
# Names shared by every package
# --------------------------------------------------------------------------------------------

#: The ten quantities, in the paper's order (first order, then second order). ``grad`` is the
#: plain-gradient reference in result tables.
FIRST_ORDER = ("BatchGrad", "BatchL2Grad", "SumGradSquared", "Variance")
SECOND_ORDER = (
    "DiagGGNExact",
    "DiagGGNMC",
    "DiagHessian",
    "KFAC",
    "KFLR",
    "KFRA",
)
QUANTITIES = FIRST_ORDER + SECOND_ORDER
#: Quantities that propagate C columns (C = number of classes); costly on CIFAR-100.
C_COLUMN_QUANTITIES = ("DiagGGNExact", "KFLR", "DiagHessian")
GRAD = "grad"

#: The problems (``problems.get(name)``): ``PROBLEMS``, imported above from ``problems.registry``,
#: the one list of names.

# --------------------------------------------------------------------------------------------
# problems
# --------------------------------------------------------------------------------------------


@runtime_checkable
class Problem(Protocol):
    """A DeepOBS test problem: ``problems.get(name)`` returns one."""

    name: str
    dataset: str  # "cifar10" | "cifar100"
    num_classes: int
    l2: float  # DeepOBS weight decay factor on weights (not biases)
    batch_size: int  # default training batch size
    epochs: int  # default training epochs
    in_deepobs: bool

    def model(self) -> nn.Sequential:
        """Build a fresh network of standard torch modules (seed with torch.manual_seed first)."""

    def loss_fn(self, reduction: str = "mean") -> nn.Module:
        """Return the data loss module (mean cross-entropy)."""

    def l2_penalty(self, model: nn.Module) -> Tensor:
        """``0.5 * l2 * sum ||W||^2`` over the weights (DeepOBS regularisation group)."""

    def l2_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """Parameter groups ``[{"params": weights, "l2": l2}, {"params": biases, "l2": 0.0}]``."""


class Batches(Protocol):
    """An epoch of ``(inputs, targets)`` on the data's device, float32 normalised, drop_last."""

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]: ...

    def __len__(self) -> int: ...


# --------------------------------------------------------------------------------------------
# extensions
# --------------------------------------------------------------------------------------------

#: ``extensions.compute(model, loss_fn, inputs, targets, quantities) -> Results``
#: runs forward, loss, backward (filling ``.grad``) and returns
#: ``{quantity name: {parameter name (model.named_parameters()): value}}``.
#: Shapes and scalings follow BackPACK 1.7.1 (see ../shared/spec/extensions.md):
#:   BatchGrad [N, *p.shape] = g_n/N; BatchL2Grad [N]; SumGradSquared, Variance, Diag* p.shape;
#:   KFAC/KFLR/KFRA: weight -> [B, A] with kron(B, A) ~ block of row-major flattened W; bias -> [B].
Results = dict[str, dict[str, Any]]
Compute = Callable[[nn.Module, nn.Module, Tensor, Tensor, Sequence[Any]], Results]

# --------------------------------------------------------------------------------------------
# bench: backends and result rows
# --------------------------------------------------------------------------------------------


class Backend(Protocol):
    """One way of computing quantities: ours, backpack(_savemem), torch.func, opacus, loop."""

    name: str

    def available(self) -> tuple[bool, str]:
        """Whether the backend can run here, and why not."""

    def supports(self, quantity: str) -> bool:
        """Whether this backend has ``quantity`` (``grad`` is always supported)."""

    def step_fn(
        self, model: nn.Module, loss_fn: nn.Module, quantity: str
    ) -> Callable[[Tensor, Tensor], None]:
        """Return a function doing one step (forward, loss, backward with the quantity)."""


#: Columns of results/overhead/*.csv (one row per measurement).
OVERHEAD_COLUMNS = (
    "problem",
    "batch_size",
    "backend",
    "quantity",
    "mode",
    "device",
    "rounds",
    "median_s",
    "iqr_s",
    "min_s",
    "ratio_to_grad",
    "peak_mem_mb",
    "status",
    "message",
)

#: Columns of results/gridsearch/<run_id>.csv (one row per evaluation).
GRIDSEARCH_COLUMNS = (
    "run_id",
    "problem",
    "method",
    "lr",
    "damping",
    "seed",
    "epoch",
    "step",
    "train_loss",
    "train_acc",
    "valid_loss",
    "valid_acc",
    "test_loss",
    "test_acc",
    "train_time_s",
)
