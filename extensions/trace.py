"""What the forward pass records for the backward-pass quantities.

The hook machinery (``extensions.hooks``) fills a :class:`Trace` during forward; first-order
quantities are read off in per-module backward hooks, second-order quantities are computed by
``extensions.second_order.compute_second_order(trace, quantities, memory_budget)`` from the trace,
queued to run at the end of the same ``loss.backward()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


def shape_only(t: Tensor) -> Tensor:
    """Return a stand-in for ``t``: its shape, dtype and device, one stored element (NaN).

    Records keep activations only where the backward reads their values (see
    ``extensions.derivatives.ModuleRule.reads``); holding every module's input *and* output would
    keep tensors alive that autograd frees during forward (a conv output once ReLU has its own),
    e.g. 180 MB of extra fresh pages per All-CNN-C step at batch 128. Slicing and ``.shape`` work as
    on ``t``; a value read by mistake gives NaN, never a silently plausible number.
    """
    fill = float("nan") if t.is_floating_point() or t.is_complex() else 0
    return torch.full((), fill, dtype=t.dtype, device=t.device).expand(t.shape)


@dataclass
class Record:
    """One leaf module's call during forward."""

    name: str  # qualified name in the model ("" for the model itself), e.g. "features.3"
    position: int  # index among the recorded leaf modules, in forward order
    module: nn.Module
    input: Tensor  # detached input (or its :func:`shape_only` stand-in)
    output: Tensor  # detached output (or its :func:`shape_only` stand-in)
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
