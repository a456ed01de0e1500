"""Per-step usage patterns vs one long ``collect`` context (a timing script, not a test).

Run: ``PYTHONPATH=. python tests/extensions/time_per_step.py [--rounds 7] [--quantity BatchGrad]``

3C3D (``problems.get("cifar10_3c3d")``), N=128, synthetic tensors. Per round, interleaved: a plain
gradient step, ``res = extensions.compute(...)`` per step, ``with collect(...)`` per step, and a
step inside one long-lived context. Prints the median step time of each and its ratio to the
plain gradient.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import extensions
import problems


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=3, help="steps per pattern and round")
    parser.add_argument("--quantity", default="BatchGrad")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    torch.manual_seed(0)
    problem = problems.get("cifar10_3c3d")
    model, loss_fn = problem.model(), problem.loss_fn()
    x = torch.randn(args.batch_size, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch_size,))
    q = args.quantity
    held: dict = {}

    def grad_step() -> None:
        model.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()

    def compute_step() -> None:
        model.zero_grad(set_to_none=True)
        held["res"] = extensions.compute(model, loss_fn, x, y, q)  # the user keeps the result

    def context_step() -> None:
        model.zero_grad(set_to_none=True)
        with extensions.collect(model, loss_fn, q) as res:
            loss_fn(model(x), y).backward()
        held["res"] = res

    long_ctx = extensions.collect(model, loss_fn, q)

    def long_step() -> None:
        model.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()

    patterns = {"grad": grad_step, "compute/step": compute_step, "collect/step": context_step}
    times: dict[str, list[float]] = {name: [] for name in [*patterns, "long context"]}

    def timed(name: str, fn) -> None:
        fn()  # warm-up of this pattern in this round
        t0 = time.perf_counter()
        for _ in range(args.steps):
            fn()
        times[name].append((time.perf_counter() - t0) / args.steps)

    for _ in range(args.rounds):
        for name, fn in patterns.items():
            timed(name, fn)
        held.clear()
        with long_ctx as _:
            timed("long context", long_step)
        long_ctx = extensions.collect(model, loss_fn, q)
    base = statistics.median(times["grad"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{q:10s} {name:14s} {med * 1e3:8.1f} ms  {med / base:5.2f}x")


if __name__ == "__main__":
    main()
