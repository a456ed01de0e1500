"""``curvbench overhead``: time each quantity's training step against the plain gradient."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

_EPILOG = """\
defaults:
  cuda: batch sizes 32 48 64 128 on both problems, 20 rounds, 2 warm-up rounds.
  cpu:  3C3D at 32 and 128, All-CNN-C at 128, %(crounds)s rounds, 1 warm-up round; on the
        100-class problem the C-column quantities (DiagGGNExact, KFLR, DiagHessian) at batch
        %(cbatch)s (labelled in the CSV's `note` column); BackPACK's default conv path is
        not timed for BatchGrad/SumGradSquared/Variance on All-CNN-C (10-22 s per step;
        its save-memory path is); the peer libraries only on 3C3D at 32 (BatchGrad,
        DiagGGNMC, KFAC, EKFAC), next to ours' EKFAC and expand-factor KFAC; ours' per-step
        pattern (ours_perstep) for the first-order quantities on 3C3D. %(plan_size)s
        measurements, 7.4-7.6 min measured on an idle 2-core machine (two fresh clones; a
        slower machine took 10.7-14.7 min for the earlier 89: see docs/overhead.md).

examples:
  curvbench overhead                                   # the device's defaults, this machine
  curvbench overhead --rounds 2 --batch-sizes 8        # a quick end-to-end run
  curvbench overhead --device cuda --mode clean paper  # both timing modes on a GPU
  curvbench overhead --problems cifar10_3c3d --quantities BatchGrad KFAC --backends ours backpack
  curvbench overhead --preset fig9                     # the paper's Fig. 9 (3C3D-sigmoid)

Output: <out-dir>/<name>.csv (one row per measurement) and <name>.json (environment sidecar);
by default results/overhead/local/<machine>.csv (untracked; e.g. cpu-2core, nvidia-h200).
The committed references in results/overhead/reference/ are written only when --out-dir names
that folder. A rerun resumes (skips rows already in the CSV; --redo re-measures them) only into
a CSV of the same environment fingerprint (device name, torch version, threads, numeric flags,
benchmark version); otherwise it says so and writes <name>-2.csv. A truncated CSV is refused
with its file and line.
"""

#: where a run writes by default (untracked, see .gitignore); the committed references live in
#: ``results/overhead/reference/``
DEFAULT_OUT_DIR = "results/overhead/local"


def add_name_arguments(parser: argparse.ArgumentParser, problems: Sequence[str]) -> None:
    """Add ``--problems`` (default ``problems``) and ``--quantities`` (default: all) to ``parser``.

    Both are validated at parse time; the help and the errors list the valid names (the tiny test
    problems are accepted but not listed). ``curvbench overhead`` and
    ``python -m bench.overhead.cli_compare_table`` share them.
    """
    from bench import options
    from bench.overhead.peers import NEW_QUANTITIES
    from bench.overhead.problem_setup import TINY_PROBLEMS, registered_problems
    from bench.spec import QUANTITIES

    valid = registered_problems()
    parser.add_argument(
        "--problems",
        nargs="+",
        default=list(problems),
        metavar="NAME",
        type=options.one_of_listed(valid, TINY_PROBLEMS, "problem"),
        help=f"problems (default: {' '.join(problems)}; valid: {', '.join(valid)})",
    )
    parser.add_argument(
        "--quantities",
        nargs="+",
        default=list(QUANTITIES),
        metavar="Q",
        type=options.one_of((*QUANTITIES, *NEW_QUANTITIES), "quantity"),
        help=f"quantities to time (default: all ten: {' '.join(QUANTITIES)}; also "
        f"{' '.join(NEW_QUANTITIES)}); grad always runs",
    )


def _configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the overhead flags to ``parser``."""
    from bench import options
    from bench.overhead.backends import BACKENDS, DEFAULT_BACKENDS
    from bench.overhead.plan import (
        CPU_C_COLUMN_BATCH,
        CPU_ROUNDS,
        DEFAULT_PROBLEMS,
        MODES,
    )

    user_backends = [b for b in BACKENDS if b != "pytorch"]
    options.one_line_errors(parser)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _EPILOG % {
        "crounds": CPU_ROUNDS,
        "cbatch": CPU_C_COLUMN_BATCH,
        "plan_size": CPU_DEFAULT_PLAN_SIZE,
    }
    add_name_arguments(parser, DEFAULT_PROBLEMS)
    parser.add_argument(
        "--backends",
        nargs="+",
        type=options.one_of(user_backends, "backend"),
        metavar="B",
        help=f"backends (valid: {', '.join(user_backends)}; default: {' '.join(DEFAULT_BACKENDS)}, "
        "on CPU without BackPACK's default conv path for BatchGrad/SumGradSquared/Variance on "
        "All-CNN-C); each runs what it has",
    )
    parser.add_argument(
        "--batch-sizes", nargs="+", type=options.positive_int, metavar="N", help="override"
    )
    parser.add_argument(
        "--c-column-batch-size",
        type=options.positive_int,
        metavar="N",
        help="batch size of DiagGGNExact/KFLR/DiagHessian on 100-class problems",
    )
    parser.add_argument(
        "--rounds", type=options.positive_int, help="timed rounds (default: cuda 20, cpu 3)"
    )
    parser.add_argument(
        "--warmup", type=options.nonnegative_int, help="warm-up rounds (default: cuda 2, cpu 1)"
    )
    parser.add_argument(
        "--device",
        default=None,
        type=options.device,
        help="cpu, cuda, cuda:N (default: cuda if any)",
    )
    parser.add_argument("--mode", nargs="+", default=["clean"], choices=MODES)
    parser.add_argument(
        "--out-dir",
        default=DEFAULT_OUT_DIR,
        type=options.output_dir,
        help="(default: %(default)s, untracked; the committed references are in "
        "results/overhead/reference/)",
    )
    parser.add_argument(
        "--name", help="file stem (default: this machine, e.g. cpu-2core or nvidia-h200)"
    )
    parser.add_argument("--redo", action="store_true", help="re-measure rows already stored")
    parser.add_argument(
        "--no-memory",
        dest="memory",
        action="store_false",
        help="skip peak memory; on CPU this also skips the capped out-of-memory probe, so a "
        "variant needing more memory than the machine has (BackPACK's KFRA on these nets wants "
        "~11 GiB) runs unguarded",
    )
    parser.add_argument(
        "--memory-steps",
        type=options.positive_int,
        help="steps per memory measurement (default: cuda 2, cpu 1: each step drops the previous "
        "step's results first, so a second step adds no live memory on CPU, only minutes)",
    )
    parser.add_argument(
        "--mem-cap-gb",
        type=options.positive_float,
        default=10.0,
        help="CPU: address-space headroom of each memory probe; beyond it a variant is `oom`",
    )
    parser.add_argument(
        "--probe-timeout",
        type=options.positive_float,
        help="seconds per memory probe (default: none)",
    )
    parser.add_argument(
        "--threads", type=options.positive_int, default=2, help="torch threads (default: 2)"
    )
    parser.add_argument("--cudnn-benchmark", action="store_true", help="set cudnn.benchmark")
    parser.add_argument(
        "--tf32",
        action="store_true",
        help="allow TF32 in matmuls and cuDNN (default: off, full float32, for every variant)",
    )
    parser.add_argument(
        "--deterministic",
        action="store_true",
        help="torch.use_deterministic_algorithms(True) for every variant (slower kernels; an "
        "operation without a deterministic CUDA kernel makes its row `unsupported`)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--preset",
        choices=("fig8", "fig9"),
        help="the measurements of the paper's Fig. 8 or Fig. 9 (bench/overhead/presets.py): sets "
        "the problems, quantities, backends and batch sizes (CPU fig8: N=4, labelled) and the "
        "default --name <preset>-<machine>",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.set_defaults(func=run_command)
    return parser


#: measurements in the CPU default plan (``--dry-run`` prints it; a test keeps it true)
CPU_DEFAULT_PLAN_SIZE = 109


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``overhead`` on the ``curvbench`` subparsers."""
    parser = subparsers.add_parser(
        "overhead",
        help="time each quantity against the plain gradient (Fig. 6/3)",
        description=options_plain(__doc__),
    )
    return _configure(parser)


def build_parser() -> argparse.ArgumentParser:
    """Return the standalone parser (``python -m bench.overhead``)."""
    return _configure(
        argparse.ArgumentParser(prog="python -m bench.overhead", description=options_plain(__doc__))
    )


def options_plain(text: str | None) -> str | None:
    """``bench.options.plain`` (help text without reStructuredText markup)."""
    from bench.options import plain

    return plain(text)


def run_command(args: argparse.Namespace) -> int:
    """Check the device, plan, print the defaults used, run and summarise."""
    import torch

    from bench import options, results_io
    from bench.environment import machine_slug
    from bench.overhead import numerics as overhead_numerics
    from bench.overhead import plan as overhead_plan
    from bench.overhead import presets
    from bench.overhead import run as overhead_run

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if not options.device_ok(device, "curvbench overhead"):
        return 2
    torch.set_num_threads(args.threads)
    numerics = overhead_numerics.Numerics(
        tf32=args.tf32, cudnn_benchmark=args.cudnn_benchmark, deterministic=args.deterministic
    )
    on_cuda = torch.device(device).type == "cuda"
    explicit_backends = args.backends is not None
    args.backends = args.backends or list(overhead_plan.DEFAULT_BACKENDS)
    plan_options = overhead_plan.PlanOptions(
        problems=args.problems,
        quantities=args.quantities,
        backends=args.backends,
        cpu_skips=not explicit_backends,
        batch_sizes=args.batch_sizes,
        modes=args.mode,
        device=device,
        c_column_batch_size=args.c_column_batch_size,
    )
    try:
        if args.preset:
            plan_options = presets.apply(args, device, explicit_backends)
        plan = overhead_plan.default_plan(plan_options)
        if args.preset:
            plan = presets.label(plan, args.preset)
    except ValueError as err:
        print(f"curvbench overhead: error: {err}", file=sys.stderr)
        return 2
    run_options = overhead_run.RunOptions(
        rounds=args.rounds or (overhead_plan.CUDA_ROUNDS if on_cuda else overhead_plan.CPU_ROUNDS),
        warmup=args.warmup if args.warmup is not None else (2 if on_cuda else 1),
        memory=args.memory,
        memory_steps=args.memory_steps or (2 if on_cuda else 1),
        mem_cap_gb=args.mem_cap_gb,
        probe_timeout_s=args.probe_timeout,
        seed=args.seed,
        numerics=numerics,
    )
    defaults = []
    if args.batch_sizes is None:
        defaults.append(f"batch sizes: {'cuda' if on_cuda else 'cpu'} defaults")
    if args.rounds is None:
        defaults.append(f"rounds: {run_options.rounds} ({'cuda' if on_cuda else 'cpu'} default)")
    defaults.extend(f"not timed: {skip}" for skip in overhead_plan.cpu_default_skips(plan_options))
    print(f"overhead on {device}: {len(plan)} measurements, threads={args.threads}")
    for group, members in overhead_plan.groups_of(plan).items():
        print(f"  {group[0]} N={group[1]} {group[2]}: {len(members)} variants")
        for note in sorted({m.note for m in members if m.note}):  # each note once, on its line
            print(f"    - {note}")
    if defaults:
        print("  defaults used: " + "; ".join(defaults))
    print(f"  numerics: {overhead_numerics.current_flags_text(numerics)}")
    if args.deterministic and on_cuda:
        affected = overhead_numerics.scatter_affected(
            list(args.problems), list(args.quantities), list(args.backends)
        )
        if affected:
            print(
                "  --deterministic: ours' MaxPool2d rules (scatter_add_/index_add_) run on "
                "torch's slower deterministic kernels for " + "; ".join(affected)
            )
    if args.dry_run:
        return 0
    name = args.name or "-".join(filter(None, (args.preset, machine_slug(device))))
    config = {
        "argv": sys.argv[1:],
        "defaults_used": defaults,
        "problems": list(args.problems),
        "quantities": list(args.quantities),
        "backends": list(args.backends),
        "modes": list(args.mode),
        "preset": args.preset,
        "cudnn_benchmark": bool(numerics.cudnn_benchmark and not numerics.deterministic),
    }
    try:
        path = overhead_run.run(
            plan,
            run_options,
            args.out_dir,
            name,
            redo=args.redo,
            config=config,
            show_progress=args.progress,
        )
    except results_io.CSVFileError as err:
        print(
            f"curvbench overhead: error: cannot resume into {err} "
            "(move the file away or pass --name to start a new one)",
            file=sys.stderr,
        )
        return 2
    counts = overhead_run.status_counts(path, plan)
    summary = ", ".join(f"{counts.get(s, 0)} {s}" for s in SUMMARY_STATUSES)
    others = {s: c for s, c in counts.items() if s not in SUMMARY_STATUSES}
    summary += "".join(f", {c} {s}" for s, c in others.items())
    print(f"overhead: wrote {path} and {path.with_suffix('.json')}: {summary}")
    if plan and not counts.get("ok"):
        print("curvbench overhead: error: every measurement failed", file=sys.stderr)
        return 1
    return 0


#: statuses the end-of-run summary always counts
SUMMARY_STATUSES = ("ok", "oom", "unsupported", "unavailable", "error")


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.overhead``: parse ``argv`` and run (the curvbench overhead command)."""
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)
