"""make gpu-check: the one-command acceptance check on a CUDA machine (under 8 minutes).

    python -m bench.overhead.cli_gpu_check                    # all parts, into a fresh folder
    python -m bench.overhead.cli_gpu_check --dry-run          # print the parts' commands (any host)
    python -m bench.overhead.cli_gpu_check --save-reference   # also store the overhead rows as
                                                              # results/overhead/reference/<gpu>.csv

Parts, each a subprocess with its own time limit, run in this order:

1. cuda-tests: the test files with CUDA-only tests (those skipped with "needs CUDA" elsewhere),
   without the slow ones; fails if a CUDA test is still skipped. Among them the real-GPU checks
   of issue 12's fixes: a grid-search run resumed from its checkpoint (CUDA RNG restored), the
   from-empty peak-memory protocol, an OOM's tensors released, event-based device timing, and
   our MaxPool2d rules under ``--deterministic``.
2. overhead: curvbench overhead --device cuda on both networks at N=32 and 128, 3 rounds,
   memory on (the C-column quantities on the 100-class net at N=32, to stay in time); fails
   unless every problem has ok rows with a peak memory.
3. gridsearch-smoke: the grid-search smoke on CUDA, quick grid (``curvbench
   gridsearch smoke --device cuda --quick``): a sweep killed with ``kill -9`` once a
   run finished and another is mid-way, then resumed; fails unless every check passed.

A summary with pass/fail per part ends the run; the exit code is 0 only if every part passed
(2 without a CUDA device, after one line; the command line is
:mod:`bench.overhead.cli_gpu_check`). Everything is written into a fresh folder
(default results/overhead/local/gpu-check-<UTC time>/, untracked); nothing tracked changes
unless --save-reference is given.
"""

from __future__ import annotations

import datetime as _dt
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import results_io

ROOT = Path(__file__).resolve().parents[2]
PROBLEMS = ("cifar10_3c3d", "cifar100_allcnnc")
BATCH_SIZES = ("32", "128")
#: seconds per part (together under 8 minutes)
LIMITS = {"cuda-tests": 120, "overhead": 240, "gridsearch-smoke": 110}
CUDA_SKIP_REASON = "needs CUDA"


@dataclass
class Part:
    """One part of the check: its command and, after running, the verdict."""

    name: str
    argv: list[str]
    limit_s: int
    passed: bool | None = None
    seconds: float = 0.0
    detail: str = ""


def cuda_test_files(root: Path = ROOT) -> list[str]:
    """Test files that hold a test skipped without CUDA (``reason="needs CUDA"``)."""
    marker = f'reason="{CUDA_SKIP_REASON}"'
    return sorted(
        str(p.relative_to(root))
        for p in (root / "tests").rglob("test_*.py")
        if marker in p.read_text(encoding="utf-8")
    )


def plan(out: Path, gpu: str) -> list[Part]:
    """Return the parts, writing under ``out``; ``gpu`` names the overhead CSV."""
    py = sys.executable
    overhead = [
        py, "-m", "bench", "overhead", "--device", "cuda",
        "--problems", *PROBLEMS, "--batch-sizes", *BATCH_SIZES, "--c-column-batch-size", "32",
        "--rounds", "3", "--warmup", "1", "--out-dir", str(out / "overhead"), "--name", gpu,
        "--no-progress",
    ]  # fmt: skip
    smoke = [
        py, "-m", "bench", "gridsearch", "smoke", "--device", "cuda", "--quick",
        "--out", str(out / "gridsearch-smoke"), "--plots", str(out / "plots"),
    ]  # fmt: skip
    tests = [py, "-m", "pytest", "-q", "-rs", "-m", "not slow", "-p", "no:cacheprovider"]
    return [
        Part("cuda-tests", tests + cuda_test_files(), LIMITS["cuda-tests"]),
        Part("overhead", overhead, LIMITS["overhead"]),
        Part("gridsearch-smoke", smoke, LIMITS["gridsearch-smoke"]),
    ]


