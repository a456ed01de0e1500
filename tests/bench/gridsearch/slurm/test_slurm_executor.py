"""SlurmExecutor on a real single-node SLURM cluster: job arrays, the concurrency cap, requeue.

The runs are real (``bench.gridsearch.jobs.run_job``, 3C3D, tiny synthetic data). The oracle for
"the store holds the right results" is the same config run in this process with the in-process
executor: CPU training is deterministic, so the cluster's rows must equal those, also for a run
that was preempted and resumed (a run restarted from scratch would still match, so resumption
is checked separately: the resumed attempt starts at the checkpoint's epoch).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
import torch

from bench.gridsearch.executors import InProcessExecutor
from bench.gridsearch.grid import RunConfig
from bench.gridsearch.slurm import SlurmExecutor, TrackedJob
from bench.gridsearch.store import RunStore, hostname

pytestmark = pytest.mark.slurm

#: Columns that depend on the clock, not on the computation.
TIMING_COLUMNS = ("train_time_s",)
#: Epochs of the runs that get interrupted: enough to still be training after the first one.
EPOCHS_PREEMPT = 16  # long enough that neither run ends while the other starts (was flaky at 8)


def tiny_run(seed: int, epochs: int = 2, problem: str = "cifar10_3c3d", **options) -> RunConfig:
    """A 3C3D run on a few synthetic images: a few seconds per epoch on one CPU."""
    data = {"n_train": 64, "n_test": 16, "train_eval_size": 16}
    return RunConfig(
        problem=problem,
        method="Momentum",
        lr=0.01,
        seed=seed,
        epochs=epochs,
        batch_size=8,
        source="synthetic",
        options={"data": data, **options},
    )


def comparable(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """The rows without their timing columns."""
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in rows]


def reference_rows(runs: list[RunConfig], tmp_path) -> dict[str, list[dict[str, str]]]:
    """Each run's rows when trained here, uninterrupted, by the in-process executor.

    With one torch thread, as the SLURM tasks (``cpus_per_task=1``), so reductions match.
    """
    store = RunStore(tmp_path / "reference")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        InProcessExecutor().run(runs, store)
    finally:
        torch.set_num_threads(threads)
    return {run.run_id: comparable(store.read_rows(run.run_id)) for run in runs}


def reference_in_background(runs: list[RunConfig], tmp_path) -> Future:
    """:func:`reference_rows` in a thread, to overlap with the cluster's waits (requeue delay)."""
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(reference_rows, runs, tmp_path)
    pool.shutdown(wait=False)
    return future


class RunningSampler:
    """Sample ``squeue`` in a thread: the most tasks of one array seen RUNNING at once."""

    def __init__(self, cluster, period_s: float = 0.2):
        self.cluster, self.period_s = cluster, period_s
        self.max_running = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(subprocess.SubprocessError):  # a busy controller: retry
                rows = self.cluster.squeue("-t", "RUNNING")
                self.max_running = max(self.max_running, len(rows))
            time.sleep(self.period_s)

    def __enter__(self) -> RunningSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_in_thread(executor: SlurmExecutor, runs, store) -> tuple[threading.Thread, list]:
    """Start ``executor.run(runs, store)`` in a thread; the list receives its exception."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            executor.run(runs, store)
        except BaseException as err:  # noqa: BLE001 - re-raised by the test
            errors.append(err)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, errors


def wait_for(condition: Callable[[], bool], what: str, cluster, timeout_s: float = 90) -> None:
    """Poll ``condition`` until true; fail with the cluster's logs after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}\n{cluster.logs()}")


def restarts(cluster, task_id: str) -> int:
    """SLURM's restart count of an array task (``scontrol show job``)."""
    text = cluster.scontrol("show", "job", task_id)
    field = next(tok for tok in text.split() if tok.startswith("Restarts="))
    return int(field.split("=", 1)[1])


def epochs_done(store: RunStore, run: RunConfig) -> int:
    """Epochs the run has trained and checkpointed so far (its sidecar; 0 before training)."""
    sidecar = store.read_sidecar(run.run_id) or {}
    return int(sidecar.get("epochs_done", 0))


def kill_run_process(store: RunStore, run: RunConfig) -> None:
    """SIGKILL the process training ``run`` (its pid is in the run's lock; same machine)."""
    holder = store.lock_holder(run.run_id)
    assert holder is not None and holder.host == hostname()
    os.kill(holder.pid, signal.SIGKILL)


def submitit_job(store: RunStore, task_id: str) -> TrackedJob:
    """The submitit handle of a task the executor submitted (its logs are in ``<store>/slurm``)."""
    return TrackedJob(folder=store.root / "slurm", job_id=task_id, tasks=[0])


# --------------------------------------------------------------------------------------------


def test_job_array_respects_the_cap_and_fills_the_store(slurm_cluster, tmp_path):
    good = tiny_run(seed=1)
    bad = tiny_run(seed=3, problem="no_such_problem")  # fails inside run_job
    store = RunStore(tmp_path / "store")
    # One CPU per task on a two-CPU node: without the cap, both tasks would run at once.
    executor = SlurmExecutor(
        cpus_per_task=1,
        array_parallelism=1,
        time_min=60,
        poll_s=0.5,
        state_poll_s=2,
        progress=False,
    )
    expected = reference_in_background([good], tmp_path)
    with RunningSampler(slurm_cluster) as sampler:
        executor.run([good, bad], store)

    assert sampler.max_running == 1
    assert executor.outcomes == {good.run_id: "finished", bad.run_id: "failed"}
    assert store.is_done(good.run_id)
    rows = comparable(store.read_rows(good.run_id))
    assert len(rows) == good.epochs + 1
    assert rows == expected.result()[good.run_id]
    assert "no_such_problem" in store.read_sidecar(bad.run_id)["error"]
    assert len(list((tmp_path / "store" / "slurm").glob("*_log.out"))) == 2  # logs in the store
    # A second run() finds the finished run done and submits nothing.
    executor.run([good], store)
    assert executor.task_ids == {}
    assert executor.outcomes == {good.run_id: "finished"}


