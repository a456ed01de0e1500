"""The overhead benchmark's plan: which (problem, batch size, mode, backend, quantity) to time.

The device's defaults (CUDA: the paper's batch sizes; CPU: a plan that finishes in minutes) are
filled in here; :mod:`bench.overhead.run` measures the plan.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import torch

from bench import results_io
from bench.overhead.backends import DEFAULT_BACKENDS, get_backend
from bench.overhead.peers import (
    EKFAC,
    NEW_QUANTITIES,
    PEER_BACKEND_NAMES,
    cpu_default_allows,
    cpu_default_peer_note,
)
from bench.overhead.problem_setup import architecture_of, problem_setup
from bench.spec import C_COLUMN_QUANTITIES, FIRST_ORDER, GRAD, OVERHEAD_COLUMNS, QUANTITIES

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
#: CPU defaults (2 cores, the target is <= 15 min): see ``default_plan`` and :data:`CPU_ESTIMATE`.
CPU_BATCH_SIZES = {"3c3d": (32, 128), "allcnnc": (128,)}
CPU_ROUNDS = 3
CPU_C_COLUMN_BATCH = 2
#: (architecture, backend) -> quantities the CPU defaults leave out when the backends are the
#: defaults: BackPACK's default conv path on All-CNN-C takes 10-22 s per step for these (about
#: 5 of the old 25 minutes); its ``weight_jac_t_save_memory`` path is timed instead.
CPU_DEFAULT_SKIPS = {("allcnnc", "backpack"): ("BatchGrad", "SumGradSquared", "Variance")}
#: The variants beyond the paper's that the CPU defaults time, (architecture, batch size) ->
#: backend -> quantities: ours' per-step pattern for the first-order quantities (where opening
#: ``collect`` each step weighs most), EKFAC and ours' expand KFAC next to the peers (whose CPU
#: default runs are ``peers.CPU_DEFAULT_PEER_RUNS``). ``--backends ...`` times them everywhere.
CPU_DEFAULT_EXTRA_RUNS = {
    ("3c3d", 32): {"ours": (EKFAC,), "ours_perstep": FIRST_ORDER, "ours_expand": ("KFAC",)},
    ("3c3d", 128): {"ours_perstep": FIRST_ORDER},
}
#: the ours variants the CPU defaults run only where :data:`CPU_DEFAULT_EXTRA_RUNS` says
CPU_LIMITED_BACKENDS = ("ours_perstep", "ours_expand", "ours_perstep_expand")
#: The CPU default plan's length and wall time on 2 idle cores (``tests`` keep the count true).
#: Measured: two fresh clones' ``make overhead`` on an idle 2-core AMD EPYC (commit 22a922d)
#: measured for 7 min 24 s and 7 min 33 s (8 min 11 s and 8 min 18 s with the venv install).
#: Slower 2-core machines took 10.7-14.7 min for the earlier 89-measurement plan, hence the
#: budget's 15 min (docs/overhead.md).
CPU_ESTIMATE = (109, "7.4-7.6 min")


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


def cpu_default_runs(backend: str, arch: str, batch_size: int, quantity: str) -> bool:
    """Whether the CPU default plan times ``backend``/``quantity`` at this size.

    The paper's quantities of ours and BackPACK run everywhere (but :data:`CPU_DEFAULT_SKIPS`);
    the peers as ``peers.CPU_DEFAULT_PEER_RUNS`` says, the ours variants
    (:data:`CPU_LIMITED_BACKENDS`) and EKFAC as :data:`CPU_DEFAULT_EXTRA_RUNS` says.
    """
    if backend in PEER_BACKEND_NAMES:
        return cpu_default_allows(backend, arch, batch_size, quantity)
    if backend in CPU_LIMITED_BACKENDS or quantity in NEW_QUANTITIES:
        return quantity in CPU_DEFAULT_EXTRA_RUNS.get((arch, batch_size), {}).get(backend, ())
    return True


def _extra_runs_note() -> str:
    runs = "; ".join(
        f"{arch} N={n}: " + ", ".join(f"{b} {'/'.join(qs)}" for b, qs in by_backend.items())
        for (arch, n), by_backend in CPU_DEFAULT_EXTRA_RUNS.items()
    )
    return f"ours' per-step pattern, expand factors and EKFAC only at {runs} (--backends for more)"


def cpu_default_skips(options: PlanOptions) -> list[str]:
    """Describe the variants :func:`default_plan` leaves out on the CPU defaults (for the log)."""
    archs = {architecture_of(p) for p in options.problems}
    skips = _active_skips(options)
    return [
        f"{backend} {'/'.join(qs)} on {arch} (too slow on CPU; pass --backends to time it)"
        for (arch, backend), qs in skips.items()
        if arch in archs and backend in options.backends
    ] + ([cpu_default_peer_note(), _extra_runs_note()] if skips else [])


def planned_quantities(options: PlanOptions) -> list[str]:
    """Return the quantities to plan: the default (the paper's ten) adds :data:`NEW_QUANTITIES`."""
    quantities = list(options.quantities)
    if quantities == list(QUANTITIES):
        quantities += [q for q in NEW_QUANTITIES if q not in quantities]
    return quantities


def default_plan(options: PlanOptions) -> list[Measurement]:
    """Expand the options into measurements, filling the device's defaults.

    CUDA: batch sizes 32, 48, 64, 128 for every problem. CPU (2 cores, :data:`CPU_ESTIMATE`):
    3C3D at 32 and 128, All-CNN-C at 128, on 100-class problems the C-column quantities
    (DiagGGNExact, KFLR, DiagHessian) at batch ``CPU_C_COLUMN_BATCH`` (labelled in ``note``),
    without the slow variants of :data:`CPU_DEFAULT_SKIPS`, and the peers, ours' per-step and
    expand variants and EKFAC only where :func:`cpu_default_runs` says (see
    :func:`cpu_default_skips`). The default quantities (the ten) also time EKFAC
    (:func:`planned_quantities`). Explicit ``batch_sizes`` apply to every problem and quantity
    unless ``c_column_batch_size`` is also given. Backends run only the quantities they have;
    ``pytorch``/``grad`` is added to every group as the reference.
    """
    device = torch.device(options.device)
    for quantity in options.quantities:
        if quantity not in (*QUANTITIES, *NEW_QUANTITIES, GRAD):
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
        model = setup.model_fn()  # for the backends' row labels (``differs: ...``)
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
            for quantity in planned_quantities(options):
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
                        if skips and not cpu_default_runs(backend.name, arch, m, quantity):
                            continue
                        if m == n and backend.supports(quantity) and quantity not in skipped:
                            label = note or backend.note(model, setup.input_shape, quantity)
                            out.append(
                                Measurement(
                                    problem, n, mode, str(device), backend.name, quantity, label
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
