"""The test problems: DeepOBS's CIFAR-10/100, MNIST and Fashion-MNIST nets, from standard modules.

3C3D and All-CNN-C on CIFAR, the logistic regression on MNIST and 2C2D on Fashion-MNIST::

    import problems
    problems.names()                      # ('cifar10_3c3d', ..., 'mnist_logreg', 'fmnist_2c2d')
    problems.VARIANTS                     # ('cifar10_3c3dsig',): get() accepts them too
    problem = problems.get("cifar10_3c3d")
    torch.manual_seed(42)
    model = problem.model()               # DeepOBS's initial weights for seed 42
    loss = problem.loss_fn()(model(x), y) + problem.l2_penalty(model)

Data (``problem.data(...)``) lives in ``problems.data`` and is imported only when asked for.
"""

from problems.registry import PROBLEMS, VARIANTS, CifarProblem, ImageProblem, get, names

__all__ = ["PROBLEMS", "VARIANTS", "CifarProblem", "ImageProblem", "get", "names"]
