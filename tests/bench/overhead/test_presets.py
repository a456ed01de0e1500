"""The Fig. 8 / Fig. 9 presets: their plans, the CLI flag, and their figures from tiny CSVs."""

import csv

import pytest

from bench.overhead import cli_paper_figures, paper_figures, presets
from bench.overhead.cli import build_parser
from bench.overhead.plan import COLUMNS
from bench.spec import C_COLUMN_QUANTITIES, GRAD, QUANTITIES

# ---- plans ----------------------------------------------------------------------------------


def _expanded(plan):
    return {(m.problem, m.batch_size, m.backend, m.quantity) for m in plan}


@pytest.mark.parametrize(("device", "sizes"), [("cuda", (4, 8, 16, 32)), ("cpu", (4, 8))])
def test_fig9_is_3c3d_sigmoid_diagggn_vs_diaghessian_over_the_papers_batch_sizes(device, sizes):
    plan = presets.preset_plan("fig9", device)
    assert {m.problem for m in plan} == {"cifar10_3c3dsig"}
    assert tuple(sorted({m.batch_size for m in plan})) == sizes
    want = {
        ("cifar10_3c3dsig", n, b, q)
        for n in sizes
        for b, q in [
            ("pytorch", GRAD),
            ("backpack", GRAD),
            *[(b, q) for b in ("ours", "backpack") for q in ("DiagGGNExact", "DiagHessian")],
        ]
    }
    assert _expanded(plan) == want
    shrunk = "; N = 4, 8 instead of the paper's N = 4, 8, 16, 32" if device == "cpu" else ""
    assert all(m.note == "fig9 preset (Fig. 9)" + shrunk for m in plan)


def test_fig8_is_allcnnc_cifar100_with_every_paper_quantity_at_16_on_cuda():
    plan = presets.preset_plan("fig8", "cuda")
    assert {(m.problem, m.batch_size) for m in plan} == {("cifar100_allcnnc", 16)}
    ours = {m.quantity for m in plan if m.backend == "ours"}
    assert ours == set(QUANTITIES) - {"KFRA"}
    assert set(C_COLUMN_QUANTITIES) <= {m.quantity for m in plan if m.backend == "backpack"}
    assert all(m.note == "fig8 preset (Fig. 8)" for m in plan)


def test_fig8_on_cpu_shrinks_n_and_labels_every_row():
    plan = presets.preset_plan("fig8", "cpu")
    assert {m.batch_size for m in plan} == {4}
    assert all("N = 4 instead of the paper's N = 16" in m.note for m in plan)
    # the C-column quantities are kept at the shrunk N, not dropped
    assert set(C_COLUMN_QUANTITIES) <= {m.quantity for m in plan if m.backend == "ours"}


def test_explicit_batch_sizes_override_the_preset_and_are_labelled():
    plan = presets.preset_plan("fig9", "cuda", batch_sizes=(2,))
    assert {m.batch_size for m in plan} == {2}
    assert all("N = 2 instead of the paper's N = 4, 8, 16, 32" in m.note for m in plan)


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid presets: fig8, fig9"):
        presets.get("fig7")


