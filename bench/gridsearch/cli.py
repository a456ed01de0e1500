"""``curvbench gridsearch``: the paper's alpha/lambda grid search, its status and its smoke test.

    curvbench gridsearch run                      # the paper's grid + 10-seed reruns (resumable)
    curvbench gridsearch run --problems cifar10_3c3d --methods KFAC Adam -j 2 --runs-per-slot 2
    curvbench gridsearch status                   # expected / done / running / ... per method
    curvbench gridsearch best                     # the chosen setting per (problem, method)
    curvbench gridsearch smoke                    # tiny synthetic grid, kill -9, resume, figures
    curvbench gridsearch unlock                   # remove stale run locks (--force: live ones)
    curvbench gridsearch export --format deepobs OUT   # our runs as DeepOBS result JSON
    curvbench gridsearch import-deepobs DIR        # DeepOBS results as baselines of the figures

Every run is identified by a hash of its config; rerunning skips finished runs, resumes
interrupted ones from their last epoch checkpoint, and a changed grid reuses what matches.
On a SLURM cluster see docs/cluster.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from bench import options as opt
from bench.gridsearch.cli_slurm import add_slurm_arguments, slurm_options_from_args
from bench.gridsearch.fingerprint import fingerprint, record, resume_target
from bench.gridsearch.grid import (
    BASELINE_LRS,
    BEST_SEEDS,
    GRID_SEED,
    METHODS,
    PAPER_DAMPINGS,
    PAPER_LRS,
    PAPER_METHODS,
    SOURCES,
    RunConfig,
    grid,
)
from bench.gridsearch.store import (
    STATUS_COLUMNS,
    RunStore,
    best_settings,
    check_done_rows,
    seed_runs,
    status_table,
)
from bench.results_io import CSVFileError

#: Environment variable naming the data directory (``problems.data.cifar``).
DATA_ENV = "CURVBENCH_DATA"

DEFAULT_PROBLEMS = ("cifar10_3c3d", "cifar100_allcnnc")
#: This machine's own store (git-ignored); the committed stores live in ``REFERENCE_DIR``.
DEFAULT_OUT = "results/gridsearch/local/paper"
REFERENCE_DIR = "results/gridsearch/reference"
#: The committed smoke reference (``--update-reference``) and the smoke's default output.
SMOKE_REFERENCE = f"{REFERENCE_DIR}/smoke"
SMOKE_OUT = "results/gridsearch/local/smoke"
SMOKE_PLOTS = "plots/local"


class UsageError(Exception):
    """A bad combination of options found before any work (printed as one line, exit 2)."""


def _problem_names() -> tuple[str, ...]:
    import problems

    return problems.names()


def _problem(text: str) -> str:
    return opt.one_of(_problem_names(), "problem")(text)


_problem.__name__ = "problem"


def _add_problems(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--problems``: names checked at parse time, the valid ones listed in the help."""
    parser.add_argument(
        "--problems",
        nargs="+",
        type=_problem,
        default=list(DEFAULT_PROBLEMS),
        metavar="PROBLEM",
        help=f"problems among {', '.join(_problem_names())} (default: %(default)s)",
    )


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options that define the sweep's runs (shared by run, status and best)."""
    g = parser.add_argument_group("what to run")
    _add_problems(g)
    g.add_argument(
        "--methods",
        nargs="+",
        default=None,
        choices=METHODS,
        metavar="METHOD",
        help=f"methods among {', '.join(METHODS)} (default: the paper's per problem)",
    )
    g.add_argument(
        "--lrs", nargs="+", type=opt.positive_float, default=list(PAPER_LRS), help="curvature lrs"
    )
    g.add_argument(
        "--dampings",
        nargs="+",
        type=opt.positive_float,
        default=list(PAPER_DAMPINGS),
        help="dampings",
    )
    g.add_argument(
        "--baseline-lrs",
        nargs="+",
        type=opt.positive_float,
        default=list(BASELINE_LRS),
        help="baseline lrs (default: DeepOBS's 36 values 1e-5..1e2)",
    )
    g.add_argument(
        "--seeds",
        nargs="+",
        type=opt.nonnegative_int,
        default=list(BEST_SEEDS),
        help="seeds of the best setting's reruns (default 42..51)",
    )
    g.add_argument("--no-best", action="store_true", help="run the grid only, no seed reruns")
    g.add_argument(
        "--epochs", type=opt.positive_int, default=None, help="epochs (default: the problem's)"
    )
    g.add_argument(
        "--batch-size", type=opt.positive_int, default=None, help="default: the problem's"
    )
    g.add_argument(
        "--source",
        choices=SOURCES,
        default="real",
        help="data: real (the problem's data set), synthetic (same shapes), or the real data "
        "by family name, cifar / mnist (cifar: the name earlier stores used; same run ids)",
    )
    g.add_argument(
        "--average",
        choices=("mean", "fresh"),
        default=None,
        help="curvature estimate: running mean since the start (paper's code, default) or "
        "this batch's (paper's text)",
    )
    g.add_argument(
        "--inverse-every",
        type=opt.positive_int,
        default=None,
        help="recompute inverses every k steps (1)",
    )
    g.add_argument(
        "--backend",
        choices=("auto", "ours", "backpack"),
        default=None,
        help="curvature implementation (default auto: ours)",
    )
    g.add_argument(
        "--max-steps-per-epoch",
        type=opt.positive_int,
        default=None,
        help="SMOKE ONLY: truncate every epoch to this many steps",
    )
    for flag, what in (
        ("--n-train", "use this many training images"),
        ("--n-test", "use this many test images"),
        ("--train-eval-size", "train_eval images"),
    ):
        g.add_argument(flag, type=opt.positive_int, default=None, help=what)
    g.add_argument(
        "--out",
        type=opt.output_dir,
        default=DEFAULT_OUT,
        help="the run store (default: %(default)s); made absolute before anything is submitted",
    )


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Return ``RunConfig.options`` from the parsed flags (unset flags are left out)."""
    options: dict[str, Any] = {}
    for key in ("average", "inverse_every", "backend", "max_steps_per_epoch"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    data = {
        k: getattr(args, k)
        for k in ("n_train", "n_test", "train_eval_size")
        if getattr(args, k) is not None
    }
    if data:
        options["data"] = data
    return options


def grid_jobs(args: argparse.Namespace, device: str = "cpu") -> list[RunConfig]:
    """Return the grid runs the flags describe (problem defaults for epochs/batch size)."""
    import problems

    jobs = []
    for name in args.problems:
        problem = problems.get(name)
        jobs += grid(
            [name],
            args.methods or PAPER_METHODS.get(name),
            lrs=args.lrs,
            dampings=args.dampings,
            baseline_lrs=args.baseline_lrs,
            seed=GRID_SEED,
            epochs=args.epochs or problem.epochs,
            batch_size=args.batch_size or problem.batch_size,
            source=args.source,
            options=options_from_args(args),
            device=device,
        )
    return jobs


def plan_from_argv(argv: list[str]) -> tuple[list[RunConfig], list[int]]:
    """Return the grid runs and the rerun seeds that ``gridsearch run argv`` would use (CPU)."""
    parser = argparse.ArgumentParser()
    add_sweep_arguments(parser)
    args, _ = parser.parse_known_args(argv)
    return grid_jobs(args, "cpu"), args.seeds


def print_status(grid: list[RunConfig], store: RunStore, seeds: list[int], best: bool) -> int:
    """Print the status table (grid + known seed reruns); returns the runs left."""
    chosen = best_settings(grid, store) if best else {}
    jobs = grid + seed_runs(chosen, seeds)
    rows = status_table(jobs, store)
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in STATUS_COLUMNS}
    print("  ".join(c.ljust(widths[c]) for c in STATUS_COLUMNS))
    for row in rows:
        print("  ".join(str(row[c]).ljust(widths[c]) for c in STATUS_COLUMNS))
    left = sum(r["expected"] - r["finished"] - r["diverged"] for r in rows)
    undecided = [f"{p}/{m}" for (p, m), cfg in chosen.items() if cfg is None]
    print(f"left: {left} run(s) in {store.root}")
    if best and undecided:
        print(
            f"seed reruns not planned yet (grid unfinished or all diverged): {', '.join(undecided)}"
        )
    return left


# --------------------------------------------------------------------------------------------
# subcommands
# --------------------------------------------------------------------------------------------


def check_slurm_available() -> None:
    """Raise :class:`UsageError` unless ``sbatch`` is on PATH and submitit is installed."""
    if shutil.which("sbatch") is None:
        raise UsageError(
            "--executor slurm: sbatch not found on PATH (run this on a SLURM login node, "
            "or use --executor local)"
        )
    if importlib.util.find_spec("submitit") is None:
        raise UsageError("--executor slurm: the submitit package is missing (pip install submitit)")


def slurm_device(device: str | None, gpus: int) -> str:
    """Return the device a SLURM task trains on; the device and ``--slurm-gpus`` must agree.

    Nothing is resolved on the submitting host (a login node may have no GPU): without
    ``--device`` a task given GPUs trains on CUDA (and fails loudly on a node without one),
    any other is ``auto``, resolved on its node (:func:`bench.gridsearch.train.resolve_device`).
    """
    if device is None:
        return "cuda" if gpus > 0 else "auto"
    if device.startswith("cuda") and gpus == 0:
        raise UsageError(
            f"--device {device} needs GPUs on the nodes: add --slurm-gpus 1 (or more), "
            "or use --device cpu"
        )
    index = device.partition(":")[2]
    if index and int(index) >= gpus > 0:
        raise UsageError(
            f"--device {device} names GPU {index}, but --slurm-gpus {gpus} gives each task "
            f"GPU(s) 0..{gpus - 1}: use --device cuda, or --slurm-gpus {int(index) + 1}"
        )
    if device == "cpu" and gpus > 0:
        raise UsageError(
            f"--slurm-gpus {gpus} asks for GPUs but --device cpu trains on the CPU: "
            "use --device cuda, or drop --slurm-gpus"
        )
    return device


def local_device(device: str | None) -> str:
    """Return the device a local run trains on (checked here: it runs on this machine)."""
    if device is None:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    opt.require_device(device)
    return device


def cmd_run(args: argparse.Namespace) -> int:
    """Run the grid, then the best settings' seed reruns; print what is left."""
    from bench.gridsearch.executors import make_executor

    args.out = Path(args.out).resolve()  # what is submitted names the store absolutely
    slurm: dict[str, Any] = {}
    gpus = args.gpus
    if args.executor == "slurm":
        device = slurm_device(args.device, args.slurm_gpus)
        check_slurm_available()
        slurm = slurm_options_from_args(args)
        if args.data_dir is not None:
            slurm["setup"] = [
                f"export {DATA_ENV}={shlex.quote(str(args.data_dir))}",
                *slurm["setup"],
            ]
    else:
        device = local_device(args.device)
        if device.startswith("cuda") and gpus is None:
            import torch

            gpus = [str(i) for i in range(torch.cuda.device_count())]
    if args.data_dir is not None:
        os.environ[DATA_ENV] = str(args.data_dir)  # the local workers inherit it
    jobs_per_slot = args.jobs if args.jobs is not None else (len(gpus) if gpus else 1)
    executor = make_executor(
        args.executor,
        jobs=jobs_per_slot,
        runs_per_slot=args.runs_per_slot,
        gpus=gpus if device.startswith("cuda") else None,
        **slurm,
    )
    current = fingerprint(device, args.source)
    out, note = resume_target(args.out, current)
    if note:
        print(f"gridsearch run: {note}")
    store = RunStore(out)
    check_done_rows(store)  # a torn CSV of a done run: say so before any work
    record(store.root, current)
    grid = grid_jobs(args, device)
    print(f"grid: {len(grid)} runs -> {store.root} ({type(executor).__name__}, {device})")
    executor.run(grid, store)
    if not args.no_best:
        reruns = seed_runs(best_settings(grid, store), args.seeds)
        print(f"best settings' seed reruns: {len(reruns)} runs")
        executor.run(reruns, store)
    left = print_status(grid, store, args.seeds, not args.no_best)
    return 0 if left == 0 else 3


