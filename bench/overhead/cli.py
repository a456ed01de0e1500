"""``curvbench overhead``: time each quantity's training step against the plain gradient."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bench.spec import QUANTITIES

_EPILOG = """\
defaults:
  cuda: batch sizes 32 48 64 128 on both problems, 20 rounds, 2 warm-up rounds.
  cpu:  3C3D at 32 and 128, All-CNN-C at 128, %(crounds)s rounds, 1 warm-up round; on the
        100-class problem the C-column quantities (DiagGGNExact, KFLR, DiagHessian) at batch
        %(cbatch)s (labelled in the CSV's `note` column); BackPACK's default conv path is
        not timed for BatchGrad/SumGradSquared/Variance on All-CNN-C (10-22 s per step;
        its save-memory path is). About 11 minutes on 2 idle cores (10.7 measured).

examples:
  curvbench overhead                                   # the device's defaults
  curvbench overhead --rounds 2 --batch-sizes 8        # a quick end-to-end run
  curvbench overhead --device cuda --mode clean paper  # both timing modes on a GPU
  curvbench overhead --problems cifar10_3c3d --quantities BatchGrad KFAC --backends ours backpack

Output: <out-dir>/<name>.csv (one row per measurement) and <name>.json (environment sidecar).
A rerun skips rows already in the CSV; --redo re-measures them.
"""


def _configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the overhead flags to ``parser``."""
    from bench.overhead.backends import BACKENDS, DEFAULT_BACKENDS
    from bench.overhead.plan import CPU_C_COLUMN_BATCH, CPU_ROUNDS, DEFAULT_PROBLEMS, MODES

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _EPILOG % {"crounds": CPU_ROUNDS, "cbatch": CPU_C_COLUMN_BATCH}
    parser.add_argument("--problems", nargs="+", default=list(DEFAULT_PROBLEMS), metavar="NAME")
    parser.add_argument(
        "--quantities",
        nargs="+",
        default=list(QUANTITIES),
        metavar="Q",
        help=f"quantities to time (default: all ten: {' '.join(QUANTITIES)}); grad always runs",
    )
    parser.add_argument(
        "--backends",
        nargs="+",
        choices=[b for b in BACKENDS if b != "pytorch"],
        metavar="B",
        help=f"backends (default: {' '.join(DEFAULT_BACKENDS)}; on CPU without BackPACK's "
        "default conv path for BatchGrad/SumGradSquared/Variance on All-CNN-C); each runs "
        "what it has",
    )
    parser.add_argument("--batch-sizes", nargs="+", type=int, metavar="N", help="override")
    parser.add_argument(
        "--c-column-batch-size",
        type=int,
        metavar="N",
        help="batch size of DiagGGNExact/KFLR/DiagHessian on 100-class problems",
    )
    parser.add_argument("--rounds", type=int, help="timed rounds (default: cuda 20, cpu 3)")
    parser.add_argument("--warmup", type=int, help="warm-up rounds (default: cuda 2, cpu 1)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if any)")
    parser.add_argument("--mode", nargs="+", default=["clean"], choices=MODES)
    parser.add_argument("--out-dir", default="results/overhead", help="(default: %(default)s)")
    parser.add_argument("--name", help="file stem (default: the device type, e.g. cpu)")
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
        type=int,
        help="steps per memory measurement (default: cuda 2, cpu 1: each step drops the previous "
        "step's results first, so a second step adds no live memory on CPU, only minutes)",
    )
    parser.add_argument(
        "--mem-cap-gb",
        type=float,
        default=10.0,
        help="CPU: address-space headroom of each memory probe; beyond it a variant is `oom`",
    )
    parser.add_argument(
        "--probe-timeout", type=float, help="seconds per memory probe (default: none)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--cudnn-benchmark", action="store_true", help="set cudnn.benchmark")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.set_defaults(func=run_command)
    return parser


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``overhead`` on the ``curvbench`` subparsers."""
    parser = subparsers.add_parser(
        "overhead",
        help="time each quantity against the plain gradient (Fig. 6/3)",
        description=__doc__,
    )
    return _configure(parser)


def build_parser() -> argparse.ArgumentParser:
    """Return the standalone parser (``python -m bench.overhead.cli``)."""
    return _configure(
        argparse.ArgumentParser(prog="python -m bench.overhead.cli", description=__doc__)
    )


def run_command(args: argparse.Namespace) -> int:
    """Plan, print the defaults used, and run."""
    import torch

    from bench.overhead import plan as overhead_plan
    from bench.overhead import run as overhead_run

    torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
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
        plan = overhead_plan.default_plan(plan_options)
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
    )
    defaults = []
    if args.batch_sizes is None:
        defaults.append(f"batch sizes: {'cuda' if on_cuda else 'cpu'} defaults")
    if args.rounds is None:
        defaults.append(f"rounds: {run_options.rounds} ({'cuda' if on_cuda else 'cpu'} default)")
    defaults.extend(f"not timed: {skip}" for skip in overhead_plan.cpu_default_skips(plan_options))
    print(f"overhead on {device}: {len(plan)} measurements, threads={args.threads}")
    for group, members in overhead_plan.groups_of(plan).items():
        notes = sorted({m.note for m in members if m.note})
        print(f"  {group[0]} N={group[1]} {group[2]}: {len(members)} variants {' '.join(notes)}")
    if defaults:
        print("  defaults used: " + "; ".join(defaults))
    if args.dry_run:
        return 0
    name = args.name or torch.device(device).type
    config = {
        "argv": sys.argv[1:],
        "defaults_used": defaults,
        "problems": list(args.problems),
        "quantities": list(args.quantities),
        "backends": list(args.backends),
        "modes": list(args.mode),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
    }
    path = overhead_run.run(
        plan,
        run_options,
        args.out_dir,
        name,
        redo=args.redo,
        config=config,
        show_progress=args.progress,
    )
    print(f"overhead: wrote {path} and {path.with_suffix('.json')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.overhead``: parse ``argv`` and run (the ``curvbench overhead`` command)."""
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)
