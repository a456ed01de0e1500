"""Local executors: the sweep's runs in this process or in a local process pool (SLURM: slurm.py).

Each implements the ``Executor`` protocol of :mod:`bench.gridsearch.jobs` and calls its
:func:`~bench.gridsearch.jobs.run_job` per run; :func:`make_executor` builds one by name.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
from collections.abc import Sequence
from concurrent.futures.process import BrokenProcessPool

from bench.gridsearch.grid import RunConfig
from bench.gridsearch.jobs import THREADS_ENV, Executor, failure_line, pending, run_job
from bench.gridsearch.store import RunStore


def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="run", dynamic_ncols=True)


def _report(bar, job: RunConfig, status: str, store: RunStore) -> None:
    """Show the run's outcome on the bar; print why it failed (not only in its JSON)."""
    bar.set_postfix_str(f"{job.method} lr={job.lr:g}: {status}")
    bar.update()
    line = failure_line(job, status, store)
    if line:
        bar.write(line)


class InProcessExecutor:
    """Runs the jobs one after the other in this process (the default for ``-j 1``)."""

    def run(self, jobs: list[RunConfig], store: RunStore) -> None:
        """Train every pending job here, with a progress bar."""
        todo = pending(jobs, store)
        with _progress(len(todo), "runs") as bar:
            for job in todo:
                _report(bar, job, run_job(job.to_dict(), str(store.root)), store)


def slot_visible_devices(gpu: str, parent: str | None) -> str:
    """Return what ``CUDA_VISIBLE_DEVICES`` a slot for ``gpu`` sets in its workers.

    ``gpu`` is a GPU as this process numbers them (an index into the parent's
    ``CUDA_VISIBLE_DEVICES`` when that is set: under ``CUDA_VISIBLE_DEVICES=2,3`` GPU ``0`` is
    physical GPU 2) or a UUID / MIG id, passed on as it is.

    Raises:
        ValueError: an index beyond the parent's list.

    """
    if parent is None or not gpu.isdigit():
        return gpu
    entries = [e.strip() for e in parent.split(",") if e.strip()]
    if int(gpu) >= len(entries):
        raise ValueError(
            f"GPU {gpu} is not visible: CUDA_VISIBLE_DEVICES={parent!r} shows {len(entries)} GPU(s)"
        )
    return entries[int(gpu)]


def _enter_slot(visible_devices: str | None, threads: int) -> None:
    """Pool-worker initializer: pin the worker to its slot before torch touches CUDA."""
    if visible_devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible_devices
    os.environ[THREADS_ENV] = str(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))


class LocalPoolExecutor:
    """A local process pool: one fresh (spawned) process per run, ``runs_per_slot`` per slot.

    A slot is one GPU (its entry of the parent's ``CUDA_VISIBLE_DEVICES``, or its id when that
    is unset, goes to the workers' ``CUDA_VISIBLE_DEVICES``, so the run sees it as ``cuda:0``;
    see :func:`slot_visible_devices`) or, with ``gpus=None``, a share of the CPU. Each slot has
    its own pool; the dispatcher keeps every slot busy with up to ``runs_per_slot`` runs.

    Args:
        slots: the number of CPU slots (ignored when ``gpus`` is given).
        runs_per_slot: concurrent runs sharing one slot.
        gpus: GPUs, one slot each: indices as this process numbers them (e.g. ``["0", "1"]``)
            or UUIDs.
        threads_per_run: torch threads per run; default: the CPU cores split evenly.
        max_crashes: a run whose worker process dies is requeued (and resumes from its
            checkpoint) this many times before it counts as crashed.

    """

    def __init__(
        self,
        slots: int = 1,
        runs_per_slot: int = 1,
        gpus: Sequence[str] | None = None,
        threads_per_run: int | None = None,
        max_crashes: int = 1,
    ):
        if runs_per_slot < 1 or slots < 1:
            raise ValueError("slots and runs_per_slot must be >= 1")
        parent = os.environ.get("CUDA_VISIBLE_DEVICES")
        self.slot_devices: list[str | None] = (
            [slot_visible_devices(str(g), parent) for g in gpus] if gpus else [None] * slots
        )
        self.runs_per_slot = runs_per_slot
        self.max_crashes = max_crashes
        concurrent = len(self.slot_devices) * runs_per_slot
        self.threads_per_run = threads_per_run or max(1, (os.cpu_count() or 1) // concurrent)

    def run(self, jobs: list[RunConfig], store: RunStore) -> None:
        """Train every pending job in worker processes; return when all ended."""
        todo = pending(jobs, store)
        ctx = mp.get_context("spawn")
        pools = [self._pool(ctx, dev) for dev in self.slot_devices]
        in_flight: dict[cf.Future, tuple[int, RunConfig]] = {}
        load = [0] * len(pools)
        queue = list(reversed(todo))
        crashes: dict[str, int] = {}
        try:
            with _progress(len(todo), "runs") as bar:
                while queue or in_flight:
                    for slot in range(len(pools)):
                        while queue and load[slot] < self.runs_per_slot:
                            job = queue.pop()
                            fut = pools[slot].submit(run_job, job.to_dict(), str(store.root))
                            in_flight[fut] = (slot, job)
                            load[slot] += 1
                    done, _ = cf.wait(in_flight, return_when=cf.FIRST_COMPLETED)
                    for fut in done:
                        slot, job = in_flight.pop(fut)
                        load[slot] -= 1
                        try:
                            status = fut.result()
                        except BrokenProcessPool:  # a worker died (OOM kill, segfault, ...)
                            pools[slot].shutdown(wait=False, cancel_futures=True)
                            pools[slot] = self._pool(ctx, self.slot_devices[slot])
                            crashes[job.run_id] = crashes.get(job.run_id, 0) + 1
                            if crashes[job.run_id] <= self.max_crashes:
                                queue.append(job)  # resumes from its checkpoint
                                continue
                            status = "crashed"
                        except Exception as err:  # noqa: BLE001 - e.g. an unpicklable result
                            status = f"failed ({type(err).__name__})"
                        _report(bar, job, status, store)
        finally:
            for pool in pools:
                pool.shutdown(wait=True, cancel_futures=True)

    def _pool(self, ctx, device: str | None) -> cf.ProcessPoolExecutor:
        return cf.ProcessPoolExecutor(
            max_workers=self.runs_per_slot,
            mp_context=ctx,
            max_tasks_per_child=1,
            initializer=_enter_slot,
            initargs=(device, self.threads_per_run),
        )


def make_executor(
    kind: str = "local",
    *,
    jobs: int = 1,
    runs_per_slot: int = 1,
    gpus: Sequence[str] | None = None,
    **slurm_options,
) -> Executor:
    """Build an executor by name: ``local`` (in-process for one run at a time) or ``slurm``.

    Args:
        kind: ``"local"`` or ``"slurm"``.
        jobs: local slots (CPU shares, or GPUs when ``gpus`` is given the first ``jobs`` of them).
        runs_per_slot: concurrent runs per slot.
        gpus: GPU ids for the slots.
        **slurm_options: passed to the SLURM executor.

    """
    if kind == "local":
        slots = list(gpus)[: max(1, jobs)] if gpus else None
        if (len(slots) if slots else jobs) * runs_per_slot == 1:
            return InProcessExecutor()
        return LocalPoolExecutor(slots=jobs, runs_per_slot=runs_per_slot, gpus=slots)
    if kind == "slurm":
        from bench.gridsearch.slurm import SlurmExecutor

        return SlurmExecutor(**slurm_options)
    raise ValueError(f"unknown executor {kind!r}; valid: local, slurm")
