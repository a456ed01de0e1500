"""Time on-device augmentation against a cifar10_3c3d training step (target: < 10 %).

    .venv/bin/python -m bench.gridsearch.cli_augment_cost                       # CPU, 2 threads
    .venv/bin/python -m bench.gridsearch.cli_augment_cost --device cuda --rounds 50

Measures, in one process and interleaved round by round, (a) augmenting a batch of 256 uint8
images already on the device (crop + flip + jitter + normalise), (b) the same plus fetching the
batch from the uint8 data set (``DeepOBSData.sample_train_batch``: a fresh shuffle and gather, the
overhead benchmark's "paper" mode), and (c) one cifar10_3c3d training step at batch 128 (forward,
cross-entropy + L2, backward, SGD step) on the same device. Prints the median times and the
ratios (a)/(c) and (b)/(c), each as the median of the per-round ratios with its interquartile
range. Absolute times depend on the machine and its load; only the ratios are meant to be read.
Data: the synthetic source (same shapes and dtype as CIFAR), so no download is needed.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

import problems
from problems.data import load_problem_data
from problems.data.augment import augment


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Return seconds per call of ``fn``, averaged over ``repeats`` calls (synchronised on CUDA)."""
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _synchronize(device)
    return (time.perf_counter() - start) / repeats


def run(device: str, rounds: int, repeats: int, threads: int, seed: int) -> dict[str, float]:
    """Time the three operations interleaved; return medians (s) and ratio statistics."""
    torch.set_num_threads(threads)
    dev = torch.device(device)
    data = load_problem_data(
        "cifar10_3c3d", source="synthetic", seed=seed, device=dev, n_train=5000, n_test=1000
    )
    torch.manual_seed(seed)
    problem = problems.get("cifar10_3c3d")
    model, l2 = problem.model(device=dev), problem.l2_penalty
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = nn.CrossEntropyLoss()
    x_step, y_step = data.sample_train_batch(128)
    raw256 = data.x_train[:256].clone()

    def augment_only():
        return augment(raw256, data.generator, data.mean, data.std)

    def fetch_augment():
        return data.sample_train_batch(256)

    def train_step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x_step), y_step) + l2(model)
        loss.backward()
        opt.step()

    ops = {"augment256": augment_only, "fetch_augment256": fetch_augment, "step128": train_step}
    for fn in ops.values():  # warm-up
        time_call(fn, dev, 2)
    times: dict[str, list[float]] = {k: [] for k in ops}
    for r in tqdm(range(rounds), desc="rounds"):
        order = list(ops) if r % 2 == 0 else list(reversed(ops))  # interleave, alternate order
        for name in order:
            times[name].append(time_call(ops[name], dev, repeats))
    out = {f"{k}_median_s": statistics.median(v) for k, v in times.items()}
    for name in ("augment256", "fetch_augment256"):
        ratios = sorted(a / s for a, s in zip(times[name], times["step128"]))
        q = statistics.quantiles(ratios, n=4)
        out[f"{name}_ratio"] = statistics.median(ratios)
        out[f"{name}_ratio_iqr"] = q[2] - q[0]
    return out
