"""Run ``curvbench`` argv in a subprocess (the real entry point) and check exit, message, files.

    from tests.bench.cli_cases import Case, check_case

    CASES = [Case(["overhead", "--threads", "0"], 2, "--threads: must be an integer >= 1")]

    @pytest.mark.parametrize("case", CASES, ids=str)
    def test_bad_value(case, tmp_path):
        check_case(case, tmp_path)

Every case runs with the repository as working directory (so a default output path would land in
the committed ``results/``) and asserts, besides the exit code and a fragment of stderr + stdout,
that nothing it must not touch changed (:func:`snapshot`): every tracked file (``git ls-files``),
every untracked file git does not ignore, every file under ``results/`` and ``plots/`` (this
machine's ignored ``local/`` runs too) and the timing gate's ``reference_ratios.json``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: folders whose every file is watched, ignored ones included
WATCHED = ("results", "plots")
#: the timing gate's committed reference ratios (per device type)
REFERENCE_RATIOS = "bench/overhead/reference_ratios.json"


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


def _git_files(root: Path, *flags: str) -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-z", *flags], cwd=root, capture_output=True, check=True
    ).stdout
    return [name for name in out.decode().split("\0") if name]


def snapshot(root: Path = ROOT, folders=WATCHED, repository: bool = True) -> dict[str, str]:
    """Relative path -> sha256 (``"missing"`` for a deleted tracked file) of every watched file.

    Watched: every file under ``folders``; with ``repository`` (``root`` is a git checkout) also
    every tracked file, every untracked file git does not ignore and :data:`REFERENCE_RATIOS`.
    """
    names: set[str] = set()
    if repository:
        names |= set(_git_files(root)) | set(_git_files(root, "--others", "--exclude-standard"))
        names.add(REFERENCE_RATIOS)
    for folder in folders:
        names.update(str(p.relative_to(root)) for p in (root / folder).rglob("*") if p.is_file())
    out = {}
    for name in sorted(names):
        path = root / name
        out[name] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"
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
    after = snapshot()
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"the command changed files it must not touch: {changed[:10]}"
    return proc