def test_cli_preset_sets_the_plan_and_conflicts_with_problems(capsys):
    args = build_parser().parse_args(["--preset", "fig9", "--device", "cpu", "--dry-run"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "12 measurements" in out and "cifar10_3c3dsig N=8" in out
    args = build_parser().parse_args(
        ["--preset", "fig9", "--device", "cpu", "--dry-run", "--problems", "cifar10_3c3d"]
    )
    assert args.func(args) == 2
    assert "--preset fig9 sets the problems" in capsys.readouterr().err


# ---- figures from tiny synthetic CSVs -------------------------------------------------------


def _write(path, rows):
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        for problem, n, backend, quantity, median in rows:
            writer.writerow(
                {
                    "problem": problem, "batch_size": n, "backend": backend,
                    "quantity": quantity, "mode": "clean", "device": "cpu", "rounds": 3,
                    "median_s": median, "iqr_s": median / 10, "min_s": median,
                    "ratio_to_grad": "", "peak_mem_mb": "", "status": "ok", "message": "",
                    "note": "", "warmup": 1, "threads": 2, "peak_mem_method": "",
                }
            )  # fmt: skip
    return path


def _fig9_rows(quantities=("DiagGGNExact", "DiagHessian")):
    rows = []
    for n in (4, 8):
        rows.append(("cifar10_3c3dsig", n, "pytorch", GRAD, 0.01 * n))
        for backend in ("ours", "backpack"):
            for q in quantities:
                rows.append(
                    ("cifar10_3c3dsig", n, backend, q, 0.02 * n * (5 if "Hess" in q else 1))
                )
    return rows


def test_fig9_renders_pdf_and_png_from_a_tiny_csv_and_its_ratio_is_hessian_over_ggn(tmp_path):
    path = _write(tmp_path / "fig9-testbox.csv", _fig9_rows())
    written = paper_figures.make_all([path], tmp_path / "plots")
    assert sorted(p.name for p in written) == [
        "overhead_fig9_clean_testbox.pdf",
        "overhead_fig9_clean_testbox.png",
    ]
    assert all(p.stat().st_size > 1000 for p in written)
    df = paper_figures.load_preset(path)
    assert paper_figures.fig9_ratios(df, "ours") == pytest.approx({4: 5.0, 8: 5.0})


def test_fig9_names_the_papers_batch_sizes_it_lacks(tmp_path, monkeypatch):
    """A CSV with N = 4, 8 only: the title says N = 16, 32 were not measured; a full one not."""
    import matplotlib.figure

    titles = []
    real = matplotlib.figure.Figure.savefig

    def spy(fig, *args, **kwargs):
        titles.extend(ax.get_title() for ax in fig.axes)
        titles.extend(ax.get_xlabel() for ax in fig.axes)
        return real(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    path = _write(tmp_path / "fig9-testbox.csv", _fig9_rows())
    paper_figures.make_all([path], tmp_path / "plots")
    assert any("N = 16, 32 not measured (paper: N = 4, 8, 16, 32)" in t for t in titles)
    assert "batch size N\n(ours: N = 16, 32 not measured)" in titles
    assert paper_figures.fig9_missing_sizes([4, 8, 16, 32]) == []
    assert paper_figures.fig9_missing_note([8, 4, 32, 16]) == ""
    assert paper_figures.fig9_missing_note([4]) == "N = 8, 16, 32 not measured"


def test_fig9_csv_without_diaghessian_says_what_is_missing(tmp_path):
    path = _write(tmp_path / "fig9-testbox.csv", _fig9_rows(("DiagGGNExact",)))
    with pytest.raises(paper_figures.PresetCSVError, match="DiagHessian") as err:
        paper_figures.make_all([path], tmp_path / "plots")
    assert str(path) in str(err.value) and "--preset fig9" in str(err.value)
    assert cli_paper_figures.main(["--csv", str(path), "--plots", str(tmp_path / "p")]) == 2


def test_fig8_renders_with_the_shrunk_batch_size(tmp_path):
    rows = [("cifar100_allcnnc", 4, "pytorch", GRAD, 0.05)]
    rows += [("cifar100_allcnnc", 4, b, q, 0.1) for b in ("ours", "backpack") for q in QUANTITIES]
    path = _write(tmp_path / "fig8-testbox.csv", rows)
    written = paper_figures.make_all([path], tmp_path / "plots")
    assert [p.name for p in written] == [
        "overhead_fig8_clean_testbox.pdf",
        "overhead_fig8_clean_testbox.png",
    ]


def test_a_csv_not_named_after_a_preset_is_refused(tmp_path):
    path = _write(tmp_path / "cpu-2core.csv", _fig9_rows())
    with pytest.raises(paper_figures.PresetCSVError, match="does not start with a preset"):
        paper_figures.make_all([path], tmp_path / "plots")


# ---- the figure map -------------------------------------------------------------------------


def test_figure_map_puts_the_papers_fig9_ratios_beside_ours(tmp_path):
    from bench.overhead import figure_map

    path = _write(tmp_path / "fig9-testbox.csv", _fig9_rows())
    df = paper_figures.load_preset(path)
    df["ratio_to_grad"] = df["median_s"] / 0.01
    written = paper_figures.make_all([path], tmp_path / "plots")
    text = figure_map.render(None, {"fig9": df}, written)
    fig9_row = next(line for line in text.splitlines() if line.startswith("| Fig. 9"))
    assert "`plots/overhead_fig9_clean_testbox.{pdf,png}`" in fig9_row
    assert "N=4: 7.7; N=8: 14.5; N=16: 20.9; N=32: 26.4" in fig9_row  # 70.6/9.2, ... (spec §4.2)
    assert "N=4: ours 5.0, BackPACK 5.0; N=8: ours 5.0, BackPACK 5.0" in fig9_row
    assert "N = 16, 32 not measured" in fig9_row  # the CSV stops at N = 8
    fig8_row = next(line for line in text.splitlines() if line.startswith("| Fig. 8"))
    assert "(no CSV yet)" in fig8_row and "KFLR 23.1" in fig8_row
    assert text.count("results/gridsearch/REPORT.md") >= 2


def test_report_carries_the_figure_map_right_after_its_title(tmp_path):
    from bench.overhead.report import write_report

    rows = [("cifar10_3c3d", 8, "pytorch", GRAD, 0.01), ("cifar10_3c3d", 8, "ours", "KFAC", 0.02)]
    path = _write(tmp_path / "box.csv", rows)
    out = write_report([path], tmp_path / "REPORT.md", "## Figure map\n\n| a |\n")
    lines = out.read_text().splitlines()
    assert lines[0].startswith("# Overhead benchmark") and lines[2] == "## Figure map"
    plain = write_report([path], tmp_path / "PLAIN.md").read_text()
    assert "Figure map" not in plain and plain.splitlines()[2].startswith("Source:")


def test_curvbench_figures_refuses_a_fig9_reference_without_diaghessian_in_one_line(
    tmp_path, capsys
):
    from bench.cli import main as cli_main

    reference = tmp_path / "results" / "overhead" / "reference"
    (reference / "presets").mkdir(parents=True)
    _write(reference / "box.csv", [("cifar10_3c3d", 8, "pytorch", GRAD, 0.01)])
    bad = _write(reference / "presets" / "fig9-box.csv", _fig9_rows(("DiagGGNExact",)))
    argv = ["figures", "overhead", "--results", str(tmp_path / "results")]
    assert cli_main([*argv, "--plots", str(tmp_path / "plots")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err and "DiagHessian" in err
