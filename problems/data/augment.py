"""DeepOBS's CIFAR augmentation on batches of uint8 images, vectorised, on the images' device.

The torchvision pipeline DeepOBS applies per PIL image (``Pad(2)``, ``RandomCrop(32)``,
``RandomHorizontalFlip()``, ``ColorJitter(brightness=63/255, contrast=[0.2, 1.8],
saturation=[0.5, 1.5])``, ``ToTensor()``, ``Normalize(mean, std)``) rebuilt as a handful of
batched tensor operations: one gather does pad + crop + flip, and the three jitter operations,
applied in a random order per image, are three passes of one unified blend. No per-image Python
loop, no PIL, no torchvision; every random draw comes from an explicit ``torch.Generator`` on the
images' device, so nothing leaves the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

#: Per-channel normalisation constants (DeepOBS ``datasets/cifar10.py`` and ``cifar100.py``).
#: DeepOBS does not normalise (Fashion-)MNIST (``ToTensor`` only): ``NO_NORMALIZATION``.
NORMALIZATION: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "cifar10": (
        (0.49139968, 0.48215841, 0.44653091),
        (0.24703223, 0.24348513, 0.26158784),
    ),
    "cifar100": (
        (0.50707516, 0.48654887, 0.44091784),
        (0.26733429, 0.25643846, 0.27615047),
    ),
}
#: The ``normalization`` value that means "scale to [0, 1] only".
NO_NORMALIZATION = "none"

#: torchvision's ITU-R 601-2 luma weights (``rgb_to_grayscale`` on float tensors).
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)

#: Indices of the jitter operations in an order tensor.
BRIGHTNESS, CONTRAST, SATURATION = 0, 1, 2


@dataclass(frozen=True)
class JitterRanges:
    """Uniform ranges of the ColorJitter factors (DeepOBS: brightness 63/255, the others fixed)."""

    brightness: tuple[float, float] = (1.0 - 63.0 / 255.0, 1.0 + 63.0 / 255.0)
    contrast: tuple[float, float] = (0.2, 1.8)
    saturation: tuple[float, float] = (0.5, 1.5)


DEEPOBS_JITTER = JitterRanges()
PAD = 2


@dataclass
class AugmentParams:
    """The random draws of one augmented batch (all tensors on the batch's device).

    Attributes:
        dy: Crop row offsets into the padded image, ``[B]`` int64 in ``[0, 2 * pad]``.
        dx: Crop column offsets, ``[B]`` int64 in ``[0, 2 * pad]``.
        flip: Whether to mirror each image horizontally, ``[B]`` bool.
        factors: Jitter factors ``[B, 3]`` (brightness, contrast, saturation).
        order: The order of the jitter ops per image, ``[B, 3]`` int64, a permutation of 0, 1, 2.

    """

    dy: Tensor
    dx: Tensor
    flip: Tensor
    factors: Tensor
    order: Tensor


def _uniform(n: int, low: float, high: float, generator: torch.Generator, device) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, device=device)


def draw_params(
    batch_size: int,
    generator: torch.Generator,
    device: torch.device | str,
    pad: int = PAD,
    jitter: JitterRanges = DEEPOBS_JITTER,
) -> AugmentParams:
    """Draw crop offsets, flips, jitter factors and jitter orders for a batch.

    Args:
        batch_size: Number of images.
        generator: The random source; must live on ``device``.
        device: Where the parameters are created.
        pad: Zero padding on each side before the crop (the crop shifts by at most ``pad``).
        jitter: Uniform ranges of the three jitter factors.

    Returns:
        The parameters, all on ``device``.

    """
    offsets = torch.randint(0, 2 * pad + 1, (2, batch_size), generator=generator, device=device)
    flip = torch.rand(batch_size, generator=generator, device=device) < 0.5
    factors = torch.stack(
        [
            _uniform(batch_size, *jitter.brightness, generator, device),
            _uniform(batch_size, *jitter.contrast, generator, device),
            _uniform(batch_size, *jitter.saturation, generator, device),
        ],
        dim=1,
    )
    # a uniform random permutation of (0, 1, 2) per image: argsort of i.i.d. uniforms
    order = torch.rand(batch_size, 3, generator=generator, device=device).argsort(dim=1)
    return AugmentParams(offsets[0], offsets[1], flip, factors, order)


def crop_flip(images: Tensor, dy: Tensor, dx: Tensor, flip: Tensor, pad: int = PAD) -> Tensor:
    """Zero-pad by ``pad``, crop back to the input size at ``(dy, dx)``, mirror where ``flip``.

    Equivalent to torchvision's ``Pad(pad)``, ``RandomCrop(size)`` with top-left corner
    ``(dy, dx)`` in the padded image and ``RandomHorizontalFlip`` (flip after crop). All
    ``(2 pad + 1)^2`` crops of the padded image and of its mirror image are strided views
    (``unfold``); one indexing op picks each image's crop from them. Mirroring the crop
    at column offset ``dx`` equals cropping the mirrored padded image at ``2 pad - dx``.

    Args:
        images: ``[B, C, H, W]``, any dtype.
        dy: ``[B]`` row offsets in ``[0, 2 * pad]``.
        dx: ``[B]`` column offsets in ``[0, 2 * pad]``.
        flip: ``[B]`` bool.
        pad: Padding on each side.

    Returns:
        ``[B, C, H, W]``, same dtype and device as ``images``.

    """
    b, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    both = torch.stack([padded, padded.flip(-1)], dim=1)  # [B, 2, C, H + 2p, W + 2p]
    crops = both.unfold(3, h, 1).unfold(4, w, 1)  # [B, 2, C, 2p + 1, 2p + 1, H, W], a view
    col = torch.where(flip, 2 * pad - dx, dx)
    batch = torch.arange(b, device=images.device)
    return crops[batch, flip.long(), :, dy, col]


def grayscale(images: Tensor) -> Tensor:
    """Compute torchvision's ``rgb_to_grayscale`` of float images ``[B, 3, H, W]``.

    Returns:
        ``[B, 1, H, W]``: ``0.2989 r + 0.587 g + 0.114 b``.

    """
    gray = images[:, 0:1] * GRAY_WEIGHTS[0]
    gray.add_(images[:, 1:2], alpha=GRAY_WEIGHTS[1])
    return gray.add_(images[:, 2:3], alpha=GRAY_WEIGHTS[2])


def color_jitter(images: Tensor, factors: Tensor, order: Tensor) -> Tensor:
    """Brightness, contrast and saturation jitter in a per-image order (torchvision's formulas).

    Each op is a blend ``clamp(f * x + (1 - f) * t, 0, 1)`` with target ``t``: 0 (brightness),
    the mean of the grayscale image (contrast) or the grayscale image (saturation). Step ``k``
    applies, to every image at once, the blend its ``order[:, k]`` names, written as
    ``t = a * gray + c`` with per-image ``a`` (1 for saturation) and ``c`` (the grey mean for
    contrast), so one pass serves all three ops.

    Args:
        images: Float images in ``[0, 1]``, ``[B, 3, H, W]``.
        factors: ``[B, 3]`` factors (brightness, contrast, saturation).
        order: ``[B, 3]`` permutations of ``(BRIGHTNESS, CONTRAST, SATURATION)``.

    Returns:
        The jittered images, ``[B, 3, H, W]`` in ``[0, 1]``.

    """
    x = images
    for k in range(3):
        op = order[:, k : k + 1]
        f = factors.gather(1, op).view(-1, 1, 1, 1)
        keep = 1.0 - f
        gray = grayscale(x)
        a = (op == SATURATION).view(-1, 1, 1, 1).to(x.dtype) * keep
        c = (op == CONTRAST).view(-1, 1, 1, 1).to(x.dtype) * keep
        mean = gray.mean(dim=(-2, -1), keepdim=True)
        target = gray.mul_(a).add_(c * mean)  # (1 - f) * t, [B, 1, H, W]
        x = torch.addcmul(target, x, f).clamp_(0.0, 1.0)
    return x


def to_float(images: Tensor) -> Tensor:
    """uint8 ``[0, 255]`` -> float32 ``[0, 1]`` (``ToTensor``'s scaling)."""
    return images.to(torch.float32).div_(255.0)


def normalize(images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """``(x - mean) / std`` per channel; ``mean`` and ``std`` are ``[C]`` tensors."""
    return (images - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def augment(
    images: Tensor,
    generator: torch.Generator,
    mean: Tensor,
    std: Tensor,
    params: AugmentParams | None = None,
) -> Tensor:
    """DeepOBS's training augmentation for a uint8 batch, followed by normalisation.

    Args:
        images: uint8 ``[B, 3, H, W]`` on any device.
        generator: Random source on the images' device (ignored when ``params`` is given).
        mean: Per-channel mean ``[3]`` (float32, on the images' device).
        std: Per-channel std ``[3]``.
        params: Fixed random draws (for tests); drawn from ``generator`` when None.

    Returns:
        float32 ``[B, 3, H, W]``, normalised.

    """
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(
            f"augment expects uint8 images [B, 3, H, W], got {images.dtype} {list(images.shape)}"
        )
    if params is None:
        params = draw_params(images.shape[0], generator, images.device)
    x = crop_flip(images, params.dy, params.dx, params.flip)
    x = color_jitter(to_float(x), params.factors, params.order)
    return normalize(x, mean, std)


def preprocess(images: Tensor, mean: Tensor | None, std: Tensor | None) -> Tensor:
    """Preprocess without augmentation: uint8 -> float in ``[0, 1]`` -> normalised.

    ``mean`` None (``NO_NORMALIZATION``) stops after the scaling, as DeepOBS's ``ToTensor``-only
    (Fashion-)MNIST pipeline does.
    """
    if mean is None:
        return to_float(images)
    return normalize(to_float(images), mean, std)


def normalization_tensors(dataset: str, device: torch.device | str) -> tuple[Tensor, Tensor]:
    """Return the ``(mean, std)`` of ``dataset`` as float32 ``[C]`` tensors on ``device``."""
    if dataset not in NORMALIZATION:
        raise ValueError(
            f"no normalisation constants for {dataset!r}; known: {sorted(NORMALIZATION)}"
        )
    mean, std = NORMALIZATION[dataset]
    return (
        torch.tensor(mean, dtype=torch.float32, device=device),
        torch.tensor(std, dtype=torch.float32, device=device),
    )
