"""The overhead benchmark's problem setup covers every registered problem and the variants."""

import pytest
import torch

import problems
from bench.overhead import problem_setup as overhead_setup


def test_registered_problems_are_the_six_and_the_variants():
    listed = overhead_setup.registered_problems()
    assert listed == (*problems.names(), *problems.VARIANTS)
    assert {"mnist_logreg", "fmnist_2c2d", "cifar10_3c3dsig"} <= set(listed)


@pytest.mark.parametrize("name", ["mnist_logreg", "fmnist_2c2d", "cifar10_3c3dsig", "cifar10_3c3d"])
def test_setup_uses_the_problems_own_input_shape_and_the_model_accepts_its_batches(name):
    setup = overhead_setup.problem_setup(name)
    problem = problems.get(name)
    assert setup.input_shape == tuple(problem.input_shape)
    (x, y), _ = setup.staged_batches(2, torch.device("cpu"))
    assert x.shape == (2, *problem.input_shape)
    torch.manual_seed(0)
    out = setup.model_fn()(x)
    assert out.shape == (2, problem.num_classes)
    assert torch.isfinite(setup.loss_fn()(out, y))


def test_mnist_batches_are_one_channel_28x28():
    setup = overhead_setup.problem_setup("mnist_logreg")
    (x, _), _ = setup.staged_batches(3, torch.device("cpu"))
    assert x.shape == (3, 1, 28, 28)


def test_unknown_problem_lists_the_variants_too():
    with pytest.raises(ValueError, match="cifar10_3c3dsig"):
        overhead_setup.problem_setup("cifar10_3c3dtanh")