def cmd_status(args: argparse.Namespace) -> int:
    """Print expected / done / running / failed / diverged per (problem, method)."""
    print_status(grid_jobs(args), RunStore(args.out), args.seeds, not args.no_best)
    return 0


def cmd_unlock(args: argparse.Namespace) -> int:
    """Remove stale run locks of a store (``--force``: live ones too, with a warning)."""
    store = RunStore(args.out)
    folder = store.root / "locks"
    run_ids = args.run_ids or sorted(p.stem for p in folder.glob("*.lock"))
    removed = 0
    for run_id in run_ids:
        holder = store.lock_holder(run_id)
        if holder is None:
            continue
        live = holder.is_live(store.lock_ttl_s)
        who = f"{holder.host} pid {holder.pid}, heartbeat {holder.age_s():.0f} s ago"
        if live and not args.force:
            print(f"kept   {run_id}: live lock ({who}); --force removes it")
            continue
        if store.unlock(run_id, force=args.force):
            removed += 1
            if live:
                print(
                    f"WARNING: removed the LIVE lock of {run_id} ({who}); if that process still "
                    "trains the run, a second sweep may train it twice",
                    file=sys.stderr,
                )
            else:
                print(f"removed {run_id}: stale lock ({who})")
    print(f"unlock: removed {removed} lock(s) in {store.root}")
    return 0


