"""SlurmExecutor's options become the right sbatch lines (no cluster needed)."""

from __future__ import annotations

import argparse

import pytest
from submitit.slurm.slurm import _make_sbatch_string

from bench.gridsearch.cli_slurm import add_slurm_arguments, slurm_options_from_args
from bench.gridsearch.executors import make_executor
from bench.gridsearch.jobs import Executor
from bench.gridsearch.slurm import SlurmExecutor


def sbatch_lines(executor: SlurmExecutor, runs: int) -> list[str]:
    """The ``#SBATCH`` lines submitit writes for an array of ``runs`` tasks."""
    text = _make_sbatch_string(
        command="python -m x", folder="/logs", map_count=runs, **executor.parameters()
    )
    return [line for line in text.splitlines() if line.startswith("#SBATCH")]


def test_cli_options_reach_sbatch():
    parser = argparse.ArgumentParser()
    add_slurm_arguments(parser)
    args = parser.parse_args(
        [
            "--slurm-partition",
            "gpu",
            "--slurm-gpus",
            "1",
            "--slurm-cpus",
            "4",
            "--slurm-mem-gb",
            "16",
            "--slurm-time",
            "90",
            "--slurm-parallel",
            "5",
            "--slurm-arg",
            "qos=low",
            "--slurm-setup",
        ]
        + ["module load cuda"]
    )
    executor = make_executor("slurm", **slurm_options_from_args(args))
    assert isinstance(executor, SlurmExecutor) and isinstance(executor, Executor)
    lines = sbatch_lines(executor, runs=30)
    for expected in (
        "--array=0-29%5",
        "--partition=gpu",
        "--gpus-per-node=1",
        "--cpus-per-task=4",
        "--mem=16384M",
        "--time=90",
        "--qos=low",
        "--signal=USR2@120",
        "--open-mode=append",
    ):
        assert f"#SBATCH {expected}" in lines
    assert "module load cuda" in executor.parameters()["setup"]
    assert "export CURVBENCH_NUM_THREADS=4" in executor.parameters()["setup"]


def test_defaults_have_no_partition_gpu_or_memory_lines():
    lines = sbatch_lines(SlurmExecutor(), runs=3)
    assert "#SBATCH --array=0-2%3" in lines
    assert not [line for line in lines if "partition" in line or "gpu" in line or "mem" in line]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"array_parallelism": 0}, "array_parallelism must be >= 1"),
        ({"cpus_per_task": 0}, "cpus_per_task must be >= 1"),
        ({"time_min": 1, "signal_delay_s": 90}, "signal_delay_s (90) must be shorter"),
    ],
    ids=["no-parallelism", "no-cpus", "signal-after-time-limit"],
)
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SlurmExecutor(**options)


def test_bad_extra_sbatch_option_is_refused():
    parser = argparse.ArgumentParser()
    add_slurm_arguments(parser)
    with pytest.raises(ValueError, match="KEY=VALUE"):
        slurm_options_from_args(parser.parse_args(["--slurm-arg", "qos"]))


@pytest.mark.parametrize(
    ("codes", "calls", "raises"),
    [
        ([-15, 0], 2, False),  # SIGTERM reached scontrol during the preemption: requeued on retry
        ([1], 1, True),  # scontrol ran and refused: no retry, the error stands
        ([-15, -15, -15], 3, True),  # killed every time: give up after REQUEUE_TRIES
    ],
    ids=["killed-once", "refused", "killed-always"],
)
def test_requeue_retries_a_scontrol_killed_by_a_signal(codes, calls, raises):
    import subprocess

    from bench.gridsearch.slurm import requeue_retrying

    seen = []

    def requeue(env, countdown):
        code = codes[len(seen)]
        seen.append(countdown)
        if code:
            raise subprocess.CalledProcessError(code, ["scontrol", "requeue", "7_0"])

    wrapped = requeue_retrying(requeue, pause_s=0)
    if raises:
        with pytest.raises(subprocess.CalledProcessError):
            wrapped(object(), 3)
    else:
        wrapped(object(), 3)
    assert seen == [3] * calls


def test_the_requeue_retry_is_installed_once(monkeypatch):
    from submitit.slurm.slurm import SlurmJobEnvironment

    from bench.gridsearch import slurm

    original = SlurmJobEnvironment._requeue
    monkeypatch.setattr(SlurmJobEnvironment, "_requeue", original)
    slurm._install_requeue_retry()
    slurm._install_requeue_retry()
    assert SlurmJobEnvironment._requeue.__wrapped__ is original
