"""The data sets the problems use, what DeepOBS does with each, and which real source serves it.

============  ========  =======  ===========  ===========  =========================
data set      source    classes  image        train/test   DeepOBS preprocessing
============  ========  =======  ===========  ===========  =========================
``cifar10``   cifar     10       3 x 32 x 32  50k / 10k    augment + normalise
``cifar100``  cifar     100      3 x 32 x 32  50k / 10k    augment + normalise
``mnist``     mnist     10       1 x 28 x 28  60k / 10k    ``ToTensor`` only ([0, 1])
``fmnist``    mnist     10       1 x 28 x 28  60k / 10k    ``ToTensor`` only ([0, 1])
============  ========  =======  ===========  ===========  =========================

(DeepOBS 1.1.2's PyTorch ``mnist`` / ``fmnist`` data sets use ``transforms.ToTensor()`` and no
augmentation; ``cifar10`` / ``cifar100`` augment the training data and normalise everything.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import Tensor

from problems.data import cifar, mnist
from problems.data.fetch import lookup_dataset


@dataclass(frozen=True)
class DatasetInfo:
    """What defines a data set for the data layer.

    Attributes:
        name: Canonical name (``cifar10``, ``cifar100``, ``mnist``, ``fmnist``).
        source: The real source that serves it (``cifar`` or ``mnist``).
        num_classes: Number of classes.
        image_shape: ``(C, H, W)``.
        train_size: Images in the official training set.
        test_size: Images in the official test set.
        augment: Whether DeepOBS augments its training batches.
        normalization: Its normalisation constants (``augment.NORMALIZATION``), or ``"none"``.

    """

    name: str
    source: str
    num_classes: int
    image_shape: tuple[int, int, int]
    train_size: int
    test_size: int
    augment: bool
    normalization: str


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo("cifar10", "cifar", 10, cifar.IMAGE_SHAPE, 50_000, 10_000, True, "cifar10"),
        DatasetInfo("cifar100", "cifar", 100, cifar.IMAGE_SHAPE, 50_000, 10_000, True, "cifar100"),
        DatasetInfo("mnist", "mnist", 10, mnist.IMAGE_SHAPE, 60_000, 10_000, False, "none"),
        DatasetInfo("fmnist", "mnist", 10, mnist.IMAGE_SHAPE, 60_000, 10_000, False, "none"),
    )
}

#: real source name -> its module (``download``, ``is_cached``, ``load``)
REAL_SOURCES: dict[str, ModuleType] = {"cifar": cifar, "mnist": mnist}


def dataset_info(name: str) -> DatasetInfo:
    """Look up a data set by its name or a problem name (``fmnist_2c2d`` -> fmnist).

    Raises:
        UnknownDatasetError: The message lists the valid names.

    """
    return lookup_dataset(DATASETS, name, "cifar10_3c3d or mnist_logreg")


def _source_module(name: str) -> ModuleType:
    return REAL_SOURCES[dataset_info(name).source]


def is_cached(dataset: str, root: str | os.PathLike | None = None) -> bool:
    """Whether a verified, complete cache of ``dataset`` (any real source) exists."""
    return _source_module(dataset).is_cached(dataset, root)


def download(dataset: str, root: str | os.PathLike | None = None, **options: Any) -> Path:
    """Fetch, verify, parse and cache ``dataset`` with its real source's ``download``.

    Args:
        dataset: A data set or problem name.
        root: Data directory.
        **options: The source's options (``force``, ``base_url``, ``progress``, ``timeout``;
            CIFAR's ``md5``, MNIST's ``md5s``).

    Returns:
        The cache file.

    """
    return _source_module(dataset).download(dataset, root, **options)


def load_real(
    dataset: str, root: str | os.PathLike | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Load the cached ``(x_train, y_train, x_test, y_test)`` of ``dataset`` (CPU, uint8/int64).

    Raises:
        DataNotFoundError: No valid cache; the message says how to get one.

    """
    return _source_module(dataset).load(dataset_info(dataset).name, root)
