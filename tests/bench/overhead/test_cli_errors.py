"""Every bad value of the overhead and figures commands: exit code, one line, nothing touched.

Each case runs the real entry point (``python -m bench``) in a subprocess from the repository
root (``tests/bench/cli_cases.py``); results/ and plots/ must be byte-identical afterwards.
Overhead cases carry ``--dry-run`` so that a value accepted by mistake ends in a plan (exit 0,
a failing case), not in minutes of measuring. Issue 13 ("every bad value ...") and issue 12
item 10 (``--device cuda`` without CUDA).
"""

from __future__ import annotations

import pytest

from tests.bench.cli_cases import Case, check_case

NO_CUDA = {"CUDA_VISIBLE_DEVICES": ""}
#: a tiny plan that finishes in seconds where a case does run
TINY = ["--problems", "tiny_mlp", "--batch-sizes", "2", "--rounds", "1", "--no-memory"]
TINY += ["--backends", "loop", "--quantities", "BatchGrad"]
TINY += ["--threads", "1", "--no-progress", "--out-dir", "{TMP}/out"]


def _overhead(*argv: str) -> list[str]:
    return ["overhead", *argv, "--dry-run"]


CASES = [
    Case(_overhead("--device", "cuda"), 2, "has no CUDA device", NO_CUDA),
    Case(_overhead("--device", "gpu"), 2, "argument --device: unsupported device 'gpu'"),
    Case(_overhead("--device", "mps"), 2, "argument --device: unsupported device 'mps'"),
    Case(_overhead("--threads", "0"), 2, "argument --threads: must be an integer >= 1, got '0'"),
    Case(_overhead("--rounds", "0"), 2, "argument --rounds: must be an integer >= 1, got '0'"),
    Case(_overhead("--rounds", "-1"), 2, "argument --rounds: must be an integer >= 1"),
    Case(_overhead("--warmup", "-1"), 2, "argument --warmup: must be an integer >= 0"),
    Case(_overhead("--batch-sizes", "0"), 2, "argument --batch-sizes: must be an integer >= 1"),
    Case(_overhead("--batch-sizes", "8", "-4"), 2, "argument --batch-sizes: must be an integer"),
    Case(
        _overhead("--c-column-batch-size", "0"),
        2,
        "argument --c-column-batch-size: must be an integer >= 1",
    ),
    Case(_overhead("--memory-steps", "-1"), 2, "argument --memory-steps: must be an integer >= 1"),
    Case(_overhead("--mem-cap-gb", "0"), 2, "argument --mem-cap-gb: must be a number > 0"),
    Case(_overhead("--mem-cap-gb", "-1"), 2, "argument --mem-cap-gb: must be a number > 0"),
    Case(_overhead("--probe-timeout", "0"), 2, "argument --probe-timeout: must be a number > 0"),
    Case(_overhead("--probe-timeout", "-5"), 2, "argument --probe-timeout: must be a number > 0"),
    Case(_overhead("--out-dir", "pyproject.toml"), 2, "argument --out-dir: 'pyproject.toml' is"),
    Case(
        _overhead("--problems", "foo"),
        2,
        "argument --problems: unknown problem 'foo'; valid: cifar10_3c3d",
    ),
    Case(
        _overhead("--quantities", "KFC"),
        2,
        "argument --quantities: unknown quantity 'KFC'; valid: BatchGrad",
    ),
    Case(
        _overhead("--backends", "jax"),
        2,
        "argument --backends: unknown backend 'jax'; valid: ours, ours_perstep, backpack",
    ),
    # every measurement fails (the tiny problems have no data source for paper mode): exit 1
    Case(["overhead", *TINY, "--mode", "paper"], 1, "every measurement failed"),
    Case(["figures", "--results", "{TMP}/nonexistent"], 2, "nonexistent' does not exist"),
    Case(
        ["figures", "--results", "results/overhead/reference/cpu-2core.csv"],
        2,
        "cpu-2core.csv' is a file, not a folder",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_bad_value_is_one_line_and_touches_nothing(case, tmp_path):
    proc = check_case(case, tmp_path)
    if case.code == 2:
        assert len((proc.stderr + proc.stdout).strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "nonexistent").exists()  # figures --results must not create it


def test_device_cuda_without_cuda_fails_before_the_plan(tmp_path):
    proc = check_case(
        Case(["overhead", "--device", "cuda"], 2, "no CUDA device", NO_CUDA), tmp_path
    )
    assert "measurements" not in proc.stdout  # no plan printed, nothing measured


def test_all_failed_run_counts_every_status(tmp_path):
    proc = check_case(Case(["overhead", *TINY, "--mode", "paper"], 1, "2 unavailable"), tmp_path)
    assert "0 ok, 0 oom, 0 unsupported, 2 unavailable, 0 error" in proc.stdout


#: the first rows of a valid CSV, cut at byte 50 of its second row
_GOOD = (
    "problem,batch_size,backend,quantity,mode,device,status,median_s\n"
    "tiny_mlp,2,pytorch,grad,clean,cpu,ok,0.1\n"
    "tiny_mlp,2,loop,BatchGrad,clean,cpu,ok,0.2\n"
)
BAD_CSVS = {
    "empty": (b"", "empty file"),
    "binary": (b"\x89PNG\r\n\x1a\n\0\0\0IHDR", "not a CSV text file"),
    "truncated": (_GOOD.encode()[:-12], "x.csv:3: "),
    "cut-in-last-cell": (_GOOD.encode()[:-2], "x.csv:3: last row is cut off"),
    "short-row": ((_GOOD + "tiny_mlp,2,loop\n").encode(), "x.csv:4: row has 3 cells"),
}


@pytest.mark.parametrize("kind", BAD_CSVS)
def test_figures_refuses_an_unusable_csv_naming_file_and_line(kind, tmp_path):
    data, fragment = BAD_CSVS[kind]
    folder = tmp_path / "results" / "overhead" / "reference"
    folder.mkdir(parents=True)
    (folder / "x.csv").write_bytes(data)
    argv = ["figures", "overhead", "--results", "{TMP}/results", "--plots", "{TMP}/plots"]
    check_case(Case(argv, 2, fragment), tmp_path)
    assert not (tmp_path / "plots").exists()


def test_overhead_never_resumes_past_a_truncated_row(tmp_path):
    from bench import results_io
    from bench.overhead.numerics import Numerics
    from bench.overhead.run import fingerprint

    out = tmp_path / "out"
    out.mkdir()
    (out / "x.csv").write_bytes(_GOOD.encode()[:-12])
    current = {**fingerprint("cpu", Numerics()), "num_threads": 1}  # the case's --threads 1
    results_io.atomic_write_json(out / "x.json", {"fingerprint": current})
    check_case(Case(["overhead", *TINY, "--name", "x"], 2, "x.csv:3: "), tmp_path)
    assert (out / "x.csv").read_bytes() == _GOOD.encode()[:-12]  # left as it was
