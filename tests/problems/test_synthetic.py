"""The synthetic source: CIFAR's shapes, dtype and class counts, deterministic, and learnable."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from problems.data import load_problem_data, synthetic_arrays


@pytest.mark.parametrize("num_classes", [10, 100], ids=["cifar10", "cifar100"])
def test_shapes_dtypes_and_balanced_classes(num_classes):
    x_train, y_train, x_test, y_test = synthetic_arrays(
        num_classes, seed=0, n_train=3000, n_test=700
    )
    assert x_train.shape == (3000, 3, 32, 32) and x_test.shape == (700, 3, 32, 32)
    assert x_train.dtype == x_test.dtype == torch.uint8
    assert y_train.dtype == y_test.dtype == torch.int64
    counts = torch.bincount(y_train, minlength=num_classes)
    assert counts.numel() == num_classes and counts.max() - counts.min() <= 1
    assert counts.min() == 3000 // num_classes
    assert x_train.float().std() > 20  # images are not constant


def test_default_sizes_are_cifars():
    x_train, y_train, x_test, y_test = synthetic_arrays(10, seed=0)
    assert (x_train.shape[0], y_train.shape[0], x_test.shape[0], y_test.shape[0]) == (
        50_000,
        50_000,
        10_000,
        10_000,
    )


def test_deterministic_from_the_seed():
    a = synthetic_arrays(10, seed=3, n_train=500, n_test=100)
    b = synthetic_arrays(10, seed=3, n_train=500, n_test=100)
    c = synthetic_arrays(10, seed=4, n_train=500, n_test=100)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[1], c[1])


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="num_classes"):
        synthetic_arrays(0)


def test_same_object_type_as_real_data():
    data = load_problem_data("cifar10_3c3d", source="synthetic", n_train=1000, n_test=200)
    assert type(data).__name__ == "DeepOBSData" and data.source == "synthetic"
    assert (data.n_train, data.n_valid, data.n_test, data.batch_size) == (800, 200, 200, 128)


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_learnable_a_short_run_lowers_the_loss(dataset):
    """A tiny conv net, 60 Adam steps on augmented batches: loss falls, test accuracy > chance."""
    data = load_problem_data(
        dataset, source="synthetic", seed=0, batch_size=64, n_train=4000, n_test=500
    )
    torch.manual_seed(0)
    c = data.num_classes
    model = nn.Sequential(nn.Conv2d(3, 16, 4, 4), nn.ReLU(), nn.Flatten(), nn.Linear(1024, c))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        x, y = data.sample_train_batch()
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 0.4, (first, last)  # random labels: a drop of ~0.1 at most
    with torch.no_grad():
        acc = torch.cat([(model(x).argmax(1) == y).float() for x, y in data.test()]).mean()
    assert acc > 3.0 / data.num_classes


# ---- the (Fashion-)MNIST twin ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["mnist_logreg", "fmnist_2c2d"])
def test_mnist_twin_has_deepobs_sizes_and_the_unscaled_format(name):
    data = load_problem_data(name, source="synthetic", seed=0)
    assert (data.n_train, data.n_valid, data.n_test, data.batch_size) == (
        50_000,
        10_000,
        10_000,
        128,
    )
    assert data.train_steps == 390  # gridsearch spec §5.2
    assert data.x_train.shape[1:] == (1, 28, 28) and data.x_train.dtype == torch.uint8
    assert data.augment is False and data.num_classes == 10
    x, _ = next(iter(data.test()))
    assert torch.equal(x, data.x_test[:128].float() / 255)  # [0, 1], not normalised


def test_mnist_twin_is_deterministic_and_balanced():
    a = synthetic_arrays(10, seed=3, n_train=500, n_test=100, image_shape=(1, 28, 28))
    b = synthetic_arrays(10, seed=3, n_train=500, n_test=100, image_shape=(1, 28, 28))
    c = synthetic_arrays(10, seed=4, n_train=500, n_test=100, image_shape=(1, 28, 28))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[0], c[0])
    counts = torch.bincount(a[1], minlength=10)
    assert counts.min() == counts.max() == 50
    with pytest.raises(ValueError, match="multiple"):
        synthetic_arrays(10, n_train=4, n_test=4, image_shape=(1, 30, 30))


def test_mnist_twin_is_learnable_by_the_logistic_regression():
    """mnist_logreg itself, 60 Adam steps: the loss falls and test accuracy beats chance."""
    import problems

    problem = problems.get("mnist_logreg")
    data = problem.data("synthetic", seed=0, batch_size=64, n_train=4000, n_test=500)
    model = problem.model()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        x, y = data.sample_train_batch()
        loss = problem.loss_fn()(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 0.4, (first, last)
    with torch.no_grad():
        acc = torch.cat([(model(x).argmax(1) == y).float() for x, y in data.test()]).mean()
    assert acc > 3.0 / data.num_classes
