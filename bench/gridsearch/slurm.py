"""The SLURM executor: the sweep's runs as submitit job arrays, requeued on preemption.

Each pending run becomes one task of a SLURM job array (``sbatch --array=0-N%cap``); the cap
``array_parallelism`` bounds how many tasks run at once. A task calls
:func:`bench.gridsearch.jobs.run_job`, which trains the run or resumes it from its last epoch
checkpoint in the store. Preemption and time limits are handled the submitit way: SLURM sends
``USR2`` ``signal_delay_s`` before the end, submitit calls :meth:`ResumableRun.checkpoint` and
requeues the task (``scontrol requeue``); the requeued task calls ``run_job`` again. A task killed
without warning (``scontrol requeue``, a preemption with ``PreemptMode=REQUEUE``) resumes the same
way when SLURM restarts it.

:meth:`SlurmExecutor.run` returns when every task ended. A run that failed inside ``run_job``
already has a ``failed`` sidecar; a task that SLURM killed (out of memory, time limit, cancelled)
gets one written here, with submitit's message and the log tail. Nothing raises because a run
failed: :attr:`SlurmExecutor.outcomes` maps every run id to its final status.

Clusters without job accounting (``sacct`` says "accounting storage is disabled", as on the
single-node test cluster) are supported: job states then come from ``squeue``.
"""

from __future__ import annotations

import logging
import os
import pwd
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import UncompletedJobError
from submitit.helpers import Checkpointable, DelayedSubmission
from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJob

from bench.gridsearch.grid import DONE, RunConfig
from bench.gridsearch.jobs import THREADS_ENV, failure_line, pending, run_job
from bench.gridsearch.store import RunStore

log = logging.getLogger(__name__)

#: Folder under the store root that holds submitit's pickles and the tasks' logs.
LOG_DIRNAME = "slurm"
#: SLURM's default MaxArraySize is 1001 (indices 0..1000); larger sweeps are split.
MAX_ARRAY_SIZE = 1000
#: squeue states after which a job no longer runs (as in sacct).
_ENDED = (
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "PREEMPTED_NOT_REQUEUED",
    "SPECIAL_EXIT",
    "REVOKED",
)


# --------------------------------------------------------------------------------------------
# the task
# --------------------------------------------------------------------------------------------


def _task_id() -> str | None:
    """Return this SLURM task's id (``<array job>_<index>`` or ``<job>``), or None outside."""
    array_job, index = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and index:
        return f"{array_job}_{index}"
    return os.environ.get("SLURM_JOB_ID")


def release_own_stale_lock(store: RunStore, run_id: str, task_id: str | None) -> bool:
    """Remove the run's lock if an earlier attempt of this same SLURM task left it.

    A task killed without warning (preemption, ``scontrol requeue``) leaves its lock behind; the
    requeued attempt may start on another node, where :meth:`RunStore.lock` trusts a lock from a
    foreign host. SLURM never runs two attempts of one task at once, so a lock claimed by this
    task id is stale. The claim is ``<store>/slurm/owners/<run_id>``, holding the task id.

    Args:
        store: the run store.
        run_id: the run.
        task_id: this task's id (:func:`_task_id`); ``None`` (not under SLURM) does nothing.

    Returns:
        Whether a stale lock was removed.

    """
    if task_id is None:
        return False
    claim = store.root / LOG_DIRNAME / "owners" / run_id
    lock = store.lock_path(run_id)
    try:
        previous = claim.read_text().strip()
    except FileNotFoundError:
        previous = None
    removed = False
    if previous == task_id:
        removed = lock.exists()
        lock.unlink(missing_ok=True)
    elif lock.exists():
        return False  # another process's lock (live or not): run_job decides, we claim nothing
    claim.parent.mkdir(parents=True, exist_ok=True)
    tmp = claim.with_name(f".{run_id}.{os.getpid()}.tmp")
    tmp.write_text(task_id)
    os.replace(tmp, claim)
    return removed


#: Tries of submitit's ``scontrol requeue`` when a signal killed it (see :func:`requeue_retrying`).
REQUEUE_TRIES = 3


def requeue_retrying(requeue, tries: int = REQUEUE_TRIES, pause_s: float = 1.0):
    """Wrap submitit's ``_requeue`` to retry a ``scontrol requeue`` that a signal killed.

    On preemption SLURM signals every process of the job, and a SIGTERM can reach the
    ``scontrol requeue`` child that submitit's handler just started: it dies, the handler raises
    ``CalledProcessError``, and the run was recorded ``failed`` instead of being requeued. A
    ``scontrol`` that ran and exited non-zero is not retried.
    """

    def _requeue(self, countdown: int) -> None:
        for attempt in range(1, tries + 1):
            try:
                return requeue(self, countdown)
            except subprocess.CalledProcessError as err:
                if err.returncode >= 0 or attempt == tries:
                    raise
                log.warning("scontrol requeue was killed by signal %d; again", -err.returncode)
                time.sleep(pause_s)

    _requeue.__wrapped__ = requeue
    return _requeue


