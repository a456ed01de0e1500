"""``python -m bench.overhead.cli_profile_step``: where one step's time goes, from the shell.

    python -m bench.overhead.cli_profile_step cifar100_allcnnc DiagGGNMC  # batch 128, 3 steps
    python -m bench.overhead.cli_profile_step cifar10_3c3d KFAC --batch-size 32 --trace kfac.json

What is measured and how to read the table: :mod:`bench.overhead.profile_step`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

from bench import options
from bench.overhead import profile_step
from bench.overhead.peers import NEW_QUANTITIES
from bench.overhead.problem_setup import TINY_PROBLEMS, registered_problems
from bench.spec import QUANTITIES


def build_parser() -> argparse.ArgumentParser:
    """Build the parser: problem, quantity, batch size, steps, threads, device, seed, trace."""
    doc = profile_step.__doc__
    parser = argparse.ArgumentParser(
        prog="python -m bench.overhead.cli_profile_step",
        description=options.plain(doc.split("\n\n")[0]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=options.plain(doc.split("\n\n", 1)[1]),
    )
    options.one_line_errors(parser)
    valid = registered_problems()
    parser.add_argument(
        "problem",
        type=options.one_of_listed(valid, TINY_PROBLEMS, "problem"),
        help=", ".join(valid),
    )
    quantities = (*QUANTITIES, *NEW_QUANTITIES)
    parser.add_argument(
        "quantity",
        type=options.one_of(quantities, "quantity"),
        metavar="quantity",
        help=", ".join(quantities),
    )
    parser.add_argument("--batch-size", type=options.positive_int, default=128)
    parser.add_argument(
        "--steps", type=options.positive_int, default=3, help="timed and profiled steps (each)"
    )
    parser.add_argument("--threads", type=options.positive_int, default=2)
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        type=options.device,
        help="cpu, cuda, cuda:N (default: cuda if any)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trace", help="write a Chrome trace of the quantity's profiled steps")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Profile one quantity of ours against the plain gradient and print the table."""
    args = options.parse_on_device(build_parser(), argv)
    if args is None:
        return 2
    print(
        profile_step.profile_quantity(
            args.problem,
            args.quantity,
            batch_size=args.batch_size,
            steps=args.steps,
            threads=args.threads,
            device=args.device,
            seed=args.seed,
            trace=args.trace,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
