"""The CI timing-regression gate: ours / gradient ratios against committed reference ratios.

    python -m bench.overhead.cli_gate            # measure and check (exit 1 when one got slower)
    python -m bench.overhead.cli_gate --refresh  # re-measure; rewrites reference_ratios.json

The gate times one training step per quantity with ``ours`` and the plain gradient, interleaved
in one process (``bench.overhead.run.run_group``) on the real 3C3D at a small batch, and compares
each ratio with the reference for the same case and device type: it fails when

    measured_ratio > factor * reference_ratio + slack        (default factor 1.5, slack 0.25)

No absolute time is gated. Refresh the reference on a quiet machine after an intended speed
change (or a new quantity), review the diff of ``bench/overhead/reference_ratios.json`` and
commit it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench import results_io
from bench.environment import collect_environment
from bench.overhead.plan import REFERENCE, Measurement
from bench.overhead.run import RunOptions, run_group
from bench.spec import QUANTITIES

REFERENCE_PATH = Path(__file__).with_name("reference_ratios.json")
PROBLEM = "cifar10_3c3d"
BATCH_SIZE = 8
ROUNDS = 7
THREADS = 1
FACTOR = 1.5
SLACK = 0.25


def case_key(problem: str, batch_size: int, device: str | torch.device) -> str:
    """Return the reference key of a case: ``problem/N=batch/device type``."""
    return f"{problem}/N={batch_size}/{torch.device(device).type}"


@dataclass(frozen=True)
class Verdict:
    """One quantity's comparison."""

    quantity: str
    measured: float | None
    reference: float | None
    limit: float | None
    ok: bool
    reason: str


def measure_ratios(
    problem: str = PROBLEM,
    batch_size: int = BATCH_SIZE,
    device: str = "cpu",
    quantities: Sequence[str] = QUANTITIES,
    backend: str = "ours",
    rounds: int = ROUNDS,
    warmup: int = 2,
) -> dict[str, Any]:
    """Median-time ratios ``backend/quantity`` over the gradient, interleaved in this process.

    Returns:
        ``{quantity: ratio}`` for the quantities that ran, and ``{quantity: "status: message"}``
        for those that did not.

    """
    group = [Measurement(problem, batch_size, "clean", device, *REFERENCE)]
    group += [Measurement(problem, batch_size, "clean", device, backend, q) for q in quantities]
    rows = run_group(group, RunOptions(rounds=rounds, warmup=warmup, memory=False))
    out: dict[str, Any] = {}
    for row in rows[1:]:
        if row["status"] == "ok":
            out[row["quantity"]] = float(row["ratio_to_grad"])
        else:
            out[row["quantity"]] = f"{row['status']}: {row['message']}"
    return out


def check(
    measured: Mapping[str, Any],
    reference: Mapping[str, Any],
    factor: float = FACTOR,
    slack: float = SLACK,
) -> list[Verdict]:
    """Compare measured ratios with the reference; a quantity with a reference ratio must run.

    A reference entry that is a string records a quantity that did not run when the reference
    was taken (e.g. ``"oom: ..."``, over the memory budget); it passes either way. A measured
    quantity without a reference passes too, with a note to refresh.
    """
    verdicts = []
    for q in [*reference, *(q for q in measured if q not in reference)]:
        value, ref = measured.get(q), reference.get(q)
        if ref is None:
            verdicts.append(Verdict(q, _num(value), None, None, True, "no reference (refresh)"))
            continue
        if isinstance(ref, str):
            note = f"not gated (reference: {ref.split(':')[0]})"
            verdicts.append(Verdict(q, _num(value), None, None, True, note))
            continue
        limit = factor * ref + slack
        if not isinstance(value, float | int):
            verdicts.append(Verdict(q, None, ref, limit, False, f"did not run: {value}"))
            continue
        ok = value <= limit
        reason = "ok" if ok else f"slower: {value:.2f} > {factor} x {ref:.2f} + {slack}"
        verdicts.append(Verdict(q, float(value), ref, limit, ok, reason))
    return verdicts


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, float | int) else None


def load_reference(path: str | Path = REFERENCE_PATH) -> dict[str, Any]:
    """Load the reference file (empty structure when it does not exist)."""
    return results_io.read_json(path, default={"cases": {}})


def reference_for(key: str, path: str | Path = REFERENCE_PATH) -> dict[str, Any] | None:
    """Return the reference of case ``key`` (ratios, and status texts of what did not run)."""
    case = load_reference(path)["cases"].get(key)
    if case is None:
        return None
    return {**case.get("not_run", {}), **case["ratios"]}


def refresh(
    path: str | Path = REFERENCE_PATH,
    device: str = "cpu",
    rounds: int = 2 * ROUNDS,
    repeats: int = 3,
) -> dict[str, float]:
    """Re-measure the reference of this device type (median over ``repeats`` runs) and store it."""
    runs = [measure_ratios(device=device, rounds=rounds) for _ in range(repeats)]
    ratios: dict[str, float] = {}
    not_run: dict[str, str] = {}
    for q in QUANTITIES:
        values = sorted(r[q] for r in runs if isinstance(r.get(q), float))
        if values:
            ratios[q] = values[len(values) // 2]
        else:
            not_run[q] = str(runs[0].get(q))
    data = load_reference(path)
    env = collect_environment(device)
    data["cases"][case_key(PROBLEM, BATCH_SIZE, device)] = {
        "ratios": ratios,
        "not_run": not_run,
        "rounds": rounds,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "measured": {
            **{k: env.get(k) for k in ("time_utc", "device_name", "torch", "commit")},
            "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        },
    }
    data["tolerance"] = {"factor": FACTOR, "slack": SLACK}
    data["how_to_refresh"] = (
        "python -m bench.overhead.cli_gate --refresh   (on a quiet machine; commit)"
    )
    results_io.atomic_write_json(path, data)
    return ratios


def format_verdicts(verdicts: Sequence[Verdict]) -> str:
    """Format the verdicts as a small fixed-width table."""
    lines = [f"{'quantity':<15} {'measured':>9} {'reference':>9} {'limit':>7}  verdict"]
    for v in verdicts:
        fmt = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
        lines.append(
            f"{v.quantity:<15} {fmt(v.measured):>9} {fmt(v.reference):>9} {fmt(v.limit):>7}  "
            f"{v.reason}"
        )
    return "\n".join(lines)
