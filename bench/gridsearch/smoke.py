"""The grid search's smoke test: a tiny synthetic grid, a ``kill -9`` mid-sweep and a resume.

``run_smoke(out, plots, plan, device=...)``:

1. starts ``python -m bench gridsearch run <tiny grid> -j 1`` in its own process group;
2. polls the store until one run finished and another is mid-way (checkpointed after an epoch,
   still running), freezes the group (SIGSTOP), reads the store again to be sure the moment
   has not passed (a run's last epoch can be shorter than a poll), then SIGKILLs the group;
3. reruns the same command, which skips finished runs and resumes the interrupted one;
4. checks: every expected run finished (or diverged), no run finished before the kill was redone
   (its sidecar, with ``attempts`` and ``finished_at``, is unchanged), the interrupted run
   resumed from its checkpoint, every CSV parses with one row per evaluation and no duplicate
   epochs, no checkpoint or temp file is left;
5. builds the figures and REPORT.md (``bench.gridsearch.figures.make_all``).

The full grid is every method the paper ran on each of its four problems (``PAPER_PROBLEMS``,
``PAPER_METHODS``: the five curvatures, KFRA only on mnist_logreg, and SGD-momentum and Adam) on
synthetic data of each problem's shapes, batch 32, one lr and one damping per curvature, one lr
per baseline, 2 seeds and 2 epochs of one step each (``max_steps_per_epoch``, a smoke-only
truncation) with the inverses computed once per run (``inverse_every`` 2): the eigendecomposition
of fmnist_2c2d's 3137x3137 Kronecker factor costs about a minute on a loaded 2-core CPU, so the
faithful every-step schedule would make the smoke take half an hour. The ``quick`` grid (the
pytest one, and ``make gpu-check``'s) is cifar10_3c3d, DiagGGN-MC and SGD-momentum only.

``device`` is where the sweep trains (``cpu`` by default, as in CI; ``make gpu-check`` passes
``cuda``). On CUDA the quick grid's epochs are longer (3 epochs of 10 steps, :data:`CUDA_EPOCHS`):
two steps take milliseconds on a GPU, too short a mid-way moment for the kill to land in.

The output folder holds a marker (:data:`MARKER`, JSON) that lists the files the smoke created
there and the figures it wrote; the next smoke deletes only those (never a file added later) and
refuses a folder that holds run-store files it did not record.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.gridsearch.grid import DONE, PAPER_PROBLEMS, RunConfig
from bench.gridsearch.store import RunStore, best_settings, seed_runs
from bench.spec import GRIDSEARCH_COLUMNS

#: The smoke grid (``curvbench gridsearch run`` flags), full and ``quick`` (the pytest one).
SMOKE_ARGS = {
    False: [
        "--problems", *PAPER_PROBLEMS, "--source", "synthetic", "--device", "cpu",
        "--lrs", "0.01", "--dampings", "1", "--baseline-lrs", "0.01", "--inverse-every", "2",
        "--seeds", "42", "43", "--epochs", "2", "--batch-size", "32",
        "--max-steps-per-epoch", "1", "--n-train", "320", "--n-test", "64",
        "--train-eval-size", "64",
    ],
    True: [
        "--problems", "cifar10_3c3d", "--source", "synthetic", "--device", "cpu",
        "--methods", "DiagGGNMC", "Momentum",
        "--lrs", "0.001", "0.01", "--dampings", "1", "--baseline-lrs", "0.01",
        "--seeds", "42", "43", "--epochs", "2", "--batch-size", "32",
        "--max-steps-per-epoch", "2", "--n-train", "320", "--n-test", "64",
        "--train-eval-size", "64",
    ],
}  # fmt: skip
#: The quick grid's epochs on CUDA (``--epochs``, ``--max-steps-per-epoch``): long enough that
#: the sweep is seen mid-way (see the module docstring).
CUDA_EPOCHS = {"--epochs": "3", "--max-steps-per-epoch": "10"}


def smoke_args(quick: bool, device: str = "cpu") -> list[str]:
    """Return the smoke grid's ``curvbench gridsearch run`` flags for ``device``.

    Args:
        quick: the quick grid (:data:`SMOKE_ARGS`).
        device: ``cpu``, ``cuda`` or ``cuda:N``, the sweep's ``--device``.

    """
    args = list(SMOKE_ARGS[quick])
    changes = {"--device": device}
    if quick and device.startswith("cuda"):
        changes.update(CUDA_EPOCHS)
    for flag, value in changes.items():
        args[args.index(flag) + 1] = value
    return args


#: The file that marks a folder as a smoke store and lists what the smoke created in it.
MARKER = ".curvbench-smoke"
#: A run's files by name (CSV, sidecar, checkpoint, lock, an atomic write's temp file)
RUN_FILE = re.compile(r"^[0-9a-f]{16}\.(csv|json|lock|pt)$|\.tmp$")
#: What else a smoke writes into its folder (the store's environment, the report)
SMOKE_FILES = (".environment.json", "REPORT.md")


class SmokeRefused(ValueError):
    """The smoke's output folder holds files the smoke did not create."""