def cmd_best(args: argparse.Namespace) -> int:
    """Print the chosen setting per (problem, method) by final validation accuracy."""
    store = RunStore(args.out)
    for (problem, method), cfg in best_settings(grid_jobs(args), store).items():
        if cfg is None:
            print(f"{problem:18s} {method:13s} (grid not finished, or every run diverged)")
            continue
        row = store.read_rows(cfg.run_id)[-1]
        damping = "-" if cfg.damping is None else f"{cfg.damping:g}"
        print(
            f"{problem:18s} {method:13s} lr={cfg.lr:<10.3g} damping={damping:<8s} "
            f"valid_acc={float(row['valid_acc']):.4f} run_id={cfg.run_id}"
        )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write a store's done runs as DeepOBS result JSON (``bench.gridsearch.deepobs_io``)."""
    from bench.gridsearch.deepobs_io import export_store

    try:
        written = export_store(RunStore(args.store), args.out)
    except FileExistsError as err:
        raise UsageError(str(err)) from None
    print(f"export: {len(written)} DeepOBS result file(s) under {args.out}")
    return 0


def cmd_import_deepobs(args: argparse.Namespace) -> int:
    """Copy DeepOBS result JSON into a store's ``deepobs/`` folder (drawn as baselines)."""
    from bench.gridsearch.deepobs_io import BASELINE_FOLDER, DeepOBSFormatError, import_deepobs

    try:
        copied = import_deepobs(args.src, RunStore(args.store))
    except (DeepOBSFormatError, FileExistsError) as err:
        raise UsageError(str(err)) from None
    print(f"import-deepobs: {len(copied)} file(s) into {Path(args.store) / BASELINE_FOLDER}")
    return 0


