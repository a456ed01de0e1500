"""``python -m bench.overhead.cli_gate``: the command line of the CI timing gate.

    python -m bench.overhead.cli_gate            # measure and check (exit 1 when one got slower)
    python -m bench.overhead.cli_gate --refresh  # re-measure; rewrites reference_ratios.json

The gate's logic (measure, compare, refresh) lives in :mod:`bench.overhead.gate`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

from bench import options
from bench.overhead import gate

PROG = "python -m bench.overhead.cli_gate"


def build_parser() -> argparse.ArgumentParser:
    """Build the gate's parser: ``--refresh``, ``--device``, ``--rounds``, ``--repeats``."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=options.plain(gate.__doc__.split("\n\n")[0]),
        epilog=options.plain(gate.__doc__.split("\n\n", 1)[1]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    options.one_line_errors(parser)
    parser.add_argument("--refresh", action="store_true", help="re-measure and store the reference")
    parser.add_argument(
        "--device",
        default="cpu",
        type=options.device,
        help="cpu, cuda, cuda:N; the reference is kept per device type (default: cpu)",
    )
    parser.add_argument(
        "--rounds",
        type=options.positive_int,
        help=f"timed rounds (check {gate.ROUNDS}, refresh 2x)",
    )
    parser.add_argument(
        "--repeats",
        type=options.positive_int,
        default=3,
        help="refresh: median of this many runs",
    )
    parser.add_argument("--reference", default=str(gate.REFERENCE_PATH))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Check (default) or refresh the reference ratios."""
    args = options.parse_on_device(build_parser(), argv)
    if args is None:
        return 2
    torch.set_num_threads(gate.THREADS)
    if args.refresh:
        rounds = args.rounds or 2 * gate.ROUNDS
        ratios = gate.refresh(args.reference, args.device, rounds, args.repeats)
        print(f"gate: wrote {args.reference}")
        print("\n".join(f"  {q:<15} {r:.2f}" for q, r in ratios.items()))
        return 0
    key = gate.case_key(gate.PROBLEM, gate.BATCH_SIZE, args.device)
    reference = gate.reference_for(key, args.reference)
    if reference is None:
        print(f"gate: no reference for {key}; run `{PROG} --refresh`")
        return 2
    measured = gate.measure_ratios(device=args.device, rounds=args.rounds or gate.ROUNDS)
    verdicts = gate.check(measured, reference)
    print(gate.format_verdicts(verdicts))
    return 0 if all(v.ok for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