def _install_requeue_retry() -> None:
    """Make this task's submitit requeue retry (idempotent)."""
    from submitit.slurm.slurm import SlurmJobEnvironment

    if not hasattr(SlurmJobEnvironment._requeue, "__wrapped__"):
        SlurmJobEnvironment._requeue = requeue_retrying(SlurmJobEnvironment._requeue)


class ResumableRun(Checkpointable):
    """What one array task runs: :func:`run_job`; on preemption/timeout, requeue and resume.

    The run's state is the epoch checkpoint that training writes to the store, so
    :meth:`checkpoint` needs to save nothing: it resubmits the same call, and the requeued task's
    ``run_job`` resumes from the store's checkpoint.
    """

    def __call__(self, config_dict: dict, store_dir: str) -> str:
        """Train or resume the run; return its status (see :func:`run_job`)."""
        run_id = RunConfig.from_dict(config_dict).run_id
        _install_requeue_retry()
        if release_own_stale_lock(RunStore(store_dir), run_id, _task_id()):
            print(f"curvbench: removed the lock of run {run_id} left by this task's last attempt")
        restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
        print(f"curvbench: run {run_id}, attempt {int(restarts) + 1}", flush=True)
        return run_job(config_dict, store_dir)

    def checkpoint(self, config_dict: dict, store_dir: str) -> DelayedSubmission:
        """Return the call to resubmit when preempted or timed out (the same call)."""
        print("curvbench: preempted or timed out; requeueing (resumes from the last epoch)")
        return DelayedSubmission(ResumableRun(), config_dict, store_dir)


# --------------------------------------------------------------------------------------------
# job states without sacct
# --------------------------------------------------------------------------------------------


class QueueWatcher(SlurmInfoWatcher):
    """submitit's job-state watcher, falling back to ``squeue`` where ``sacct`` cannot answer.

    ``sacct`` needs SLURM's accounting database; without it, states come from
    ``squeue -t all`` (which keeps ended jobs for ``MinJobAge``, 300 s by default). A job that
    ``squeue`` no longer lists has ended (state ``"GONE"``).
    """

    def __init__(self, delay_s: int = 60):
        super().__init__(delay_s=delay_s)
        self.use_sacct: bool | None = None  # unknown until the first call

    def update(self) -> None:
        """Refresh the states of the unfinished registered jobs (one sacct or squeue call)."""
        command = self._make_command()
        if command is None:
            return
        self._num_calls += 1
        info = None
        if self.use_sacct is not False:
            try:
                out = subprocess.run(command, capture_output=True, check=True, timeout=60)
                info = self.read_info(out.stdout)
                self.use_sacct = True
            except (OSError, subprocess.SubprocessError) as err:
                if self.use_sacct is None:
                    log.info("sacct unavailable (%s); reading job states from squeue", err)
                    self.use_sacct = False
        if info is None and self.use_sacct is False:
            info = self._squeue_info()
        if info is not None:
            self._info_dict.update(info)
        self._last_status_check = time.time()
        for job_id in self._registered - self._finished:
            if self.is_done(job_id, mode="cache"):
                self._finished.add(job_id)

    def _squeue_info(self) -> dict[str, dict[str, str]] | None:
        """States of this user's jobs from squeue; registered jobs it omits are ``GONE``."""
        try:
            out = subprocess.run(
                ["squeue", "-h", "-r", "-t", "all", "-u", _user(), "-o", "%i|%T|%N"],
                capture_output=True,
                text=True,
                check=True,
                timeout=60,
            )
        except (OSError, subprocess.SubprocessError) as err:
            log.warning("squeue failed (%s); job states may be stale", err)
            return None
        info = parse_squeue(out.stdout)
        for job_id in self._registered - self._finished:
            info.setdefault(job_id, {"JobID": job_id, "State": "GONE", "NodeList": ""})
        return info


def _user() -> str:
    """Return the name of the user this process runs as (whose jobs squeue lists)."""
    return pwd.getpwuid(os.getuid()).pw_name


def parse_squeue(text: str) -> dict[str, dict[str, str]]:
    """Parse ``squeue -h -r -o '%i|%T|%N'`` into submitit's ``{job id: {JobID, State, ...}}``."""
    info = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 3 or not parts[0]:
            continue
        job_id, state, nodes = parts
        info[job_id] = {"JobID": job_id, "State": state, "NodeList": nodes}
    return info


class TrackedJob(SlurmJob):
    """A submitit SLURM job whose state comes from :class:`QueueWatcher`."""

    watcher = QueueWatcher(delay_s=60)


