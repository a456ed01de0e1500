"""``python -m bench.gridsearch.cli_smoke``: the grid-search smoke on a chosen device.

    python -m bench.gridsearch.cli_smoke --device cuda --quick --out DIR --plots DIR

The smoke of ``curvbench gridsearch smoke`` (:mod:`bench.gridsearch.smoke`: a tiny synthetic
grid, ``kill -9`` mid-sweep, resume, figures) with ``--device``: where the sweep trains (``cpu``
by default, as in CI; ``make gpu-check`` runs ``--device cuda --quick``). A device this machine
does not have is refused at once (one line, exit 2). Exit 0 when every check passed, else 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from bench import options as opt


def build_parser() -> argparse.ArgumentParser:
    """Return the parser (one-line errors)."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.gridsearch.cli_smoke",
        description=opt.plain(__doc__.split("\n\n")[0]),
        epilog=opt.plain(__doc__.split("\n\n", 1)[1]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    opt.one_line_errors(parser)
    parser.add_argument(
        "--out",
        type=opt.output_dir,
        default=None,
        help="the smoke's store (default: curvbench gridsearch smoke's); a folder that is not "
        "empty must be an earlier smoke's (only the files it recorded are deleted)",
    )
    parser.add_argument("--plots", type=opt.output_dir, default=None, help="plots root")
    parser.add_argument("--quick", action="store_true", help="the small grid (tests, gpu-check)")
    parser.add_argument("--keep", action="store_true", help="keep the smoke's earlier runs")
    parser.add_argument(
        "--device", type=opt.device, default="cpu", help="where the sweep trains (%(default)s)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the smoke (see the module docstring); return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not opt.device_ok(args.device, parser.prog):
        return 2
    from bench.gridsearch.cli import SMOKE_OUT, SMOKE_PLOTS, plan_from_argv
    from bench.gridsearch.smoke import SmokeRefused, run_smoke

    out, plots = Path(args.out or SMOKE_OUT), Path(args.plots or SMOKE_PLOTS)
    try:
        report = run_smoke(
            out,
            plots,
            plan_from_argv,
            quick=args.quick,
            keep=args.keep,
            verbose=True,
            device=args.device,
        )
    except SmokeRefused as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