def test_preempted_runs_resume_from_their_checkpoint(slurm_cluster, tmp_path):
    runs = [tiny_run(seed=4, epochs=EPOCHS_PREEMPT), tiny_run(seed=5, epochs=EPOCHS_PREEMPT)]
    store = RunStore(tmp_path / "store")
    executor = SlurmExecutor(
        cpus_per_task=1,
        array_parallelism=2,
        time_min=60,
        poll_s=0.5,
        state_poll_s=2,
        progress=False,
    )
    expected = reference_in_background(runs, tmp_path)
    thread, errors = run_in_thread(executor, runs, store)
    wait_for(lambda: len(executor.task_ids) == 2, "the array's submission", slurm_cluster)
    tasks = [executor.task_ids[run.run_id] for run in runs]
    # Interrupt each task once it has written a checkpoint and is still training.
    wait_for(
        lambda: all(epochs_done(store, run) >= 1 for run in runs),
        "both runs' first trained epoch",
        slurm_cluster,
    )
    saved = {run.run_id: epochs_done(store, run) for run in runs}
    assert not any(store.is_done(run.run_id) for run in runs), "runs ended before preemption"
    # Task 0: submitit's preemption path (SIGTERM, then USR2 -> checkpoint() -> requeue).
    submitit_job(store, tasks[0])._interrupt()
    # Task 1: a hard preemption: requeued and killed at once (no grace time, no checkpoint()).
    # SLURM itself would SIGKILL only seconds later, and submitit ignores the SIGTERM before.
    slurm_cluster.scontrol("requeue", tasks[1])
    kill_run_process(store, runs[1])
    thread.join(timeout=120)
    assert not thread.is_alive(), slurm_cluster.logs()
    assert not errors, errors

    assert executor.outcomes == {run.run_id: "finished" for run in runs}
    assert [restarts(slurm_cluster, task) for task in tasks] == [1, 1]
    for run in runs:
        assert comparable(store.read_rows(run.run_id)) == expected.result()[run.run_id]
        sidecar = store.read_sidecar(run.run_id)
        assert sidecar["status"] == "finished" and len(sidecar["attempts"]) == 2
        (resumed,) = sidecar["resumed"]  # written by train_run when it restored a checkpoint
        assert resumed["from_epoch"] >= saved[run.run_id] >= 1


def test_task_killed_mid_run_is_reported_failed(slurm_cluster, tmp_path):
    run = tiny_run(seed=6, epochs=EPOCHS_PREEMPT)
    store = RunStore(tmp_path / "store")
    executor = SlurmExecutor(
        cpus_per_task=1,
        time_min=60,
        poll_s=0.5,
        state_poll_s=2,
        results_timeout_s=1,
        progress=False,
    )
    thread, errors = run_in_thread(executor, [run], store)
    wait_for(lambda: store.status(run.run_id) == "running", "the run to start", slurm_cluster)
    # The kernel's out-of-memory killer: SIGKILL to the training process. (scancel would send
    # SIGTERM, which submitit ignores, and SIGKILL only seconds later: the tiny run could end.)
    kill_run_process(store, run)
    thread.join(timeout=60)
    assert not thread.is_alive() and not errors, errors
    assert executor.outcomes == {run.run_id: "failed"}
    sidecar = store.read_sidecar(run.run_id)
    assert sidecar["status"] == "failed"
    assert executor.task_ids[run.run_id] in sidecar["error"]
    assert not store.lock_path(run.run_id).exists()


def test_cli_sweep_resolves_the_device_on_the_node(slurm_cluster, tmp_path):
    """Submitted from a process that has no GPU: the device is decided by the task, on its node.

    ``CURVBENCH_HOSTNAME`` set in the batch script (``--slurm-setup``) marks what the node saw.
    """
    from tests.bench.cli_cases import run_cli

    argv = [
        "gridsearch", "run", "--executor", "slurm", "--problems", "cifar10_3c3d",
        "--methods", "Momentum", "--baseline-lrs", "0.01", "--no-best", "--source", "synthetic",
        "--epochs", "1", "--batch-size", "8", "--n-train", "64", "--n-test", "16",
        "--train-eval-size", "16", "--out", str(tmp_path / "store"),
        "--slurm-cpus", "1", "--slurm-time", "10",
        "--slurm-setup", "export CURVBENCH_HOSTNAME=node-1",
    ]  # fmt: skip
    proc = run_cli(argv, env={"CUDA_VISIBLE_DEVICES": ""}, timeout_s=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    store = RunStore(tmp_path / "store")
    (run_id,) = store.run_ids()
    sidecar = store.read_sidecar(run_id)
    assert sidecar["status"] == "finished"
    assert sidecar["config"]["device"] == "auto"  # not resolved on the submitting host
    (attempt,) = sidecar["attempts"]
    assert attempt["host"] == "node-1" and attempt["device"] == "cpu" and attempt["wall_s"] > 0
