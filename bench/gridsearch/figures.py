"""Figures and REPORT.md of the grid search, from the run stores (no compute).

``make_all(results_dir, plots_dir)`` draws the committed stores in ``results_dir/reference/``
(``results/gridsearch/reference/smoke``, ...) where that folder exists, else ``results_dir`` and
each sub-folder holding run sidecars (e.g. this machine's ``results/gridsearch/local``), and
writes:

* ``<plots_dir>/gridsearch/<store>/heatmap_<problem>_<source>_<method>.{pdf,png}``: final
  validation accuracy over the alpha x lambda grid (grid seed 42), the best cell outlined;
* ``<plots_dir>/gridsearch/<store>/gridsearch_fig7_<problem>_<source>.{pdf,png}``: the paper's
  Fig. 7 and its appendix learning curves: DeepOBS's four panels (test loss, train loss, test
  accuracy, train accuracy over epochs) of each method's best setting, median and quartiles over
  its seeds (curvatures dashed, SGD-momentum and Adam solid), and the DeepOBS results imported
  into the store (``bench.gridsearch.deepobs_io``) dotted, labelled "DeepOBS baseline";
* ``<results_dir>/REPORT.md``: final test accuracy per method and problem (median over seeds)
  beside the paper's numbers (``gridsearch.md`` §5.6) and DeepOBS's baselines (§6), then the
  paper's best α/λ beside ours and the step-time ratios (:mod:`bench.gridsearch.report_tables`).

The best setting is chosen as in ``bench.gridsearch.store.best_settings``: highest final
validation accuracy of a finished seed-42 run, ties to the first in grid order (lr, then
damping, ascending).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd

from bench.gridsearch.deepobs_io import load_baselines
from bench.gridsearch.grid import ALL_CURVATURE_METHODS, GRID_SEED, METHODS
from bench.gridsearch.report_tables import FAMILY as REPORT_FAMILY
from bench.gridsearch.report_tables import best_hyperparameter_lines, steptime_lines
from bench.gridsearch.store import RunStore, load_runs

#: Paper's final test accuracy (medians over 10 seeds, ``gridsearch.md`` §5.6), percent.
PAPER_TEST_ACC = {
    "mnist_logreg": {
        "DiagGGNExact": 92.68,
        "DiagGGNMC": 92.70,
        "KFAC": 92.45,
        "KFLR": 92.46,
        "KFRA": 92.46,
        "Adam": 92.65,
        "Momentum": 92.47,
    },
    "fmnist_2c2d": {
        "DiagGGNExact": 92.36,
        "DiagGGNMC": 92.33,
        "KFAC": 92.57,
        "KFLR": 92.64,
        "Adam": 92.25,
        "Momentum": 92.24,
    },
    "cifar10_3c3d": {
        "DiagGGNExact": 82.37,
        "DiagGGNMC": 83.70,
        "KFAC": 85.09,
        "KFLR": 84.96,
        "Adam": 83.39,
        "Momentum": 83.37,
    },
    "cifar100_allcnnc": {"DiagGGNMC": 57.65, "KFAC": 61.25, "Adam": 56.12, "Momentum": 60.03},
}
#: DeepOBS TF baselines' final test accuracy (mean of 10 seeds, ``gridsearch.md`` §6), percent.
DEEPOBS_TEST_ACC = {
    "cifar10_3c3d": {"SGD": 83.71, "Momentum 0.99": 84.41, "Adam": 84.75},
    "cifar100_allcnnc": {"SGD": 57.06, "Momentum 0.99": 60.33, "Adam": 56.15},
}
#: Fixed colour per method.
METHOD_COLORS = {
    "DiagGGNExact": "#1f77b4",
    "DiagGGNMC": "#17becf",
    "KFAC": "#d62728",
    "KFLR": "#ff7f0e",
    "KFRA": "#9467bd",
    "Momentum": "#2ca02c",
    "Adam": "#7f7f7f",
    "KFAC-expand": "#e377c2",
    "KFLR-expand": "#bcbd22",
    "EKFAC": "#8c564b",
    "EKFAC-exact": "#c49c94",
}
CURVE_PANELS = (
    ("test_loss", "test loss"),
    ("train_loss", "train loss"),
    ("test_acc", "test accuracy"),
    ("train_acc", "train accuracy"),
)
FAMILY = REPORT_FAMILY


#: The sub-folder of the committed stores: where it exists, only its stores are drawn.
REFERENCE = "reference"


def _stores(results_dir: Path) -> list[tuple[str, RunStore]]:
    """Return the stores to draw, as ``(name, store)``.

    Those in ``results_dir/reference/`` if that folder exists (the committed ones, not this
    machine's ``local/``), else ``results_dir`` itself and its sub-folders with run sidecars.
    """
    if (results_dir / REFERENCE).is_dir():
        results_dir = results_dir / REFERENCE
    found = []
    for folder in [results_dir, *sorted(p for p in results_dir.glob("*") if p.is_dir())]:
        if RunStore(folder).run_ids():
            name = "." if folder == results_dir else folder.name
            found.append((name, RunStore(folder)))
    return found


def best_runs(table: pd.DataFrame) -> pd.DataFrame:
    """Return the final row of the best grid run per family and method (see module docstring)."""
    final = table[table["final"] & (table["seed"] == GRID_SEED) & (table["status"] == "finished")]
    final = final.sort_values(["lr", "damping"], na_position="first", kind="stable")
    picks = final.loc[final.groupby([*FAMILY, "method"], sort=False)["valid_acc"].idxmax()]
    return picks.reset_index(drop=True)


def _setting_runs(table: pd.DataFrame, best: pd.Series) -> pd.DataFrame:
    """All seeds' rows of the setting of ``best`` (same family, method, lr, damping)."""
    same = (table["method"] == best["method"]) & (table["lr"] == best["lr"])
    same &= (
        table["damping"].isna() if pd.isna(best["damping"]) else table["damping"] == best["damping"]
    )
    for key in FAMILY:
        same &= table[key] == best[key]
    return table[same]


def _label(family: dict, table: pd.DataFrame) -> str:
    """Return ``<problem>_<source>`` (+ an options tag where the store has several such families).

    E.g. full epochs (``full``) beside ``max_steps_per_epoch`` runs (``steps10``).
    """
    label = f"{family['problem']}_{family['source']}"
    same = table[(table["problem"] == family["problem"]) & (table["source"] == family["source"])]
    if same["options"].nunique() > 1:
        options = json.loads(family["options"])
        steps = options.get("max_steps_per_epoch")
        tag = f"steps{steps}" if steps else "full"
        others = same[same["options"] != family["options"]]["options"].map(json.loads)
        if any(o.get("max_steps_per_epoch") == steps for o in others):
            tag += "_" + hashlib.sha1(family["options"].encode()).hexdigest()[:6]
        label += f"_{tag}"
    return label


def _data_note(family: dict) -> str:
    """Return the source and the steps per epoch of a truncated family."""
    steps = json.loads(family["options"]).get("max_steps_per_epoch")
    return family["source"] + (f", {steps} steps/epoch" if steps else "")


def heatmaps(table: pd.DataFrame, plots: Path, best: pd.DataFrame) -> list[Path]:
    """Draw one alpha x lambda heatmap of final validation accuracy per family and curvature."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    from matplotlib.patches import Rectangle

    from bench.plotting import figsize, save

    paths = []
    grid = table[table["final"] & (table["seed"] == GRID_SEED)]
    grid = grid[grid["method"].isin(ALL_CURVATURE_METHODS)]
    for keys, frame in grid.groupby([*FAMILY, "method"], sort=True):
        family = dict(zip([*FAMILY, "method"], keys))
        acc = frame.assign(valid_acc=frame["valid_acc"].where(frame["status"] == "finished"))
        pivot = acc.pivot_table(index="damping", columns="lr", values="valid_acc", dropna=False)
        pivot = pivot.sort_index(ascending=False)
        fig, ax = plt.subplots(figsize=figsize(1, 2))
        sns.heatmap(
            pivot,
            annot=True,
            fmt=".3f",
            cmap="viridis",
            ax=ax,
            cbar_kws={"label": "final valid acc"},
            mask=pivot.isna(),
            xticklabels=[f"{v:g}" for v in pivot.columns],
            yticklabels=[f"{v:g}" for v in pivot.index],
        )
        ax.set_facecolor("#dddddd")  # diverged / missing cells
        ax.set_xlabel(r"learning rate $\alpha$")
        ax.set_ylabel(r"damping $\lambda$")
        ax.set_title(f"{family['problem']} ({_data_note(family)}): {family['method']}")
        chosen = best[(best["method"] == family["method"])]
        for key in FAMILY:
            chosen = chosen[chosen[key] == family[key]]
        if len(chosen):
            col = list(pivot.columns).index(chosen.iloc[0]["lr"])
            row = list(pivot.index).index(chosen.iloc[0]["damping"])
            ax.add_patch(Rectangle((col, row), 1, 1, fill=False, edgecolor="red", lw=2))
        stem = f"heatmap_{_label(family, table)}_{family['method']}"
        paths += save(fig, plots, stem)
    return paths


def _quartile_curves(runs: pd.DataFrame, column: str) -> pd.DataFrame:
    per_epoch = runs.groupby("epoch")[column]
    return pd.DataFrame(
        {
            "median": per_epoch.median(),
            "q1": per_epoch.quantile(0.25),
            "q3": per_epoch.quantile(0.75),
        }
    )


#: Colours of the imported DeepOBS baselines (dotted), by DeepOBS optimizer name.
BASELINE_COLORS = {"SGD": "#000000", "MomentumOptimizer": "#8c564b", "Adam": "#e377c2"}


def _draw_baselines(axes, baselines: pd.DataFrame, problem: str) -> None:
    """Draw the best imported DeepOBS setting per optimizer (median, quartiles; dotted)."""
    from bench.gridsearch.deepobs_io import best_baselines

    picks = best_baselines(baselines, problem)
    for optimizer, runs in picks.groupby("optimizer", sort=True):
        color = BASELINE_COLORS.get(optimizer, "#bcbd22")
        label = f"DeepOBS baseline: {optimizer} ({runs['file'].nunique()} runs)"
        for ax, (column, _) in zip(axes, CURVE_PANELS):
            if runs[column].isna().all():
                continue
            curve = _quartile_curves(runs, column)
            ax.plot(curve.index, curve["median"], ":", color=color, label=label)
            ax.fill_between(curve.index, curve["q1"], curve["q3"], color=color, alpha=0.1)


def learning_curves(
    table: pd.DataFrame, plots: Path, best: pd.DataFrame, baselines: pd.DataFrame | None = None
) -> list[Path]:
    """Fig. 7: DeepOBS-style 4-panel learning curves of the best settings (median, quartiles).

    ``baselines``: imported DeepOBS results (``deepobs_io.load_baselines``), drawn beside ours.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from bench.plotting import figsize, save

    paths = []
    for keys, picks in best.groupby(FAMILY, sort=True):
        family = dict(zip(FAMILY, keys))
        fig, axes = plt.subplots(2, 2, figsize=figsize(2, 2), sharex=True)
        axes = axes.ravel()
        for _, pick in picks.sort_values("method", key=lambda s: s.map(METHODS.index)).iterrows():
            runs = _setting_runs(table, pick)
            seeds = runs["seed"].nunique()
            for ax, (column, title) in zip(axes, CURVE_PANELS):
                curve = _quartile_curves(runs, column)
                color = METHOD_COLORS.get(pick["method"])
                style = "--" if pick["method"] in ALL_CURVATURE_METHODS else "-"
                ax.plot(curve.index, curve["median"], style, color=color,
                        label=f"{pick['method']} ({seeds} seeds)")  # fmt: skip
                ax.fill_between(curve.index, curve["q1"], curve["q3"], color=color, alpha=0.2)
                ax.set_title(title)
        if baselines is not None and not baselines.empty:
            _draw_baselines(axes, baselines, family["problem"])
        for ax in axes:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        for ax in axes[2:]:
            ax.set_xlabel("epoch")
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=4, fontsize="x-small")
        fig.suptitle(f"{family['problem']} ({_data_note(family)}), best settings")
        paths += save(fig, plots, f"gridsearch_fig7_{_label(family, table)}")
    return paths


