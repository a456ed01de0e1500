"""A synthetic stand-in for CIFAR, learnable and generated in about a second from a seed.

Same shapes, dtype (uint8) and class counts as the real sets.

Each class has a smooth, left-right symmetric colour prototype (a random ``4 x 4`` pattern
upsampled bilinearly to ``32 x 32``; symmetric so that the flip augmentation keeps the class
signal). An image is ``128 + amplitude * prototype[label] + noise``, where the noise is a random
``8 x 8`` pattern per image, upsampled (nearest) to ``32 x 32`` to keep generation cheap, then
rounded and clamped to uint8. Labels are balanced (each class appears equally often, up to one).
Everything is drawn on the CPU from a ``torch.Generator`` so that a seed gives the same data on
every machine; move the result to the device afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

#: Sizes of the real CIFAR sets.
CIFAR_TRAIN_SIZE = 50_000
CIFAR_TEST_SIZE = 10_000
IMAGE_SHAPE = (3, 32, 32)

#: Images generated per chunk (bounds the float32 temporaries to ~60 MB).
_CHUNK = 5_000


@dataclass(frozen=True)
class SyntheticSpec:
    """How strong the class signal and the noise are (pixel units, 0..255)."""

    amplitude: float = 45.0
    noise: float = 35.0
    prototype_resolution: int = 4
    noise_resolution: int = 8


def class_prototypes(num_classes: int, generator: torch.Generator, resolution: int = 4) -> Tensor:
    """Smooth, horizontally symmetric unit-variance patterns ``[num_classes, 3, 32, 32]``."""
    low = torch.randn(num_classes, *IMAGE_SHAPE[:1], resolution, resolution, generator=generator)
    low = 0.5 * (low + low.flip(-1))
    up = torch.nn.functional.interpolate(
        low, size=IMAGE_SHAPE[1:], mode="bilinear", align_corners=True
    )
    return up / up.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)


def balanced_labels(n: int, num_classes: int, generator: torch.Generator) -> Tensor:
    """``n`` labels, each class ``n // num_classes`` or one more times, in random order."""
    labels = torch.arange(n) % num_classes
    return labels[torch.randperm(n, generator=generator)]


def _images(
    labels: Tensor, prototypes: Tensor, generator: torch.Generator, spec: SyntheticSpec
) -> Tensor:
    n = labels.numel()
    c, h, w = IMAGE_SHAPE
    r = spec.noise_resolution
    # class images in int16 pixel units; per-image noise broadcast over r x r blocks (no copy)
    base = (128.0 + spec.amplitude * prototypes).round_().to(torch.int16)
    base = base.view(-1, c, r, h // r, r, w // r)
    out = torch.empty(n, c, h, w, dtype=torch.uint8)
    for start in range(0, n, _CHUNK):
        y = labels[start : start + _CHUNK]
        noise = torch.randn(y.numel(), c, r, 1, r, 1, generator=generator)
        noise = noise.mul_(spec.noise).round_().to(torch.int16)
        x = base[y] + noise
        out[start : start + _CHUNK] = x.clamp_(0, 255).view(-1, c, h, w).to(torch.uint8)
    return out


def synthetic_arrays(
    num_classes: int,
    seed: int = 0,
    n_train: int = CIFAR_TRAIN_SIZE,
    n_test: int = CIFAR_TEST_SIZE,
    spec: SyntheticSpec | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Generate a CIFAR-shaped synthetic data set on the CPU.

    Args:
        num_classes: 10 or 100 (any positive number works).
        seed: Determines the data completely.
        n_train: Training images (CIFAR: 50,000).
        n_test: Test images (CIFAR: 10,000).
        spec: Signal and noise strengths.

    Returns:
        ``(x_train, y_train, x_test, y_test)``: uint8 ``[N, 3, 32, 32]`` and int64 ``[N]``.

    """
    if num_classes < 1 or n_train < 0 or n_test < 0:
        raise ValueError(
            f"need num_classes >= 1 and non-negative sizes, got {num_classes}, {n_train}, {n_test}"
        )
    spec = spec or SyntheticSpec()
    gen = torch.Generator().manual_seed(int(seed))
    prototypes = class_prototypes(num_classes, gen, spec.prototype_resolution)
    y_train = balanced_labels(n_train, num_classes, gen)
    y_test = balanced_labels(n_test, num_classes, gen)
    x_train = _images(y_train, prototypes, gen, spec)
    x_test = _images(y_test, prototypes, gen, spec)
    return x_train, y_train, x_test, y_test
