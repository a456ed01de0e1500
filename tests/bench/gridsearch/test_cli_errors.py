# ruff: noqa: E501 - one case per line reads as a table
"""Every bad grid-search value is an early one-line error (issue 13), run through the real CLI.

Each case: exit code 2, a message naming the option and what is valid, no traceback, and no file
under results/ or plots/ changed (:func:`tests.bench.cli_cases.check_case`).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bench.gridsearch import cli
from tests.bench.cli_cases import ROOT, Case, check_case, run_cli

NO_SBATCH = {"PATH": "/nonexistent"}  # a machine without SLURM's commands

CASES = [
    Case(["gridsearch", "run", "--problems", "foo"], 2, "argument --problems: unknown problem 'foo'; valid: cifar10_3c3d"),
    Case(["gridsearch", "status", "--problems", "foo"], 2, "argument --problems: unknown problem 'foo'"),
    Case(["gridsearch", "steptime", "--problems", "foo"], 2, "argument --problems: unknown problem 'foo'"),
    Case(["gridsearch", "run", "-j", "0"], 2, "argument -j/--jobs: must be an integer >= 1, got '0'"),
    Case(["gridsearch", "run", "--runs-per-slot", "0"], 2, "argument --runs-per-slot: must be an integer >= 1"),
    Case(["gridsearch", "run", "--executor", "slurm", "--out", "{TMP}/s"], 2, "sbatch not found", env=NO_SBATCH),
    Case(["gridsearch", "steptime", "--rounds", "0"], 2, "argument --rounds: must be an integer >= 1"),
    Case(["gridsearch", "steptime", "--device", "cuda"], 2, "'cuda' requested but this machine has no CUDA"),
    Case(["gridsearch", "run", "--device", "cuda", "--out", "{TMP}/s"], 2, "'cuda' requested but this machine has no CUDA"),
    Case(["gridsearch", "smoke", "--out", "README.md"], 2, "argument --out: 'README.md' is not a folder"),
    Case(["gridsearch", "run", "--epochs", "0"], 2, "argument --epochs: must be an integer >= 1, got '0'"),
    Case(["gridsearch", "run", "--epochs", "-1"], 2, "argument --epochs: must be an integer >= 1, got '-1'"),
    Case(["gridsearch", "run", "--batch-size", "0"], 2, "argument --batch-size: must be an integer >= 1"),
    Case(["gridsearch", "steptime", "--batch-size", "0"], 2, "argument --batch-size: must be an integer >= 1"),
    Case(["gridsearch", "steptime", "--threads", "0"], 2, "argument --threads: must be an integer >= 1"),
    Case(["gridsearch", "throughput", "--runs", "0"], 2, "argument --runs: must be an integer >= 1"),
    Case(["gridsearch", "run", "--lrs", "abc"], 2, "argument --lrs: must be a number > 0, got 'abc'"),
    Case(["gridsearch", "run", "--executor", "slurm", "--device", "cuda", "--out", "{TMP}/s"], 2, "add --slurm-gpus 1"),
    Case(["gridsearch", "run", "--executor", "slurm", "--slurm-gpus", "2", "--device", "cpu", "--out", "{TMP}/s"], 2, "use --device cuda, or drop --slurm-gpus"),
    Case(["gridsearch", "run", "--executor", "slurm", "--slurm-time", "0"], 2, "argument --slurm-time: must be an integer >= 1"),
    Case(["gridsearch", "unlock", "--out", "{TMP}/missing"], 2, "does not exist"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=str)
def test_bad_value_is_a_one_line_error(case, tmp_path):
    proc = check_case(case, tmp_path)
    assert len([line for line in proc.stderr.splitlines() if "error:" in line]) == 1


def test_smoke_refuses_a_foreign_folder_and_deletes_nothing(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("months of work")
    proc = run_cli(["gridsearch", "smoke", "--quick", "--out", str(mine)])
    assert proc.returncode == 2, proc.stderr + proc.stdout
    assert "not empty and was not made by the smoke" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (mine / "thesis.tex").read_text() == "months of work"


def test_default_commands_write_no_committed_file():
    """The smoke's default output (and plots) are this machine's own, not the reference."""
    parser = cli.argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["gridsearch", "smoke"])
    for path in (args.out, cli.SMOKE_PLOTS, cli.DEFAULT_OUT):
        tracked = subprocess.run(
            ["git", "ls-files", str(path)], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
        assert not tracked.strip(), f"default output {path} holds committed files"
    assert Path(args.out) != Path(cli.SMOKE_REFERENCE)


def test_failed_run_says_why_on_the_console(tmp_path):
    proc = run_cli(
        ["gridsearch", "run", "--problems", "cifar10_3c3d", "--methods", "Adam",
         "--baseline-lrs", "0.01", "--no-best", "--source", "synthetic", "--epochs", "1",
         "--batch-size", "32", "--n-train", "10", "--device", "cpu", "--out", str(tmp_path)]
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr + proc.stdout
    output = proc.stdout + proc.stderr
    assert "failed: ValueError" in output and "batch_size 32 exceeds" in output
