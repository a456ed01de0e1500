"""Overhead figures and REPORT.md from a CSV (no compute): files, values, stability."""

import hashlib

import pytest

from bench import results_io
from bench.cli import main as cli_main
from bench.overhead import report as overhead_report
from bench.overhead.figures import BACKEND_COLORS, fig3, load, make_all
from bench.overhead.plan import COLUMNS
from bench.plotting import style


def _row(problem, n, backend, quantity, median, grad, status="ok", mem=100.0, note=""):
    return {
        "problem": problem, "batch_size": n, "backend": backend, "quantity": quantity,
        "mode": "clean", "device": "cpu", "rounds": 3, "median_s": median, "iqr_s": 0.1 * median,
        "min_s": 0.9 * median, "ratio_to_grad": median / grad if status == "ok" else None,
        "peak_mem_mb": mem if status == "ok" else None, "status": status,
        "message": "" if status == "ok" else "needs 40 GiB", "note": note,
    }  # fmt: skip


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("overhead")
    rows = []
    for n, grad in ((32, 0.05), (128, 0.15)):
        rows.append(_row("cifar10_3c3d", n, "pytorch", "grad", grad, grad))
        for backend, factor in (("ours", 1.5), ("backpack", 4.0), ("loop", 6.0)):
            rows.append(_row("cifar10_3c3d", n, backend, "BatchGrad", factor * grad, grad))
        rows.append(_row("cifar10_3c3d", n, "ours", "KFAC", 2.5 * grad, grad))
        rows.append(_row("cifar10_3c3d", n, "backpack", "KFAC", 3.0 * grad, grad))
    rows.append(_row("cifar100_allcnnc", 4, "pytorch", "grad", 0.1, 0.1, note="reduced"))
    rows.append(_row("cifar100_allcnnc", 4, "backpack", "KFLR", 5.0, 0.1, status="oom"))
    rows.append(_row("cifar100_allcnnc", 4, "ours", "KFLR", 3.0, 0.1, note="reduced"))
    folder = tmp_path / "results" / "overhead" / "reference"
    results_io.atomic_write_csv(folder / "cpu.csv", rows, COLUMNS)
    results_io.atomic_write_json(
        folder / "cpu.json", {"environment": {"device_name": "TestCPU", "torch": "x"}}
    )
    return tmp_path


@pytest.fixture(scope="module")
def built(results):
    return make_all([results / "results" / "overhead" / "reference" / "cpu.csv"], results / "plots")


def test_figures_are_pdf_and_png(built):
    names = sorted(p.name for p in built)
    for stem in ("overhead_fig6_clean", "overhead_fig3_clean", "overhead_memory_clean"):
        assert f"{stem}.pdf" in names and f"{stem}.png" in names
    assert all(p.stat().st_size > 1000 for p in built)


def test_pdf_rebuilds_byte_identically(results, built):
    pdf = results / "plots" / "overhead_fig3_clean.pdf"
    before = hashlib.sha256(pdf.read_bytes()).hexdigest()
    style()
    fig3(load([results / "results" / "overhead" / "reference" / "cpu.csv"]), results / "plots")
    assert hashlib.sha256(pdf.read_bytes()).hexdigest() == before


def test_every_backend_has_a_fixed_colour():
    from bench.overhead.backends import BACKENDS

    assert set(BACKENDS) <= set(BACKEND_COLORS)
    assert len(set(BACKEND_COLORS.values())) == len(BACKEND_COLORS)


@pytest.mark.parametrize(
    ("problem", "n", "key", "expected"),
    [
        ("cifar10_3c3d", 128, "BatchGrad", (1.25, 128)),
        ("cifar10_3c3d", 100, "KFAC", (1.23, 128)),
        ("cifar10_3c3d", 8, "loop/BatchGrad", (5.8, 32)),
        ("cifar100_allcnnc", 4, "KFLR", (23.1, 16)),
        ("cifar100_allcnnc", 128, "DiagGGNExact", (35.2, 16)),
        ("tiny_cnn", 4, "KFAC", None),
    ],
    ids=["exact", "nearest", "loop", "allcnnc-small", "only-16", "unknown-problem"],
)
def test_paper_ratio_lookup_takes_the_nearest_batch(problem, n, key, expected):
    got = overhead_report.reference_ratio(overhead_report.PAPER_RATIOS, problem, n, key)
    assert got == expected


def test_report_puts_our_ratios_beside_backpack_and_the_paper(results):
    csv = results / "results" / "overhead" / "reference" / "cpu.csv"
    out = overhead_report.write_report([csv], results / "REPORT.md")
    text = out.read_text()
    assert "TestCPU" in text
    line = next(x for x in text.splitlines() if x.startswith("| Indiv. Grad") and "1.50" in x)
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1].startswith("1.50") and cells[2].startswith("4.00")  # ours, BackPACK
    assert "1.25" in line or "1.01" in line  # the paper's ratio at this batch size
    assert "faster than the better BackPACK path on 2 of 2" in text
    assert "| cifar100_allcnnc | 4 | backpack | KFLR | oom | needs 40 GiB |" in text
    assert "Note: reduced" in text
    assert "## Differences explained" in text


def test_figures_command_builds_overhead_and_skips_missing_gridsearch(results, capsys):
    code = cli_main(
        ["figures", "--results", str(results / "results"), "--plots", str(results / "p")]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "overhead_fig6_clean.pdf" in out and "REPORT.md" in out
    assert (results / "results" / "overhead" / "REPORT.md").exists()


def test_figures_command_without_csv_says_what_to_run(tmp_path, capsys):
    assert cli_main(["figures", "overhead", "--results", str(tmp_path)]) == 0
    assert "curvbench overhead" in capsys.readouterr().out


def test_memory_panels_never_put_two_batch_sizes_side_by_side():
    """A peer timed at N=32 and ours at N=128 are drawn in separate panels (peak memory grows
    with N: side by side they would suggest the peer needs less)."""
    import pandas as pd

    from bench.overhead.figures import memory_panels

    data = pd.DataFrame(
        [
            _row("cifar10_3c3d", 32, "curvlinops", "KFAC", 0.2, 0.05, mem=130.0),
            _row("cifar10_3c3d", 32, "ours", "KFAC", 0.1, 0.05, mem=120.0),
            _row("cifar10_3c3d", 128, "ours", "KFAC", 0.4, 0.15, mem=300.0),
            _row("cifar100_allcnnc", 2, "ours", "KFLR", 3.0, 0.1, mem=280.0),
        ]
    )
    panels = memory_panels(data)
    assert [(p, n) for p, n, _ in panels] == [
        ("cifar10_3c3d", 32),
        ("cifar10_3c3d", 128),
        ("cifar100_allcnnc", 2),
    ]
    assert all(set(rows["batch_size"]) == {n} for _, n, rows in panels)
