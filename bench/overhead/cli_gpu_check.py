"""``python -m bench.overhead.cli_gpu_check`` (``make gpu-check``): the command line of the check.

The parts, limits and verdicts are in :mod:`bench.overhead.gpu_check`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bench import options
from bench.overhead import gpu_check


def build_parser() -> argparse.ArgumentParser:
    """Return the parser (one-line errors; help from :mod:`bench.overhead.gpu_check`)."""
    doc = gpu_check.__doc__ or ""
    parser = argparse.ArgumentParser(
        prog="python -m bench.overhead.cli_gpu_check",
        description=options.plain(doc.split("\n\n")[0]),
        epilog=options.plain(doc.split("\n\n", 1)[1]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    options.one_line_errors(parser)
    parser.add_argument("--out", type=options.output_dir, help="a new folder (default: fresh)")
    parser.add_argument(
        "--save-reference",
        action="store_true",
        help="store the overhead CSV + JSON as results/overhead/reference/<gpu-name>.csv",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the check (see :mod:`bench.overhead.gpu_check`); return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    import torch

    from bench.environment import machine_slug

    if not args.dry_run and not options.device_ok("cuda", "gpu-check"):
        return 2
    gpu = machine_slug("cuda") if torch.cuda.is_available() else "<gpu-name>"
    out = args.out or gpu_check.default_out()
    if out.exists() and any(out.iterdir()):
        parser.error(f"--out {out} is not empty; give a new folder")
    parts = gpu_check.plan(out, gpu)
    print(gpu_check.describe(parts, out, gpu))
    if args.dry_run:
        return 0
    return gpu_check.run_check(parts, out, gpu, args.save_reference)


if __name__ == "__main__":
    sys.exit(main())
