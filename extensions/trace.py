"""What the forward pass records for the backward-pass quantities.

The hook machinery (``extensions.hooks``) fills a :class:`Trace` during forward; first-order
quantities are read off in per-module backward hooks, second-order quantities are computed by
``extensions.second_order.compute_second_order(trace, quantities, memory_budget)`` from the trace,
queued to run at the end of the same ``loss.backward()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn


@dataclass
class Record:
    """One leaf module's call during forward."""

    name: str  # qualified name in the model ("" for the model itself), e.g. "features.3"
    position: int  # index among the recorded leaf modules, in forward order
    module: nn.Module
    input: Tensor  # detached input
    output: Tensor  # detached output
    #: module-specific state recorded in forward, e.g. {"mask": ...} for Dropout in train mode
    extra: dict = field(default_factory=dict)


@dataclass
class LossRecord:
    """The loss module's call: ``module(input, target)``."""

    module: nn.Module  # nn.CrossEntropyLoss or nn.MSELoss
    input: Tensor  # detached model output (logits / predictions)
    target: Tensor


@dataclass
class Trace:
    """Everything the backward quantities need, in forward order."""

    records: list[Record] = field(default_factory=list)
    loss: LossRecord | None = None
    #: id(parameter) -> name from model.named_parameters()
    param_names: dict[int, str] = field(default_factory=dict)
