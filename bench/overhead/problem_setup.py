"""The overhead benchmark's view of a problem: a seeded model, its loss and its batches.

Registered problems come from ``problems.get``; the tiny problems here are small enough for
harness tests and smoke runs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

#: Problems small enough for harness tests and smoke runs: (input shape, classes).
TINY_PROBLEMS = {"tiny_cnn": ((3, 8, 8), 4), "tiny_mlp": ((3, 4, 4), 3)}


def _tiny_model(name: str) -> nn.Sequential:
    """Build a few-parameter network of the supported module types (for tests and smoke runs)."""
    (channels, height, width), classes = TINY_PROBLEMS[name]
    if name == "tiny_cnn":
        return nn.Sequential(
            nn.Conv2d(channels, 4, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(4, 4, 3),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(4 * (height // 2 - 2) * (width // 2 - 2), classes),
        )
    return nn.Sequential(
        nn.Flatten(), nn.Linear(channels * height * width, 8), nn.Sigmoid(), nn.Linear(8, classes)
    )


@dataclass(frozen=True)
class ProblemSetup:
    """What the benchmark needs of a problem: a seeded model, the loss and batches."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    model_fn: Callable[[], nn.Module]
    loss_fn: Callable[[], nn.Module]
    data_fn: Callable[[torch.device, int], Any] | None  # -> object with sample_train_batch()

    def staged_batches(
        self, batch_size: int, device: torch.device, count: int = 2, seed: int = 0
    ) -> list[tuple[Tensor, Tensor]]:
        """``count`` random batches of the real shape, staged on ``device`` (clean mode)."""
        gen = torch.Generator().manual_seed(seed)
        return [
            (
                torch.randn(batch_size, *self.input_shape, generator=gen).to(device),
                torch.randint(0, self.num_classes, (batch_size,), generator=gen).to(device),
            )
            for _ in range(count)
        ]

    def fresh_batch_fn(self, batch_size: int, device: torch.device) -> Callable[[], tuple]:
        """Return a function fetching + augmenting one fresh batch per call (paper mode)."""
        if self.data_fn is None:
            raise NotImplementedError(f"problem {self.name} has no data source for paper mode")
        data = self.data_fn(device, batch_size)
        return functools.partial(data.sample_train_batch, batch_size)


def _registry_data(name: str, device: torch.device, batch_size: int) -> Any:
    """Load the synthetic-source data of a registered problem (fetch + augment on the device)."""
    import problems

    return problems.get(name).data(source="synthetic", device=device, batch_size=batch_size)


def registered_problems() -> tuple[str, ...]:
    """Return the problems a user can pick: ``problems.names()`` and ``problems.VARIANTS``.

    The variants (Fig. 9's ``cifar10_3c3dsig``, not in DeepOBS) are listed last; the tiny test
    problems are not listed.
    """
    import problems

    return (*problems.names(), *problems.VARIANTS)


def problem_setup(name: str) -> ProblemSetup:
    """Return the setup of a registered problem (``problems.get``) or a tiny test problem."""
    if name in TINY_PROBLEMS:
        shape, classes = TINY_PROBLEMS[name]
        return ProblemSetup(
            name, shape, classes, functools.partial(_tiny_model, name), nn.CrossEntropyLoss, None
        )
    import problems

    if name not in registered_problems():
        valid = ", ".join(registered_problems())
        raise ValueError(f"unknown problem {name!r}; valid problems: {valid}")
    problem = problems.get(name)
    return ProblemSetup(
        name,
        tuple(problem.input_shape),
        problem.num_classes,
        problem.model,
        problem.loss_fn,
        functools.partial(_registry_data, name),
    )


def architecture_of(name: str) -> str:
    """``"3c3d"``, ``"allcnnc"`` or the problem's own name (the tiny, MNIST and variant ones)."""
    for arch in ("3c3d", "allcnnc"):
        if name.endswith(arch):
            return arch
    return name
