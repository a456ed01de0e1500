"""make gpu-check on a machine without CUDA: exit 2 with one line; its plan (dry run)."""

from __future__ import annotations

import pytest
import torch

from bench.overhead import gpu_check


def test_without_cuda_it_exits_2_with_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path / "gc")]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.count("\n") == 1 and "no CUDA device" in out.err
    assert not (tmp_path / "gc").exists()


def test_dry_run_plans_the_three_parts_under_eight_minutes(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path / "gc")]) == 0
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
    assert "gridsearch smoke --out" in " ".join(parts["gridsearch-smoke"].argv)
    assert "tests/bench/overhead/test_timing.py" in parts["cuda-tests"].argv
    assert not (tmp_path / "gc").exists()


@pytest.mark.parametrize(
    ("code", "output", "passed"),
    [(0, "3 passed", True), (0, "SKIPPED [1] x.py:3: needs CUDA", False), (1, "boom", False)],
    ids=["pass", "cuda-test-skipped", "exit-1"],
)
def test_the_tests_part_fails_when_a_cuda_test_was_skipped(code, output, passed, tmp_path):
    part = gpu_check.Part("cuda-tests", [], 1)
    assert gpu_check.judge(part, code, output, tmp_path, "g")[0] is passed