def _fmt_setting(pick: pd.Series) -> str:
    damping = "" if pd.isna(pick["damping"]) else f", λ={pick['damping']:g}"
    return f"α={pick['lr']:g}{damping}"


def report_section(name: str, table: pd.DataFrame, best: pd.DataFrame) -> list[str]:
    """Markdown lines for one store: final test accuracy per method beside the paper's."""
    lines = [f"## Store `{name}`", ""]
    status = table.groupby("run_id")["status"].first().value_counts().to_dict()
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(status.items()))
    lines.append(f"Runs: {sum(status.values())} ({counts}).")
    lines.append("")
    for keys, picks in best.groupby(FAMILY, sort=True):
        family = dict(zip(FAMILY, keys))
        options = json.loads(family["options"])
        lines += [
            f"### {family['problem']} — source {family['source']}, {family['epochs']} epochs, "
            f"batch {family['batch_size']}",
            "",
            f"Options: `{json.dumps(options, sort_keys=True)}`",
            "",
        ]
        if family["source"] == "synthetic":
            lines += [
                "> Synthetic data (smoke test): the paper's numbers are listed for the layout "
                "only and are **not comparable**.",
                "",
            ]
        paper = PAPER_TEST_ACC.get(family["problem"], {})
        lines += [
            "| method | best setting | seeds | final test acc (median) | IQR | paper (median) |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for _, pick in picks.sort_values("method", key=lambda s: s.map(METHODS.index)).iterrows():
            runs = _setting_runs(table, pick)
            final = runs[runs["final"] & (runs["status"] == "finished")]["test_acc"] * 100
            paper_acc = paper.get(pick["method"])
            lines.append(
                f"| {pick['method']} | {_fmt_setting(pick)} | {len(final)} | "
                f"{final.median():.2f} % | {final.quantile(0.25):.2f}–{final.quantile(0.75):.2f} | "
                f"{'—' if paper_acc is None else f'{paper_acc:.2f} %'} |"
            )
        deepobs = DEEPOBS_TEST_ACC.get(family["problem"])
        if deepobs:
            listed = ", ".join(f"{k} {v:.2f} %" for k, v in deepobs.items())
            lines += ["", f"DeepOBS TF baselines (mean of 10 seeds): {listed}."]
        lines.append("")
    return lines


def make_all(results_dir: str | Path, plots_dir: str | Path) -> list[Path]:
    """Build every grid-search figure and ``<results_dir>/REPORT.md``; return the paths.

    Args:
        results_dir: ``results/gridsearch`` (its ``reference/`` stores), a store, or a folder
            of stores; REPORT.md goes here.
        plots_dir: the plots root; figures go to ``<plots_dir>/gridsearch/<store>/``.

    Returns:
        The files written.

    """
    from bench.plotting import style
    from bench.results_io import atomic_write_text

    results_dir, plots_dir = Path(results_dir), Path(plots_dir)
    style()
    paths: list[Path] = []
    lines = [
        "# Grid search: the paper's curvature optimizers vs SGD-momentum and Adam",
        "",
        "Generated by `make figures` (`bench.gridsearch.figures`) from the run stores below. "
        "Best setting per method: highest final validation accuracy of the seed-42 grid "
        "(DeepOBS `mode='final'`); accuracies are medians over the best setting's seeds. "
        "Paper: Dangel et al. (2020), Fig. 7 data (spec `gridsearch.md` §5.6).",
        "",
    ]
    stores = _stores(results_dir)
    if not stores:
        lines.append("No runs yet: `make gridsearch-smoke` or `make gridsearch`.")
    picked = []
    for name, store in stores:
        table = load_runs(store)
        if table.empty:
            continue
        best = best_runs(table)
        picked.append((name, table, best))
        plots = plots_dir / "gridsearch" / ("root" if name == "." else name)
        paths += heatmaps(table, plots, best)
        paths += learning_curves(table, plots, best, load_baselines(store.root))
        lines += report_section(name, table, best)
        figure_names = sorted({p.stem for p in paths if p.parent == plots})
        lines += ["Figures: " + ", ".join(f"`{n}`" for n in figure_names), ""]
    lines += best_hyperparameter_lines(picked)
    lines += steptime_lines(results_dir)
    paths.append(atomic_write_text(results_dir / "REPORT.md", "\n".join(lines)))
    return paths
