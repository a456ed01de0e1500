"""The ours-vs-BackPACK table (issue 3): plan, target logic, and one tiny end-to-end run."""

import pytest

from bench.overhead import cli_compare_table, compare_table
from bench.overhead.plan import REFERENCE

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")


def test_plan_separates_backpack_default_path_and_c_column_groups():
    groups = compare_table.plan("cifar100_allcnnc", ["BatchGrad", "KFLR"], "cpu")
    assert len(groups) == 3
    for group in groups:
        assert (group[0].backend, group[0].quantity) == REFERENCE
        assert all(m.batch_size == 128 and m.note == group[0].note for m in group)
    assert [g[0].note for g in groups] == [
        compare_table.GROUP_MAIN, compare_table.GROUP_BACKPACK_DEFAULT, compare_table.GROUP_C_COLUMN
    ]  # fmt: skip
    assert {m.variant for m in groups[0][1:]} == {"ours/BatchGrad", "backpack_savemem/BatchGrad"}
    assert {m.variant for m in groups[1][1:]} == {"backpack/BatchGrad"}
    assert {m.variant for m in groups[2][1:]} == {"ours/KFLR", "backpack/KFLR"}
    main, default_path = compare_table.plan("cifar10_3c3d", ["BatchGrad", "KFLR"], "cpu")
    assert len(main) == 5 and len(default_path) == 2


def test_a_rerun_keeps_complete_groups_from_the_csv(tmp_path, monkeypatch):
    csv_path = str(tmp_path / "table.csv")
    argv = ["--problems", "tiny_cnn", "--quantities", "BatchGrad", "KFAC", "--rounds", "1",
            "--no-memory", "--threads", "1", "--csv", csv_path]  # fmt: skip
    assert cli_compare_table.main(argv) == 0
    runs = []
    real = compare_table.run_group
    monkeypatch.setattr(compare_table, "run_group", lambda g, o: runs.append(g) or real(g, o))
    assert cli_compare_table.main(argv) == 0
    assert runs == []  # both groups (main, BackPACK default path) were kept
    rows = compare_table._load(csv_path)
    drop = next(k for k, r in rows.items() if r["note"] == compare_table.GROUP_BACKPACK_DEFAULT)
    from bench import results_io

    results_io.atomic_write_csv(
        csv_path, [r for k, r in rows.items() if k != drop], compare_table.COLUMNS
    )
    assert cli_compare_table.main(argv) == 0
    assert len(runs) == 1 and runs[0][0].note == compare_table.GROUP_BACKPACK_DEFAULT


def _r(problem, backend, quantity, ratio, status="ok", mem=500.0):
    return {
        "problem": problem, "backend": backend, "quantity": quantity, "status": status,
        "ratio_to_grad": ratio, "peak_mem_mb": mem, "median_s": 0.1 * (ratio or 1),
    }  # fmt: skip


def test_render_marks_targets_met_and_missed():
    p3, pa = "cifar10_3c3d", "cifar100_allcnnc"
    rows = [
        _r(p3, "pytorch", "grad", 1.0), _r(pa, "pytorch", "grad", 1.0),
        _r(p3, "ours", "BatchGrad", 1.5), _r(p3, "backpack", "BatchGrad", 5.0),
        _r(p3, "backpack_savemem", "BatchGrad", 3.2),
        _r(pa, "ours", "BatchGrad", 1.4), _r(pa, "backpack", "BatchGrad", 9.0),
        _r(p3, "ours", "KFLR", 4.0), _r(p3, "backpack", "KFLR", 6.0),
        _r(pa, "ours", "KFLR", 30.0, mem=3000.0), _r(pa, "backpack", "KFLR", None, "oom"),
        _r(p3, "ours", "DiagHessian", 9.0), _r(p3, "backpack", "DiagHessian", 10.0),
        _r(pa, "ours", "DiagHessian", None, "oom"),
        {**_r(p3, "ours", "KFRA", None, "oom"),
         "message": "MemoryBudgetError: ... would need about 32,461,307,904 bytes"},
        {**_r(pa, "ours", "KFRA", None, "oom"), "message": "MemoryError: killed"},
    ]  # fmt: skip
    table = compare_table.render(rows, [p3, pa], ["BatchGrad", "KFLR", "DiagHessian", "KFRA"])
    lines = {line.split("|")[1].strip(): line for line in table.splitlines()[2:-2]}
    cells = lambda q: [c.strip() for c in lines[q].strip("|").split("|")]  # noqa: E731
    assert cells("BatchGrad")[1:5] == [
        "1.50 (500 MB)",
        "5.00 (500 MB) / 3.20 (500 MB)",
        "<= 1.9",
        "yes",
    ]
    assert cells("BatchGrad")[5:9] == ["1.40 (500 MB)", "9.00 (500 MB)", "<= 1.3", "**no**"]
    assert cells("KFLR")[3:5] == ["<= 0.8x BackPACK", "yes"]  # 4.0 <= 0.8 * 6.0
    assert cells("KFLR")[5:9] == ["30.00 (3000 MB)", "oom", "runs, <= 8 GB", "yes"]
    assert cells("DiagHessian")[4] == "**no**"  # 9.0 > 0.8 * 10.0
    assert cells("DiagHessian")[8] == "**no**"  # ours did not run
    assert cells("KFRA")[3:5] == [compare_table.KFRA_TARGET, "yes"]
    assert cells("KFRA")[8] == "**no**"  # an oom that is not our own refusal
    assert "Targets missed: 4." in table


def test_main_runs_end_to_end_on_a_tiny_problem(capsys):
    code = cli_compare_table.main(
        ["--problems", "tiny_cnn", "--quantities", "BatchL2Grad", "KFAC", "--rounds", "1",
         "--no-memory", "--threads", "1"]
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "| BatchL2Grad |" in out and "| KFAC |" in out and "Targets missed" in out
