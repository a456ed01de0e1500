"""Run ``curvbench`` argv in a subprocess (the real entry point) and check exit, message, files.

    from tests.bench.cli_cases import Case, check_case

    CASES = [Case(["overhead", "--threads", "0"], 2, "--threads: must be an integer >= 1")]

    @pytest.mark.parametrize("case", CASES, ids=str)
    def test_bad_value(case, tmp_path):
        check_case(case, tmp_path)

Every case runs with the repository as working directory (so a default output path would land in
the committed ``results/``) and asserts that the files under ``results/`` and ``plots/`` are
byte-identical before and after, besides the exit code and a fragment of stderr + stdout.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WATCHED = ("results", "plots")


@dataclass(frozen=True)
class Case:
    """One command line, its expected exit code and a fragment of its output."""

    argv: list[str]
    code: int
    fragment: str
    #: extra environment (e.g. ``{"CUDA_VISIBLE_DEVICES": ""}``)
    env: dict[str, str] = field(default_factory=dict)
    #: ``{TMP}`` in argv becomes the test's tmp_path
    timeout_s: float = 120.0

    def __str__(self) -> str:
        return " ".join(self.argv)


def snapshot(root: Path = ROOT, folders=WATCHED) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``folders``."""
    out = {}
    for folder in folders:
        for path in sorted((root / folder).rglob("*")):
            if path.is_file():
                out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def run_cli(argv: list[str], env: dict[str, str] | None = None, timeout_s: float = 120.0):
    """``python -m bench argv`` in the repository; returns the CompletedProcess."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "bench", *argv],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def check_case(case: Case, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run ``case`` and assert its exit code, message and that no watched file changed."""
    argv = [a.replace("{TMP}", str(tmp_path)) for a in case.argv]
    before = snapshot()
    proc = run_cli(argv, case.env, case.timeout_s)
    output = proc.stderr + proc.stdout
    assert proc.returncode == case.code, f"exit {proc.returncode}, expected {case.code}:\n{output}"
    assert case.fragment in output, f"{case.fragment!r} not in:\n{output}"
    assert "Traceback" not in output, output
    assert snapshot() == before, "the command changed files under results/ or plots/"
    return proc
