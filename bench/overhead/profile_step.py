"""Where a step's time goes: ours with a quantity next to the plain gradient, phase by phase.

    python -m bench.overhead.cli_profile_step cifar100_allcnnc DiagGGNMC  # batch 128, 3 steps
    python -m bench.overhead.cli_profile_step cifar10_3c3d KFAC --batch-size 32 --trace kfac.json

Both steps run in this process on the same model and batch: first the plain gradient, then the
step inside ``extensions.collect``. Every step is split into forward and backward by profiler
ranges; inside the backward, the labelled ranges of ``extensions`` (``first_order::<module>``,
``second_order``, and within it ``jac_t::<module>``, ``extract::<module>``,
``input_factor::<module>``) say what our rules cost. Times are per step: the wall clock of
unprofiled steps (median), and the profiler's inclusive time of each range (the profiler adds a
little overhead; the ranges nest, so indented rows are parts of the row above). On Linux the minor
page faults per step are listed too: on CPU, fresh large allocations cost page faults that a
plain gradient step may or may not pay, depending on the allocator's state.

On CUDA every time is device time: a step's time comes from CUDA events around it, and a range's
from the profiler's device (kernel) time inside it, not the host's launch time (which returns
long before the kernels finish).

``--trace FILE`` also writes a Chrome trace of the profiled steps (``chrome://tracing``).
"""

from __future__ import annotations

import contextlib
import resource
import statistics
import warnings
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from bench.overhead.problem_setup import problem_setup
from bench.overhead.timing import device_time_call, synchronize

PREFIXES = ("step::", "extensions::")


@dataclass
class StepProfile:
    """Per-step wall time, page faults and profiler ranges of one variant."""

    label: str
    wall_s: float
    minor_faults: float
    #: range name -> inclusive seconds per step, in first-seen order
    ranges: dict[str, float] = field(default_factory=dict)


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def event_seconds(event: object, device: torch.device) -> float:
    """Return an event's inclusive seconds: device (kernel) time on CUDA, else CPU time."""
    if device.type == "cuda":
        us = getattr(event, "device_time_total", None)
        if us is None:  # torch < 2.4
            us = event.cuda_time_total
        return us / 1e6
    return event.cpu_time_total / 1e6


def _ranges(prof: profile, steps: int, device: torch.device) -> dict[str, float]:
    """Inclusive seconds per step of every ``step::`` / ``extensions::`` range."""
    totals: dict[str, float] = defaultdict(float)
    for event in prof.events():
        if event.name.startswith(PREFIXES):
            totals[event.name] += event_seconds(event, device)
    return {name: t / steps for name, t in totals.items()}


def profile_variant(
    label: str,
    model: torch.nn.Module,
    loss_fn: torch.nn.Module,
    batch: tuple[torch.Tensor, torch.Tensor],
    steps: int,
    device: torch.device,
    context: contextlib.AbstractContextManager,
    trace: str | None = None,
) -> StepProfile:
    """Warm up, time ``steps`` unprofiled steps, then profile ``steps`` more, inside ``context``.

    Args:
        label: the variant's name in the output.
        model: the network.
        loss_fn: the loss module.
        batch: inputs and targets on ``device``.
        steps: steps per measurement.
        device: the device (synchronised around every timed step).
        context: ``extensions.collect(...)`` or a null context (the plain gradient).
        trace: if given, the Chrome trace of the profiled steps is written there.

    Returns:
        The variant's median wall time, faults per step and profiler ranges.

    """
    x, y = batch

    def step() -> None:
        with record_function("step::forward"):
            loss = loss_fn(model(x), y)
        with record_function("step::backward"):
            loss.backward()
        model.zero_grad(set_to_none=True)

    with context:
        step()  # warm-up
        faults = _minor_faults()
        walls = [device_time_call(step, device) for _ in range(steps)]
        faults = (_minor_faults() - faults) / steps
        activities = [ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        with profile(activities=activities) as prof:
            for _ in range(steps):
                step()
            synchronize(device)
    if trace:
        prof.export_chrome_trace(trace)
    return StepProfile(label, statistics.median(walls), faults, _ranges(prof, steps, device))


def _depth(name: str) -> int:
    if name.startswith("step::"):
        return 0
    return 1 if name == "extensions::second_order" or "first_order" in name else 2


def render(grad: StepProfile, ours: StepProfile) -> str:
    """Render a markdown table: wall time, faults, and the ranges of both variants."""
    lines = [
        "| variant / range | ms per step | x grad step |",
        "|---|---|---|",
    ]
    for prof in (grad, ours):
        lines.append(
            f"| **{prof.label}** (step, unprofiled; {prof.minor_faults:,.0f} minor page faults)"
            f" | {prof.wall_s * 1e3:.1f} | {prof.wall_s / grad.wall_s:.2f} |"
        )
        for name, seconds in prof.ranges.items():
            indent = "&nbsp;&nbsp;" * (_depth(name) + 1)
            lines.append(f"| {indent}{name} | {seconds * 1e3:.1f} | {seconds / grad.wall_s:.2f} |")
    return "\n".join(lines)


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def profile_quantity(
    problem: str,
    quantity: str,
    *,
    batch_size: int = 128,
    steps: int = 3,
    threads: int = 2,
    device: str = "cpu",
    seed: int = 0,
    trace: str | None = None,
) -> str:
    """Profile ours with ``quantity`` against the plain gradient; return the header and table.

    Args:
        problem: a registered problem (or a tiny test problem).
        quantity: the quantity ours computes.
        batch_size: the batch of both variants.
        steps: timed and profiled steps, each.
        threads: torch threads while profiling.
        device: ``cpu``, ``cuda`` or ``cuda:N`` (checked by the caller).
        seed: the model's and the batch's seed.
        trace: if given, the Chrome trace of the quantity's profiled steps is written there.

    """
    dev = torch.device(device)
    setup = problem_setup(problem)

    import extensions

    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    with _threads(threads):
        torch.manual_seed(seed)
        model = setup.model_fn().to(dev)
        loss_fn = setup.loss_fn().to(dev)
        batch = setup.staged_batches(batch_size, dev, count=1, seed=seed)[0]
        common = (model, loss_fn, batch, steps, dev)
        grad = profile_variant("grad", *common, contextlib.nullcontext())
        ours = profile_variant(
            quantity, *common, extensions.collect(model, loss_fn, quantity), trace=trace
        )
    clock = "device time (CUDA events, profiler device time)" if dev.type == "cuda" else "wall"
    head = (
        f"{problem}, batch {batch_size}, {dev}, {threads} threads, "
        f"torch {torch.__version__}, {steps} steps each, {clock}\n"
    )
    return f"{head}\n{render(grad, ours)}"
