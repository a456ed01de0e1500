"""The unit of work of every executor, and the interface they implement.

Every executor (in-process and local pool in :mod:`bench.gridsearch.executors`, SLURM in
:mod:`bench.gridsearch.slurm`) implements::

    class Executor(Protocol):
        def run(self, jobs: list[RunConfig], store: RunStore) -> None: ...

``run`` trains every job that is not done yet and returns when all are done, failed or diverged;
it never raises because one run failed (the run's sidecar says ``failed`` with the traceback).

The unit of work is the module-level, picklable :func:`run_job`::

    run_job(config_dict: dict, store_dir: str) -> str   # the run's final status

``config_dict`` is :meth:`bench.gridsearch.grid.RunConfig.to_dict` (plain JSON types),
``store_dir`` the store's root. It is idempotent and resumable: a finished or diverged run returns
its status at once, a run another live process holds returns ``"running"``, and an interrupted run
resumes from its last epoch checkpoint. A SLURM array task, a pool worker and the in-process loop
all call it. It sets nothing global except torch's thread count (``CURVBENCH_NUM_THREADS``, if
set). This module imports torch lazily so that a worker can set ``CUDA_VISIBLE_DEVICES`` first.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from bench.gridsearch.grid import RunConfig
from bench.gridsearch.store import RunStore

#: Environment variable read by :func:`run_job` to cap torch's intra-op threads.
THREADS_ENV = "CURVBENCH_NUM_THREADS"


@runtime_checkable
class Executor(Protocol):
    """Runs a list of jobs against a store (see the module docstring)."""

    def run(self, jobs: list[RunConfig], store: RunStore) -> None:
        """Train every job not done yet; return when all ended."""


def run_job(config_dict: dict, store_dir: str) -> str:
    """Train (or resume, or skip) one run; returns its status (see the module docstring).

    Args:
        config_dict: :meth:`RunConfig.to_dict` of the run.
        store_dir: the store's root folder.

    Returns:
        ``"finished"``, ``"diverged"``, ``"failed"`` or ``"running"`` (held by another process).

    """
    threads = os.environ.get(THREADS_ENV)
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    from bench.gridsearch.train import train_run  # lazy: torch and the problems only in the worker

    config = RunConfig.from_dict(config_dict)
    store = RunStore(store_dir)
    with store.lock(config.run_id) as held:
        if not held:
            return "running"
        if store.is_done(config.run_id):
            return store.read_sidecar(config.run_id)["status"]
        try:
            return train_run(config, store)
        except Exception as err:  # noqa: BLE001 - one failed run never stops the sweep
            sidecar = store.read_sidecar(config.run_id) or {"config": config.to_dict()}
            reason = f"{type(err).__name__}: {err}".strip().splitlines()[0]
            sidecar.update(status="failed", error=traceback.format_exc(), reason=reason)
            store.write_sidecar(config.run_id, sidecar)
            return "failed"


def failure_line(job: RunConfig, status: str, store: RunStore) -> str | None:
    """Return one console line saying why ``job`` failed (``None`` unless it failed)."""
    if status in ("finished", "diverged", "running"):
        return None
    sidecar = store.read_sidecar(job.run_id) or {}
    reason = sidecar.get("reason") or (sidecar.get("error") or status).strip().splitlines()[-1]
    damping = "" if job.damping is None else f" damping={job.damping:g}"
    return (
        f"run {job.run_id} ({job.problem} {job.method} lr={job.lr:g}{damping}) {status}: "
        f"{reason} (details: {store.sidecar_path(job.run_id)})"
    )


def pending(jobs: Sequence[RunConfig], store: RunStore) -> list[RunConfig]:
    """Return the jobs whose runs are not done (deduplicated by run_id, order kept)."""
    seen, todo = set(), []
    for job in jobs:
        if job.run_id in seen or store.is_done(job.run_id):
            continue
        seen.add(job.run_id)
        todo.append(job)
    return todo