@dataclass
class Prepared:
    """What :func:`prepare_out` found: files that are not the smoke's, and its last figures."""

    foreign: set[str] = field(default_factory=set)  # paths relative to ``out``
    figures: list[str] = field(default_factory=list)


def _files(out: Path) -> set[str]:
    """Every file under ``out`` but the marker, relative to ``out`` (POSIX paths)."""
    return {
        p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != MARKER
    }


def read_marker(out: Path) -> dict | None:
    """Return the marker's record (``files``, ``figures``); ``{}``: an older one, ``None``: none.

    An older marker (plain text, from a smoke that cleared its folder whole) lists nothing; its
    folder's run files (:data:`RUN_FILE`) and :data:`SMOKE_FILES` are taken as the smoke's.
    """
    path = out / MARKER
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def write_marker(out: Path, files: set[str], figures: list[Path | str]) -> None:
    """Record the files the smoke created under ``out`` and the figures it wrote."""
    record = {
        "made_by": "curvbench gridsearch smoke; its next run deletes these files, nothing else",
        "files": sorted(files),
        # relative to ``out``: no machine path in a committed reference's marker
        "figures": sorted(os.path.relpath(Path(p).resolve(), out.resolve()) for p in figures),
    }
    (out / MARKER).write_text(json.dumps(record, indent=1) + "\n")


def _is_run_file(rel: str) -> bool:
    return RUN_FILE.search(Path(rel).name) is not None


def _delete(out: Path, files: set[str]) -> None:
    """Delete ``files`` (relative to ``out``) and the folders that this leaves empty."""
    folders = set()
    for rel in sorted(files):
        path = out / rel
        if path.is_file() or path.is_symlink():
            path.unlink()
            folders.update(p for p in path.parents if out in p.parents)
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def prepare_out(out: Path, keep: bool) -> Prepared:
    """Make ``out`` a smoke store: empty of the smoke's files (kept with ``keep``), marked.

    Only what an earlier smoke recorded in the folder's :data:`MARKER` is deleted; files added
    to the folder later are left where they are.

    Returns:
        The files under ``out`` that are not the smoke's, and the figures the last smoke wrote.

    Raises:
        SmokeRefused: ``out`` is a non-empty folder without the marker, or it holds run-store
            files the smoke did not record (e.g. of a smoke killed before it could record them).

    """
    present = _files(out) if out.is_dir() else set()
    record = read_marker(out) if out.is_dir() else None
    if record is None and present:
        raise SmokeRefused(
            f"--out {out} is not empty and was not made by the smoke (no {MARKER} in it): "
            "pass a new or empty folder"
        )
    record = record or {}
    if "files" in record:
        own = present & set(record["files"])
    else:  # an older marker, or none in an empty folder
        own = {rel for rel in present if _is_run_file(rel) or Path(rel).name in SMOKE_FILES}
    if not keep:
        _delete(out, own)
        stray = sorted(rel for rel in _files(out) if _is_run_file(rel))
        if stray:
            raise SmokeRefused(
                f"--out {out} holds run files the smoke did not record ({', '.join(stray[:3])}"
                f"{' ...' if len(stray) > 3 else ''}): remove them or pass a new folder"
            )
        own = set()
    out.mkdir(parents=True, exist_ok=True)
    figures = [str((out / p).resolve()) for p in record.get("figures", [])]  # old: absolute
    prepared = Prepared(_files(out) - own, figures)
    write_marker(out, own, prepared.figures)
    return prepared


