"""The paper's appendix overhead figures (Fig. 8, Fig. 9) from the presets' CSVs (no compute).

    curvbench figures overhead     # results/overhead/reference/presets/<preset>-<machine>.csv
    python -m bench.overhead.cli_paper_figures --csv results/overhead/local/fig9-cpu-2core.csv

* ``overhead_fig8_<mode>_<machine>``: All-CNN-C / CIFAR-100, every quantity at one batch size
  (the Fig. 6 layout; the title carries the batch size and says when it is not the paper's 16).
* ``overhead_fig9_<mode>_<machine>``: 3C3D-sigmoid, (a) step time of the gradient, DiagGGN and
  DiagHessian over N, (b) DiagHessian / DiagGGN over N, ours and BackPACK beside the paper's.

A CSV's preset is the part of its file stem before the first ``-`` (``fig9-cpu-2core.csv``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from bench import results_io
from bench.overhead import figures
from bench.plotting import save, style
from bench.spec import GRAD

#: Paper Fig. 9 (BackPACK 1.0, GPU), median ms per step: N -> (grad, DiagGGN, DiagHessian)
#: (spec overhead.md §4.2, ``bench_diagh.tex``).
PAPER_FIG9_MS = {
    4: (5.2, 9.2, 70.6),
    8: (6.4, 9.9, 144.0),
    16: (8.8, 13.9, 290.8),
    32: (13.6, 22.3, 588.1),
}
FIG9_PROBLEM = "cifar10_3c3dsig"
FIG9_QUANTITIES = ("DiagGGNExact", "DiagHessian")
FIG9_BACKENDS = ("ours", "backpack")
FIG8_PROBLEM = "cifar100_allcnnc"
FIG8_PAPER_N = 16


class PresetCSVError(results_io.CSVFileError):
    """A preset CSV that lacks what its figure needs (one line: file and what is missing)."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(path, None, reason)


def preset_of(path: str | Path) -> str:
    """Return the preset a CSV belongs to: its file stem up to the first ``-``."""
    return Path(path).stem.split("-", 1)[0]


def fig9_ratios(df: pd.DataFrame, backend: str) -> dict[int, float]:
    """DiagHessian / DiagGGN median step time per batch size of ``backend`` (ok rows only)."""
    rows = df[(df["status"] == "ok") & (df["backend"] == backend)]
    med = rows.pivot_table(index="batch_size", columns="quantity", values="median_s")
    if not set(FIG9_QUANTITIES) <= set(med.columns):
        return {}
    ratio = (med["DiagHessian"] / med["DiagGGNExact"]).dropna()
    return {int(n): float(r) for n, r in ratio.items()}


def fig9_missing_sizes(sizes) -> list[int]:
    """Return the paper's Fig. 9 batch sizes (4, 8, 16, 32) that ``sizes`` lacks."""
    have = {int(n) for n in sizes}
    return [n for n in sorted(PAPER_FIG9_MS) if n not in have]


def fig9_missing_note(sizes) -> str:
    """Return ``""`` when ``sizes`` covers the paper's N, else e.g. ``N = 16, 32 not measured``."""
    missing = fig9_missing_sizes(sizes)
    return f"N = {', '.join(map(str, missing))} not measured" if missing else ""


def _require(df: pd.DataFrame, source: str, problem: str, quantities: Sequence[str]) -> None:
    """Raise :class:`PresetCSVError` unless ``df`` has ok rows of ``problem`` for each quantity."""
    ok = df[(df["status"] == "ok") & (df["problem"] == problem)]
    missing = [q for q in (GRAD, *quantities) if not (ok["quantity"] == q).any()]
    if missing:
        raise PresetCSVError(
            source,
            f"no successful {problem} rows of {', '.join(missing)} "
            f"(needed for this figure; rerun `curvbench overhead --preset {preset_of(source)}`)",
        )


