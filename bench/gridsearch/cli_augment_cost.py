"""``python -m bench.gridsearch.cli_augment_cost``: on-device augmentation vs a training step.

    .venv/bin/python -m bench.gridsearch.cli_augment_cost                       # CPU, 2 threads
    .venv/bin/python -m bench.gridsearch.cli_augment_cost --device cuda --rounds 50

What is timed, and how to read the ratios: :mod:`bench.gridsearch.augment_cost`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from bench.gridsearch import augment_cost


def build_parser() -> argparse.ArgumentParser:
    """Build the parser: device, rounds, repeats, threads, seed."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.gridsearch.cli_augment_cost",
        description="Augmenting 256 images vs one cifar10_3c3d training step at batch 128.",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    parser.add_argument("--rounds", type=int, default=20, help="interleaved rounds (default 20)")
    parser.add_argument("--repeats", type=int, default=3, help="calls per timing (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Time augmentation against a step and print the medians and the ratios."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.rounds < 2 or args.repeats < 1:
        parser.error("--rounds must be >= 2 and --repeats >= 1")
    res = augment_cost.run(args.device, args.rounds, args.repeats, args.threads, args.seed)
    print(f"device {args.device}, threads {args.threads}, {args.rounds} rounds x {args.repeats}")
    print(
        f"medians: augment 256 {res['augment256_median_s'] * 1e3:.2f} ms, fetch+augment 256 "
        f"{res['fetch_augment256_median_s'] * 1e3:.2f} ms, 3c3d step 128 "
        f"{res['step128_median_s'] * 1e3:.2f} ms (machine-dependent)"
    )
    for name, label in (("augment256", "augment"), ("fetch_augment256", "fetch+augment")):
        ratio, iqr = res[f"{name}_ratio"], res[f"{name}_ratio_iqr"]
        verdict = "meets" if ratio < 0.10 else "MISSES"
        print(
            f"ratio {label} 256 / step 128: {ratio:.3f} (IQR {iqr:.3f}), {verdict} the 10% target"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
