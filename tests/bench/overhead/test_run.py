"""The overhead harness on tiny problems: plan defaults, rows, failures, resume, CLI."""

import csv

import pytest
import torch

from bench import results_io
from bench.overhead import backends
from bench.overhead import plan as overhead_plan
from bench.overhead import problem_setup as overhead_setup
from bench.overhead import run as overhead_run
from bench.overhead.cli import build_parser
from bench.spec import C_COLUMN_QUANTITIES, OVERHEAD_COLUMNS, QUANTITIES
from extensions.errors import MemoryBudgetError, UnsupportedModuleError

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")

FAST = overhead_run.RunOptions(rounds=2, warmup=1, memory=False)


def _plan(**kw):
    kw.setdefault("problems", ["tiny_cnn"])
    kw.setdefault("batch_sizes", [3])
    return overhead_plan.default_plan(overhead_plan.PlanOptions(**kw))


# ---- the plan -------------------------------------------------------------------------------


def test_cpu_defaults_include_batch_128_for_both_problems_and_label_reduced_c_column():
    plan = overhead_plan.default_plan(overhead_plan.PlanOptions(device="cpu"))
    by_problem = {}
    for m in plan:
        by_problem.setdefault(m.problem, set()).add(m.batch_size)
    assert 128 in by_problem["cifar10_3c3d"] and 128 in by_problem["cifar100_allcnnc"]
    reduced = [
        m for m in plan if m.problem == "cifar100_allcnnc" and m.quantity in C_COLUMN_QUANTITIES
    ]
    assert reduced and all(m.batch_size == overhead_plan.CPU_C_COLUMN_BATCH for m in reduced)
    assert all("reduced batch" in m.note for m in reduced)
    full_3c3d = {m.quantity for m in plan if m.problem == "cifar10_3c3d" and m.batch_size == 128}
    assert set(QUANTITIES) <= full_3c3d


def _allcnnc_128(plan):
    return {
        (m.backend, m.quantity)
        for m in plan
        if m.problem == "cifar100_allcnnc" and m.batch_size == 128
    }


@pytest.mark.parametrize(
    ("kw", "skipped"),
    [
        pytest.param({}, True, id="cpu-defaults"),
        pytest.param({"cpu_skips": False}, False, id="explicit-backends"),
        pytest.param({"batch_sizes": [128]}, False, id="explicit-batch-sizes"),
        pytest.param({"device": "cuda"}, False, id="cuda"),
    ],
)
def test_cpu_defaults_leave_out_backpack_default_path_first_order_on_allcnnc(kw, skipped):
    options = overhead_plan.PlanOptions(**{"device": "cpu", **kw})
    variants = _allcnnc_128(overhead_plan.default_plan(options))
    slow = {("backpack", q) for q in ("BatchGrad", "SumGradSquared", "Variance")}
    assert (not slow & variants) is skipped
    assert ("backpack_savemem", "BatchGrad") in variants and ("backpack", "KFAC") in variants
    assert bool(overhead_plan.cpu_default_skips(options)) is skipped
    three = {m.variant for m in overhead_plan.default_plan(options) if m.problem == "cifar10_3c3d"}
    assert "backpack/BatchGrad" in three


def test_cuda_defaults_are_the_paper_batch_sizes_plus_128():
    plan = overhead_plan.default_plan(overhead_plan.PlanOptions(device="cuda"))
    assert {m.batch_size for m in plan} == {32, 48, 64, 128}
    assert not any("reduced batch" in m.note for m in plan)


def test_every_group_starts_with_the_gradient_and_backends_run_only_what_they_have():
    plan = _plan(backends=["loop", "torch.func", "backpack"], quantities=["BatchGrad", "KFAC"])
    for members in overhead_plan.groups_of(plan).values():
        assert (members[0].backend, members[0].quantity) == overhead_plan.REFERENCE
    variants = {m.variant for m in plan}
    assert "loop/BatchGrad" in variants and "torch.func/BatchGrad" in variants
    assert "loop/KFAC" not in variants and "torch.func/KFAC" not in variants
    assert "backpack/KFAC" in variants and "backpack/grad" in variants


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"quantities": ["Hessian"]}, "valid: BatchGrad"),
        ({"modes": ["fast"]}, "valid modes: clean, paper"),
        ({"backends": ["jax"]}, "valid backends: pytorch"),
        ({"problems": ["mnist_mlp"]}, "valid problems: cifar10_3c3d"),
    ],
    ids=["quantity", "mode", "backend", "problem"],
)
def test_bad_names_list_the_valid_ones(kw, match):
    with pytest.raises(ValueError, match=match):
        _plan(**kw)


