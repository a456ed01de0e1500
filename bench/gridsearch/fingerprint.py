"""The fingerprint of the sweep that created a run store; a sweep resumes only into its own.

A store records, in ``<store>/.fingerprint.json``, what the sweep that created it *asked for*
and what decides whether two runs' numbers are comparable:

* ``version``: :data:`FINGERPRINT_VERSION`, bumped when the training protocol changes (what an
  evaluation row means, the divergence rule, the optimizers' update);
* ``torch``: torch's major.minor version (a patch release does not change the kernels' numbers);
* ``device``: the device type the sweep requested: ``cpu``, ``cuda``, or ``auto`` (a SLURM
  sweep without ``--device``, resolved on each node). Not the submitting host's hardware: a
  sweep is submitted from a login node without a GPU, and an interrupted run may resume on
  another node or GPU model (checkpoints are portable); each run's sidecar lists its attempts;
* ``source``: ``real`` or ``synthetic`` data (``cifar``/``mnist`` are ``real``).

A sweep into a store of another fingerprint (or one that holds runs but no fingerprint: an
older curvbench) never writes into it: :func:`resume_target` picks ``<out>-2`` (``-3``, ...)
beside it, the first that is new or of the same fingerprint, and says so in one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: Bump when a run's numbers stop being comparable with earlier ones (training protocol).
FINGERPRINT_VERSION = 1
#: The fields that must match for a sweep to write into a store.
FINGERPRINT_FIELDS = ("version", "torch", "device", "source")
#: The record, a dot file (not a run sidecar: ``RunStore.run_ids`` skips it).
FINGERPRINT_FILE = ".fingerprint.json"


def torch_minor(version: str) -> str:
    """Return ``major.minor`` of a torch version string (``"2.13.0+cpu"`` -> ``"2.13"``)."""
    return ".".join(version.split("+")[0].split(".")[:2])


def fingerprint(device: str, source: str) -> dict[str, Any]:
    """Return the fingerprint of a sweep (:data:`FINGERPRINT_FIELDS`).

    Args:
        device: the device the sweep's runs are configured with (``cpu``, ``cuda``, ``cuda:N``
            or ``auto``); only its type counts.
        source: the sweep's ``--source``.

    """
    import torch

    return {
        "version": FINGERPRINT_VERSION,
        "torch": torch_minor(torch.__version__),
        "device": device.split(":")[0],
        "source": "synthetic" if source == "synthetic" else "real",
    }


def mismatch(root: str | Path, current: dict[str, Any]) -> str | None:
    """Why a sweep of fingerprint ``current`` may not write into the store ``root`` (or ``None``).

    A folder without runs and without a fingerprint is new: it may be used.
    """
    from bench.gridsearch.store import RunStore
    from bench.results_io import read_json

    root = Path(root)
    try:
        stored = read_json(root / FINGERPRINT_FILE)
    except ValueError:  # not JSON
        return f"its {FINGERPRINT_FILE} is unreadable"
    if stored is None:
        return (
            "it records no fingerprint (made by an older curvbench)"
            if RunStore(root).run_ids()
            else None
        )
    if not isinstance(stored, dict):
        return f"its {FINGERPRINT_FILE} is unreadable"
    diffs = [
        f"{k} {stored.get(k)!r} != {current.get(k)!r}"
        for k in FINGERPRINT_FIELDS
        if stored.get(k) != current.get(k)
    ]
    return "; ".join(diffs) or None


def resume_target(out: str | Path, current: dict[str, Any]) -> tuple[Path, str | None]:
    """Return the store to write and, if it is not ``out``, the line that says why.

    The store is ``out`` unless it holds another fingerprint's runs; then the first of
    ``<out>-2``, ``<out>-3``, ... that is new or of the same fingerprint.
    """
    out = Path(out)
    path, k, why = out, 1, mismatch(out, current)
    first_why = why
    while why is not None:
        k += 1
        path = out.with_name(f"{out.name}-{k}")
        why = mismatch(path, current)
    if path == out:
        return out, None
    return path, f"not resuming {out} ({first_why}); writing {path}"


def record(root: str | Path, current: dict[str, Any]) -> None:
    """Write ``current`` as the store's fingerprint unless it already has one (the first wins)."""
    from bench.results_io import atomic_write_json

    path = Path(root) / FINGERPRINT_FILE
    if not path.exists():
        atomic_write_json(path, current)
