"""The paper's overhead benchmark: one training step with a quantity vs. the plain gradient.

For each (problem, batch size, mode) group, every (backend, quantity) variant and the plain
gradient run in **one process**, round-robin with rotating order after warm-up; each row stores the
median and IQR over rounds and the ratio to the gradient's median of the same rounds. Peak memory:
CUDA ``max_memory_allocated`` in-process; CPU peak RSS of a fresh process per variant (which also
probes for out-of-memory under an address-space cap before the variant is timed in-process).

    python -m bench.overhead --help        # same as `curvbench overhead --help`

Modes: ``clean`` (two batches pre-staged on the device, alternated; forward + backward only) and
``paper`` (every step fetches and augments a fresh batch with ``sample_train_batch()``, as the
paper's timings did). Failures become rows (``oom``, ``unsupported``, ``unavailable``, ``error``)
instead of aborting the run.
"""

from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bench import results_io
from bench.backends import DEFAULT_BACKENDS, BaseBackend, Step, get_backend
from bench.environment import collect_environment
from bench.spec import C_COLUMN_QUANTITIES, GRAD, OVERHEAD_COLUMNS, QUANTITIES
from bench.timing import (
    SubprocessError,
    cuda_peak_memory_mb,
    interleaved_times,
    subprocess_peak_rss_mb,
)

#: Columns written beyond ``bench.spec.OVERHEAD_COLUMNS``.
EXTRA_COLUMNS = ("note", "warmup", "threads", "peak_mem_method")
COLUMNS = OVERHEAD_COLUMNS + EXTRA_COLUMNS
#: A row's identity (for resume and merging).
KEY_COLUMNS = ("problem", "batch_size", "backend", "quantity", "mode", "device")
#: The reference variant of every group.
REFERENCE = ("pytorch", GRAD)
MODES = ("clean", "paper")
DEFAULT_PROBLEMS = ("cifar10_3c3d", "cifar100_allcnnc")
#: CUDA defaults: the paper's batch sizes plus 128.
CUDA_BATCH_SIZES = (32, 48, 64, 128)
CUDA_ROUNDS = 20
#: CPU defaults (2 cores, 10.7 min measured, the target is <= 15 min): see ``default_plan``.
CPU_BATCH_SIZES = {"3c3d": (32, 128), "allcnnc": (128,)}
CPU_ROUNDS = 3
CPU_C_COLUMN_BATCH = 2
#: (architecture, backend) -> quantities the CPU defaults leave out when the backends are the
#: defaults: BackPACK's default conv path on All-CNN-C takes 10-22 s per step for these (about
#: 5 of the old 25 minutes); its ``weight_jac_t_save_memory`` path is timed instead.
CPU_DEFAULT_SKIPS = {("allcnnc", "backpack"): ("BatchGrad", "SumGradSquared", "Variance")}
#: Modules the memory probes' forkserver imports once (saves seconds per probe).
PRELOAD = ("torch", "bench.backends", "backpack", "opacus", "problems")
#: Problems small enough for harness tests and smoke runs: (input shape, classes).
TINY_PROBLEMS = {"tiny_cnn": ((3, 8, 8), 4), "tiny_mlp": ((3, 4, 4), 3)}


# --------------------------------------------------------------------------------------------
# Problems: model, loss and batches
# --------------------------------------------------------------------------------------------