@dataclass
class SmokeReport:
    """What the smoke test saw; ``ok`` when every check passed."""

    runs: int = 0
    finished_before_kill: list[str] = field(default_factory=list)  # finished or diverged
    interrupted: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether every check passed."""
        return not self.problems

    def summary(self) -> str:
        """Return a few lines for the terminal."""
        lines = [
            f"smoke: {self.runs} runs in {self.seconds:.0f} s; killed with "
            f"{len(self.finished_before_kill)} finished and {len(self.interrupted)} mid-way",
            f"smoke: {len(self.figures)} figure/report files",
        ]
        lines += [f"smoke: FAILED: {p}" for p in self.problems] or ["smoke: all checks passed"]
        return "\n".join(lines)


def _command(out: Path, quick: bool, device: str = "cpu") -> list[str]:
    return [sys.executable, "-m", "bench", "gridsearch", "run", *smoke_args(quick, device),
            "-j", "1", "--out", str(out)]  # fmt: skip


#: ``plan(argv) -> (grid runs, seeds)``: what ``curvbench gridsearch run argv`` would train
#: (``bench.gridsearch.cli.plan_from_argv``; handed in so this module needs no argument parsing).
Plan = Callable[[list[str]], tuple[list[RunConfig], list[int]]]


def expected_jobs(
    out: Path, quick: bool, plan: Plan, device: str = "cpu"
) -> tuple[list[RunConfig], list[RunConfig]]:
    """Return the smoke's grid runs and (once the grid is done) its seed reruns."""
    grid, seeds = plan([*smoke_args(quick, device), "--out", str(out)])
    return grid, seed_runs(best_settings(grid, RunStore(out)), seeds)


def _kill_point(store: RunStore, grid: list[RunConfig]) -> tuple[list[str], list[str]]:
    finished, midway = [], []
    for job in grid:
        sidecar = store.read_sidecar(job.run_id) or {}
        if sidecar.get("status") in DONE:
            finished.append(job.run_id)
        elif sidecar.get("status") == "running" and sidecar.get("epochs_done", 0) >= 1:
            midway.append(job.run_id)
    return finished, midway


def _frozen_at_kill_point(proc: subprocess.Popen, store: RunStore, grid: list[RunConfig]) -> bool:
    """Freeze the sweep (``SIGSTOP``) and say whether it still is at the kill point.

    A run's last epoch can be shorter than one poll, so a run seen mid-way may have finished
    by the time the kill lands. Reading the store again while the sweep is stopped makes the
    check and the kill see the same state; the sweep is continued when the moment has passed.
    """
    os.killpg(proc.pid, signal.SIGSTOP)
    finished, midway = _kill_point(store, grid)
    if finished and midway:
        return True
    os.killpg(proc.pid, signal.SIGCONT)
    return False


def _check_csv(store: RunStore, cfg: RunConfig, status: str) -> list[str]:
    """Problems with a run's CSV (header, row count, epochs in order)."""
    path = store.csv_path(cfg.run_id)
    header = path.read_text().splitlines()[0].split(",")
    rows = store.read_rows(cfg.run_id)
    epochs = [int(r["epoch"]) for r in rows]
    issues = []
    if header != list(GRIDSEARCH_COLUMNS):
        issues.append(f"{path.name}: header {header}")
    if epochs != list(range(len(epochs))):
        issues.append(f"{path.name}: epochs {epochs}")
    if status == "finished" and len(rows) != cfg.epochs + 1:
        issues.append(f"{path.name}: {len(rows)} rows, expected {cfg.epochs + 1}")
    for r in rows:
        float(r["valid_acc"] or "nan")  # parses
    return issues


