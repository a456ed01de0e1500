"""On-device augmentation against explicit per-image crops/flips and torchvision's written-out
ColorJitter formulas (float tensors: blend, then clamp to [0, 1] after each op)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from problems.data import augment as aug

DEVICES = [pytest.param("cpu", id="cpu")] + (
    [pytest.param("cuda", id="cuda")] if torch.cuda.is_available() else []
)

#: DeepOBS's constants, copied from deepobs/pytorch/datasets/cifar10.py and cifar100.py
DEEPOBS_CONSTANTS = {
    "cifar10": ((0.49139968, 0.48215841, 0.44653091), (0.24703223, 0.24348513, 0.26158784)),
    "cifar100": ((0.50707516, 0.48654887, 0.44091784), (0.26733429, 0.25643846, 0.27615047)),
}


def _images(b: int, device="cpu", seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, 32, 32), generator=g, dtype=torch.uint8).to(device)


def _gen(device, seed: int = 0) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


# ---- torchvision's formulas, written out (torchvision.transforms._functional_tensor) -------------


def tv_gray(img: torch.Tensor) -> torch.Tensor:
    r, g, b = img[0], img[1], img[2]
    return (0.2989 * r + 0.587 * g + 0.114 * b)[None]


def tv_blend(img1, img2, ratio):
    return (ratio * img1 + (1.0 - ratio) * img2).clamp(0, 1.0)


def tv_brightness(img, f):
    return tv_blend(img, torch.zeros_like(img), f)


def tv_contrast(img, f):
    return tv_blend(img, torch.mean(tv_gray(img), dim=(-3, -2, -1), keepdim=True), f)


def tv_saturation(img, f):
    return tv_blend(img, tv_gray(img), f)


TV_OPS = {aug.BRIGHTNESS: tv_brightness, aug.CONTRAST: tv_contrast, aug.SATURATION: tv_saturation}


# ---- crop and flip ---------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_crop_flip_matches_explicit_crops(device):
    b = 64
    x = _images(b, device)
    p = aug.draw_params(b, _gen(device), device)
    out = aug.crop_flip(x, p.dy, p.dx, p.flip)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(b):
        dy, dx = int(p.dy[i]), int(p.dx[i])
        assert 0 <= dy <= 4 and 0 <= dx <= 4  # a shift of at most 2 px
        crop = padded[i, :, dy : dy + 32, dx : dx + 32]
        expected = crop.flip(-1) if bool(p.flip[i]) else crop
        assert torch.equal(out[i], expected), i
    assert out.dtype == torch.uint8


def test_crop_offsets_cover_all_shifts():
    p = aug.draw_params(2000, _gen("cpu"), "cpu")
    for offsets in (p.dy, p.dx):
        assert sorted(offsets.unique().tolist()) == [0, 1, 2, 3, 4]


def test_flips_about_half_the_time():
    n = 4000
    flips = int(aug.draw_params(n, _gen("cpu", 3), "cpu").flip.sum())
    assert abs(flips - n / 2) < 5 * math.sqrt(n / 4)  # binomial, 5 sigma


def test_flip_is_visible_in_augmented_output():
    """With unit jitter, each augmented image equals its crop or its mirrored crop."""
    b = 256
    x = _images(b)
    p = aug.draw_params(b, _gen("cpu"), "cpu")
    p.factors = torch.ones(b, 3)
    mean, std = torch.zeros(3), torch.ones(3)
    out = aug.augment(x, None, mean, std, params=p)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2)).float() / 255
    flipped = 0
    for i in range(b):
        crop = padded[i, :, p.dy[i] : p.dy[i] + 32, p.dx[i] : p.dx[i] + 32]
        if torch.equal(out[i], crop.flip(-1)) and not torch.equal(out[i], crop):
            flipped += 1
        else:
            assert torch.equal(out[i], crop)
    assert flipped == int(p.flip.sum())


# ---- colour jitter ---------------------------------------------------------------------------


@pytest.mark.parametrize("factor", [0.3, 0.8, 1.25, 1.7])
@pytest.mark.parametrize(
    "op",
    [aug.BRIGHTNESS, aug.CONTRAST, aug.SATURATION],
    ids=["brightness", "contrast", "saturation"],
)
def test_each_jitter_op_alone_matches_torchvision(op, factor):
    b = 8
    x = _images(b).double() / 255
    factors = torch.ones(b, 3, dtype=torch.float64)
    factors[:, op] = factor
    others = [o for o in range(3) if o != op]
    order = torch.tensor([[op, *others]] * (b // 2) + [[*others, op]] * (b // 2))
    out = aug.color_jitter(x, factors, order)
    expected = torch.stack([TV_OPS[op](img, factor) for img in x])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("perm", list(itertools.permutations(range(3))), ids=str)
def test_jitter_order_matches_composed_formulas(perm):
    b = 6
    x = _images(b).double() / 255
    factors = torch.tensor([[1.2, 0.4, 1.45]] * b, dtype=torch.float64)
    out = aug.color_jitter(x, factors, torch.tensor([perm] * b))
    for i in range(b):
        img = x[i]
        for op in perm:
            img = TV_OPS[op](img, float(factors[i, op]))
        torch.testing.assert_close(out[i], img, rtol=0, atol=1e-12)
    other = aug.color_jitter(x, factors, torch.tensor([perm[::-1]] * b))
    assert not torch.allclose(out, other)  # the order matters for these factors


def test_jitter_orders_are_uniform_permutations():
    n = 6000
    order = aug.draw_params(n, _gen("cpu", 1), "cpu").order
    assert torch.equal(order.sort(dim=1).values, torch.arange(3).expand(n, 3))
    counts = torch.unique(order, dim=0, return_counts=True)[1]
    assert counts.numel() == 6
    sigma = math.sqrt(n * (1 / 6) * (5 / 6))
    assert (counts - n / 6).abs().max() < 5 * sigma


def test_jitter_factors_stay_in_deepobs_ranges():
    f = aug.draw_params(5000, _gen("cpu", 2), "cpu").factors
    ranges = [(1 - 63 / 255, 1 + 63 / 255), (0.2, 1.8), (0.5, 1.5)]
    for k, (low, high) in enumerate(ranges):
        assert low <= f[:, k].min() and f[:, k].max() <= high
        assert f[:, k].min() < low + 0.02 and f[:, k].max() > high - 0.02  # the whole range


# ---- the full pipeline ---------------------------------------------------------------------


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
@pytest.mark.parametrize("device", DEVICES)
def test_augment_shapes_dtype_range(device, dataset):
    x = _images(32, device)
    mean, std = aug.normalization_tensors(dataset, device)
    out = aug.augment(x, _gen(device), mean, std)
    assert out.shape == x.shape and out.dtype == torch.float32 and out.device == x.device
    m, s = (torch.tensor(v, device=device).view(1, 3, 1, 1) for v in DEEPOBS_CONSTANTS[dataset])
    pixels = out * s + m
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    assert not torch.equal(out, aug.augment(x, _gen(device, 1), mean, std))


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_normalisation_matches_deepobs_constants(dataset):
    x = _images(4)
    mean, std = aug.normalization_tensors(dataset, "cpu")
    m, s = (torch.tensor(v).view(1, 3, 1, 1) for v in DEEPOBS_CONSTANTS[dataset])
    expected = (x.float() / 255 - m) / s
    torch.testing.assert_close(aug.preprocess(x, mean, std), expected)
    identity = aug.AugmentParams(
        dy=torch.full((4,), 2), dx=torch.full((4,), 2), flip=torch.zeros(4, dtype=torch.bool),
        factors=torch.ones(4, 3), order=torch.arange(3).expand(4, 3),
    )  # fmt: skip
    torch.testing.assert_close(aug.augment(x, None, mean, std, params=identity), expected)


def test_same_generator_state_same_output():
    x = _images(16)
    mean, std = aug.normalization_tensors("cifar10", "cpu")
    assert torch.equal(
        aug.augment(x, _gen("cpu", 5), mean, std), aug.augment(x, _gen("cpu", 5), mean, std)
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_for_the_same_draws():
    x = _images(64)
    p = aug.draw_params(64, _gen("cpu"), "cpu")
    on = {k: v.cuda() for k, v in vars(p).items()}
    mean, std = aug.normalization_tensors("cifar10", "cpu")
    cpu = aug.augment(x, None, mean, std, params=p)
    gpu = aug.augment(x.cuda(), None, mean.cuda(), std.cuda(), params=aug.AugmentParams(**on))
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)


def test_rejects_float_input():
    mean, std = aug.normalization_tensors("cifar10", "cpu")
    with pytest.raises(ValueError, match="uint8"):
        aug.augment(torch.rand(2, 3, 32, 32), _gen("cpu"), mean, std)
    with pytest.raises(ValueError, match="cifar10"):
        aug.normalization_tensors("mnist", "cpu")