# ---- running --------------------------------------------------------------------------------


def test_run_writes_tidy_rows_with_ratios_of_the_same_rounds(tmp_path):
    plan = _plan(backends=["backpack", "loop", "torch.func"], quantities=["BatchGrad", "KFAC"])
    path = overhead_run.run(plan, FAST, tmp_path, "t", show_progress=False)
    rows = results_io.read_csv_rows(path)
    assert list(rows[0])[: len(OVERHEAD_COLUMNS)] == list(OVERHEAD_COLUMNS)
    assert len(rows) == len(plan) and all(r["status"] == "ok" for r in rows), rows
    grad = next(r for r in rows if r["backend"] == "pytorch")
    assert float(grad["ratio_to_grad"]) == 1.0
    for r in rows:
        expected = float(r["median_s"]) / float(grad["median_s"])
        assert float(r["ratio_to_grad"]) == pytest.approx(expected)
        assert int(r["rounds"]) == FAST.rounds and float(r["iqr_s"]) >= 0
    meta = results_io.read_json(path.with_suffix(".json"))
    assert meta["finished"] and meta["environment"]["torch"] == torch.__version__
    assert "commit" in meta["environment"] and "num_threads" in meta["environment"]


def test_rerun_skips_existing_rows_and_redo_remeasures(tmp_path, monkeypatch):
    plan = _plan(backends=["loop"], quantities=["BatchGrad"])
    overhead_run.run(plan, FAST, tmp_path, "t", show_progress=False)
    calls = []
    real = overhead_run.run_group
    monkeypatch.setattr(
        overhead_run, "run_group", lambda g, *a, **k: calls.append(g) or real(g, *a, **k)
    )
    overhead_run.run(plan, FAST, tmp_path, "t", show_progress=False)
    assert calls == []
    bigger = _plan(backends=["loop", "torch.func"], quantities=["BatchGrad"])
    overhead_run.run(bigger, FAST, tmp_path, "t", show_progress=False)
    assert [m.variant for m in calls[0]] == ["pytorch/grad", "torch.func/BatchGrad"]
    assert len(results_io.read_csv_rows(tmp_path / "t.csv")) == 3
    overhead_run.run(bigger, FAST, tmp_path, "t", redo=True, show_progress=False)
    assert len(calls[1]) == 3


class _Failing(backends.BaseBackend):
    """A backend whose quantities fail the way real ones do."""

    name = "failing"
    quantities = ("BatchGrad", "KFAC", "KFLR")

    def _make_step(self, model, loss_fn, quantity):
        step = backends.Step(model, loss_fn, quantity)
        errors = {
            "BatchGrad": MemoryBudgetError("needs 40 GiB", quantity=quantity),
            "KFAC": UnsupportedModuleError("no rule for Conv2d", quantity=quantity),
            "KFLR": ZeroDivisionError("a bug"),
        }

        def fail(x, y):
            raise errors[quantity]

        step.backward_with_quantity = fail
        return step


def test_failures_become_rows_and_the_run_goes_on(tmp_path, monkeypatch):
    monkeypatch.setitem(backends.BACKENDS, "failing", _Failing)
    plan = _plan(backends=["failing", "loop"], quantities=["BatchGrad", "KFAC", "KFLR"])
    rows = {(r["backend"], r["quantity"]): r for r in overhead_run.run_group(plan, FAST)}
    assert rows[("failing", "BatchGrad")]["status"] == "oom"
    assert rows[("failing", "KFAC")]["status"] == "unsupported"
    assert rows[("failing", "KFLR")]["status"] == "error"
    assert "a bug" in rows[("failing", "KFLR")]["message"]
    assert rows[("loop", "BatchGrad")]["status"] == "ok"


def test_missing_backend_is_reported_as_unavailable(monkeypatch):
    monkeypatch.setattr(backends.OpacusBackend, "requires", ("curvbench_missing_opacus",))
    rows = overhead_run.run_group(_plan(backends=["opacus"], quantities=["BatchGrad"]), FAST)
    status = {r["backend"]: r["status"] for r in rows}
    assert status == {"pytorch": "ok", "opacus": "unavailable"}


