"""Data for the problems: the real sources, the synthetic source and the DeepOBS protocol.

Entry points::

    data = load_problem_data(problems.get("cifar10_3c3d"), source="real", device="cuda")
    for x, y in data.train(): ...          # one augmented, reshuffled epoch (312 steps at 128)
    data = load_problem_data("fmnist_2c2d", source="real")   # 390 steps of 128, [0, 1] images
    is_cached("cifar10")                   # whether `curvbench data download cifar10` has run
    download("mnist")                      # fetch, md5-verify, parse and cache the IDX files

Sources: ``real`` is the problem's cached real data set (CIFAR-10/100, MNIST, Fashion-MNIST);
``cifar`` and ``mnist`` name the same for their family only (``cifar`` for an MNIST problem is an
error); ``synthetic`` is generated from the seed with the data set's shapes and class count.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from problems.data import cifar, mnist
from problems.data.augment import NORMALIZATION, normalization_tensors
from problems.data.cifar import load_cifar, resolve_dataset
from problems.data.datasets import (
    DATASETS,
    DatasetInfo,
    dataset_info,
    download,
    is_cached,
    load_real,
)
from problems.data.errors import (
    ChecksumError,
    DataError,
    DataNotFoundError,
    DownloadError,
    UnknownDatasetError,
)
from problems.data.fetch import data_dir
from problems.data.mnist import load_mnist
from problems.data.splits import DeepOBSData, deepobs_split
from problems.data.synthetic import synthetic_arrays

#: ``real``: the problem's real data; ``cifar`` / ``mnist``: the same, for that family only
#: (the first two in their historical order, which error messages list).
SOURCES = ("cifar", "synthetic", "mnist", "real")

__all__ = [
    "DATASETS",
    "NORMALIZATION",
    "SOURCES",
    "ChecksumError",
    "DataError",
    "DataNotFoundError",
    "DatasetInfo",
    "DeepOBSData",
    "DownloadError",
    "UnknownDatasetError",
    "cifar",
    "data_dir",
    "dataset_info",
    "deepobs_split",
    "download",
    "is_cached",
    "load_cifar",
    "load_mnist",
    "load_problem_data",
    "load_real",
    "mnist",
    "normalization_tensors",
    "resolve_dataset",
    "synthetic_arrays",
]


def _problem_attrs(problem: Any) -> tuple[DatasetInfo, int, int | None]:
    """Return ``(data set, classes, default batch size)`` of a problem object or a name."""
    if isinstance(problem, str):
        info = dataset_info(problem)
        return info, info.num_classes, None
    info = dataset_info(problem.dataset)
    return info, int(problem.num_classes), getattr(problem, "batch_size", None)


def load_problem_data(
    problem: Any,
    source: str = "real",
    seed: int = 42,
    root: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    batch_size: int | None = None,
    train_eval_size: int = 10_000,
    *,
    valid_size: int | None = None,
    n_train: int | None = None,
    n_test: int | None = None,
    augment: bool | None = None,
    normalization: str | None = None,
) -> DeepOBSData:
    """Load the DeepOBS data of a problem onto ``device``.

    Args:
        problem: A problem (attributes ``dataset``, ``batch_size``) or a data set / problem name.
        source: ``real`` (the cached real data; see ``download``), ``cifar`` / ``mnist`` (the
            same, refused for a data set of the other family) or ``synthetic`` (generated from
            ``seed``; same shapes, dtype and class counts).
        seed: Seeds the train/valid split, the shuffles and the augmentation (and the
            synthetic images).
        root: Data directory of the real source (default ``$CURVBENCH_DATA`` or the user cache).
        device: Where the uint8 data set, the batches and the generator live.
        batch_size: Default: the problem's (128 when only a name is given).
        train_eval_size: Images per train_eval evaluation (DeepOBS 10,000).
        valid_size: Held-out images (default ``train_eval_size`` as in DeepOBS, capped at a
            fifth of the training images for small ``n_train``).
        n_train: Use only this many training images (synthetic: generate this many). For
            smoke runs; default all (50,000 CIFAR, 60,000 MNIST).
        n_test: Likewise for the test set (default 10,000).
        augment: Augment train and train_eval batches (default DeepOBS's: CIFAR yes, MNIST no).
        normalization: Data set whose normalisation constants to use, or ``"none"`` (default
            DeepOBS's: the data set's own for CIFAR, none for (Fashion-)MNIST).

    Raises:
        DataNotFoundError: A real source and the data set is not cached (the message says how
            to get it).
        ValueError: Unknown source, a family source for the other family, or sizes that leave a
            loader without a full batch.

    """
    info, num_classes, default_bs = _problem_attrs(problem)
    batch_size = int(batch_size or default_bs or 128)
    if source not in SOURCES:
        raise ValueError(f"unknown data source {source!r}; valid: {', '.join(SOURCES)}")
    if source == "synthetic":
        x_train, y_train, x_test, y_test = synthetic_arrays(
            num_classes,
            seed,
            n_train=info.train_size if n_train is None else n_train,
            n_test=info.test_size if n_test is None else n_test,
            image_shape=info.image_shape,
        )
    else:
        if source != "real" and source != info.source:
            raise ValueError(
                f"data source {source!r} does not serve {info.name} (its source is "
                f"{info.source!r}); use source='real' or {info.source!r}"
            )
        x_train, y_train, x_test, y_test = load_real(info.name, root)
        x_train, y_train = x_train[:n_train], y_train[:n_train]
        x_test, y_test = x_test[:n_test], y_test[:n_test]
    if valid_size is None:  # DeepOBS: train_eval_size; at most a fifth (10k of 50k) for subsets
        valid_size = min(train_eval_size, x_train.shape[0] // 5)
    return DeepOBSData(
        x_train,
        y_train,
        x_test,
        y_test,
        dataset=info.name,
        num_classes=num_classes,
        batch_size=batch_size,
        seed=seed,
        device=device,
        valid_size=valid_size,
        train_eval_size=train_eval_size,
        augment=info.augment if augment is None else augment,
        normalization=normalization or info.normalization,
        source=info.source if source == "real" else source,
    )
