"""Where overhead results go (issue 13) and figures per machine (issue 12, item 7)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bench import results_io
from bench.cli import main as cli_main
from bench.overhead import numerics
from bench.overhead import plan as overhead_plan
from bench.overhead import run as overhead_run
from bench.overhead.cli import CPU_DEFAULT_PLAN_SIZE, DEFAULT_OUT_DIR, build_parser
from bench.overhead.plan import COLUMNS

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")
ROOT = Path(__file__).resolve().parents[3]
FAST = overhead_run.RunOptions(rounds=1, warmup=0, memory=False)


def _plan():
    options = overhead_plan.PlanOptions(
        problems=["tiny_mlp"], batch_sizes=[2], backends=["loop"], quantities=["BatchGrad"]
    )
    return overhead_plan.default_plan(options)


# ---- the default output is this machine's own, untracked file -----------------------------


def test_default_output_is_this_machines_untracked_file():
    args = build_parser().parse_args([])
    assert Path(args.out_dir) == Path(DEFAULT_OUT_DIR) == Path("results/overhead/local")
    assert args.name is None  # -> environment.machine_slug(device), e.g. cpu-2core
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "results/overhead/local/cpu-2core.csv"], cwd=ROOT
    )
    assert ignored.returncode == 0, "results/overhead/local/ must be git-ignored"
    tracked = subprocess.run(
        ["git", "ls-files", "results/overhead"], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    assert "results/overhead/reference/cpu-2core.csv" in tracked
    assert not [p for p in tracked if p.startswith("results/overhead/local/")]


def test_cpu_default_plan_size_stated_in_help_is_the_plan():
    plan = overhead_plan.default_plan(overhead_plan.PlanOptions())
    assert len(plan) == CPU_DEFAULT_PLAN_SIZE


def test_help_has_no_restructuredtext_and_lists_valid_names(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    assert "``" not in out and ":func:" not in out and ":class:" not in out
    for names in (
        "cifar10_3c3d, cifar100_3c3d",
        "ours, ours_perstep, backpack, backpack_savemem",
        "KFLR KFRA",
    ):
        assert names in " ".join(out.split()), names


@pytest.mark.parametrize(
    "module",
    ["cli_compare_table", "cli_gate", "cli_profile_step", "cli_gpu_check", "figures-command"],
)
def test_other_overhead_helps_have_no_restructuredtext(module, capsys):
    import importlib

    if module == "figures-command":
        with pytest.raises(SystemExit):
            cli_main(["figures", "--help"])
    else:
        main = importlib.import_module(f"bench.overhead.{module}").main
        with pytest.raises(SystemExit):
            main(["--help"])
    out = capsys.readouterr().out
    assert "``" not in out and ":func:" not in out and ":data:" not in out


# ---- resume only into a CSV of the same fingerprint ---------------------------------------


def test_resume_into_a_csv_of_another_environment_starts_a_new_file(tmp_path, capsys):
    first = overhead_run.run(_plan(), FAST, tmp_path, "m", show_progress=False)
    meta = results_io.read_json(first.with_suffix(".json"))
    meta["fingerprint"]["device_name"] = "Another CPU"
    results_io.atomic_write_json(first.with_suffix(".json"), meta)
    before = first.read_bytes()
    second = overhead_run.run(_plan(), FAST, tmp_path, "m", show_progress=False)
    out = capsys.readouterr().out
    assert second == tmp_path / "m-2.csv" and first.read_bytes() == before
    assert "not resuming" in out and "device_name 'Another CPU'" in out
    assert len(results_io.read_csv_rows_strict(second)) == 2  # measured, not skipped
    third = overhead_run.run(_plan(), FAST, tmp_path, "m", show_progress=False)
    assert third == second and "already in" in capsys.readouterr().out  # m-2 matches: resumed


@pytest.mark.parametrize(
    "change",
    [{"version": overhead_run.FINGERPRINT_VERSION - 1}, {"num_threads": 999}, {"torch": "1.0"}],
    ids=["older-timing-semantics", "threads", "torch"],
)
def test_every_fingerprint_field_guards_the_resume(change, tmp_path):
    first = overhead_run.run(_plan(), FAST, tmp_path, "m", show_progress=False)
    meta = results_io.read_json(first.with_suffix(".json"))
    meta["fingerprint"].update(change)
    results_io.atomic_write_json(first.with_suffix(".json"), meta)
    current = overhead_run.fingerprint("cpu", numerics.Numerics())
    assert overhead_run.fingerprint_mismatch(first, current)


def test_a_csv_without_fingerprint_is_never_resumed_into(tmp_path):
    """A CSV whose sidecar records no fingerprint (a reference from before fingerprints, or a
    hand-made file) is never resumed into, whatever this machine is."""
    reference = ROOT / "results" / "overhead" / "reference" / "cpu-2core"
    csv = tmp_path / "old.csv"
    csv.write_bytes(reference.with_suffix(".csv").read_bytes())
    meta = results_io.read_json(reference.with_suffix(".json"))
    meta.pop("fingerprint", None)
    results_io.atomic_write_json(csv.with_suffix(".json"), meta)
    current = overhead_run.fingerprint("cpu", numerics.Numerics())
    assert "no environment fingerprint" in overhead_run.fingerprint_mismatch(csv, current)


# ---- figures and REPORT: one section per (machine, device) --------------------------------


def _rows(device: str, scale: float):
    common = {"problem": "cifar10_3c3d", "batch_size": 32, "mode": "clean", "device": device}
    out = []
    for backend, quantity, factor in (
        ("pytorch", "grad", 1.0),
        ("ours", "BatchGrad", 1.5),
        ("backpack", "BatchGrad", 3.0),
        ("loop", "BatchGrad", 6.0),
    ):
        median = 0.01 * scale * factor
        out.append(
            {**common, "backend": backend, "quantity": quantity, "status": "ok", "rounds": 3,
             "median_s": median, "iqr_s": 0.1 * median, "min_s": median, "ratio_to_grad": factor,
             "peak_mem_mb": 10.0 * factor, "message": "", "note": ""}
        )  # fmt: skip
    return out


def test_figures_and_report_get_one_section_per_machine(tmp_path, capsys):
    folder = tmp_path / "results" / "overhead" / "reference"
    for machine, device, scale in (("cpu-2core", "cpu", 10.0), ("nvidia-h200", "cuda", 1.0)):
        results_io.atomic_write_csv(folder / f"{machine}.csv", _rows(device, scale), COLUMNS)
        env = {"device_name": machine.upper(), "device": device, "torch": "x"}
        results_io.atomic_write_json(folder / f"{machine}.json", {"environment": env})
    plots = tmp_path / "plots"
    argv = ["figures", "overhead", "--results", str(tmp_path / "results"), "--plots", str(plots)]
    assert cli_main(argv) == 0
    names = {p.name for p in plots.iterdir()}
    for figure in ("fig6", "fig3", "memory"):
        for machine in ("cpu-2core", "nvidia-h200"):
            assert f"overhead_{figure}_clean_{machine}.pdf" in names
    report = (tmp_path / "results" / "overhead" / "REPORT.md").read_text()
    cpu_part, gpu_part = report.split("## nvidia-h200 (cuda)")
    assert "## cpu-2core (cpu)" in cpu_part and "CPU-2CORE" in cpu_part
    assert "NVIDIA-H200" in gpu_part and "CPU-2CORE" not in gpu_part
    assert "1.00 (100.0 ms)" in cpu_part and "1.00 (10.0 ms)" in gpu_part
    assert report.count("### 3C3D / CIFAR-10, N = 32, clean mode") == 2
