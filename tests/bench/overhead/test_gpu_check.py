"""make gpu-check on a machine without CUDA: exit 2 with one line; its plan (dry run); verdicts."""

from __future__ import annotations

import pytest
import torch

from bench.overhead import cli_gpu_check, gpu_check


def test_without_cuda_it_exits_2_with_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli_gpu_check.main(["--out", str(tmp_path / "gc")]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.count("\n") == 1 and "no CUDA device" in out.err
    assert not (tmp_path / "gc").exists()


def test_dry_run_plans_the_three_parts_under_eight_minutes(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli_gpu_check.main(["--dry-run", "--out", str(tmp_path / "gc")]) == 0
    out = capsys.readouterr().out
    parts = {p.name: p for p in gpu_check.plan(tmp_path / "gc", "<gpu-name>")}
    assert list(parts) == ["cuda-tests", "overhead", "gridsearch-smoke"]
    assert sum(p.limit_s for p in parts.values()) < 8 * 60
    overhead = " ".join(parts["overhead"].argv)
    for piece in (
        "overhead --device cuda",
        "--problems cifar10_3c3d cifar100_allcnnc",
        "--batch-sizes 32 128",
        "--rounds 3",
        f"--out-dir {tmp_path / 'gc' / 'overhead'}",
    ):
        assert piece in overhead and piece in out
    assert "--no-memory" not in overhead
    assert "tests/bench/overhead/test_timing.py" in parts["cuda-tests"].argv
    assert not (tmp_path / "gc").exists()


def test_the_cuda_tests_cover_issue_12s_fixes(tmp_path):
    """Real-GPU tests of the resume (RNG), the memory protocol, OOM release, device time."""
    files = gpu_check.plan(tmp_path, "g")[0].argv
    for test_file in (
        "tests/bench/gridsearch/test_cuda_resume.py",
        "tests/bench/overhead/test_cuda_real.py",
        "tests/bench/overhead/test_deterministic.py",
    ):
        assert test_file in files


def _flag(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_the_smoke_part_runs_the_quick_grid_on_cuda(tmp_path, monkeypatch):
    """The argv of the part reaches the smoke as device ``cuda`` and the quick grid."""
    from bench.cli import main as curvbench
    from bench.gridsearch import smoke

    (part,) = [p for p in gpu_check.plan(tmp_path, "g") if p.name == "gridsearch-smoke"]
    assert part.argv[1:5] == ["-m", "bench", "gridsearch", "smoke"]
    assert _flag(part.argv, "--out") == str(tmp_path / "gridsearch-smoke")
    seen = {}

    def fake_smoke(out, plots, plan, **kwargs):
        seen.update(kwargs, out=out, command=smoke._command(out, kwargs["quick"], kwargs["device"]))
        return smoke.SmokeReport()

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # device_ok passes
    monkeypatch.setattr(smoke, "run_smoke", fake_smoke)
    assert curvbench(part.argv[3:]) == 0
    assert seen["device"] == "cuda" and seen["quick"] is True
    sweep = seen["command"]
    assert _flag(sweep, "--device") == "cuda" and _flag(sweep, "--problems") == "cifar10_3c3d"
    from bench.gridsearch.cli import plan_from_argv

    grid, _ = smoke.expected_jobs(seen["out"], True, plan_from_argv, "cuda")
    assert len(grid) == 3  # quick: one finished and one mid-way run at the kill are possible


def test_the_smoke_refuses_cuda_on_a_machine_without_it(monkeypatch, capsys, tmp_path):
    from bench.cli import main as curvbench

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = ["gridsearch", "smoke", "--device", "cuda", "--quick", "--out", str(tmp_path / "s")]
    assert curvbench(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no CUDA device" in err and not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    ("code", "output", "passed"),
    [(0, "3 passed", True), (0, "SKIPPED [1] x.py:3: needs CUDA", False), (1, "boom", False)],
    ids=["pass", "cuda-test-skipped", "exit-1"],
)
def test_the_tests_part_fails_when_a_cuda_test_was_skipped(code, output, passed, tmp_path):
    part = gpu_check.Part("cuda-tests", [], 1)
    assert gpu_check.judge(part, code, output, tmp_path, "g")[0] is passed


@pytest.mark.parametrize(
    ("code", "output", "passed"),
    [
        (
            0,
            "smoke: 5 runs in 40 s; killed with 1 finished and 1 mid-way\nsmoke: all checks passed",
            True,
        ),
        (0, "smoke: FAILED: no run was mid-way at the kill", False),
        (1, "smoke: FAILED: x", False),
    ],
    ids=["pass", "no-all-passed", "exit-1"],
)
def test_the_smoke_part_passes_only_when_every_check_passed(code, output, passed, tmp_path):
    part = gpu_check.Part("gridsearch-smoke", [], 1)
    verdict, detail = gpu_check.judge(part, code, output, tmp_path, "g")
    assert verdict is passed
    if passed:
        assert detail == "5 runs in 40 s; killed with 1 finished and 1 mid-way"