def cmd_smoke(args: argparse.Namespace) -> int:
    """Run the smoke grid with a kill -9 and a resume, check the store, build the figures."""
    from bench.gridsearch.smoke import SmokeRefused, run_smoke

    opt.require_device(args.device)  # before any file is touched
    if args.update_reference:
        out, plots = Path(SMOKE_REFERENCE), Path(args.plots or "plots")
        report_dir = Path(REFERENCE_DIR).parent  # results/gridsearch/REPORT.md, as `make figures`
    else:
        out, plots = Path(args.out), Path(args.plots or SMOKE_PLOTS)
        report_dir = out
    try:
        report = run_smoke(
            out,
            plots,
            plan_from_argv,
            quick=args.quick,
            keep=args.keep,
            verbose=True,
            report_dir=report_dir,
            device=args.device,
        )
    except SmokeRefused as err:
        raise UsageError(str(err)) from None
    print(report.summary())
    return 0 if report.ok else 1


def cmd_steptime(args: argparse.Namespace) -> int:
    """Print each optimizer's step time relative to SGD-momentum (one process, interleaved)."""
    import torch

    from bench.gridsearch.steptime import measure
    from bench.results_io import atomic_write_csv

    device = local_device(args.device)
    torch.set_num_threads(args.threads)
    rows = measure(
        args.problems,
        args.methods,
        batch_size=args.batch_size,
        rounds=args.rounds,
        device=device,
        backend=args.backend,
    )
    print(f"{'problem':18s} {'method':13s} {'ratio to SGD':>12s}  (median of {args.rounds})")
    for r in rows:
        print(f"{r['problem']:18s} {r['method']:13s} {r['ratio_to_sgd']:12.2f}")
    if args.csv:
        atomic_write_csv(args.csv, rows, list(rows[0]))
        print(f"wrote {args.csv}")
    return 0


