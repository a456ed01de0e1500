"""curvbench's reimplementation of BackPACK's ten quantities (plus EKFAC).

Example::

    >>> import torch
    >>> from torch import nn
    >>> import extensions
    >>> model = nn.Sequential(nn.Linear(4, 3))
    >>> x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
    >>> res = extensions.compute(model, nn.CrossEntropyLoss(), x, y, ["BatchGrad", "Variance"])
    >>> res["BatchGrad"]["0.weight"].shape
    torch.Size([5, 3, 4])

See :mod:`extensions.api` for :func:`compute` and :func:`collect`.
"""

from extensions.api import Results, collect, compute
from extensions.buffers import release
from extensions.errors import ExtensionError, MemoryBudgetError, UnsupportedModuleError
from extensions.quantities import (
    DEFAULT_MEMORY_BUDGET,
    EKFAC,
    EXTRA,
    FIRST_ORDER,
    KFAC,
    KFLR,
    KFRA,
    QUANTITIES,
    SECOND_ORDER,
    BatchGrad,
    BatchL2Grad,
    DiagGGNExact,
    DiagGGNMC,
    DiagHessian,
    EKFACExact,
    Quantity,
    SumGradSquared,
    Variance,
    resolve,
)

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "EKFAC",
    "EXTRA",
    "FIRST_ORDER",
    "KFAC",
    "KFLR",
    "KFRA",
    "QUANTITIES",
    "SECOND_ORDER",
    "BatchGrad",
    "BatchL2Grad",
    "DiagGGNExact",
    "EKFACExact",
    "DiagGGNMC",
    "DiagHessian",
    "ExtensionError",
    "MemoryBudgetError",
    "Quantity",
    "Results",
    "SumGradSquared",
    "UnsupportedModuleError",
    "Variance",
    "collect",
    "compute",
    "release",
    "resolve",
]
