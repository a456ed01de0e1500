"""Two tables of ``results/gridsearch/REPORT.md``: best hyperparameters and step-time ratios.

* :func:`best_hyperparameter_lines`: the paper's best α/λ per problem and curvature (App. C
  table, spec ``gridsearch.md`` §5.5) beside the best setting each of our run stores found (the
  same pick as the report's accuracy tables), with how many settings that store's grid held: a
  store that ran one setting found nothing, it only ran the paper's.
* :func:`steptime_lines`: every ``steptime_<device>_<problem>.csv`` of ``curvbench gridsearch
  steptime`` as a table of median step time over SGD-momentum's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from bench.gridsearch.grid import CURVATURE_METHODS, GRID_SEED

#: Paper's best (α, λ, where in the grid) per curvature and problem (App. C table; spec
#: ``gridsearch.md`` §5.5). "int": interior of the grid, "edge": on its border. Absent: not run.
PAPER_BEST = {
    "DiagGGNExact": {
        "mnist_logreg": (1e-3, 1e-3, "int"),
        "fmnist_2c2d": (1e-4, 1e-4, "edge"),
        "cifar10_3c3d": (1e-3, 1e-2, "int"),
    },
    "DiagGGNMC": {
        "mnist_logreg": (1e-3, 1e-3, "int"),
        "fmnist_2c2d": (1e-4, 1e-4, "edge"),
        "cifar10_3c3d": (1e-3, 1e-2, "int"),
        "cifar100_allcnnc": (1e-3, 1e-3, "int"),
    },
    "KFAC": {
        "mnist_logreg": (1e-2, 1e-2, "int"),
        "fmnist_2c2d": (1e-3, 1e-3, "int"),
        "cifar10_3c3d": (1.0, 10.0, "edge"),
        "cifar100_allcnnc": (1.0, 1.0, "int"),
    },
    "KFLR": {
        "mnist_logreg": (1e-2, 1e-2, "int"),
        "fmnist_2c2d": (1e-2, 1e-3, "int"),
        "cifar10_3c3d": (1.0, 10.0, "edge"),
    },
    "KFRA": {"mnist_logreg": (1e-2, 1e-2, "int")},
}
#: The paper's problems in its order.
PAPER_PROBLEMS = ("mnist_logreg", "fmnist_2c2d", "cifar10_3c3d", "cifar100_allcnnc")
#: The columns that make a run family (one learning-curve figure; also ``figures.FAMILY``).
FAMILY = ["problem", "source", "epochs", "batch_size", "options"]


def _family_tag(row: pd.Series) -> str:
    options = json.loads(row["options"])
    steps = options.get("max_steps_per_epoch")
    tag = f"{row['source']}, {row['epochs']} ep"
    return tag + (f", {steps} step{'s' * (steps != 1)}/ep" if steps else "")


def _ours(problem: str, method: str, stores: Sequence[tuple[str, pd.DataFrame, pd.DataFrame]]):
    """Our best settings of ``problem`` / ``method``, one entry per store and run family."""
    found = []
    for name, table, best in stores:
        picks = best[(best["problem"] == problem) & (best["method"] == method)]
        for _, pick in picks.iterrows():
            grid = table[(table["seed"] == GRID_SEED) & (table["method"] == method)]
            for key in FAMILY:
                grid = grid[grid[key] == pick[key]]
            settings = len(grid[["lr", "damping"]].drop_duplicates())
            grid_note = "1 setting run" if settings == 1 else f"best of {settings}"
            found.append(
                f"α={pick['lr']:g}, λ={pick['damping']:g} (`{name}`: {_family_tag(pick)}; "
                f"{grid_note})"
            )
    return found


def best_hyperparameter_lines(
    stores: Sequence[tuple[str, pd.DataFrame, pd.DataFrame]],
) -> list[str]:
    """Markdown: the paper's best α/λ per problem and curvature beside our stores' best settings.

    Args:
        stores: ``(store name, load_runs table, figures.best_runs picks)`` per run store.

    Returns:
        Lines of one section (heading, note, table).

    """
    lines = [
        "## Best hyperparameters: the paper (App. C) beside ours",
        "",
        'Paper: Dangel et al. (2020), App. C table (spec `gridsearch.md` §5.5; "int": interior '
        'of the α × λ grid, "edge": on its border). Ours: the setting with the highest final '
        'validation accuracy of each store\'s seed-42 grid; "1 setting run" means the store ran '
        "only that setting (nothing was searched).",
        "",
        "| problem | curvature | paper α / λ | ours |",
        "| --- | --- | --- | --- |",
    ]
    for problem in PAPER_PROBLEMS:
        for method in CURVATURE_METHODS:
            paper = PAPER_BEST.get(method, {}).get(problem)
            ours = _ours(problem, method, stores)
            if paper is None and not ours:
                continue
            paper_cell = (
                "— (not run)" if paper is None else f"{paper[0]:g} / {paper[1]:g} ({paper[2]})"
            )
            lines.append(
                f"| {problem} | {method} | {paper_cell} | {'<br>'.join(ours) or '— (no run)'} |"
            )
    return [*lines, ""]


def steptime_lines(results_dir: str | Path) -> list[str]:
    """Markdown: one table of step-time ratios to SGD-momentum per ``steptime_*.csv``.

    Args:
        results_dir: the folder holding ``steptime_<device>_<problem>.csv``.

    Returns:
        Lines of one section (empty when there is no such file).

    """
    paths = sorted(Path(results_dir).glob("steptime_*.csv"))
    if not paths:
        return []
    lines = [
        "## Step time relative to SGD-momentum",
        "",
        "`curvbench gridsearch steptime`: median time of one training step (forward, backward "
        "with the quantity, optimizer step with the inverses recomputed, as in the paper's code) "
        "over interleaved rounds in one process, divided by SGD-momentum's. The committed CPU "
        "files come from a 2-core machine shared with other jobs: both sides of a ratio saw the "
        "same load, but expect tens of percent between reruns (docs/gridsearch.md).",
        "",
        "| file | problem | batch | rounds | SGD-momentum step | "
        + " | ".join(m for m in ("Adam", *CURVATURE_METHODS))
        + " |",
        "| --- " * (5 + 1 + len(CURVATURE_METHODS)) + "|",
    ]
    for path in paths:
        df = pd.read_csv(path)
        for (problem, batch, rounds), rows in df.groupby(
            ["problem", "batch_size", "rounds"], sort=False
        ):
            ratio = dict(zip(rows["method"], rows["ratio_to_sgd"]))
            sgd = rows[rows["method"] == "Momentum"]["median_s"]
            sgd_cell = f"{sgd.iloc[0] * 1e3:.1f} ms" if len(sgd) else "—"
            cells = [f"{ratio[m]:.3g}" if m in ratio else "—" for m in ("Adam", *CURVATURE_METHODS)]
            lines.append(
                f"| `{path.name}` | {problem} | {batch} | {rounds} | {sgd_cell} | "
                + " | ".join(cells)
                + " |"
            )
    return [*lines, ""]
