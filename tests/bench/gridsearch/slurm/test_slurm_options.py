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
