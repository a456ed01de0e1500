"""The run store of the grid search, its locks, status table and best-setting selection.

The store (:class:`RunStore`) is one folder::

    <root>/<run_id>.csv          one row per evaluation (bench.spec.GRIDSEARCH_COLUMNS)
    <root>/<run_id>.json         sidecar: config, environment, status, minibatch losses
    <root>/checkpoints/<run_id>.pt   the last epoch's checkpoint (removed once the run ends)
    <root>/locks/<run_id>.lock       a lease held while a process trains the run

Every file is written atomically (temp file + ``os.replace``; a lock by a hard link of a written
file). A run is *done* when its sidecar says ``finished`` or ``diverged``; ``running`` sidecars
whose lock is stale are *interrupted* and resume from their checkpoint.

A lock is a lease: one JSON line ``{"host", "pid", "token", "at"}`` whose mtime is the holder's
heartbeat, refreshed every ``heartbeat_s`` (default :data:`HEARTBEAT_S`). It is stale when its
holder is dead on this host, or on any host when the heartbeat is older than ``lock_ttl_s``
(default :data:`LOCK_TTL_S`, or ``$CURVBENCH_LOCK_TTL_S``): after ``scancel``, an OOM kill or a
node failure the run becomes *interrupted* within the TTL. ``$CURVBENCH_HOSTNAME`` overrides the
host name a lock records (tests; clusters whose nodes share a name).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.gridsearch.grid import BEST_SEEDS, DONE, STATUSES, RunConfig
from bench.results_io import (
    CSVFileError,
    atomic_write_csv,
    atomic_write_json,
    read_csv_rows_strict,
    read_json,
)
from bench.spec import GRIDSEARCH_COLUMNS

log = logging.getLogger(__name__)

#: Seconds without a heartbeat after which a lock is stale on any host.
LOCK_TTL_S = 600.0
#: Seconds between two heartbeats of a held lock.
HEARTBEAT_S = 30.0
#: Environment overrides of :data:`LOCK_TTL_S` and of the host name a lock records.
LOCK_TTL_ENV = "CURVBENCH_LOCK_TTL_S"
HOSTNAME_ENV = "CURVBENCH_HOSTNAME"


def hostname() -> str:
    """Return this machine's name as locks and sidecars record it (``$CURVBENCH_HOSTNAME`` wins)."""
    return os.environ.get(HOSTNAME_ENV) or socket.gethostname()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class LockHolder:
    """The content of a lock file and its heartbeat (the file's mtime)."""

    host: str
    pid: int
    token: str
    beat: float

    def dump(self) -> str:
        """Return the lock file's content (the heartbeat is the mtime, not stored)."""
        return json.dumps({k: v for k, v in asdict(self).items() if k != "beat"}) + "\n"

    @classmethod
    def parse(cls, text: str, beat: float) -> LockHolder:
        """Parse a lock's content (JSON, or the older ``host pid``).

        Anything else (e.g. a lock an older version left empty) is held by an unknown host: live
        until its TTL runs out.
        """
        try:
            data = json.loads(text)
            return cls(str(data["host"]), int(data["pid"]), str(data["token"]), beat)
        except (ValueError, KeyError, TypeError):
            parts = text.split()
            if len(parts) == 2 and parts[1].isdigit():
                return cls(parts[0], int(parts[1]), text, beat)
            return cls("?", -1, text, beat)

    def age_s(self) -> float:
        """Seconds since the last heartbeat."""
        return time.time() - self.beat

    def is_live(self, ttl_s: float) -> bool:
        """Heartbeat within ``ttl_s``, and (on this host) the process exists."""
        if self.age_s() > ttl_s:
            return False
        return self.host != hostname() or _pid_alive(self.pid)


