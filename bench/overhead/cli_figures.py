"""``python -m bench.overhead.cli_figures``: the overhead figures of any CSV (e.g. your own run).

    python -m bench.overhead.cli_figures --csv results/overhead/local/*.csv --plots plots/local

``curvbench figures overhead`` builds them from the committed references; the figures themselves
are described in :mod:`bench.overhead.figures`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bench.overhead import figures


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m bench.overhead.cli_figures --csv ... --plots ...``."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.overhead.cli_figures",
        description=figures.__doc__.splitlines()[0],
    )
    parser.add_argument("--csv", nargs="+", default=["results/overhead/reference/cpu-2core.csv"])
    parser.add_argument("--plots", default="plots")
    args = parser.parse_args(argv)
    for path in figures.make_all(args.csv, args.plots):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