class _Submitter(submitit.SlurmExecutor):
    job_class = TrackedJob


# --------------------------------------------------------------------------------------------
# the executor
# --------------------------------------------------------------------------------------------


class SlurmExecutor:
    """Run the sweep's pending runs as SLURM job arrays through submitit (see the module doc).

    Args:
        partition: the SLURM partition (``None``: the cluster's default).
        time_min: each task's time limit in minutes; a task that reaches it is requeued (up
            to ``max_num_timeout`` times) and resumes from its last epoch.
        cpus_per_task: CPUs per task; also torch's thread count in the task.
        gpus_per_node: GPUs per task (0: none); SLURM sets ``CUDA_VISIBLE_DEVICES``.
        mem_gb: memory per task (``None``: the partition's default).
        array_parallelism: at most this many tasks of an array run at once.
        max_num_timeout: how often a task may be requeued after reaching its time limit
            (preemptions do not count).
        signal_delay_s: seconds between the ``USR2`` warning and the end of the time limit.
        log_dir: submitit's folder (pickles, ``<job>_<task>_log.out/err``); default
            ``<store>/slurm``.
        setup: shell lines run in the batch script before the task (``module load ...``).
        slurm_args: further ``sbatch`` options, e.g. ``{"qos": "low", "account": "lab"}``.
        poll_s: seconds between checks of the tasks' result files.
        state_poll_s: at most this many seconds between two ``sacct``/``squeue`` calls (how
            soon a task that SLURM killed is noticed); submitit's backoff starts at 2 s.
        results_timeout_s: how long to wait for a vanished task's result file (slow shared
            file systems) before calling it failed.
        progress: show a tqdm progress bar.

    """

    def __init__(
        self,
        *,
        partition: str | None = None,
        time_min: int = 240,
        cpus_per_task: int = 2,
        gpus_per_node: int = 0,
        mem_gb: float | None = None,
        array_parallelism: int = 16,
        max_num_timeout: int = 10,
        signal_delay_s: int = 120,
        log_dir: str | os.PathLike | None = None,
        setup: Sequence[str] = (),
        slurm_args: Mapping[str, Any] | None = None,
        poll_s: float = 2.0,
        state_poll_s: float = 60.0,
        results_timeout_s: float = 15.0,
        progress: bool = True,
    ):
        for name, value, low in (
            ("time_min", time_min, 1),
            ("cpus_per_task", cpus_per_task, 1),
            ("gpus_per_node", gpus_per_node, 0),
            ("array_parallelism", array_parallelism, 1),
            ("max_num_timeout", max_num_timeout, 0),
            ("signal_delay_s", signal_delay_s, 0),
        ):
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        if signal_delay_s >= time_min * 60:
            raise ValueError(
                f"signal_delay_s ({signal_delay_s}) must be shorter than the time limit "
                f"({time_min} min), or every task would be warned at once"
            )
        self.partition = partition
        self.time_min = time_min
        self.cpus_per_task = cpus_per_task
        self.gpus_per_node = gpus_per_node
        self.mem_gb = mem_gb
        self.array_parallelism = array_parallelism
        self.max_num_timeout = max_num_timeout
        self.signal_delay_s = signal_delay_s
        self.log_dir = log_dir
        self.setup = list(setup)
        self.slurm_args = dict(slurm_args or {})
        self.poll_s = poll_s
        # A watcher of its own: its refresh period, and no state cached from other executors.
        self._job_class: type[TrackedJob] = type(
            "TrackedJob", (TrackedJob,), {"watcher": QueueWatcher(delay_s=state_poll_s)}
        )
        self.results_timeout_s = results_timeout_s
        self.progress = progress
        #: Run id -> final status of the last :meth:`run` (``finished``, ``failed``, ...).
        self.outcomes: dict[str, str] = {}
        #: Run id -> SLURM task id of the last :meth:`run`.
        self.task_ids: dict[str, str] = {}

    def parameters(self) -> dict[str, Any]:
        """Return the submitit ``update_parameters`` keywords (sbatch options) of a task."""
        params: dict[str, Any] = {
            "job_name": "curvbench",
            "time": self.time_min,
            "cpus_per_task": self.cpus_per_task,
            "ntasks_per_node": 1,
            "array_parallelism": self.array_parallelism,
            "signal_delay_s": self.signal_delay_s,
            "setup": [
                f"export {THREADS_ENV}={self.cpus_per_task}",
                f"export OMP_NUM_THREADS={self.cpus_per_task}",
                *self.setup,
            ],
        }
        if self.partition:
            params["partition"] = self.partition
        if self.gpus_per_node:
            params["gpus_per_node"] = self.gpus_per_node
        if self.mem_gb is not None:
            params["mem"] = f"{max(1, round(self.mem_gb * 1024))}M"
        if self.slurm_args:
            params["additional_parameters"] = dict(self.slurm_args)
        return params

    def submit(self, jobs: Sequence[RunConfig], store: RunStore) -> list[TrackedJob]:
        """Submit ``jobs`` as job arrays (no filtering, no waiting); return one job per run."""
        folder = Path(self.log_dir) if self.log_dir is not None else store.root / LOG_DIRNAME
        folder.mkdir(parents=True, exist_ok=True)
        submitter = _Submitter(folder=folder, max_num_timeout=self.max_num_timeout)
        submitter.update_parameters(**self.parameters())
        tracked: list[TrackedJob] = []
        for start in range(0, len(jobs), MAX_ARRAY_SIZE):
            chunk = jobs[start : start + MAX_ARRAY_SIZE]
            submitted = submitter.map_array(
                ResumableRun(), [job.to_dict() for job in chunk], [str(store.root)] * len(chunk)
            )
            for sub in submitted:
                # Forget an earlier job with this id (a controller restarted with a clean
                # state numbers jobs from 1 again).
                self._job_class.watcher._finished.discard(sub.job_id)
                self._job_class.watcher._info_dict.pop(sub.job_id, None)
                job = self._job_class(folder=submitter.folder, job_id=sub.job_id, tasks=[0])
                job._results_timeout_s = self.results_timeout_s
                tracked.append(job)
        return tracked

    def run(self, jobs: list[RunConfig], store: RunStore) -> None:
        """Train every pending run on the cluster; return when all tasks ended.

        Failures never raise: see :attr:`outcomes` and the runs' sidecars. On Ctrl-C the tasks
        keep running (their results still land in the store); cancel them with ``scancel``.
        """
        self.outcomes = {job.run_id: store.status(job.run_id) for job in jobs}
        self.task_ids = {}
        todo = pending(jobs, store)
        if not todo:
            return
        submitted = self.submit(todo, store)
        self.task_ids = {run.run_id: job.job_id for run, job in zip(todo, submitted)}
        array_ids = sorted({job.job_id.split("_")[0] for job in submitted})
        log.info("submitted %d runs as SLURM job array(s) %s", len(todo), ", ".join(array_ids))
        try:
            self._wait(todo, submitted)
        except KeyboardInterrupt:
            log.warning(
                "stopped waiting; the tasks keep running. Cancel them with: scancel %s",
                " ".join(array_ids),
            )
            raise
        for run, job in zip(todo, submitted):
            self.outcomes[run.run_id] = self._outcome(run, job, store)
        failed = {rid: s for rid, s in self.outcomes.items() if s not in DONE}
        for run in todo:
            line = failure_line(run, self.outcomes[run.run_id], store)
            if line:
                print(line)
        if failed:
            log.warning(
                "%d of %d runs did not finish: %s (logs in %s)",
                len(failed),
                len(jobs),
                ", ".join(
                    f"{rid} ({self.task_ids.get(rid, '-')}: {s})" for rid, s in failed.items()
                ),
                submitted[0].paths.folder,
            )

    def _wait(self, todo: Sequence[RunConfig], submitted: Sequence[TrackedJob]) -> None:
        """Poll until every task ended, with a progress bar."""
        from tqdm.auto import tqdm

        remaining = dict(zip((run.run_id for run in todo), submitted))
        with tqdm(total=len(todo), desc="slurm runs", unit="run", disable=not self.progress) as bar:
            while remaining:
                for run_id, job in list(remaining.items()):
                    if job.done():
                        del remaining[run_id]
                        bar.update()
                if remaining:
                    time.sleep(self.poll_s)

    @staticmethod
    def _outcome(run: RunConfig, job: TrackedJob, store: RunStore) -> str:
        """Return the run's final status; record a SLURM-level failure in its sidecar."""
        try:
            status = job.result()
        except UncompletedJobError as err:  # killed by SLURM, or the task crashed outside run_job
            status = None
            error = f"SLURM task {job.job_id} ended without a result:\n{err}"
        except Exception as err:  # noqa: BLE001 - run_job raised past its own handler
            status = None
            error = f"SLURM task {job.job_id} raised {type(err).__name__}: {err}"
        if status is not None:  # run_job returned: it recorded the run's state itself
            return status
        current = store.status(run.run_id)
        if current in DONE or current == "failed":
            return current
        claim = store.root / LOG_DIRNAME / "owners" / run.run_id
        if claim.is_file() and claim.read_text().strip() == job.job_id:
            store.lock_path(run.run_id).unlink(missing_ok=True)  # our dead task's lock
        sidecar = store.read_sidecar(run.run_id) or {"config": run.to_dict()}
        sidecar.update(status="failed", error=error, slurm_job_id=job.job_id)
        store.write_sidecar(run.run_id, sidecar)
        return "failed"