def fig9(df: pd.DataFrame, plots_dir: str | Path, mode: str, suffix: str, source: str = "?"):
    """Fig. 9: DiagGGN vs DiagHessian on 3C3D-sigmoid over N (time; Hessian/GGN ratio)."""
    data = df[(df["mode"] == mode) & (df["problem"] == FIG9_PROBLEM)]
    _require(data, source, FIG9_PROBLEM, FIG9_QUANTITIES)
    ok = data[data["status"] == "ok"]
    fig, axes = figures._grid(1, 2)
    styles = {GRAD: ("--", "o"), "DiagGGNExact": (":", "^"), "DiagHessian": ("-", "s")}
    curves = [("pytorch", GRAD)] + [(b, q) for b in FIG9_BACKENDS for q in FIG9_QUANTITIES]
    for backend, quantity in curves:
        rows = ok[(ok["backend"] == backend) & (ok["quantity"] == quantity)]
        rows = rows.sort_values("batch_size")
        if rows.empty:
            continue
        linestyle, marker = styles[quantity]
        name = "gradient" if quantity == GRAD else figures.QUANTITY_LABELS[quantity]
        axes[0][0].errorbar(
            rows["batch_size"],
            rows["median_s"] * 1e3,
            yerr=rows["iqr_s"] * 1e3 / 2,
            color=figures.BACKEND_COLORS[backend],
            linestyle=linestyle,
            marker=marker,
            markersize=3,
            linewidth=1,
            label=name if quantity == GRAD else f"{name} ({figures.BACKEND_LABELS[backend]})",
        )
    for backend in FIG9_BACKENDS:
        ratios = fig9_ratios(ok, backend)
        if ratios:
            axes[0][1].plot(
                list(ratios),
                list(ratios.values()),
                color=figures.BACKEND_COLORS[backend],
                marker="s",
                markersize=3,
                linewidth=1,
                label=figures.BACKEND_LABELS[backend],
            )
    paper = {n: h / g for n, (_, g, h) in PAPER_FIG9_MS.items()}
    axes[0][1].plot(
        list(paper), list(paper.values()), color="black", marker="x", markersize=3,
        linewidth=0.8, linestyle="--", label="paper (BackPACK 1.0, GPU)",
    )  # fmt: skip
    sizes = sorted(int(n) for n in ok["batch_size"].unique())
    for ax, ticks in zip(axes[0], (sizes, sorted({*sizes, *PAPER_FIG9_MS}))):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(n) for n in ticks])
        ax.minorticks_off()
        ax.set_xlabel("batch size N")
        ax.legend(fontsize=5, frameon=False)
    axes[0][0].set_yscale("log")
    axes[0][0].set_ylabel("time / step [ms]")
    missing = fig9_missing_note(sizes)
    paper_n = ", ".join(map(str, sorted(PAPER_FIG9_MS)))
    title = "3C3D-sigmoid / CIFAR-10"
    if missing:  # e.g. a CPU run stopped after N = 8: say which of the paper's N are absent
        title += f"\n{missing} (paper: N = {paper_n})"
        axes[0][1].set_xlabel(f"batch size N\n(ours: {missing})", fontsize=7)
    axes[0][0].set_title(title, fontsize=7)
    axes[0][1].set_yscale("log")
    axes[0][1].set_ylabel("DiagHessian / DiagGGN")
    axes[0][1].set_title("cost of the sigmoid's second derivative", fontsize=7)
    return save(fig, plots_dir, f"overhead_fig9_{mode}{suffix}")


def fig8(df: pd.DataFrame, plots_dir: str | Path, mode: str, suffix: str, source: str = "?"):
    """Fig. 8: every quantity on All-CNN-C / CIFAR-100 at one batch size (the Fig. 6 layout)."""
    data = df[(df["mode"] == mode) & (df["problem"] == FIG8_PROBLEM)]
    _require(data, source, FIG8_PROBLEM, ())
    sizes = sorted(int(n) for n in data["batch_size"].unique())
    label = figures.PROBLEM_LABELS.get(FIG8_PROBLEM, FIG8_PROBLEM)
    if sizes != [FIG8_PAPER_N]:
        label += f" (paper: N={FIG8_PAPER_N})"
    return figures.fig6(data.assign(problem=label), plots_dir, mode, suffix=suffix, name="fig8")


BUILDERS = {"fig8": fig8, "fig9": fig9}


def load_preset(path: str | Path) -> pd.DataFrame:
    """Read one preset CSV (``figures.load``); refuse one of an unknown preset."""
    if preset_of(path) not in BUILDERS:
        raise PresetCSVError(
            path, f"file name does not start with a preset ({', '.join(BUILDERS)}) and a '-'"
        )
    return figures.load([path])


def load_presets(folder: str | Path) -> dict[str, pd.DataFrame]:
    """Read the preset CSVs in ``folder``, one frame per preset (``{}`` when there are none)."""
    frames: dict[str, list[pd.DataFrame]] = {}
    for path in sorted(Path(folder).glob("*.csv")):
        frames.setdefault(preset_of(path), []).append(load_preset(path))
    return {name: pd.concat(parts, ignore_index=True) for name, parts in frames.items()}


def make_all(csv_paths: Sequence[str | Path], plots_dir: str | Path) -> list[Path]:
    """Fig. 8 / Fig. 9 for every preset CSV, per timing mode (``_<mode>_<machine>``)."""
    style()
    paths: list[Path] = []
    for path in map(Path, csv_paths):
        df = load_preset(path)
        machine = path.stem.split("-", 1)[1] if "-" in path.stem else path.stem
        for mode in dict.fromkeys(df["mode"]):
            paths += BUILDERS[preset_of(path)](df, plots_dir, mode, f"_{machine}", str(path))
    return paths
