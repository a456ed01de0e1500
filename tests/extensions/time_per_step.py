"""Per-step usage patterns vs one long ``collect`` context (a timing script, not a test).

Run: ``PYTHONPATH=. python tests/extensions/time_per_step.py [--rounds 7] [--quantity BatchGrad]``

3C3D (``problems.get("cifar10_3c3d")``), N=128, synthetic tensors. Per round, interleaved: a plain
gradient step, ``res = extensions.compute(...)`` per step, ``with collect(...)`` per step, and a
step inside one long-lived context. Prints the median step time of each and its ratio to the
plain gradient, as wall-clock and as this process's CPU time (``time.process_time``: robust to
other processes on a shared machine; page faults of fresh buffers count as system CPU time),
plus the minor page faults per step (``getrusage``; load-independent: what buffer reuse saves).
"""

from __future__ import annotations

import argparse
import resource
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
    names = [*patterns, "long context"]
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    faults: dict[str, list[float]] = {name: [] for name in names}

    def timed(name: str, fn) -> None:
        fn()  # warm-up of this pattern in this round
        t0, c0 = time.perf_counter(), time.process_time()
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(args.steps):
            fn()
        faults[name].append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / args.steps)
        times[name].append((time.perf_counter() - t0) / args.steps)
        cpu[name].append((time.process_time() - c0) / args.steps)

    for _ in range(args.rounds):
        for name, fn in patterns.items():
            timed(name, fn)
        held.clear()
        with long_ctx as _:
            timed("long context", long_step)
        long_ctx = extensions.collect(model, loss_fn, q)
    base, cpu_base = statistics.median(times["grad"]), statistics.median(cpu["grad"])
    for name in names:
        wall, proc = statistics.median(times[name]), statistics.median(cpu[name])
        print(
            f"{q:10s} {name:14s} wall {wall * 1e3:8.1f} ms {wall / base:5.2f}x   "
            f"cpu {proc * 1e3:8.1f} ms {proc / cpu_base:5.2f}x   "
            f"page faults {statistics.median(faults[name]):9.0f}"
        )


if __name__ == "__main__":
    main()
