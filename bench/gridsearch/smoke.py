"""The grid search's smoke test: a tiny synthetic grid, a ``kill -9`` mid-sweep and a resume.

``run_smoke(out, plots)``:

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
pytest one) is cifar10_3c3d, DiagGGN-MC and SGD-momentum only.
"""

from __future__ import annotations

import os
import shutil
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


#: The file that marks a folder as a smoke store (the only kind the smoke clears).
MARKER = ".curvbench-smoke"


class SmokeRefused(ValueError):
    """The smoke's output folder holds files the smoke did not create."""


def prepare_out(out: Path, keep: bool) -> None:
    """Make ``out`` an empty (or, with ``keep``, existing) smoke store, tagged with :data:`MARKER`.

    Only a folder with the marker is cleared: the smoke never deletes what it did not create.

    Raises:
        SmokeRefused: ``out`` is a non-empty folder without the marker.

    """
    if out.exists() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise SmokeRefused(
            f"--out {out} is not empty and was not made by the smoke (no {MARKER} in it): "
            "pass a new or empty folder"
        )
    if out.exists() and not keep:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by `curvbench gridsearch smoke`; cleared by its next run\n")


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


def _command(out: Path, quick: bool) -> list[str]:
    return [sys.executable, "-m", "bench", "gridsearch", "run", *SMOKE_ARGS[quick], "-j", "1",
            "--out", str(out)]  # fmt: skip


#: ``plan(argv) -> (grid runs, seeds)``: what ``curvbench gridsearch run argv`` would train
#: (``bench.gridsearch.cli.plan_from_argv``; handed in so this module needs no argument parsing).
Plan = Callable[[list[str]], tuple[list[RunConfig], list[int]]]


def expected_jobs(out: Path, quick: bool, plan: Plan) -> tuple[list[RunConfig], list[RunConfig]]:
    """Return the smoke's grid runs and (once the grid is done) its seed reruns."""
    grid, seeds = plan([*SMOKE_ARGS[quick], "--out", str(out)])
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
) -> SmokeReport:
    """Run the smoke test (see the module docstring) and return what it saw.

    Args:
        out: the run store for the smoke runs: new, empty or an earlier smoke's (cleared
            first unless ``keep``; see :func:`prepare_out`).
        plots: the plots root handed to ``make_all``.
        plan: the runs a ``gridsearch run`` argv trains (see :data:`Plan`).
        quick: the smaller grid (for the test suite).
        keep: keep existing runs in ``out``.
        verbose: stream the sweep's output.
        report_dir: the folder ``make_all`` reads stores from and writes REPORT.md into
            (default: ``out`` itself).

    Returns:
        A :class:`SmokeReport`.

    Raises:
        SmokeRefused: ``out`` holds files the smoke did not create.

    """
    from bench.gridsearch.figures import make_all

    start = time.perf_counter()
    report = SmokeReport()
    prepare_out(out, keep)
    store = RunStore(out)
    grid, _ = expected_jobs(out, quick, plan)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    sink = None if verbose else subprocess.DEVNULL
    proc = subprocess.Popen(
        _command(out, quick), start_new_session=True, env=env, stdout=sink, stderr=sink
    )
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

    rc = subprocess.run(_command(out, quick), env=env, stdout=sink, stderr=sink).returncode
    if rc != 0:
        report.problems.append(f"the resumed sweep exited with {rc}")
    grid, reruns = expected_jobs(out, quick, plan)
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
    leftovers = [p.name for p in out.rglob("*") if p.suffix in (".pt", ".tmp")]
    if leftovers:
        report.problems.append(f"left-over files: {leftovers}")
    report.figures = list(make_all(report_dir if report_dir is not None else out, plots))
    report.seconds = time.perf_counter() - start
    return report
