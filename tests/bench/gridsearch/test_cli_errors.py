# ruff: noqa: E501 - one case per line reads as a table
"""Every bad grid-search value is an early one-line error (issue 13), run through the real CLI.

Each case: exit code 2, a message naming the option and what is valid, no traceback, and no file
the command must not touch changed (:func:`tests.bench.cli_cases.check_case`: every tracked file,
results/, plots/ and the gate's reference ratios).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bench.gridsearch import cli
from bench.gridsearch.fingerprint import FINGERPRINT_FILE, fingerprint
from bench.results_io import atomic_write_json
from bench.spec import GRIDSEARCH_COLUMNS
from tests.bench.cli_cases import ROOT, Case, check_case, snapshot

NO_SBATCH = {"PATH": "/nonexistent"}  # a machine without SLURM's commands
NO_CUDA = {"CUDA_VISIBLE_DEVICES": ""}  # on a CUDA machine too, `--device cuda` finds none
#: a sweep that fails at once (10 training images < batch 32): exit 3 within seconds
FAILING = ["gridsearch", "run", "--problems", "cifar10_3c3d", "--methods", "Adam",
           "--baseline-lrs", "0.01", "--no-best", "--source", "synthetic", "--epochs", "1",
           "--batch-size", "32", "--n-train", "10", "--device", "cpu"]  # fmt: skip

CASES = [
    Case(["gridsearch", "run", "--problems", "foo"], 2, "argument --problems: unknown problem 'foo'; valid: cifar10_3c3d"),
    Case(["gridsearch", "status", "--problems", "foo"], 2, "argument --problems: unknown problem 'foo'"),
    Case(["gridsearch", "steptime", "--problems", "foo"], 2, "argument --problems: unknown problem 'foo'"),
    Case(["gridsearch", "run", "-j", "0"], 2, "argument -j/--jobs: must be an integer >= 1, got '0'"),
    Case(["gridsearch", "run", "--runs-per-slot", "0"], 2, "argument --runs-per-slot: must be an integer >= 1"),
    Case(["gridsearch", "run", "--executor", "slurm", "--out", "{TMP}/s"], 2, "sbatch not found", env=NO_SBATCH),
    Case(["gridsearch", "steptime", "--rounds", "0"], 2, "argument --rounds: must be an integer >= 1"),
    Case(["gridsearch", "steptime", "--device", "cuda"], 2, "'cuda' requested but this machine has no CUDA", env=NO_CUDA),
    Case(["gridsearch", "run", "--device", "cuda", "--out", "{TMP}/s"], 2, "'cuda' requested but this machine has no CUDA", env=NO_CUDA),
    Case(["gridsearch", "steptime", "--device", "gpu"], 2, "argument --device: unsupported device 'gpu'; valid: cpu, cuda, cuda:N (see --help)"),
    Case(["gridsearch", "steptime", "--methods", "SGD"], 2, "argument --methods: invalid choice: 'SGD'"),
    Case(["gridsearch", "run", "--executor", "slurm", "--slurm-gpus", "1", "--device", "cuda:1", "--out", "{TMP}/s"], 2, "--device cuda:1 names GPU 1, but --slurm-gpus 1 gives each task GPU(s) 0..0: use --device cuda, or --slurm-gpus 2 (see --help)", env=NO_SBATCH),
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
    assert len((proc.stderr + proc.stdout).strip().splitlines()) == 1, proc.stderr
    assert "error:" in proc.stderr
    if "argument " in proc.stderr or "--" in case.fragment:  # argparse's and flag combinations
        assert proc.stderr.rstrip().endswith("(see --help)"), proc.stderr


def test_smoke_refuses_a_foreign_folder_and_deletes_nothing(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("months of work")
    argv = ["gridsearch", "smoke", "--quick", "--out", str(mine)]
    check_case(Case(argv, 2, "not empty and was not made by the smoke"), tmp_path)
    assert (mine / "thesis.tex").read_text() == "months of work"
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]


def _default_outputs() -> dict[str, str]:
    """``"<subcommand> --flag"`` -> default of every ``--out``/``--store`` of ``gridsearch``."""
    parser = cli.argparse.ArgumentParser()
    gridsearch = cli.add_parser(parser.add_subparsers())
    (subcommands,) = [a for a in gridsearch._actions if a.dest == "gridsearch_command"]
    return {
        f"{name} {action.option_strings[0]}": action.default
        for name, sub in subcommands.choices.items()
        for action in sub._actions
        if action.option_strings and action.dest in ("out", "store") and action.default
    }


def test_default_commands_write_no_committed_file():
    """Every default output (and the smoke's plots) is this machine's own: ignored, untracked."""
    defaults = _default_outputs()
    assert {"run --out", "smoke --out", "unlock --out", "export --store"} <= set(defaults)
    for where, path in [*defaults.items(), ("smoke --plots", cli.SMOKE_PLOTS)]:
        ignored = subprocess.run(["git", "check-ignore", "-q", f"{path}/x.csv"], cwd=ROOT)
        assert ignored.returncode == 0, f"{where}: default {path} is not git-ignored"
        tracked = subprocess.run(
            ["git", "ls-files", str(path)], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
        assert not tracked.strip(), f"{where}: default {path} holds committed files"
    assert Path(defaults["smoke --out"]) != Path(cli.SMOKE_REFERENCE)


def test_committed_stores_live_apart_from_every_default_output():
    tracked = subprocess.run(
        ["git", "ls-files", "results/gridsearch"], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    stores = {Path(p).parent for p in tracked if p.endswith(".json")}
    assert Path(cli.SMOKE_REFERENCE) in stores
    assert stores and all(s.parent == Path(cli.REFERENCE_DIR) for s in stores), stores


def test_failed_run_says_why_on_the_console(tmp_path):
    proc = check_case(Case([*FAILING, "--out", "{TMP}/s"], 3, "failed: ValueError"), tmp_path)
    assert "batch_size 32 exceeds" in proc.stdout + proc.stderr


# ---- a sweep writes only into a store of its own fingerprint -----------------------------------


def test_sweep_into_a_store_of_another_fingerprint_starts_a_new_one(tmp_path):
    old = tmp_path / "s"
    atomic_write_json(old / FINGERPRINT_FILE, {**fingerprint("cpu", "synthetic"), "torch": "1.0"})
    atomic_write_json(old / "abc.json", {"status": "running"})  # an interrupted run of it
    (old / "abc.csv").write_text(",".join(GRIDSEARCH_COLUMNS) + "\n")
    kept = snapshot(tmp_path, ["s"], repository=False)
    proc = check_case(Case([*FAILING, "--out", "{TMP}/s"], 3, "failed: ValueError"), tmp_path)
    new = tmp_path / "s-2"
    assert f"gridsearch run: not resuming {old} (torch '1.0' != " in proc.stdout
    assert f"writing {new}" in proc.stdout
    assert (
        snapshot(tmp_path, ["s"], repository=False) == kept
    )  # the old store: not one byte written
    assert (new / FINGERPRINT_FILE).is_file() and list(new.glob("*.json"))
    again = check_case(Case([*FAILING, "--out", "{TMP}/s-2"], 3, "failed: ValueError"), tmp_path)
    assert "not resuming" not in again.stdout  # s-2 is this sweep's: resumed into


def test_store_with_runs_but_no_fingerprint_is_not_written(tmp_path):
    old = tmp_path / "s"
    atomic_write_json(old / "abc.json", {"status": "running"})
    proc = check_case(Case([*FAILING, "--out", "{TMP}/s"], 3, "records no fingerprint"), tmp_path)
    assert sorted(p.name for p in old.iterdir()) == ["abc.json"]
    assert f"writing {tmp_path / 's-2'}" in proc.stdout


# ---- torn run CSVs: one line naming file and line, nothing drawn or resumed ---------------------

_ROW = "x,cifar10_3c3d,Momentum,0.01,,42,{epoch},0,2.3,0.1,2.3,0.1,2.3,0.1,0.5\n"
_GOOD = ",".join(GRIDSEARCH_COLUMNS) + "\n" + _ROW.format(epoch=0) + _ROW.format(epoch=1)
BAD_RUN_CSVS = {
    "empty": (b"", "x.csv: empty file"),
    "binary": (b"\x89PNG\r\n\x1a\n\0\0\0IHDR", "x.csv: not a CSV text file"),
    "truncated": (_GOOD.encode()[:-20], "x.csv:3: "),
    "cut-in-last-cell": (_GOOD.encode()[:-2], "x.csv:3: last row is cut off"),
}


def _store_with(folder: Path, data: bytes) -> Path:
    atomic_write_json(folder / "x.json", {"run_id": "x", "status": "finished"})
    (folder / "x.csv").write_bytes(data)
    return folder / "x.csv"


@pytest.mark.parametrize("target", [["gridsearch"], []], ids=["gridsearch", "all"])
@pytest.mark.parametrize("kind", BAD_RUN_CSVS)
def test_figures_refuse_a_torn_run_csv_naming_file_and_line(kind, target, tmp_path):
    data, fragment = BAD_RUN_CSVS[kind]
    _store_with(tmp_path / "results" / "gridsearch" / "reference" / "s", data)
    argv = ["figures", *target, "--results", "{TMP}/results", "--plots", "{TMP}/plots"]
    proc = check_case(Case(argv, 2, fragment), tmp_path)
    assert "curvbench figures: error: " in proc.stderr
    assert not (tmp_path / "plots").exists()
    assert not (tmp_path / "results" / "gridsearch" / "REPORT.md").exists()


@pytest.mark.parametrize("kind", BAD_RUN_CSVS)
def test_sweep_never_resumes_past_a_torn_csv_of_a_done_run(kind, tmp_path):
    data, fragment = BAD_RUN_CSVS[kind]
    store = tmp_path / "s"
    atomic_write_json(store / FINGERPRINT_FILE, fingerprint("cpu", "synthetic"))
    csv = _store_with(store, data)
    proc = check_case(Case([*FAILING, "--out", "{TMP}/s"], 2, fragment), tmp_path)
    assert "move x.csv and x.json aside to train it again" in proc.stderr
    assert csv.read_bytes() == data and sorted(p.name for p in store.iterdir()) == [
        FINGERPRINT_FILE,
        "x.csv",
        "x.json",
    ]


# ---- --help: plain text, every option that takes a name lists the names --------------------------

HELPS = {
    (): ["curvbench gridsearch: the paper's"],
    ("run",): ["cifar10_3c3d, cifar100_3c3d", "KFAC", "cpu, cuda or cuda:N"],
    ("status",): ["cifar10_3c3d, cifar100_3c3d"],
    ("best",): ["cifar10_3c3d, cifar100_3c3d"],
    ("steptime",): ["cifar10_3c3d, cifar100_3c3d", "DiagGGNExact, DiagGGNMC, KFAC, KFLR, KFRA, "
                    "Momentum, Adam", "cpu, cuda or cuda:N", "auto, ours or backpack"],
    ("smoke",): [], ("unlock",): [], ("export",): [], ("import-deepobs",): [], ("throughput",): [],
}  # fmt: skip


@pytest.mark.parametrize("sub", HELPS, ids=lambda sub: " ".join(("gridsearch", *sub)))
def test_help_is_plain_text_and_lists_valid_names(sub, capsys):
    from bench.cli import main

    with pytest.raises(SystemExit) as info:
        main(["gridsearch", *sub, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "``" not in out and ":func:" not in out and ":class:" not in out, out
    for names in HELPS[sub]:
        assert names in " ".join(out.split()), names