def _tiny_model(name: str) -> nn.Sequential:
    """Build a few-parameter network of the supported module types (for tests and smoke runs)."""
    (channels, height, width), classes = TINY_PROBLEMS[name]
    if name == "tiny_cnn":
        return nn.Sequential(
            nn.Conv2d(channels, 4, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(4, 4, 3),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(4 * (height // 2 - 2) * (width // 2 - 2), classes),
        )
    return nn.Sequential(
        nn.Flatten(), nn.Linear(channels * height * width, 8), nn.Sigmoid(), nn.Linear(8, classes)
    )


@dataclass(frozen=True)
class ProblemSetup:
    """What the benchmark needs of a problem: a seeded model, the loss and batches."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    model_fn: Callable[[], nn.Module]
    loss_fn: Callable[[], nn.Module]
    data_fn: Callable[[torch.device, int], Any] | None  # -> object with sample_train_batch()

    def staged_batches(
        self, batch_size: int, device: torch.device, count: int = 2, seed: int = 0
    ) -> list[tuple[Tensor, Tensor]]:
        """``count`` random batches of the real shape, staged on ``device`` (clean mode)."""
        gen = torch.Generator().manual_seed(seed)
        return [
            (
                torch.randn(batch_size, *self.input_shape, generator=gen).to(device),
                torch.randint(0, self.num_classes, (batch_size,), generator=gen).to(device),
            )
            for _ in range(count)
        ]

    def fresh_batch_fn(self, batch_size: int, device: torch.device) -> Callable[[], tuple]:
        """Return a function fetching + augmenting one fresh batch per call (paper mode)."""
        if self.data_fn is None:
            raise NotImplementedError(f"problem {self.name} has no data source for paper mode")
        data = self.data_fn(device, batch_size)
        return functools.partial(data.sample_train_batch, batch_size)


def _registry_data(name: str, device: torch.device, batch_size: int) -> Any:
    """Load the synthetic-source data of a registered problem (fetch + augment on the device)."""
    import problems

    return problems.get(name).data(source="synthetic", device=device, batch_size=batch_size)


def problem_setup(name: str) -> ProblemSetup:
    """Return the setup of a registered problem (``problems.get``) or a tiny test problem."""
    if name in TINY_PROBLEMS:
        shape, classes = TINY_PROBLEMS[name]
        return ProblemSetup(
            name, shape, classes, functools.partial(_tiny_model, name), nn.CrossEntropyLoss, None
        )
    import problems

    valid = (*problems.names(), *TINY_PROBLEMS)
    if name not in valid:
        raise ValueError(f"unknown problem {name!r}; valid problems: {', '.join(valid)}")
    problem = problems.get(name)
    return ProblemSetup(
        name,
        (3, 32, 32),
        problem.num_classes,
        problem.model,
        problem.loss_fn,
        functools.partial(_registry_data, name),
    )


def architecture_of(name: str) -> str:
    """``"3c3d"``, ``"allcnnc"`` or the tiny problem's name."""
    for arch in ("3c3d", "allcnnc"):
        if name.endswith(arch):
            return arch
    return name


# --------------------------------------------------------------------------------------------
# The plan: which measurements to run
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measurement:
    """One row to measure."""

    problem: str
    batch_size: int
    mode: str
    device: str
    backend: str
    quantity: str
    note: str = ""

    @property
    def key(self) -> tuple[str, ...]:
        """The row key (as strings, like a CSV round trip)."""
        return results_io.row_key(asdict(self), KEY_COLUMNS)

    @property
    def group(self) -> tuple[str, int, str, str]:
        """The group measured in one interleaved run: (problem, batch size, mode, device)."""
        return (self.problem, self.batch_size, self.mode, self.device)

    @property
    def variant(self) -> str:
        """``backend/quantity``."""
        return f"{self.backend}/{self.quantity}"


@dataclass
class PlanOptions:
    """The knobs of a run; ``None`` means "the device's default" (see :func:`default_plan`)."""

    problems: Sequence[str] = DEFAULT_PROBLEMS
    quantities: Sequence[str] = QUANTITIES
    backends: Sequence[str] = DEFAULT_BACKENDS
    batch_sizes: Sequence[int] | None = None
    modes: Sequence[str] = ("clean",)
    device: str = "cpu"
    c_column_batch_size: int | None = None
    #: apply :data:`CPU_DEFAULT_SKIPS` on the CPU defaults (the CLI turns it off for --backends)
    cpu_skips: bool = True


def _active_skips(options: PlanOptions) -> dict[tuple[str, str], tuple[str, ...]]:
    """:data:`CPU_DEFAULT_SKIPS` where the CPU defaults apply, else nothing."""
    on_cpu_defaults = options.batch_sizes is None and torch.device(options.device).type != "cuda"
    return CPU_DEFAULT_SKIPS if on_cpu_defaults and options.cpu_skips else {}


def cpu_default_skips(options: PlanOptions) -> list[str]:
    """Describe the variants :func:`default_plan` leaves out on the CPU defaults (for the log)."""
    archs = {architecture_of(p) for p in options.problems}
    return [
        f"{backend} {'/'.join(qs)} on {arch} (too slow on CPU; pass --backends to time it)"
        for (arch, backend), qs in _active_skips(options).items()
        if arch in archs and backend in options.backends
    ]


def default_plan(options: PlanOptions) -> list[Measurement]:
    """Expand the options into measurements, filling the device's defaults.

    CUDA: batch sizes 32, 48, 64, 128 for every problem. CPU (2 cores, 10.7 min measured): 3C3D at
    32 and 128, All-CNN-C at 128, on 100-class problems the C-column quantities (DiagGGNExact,
    KFLR, DiagHessian) at batch ``CPU_C_COLUMN_BATCH`` (labelled in ``note``), and without the
    slow variants of :data:`CPU_DEFAULT_SKIPS` (see :func:`cpu_default_skips`).
    Explicit ``batch_sizes`` apply to every problem and quantity unless ``c_column_batch_size``
    is also given. Backends run only the quantities they have; ``pytorch``/``grad`` is added to
    every group as the reference.
    """
    device = torch.device(options.device)
    for quantity in options.quantities:
        if quantity not in (*QUANTITIES, GRAD):
            raise ValueError(f"unknown quantity {quantity!r}; valid: {', '.join(QUANTITIES)}")
    for mode in options.modes:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; valid modes: {', '.join(MODES)}")
    backends = [get_backend(name) for name in options.backends]
    on_cpu_defaults = options.batch_sizes is None and device.type != "cuda"
    c_batch = options.c_column_batch_size
    if c_batch is None and on_cpu_defaults:
        c_batch = CPU_C_COLUMN_BATCH
    skips = _active_skips(options)
    out: list[Measurement] = []
    for problem in options.problems:
        setup = problem_setup(problem)
        if options.batch_sizes is not None:
            sizes = tuple(options.batch_sizes)
        elif device.type == "cuda":
            sizes = CUDA_BATCH_SIZES
        else:
            sizes = CPU_BATCH_SIZES.get(architecture_of(problem), (8,))
        reduce_c = c_batch is not None and setup.num_classes >= 100
        arch = architecture_of(problem)
        for mode in options.modes:
            wanted: list[tuple[int, str, str]] = []
            for quantity in options.quantities:
                if quantity == GRAD:
                    continue
                if reduce_c and quantity in C_COLUMN_QUANTITIES:
                    note = (
                        f"C-column quantity at reduced batch {c_batch} "
                        f"({'CPU default' if on_cpu_defaults else '--c-column-batch-size'})"
                    )
                    wanted.append((c_batch, quantity, note))
                else:
                    wanted.extend((n, quantity, "") for n in sizes)
            for n in sorted({n for n, _, _ in wanted}):
                note_n = next((note for m, _, note in wanted if m == n and note), "")
                out.append(Measurement(problem, n, mode, str(device), *REFERENCE, note_n))
                for backend in backends:
                    skipped = skips.get((arch, backend.name), ())
                    for m, quantity, note in wanted:
                        if m == n and backend.supports(quantity) and quantity not in skipped:
                            out.append(
                                Measurement(
                                    problem, n, mode, str(device), backend.name, quantity, note
                                )
                            )
                if any(b.name == "backpack" for b in backends):
                    out.append(Measurement(problem, n, mode, str(device), "backpack", GRAD, note_n))
    return out


def groups_of(measurements: Iterable[Measurement]) -> dict[tuple, list[Measurement]]:
    """Measurements grouped by (problem, batch size, mode, device), in plan order."""
    groups: dict[tuple, list[Measurement]] = {}
    for m in measurements:
        groups.setdefault(m.group, []).append(m)
    return groups


# --------------------------------------------------------------------------------------------
# Running one group
# --------------------------------------------------------------------------------------------


def classify_error(err: BaseException) -> str:
    """Map a failure to its row status: ``oom``, ``unsupported`` or ``error``."""
    names = {cls.__name__ for cls in type(err).__mro__} | set(getattr(err, "type_names", ()))
    text = str(err).lower()
    if names & {"OutOfMemoryError", "MemoryBudgetError", "MemoryError"} or any(
        s in text for s in ("out of memory", "can't allocate memory", "not enough memory")
    ):
        return "oom"
    if names & {"UnsupportedModuleError", "NotImplementedError"} or "not supported" in text:
        return "unsupported"
    return "error"


def describe_error(err: BaseException) -> str:
    """Return ``Type: message`` of a failure (a measuring process's error already has it)."""
    if isinstance(err, SubprocessError):
        return str(err)
    return f"{type(err).__name__}: {err}"


def build_step(
    setup: ProblemSetup,
    backend: BaseBackend,
    quantity: str,
    device: torch.device,
    seed: int = 0,
) -> Step:
    """Build a fresh seeded model (same weights for every variant) wrapped in the backend's step."""
    torch.manual_seed(seed)
    model = setup.model_fn().to(device)
    return backend.step_fn(model, setup.loss_fn().to(device), quantity)


def batch_source(
    setup: ProblemSetup, batch_size: int, mode: str, device: torch.device, seed: int = 0
) -> Callable[[], tuple[Tensor, Tensor]]:
    """Return a batch source: alternating pre-staged batches (clean) or fresh ones (paper)."""
    if mode == "paper":
        return setup.fresh_batch_fn(batch_size, device)
    staged = setup.staged_batches(batch_size, device, seed=seed)
    state = {"i": 0}

    def next_staged() -> tuple[Tensor, Tensor]:
        state["i"] += 1
        return staged[state["i"] % len(staged)]

    return next_staged


def _timed_call(step: Step, batches: Callable[[], tuple[Tensor, Tensor]]) -> Callable[[], None]:
    """One timed step: fetch the batch (paper mode: fetch + augment), then the step."""

    def call() -> None:
        step(*batches())

    return call


def memory_step_factory(m_dict: dict[str, Any], seed: int) -> Callable[[], None]:
    """Build a variant's timed call in a fresh process (picklable entry for the RSS probe)."""
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    m = Measurement(**m_dict)
    device = torch.device(m.device)
    setup = problem_setup(m.problem)
    step = build_step(setup, get_backend(m.backend), m.quantity, device, seed)
    return _timed_call(step, batch_source(setup, m.batch_size, m.mode, device, seed))


@dataclass
class RunOptions:
    """How to measure: rounds, warm-up, memory, seed."""

    rounds: int = CPU_ROUNDS
    warmup: int = 1
    memory: bool = True
    memory_steps: int = 2
    mem_cap_gb: float | None = 10.0
    probe_timeout_s: float | None = None
    seed: int = 0


def kfra_over_cap(setup: ProblemSetup, cap_bytes: int) -> str | None:
    """Why KFRA cannot fit ``cap_bytes`` on this problem, or ``None`` if it may.

    KFRA propagates a dense ``h x h`` matrix per layer; ``extensions``' own pre-check sizes it from
    a 2-sample forward pass in milliseconds. A reference backend (BackPACK) would instead compute
    for minutes before its allocation fails under the probe's cap (112 s on 3C3D, N=32).
    """
    import extensions
    from extensions.errors import MemoryBudgetError

    inputs, targets = setup.staged_batches(2, torch.device("cpu"), count=1)[0]
    try:
        extensions.compute(
            setup.model_fn(), setup.loss_fn(), inputs, targets, ["KFRA"], memory_budget=cap_bytes
        )
    except MemoryBudgetError as err:
        return str(err)
    return None


def _row(m: Measurement, status: str, message: str = "", **values: Any) -> dict[str, Any]:
    row = {**asdict(m), "status": status, "message": message, "threads": torch.get_num_threads()}
    row.update(values)
    return row


def run_group(
    measurements: Sequence[Measurement],
    options: RunOptions,
    progress: Callable[[int], Any] | None = None,
) -> list[dict[str, Any]]:
    """Measure one group (same problem, batch size, mode, device) interleaved in this process.

    Args:
        measurements: the group's measurements, including the reference ``pytorch``/``grad``.
        options: rounds, warm-up, memory measurement.
        progress: optional callback with the number of calls done (progress bars).

    Returns:
        One row per measurement (``COLUMNS``), failures included.

    """
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    progress = progress or (lambda _: None)
    first = measurements[0]
    device = torch.device(first.device)
    rows: dict[str, dict[str, Any]] = {}
    try:
        setup = problem_setup(first.problem)
        batches = batch_source(setup, first.batch_size, first.mode, device, options.seed)
    except Exception as err:  # no data for paper mode, unknown problem, ...
        status = "unavailable" if isinstance(err, (ImportError, NotImplementedError)) else "error"
        return [_row(m, status, describe_error(err)) for m in measurements]

    runnable: list[Measurement] = []
    memory: dict[str, tuple[float, str]] = {}
    for m in measurements:
        backend = get_backend(m.backend)
        ok, why = backend.available()
        if not ok:
            rows[m.variant] = _row(m, "unavailable", why)
            continue
        if options.memory and device.type != "cuda":
            cap = None if options.mem_cap_gb is None else options.mem_cap_gb * 1024
            if m.quantity == "KFRA" and m.backend != "ours" and cap is not None:
                over = kfra_over_cap(setup, int(cap * 2**20))
                if over is not None:
                    note = "not run: over the probe's memory cap by the dense-matrix pre-check; "
                    rows[m.variant] = _row(m, "oom", note + over)
                    progress(1)
                    continue
            try:
                factory = functools.partial(memory_step_factory, asdict(m), options.seed)
                result = subprocess_peak_rss_mb(
                    factory,
                    steps=options.memory_steps,
                    cap_mb=cap,
                    preload=PRELOAD,
                    timeout_s=options.probe_timeout_s,
                )
                method = "rss_subprocess" + ("" if result["exact_reset"] else "_maxrss")
                memory[m.variant] = (result["peak_mem_mb"], method)
            except Exception as err:
                rows[m.variant] = _row(m, classify_error(err), describe_error(err))
                progress(1)
                continue
            progress(1)
        runnable.append(m)

    steps: dict[str, Step] = {}
    for m in runnable:
        try:
            steps[m.variant] = build_step(
                setup, get_backend(m.backend), m.quantity, device, options.seed
            )
        except Exception as err:
            rows[m.variant] = _row(m, classify_error(err), describe_error(err))
    result = interleaved_times(
        {name: _timed_call(step, batches) for name, step in steps.items()},
        options.rounds,
        warmup=options.warmup,
        device=device,
        after={name: step.clear for name, step in steps.items()},
        on_call=lambda _: progress(1),
    )
    for name, err in result.errors.items():
        failed = steps.pop(name)
        failed.clear()
        failed.close()
        m = next(x for x in runnable if x.variant == name)
        rows[name] = _row(m, classify_error(err), describe_error(err))

    if options.memory and device.type == "cuda":
        for name, step in steps.items():
            try:
                call = _timed_call(step, batches)
                memory[name] = (
                    cuda_peak_memory_mb(call, device, options.memory_steps),
                    "cuda_max_memory_allocated",
                )
            except Exception as err:
                memory[name] = (float("nan"), f"failed: {type(err).__name__}")
            finally:
                step.clear()

    ref = "/".join(REFERENCE)
    grad_median = result.summary(ref).median_s if ref in result.times else float("nan")
    for m in runnable:
        if m.variant in rows:
            continue
        summary = result.summary(m.variant)
        peak, method = memory.get(m.variant, (float("nan"), ""))
        rows[m.variant] = _row(
            m,
            "ok",
            rounds=summary.rounds,
            warmup=options.warmup,
            median_s=summary.median_s,
            iqr_s=summary.iqr_s,
            min_s=summary.min_s,
            ratio_to_grad=summary.median_s / grad_median,
            peak_mem_mb=peak,
            peak_mem_method=method,
        )
    for step in steps.values():
        step.clear()
        step.close()
    del steps
    return [rows[m.variant] for m in measurements]


# --------------------------------------------------------------------------------------------
# A whole run: plan, resume, write
# --------------------------------------------------------------------------------------------


def csv_path(out_dir: str | Path, name: str) -> Path:
    """``<out_dir>/<name>.csv``."""
    return Path(out_dir) / f"{name}.csv"


def run(
    plan: Sequence[Measurement],
    options: RunOptions,
    out_dir: str | Path,
    name: str,
    *,
    redo: bool = False,
    config: dict[str, Any] | None = None,
    show_progress: bool = True,
) -> Path:
    """Run ``plan`` group by group, writing the CSV and its JSON sidecar after each group.

    Args:
        plan: the measurements (see :func:`default_plan`).
        options: rounds, warm-up, memory.
        out_dir: output folder (``results/overhead``).
        name: file stem: ``<name>.csv`` and ``<name>.json``.
        redo: re-measure rows that already exist (default: skip them).
        config: the run's configuration, stored in the sidecar.
        show_progress: a tqdm bar over the calls.

    Returns:
        The CSV path.

    """
    from tqdm.auto import tqdm

    path = csv_path(out_dir, name)
    sidecar = path.with_suffix(".json")
    device = plan[0].device if plan else "cpu"
    done = set() if redo else results_io.existing_keys(path, KEY_COLUMNS)
    todo: list[list[Measurement]] = []
    for group in groups_of(plan).values():
        missing = [m for m in group if m.key not in done]
        if not missing:
            continue
        if missing[0].variant != "/".join(REFERENCE):  # re-time the reference, keep its old row
            missing.insert(0, group[0])
        todo.append(missing)
    skipped = len(plan) - sum(len(g) for g in todo)
    available = {name: get_backend(name).available()[0] for name in {m.backend for m in plan}}
    per_variant = options.warmup + options.rounds + int(options.memory and "cpu" in device)
    calls = sum(per_variant for g in todo for m in g if available[m.backend])
    env = collect_environment(device)
    meta = {
        "environment": env,
        "config": config or {},
        "run_options": asdict(options),
        "finished": False,
    }
    results_io.atomic_write_json(sidecar, meta)
    if skipped:
        print(f"overhead: {skipped} measurement(s) already in {path} (use --redo to re-measure)")
    bar = tqdm(total=calls, desc="overhead", unit="step", disable=not show_progress)
    try:
        for group in todo:
            first = group[0]
            bar.set_postfix_str(f"{first.problem} N={first.batch_size} {first.mode}")
            rows = run_group(group, options, progress=bar.update)
            if not redo:
                rows = [r for r in rows if results_io.row_key(r, KEY_COLUMNS) not in done]
            results_io.upsert_csv(path, rows, COLUMNS, KEY_COLUMNS)
    finally:
        bar.close()
    meta["finished"] = True
    results_io.atomic_write_json(sidecar, meta)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.overhead``: the ``curvbench overhead`` command."""
    from bench.commands.overhead import build_parser

    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
