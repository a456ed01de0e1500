"""``python -m bench.overhead.cli_compare_table``: the command line of the ours-vs-BackPACK table.

    python -m bench.overhead.cli_compare_table --quick   # or make overhead-table

What it measures, and the targets, are in :mod:`bench.overhead.compare_table`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

from bench import options, results_io
from bench.overhead import compare_table
from bench.overhead.cli import add_name_arguments


def build_parser() -> argparse.ArgumentParser:
    """Build the table's parser: problems, quantities, rounds, device, CSV and markdown output."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.overhead.cli_compare_table",
        description=options.plain(compare_table.__doc__.split("\n\n")[1]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    options.one_line_errors(parser)
    add_name_arguments(parser, compare_table.PROBLEMS)
    parser.add_argument("--quick", action="store_true", help="2 rounds instead of 7")
    parser.add_argument(
        "--rounds", type=options.positive_int, help="timed rounds (overrides --quick)"
    )
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        type=options.device,
        help="cpu, cuda, cuda:N (default: cuda if any)",
    )
    parser.add_argument("--threads", type=options.positive_int, default=2)
    parser.add_argument("--no-memory", dest="memory", action="store_false")
    parser.add_argument(
        "--csv",
        help="also write the rows to this CSV, after every group; groups already complete in it "
        "are kept, not re-measured (delete their rows to redo them)",
    )
    parser.add_argument("--out", help="also write the markdown table to this file")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Measure and print the ours-vs-BackPACK table."""
    args = options.parse_on_device(build_parser(), argv)
    if args is None:
        return 2
    torch.set_num_threads(args.threads)
    rounds = args.rounds or (2 if args.quick else 7)
    rows = compare_table.measure(
        args.problems, args.quantities, args.device, rounds, args.memory, args.csv
    )
    table = compare_table.render(rows, args.problems, args.quantities)
    print(table)
    if args.out:
        results_io.atomic_write_text(args.out, table + "\n")
    missed = "Targets missed: 0." not in table
    return int(args.check and missed)


if __name__ == "__main__":
    sys.exit(main())
