"""The ``curvbench`` command line (also ``python -m bench``).

    curvbench problems                  # the problems table
    curvbench data download cifar10     # fetch + verify CIFAR-10
    curvbench overhead --help           # the paper's overhead benchmark (Fig. 6 / Fig. 3)
    curvbench gridsearch --help         # the paper's alpha/lambda grid search
    curvbench figures                   # rebuild plots/ and REPORT.md from results/

This module only dispatches. Each experiment (wing) owns its command: ``bench/overhead/cli.py``
and ``bench/gridsearch/cli.py``; the commands that serve both (``problems``, ``data``,
``figures``) live in ``bench/commands/``. Each exposes ``add_parser(subparsers)``, which registers
its parser and sets ``func`` (called with the parsed namespace; returns an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: subcommand name -> the module that registers it
COMMANDS = {
    "problems": "bench.commands.problems",
    "data": "bench.commands.data",
    "overhead": "bench.overhead.cli",
    "gridsearch": "bench.gridsearch.cli",
    "figures": "bench.commands.figures",
}


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every available subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="curvbench",
        description="Benchmark and reproduce BackPACK (Dangel, Kunstner, Hennig, ICLR 2020).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMANDS.values():
        importlib.import_module(module_name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # `curvbench problems | head`: the reader left; not an error
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
