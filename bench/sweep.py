"""The grid search's runs, their ids, the run store and best-setting selection.

A *run* is one training run: ``(problem, method, lr, damping, seed, epochs, batch size, source,
options)`` (:class:`RunConfig`). Its ``run_id`` is a hash of that canonical config (the device is
not part of it), so a rerun of the sweep finds what it already has and a changed grid reuses
every run that matches.

The store (:class:`RunStore`) is one folder::

    <root>/<run_id>.csv          one row per evaluation (bench.spec.GRIDSEARCH_COLUMNS)
    <root>/<run_id>.json         sidecar: config, environment, status, minibatch losses
    <root>/checkpoints/<run_id>.pt   the last epoch's checkpoint (removed once the run ends)
    <root>/locks/<run_id>.lock       held while a process trains the run

Every file is written atomically (temp file + ``os.replace``). A run is *done* when its sidecar
says ``finished`` or ``diverged``; ``running`` sidecars whose lock is stale are *interrupted*
and resume from their checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.results_io import atomic_write_csv, atomic_write_json, read_csv_rows, read_json
from bench.spec import GRIDSEARCH_COLUMNS

#: The paper's curvature optimizers (BackPACK quantity names).
CURVATURE_METHODS = ("DiagGGNExact", "DiagGGNMC", "KFAC", "KFLR", "KFRA")
#: First-order baselines: SGD with momentum 0.9 and Adam.
BASELINE_METHODS = ("Momentum", "Adam")
METHODS = CURVATURE_METHODS + BASELINE_METHODS

#: The paper's grid (App. C.2): lr in logspace(-4, 0, 5), damping in logspace(-4, 1, 6).
PAPER_LRS = tuple(10.0**e for e in range(-4, 1))
PAPER_DAMPINGS = tuple(10.0**e for e in range(-4, 2))
#: DeepOBS's baseline protocol: 36 learning rates 10^-5 ... 10^2 in steps of 10^0.2.
BASELINE_LRS = tuple(10.0 ** (-5 + 0.2 * i) for i in range(36))
#: The seeds of the best setting's reruns (anon release ``best_run.py``).
BEST_SEEDS = tuple(range(42, 52))
GRID_SEED = 42

#: Curvatures the paper ran per problem (anon release ``_exclude``); ours default to the same.
PAPER_METHODS = {
    "cifar10_3c3d": ("DiagGGNExact", "DiagGGNMC", "KFAC", "KFLR", "Momentum", "Adam"),
    "cifar100_allcnnc": ("DiagGGNMC", "KFAC", "Momentum", "Adam"),
    "cifar100_3c3d": ("DiagGGNMC", "KFAC", "Momentum", "Adam"),
    "cifar10_allcnnc": ("DiagGGNExact", "DiagGGNMC", "KFAC", "KFLR", "Momentum", "Adam"),
}

DONE = ("finished", "diverged")
STATUSES = ("pending", "running", "interrupted", "finished", "diverged", "failed")


def _canonical_float(x: float | None) -> str | None:
    """Ten significant digits, so ``1e-3`` and ``np.logspace(-4, 0, 5)[1]`` hash the same."""
    return None if x is None else format(float(x), ".10g")


def check_method(method: str) -> str:
    """Return ``method`` if known, else raise a ValueError listing the valid names."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")
    return method