class RunStore:
    """The folder of run CSVs, sidecars, checkpoints and locks (see the module docstring).

    Args:
        root: the store's folder.
        lock_ttl_s: a lock without a heartbeat for this long is stale on any host.
        heartbeat_s: seconds between two heartbeats of a held lock.

    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        lock_ttl_s: float | None = None,
        heartbeat_s: float | None = None,
    ):
        self.root = Path(root)
        if lock_ttl_s is None:
            lock_ttl_s = float(os.environ.get(LOCK_TTL_ENV, LOCK_TTL_S))
        self.lock_ttl_s = lock_ttl_s
        self.heartbeat_s = (
            heartbeat_s if heartbeat_s is not None else min(HEARTBEAT_S, lock_ttl_s / 4)
        )

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
        """Path of the run's lock file (see the module docstring)."""
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
        """Read the run's CSV rows as strings (empty if there is no CSV yet).

        Raises:
            bench.results_io.CSVFileError: the CSV is empty, binary, lacks a column or is cut
                mid-row (the error names the file and the line).

        """
        path = self.csv_path(run_id)
        if not path.exists():
            return []
        return read_csv_rows_strict(path, GRIDSEARCH_COLUMNS)

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

    def lock_holder(self, run_id: str) -> LockHolder | None:
        """Return who holds the run's lock (``None``: no lock file, or one being replaced)."""
        path = self.lock_path(run_id)
        try:
            text = path.read_text()
            beat = path.stat().st_mtime
        except FileNotFoundError:
            return None
        return LockHolder.parse(text, beat)

    def _lock_is_live(self, run_id: str) -> bool:
        holder = self.lock_holder(run_id)
        return holder is not None and holder.is_live(self.lock_ttl_s)

    def stale_locks(self) -> list[str]:
        """Run ids whose lock file is stale (dead holder on this host, or no heartbeat in TTL)."""
        folder = self.root / "locks"
        if not folder.is_dir():
            return []
        runs = sorted(p.stem for p in folder.glob("*.lock"))
        return [rid for rid in runs if self.lock_path(rid).exists() and not self._lock_is_live(rid)]

    def unlock(self, run_id: str, *, force: bool = False) -> bool:
        """Remove the run's lock if it is stale (or, with ``force``, whatever holds it).

        Returns:
            Whether a lock was removed.

        """
        path = self.lock_path(run_id)
        if not path.exists() or (not force and self._lock_is_live(run_id)):
            return False
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            return True
        return False

    def _take_over(self, run_id: str, judged: LockHolder) -> bool:
        """Remove a lock judged stale, unless it changed meanwhile; returns whether it did.

        The lock is first renamed aside (atomic: of two sweeps taking over, one gets it), then
        compared with what was judged stale; a lock that a third process created in between is
        put back, so no fresh lock is ever deleted.
        """
        path = self.lock_path(run_id)
        aside = path.with_name(f".{path.name}.{uuid.uuid4().hex}.stale")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return True  # someone else removed it: try to create ours
        moved = LockHolder.parse(aside.read_text(), aside.stat().st_mtime)
        if moved.token == judged.token and not moved.is_live(self.lock_ttl_s):
            aside.unlink()
            return True
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)  # not the lock we judged: put it back
        aside.unlink()
        return False

    def _create_lock(self, run_id: str, content: str) -> bool:
        """Create the lock file with its full content at once (hard link of a written file)."""
        path = self.lock_path(run_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_text(content)
        try:
            os.link(tmp, path)  # fails if the lock exists; never an empty lock file
            return True
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links: exclusive create, then write
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as handle:  # meanwhile readers see an unknown holder:
                handle.write(content)  # live until the TTL, so nobody takes it over
            return True
        finally:
            tmp.unlink()

    @contextlib.contextmanager
    def lock(self, run_id: str) -> Iterator[bool]:
        """Hold the run's lock (a lease); yields ``False`` (holding nothing) if another has it.

        While held, a background thread refreshes the lock's heartbeat (its mtime) every
        ``heartbeat_s``. A lock is stale when its holder died on this host, or when its heartbeat
        is older than ``lock_ttl_s`` on any host (``scancel``, OOM kill, node failure); a stale
        lock is taken over.
        """
        mine = LockHolder(hostname(), os.getpid(), uuid.uuid4().hex, time.time())
        for _ in range(3):
            if self._create_lock(run_id, mine.dump()):
                break
            holder = self.lock_holder(run_id)
            if holder is not None and holder.is_live(self.lock_ttl_s):
                yield False
                return
            if holder is not None and not self._take_over(run_id, holder):  # raced: live
                yield False
                return
        else:
            yield False
            return
        self._remove_orphaned_temps(run_id)
        stop = threading.Event()
        beat = threading.Thread(
            target=self._heartbeat, args=(run_id, mine.token, stop), daemon=True
        )
        beat.start()
        try:
            yield True
        finally:
            stop.set()
            beat.join()
            holder = self.lock_holder(run_id)
            if holder is not None and holder.token == mine.token:
                with contextlib.suppress(FileNotFoundError):
                    self.lock_path(run_id).unlink()

    def _remove_orphaned_temps(self, run_id: str) -> list[Path]:
        """Remove the run's temporary files left by a writer killed mid-write.

        An atomic write (CSV, sidecar, checkpoint) goes through a temporary file beside its
        target; ``kill -9``, ``scancel`` or a node failure between its creation and the rename
        leaves it behind. Only the lock's holder writes a run's files, so once the lock is ours
        every temporary file of the run is an orphan.
        """
        patterns = (
            (self.root, f".{run_id}.*.tmp"),  # CSV and sidecar (results_io's atomic writes)
            (self.checkpoint_path(run_id).parent, f"{run_id}.pt*.tmp"),  # checkpoints
        )
        removed = []
        for folder, pattern in patterns:
            for path in folder.glob(pattern) if folder.is_dir() else ():
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed.append(path)
        if removed:
            log.info("run %s: removed %d orphaned temporary file(s)", run_id, len(removed))
        return removed

    def _heartbeat(self, run_id: str, token: str, stop: threading.Event) -> None:
        """Touch the lock every ``heartbeat_s`` while it is still ours."""
        path = self.lock_path(run_id)
        while not stop.wait(self.heartbeat_s):
            holder = self.lock_holder(run_id)
            if holder is None or holder.token != token:
                log.warning("the lock of run %s was taken from this process", run_id)
                return
            with contextlib.suppress(FileNotFoundError):
                os.utime(path)


# --------------------------------------------------------------------------------------------
# status, results and selection
# --------------------------------------------------------------------------------------------

#: Columns of :func:`status_table`.
STATUS_COLUMNS = ("problem", "method", "expected", *STATUSES, "devices")


def run_device(sidecar: dict[str, Any]) -> str | None:
    """Return the device the run's last attempt used, e.g. ``cuda:0 (NVIDIA H100)``."""
    attempts = sidecar.get("attempts")
    if not isinstance(attempts, list) or not attempts:
        return None
    last = attempts[-1]
    name = last.get("device_name")
    return f"{last.get('device')} ({name})" if name else last.get("device")


def status_table(jobs: Sequence[RunConfig], store: RunStore) -> list[dict[str, Any]]:
    """Count the jobs per (problem, method) by status (expected, pending, running, ...).

    Args:
        jobs: the runs the sweep expects (duplicates by run_id are counted once).
        store: the run store.

    Returns:
        One dict per (problem, method), in first-seen order, with :data:`STATUS_COLUMNS`;
        ``devices`` counts the devices the finished and diverged runs used (``cpu (...) x3``).

    """
    table: dict[tuple[str, str], dict[str, Any]] = {}
    devices: dict[tuple[str, str], dict[str, int]] = {}
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
        status = store.status(job.run_id)
        row[status] += 1
        used = run_device(store.read_sidecar(job.run_id) or {}) if status in DONE else None
        if used:
            counts = devices.setdefault(key, {})
            counts[used] = counts.get(used, 0) + 1
    for key, row in table.items():
        row["devices"] = ", ".join(f"{d} x{n}" for d, n in devices.get(key, {}).items()) or "-"
    return list(table.values())


def check_done_rows(store: RunStore) -> None:
    """Read the CSV of every done run strictly: a torn one ends the sweep before any work.

    A done run has no checkpoint left to rebuild its rows from, so its CSV is the only record.

    Raises:
        CSVFileError: a done run's CSV is empty, binary or cut mid-row; the message says how to
            train the run again.

    """
    for run_id in store.run_ids():
        if not store.is_done(run_id):
            continue
        try:
            store.read_rows(run_id)
        except CSVFileError as err:
            raise CSVFileError(
                err.path,
                err.line,
                f"{err.reason}; the run is done, so nothing can rebuild it: move "
                f"{run_id}.csv and {run_id}.json aside to train it again",
            ) from None


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
