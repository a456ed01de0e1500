"""The test problems: DeepOBS's 3C3D and All-CNN-C on CIFAR-10/100, from standard torch modules.

    import problems
    problems.names()                      # ('cifar10_3c3d', 'cifar100_3c3d', ...)
    problem = problems.get("cifar10_3c3d")
    torch.manual_seed(42)
    model = problem.model()               # DeepOBS's initial weights for seed 42
    loss = problem.loss_fn()(model(x), y) + problem.l2_penalty(model)

Data (``problem.data(...)``) lives in ``problems.data`` and is imported only when asked for.
"""

from problems.registry import CifarProblem, get, names

__all__ = ["CifarProblem", "get", "names"]