@dataclass(frozen=True)
class RunConfig:
    """One training run. ``damping`` is ``None`` for the baselines.

    Attributes:
        problem: a problem name (``problems.get``).
        method: a curvature (:data:`CURVATURE_METHODS`) or a baseline (:data:`BASELINE_METHODS`).
        lr: the learning rate alpha.
        damping: lambda (curvature methods only).
        seed: seeds the model init, the data order and augmentation, dropout and MC samples.
        epochs: training epochs (evaluations: ``epochs + 1``).
        batch_size: the training batch size.
        source: ``"cifar"`` or ``"synthetic"``.
        options: further settings that change results, e.g. ``curvature`` (``"mean"``: running
            mean since the start, the paper's code; ``"fresh"``: this batch's curvature, the paper's
            text), ``inverse_every`` (k), ``max_steps_per_epoch`` (smoke-only truncation),
            ``data`` (keyword options of the data source), ``backend`` (curvature backend).
        device: where to train; not part of the run's identity.

    """

    problem: str
    method: str
    lr: float
    damping: float | None = None
    seed: int = GRID_SEED
    epochs: int = 1
    batch_size: int = 128
    source: str = "cifar"
    options: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"

    def __post_init__(self):
        check_method(self.method)
        if self.method in CURVATURE_METHODS and self.damping is None:
            raise ValueError(f"{self.method} needs a damping value")
        if self.method in BASELINE_METHODS and self.damping is not None:
            raise ValueError(f"baseline {self.method} takes no damping (got {self.damping})")
        if self.source not in ("cifar", "synthetic"):
            raise ValueError(f"unknown source {self.source!r}; valid: cifar, synthetic")

    @property
    def is_curvature(self) -> bool:
        """Whether the method is one of the paper's curvature optimizers."""
        return self.method in CURVATURE_METHODS

    def identity(self) -> dict[str, Any]:
        """Return the canonical fields that define the run (everything but the device)."""
        return {
            "problem": self.problem,
            "method": self.method,
            "lr": _canonical_float(self.lr),
            "damping": _canonical_float(self.damping),
            "seed": int(self.seed),
            "epochs": int(self.epochs),
            "batch_size": int(self.batch_size),
            "source": self.source,
            "options": json.loads(json.dumps(self.options, sort_keys=True)),
        }

    @property
    def run_id(self) -> str:
        """16 hex digits of the SHA-1 of the canonical config."""
        text = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha1(text.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict (what executors pass to :func:`bench.executors.run_job`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Build a config from :meth:`to_dict`."""
        return cls(**data)

    def with_seed(self, seed: int) -> RunConfig:
        """Return the same run with another seed."""
        return replace(self, seed=seed)


# --------------------------------------------------------------------------------------------
# grids
# --------------------------------------------------------------------------------------------


def grid(
    problems: Sequence[str],
    methods: Sequence[str] | None = None,
    *,
    lrs: Sequence[float] = PAPER_LRS,
    dampings: Sequence[float] = PAPER_DAMPINGS,
    baseline_lrs: Sequence[float] = BASELINE_LRS,
    seed: int = GRID_SEED,
    **common: Any,
) -> list[RunConfig]:
    """List the grid runs: ``lrs x dampings`` per curvature method, ``baseline_lrs`` per baseline.

    Args:
        problems: problem names.
        methods: methods to run; ``None`` = the paper's methods per problem (:data:`PAPER_METHODS`).
        lrs: curvature learning rates.
        dampings: curvature dampings.
        baseline_lrs: baseline learning rates.
        seed: the grid's seed.
        **common: further :class:`RunConfig` fields (epochs, batch_size, source, options, device).

    Returns:
        The runs in a stable order.

    """
    runs = []
    for problem in problems:
        chosen = methods if methods is not None else PAPER_METHODS.get(problem, METHODS)
        for method in chosen:
            check_method(method)
            if method in CURVATURE_METHODS:
                for lr in lrs:
                    for damping in dampings:
                        runs.append(RunConfig(problem, method, lr, damping, seed=seed, **common))
            else:
                for lr in baseline_lrs:
                    runs.append(RunConfig(problem, method, lr, None, seed=seed, **common))
    return runs


# --------------------------------------------------------------------------------------------
# the store
# --------------------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunStore:
    """The folder of run CSVs, sidecars, checkpoints and locks (see the module docstring)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def csv_path(self, run_id: str) -> Path:
        """Path of the run's evaluation rows."""
        return self.root / f"{run_id}.csv"

    def sidecar_path(self, run_id: str) -> Path:
        """Path of the run's JSON sidecar."""
        return self.root / f"{run_id}.json"

    def checkpoint_path(self, run_id: str) -> Path:
        """Path of the run's last checkpoint."""
        return self.root / "checkpoints" / f"{run_id}.pt"

    def lock_path(self, run_id: str) -> Path:
        """Path of the run's lock file (``host pid``)."""
        return self.root / "locks" / f"{run_id}.lock"

    # ---------------------------------------------------------------- writing

    def write_rows(self, run_id: str, rows: Sequence[dict[str, Any]]) -> None:
        """Atomically (re)write the run's CSV."""
        atomic_write_csv(self.csv_path(run_id), rows, GRIDSEARCH_COLUMNS)

    def write_sidecar(self, run_id: str, sidecar: dict[str, Any]) -> None:
        """Atomically (re)write the run's sidecar."""
        atomic_write_json(self.sidecar_path(run_id), sidecar)

    # ---------------------------------------------------------------- reading

    def read_sidecar(self, run_id: str) -> dict[str, Any] | None:
        """Read the run's sidecar, or ``None`` if it has none yet."""
        return read_json(self.sidecar_path(run_id))

    def read_rows(self, run_id: str) -> list[dict[str, str]]:
        """Read the run's CSV rows as strings (empty if there is no CSV yet)."""
        return read_csv_rows(self.csv_path(run_id))

    def run_ids(self) -> list[str]:
        """Every run with a sidecar."""
        if not self.root.is_dir():
            return []
        return sorted(p.stem for p in self.root.glob("*.json") if not p.name.startswith("."))

    def status(self, run_id: str) -> str:
        """One of :data:`STATUSES`; ``running`` only while a live process holds the lock."""
        sidecar = self.read_sidecar(run_id)
        if sidecar is None:
            return "pending"
        status = sidecar.get("status", "pending")
        if status == "running":
            return "running" if self._lock_is_live(run_id) else "interrupted"
        return status

    def is_done(self, run_id: str) -> bool:
        """Whether the run ended (finished or diverged)."""
        sidecar = self.read_sidecar(run_id)
        return sidecar is not None and sidecar.get("status") in DONE

    # ---------------------------------------------------------------- locking

    def _lock_is_live(self, run_id: str) -> bool:
        try:
            host, pid = self.lock_path(run_id).read_text().split()
        except (FileNotFoundError, ValueError):
            return False
        if host != socket.gethostname():
            return True  # another machine's process: trust the lock
        return _pid_alive(int(pid))

    @contextlib.contextmanager
    def lock(self, run_id: str) -> Iterator[bool]:
        """Hold the run's lock; yields ``False`` (and holds nothing) if a live process has it.

        A stale lock (its process died, e.g. ``kill -9`` or preemption) is taken over.
        """
        path = self.lock_path(run_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        mine = f"{socket.gethostname()} {os.getpid()}"
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if self._lock_is_live(run_id):
                    yield False
                    return
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                continue
            with os.fdopen(fd, "w") as f:
                f.write(mine)
            try:
                yield True
            finally:
                with contextlib.suppress(FileNotFoundError):
                    if path.read_text() == mine:
                        path.unlink()
            return
        yield False


# --------------------------------------------------------------------------------------------
# status, results and selection
# --------------------------------------------------------------------------------------------

#: Columns of :func:`status_table`.
STATUS_COLUMNS = ("problem", "method", "expected", *STATUSES)


def status_table(jobs: Sequence[RunConfig], store: RunStore) -> list[dict[str, Any]]:
    """Count the jobs per (problem, method) by status (expected, pending, running, ...).

    Args:
        jobs: the runs the sweep expects (duplicates by run_id are counted once).
        store: the run store.

    Returns:
        One dict per (problem, method), in first-seen order, with :data:`STATUS_COLUMNS`.

    """
    table: dict[tuple[str, str], dict[str, Any]] = {}
    seen: set[str] = set()
    for job in jobs:
        if job.run_id in seen:
            continue
        seen.add(job.run_id)
        key = (job.problem, job.method)
        row = table.setdefault(
            key,
            {"problem": job.problem, "method": job.method, "expected": 0}
            | dict.fromkeys(STATUSES, 0),
        )
        row["expected"] += 1
        row[store.status(job.run_id)] += 1
    return list(table.values())


def final_row(store: RunStore, run_id: str) -> dict[str, str] | None:
    """Return the last evaluation row of a run (``None`` without rows)."""
    rows = store.read_rows(run_id)
    return rows[-1] if rows else None


def _final_valid_acc(store: RunStore, run_id: str) -> float:
    """Return the final validation accuracy; diverged / empty runs rank last (``-inf``)."""
    sidecar = store.read_sidecar(run_id) or {}
    row = final_row(store, run_id)
    if sidecar.get("status") != "finished" or row is None or row.get("valid_acc") in ("", None):
        return float("-inf")
    return float(row["valid_acc"])


def best_settings(
    grid_jobs: Sequence[RunConfig], store: RunStore
) -> dict[tuple[str, str], RunConfig | None]:
    """Pick, per (problem, method), the grid run with the best final validation accuracy.

    DeepOBS ranking ``mode="final"``, ``metric="valid_accuracies"`` (``gridsearch.md`` §5.3).
    Diverged runs rank last. A (problem, method) whose grid is not done yet, or whose runs all
    diverged, maps to ``None``. Ties go to the first run in grid order.

    Args:
        grid_jobs: the grid runs (one seed).
        store: the run store.

    Returns:
        ``{(problem, method): best grid RunConfig or None}``.

    """
    groups: dict[tuple[str, str], list[RunConfig]] = {}
    for job in grid_jobs:
        groups.setdefault((job.problem, job.method), []).append(job)
    best: dict[tuple[str, str], RunConfig | None] = {}
    for key, jobs in groups.items():
        if not all(store.is_done(job.run_id) for job in jobs):
            best[key] = None
            continue
        scores = [_final_valid_acc(store, job.run_id) for job in jobs]
        top = max(range(len(jobs)), key=lambda i: (scores[i], -i))
        best[key] = jobs[top] if scores[top] > float("-inf") else None
    return best


def seed_runs(
    best: dict[tuple[str, str], RunConfig | None], seeds: Sequence[int] = BEST_SEEDS
) -> list[RunConfig]:
    """Return the reruns of every chosen setting with ``seeds`` (the grid seed's run is reused)."""
    return [cfg.with_seed(s) for cfg in best.values() if cfg is not None for s in seeds]


def load_runs(store: RunStore, run_ids: Iterable[str] | None = None):
    """Load every run's rows with its sidecar fields as one pandas DataFrame.

    Args:
        store: the run store.
        run_ids: restrict to these runs (default: every run with a sidecar).

    Returns:
        The rows (:data:`bench.spec.GRIDSEARCH_COLUMNS`, numeric) plus ``status``, ``source``,
        ``epochs``, ``batch_size``, ``options`` (canonical JSON) and ``final`` (the last row).

    """
    import pandas as pd

    frames = []
    for run_id in run_ids if run_ids is not None else store.run_ids():
        sidecar = store.read_sidecar(run_id)
        rows = store.read_rows(run_id)
        if sidecar is None or not rows:
            continue
        frame = pd.DataFrame(rows, columns=list(GRIDSEARCH_COLUMNS))
        identity = sidecar.get("identity", {})
        frame["status"] = sidecar.get("status")
        frame["source"] = identity.get("source")
        frame["epochs"] = identity.get("epochs")
        frame["batch_size"] = identity.get("batch_size")
        frame["options"] = json.dumps(identity.get("options", {}), sort_keys=True)
        frame["final"] = False
        frame.loc[frame.index[-1], "final"] = True
        frames.append(frame)
    if not frames:
        return pd.DataFrame(
            columns=[*GRIDSEARCH_COLUMNS, "status", "source", "epochs", "batch_size", "options"]
        )
    table = pd.concat(frames, ignore_index=True)
    numeric = [c for c in GRIDSEARCH_COLUMNS if c not in ("run_id", "problem", "method")]
    table[numeric] = table[numeric].apply(pd.to_numeric, errors="coerce")
    return table
