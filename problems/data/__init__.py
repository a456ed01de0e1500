"""CIFAR data for the problems: the real source, the synthetic source and the DeepOBS protocol.

Entry points::

    data = load_problem_data(problems.get("cifar10_3c3d"), source="cifar", device="cuda")
    for x, y in data.train(): ...          # one augmented, reshuffled epoch (312 steps at 128)
    is_cached("cifar10")                   # whether `curvbench data download cifar10` has run
"""

from __future__ import annotations

import os
from typing import Any

import torch

from problems.data.augment import NORMALIZATION, normalization_tensors
from problems.data.cifar import (
    DATASETS,
    data_dir,
    download,
    is_cached,
    load_cifar,
    resolve_dataset,
)
from problems.data.errors import (
    ChecksumError,
    DataError,
    DataNotFoundError,
    DownloadError,
    UnknownDatasetError,
)
from problems.data.splits import DeepOBSData, deepobs_split
from problems.data.synthetic import synthetic_arrays

SOURCES = ("cifar", "synthetic")

__all__ = [
    "DATASETS",
    "NORMALIZATION",
    "SOURCES",
    "ChecksumError",
    "DataError",
    "DataNotFoundError",
    "DeepOBSData",
    "DownloadError",
    "UnknownDatasetError",
    "data_dir",
    "deepobs_split",
    "download",
    "is_cached",
    "load_cifar",
    "load_problem_data",
    "normalization_tensors",
    "resolve_dataset",
    "synthetic_arrays",
]


def _problem_attrs(problem: Any) -> tuple[str, int, int | None]:
    """``(dataset, num_classes, default batch size)`` of a problem object or a name."""
    if isinstance(problem, str):
        spec = resolve_dataset(problem)
        return spec.name, spec.num_classes, None
    return problem.dataset, int(problem.num_classes), getattr(problem, "batch_size", None)


def load_problem_data(
    problem: Any,
    source: str = "cifar",
    seed: int = 42,
    root: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    batch_size: int | None = None,
    train_eval_size: int = 10_000,
    *,
    valid_size: int | None = None,
    n_train: int | None = None,
    n_test: int | None = None,
    augment: bool = True,
    normalization: str | None = None,
) -> DeepOBSData:
    """Load the DeepOBS data of a problem onto ``device``.

    Args:
        problem: A problem (attributes ``dataset``, ``num_classes``, ``batch_size``) or a
            data set / problem name.
        source: ``cifar`` (the cached real data; see ``curvbench data download``) or
            ``synthetic`` (generated from ``seed``; same shapes, dtype and class counts).
        seed: Seeds the train/valid split, the shuffles and the augmentation (and the
            synthetic images).
        root: Data directory of the real source (default ``$CURVBENCH_DATA`` or the user cache).
        device: Where the uint8 data set, the batches and the generator live.
        batch_size: Default: the problem's (128 when only a name is given).
        train_eval_size: Images per train_eval evaluation (DeepOBS 10,000).
        valid_size: Held-out images (default ``train_eval_size`` as in DeepOBS, capped at a
            fifth of the training images for small ``n_train``).
        n_train: Use only this many training images (synthetic: generate this many). For
            smoke runs; default all 50,000.
        n_test: Likewise for the test set (default 10,000).
        augment: Augment train and train_eval batches.
        normalization: Data set whose normalisation constants to use (default the problem's).

    Raises:
        DataNotFoundError: ``source="cifar"`` and the data set is not cached (the message says
            how to get it).
        ValueError: Unknown source, or sizes that leave a loader without a full batch.

    """
    dataset, num_classes, default_bs = _problem_attrs(problem)
    batch_size = int(batch_size or default_bs or 128)
    if source == "cifar":
        x_train, y_train, x_test, y_test = load_cifar(dataset, root)
        x_train, y_train = x_train[:n_train], y_train[:n_train]
        x_test, y_test = x_test[:n_test], y_test[:n_test]
    elif source == "synthetic":
        sizes = {k: v for k, v in (("n_train", n_train), ("n_test", n_test)) if v is not None}
        x_train, y_train, x_test, y_test = synthetic_arrays(num_classes, seed, **sizes)
    else:
        raise ValueError(f"unknown data source {source!r}; valid: {', '.join(SOURCES)}")
    if valid_size is None:  # DeepOBS: train_eval_size; at most a fifth (10k of 50k) for subsets
        valid_size = min(train_eval_size, x_train.shape[0] // 5)
    return DeepOBSData(
        x_train,
        y_train,
        x_test,
        y_test,
        dataset=dataset,
        num_classes=num_classes,
        batch_size=batch_size,
        seed=seed,
        device=device,
        valid_size=valid_size,
        train_eval_size=train_eval_size,
        augment=augment,
        normalization=normalization,
        source=source,
    )
