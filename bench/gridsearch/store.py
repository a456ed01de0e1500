"""The run store of the grid search, its locks, status table and best-setting selection.

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
import json
import os
import socket
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from bench.gridsearch.grid import BEST_SEEDS, DONE, STATUSES, RunConfig
from bench.results_io import atomic_write_csv, atomic_write_json, read_csv_rows, read_json
from bench.spec import GRIDSEARCH_COLUMNS


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