@pytest.mark.parametrize(
    ("err", "status"),
    [
        (torch.cuda.OutOfMemoryError("CUDA out of memory"), "oom"),
        (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried 10 GB"), "oom"),
        (MemoryError(), "oom"),
        (NotImplementedError("no rule"), "unsupported"),
        (ValueError("shape mismatch"), "error"),
    ],
    ids=["cuda-oom", "cpu-oom", "memoryerror", "notimplemented", "other"],
)
def test_classify_error(err, status):
    assert overhead_run.classify_error(err) == status


def test_cpu_memory_probe_fills_peak_memory(tmp_path):
    options = overhead_run.RunOptions(rounds=1, warmup=0, memory=True)
    rows = overhead_run.run_group(_plan(backends=["loop"], quantities=["BatchGrad"]), options)
    for r in rows:
        assert r["status"] == "ok" and r["peak_mem_method"].startswith("rss_subprocess")
        assert 0 <= r["peak_mem_mb"] < 200


@pytest.mark.parametrize("cap_gb", [1e-6, 10.0], ids=["over-cap", "fits"])
def test_reference_kfra_over_the_probe_cap_is_oom_without_running(cap_gb, monkeypatch):
    """BackPACK's KFRA is not probed for minutes when the dense-matrix pre-check says oom."""
    probed = []
    real = overhead_run.subprocess_peak_rss_mb
    monkeypatch.setattr(
        overhead_run, "subprocess_peak_rss_mb", lambda *a, **k: probed.append(1) or real(*a, **k)
    )
    options = overhead_run.RunOptions(rounds=1, warmup=0, memory=True, mem_cap_gb=cap_gb)
    rows = overhead_run.run_group(_plan(backends=["backpack"], quantities=["KFRA"]), options)
    kfra = next(r for r in rows if r["backend"] == "backpack" and r["quantity"] == "KFRA")
    if cap_gb < 1:
        assert kfra["status"] == "oom" and "pre-check" in kfra["message"]
        assert "dense" in kfra["message"]
    else:
        assert kfra["status"] == "ok"
    assert len(probed) == len(rows) - (cap_gb < 1)


def test_paper_mode_fetches_a_fresh_batch_per_step(monkeypatch):
    plan = _plan(
        problems=["cifar10_3c3d"],
        batch_sizes=[2],
        modes=["paper"],
        backends=["backpack"],
        quantities=["BatchL2Grad"],
    )
    fetched = []
    real = overhead_setup.ProblemSetup.fresh_batch_fn

    def counting(self, batch_size, device):
        fetch = real(self, batch_size, device)
        return lambda: fetched.append(1) or fetch()

    monkeypatch.setattr(overhead_setup.ProblemSetup, "fresh_batch_fn", counting)
    rows = overhead_run.run_group(plan, overhead_run.RunOptions(rounds=1, warmup=0, memory=False))
    assert [r["status"] for r in rows] == ["ok"] * len(plan), rows
    assert len(fetched) == len(plan)  # one fresh batch per timed step


def test_paper_mode_without_a_data_source_is_unavailable():
    rows = overhead_run.run_group(
        _plan(modes=["paper"], backends=["loop"], quantities=["BatchGrad"]), FAST
    )
    assert {r["status"] for r in rows} == {"unavailable"}


# ---- CLI ------------------------------------------------------------------------------------


def test_cli_help_names_the_defaults(capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--batch-sizes" in out and "cpu:" in out and "cuda:" in out


def test_cli_runs_end_to_end_and_resumes(tmp_path, capsys):
    argv = [
        "--problems",
        "tiny_mlp",
        "--batch-sizes",
        "2",
        "--rounds",
        "1",
        "--no-memory",
        "--backends",
        "loop",
        "--quantities",
        "BatchGrad",
        "--out-dir",
        str(tmp_path),
        "--name",
        "cli",
        "--no-progress",
        "--threads",
        "1",
    ]
    args = build_parser().parse_args(argv)
    assert args.func(args) == 0
    with open(tmp_path / "cli.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 2
    assert args.func(args) == 0
    assert "already in" in capsys.readouterr().out


def test_cli_rejects_unknown_quantity(capsys):
    with pytest.raises(SystemExit) as exit_info:  # at parse time, before any work
        build_parser().parse_args(["--quantities", "Nope", "--dry-run"])
    assert exit_info.value.code == 2
    assert "valid: BatchGrad" in capsys.readouterr().err
