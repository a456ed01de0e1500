"""The figure map of ``results/overhead/REPORT.md``: every paper figure/table -> file, command.

One row per figure or table of the paper on the overhead side (Fig. 3, 6, 8, 9, the memory figure,
the ours-vs-BackPACK table), with the paper's numbers (``shared/spec/overhead.md`` §4.2) beside
ours from the committed CSVs; the grid-search rows point to ``results/gridsearch/REPORT.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from bench.overhead.paper_figures import PAPER_FIG9_MS, fig9_missing_note, fig9_ratios
from bench.overhead.report import PAPER_RATIOS

#: Paper Fig. 3 (3C3D / CIFAR-10, ms): N -> (for-loop, BackPACK, gradient) (spec §4.2).
PAPER_FIG3_MS = {64: (190.7, 30.8, 22.2), 128: (367.9, 57.8, 40.6), 256: (681.3, 96.6, 79.2)}

MEASURE = "`curvbench overhead`, reviewed run copied to `results/overhead/reference/`"
REBUILD = "`curvbench figures overhead`"


def _ratio(df: pd.DataFrame | None, problem: str, n: int, backend: str, quantity: str) -> str:
    """Our ``ratio_to_grad`` of one ok row as ``1.23``, else ``–``."""
    if df is None:
        return "–"
    rows = df[
        (df["problem"] == problem)
        & (df["batch_size"] == n)
        & (df["backend"] == backend)
        & (df["quantity"] == quantity)
        & (df["status"] == "ok")
    ]
    return f"{rows['ratio_to_grad'].iloc[-1]:.2f}" if len(rows) else "–"


def _files(written: Sequence[Path], figure: str) -> str:
    names = sorted({p.with_suffix("").name for p in written if f"overhead_{figure}_" in p.name})
    return ", ".join(f"`plots/{n}.{{pdf,png}}`" for n in names) or "(no CSV yet)"


def _sizes(df: pd.DataFrame | None, problem: str) -> list[int]:
    if df is None:
        return []
    return sorted(int(n) for n in df[df["problem"] == problem]["batch_size"].unique())


def _ours(df, problem, n, quantities, backends=("ours", "backpack")) -> str:
    labels = {"ours": "ours", "backpack": "BackPACK", "loop": "loop"}
    return "; ".join(
        f"{q} " + " / ".join(f"{labels[b]} {_ratio(df, problem, n, b, q)}" for b in backends)
        for q in quantities
    )


def rows(
    main: pd.DataFrame | None, presets: dict[str, pd.DataFrame], written: Sequence[Path]
) -> list[list[str]]:
    """Return the map's rows: [paper item, our file, command, paper's numbers, ours]."""
    p3 = PAPER_RATIOS["3c3d"]
    pa = PAPER_RATIOS["allcnnc"]
    fig3_paper = "; ".join(
        f"N={n}: BackPACK {b / g:.2f}, loop {loop / g:.2f}"
        for n, (loop, b, g) in PAPER_FIG3_MS.items()
    )
    fig3_ours = "; ".join(
        f"N={n}: ours {_ratio(main, 'cifar10_3c3d', n, 'ours', 'BatchGrad')}, "
        f"BackPACK {_ratio(main, 'cifar10_3c3d', n, 'backpack', 'BatchGrad')}, "
        f"loop {_ratio(main, 'cifar10_3c3d', n, 'loop', 'BatchGrad')}"
        for n in _sizes(main, "cifar10_3c3d")
    )
    fig6_q = ("KFAC", "DiagGGNMC", "DiagGGNExact")
    fig6_paper = (
        "3C3D N=32: " + ", ".join(f"{q} {p3[32][q]:.2f}" for q in fig6_q)
        + "; All-CNN-C N=64: " + ", ".join(f"{q} {pa[64][q]:.2f}" for q in ("KFAC", "BatchGrad"))
    )  # fmt: skip
    allc_n = max(_sizes(main, "cifar100_allcnnc") or [0])
    fig6_ours = (
        "3C3D N=32: " + _ours(main, "cifar10_3c3d", 32, fig6_q)
        + f" — All-CNN-C N={allc_n}: "
        + _ours(main, "cifar100_allcnnc", allc_n, ("KFAC", "BatchGrad"), ("ours",))
    )  # fmt: skip
    fig8 = presets.get("fig8")
    fig8_q = ("KFAC", "KFLR", "DiagGGNExact", "DiagHessian")
    fig8_ours = "; ".join(
        f"N={n}: " + _ours(fig8, "cifar100_allcnnc", n, fig8_q)
        for n in _sizes(fig8, "cifar100_allcnnc")
    )
    fig9 = presets.get("fig9")
    paper9 = "; ".join(f"N={n}: {h / g:.1f}" for n, (_, g, h) in PAPER_FIG9_MS.items())
    ours9 = {b: fig9_ratios(fig9, b) for b in ("ours", "backpack")} if fig9 is not None else {}
    fig9_ours = "; ".join(
        f"N={n}: ours {ours9['ours'].get(n, float('nan')):.1f}, "
        f"BackPACK {ours9['backpack'].get(n, float('nan')):.1f}"
        for n in _sizes(fig9, "cifar10_3c3dsig")
    )
    missing9 = fig9_missing_note(_sizes(fig9, "cifar10_3c3dsig"))
    if fig9_ours and missing9:
        fig9_ours += f"; {missing9}"
    grid = "see `results/gridsearch/REPORT.md`"
    return [
        ["Fig. 3 (indiv. gradients, 3C3D)", _files(written, "fig3"), f"{MEASURE}; {REBUILD}",
         fig3_paper + " (×grad)", fig3_ours or "–"],
        ["Fig. 6 (overhead per quantity)", _files(written, "fig6"), f"{MEASURE}; {REBUILD}",
         fig6_paper + " (×grad)", fig6_ours],
        ["Fig. 8 (All-CNN-C / CIFAR-100, N=16)", _files(written, "fig8"),
         "`curvbench overhead --preset fig8`, copied to `results/overhead/reference/presets/`; "
         + REBUILD,
         "N=16: " + ", ".join(f"{q} {pa[16][q]:.1f}" for q in fig8_q) + " (×grad)",
         (fig8_ours or "–") + " (×grad)"],
        ["Fig. 9 (3C3D-sigmoid, DiagHessian vs DiagGGN)", _files(written, "fig9"),
         "`curvbench overhead --preset fig9`, copied to `results/overhead/reference/presets/`; "
         + REBUILD,
         "DiagHessian / DiagGGN: " + paper9,
         ("DiagHessian / DiagGGN: " + fig9_ours) if fig9_ours else "–"],
        ["peak memory (no figure in the paper)", _files(written, "memory"), f"{MEASURE}; {REBUILD}",
         "–", "per quantity, largest N measured"],
        ["ours vs. BackPACK at N=128 (not in the paper)",
         "`results/overhead/reference/compare/cpu-2core.md`",
         "`make overhead-table` (`python -m bench.overhead.cli_compare_table`)", "–",
         "see the file"],
        ["Fig. 7, learning curves, α×λ heatmaps", grid, "`curvbench figures gridsearch`", grid,
         grid],
        ["App. C tables (problems, best hyperparameters)", grid, "`curvbench figures gridsearch`",
         grid, grid],
    ]  # fmt: skip


def render(
    main: pd.DataFrame | None, presets: dict[str, pd.DataFrame], written: Sequence[Path]
) -> str:
    """Render the map as a markdown section (heading, one table, a line on the units)."""
    head = ["paper", "our file", "command", "paper's numbers (GPU)", "ours (this CSV's device)"]
    lines = [
        "## Figure map: the paper's figures and tables, our files, the commands",
        "",
        "Ratios are median step time / median gradient step time (Fig. 9: DiagHessian over "
        "DiagGGN); the paper's are BackPACK 1.0 on an unnamed GPU (spec overhead.md §4.2), ours "
        "the committed CPU references (2 shared cores; the presets' batch sizes are in their "
        "rows and notes).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for row in rows(main, presets, written):
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in row) + " |")
    return "\n".join(lines) + "\n"
