"""``python -m bench.overhead.cli_paper_figures``: Fig. 8 / Fig. 9 of any preset CSV.

    python -m bench.overhead.cli_paper_figures --csv results/overhead/local/fig9-cpu-2core.csv

``curvbench figures overhead`` builds them from the committed presets; the figures themselves are
described in :mod:`bench.overhead.paper_figures`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bench import results_io
from bench.overhead import paper_figures


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m bench.overhead.cli_paper_figures --csv ... --plots ...``."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.overhead.cli_paper_figures",
        description=paper_figures.__doc__.splitlines()[0],
    )
    parser.add_argument("--csv", nargs="+", required=True)
    parser.add_argument("--plots", default="plots")
    args = parser.parse_args(argv)
    try:
        written = paper_figures.make_all(args.csv, args.plots)
    except results_io.CSVFileError as err:
        print(f"paper_figures: error: {err}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