def judge(part: Part, code: int, output: str, out: Path, gpu: str) -> tuple[bool, str]:
    """Whether a finished part passed, and why not."""
    if code != 0:
        return False, f"exit {code}: {(output.strip().splitlines() or [''])[-1][:160]}"
    if part.name == "cuda-tests" and CUDA_SKIP_REASON in output:
        return False, "a CUDA test was skipped"
    if part.name == "overhead":
        rows = results_io.read_csv_rows_strict(out / "overhead" / f"{gpu}.csv")
        for problem in PROBLEMS:
            ok = [r for r in rows if r["problem"] == problem and r["status"] == "ok"]
            if not ok or not all(r["peak_mem_mb"] for r in ok):
                return False, f"{problem}: no ok rows with peak memory"
        counts: dict[str, int] = {}
        for r in rows:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        return True, ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    if part.name == "gridsearch-smoke":
        if "smoke: all checks passed" not in output:
            return False, "the smoke did not report 'all checks passed'"
        lines = [line for line in output.splitlines() if line.startswith("smoke: ")]
        return True, lines[0].removeprefix("smoke: ") if lines else ""
    return True, ""


def run_part(part: Part, out: Path, gpu: str) -> None:
    """Run ``part`` (output into ``out/<name>.log``) and fill in its verdict."""
    start = time.perf_counter()
    log = out / f"{part.name}.log"
    try:
        proc = subprocess.run(
            part.argv, cwd=ROOT, capture_output=True, text=True, timeout=part.limit_s
        )
        output = proc.stdout + proc.stderr
        part.passed, part.detail = judge(part, proc.returncode, output, out, gpu)
    except subprocess.TimeoutExpired as err:
        output = f"{err.stdout or ''}{err.stderr or ''}"
        part.passed, part.detail = False, f"over its {part.limit_s} s limit"
    except (OSError, results_io.CSVFileError) as err:
        output = str(err)
        part.passed, part.detail = False, str(err)
    part.seconds = time.perf_counter() - start
    log.write_text(output if isinstance(output, str) else str(output), encoding="utf-8")


def summary(parts: Sequence[Part]) -> str:
    """One line per part: PASS/FAIL/not run, seconds, detail."""
    lines = ["gpu-check summary:"]
    for p in parts:
        verdict = "not run" if p.passed is None else ("PASS" if p.passed else "FAIL")
        lines.append(f"  {p.name:<17} {verdict:<7} {p.seconds:6.0f} s  {p.detail}")
    return "\n".join(lines)


def default_out(root: Path = ROOT) -> Path:
    """Return a fresh folder for one check: ``results/overhead/local/gpu-check-<UTC time>``."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return root / "results" / "overhead" / "local" / f"gpu-check-{stamp}"


def describe(parts: Sequence[Part], out: Path, gpu: str) -> str:
    """Return the plan as printed before the parts run (and by ``--dry-run``)."""
    lines = [
        f"gpu-check on {gpu}: {len(parts)} parts into {out} (limits: {sum(LIMITS.values())} s)"
    ]
    lines += [f"  {p.name} ({p.limit_s} s): {' '.join(p.argv)}" for p in parts]
    return "\n".join(lines)


def run_check(parts: Sequence[Part], out: Path, gpu: str, save_reference: bool = False) -> int:
    """Run ``parts`` into ``out``, print the summary; return the exit code (0: all passed).

    Args:
        parts: from :func:`plan`.
        out: the check's folder (created).
        gpu: the machine's slug (names the overhead CSV).
        save_reference: copy a passed overhead part's CSV + JSON to
            ``results/overhead/reference/<gpu>``.

    """
    out.mkdir(parents=True, exist_ok=True)
    for p in parts:
        print(f"gpu-check: {p.name} ...", flush=True)
        run_part(p, out, gpu)
    print(summary(parts))
    overhead = next(p for p in parts if p.name == "overhead")
    if save_reference and overhead.passed:
        reference = ROOT / "results" / "overhead" / "reference"
        for suffix in (".csv", ".json"):
            shutil.copyfile(out / "overhead" / f"{gpu}{suffix}", reference / f"{gpu}{suffix}")
        print(f"gpu-check: stored {reference / gpu}.csv/.json (review, then `make figures`)")
    return 0 if all(p.passed for p in parts) else 1
