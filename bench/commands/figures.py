"""curvbench figures: rebuild plots/ and the REPORT.md files from the committed results.

The overhead figures come from the committed references, results/overhead/reference/*.csv (one
set of figures per machine) and reference/presets/<fig8|fig9>-<machine>.csv (Fig. 8, Fig. 9);
to plot this machine's own run (results/overhead/local/), use
python -m bench.overhead.cli_figures --csv FILE --plots DIR.

The grid-search figures come from the committed run stores, results/gridsearch/reference/<store>/
(plots/gridsearch/<store>/, results/gridsearch/REPORT.md); this machine's own stores
(results/gridsearch/local/) are not drawn.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from bench import options

TARGETS = ("overhead", "gridsearch")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``figures`` on the ``curvbench`` subparsers."""
    parser = subparsers.add_parser(
        "figures",
        help="rebuild plots/ and REPORT.md from results/ (no compute)",
        description=options.plain(__doc__),
    )
    options.one_line_errors(parser)
    parser.add_argument(
        "target",
        nargs="?",
        choices=(*TARGETS, "all"),
        default="all",
        help="which figures (default: all)",
    )
    parser.add_argument(
        "--results",
        default="results",
        type=options.existing_dir,
        help="results folder, must exist (default: results)",
    )
    parser.add_argument("--plots", default="plots", help="plots folder (default: plots)")
    parser.set_defaults(func=run_command)
    return parser


def overhead_figures(results: Path, plots: Path) -> list[Path]:
    """Figures and REPORT.md of every ``<results>/overhead/reference/*.csv``."""
    from bench.overhead import figure_map, paper_figures
    from bench.overhead.figures import load, make_all
    from bench.overhead.report import write_report

    folder = results / "overhead" / "reference"
    csvs = sorted(folder.glob("*.csv"))
    if not csvs:
        print(f"figures: no overhead CSV in {folder}; run `curvbench overhead`")
        return []
    paths = make_all(csvs, plots)
    paths += paper_figures.make_all(sorted((folder / "presets").glob("*.csv")), plots)
    table = figure_map.render(load(csvs), paper_figures.load_presets(folder / "presets"), paths)
    paths.append(write_report(csvs, results / "overhead" / "REPORT.md", table))
    return paths


def gridsearch_figures(results: Path, plots: Path) -> list[Path]:
    """Build the grid-search figures and REPORT.md (``bench.gridsearch.figures.make_all``)."""
    from bench.gridsearch.figures import make_all

    return list(make_all(results / "gridsearch", plots) or [])


def run_command(args: argparse.Namespace) -> int:
    """Build the chosen figures and print the files written."""
    from bench.results_io import CSVFileError

    results, plots = Path(args.results), Path(args.plots)
    targets = TARGETS if args.target == "all" else (args.target,)
    builders = {"overhead": overhead_figures, "gridsearch": gridsearch_figures}
    for target in targets:
        try:
            written = builders[target](results, plots)
        except CSVFileError as err:
            print(f"curvbench figures: error: {err}", file=sys.stderr)
            return 2
        for path in written:
            print(path)
    return 0
