"""``python -m bench.overhead.cli_report``: the overhead REPORT.md of any CSVs (e.g. your own run).

    python -m bench.overhead.cli_report --csv results/overhead/local/cpu-2core.csv --out REPORT.md

``curvbench figures overhead`` writes the committed one; its contents are described in
:mod:`bench.overhead.report`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bench.overhead import report


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m bench.overhead.cli_report --csv ... --out ...``."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.overhead.cli_report",
        description="Write the overhead REPORT.md from CSVs.",
    )
    parser.add_argument("--csv", nargs="+", default=["results/overhead/reference/cpu-2core.csv"])
    parser.add_argument("--out", default="results/overhead/REPORT.md")
    args = parser.parse_args(argv)
    print(report.write_report(args.csv, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
