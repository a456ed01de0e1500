"""Step time of each curvature optimizer relative to SGD (momentum), in one process, interleaved.

A *step* is what the training loop does per batch: ``zero_grad``, forward, loss, backward (with
the curvature quantity switched on) and the optimizer step (running mean, damped inverses every
step, preconditioning). Rounds interleave the methods (one step each, in a rotating order) so that
machine drift hits all alike; the result is the median step time of each method divided by the
median SGD-momentum step time. Devices are synchronised before every clock read.

    curvbench gridsearch steptime --problems cifar10_3c3d cifar100_allcnnc --batch-size 32
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch

DEFAULT_METHODS = ("Momentum", "Adam", "DiagGGNExact", "DiagGGNMC", "KFAC", "KFLR")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step_fn(problem: Any, method: str, device: torch.device, x, y, backend: str):
    from extensions.optimizers import ALL_CURVATURES, loss_and_curvature, make_optimizer

    torch.manual_seed(0)
    model = problem.model().to(device)
    loss_fn = problem.loss_fn()
    damping = 1e-2 if method in ALL_CURVATURES else None
    opt = make_optimizer(method, problem.l2_groups(model), 1e-3, damping)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        if method in ALL_CURVATURES:
            _, curvature = loss_and_curvature(model, loss_fn, x, y, method, backend)
            opt.step(curvature)
        else:
            loss_fn(model(x), y).backward()
            opt.step()

    return step


def measure(
    problem_names: Sequence[str],
    methods: Sequence[str] = DEFAULT_METHODS,
    *,
    batch_size: int = 32,
    rounds: int = 5,
    device: str = "cpu",
    backend: str = "auto",
) -> list[dict[str, Any]]:
    """Measure median step times and their ratio to SGD-momentum per problem and method.

    Args:
        problem_names: problems (any; the input is random of the problem's input shape).
        methods: methods to time; ``Momentum`` is the reference and always included.
        batch_size: the batch size.
        rounds: timed rounds (after one warm-up round).
        device: where to run.
        backend: curvature backend (``auto``, ``ours``, ``backpack``).

    Returns:
        Rows ``{problem, method, batch_size, device, rounds, median_s, ratio_to_sgd}``.

    """
    from tqdm.auto import tqdm

    import problems

    dev = torch.device(device)
    methods = ["Momentum", *[m for m in methods if m != "Momentum"]]
    rows = []
    for name in problem_names:
        problem = problems.get(name)
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(batch_size, *problem.input_shape, generator=gen).to(dev)
        y = torch.randint(0, problem.num_classes, (batch_size,), generator=gen).to(dev)
        steps = {m: _step_fn(problem, m, dev, x, y, backend) for m in methods}
        times: dict[str, list[float]] = {m: [] for m in methods}
        for r in tqdm(range(rounds + 1), desc=f"steptime {name}", unit="round"):
            order = methods[r % len(methods) :] + methods[: r % len(methods)]
            for m in order:
                _sync(dev)
                start = time.perf_counter()
                steps[m]()
                _sync(dev)
                if r > 0:  # round 0 warms up
                    times[m].append(time.perf_counter() - start)
        sgd = statistics.median(times["Momentum"])
        for m in methods:
            med = statistics.median(times[m])
            rows.append(
                dict(problem=name, method=m, batch_size=batch_size, device=str(dev),
                     rounds=rounds, median_s=med, ratio_to_sgd=med / sgd)
            )  # fmt: skip
    return rows
