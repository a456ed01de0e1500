"""A synthetic stand-in for CIFAR and (Fashion-)MNIST, learnable, generated in seconds from a seed.

Same shapes, dtype (uint8) and class counts as the real sets (``image_shape`` picks CIFAR's
``3 x 32 x 32`` or MNIST's ``1 x 28 x 28``).

Each class has a smooth, left-right symmetric colour prototype (a random ``4 x 4`` pattern
upsampled bilinearly to ``8 x 8``; symmetric so that the flip augmentation keeps the class
signal). An image is ``128 + amplitude * prototype[label] + noise`` at ``8 x 8`` with independent
Gaussian noise per pixel and channel, rounded and clamped to uint8, then upsampled (nearest,
``4 x 4`` blocks) to ``32 x 32`` (MNIST: ``7 x 7`` -> ``28 x 28``): all arithmetic happens at
low resolution, so generation is one pass over the output. Labels are balanced (each class
appears equally often, up to one). Everything is drawn on the CPU from a ``torch.Generator`` so
that a seed gives the same data on every machine; move the result to the device afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

#: Sizes of the real CIFAR sets.
CIFAR_TRAIN_SIZE = 50_000
CIFAR_TEST_SIZE = 10_000
IMAGE_SHAPE = (3, 32, 32)
#: Pixels per side of one low-resolution block (the upsampling factor).
BLOCK = 4


@dataclass(frozen=True)
class SyntheticSpec:
    """How strong the class signal and the noise are (pixel units, 0..255).

    The defaults make a task that is learnable but not trivial: a tiny conv net after 60 Adam
    steps at batch 64 reaches roughly 70 % (10 classes) / 10 % (100 classes) test accuracy.
    ``noise_resolution`` None means the image side over ``BLOCK`` (8 for CIFAR, 7 for MNIST).
    """

    amplitude: float = 12.0
    noise: float = 55.0
    prototype_resolution: int = 4
    noise_resolution: int | None = None


def class_prototypes(
    num_classes: int,
    generator: torch.Generator,
    resolution: int = 4,
    size: int = 8,
    channels: int = IMAGE_SHAPE[0],
) -> Tensor:
    """Smooth, horizontally symmetric unit-variance patterns ``[classes, channels, size, size]``."""
    low = torch.randn(num_classes, channels, resolution, resolution, generator=generator)
    low = 0.5 * (low + low.flip(-1))
    up = torch.nn.functional.interpolate(
        low, size=(size, size), mode="bilinear", align_corners=True
    )
    return up / up.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)


def balanced_labels(n: int, num_classes: int, generator: torch.Generator) -> Tensor:
    """Return ``n`` labels, each class ``n // num_classes`` or one more times, in random order."""
    labels = torch.arange(n) % num_classes
    return labels[torch.randperm(n, generator=generator)]


def _images(
    labels: Tensor,
    prototypes: Tensor,
    generator: torch.Generator,
    spec: SyntheticSpec,
    image_shape: tuple[int, int, int],
) -> Tensor:
    """Low-resolution images (prototype + noise), then one nearest-neighbour upsampling copy."""
    n = labels.numel()
    c, h, w = image_shape
    r = prototypes.shape[-1]
    low = torch.randn(n, c, r, r, generator=generator).mul_(spec.noise)
    low = low.add_(prototypes[labels], alpha=spec.amplitude).add_(128.0)
    low = low.round_().clamp_(0, 255).to(torch.uint8)
    # nearest upsampling, width then height (two simple copies beat one 6-d strided copy)
    wide = low.unsqueeze(-1).expand(n, c, r, r, w // r).reshape(n, c, r, w)
    return wide.unsqueeze(3).expand(n, c, r, h // r, w).reshape(n, c, h, w)


def synthetic_arrays(
    num_classes: int,
    seed: int = 0,
    n_train: int = CIFAR_TRAIN_SIZE,
    n_test: int = CIFAR_TEST_SIZE,
    spec: SyntheticSpec | None = None,
    image_shape: tuple[int, int, int] = IMAGE_SHAPE,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Generate a CIFAR- (or MNIST-) shaped synthetic data set on the CPU.

    Args:
        num_classes: 10 or 100 (any positive number works).
        seed: Determines the data completely.
        n_train: Training images (CIFAR: 50,000).
        n_test: Test images (CIFAR: 10,000).
        spec: Signal and noise strengths.
        image_shape: ``(C, H, W)``; ``H`` and ``W`` must be multiples of the noise resolution
            (MNIST: ``(1, 28, 28)``).

    Returns:
        ``(x_train, y_train, x_test, y_test)``: uint8 ``[N, C, H, W]`` and int64 ``[N]``.

    """
    if num_classes < 1 or n_train < 0 or n_test < 0:
        raise ValueError(
            f"need num_classes >= 1 and non-negative sizes, got {num_classes}, {n_train}, {n_test}"
        )
    spec = spec or SyntheticSpec()
    c, h, w = image_shape
    r = spec.noise_resolution or h // BLOCK
    if h % r or w % r:
        raise ValueError(f"image size {h} x {w} is not a multiple of the noise resolution {r}")
    gen = torch.Generator().manual_seed(int(seed))
    prototypes = class_prototypes(num_classes, gen, spec.prototype_resolution, r, c)
    y_train = balanced_labels(n_train, num_classes, gen)
    y_test = balanced_labels(n_test, num_classes, gen)
    x_train = _images(y_train, prototypes, gen, spec, image_shape)
    x_test = _images(y_test, prototypes, gen, spec, image_shape)
    return x_train, y_train, x_test, y_test