def run_smoke(
    out: Path,
    plots: Path,
    plan: Plan,
    *,
    quick: bool = False,
    keep: bool = False,
    verbose: bool = False,
    report_dir: Path | None = None,
    device: str = "cpu",
) -> SmokeReport:
    """Run the smoke test (see the module docstring) and return what it saw.

    Args:
        out: the run store for the smoke runs: new, empty or an earlier smoke's (cleared
            first unless ``keep``; see :func:`prepare_out`).
        plots: the plots root handed to ``make_all``.
        plan: the runs a ``gridsearch run`` argv trains (see :data:`Plan`).
        quick: the smaller grid (for the test suite and ``make gpu-check``).
        keep: keep existing runs in ``out``.
        verbose: stream the sweep's output.
        report_dir: the folder ``make_all`` reads stores from and writes REPORT.md into
            (default: ``out`` itself).
        device: where the sweep trains (``cpu``, ``cuda``, ``cuda:N``; see :func:`smoke_args`).

    Returns:
        A :class:`SmokeReport`.

    Raises:
        SmokeRefused: ``out`` holds files the smoke did not create.

    """
    from bench.gridsearch.figures import make_all

    start = time.perf_counter()
    report = SmokeReport()
    prepared = prepare_out(out, keep)
    try:
        _sweep_kill_resume(out, plan, quick, device, verbose, prepared, report)
        report.figures = list(make_all(report_dir if report_dir is not None else out, plots))
    finally:  # what the smoke created is recorded even when it fails or is interrupted
        write_marker(out, _files(out) - prepared.foreign, report.figures or prepared.figures)
    # the last smoke's figures under this plots root that this one did not write again
    written, root = {Path(p).resolve() for p in report.figures}, plots.resolve()
    for stale in {Path(p) for p in prepared.figures} - written:
        if report.figures and stale.is_relative_to(root):
            stale.unlink(missing_ok=True)
    report.seconds = time.perf_counter() - start
    return report


def _sweep_kill_resume(
    out: Path,
    plan: Plan,
    quick: bool,
    device: str,
    verbose: bool,
    prepared: Prepared,
    report: SmokeReport,
) -> None:
    """Run steps 1-4 of the module docstring; put the problems found into ``report``."""
    store = RunStore(out)
    grid, _ = expected_jobs(out, quick, plan, device)
    command = _command(out, quick, device)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    sink = None if verbose else subprocess.DEVNULL
    proc = subprocess.Popen(command, start_new_session=True, env=env, stdout=sink, stderr=sink)
    try:
        while True:
            finished, midway = _kill_point(store, grid)
            if finished and midway and _frozen_at_kill_point(proc, store, grid):
                break
            if proc.poll() is not None:
                report.problems.append(f"sweep ended (rc {proc.returncode}) before the kill point")
                break
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = {rid: store.read_sidecar(rid) for rid in _kill_point(store, grid)[0]}
    report.finished_before_kill = sorted(before)
    report.interrupted = [j.run_id for j in grid if store.status(j.run_id) == "interrupted"]
    if not report.interrupted and report.ok:
        report.problems.append("no run was mid-way at the kill")
    if verbose:
        print(
            f"smoke: killed the sweep: {len(before)} finished, "
            f"{len(report.interrupted)} interrupted; resuming",
            flush=True,
        )

    rc = subprocess.run(command, env=env, stdout=sink, stderr=sink).returncode
    if rc != 0:
        report.problems.append(f"the resumed sweep exited with {rc}")
    grid, reruns = expected_jobs(out, quick, plan, device)
    jobs = {j.run_id: j for j in grid + reruns}
    report.runs = len(jobs)
    if not reruns:
        report.problems.append("no best setting was chosen, so no seed reruns ran")
    for run_id, cfg in jobs.items():
        status = store.status(run_id)
        if status not in ("finished", "diverged"):
            report.problems.append(f"{run_id} ({cfg.method} lr={cfg.lr}) is {status}")
            continue
        report.problems += _check_csv(store, cfg, status)
    for run_id, sidecar in before.items():
        if store.read_sidecar(run_id) != sidecar:
            report.problems.append(f"{run_id} finished before the kill but was redone")
    for run_id in report.interrupted:
        sidecar = store.read_sidecar(run_id)
        if not sidecar.get("resumed") or len(sidecar.get("attempts") or []) != 2:
            report.problems.append(f"{run_id} did not resume from its checkpoint")
    leftovers = sorted(
        Path(rel).name
        for rel in _files(out) - prepared.foreign
        if Path(rel).suffix in (".pt", ".tmp")
    )
    if leftovers:
        report.problems.append(f"left-over files: {leftovers}")
