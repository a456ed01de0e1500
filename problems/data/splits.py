"""The DeepOBS data protocol on uint8 tensors that live on the model's device.

``DeepOBSData`` reproduces DeepOBS's PyTorch loaders (1.2-beta code in the 1.1.2 wheel,
``deepobs/pytorch/datasets/dataset.py``, shared by its CIFAR and (Fashion-)MNIST data sets; the
latter are neither augmented nor normalised, and their 60k training images split 50k/10k):

* the 50k (CIFAR) training images are split into train and valid by Python's ``random.shuffle``
  seeded with the seed, exactly as DeepOBS's runner does (``random.seed(seed)`` then
  ``shuffle``), so the valid indices for a seed equal DeepOBS's; valid gets the first
  ``valid_size`` shuffled indices;
* ``train()``: one epoch over the train part, reshuffled every epoch, augmented (CIFAR);
* ``train_eval()``: a fresh random ``train_eval_size`` of **all** training images (valid
  included) at every call, augmented (CIFAR);
* ``valid()``: the held-out images in a fresh random order, not augmented;
* ``test()``: the test set in order, not augmented;
* ``drop_last`` everywhere (312 train steps / 78 eval batches at batch 128; 156 / 39 at 256;
  (Fashion-)MNIST at 128: 390 / 78).

All randomness after the split comes from one ``torch.Generator`` on the data's device, seeded
with the seed, so a run is reproducible on a given device type and resumable at epoch boundaries
from ``state_dict()``. Batches are gathered and augmented on the device; nothing is synchronised
with the host while iterating.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from problems.data.augment import NO_NORMALIZATION, augment, normalization_tensors, preprocess

DEFAULT_VALID_SIZE = 10_000
DEFAULT_TRAIN_EVAL_SIZE = 10_000


def deepobs_split(n: int, valid_size: int, seed: int) -> tuple[list[int], list[int]]:
    """DeepOBS's train/valid split: ``random.seed(seed); shuffle(range(n))``, valid first.

    Returns:
        ``(train_indices, valid_indices)`` as Python lists.

    """
    indices = list(range(n))
    random.Random(seed).shuffle(indices)
    return indices[valid_size:], indices[:valid_size]


class Batches:
    """A sized iterable of ``(inputs, targets)`` batches made on demand by ``make(i)``."""

    def __init__(self, num_batches: int, make: Callable[[int], tuple[Tensor, Tensor]]):
        self._num_batches = num_batches
        self._make = make

    def __len__(self) -> int:
        return self._num_batches

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for i in range(self._num_batches):
            yield self._make(i)


class DeepOBSData:
    """CIFAR-style data for one problem, split and batched the DeepOBS way, on one device.

    Args:
        x_train: uint8 ``[N, C, H, W]`` training images (any device; moved to ``device``).
        y_train: int64 ``[N]`` labels.
        x_test: uint8 test images.
        y_test: int64 test labels.
        dataset: ``cifar10``, ``cifar100``, ``mnist`` or ``fmnist`` (a name; picks the default
            normalisation constants).
        num_classes: Number of classes.
        batch_size: Batch size of every loader.
        seed: Seeds the split and the generator.
        device: Where data, batches and the generator live.
        valid_size: Held-out part of the training set (DeepOBS: ``train_eval_size``, 10,000).
        train_eval_size: Images per ``train_eval()`` evaluation.
        augment: Augment train and train_eval batches (DeepOBS: True for CIFAR; its
            augmentation is for RGB images, so 1-channel data must pass False).
        normalization: Data set whose normalisation constants to use (default ``dataset``);
            the paper's overhead benchmark used CIFAR-10's for CIFAR-100 too. ``"none"``: scale
            to ``[0, 1]`` only (DeepOBS's (Fashion-)MNIST).
        source: A label for where the images came from (``cifar``, ``mnist`` or ``synthetic``).

    """

    def __init__(
        self,
        x_train: Tensor,
        y_train: Tensor,
        x_test: Tensor,
        y_test: Tensor,
        *,
        dataset: str,
        num_classes: int,
        batch_size: int,
        seed: int = 42,
        device: torch.device | str = "cpu",
        valid_size: int = DEFAULT_VALID_SIZE,
        train_eval_size: int = DEFAULT_TRAIN_EVAL_SIZE,
        augment: bool = True,
        normalization: str | None = None,
        source: str = "cifar",
    ):
        n = x_train.shape[0]
        if augment and x_train.shape[1] != 3:
            raise ValueError(
                f"the CIFAR augmentation needs RGB images, got {x_train.shape[1]} channel(s); "
                "pass augment=False (DeepOBS does not augment (Fashion-)MNIST)"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not 0 < valid_size < n:
            raise ValueError(
                f"valid_size must lie in (0, {n}) for {n} training images, got {valid_size}"
            )
        for what, size in (
            ("train part", n - valid_size),
            ("valid_size", valid_size),
            ("train_eval_size", min(train_eval_size, n)),
            ("test set", x_test.shape[0]),
        ):
            if size < batch_size:
                raise ValueError(
                    f"batch_size {batch_size} exceeds the {what} ({size} images): no batch with "
                    "drop_last; lower the batch size or raise the sizes"
                )
        self.device = torch.device(device)
        self.dataset = dataset
        self.num_classes = int(num_classes)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.source = source
        self.augment = bool(augment)
        self.train_eval_size = min(int(train_eval_size), n)
        self.x_train = x_train.to(self.device)
        self.y_train = y_train.to(self.device, torch.int64)
        self.x_test = x_test.to(self.device)
        self.y_test = y_test.to(self.device, torch.int64)
        train_idx, valid_idx = deepobs_split(n, valid_size, self.seed)
        self.train_indices = torch.tensor(train_idx, dtype=torch.int64, device=self.device)
        self.valid_indices = torch.tensor(valid_idx, dtype=torch.int64, device=self.device)
        normalization = normalization or dataset
        self.mean, self.std = (
            (None, None)
            if normalization == NO_NORMALIZATION
            else normalization_tensors(normalization, self.device)
        )
        self.generator = torch.Generator(device=self.device).manual_seed(self.seed)
        self.epoch = 0

    # ---- sizes ------------------------------------------------------------------------------

    @property
    def n_train(self) -> int:
        """Images in the train part (DeepOBS: 40,000 for CIFAR, 50,000 for (Fashion-)MNIST)."""
        return self.train_indices.numel()

    @property
    def n_valid(self) -> int:
        """Images in the held-out part (DeepOBS: 10,000)."""
        return self.valid_indices.numel()

    @property
    def n_test(self) -> int:
        """Images in the test set."""
        return self.x_test.shape[0]

    @property
    def train_steps(self) -> int:
        """Batches per training epoch (drop_last)."""
        return self.n_train // self.batch_size

    # ---- batches ----------------------------------------------------------------------------

    def _randperm(self, n: int) -> Tensor:
        return torch.randperm(n, generator=self.generator, device=self.device)

    def _batch(self, images: Tensor, labels: Tensor, indices: Tensor, augmented: bool):
        x = images[indices]
        if augmented:
            return augment(x, self.generator, self.mean, self.std), labels[indices]
        return preprocess(x, self.mean, self.std), labels[indices]

    def _batches(self, images: Tensor, labels: Tensor, order: Tensor, augmented: bool) -> Batches:
        b = self.batch_size

        def make(i: int) -> tuple[Tensor, Tensor]:
            return self._batch(images, labels, order[i * b : (i + 1) * b], augmented)

        return Batches(order.numel() // b, make)

    def train(self) -> Batches:
        """One training epoch: the train part reshuffled, augmented; increments ``epoch``.

        The order is drawn now; each batch's augmentation when it is reached. Iterate once.
        """
        order = self.train_indices[self._randperm(self.n_train)]
        self.epoch += 1
        return self._batches(self.x_train, self.y_train, order, self.augment)

    def train_eval(self) -> Batches:
        """Draw a fresh random ``train_eval_size`` of all training images, augmented (DeepOBS)."""
        order = self._randperm(self.x_train.shape[0])[: self.train_eval_size]
        return self._batches(self.x_train, self.y_train, order, self.augment)

    def valid(self) -> Batches:
        """Iterate over the held-out images in a fresh random order, not augmented."""
        order = self.valid_indices[self._randperm(self.n_valid)]
        return self._batches(self.x_train, self.y_train, order, False)

    def test(self) -> Batches:
        """The test set in order, not augmented."""
        order = torch.arange(self.n_test, device=self.device)
        return self._batches(self.x_test, self.y_test, order, False)

    def sample_train_batch(self, batch_size: int | None = None) -> tuple[Tensor, Tensor]:
        """Fetch and augment one fresh training batch (the first batch of a reshuffled epoch).

        This is the overhead benchmark's "paper" mode: a new shuffle and augmentation per call.
        """
        b = self.batch_size if batch_size is None else int(batch_size)
        if not 0 < b <= self.n_train:
            raise ValueError(f"batch_size must lie in [1, {self.n_train}], got {b}")
        indices = self.train_indices[self._randperm(self.n_train)[:b]]
        return self._batch(self.x_train, self.y_train, indices, self.augment)

    # ---- checkpointing ----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Return the generator state and epoch counter (take it between epochs)."""
        return {
            "seed": self.seed,
            "epoch": self.epoch,
            "generator": self.generator.get_state(),
            "n_train": self.n_train,
            "n_valid": self.n_valid,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict()`` taken from data built with the same seed and sizes."""
        mine = (self.seed, self.n_train, self.n_valid)
        theirs = (state["seed"], state["n_train"], state["n_valid"])
        if mine != theirs:
            raise ValueError(
                f"state is for (seed, n_train, n_valid) = {theirs}, this data has {mine}"
            )
        self.generator.set_state(state["generator"].cpu())
        self.epoch = int(state["epoch"])

    def __repr__(self) -> str:
        return (
            f"DeepOBSData({self.dataset}, source={self.source}, batch_size={self.batch_size}, "
            f"train={self.n_train}, valid={self.n_valid}, test={self.n_test}, "
            f"device={self.device}, epoch={self.epoch})"
        )