def cmd_throughput(args: argparse.Namespace) -> int:
    """Measure the local executor's runs/hour for several runs-per-slot values on this machine."""
    import tempfile
    import time

    from bench.gridsearch.executors import LocalPoolExecutor

    print(f"{'runs/slot':>9s} {'runs':>5s} {'wall s':>8s} {'runs/hour':>10s}")
    for per_slot in args.runs_per_slot:
        jobs = [
            RunConfig(
                "cifar10_3c3d", "Momentum", 1e-3 * (i + 1), None, epochs=args.epochs,
                batch_size=32, source="synthetic", device="cpu",
                options={"max_steps_per_epoch": args.steps,
                         "data": {"n_train": 320, "n_test": 64, "train_eval_size": 64}},
            )
            for i in range(args.runs)
        ]  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            LocalPoolExecutor(runs_per_slot=per_slot).run(jobs, RunStore(tmp))
            wall = time.perf_counter() - start
        print(f"{per_slot:9d} {len(jobs):5d} {wall:8.1f} {3600 * len(jobs) / wall:10.1f}")
    return 0


def _device_or_auto(text: str) -> str | None:
    return None if text == "auto" else opt.device(text)


_device_or_auto.__name__ = "device"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``gridsearch`` and its subcommands on the ``curvbench`` subparsers."""
    parser = subparsers.add_parser(
        "gridsearch",
        help="the paper's alpha/lambda grid search (run, status, best, smoke, unlock)",
        description=opt.plain(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    opt.one_line_errors(parser)
    sub = parser.add_subparsers(dest="gridsearch_command", metavar="SUBCOMMAND")

    run = sub.add_parser(
        "run",
        help="run the grid and the best settings' seed reruns (resumable)",
        description="Run the grid, then rerun each (problem, method)'s best setting (final "
        "validation accuracy) with --seeds. Finished runs are skipped, interrupted ones resume. "
        "Exit code 3 if runs are left (failed or still held by another process).",
    )
    add_sweep_arguments(run)
    ex = run.add_argument_group("how to run")
    ex.add_argument(
        "--device",
        type=_device_or_auto,
        default=None,
        help="cpu, cuda or cuda:N (default auto: local runs use cuda if this machine has "
        "it; SLURM tasks use cuda when --slurm-gpus > 0, decided on the node, not here)",
    )
    ex.add_argument(
        "--executor", choices=("local", "slurm"), default="local", help="default: %(default)s"
    )
    ex.add_argument(
        "-j",
        "--jobs",
        type=opt.positive_int,
        default=None,
        help="local slots: GPUs on cuda (default: all), CPU shares on cpu (default 1; "
        "1 slot x 1 run = in-process)",
    )
    ex.add_argument(
        "--runs-per-slot", type=opt.positive_int, default=1, help="concurrent runs per slot (1)"
    )
    ex.add_argument(
        "--gpus",
        nargs="+",
        default=None,
        help="GPUs for the slots: indices into this process's CUDA_VISIBLE_DEVICES, or UUIDs",
    )
    ex.add_argument(
        "--data-dir",
        type=lambda text: opt.existing_dir(text).resolve(),
        default=None,
        help=f"the data directory (default: ${DATA_ENV}, else ~/.cache/curvbench); on a "
        "cluster a folder on a shared filesystem, passed to the tasks as an absolute path",
    )
    add_slurm_arguments(run)
    run.set_defaults(gridsearch_func=cmd_run)

    status = sub.add_parser(
        "status", help="expected / done / running / failed / diverged, and the devices used"
    )
    add_sweep_arguments(status)
    status.set_defaults(gridsearch_func=cmd_status)

    best = sub.add_parser("best", help="the best setting per (problem, method)")
    add_sweep_arguments(best)
    best.set_defaults(gridsearch_func=cmd_best)

    unlock = sub.add_parser(
        "unlock",
        help="remove stale run locks (dead holder, or no heartbeat within the TTL)",
        description="Remove the locks of runs whose holder died (same host) or whose heartbeat "
        "is older than the lock TTL (any host). A live lock is kept unless --force: removing "
        "one while its process still trains lets a second sweep train the run twice.",
    )
    unlock.add_argument("run_ids", nargs="*", metavar="RUN_ID", help="default: every lock")
    unlock.add_argument(
        "--out", type=opt.existing_dir, default=DEFAULT_OUT, help="the run store (%(default)s)"
    )
    unlock.add_argument("--force", action="store_true", help="remove live locks too (careful)")
    unlock.set_defaults(gridsearch_func=cmd_unlock)

    steptime = sub.add_parser(
        "steptime",
        help="step time of each optimizer relative to SGD-momentum (one process, interleaved)",
    )
    _add_problems(steptime)
    steptime.add_argument(
        "--methods",
        nargs="+",
        default=["Momentum", "Adam", "DiagGGNExact", "DiagGGNMC", "KFAC", "KFLR"],
        choices=METHODS,
        metavar="METHOD",
        help=f"methods to time, among {', '.join(METHODS)} (default: all but KFRA, infeasible "
        "on CNNs)",
    )
    steptime.add_argument(
        "--batch-size", type=opt.positive_int, default=32, help="default: %(default)s"
    )
    steptime.add_argument(
        "--rounds", type=opt.positive_int, default=5, help="timed rounds (default 5)"
    )
    steptime.add_argument(
        "--device",
        type=_device_or_auto,
        default=None,
        help="cpu, cuda or cuda:N (default auto: cuda if this machine has it)",
    )
    steptime.add_argument(
        "--backend",
        choices=("auto", "ours", "backpack"),
        default="auto",
        help="curvature implementation: auto, ours or backpack (default auto: ours)",
    )
    steptime.add_argument(
        "--threads", type=opt.positive_int, default=2, help="torch threads (default 2)"
    )
    steptime.add_argument("--csv", default=None, help="also write the rows to this CSV")
    steptime.set_defaults(gridsearch_func=cmd_steptime)

    throughput = sub.add_parser(
        "throughput",
        help="the local executor's runs/hour for 1, 2, 4 runs per slot (tiny synthetic runs)",
    )
    throughput.add_argument("--runs-per-slot", nargs="+", type=opt.positive_int, default=[1, 2, 4])
    throughput.add_argument("--runs", type=opt.positive_int, default=8, help="runs per setting")
    throughput.add_argument("--epochs", type=opt.positive_int, default=1, help="epochs per run")
    throughput.add_argument("--steps", type=opt.positive_int, default=5, help="steps per epoch")
    throughput.set_defaults(gridsearch_func=cmd_throughput)

    export = sub.add_parser(
        "export",
        help="write a store's runs as DeepOBS result JSON (<problem>/<optimizer>/<setting>/)",
        description="Write every finished or diverged run of a store as a DeepOBS 1.1.2 result "
        "file in DeepOBS's folder layout, readable by deepobs.analyzer (docs/gridsearch.md).",
    )
    export.add_argument("out", type=opt.output_dir, metavar="OUT", help="output folder")
    export.add_argument("--format", choices=("deepobs",), default="deepobs", help="deepobs")
    export.add_argument(
        "--store", type=opt.existing_dir, default=DEFAULT_OUT, help="the run store (%(default)s)"
    )
    export.set_defaults(gridsearch_func=cmd_export)

    importer = sub.add_parser(
        "import-deepobs",
        help="add DeepOBS result JSON to a store's figures as labelled baselines",
        description="Check and copy every DeepOBS result (*.json) under DIR into "
        "<store>/deepobs/<problem>/<optimizer>/<setting>/; the learning-curve figures draw "
        "them dotted as 'DeepOBS baseline'.",
    )
    importer.add_argument("src", type=Path, metavar="DIR", help="DeepOBS results (or one file)")
    importer.add_argument(
        "--store", type=opt.existing_dir, default=DEFAULT_OUT, help="the run store (%(default)s)"
    )
    importer.set_defaults(gridsearch_func=cmd_import_deepobs)

    smoke = sub.add_parser(
        "smoke",
        help="tiny synthetic grid end to end, with kill -9 and resume (a few minutes on CPU)",
        description="Run a tiny grid on synthetic data in a subprocess, SIGKILL it once a run "
        "finished and another is mid-way, resume, check that no finished run was redone and "
        "every CSV is whole, then build the figures and REPORT.md. The default output is this "
        f"machine's own ({SMOKE_OUT}, plots under {SMOKE_PLOTS}); the committed reference "
        f"({SMOKE_REFERENCE}) is rewritten only with --update-reference.",
    )
    smoke.add_argument(
        "--out",
        type=opt.output_dir,
        default=SMOKE_OUT,
        help="the smoke's store (default: %(default)s); an existing folder must be empty or an "
        "earlier smoke's (only the files that smoke recorded are deleted)",
    )
    smoke.add_argument(
        "--plots",
        default=None,
        help=f"plots root (default: {SMOKE_PLOTS}; plots with --update-reference)",
    )
    smoke.add_argument(
        "--quick", action="store_true", help="an even smaller grid (tests, make gpu-check)"
    )
    smoke.add_argument(
        "--device",
        type=opt.device,
        default="cpu",
        help="where the sweep trains: cpu, cuda or cuda:N (default: %(default)s, as in CI; "
        "make gpu-check runs --device cuda --quick); a device this machine lacks is an error",
    )
    smoke.add_argument(
        "--keep", action="store_true", help="keep existing runs in --out (default: start fresh)"
    )
    smoke.add_argument(
        "--update-reference",
        action="store_true",
        help=f"write the committed reference {SMOKE_REFERENCE} (and plots/) instead of --out",
    )
    smoke.set_defaults(gridsearch_func=cmd_smoke)

    for subparser in sub.choices.values():
        opt.one_line_errors(subparser)

    def dispatch(args: argparse.Namespace) -> int:
        func = getattr(args, "gridsearch_func", None)
        if func is None:
            parser.print_help(sys.stderr)
            return 2
        try:
            return func(args)
        except UsageError as err:  # a combination of flags: as argparse's errors
            prog = f"curvbench gridsearch {args.gridsearch_command}"
            print(f"{prog}: error: {err} (see --help)", file=sys.stderr)
            return 2
        except (opt.DeviceUnavailable, CSVFileError) as err:  # this machine, or a file
            print(f"curvbench gridsearch {args.gridsearch_command}: error: {err}", file=sys.stderr)
            return 2

    parser.set_defaults(func=dispatch)
    return parser
