"""Figures of the overhead benchmark from its CSV (no compute): Fig. 6, Fig. 3 and peak memory.

    curvbench figures overhead        # results/overhead/reference/*.csv -> plots/overhead_*
    python -m bench.overhead.cli_figures --csv results/overhead/local/*.csv --plots plots/local

* ``overhead_fig6``: per problem (rows) and batch size (columns), the median step time of each
  quantity (x) for ours, BackPACK and BackPACK's save-memory path (bars, IQR whiskers), with the
  plain gradient as a dashed reference line (log scale).
* ``overhead_fig3``: individual gradients over the batch size: loop, ours, BackPACK, torch.func,
  Opacus and the plain gradient.
* ``overhead_memory``: peak memory per quantity and backend at the largest batch measured.

ICLR-sized (tueplots), fixed colour per backend, PDF and PNG, no LaTeX; PDFs carry no creation
date so they rebuild byte-stably.

Every (device, machine) gets its own figures (the machine is the CSV's file stem, e.g.
``cpu-2core``): with one, the files are ``overhead_<figure>_<mode>.{pdf,png}``; with several,
each name ends in ``_<machine>`` (``_<machine>-<device>`` where one CSV holds several devices).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bench import results_io  # noqa: E402
from bench.overhead.peers import NEW_QUANTITIES  # noqa: E402
from bench.plotting import figsize, save, style  # noqa: E402
from bench.spec import GRAD, QUANTITIES  # noqa: E402

#: One colour per backend, used by every overhead figure.
BACKEND_COLORS = {
    "pytorch": "#4d4d4d",
    "ours": "#d62728",
    "ours_perstep": "#f4a6a6",
    "ours_expand": "#a50f15",
    "ours_perstep_expand": "#fcbba1",
    "backpack": "#1f77b4",
    "backpack_savemem": "#9ecae1",
    "torch.func": "#2ca02c",
    "opacus": "#9467bd",
    "loop": "#ff7f0e",
    "curvlinops": "#8c564b",
    "asdl": "#e377c2",
    "nngeometry": "#17becf",
}
BACKEND_LABELS = {
    "pytorch": "gradient",
    "ours": "ours",
    "ours_perstep": "ours (collect per step)",
    "ours_expand": "ours (expand conv factors)",
    "ours_perstep_expand": "ours (expand, per step)",
    "backpack": "BackPACK",
    "backpack_savemem": "BackPACK (save-mem conv)",
    "torch.func": "torch.func",
    "opacus": "Opacus",
    "loop": "for-loop",
    "curvlinops": "curvlinops",
    "asdl": "ASDL",
    "nngeometry": "nngeometry",
}
#: Short quantity labels in the paper's Fig. 6 wording.
QUANTITY_LABELS = {
    "BatchGrad": "Indiv. Grad",
    "BatchL2Grad": "Batch L2",
    "SumGradSquared": "2nd Moment",
    "Variance": "Variance",
    "DiagGGNExact": "DiagGGN",
    "DiagGGNMC": "DiagGGN-MC",
    "DiagHessian": "DiagHessian",
    "KFAC": "KFAC",
    "KFLR": "KFLR",
    "KFRA": "KFRA",
    "EKFAC": "EKFAC",
}
PROBLEM_LABELS = {
    "cifar10_3c3d": "3C3D / CIFAR-10",
    "cifar100_3c3d": "3C3D / CIFAR-100",
    "cifar10_allcnnc": "All-CNN-C / CIFAR-10",
    "cifar100_allcnnc": "All-CNN-C / CIFAR-100",
}
FIG6_BACKENDS = ("ours", "backpack", "backpack_savemem")
FIG3_BACKENDS = ("loop", "ours", "backpack", "backpack_savemem", "torch.func", "opacus")


#: columns a CSV must have to be an overhead result
REQUIRED_COLUMNS = ("problem", "batch_size", "backend", "quantity", "mode", "device", "status")


def load(csv_paths: Sequence[str | Path]) -> pd.DataFrame:
    """Read and concatenate overhead CSVs (numeric columns parsed; ``machine`` = file stem).

    Raises:
        results_io.CSVFileError: a file is empty, binary, truncated or not an overhead CSV.

    """
    frames = []
    for p in csv_paths:
        results_io.read_csv_rows_strict(p, REQUIRED_COLUMNS)  # refuse torn files, say where
        frames.append(pd.read_csv(p).assign(machine=Path(p).stem))
    if not frames:
        raise FileNotFoundError("no overhead CSV given")
    df = pd.concat(frames, ignore_index=True)
    for col in ("batch_size", "median_s", "iqr_s", "min_s", "ratio_to_grad", "peak_mem_mb"):
        df[col] = pd.to_numeric(df[col], errors="coerce")
    notes = df["note"] if "note" in df else pd.Series("", index=df.index)
    df["note"] = notes.astype(object).where(notes.notna(), "").astype(str)
    df["message"] = df["message"].astype(object).where(df["message"].notna(), "").astype(str)
    return df


def _ok(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "ok"]


def _quantities_in(df: pd.DataFrame) -> list[str]:
    present = set(df["quantity"])
    return [q for q in (*QUANTITIES, *NEW_QUANTITIES) if q in present]


def _grid(nrows: int, ncols: int):
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize(nrows, ncols), squeeze=False)
    return fig, axes


def fig6(
    df: pd.DataFrame,
    plots_dir: str | Path,
    mode: str = "clean",
    suffix: str = "",
    name: str = "fig6",
) -> list[Path]:
    """Time per quantity, per problem (rows) and batch size (columns); gradient as a line.

    ``name`` is the figure's part of the file name (Fig. 8 has this layout too).
    """
    data = _ok(df[df["mode"] == mode])
    problems = list(dict.fromkeys(data["problem"]))
    if not problems:
        return []
    sizes = {p: sorted(data[data["problem"] == p]["batch_size"].unique()) for p in problems}
    ncols = max(len(s) for s in sizes.values())
    fig, axes = _grid(len(problems), ncols)
    width = 0.8 / len(FIG6_BACKENDS)
    for i, problem in enumerate(problems):
        for j in range(ncols):
            ax = axes[i][j]
            if j >= len(sizes[problem]):
                ax.set_visible(False)
                continue
            n = sizes[problem][j]
            panel = data[(data["problem"] == problem) & (data["batch_size"] == n)]
            quantities = _quantities_in(panel)
            x = np.arange(len(quantities))
            for k, backend in enumerate(FIG6_BACKENDS):
                rows = panel[panel["backend"] == backend].set_index("quantity")
                rows = rows[~rows.index.duplicated(keep="last")]
                heights = [rows["median_s"].get(q, np.nan) for q in quantities]
                errors = [rows["iqr_s"].get(q, np.nan) / 2 for q in quantities]
                ax.bar(
                    x + (k - (len(FIG6_BACKENDS) - 1) / 2) * width,
                    heights,
                    width,
                    yerr=errors,
                    color=BACKEND_COLORS[backend],
                    label=BACKEND_LABELS[backend],
                    error_kw={"linewidth": 0.5},
                )
            grad = panel[(panel["backend"] == "pytorch") & (panel["quantity"] == GRAD)]
            if len(grad):
                ax.axhline(
                    grad["median_s"].iloc[0],
                    color=BACKEND_COLORS["pytorch"],
                    linestyle="--",
                    linewidth=0.8,
                    label="gradient (ref.)",
                )
            ax.set_yscale("log")
            ax.set_xticks(x, [QUANTITY_LABELS[q] for q in quantities], rotation=60, ha="right")
            ax.set_title(f"{PROBLEM_LABELS.get(problem, problem)}, N={n}", fontsize=7)
            if j == 0:
                ax.set_ylabel("time / step [s]")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncols=4, frameon=False)
    return save(fig, plots_dir, f"overhead_{name}_{mode}{suffix}")


def fig3(
    df: pd.DataFrame, plots_dir: str | Path, mode: str = "clean", suffix: str = ""
) -> list[Path]:
    """Individual gradients over batch size: loop vs ours vs BackPACK vs peers vs gradient."""
    data = _ok(df[df["mode"] == mode])
    problems = [p for p in dict.fromkeys(data["problem"]) if (data["problem"] == p).any()]
    if not problems:
        return []
    fig, axes = _grid(1, len(problems))
    for ax, problem in zip(axes[0], problems):
        panel = data[data["problem"] == problem]
        curves = [("pytorch", GRAD)] + [(b, "BatchGrad") for b in FIG3_BACKENDS]
        for backend, quantity in curves:
            rows = panel[(panel["backend"] == backend) & (panel["quantity"] == quantity)]
            rows = rows.sort_values("batch_size")
            if rows.empty:
                continue
            ax.errorbar(
                rows["batch_size"],
                rows["median_s"],
                yerr=rows["iqr_s"] / 2,
                color=BACKEND_COLORS[backend],
                marker="o",
                markersize=3,
                linewidth=1,
                linestyle="--" if backend == "pytorch" else "-",
                label=BACKEND_LABELS[backend],
            )
        sizes = sorted(int(n) for n in panel["batch_size"].unique())
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.minorticks_off()
        ax.set_yscale("log")
        ax.set_xlabel("batch size N")
        ax.set_title(PROBLEM_LABELS.get(problem, problem), fontsize=7)
    axes[0][0].set_ylabel("time / step [s]")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncols=4, frameon=False)
    return save(fig, plots_dir, f"overhead_fig3_{mode}{suffix}")


def memory_panels(data: pd.DataFrame) -> list[tuple[str, int, pd.DataFrame]]:
    """``[(problem, N, rows)]``: one panel per problem and batch size, in the CSV's order.

    Every bar of a panel is at the same N: peak memory grows with N, so bars of different batch
    sizes side by side (a peer measured at N = 32 beside ours at N = 128) would mislead.
    """
    keys = list(dict.fromkeys(zip(data["problem"], data["batch_size"].astype(int))))
    return [
        (p, n, data[(data["problem"] == p) & (data["batch_size"].astype(int) == n)])
        for p, n in keys
    ]


def memory(
    df: pd.DataFrame, plots_dir: str | Path, mode: str = "clean", suffix: str = ""
) -> list[Path]:
    """Peak memory per quantity and backend, one panel per problem and batch size."""
    data = _ok(df[df["mode"] == mode]).dropna(subset=["peak_mem_mb"])
    panels = memory_panels(data)
    if not panels:
        return []
    fig, axes = _grid(len(panels), 1)
    backends = [b for b in BACKEND_COLORS if b in set(data["backend"])]
    width = 0.8 / max(len(backends), 1)
    for ax, (problem, n, panel) in zip(axes[:, 0], panels):
        quantities = [GRAD, *_quantities_in(panel)]
        x = np.arange(len(quantities))
        for k, backend in enumerate(backends):
            rows = panel[panel["backend"] == backend].set_index("quantity")["peak_mem_mb"]
            ax.bar(
                x + (k - (len(backends) - 1) / 2) * width,
                [rows.get(q, np.nan) for q in quantities],
                width,
                color=BACKEND_COLORS[backend],
                label=BACKEND_LABELS[backend],
            )
        ax.set_yscale("log")
        ax.set_ylabel("peak memory [MB]")
        ticks = ["Grad"] + [QUANTITY_LABELS[q] for q in quantities[1:]]
        ax.set_xticks(x, ticks, rotation=30, ha="right")
        ax.set_title(f"{PROBLEM_LABELS.get(problem, problem)}, N={n}", fontsize=7)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncols=4, frameon=False)
    return save(fig, plots_dir, f"overhead_memory_{mode}{suffix}")


def sections(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Split ``df`` by (machine, device), in order: ``[(suffix, rows)]``.

    The suffix is ``""`` when there is one section, else ``machine`` (``machine-device`` for a
    machine whose CSV holds several devices).
    """
    keys = list(dict.fromkeys(zip(df["machine"], df["device"])))
    if len(keys) == 1:
        return [("", df)]
    machines = [m for m, _ in keys]
    out = []
    for machine, device in keys:
        suffix = machine if machines.count(machine) == 1 else f"{machine}-{device}"
        out.append((suffix, df[(df["machine"] == machine) & (df["device"] == device)]))
    return out


def make_all(csv_paths: Sequence[str | Path], plots_dir: str | Path) -> list[Path]:
    """Every overhead figure for every (machine, device) and timing mode in the CSVs."""
    style()
    paths: list[Path] = []
    for suffix, df in sections(load(csv_paths)):
        for mode in dict.fromkeys(df["mode"]):
            for builder in (fig6, fig3, memory):
                paths += builder(df, plots_dir, mode, suffix=f"_{suffix}" if suffix else "")
    return paths
