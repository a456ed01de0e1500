"""The paper's overhead benchmark: one training step with a quantity vs. the plain gradient.

For each (problem, batch size, mode) group, every (backend, quantity) variant and the plain
gradient run in **one process**, round-robin with rotating order after warm-up; each row stores the
median and IQR over rounds and the ratio to the gradient's median of the same rounds. Peak memory:
CUDA ``max_memory_allocated`` in-process; CPU peak RSS of a fresh process per variant (which also
probes for out-of-memory under an address-space cap before the variant is timed in-process).

    curvbench overhead --help               # the command that runs it (bench/overhead/cli.py)

Modes: ``clean`` (two batches pre-staged on the device, alternated; forward + backward only) and
``paper`` (every step fetches and augments a fresh batch with ``sample_train_batch()``, as the
paper's timings did). Failures become rows (``oom``, ``unsupported``, ``unavailable``, ``error``)
instead of aborting the run.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bench import results_io
from bench.environment import collect_environment, device_info
from bench.overhead.backends import BaseBackend, Step, get_backend
from bench.overhead.memory import cuda_peak_memory_from_empty_mb, subprocess_peak_rss_mb
from bench.overhead.numerics import NONDETERMINISTIC_MESSAGE, Numerics
from bench.overhead.peers import PEER_BACKEND_NAMES
from bench.overhead.plan import (
    COLUMNS,
    CPU_ROUNDS,
    KEY_COLUMNS,
    REFERENCE,
    Measurement,
    groups_of,
)
from bench.overhead.problem_setup import ProblemSetup, problem_setup
from bench.overhead.timing import CapturedError, interleaved_times, release_memory

#: Modules the memory probes' forkserver imports once (saves seconds per probe).
PRELOAD = (
    "torch",
    "bench.overhead.backends",
    "backpack",
    "opacus",
    "problems",
    *PEER_BACKEND_NAMES,  # the peers' import names too (a missing one is skipped)
)


#: lower-case message fragments of allocation failures: the caching allocator's, the OS's, and
#: cuBLAS/cuDNN failing to allocate their workspaces (raised as plain RuntimeErrors)
OOM_FRAGMENTS = (
    "out of memory",
    "can't allocate memory",
    "not enough memory",
    "cublas_status_alloc_failed",
    "cudnn_status_alloc_failed",
    "cudnn_status_not_enough_workspace",
)


def classify_error(err: BaseException) -> str:
    """Map a failure to its row status: ``oom``, ``unsupported``, ``bounded`` or ``error``."""
    names = {cls.__name__ for cls in type(err).__mro__} | set(getattr(err, "type_names", ()))
    text = str(err).lower()
    if "StepOverBudget" in names:  # a class-looping peer refused (bench.overhead.peers)
        return "bounded"
    if names & {"OutOfMemoryError", "MemoryBudgetError", "MemoryError"} or any(
        s in text for s in OOM_FRAGMENTS
    ):
        return "oom"
    if (
        names & {"UnsupportedModuleError", "NotImplementedError"}
        or "not supported" in text
        or NONDETERMINISTIC_MESSAGE in text
    ):
        return "unsupported"
    return "error"


def describe_error(err: BaseException) -> str:
    """Return ``Type: message`` of a failure (a measuring process's error already has it)."""
    if isinstance(err, CapturedError):
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
    """How to measure: rounds, warm-up, memory, seed, numeric flags."""

    rounds: int = CPU_ROUNDS
    warmup: int = 1
    memory: bool = True
    memory_steps: int = 2
    mem_cap_gb: float | None = 10.0
    probe_timeout_s: float | None = None
    seed: int = 0
    numerics: Numerics = Numerics()


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


def cuda_step_peak_mb(
    m: Measurement,
    setup: ProblemSetup,
    batches: Callable[[], tuple[Tensor, Tensor]],
    options: RunOptions,
    device: torch.device,
) -> float:
    """Peak CUDA memory of variant ``m`` built from the empty state (the staged batches exist)."""
    built: list[Step] = []

    def build() -> Callable[[], None]:
        built.append(build_step(setup, get_backend(m.backend), m.quantity, device, options.seed))
        return _timed_call(built[-1], batches)

    def release(_: Any) -> None:
        for step in built:
            step.clear()
            step.close()
        built.clear()

    return cuda_peak_memory_from_empty_mb(build, device, options.memory_steps, release)


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
    options.numerics.apply()  # the same flags for the reference and every variant
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
    options.numerics.apply()  # again: a backend's construction must not change them
    result = interleaved_times(
        {name: _timed_call(step, batches) for name, step in steps.items()},
        options.rounds,
        warmup=options.warmup,
        device=device,
        after={name: step.clear for name, step in steps.items()},
        on_call=lambda _: progress(1),
        on_error={name: step.clear for name, step in steps.items()},
    )
    for name, err in result.errors.items():
        failed = steps.pop(name)
        failed.clear()
        failed.close()
        m = next(x for x in runnable if x.variant == name)
        rows[name] = _row(m, classify_error(err), describe_error(err))

    if options.memory and device.type == "cuda":
        # one protocol for every backend: free everything timed above, then build each variant
        # afresh from the same empty state (see ``cuda_peak_memory_from_empty_mb``)
        for step in steps.values():
            step.clear()
            step.close()
        names = list(steps)
        steps.clear()
        release_memory(device)
        for name in names:
            m = next(x for x in runnable if x.variant == name)
            try:
                memory[name] = (
                    cuda_step_peak_mb(m, setup, batches, options, device),
                    "cuda_max_memory_allocated_from_empty",
                )
            except Exception as err:
                memory[name] = (float("nan"), f"failed: {classify_error(err)}")

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


#: Bump when timing semantics change (timing or memory protocol, numeric flags, what a ratio
#: means): a CSV written under another version is never resumed into. Commits between two bumps
#: are the "compatible commit range" of a results file. 2: memory from the empty state on CUDA,
#: explicit TF32/cuDNN flags.
FINGERPRINT_VERSION = 2
#: the fingerprint's fields that must match for a resume
FINGERPRINT_FIELDS = ("version", "device_type", "device_name", "torch", "num_threads", "numerics")


def fingerprint(device: str | torch.device, numerics: Numerics | None = None) -> dict[str, Any]:
    """Return what must be equal for two runs' rows to share a CSV (:data:`FINGERPRINT_FIELDS`)."""
    info = device_info(device)
    return {
        "version": FINGERPRINT_VERSION,
        "device_type": info["device_type"],
        "device_name": info["device_name"],
        "torch": torch.__version__,
        "num_threads": torch.get_num_threads(),
        "numerics": asdict(numerics or Numerics()),
    }


def fingerprint_mismatch(path: Path, current: Mapping[str, Any]) -> str | None:
    """Why the CSV at ``path`` may not be resumed into (its sidecar's fingerprint), or ``None``."""
    meta = results_io.read_json(path.with_suffix(".json"), default=None)
    stored = (meta or {}).get("fingerprint")
    if not isinstance(stored, dict):
        return "its sidecar records no environment fingerprint"
    diffs = [
        f"{k} {stored.get(k)!r} != {current.get(k)!r}"
        for k in FINGERPRINT_FIELDS
        if stored.get(k) != current.get(k)
    ]
    return "; ".join(diffs) or None


def csv_path(out_dir: str | Path, name: str) -> Path:
    """``<out_dir>/<name>.csv``."""
    return Path(out_dir) / f"{name}.csv"


def resume_target(out_dir: str | Path, name: str, current: Mapping[str, Any]) -> Path:
    """Return the CSV to write: ``<name>.csv`` unless it holds another fingerprint's rows.

    Then the first ``<name>-<k>.csv`` that is absent or of the same fingerprint (the reason is
    printed). Raises ``results_io.CSVFileError`` for a truncated or corrupt CSV that would be
    resumed into.
    """
    path = csv_path(out_dir, name)
    k = 1
    while path.exists():
        why = fingerprint_mismatch(path, current)
        if why is None:
            results_io.read_csv_rows_strict(path, KEY_COLUMNS)  # never resume past a torn row
            return path
        k += 1
        new = csv_path(out_dir, f"{name}-{k}")
        print(f"overhead: not resuming {path} ({why}); writing {new}")
        path = new
    return path


def status_counts(path: str | Path, plan: Sequence[Measurement]) -> dict[str, int]:
    """Status -> number of the plan's rows in the CSV at ``path``."""
    keys = {m.key for m in plan}
    counts: dict[str, int] = {}
    for row in results_io.read_csv_rows(path):
        if results_io.row_key(row, KEY_COLUMNS) in keys:
            counts[row["status"]] = counts.get(row["status"], 0) + 1
    return counts


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
        out_dir: output folder (default of the CLI: ``results/overhead/local``).
        name: file stem: ``<name>.csv`` and ``<name>.json``; an existing ``<name>.csv`` of another
            environment fingerprint is left alone and ``<name>-2.csv`` (...) is written instead.
        redo: re-measure rows that already exist (default: skip them).
        config: the run's configuration, stored in the sidecar.
        show_progress: a tqdm bar over the calls.

    Returns:
        The CSV path.

    Raises:
        results_io.CSVFileError: the CSV to resume into is truncated or corrupt (file and line).

    """
    from tqdm.auto import tqdm

    device = plan[0].device if plan else "cpu"
    current = fingerprint(device, options.numerics)
    path = resume_target(out_dir, name, current)
    sidecar = path.with_suffix(".json")
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
        "fingerprint": current,
        "numerics": options.numerics.record(),
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
