"""``curvbench problems``: the test problems, their defaults, and whether their data is present."""

from __future__ import annotations

import argparse
import json
from typing import Any

#: Environment variable naming the data directory (shared with ``problems.data``).
DATA_ENV = "CURVBENCH_DATA"

#: (column header, row key) of the text table
_COLUMNS = (
    ("problem", "name"),
    ("dataset", "dataset"),
    ("classes", "num_classes"),
    ("parameters", "num_parameters"),
    ("L2", "l2"),
    ("batch", "batch_size"),
    ("epochs", "epochs"),
    ("DeepOBS", "in_deepobs"),
    ("data", "data_present"),
)


def problem_rows(data_dir: str | None = None) -> list[dict[str, Any]]:
    """Describe every problem, then every variant (``problems.VARIANTS``), as JSON-ready dicts.

    Args:
        data_dir: Data directory, or ``None`` for ``$CURVBENCH_DATA`` / the user cache.

    Returns:
        The rows, in ``problems.names()`` order, then the variants (``"variant": True``).

    """
    import problems

    rows = []
    for name in (*problems.names(), *problems.VARIANTS):
        problem = problems.get(name)
        rows.append(
            {
                "name": problem.name,
                "dataset": problem.dataset,
                "num_classes": problem.num_classes,
                "num_parameters": problem.num_parameters(),
                "l2": problem.l2,
                "batch_size": problem.batch_size,
                "epochs": problem.epochs,
                "deepobs_defaults": problem.deepobs_defaults,
                "in_deepobs": problem.in_deepobs,
                "variant": name in problems.VARIANTS,
                "data_present": problem.data_present(data_dir),
                "description": problem.description,
            }
        )
    return rows


def _cell(key: str, row: dict[str, Any]) -> str:
    """Format one table cell."""
    value = row[key]
    if key == "num_parameters":
        return f"{value:,}"
    if key in ("batch_size", "epochs") and not row["deepobs_defaults"]:
        return f"{value}*"
    if key == "in_deepobs" and row.get("variant"):
        return "variant"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def format_table(rows: list[dict[str, Any]]) -> str:
    """Render the rows as an aligned plain-text table with footnotes.

    Args:
        rows: From ``problem_rows``.

    Returns:
        The table, without a trailing newline.

    """
    cells = [[header for header, _ in _COLUMNS]]
    cells += [[_cell(key, row) for _, key in _COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(_COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if any(not row["deepobs_defaults"] for row in rows):
        lines.append("* our choice: DeepOBS has no default batch size/epochs for this problem")
    if any(not row["in_deepobs"] for row in rows):
        lines.append("DeepOBS = no: our addition, not a DeepOBS test problem")
    if any(row.get("variant") for row in rows):
        lines.append(
            "DeepOBS = variant: a variant of a problem above, not in DeepOBS "
            "(curvbench overhead --problems accepts it)"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Print the problems table (or JSON) and return the exit code 0."""
    rows = problem_rows(args.data_dir)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows))
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``curvbench problems`` with the CLI's subparsers."""
    parser = subparsers.add_parser(
        "problems",
        help="list the test problems and whether their data is present",
        description=(
            "List the test problems (DeepOBS 3C3D and All-CNN-C on CIFAR-10/100, rebuilt from "
            "standard torch modules) and their variants (not in DeepOBS): dataset, number of "
            "parameters, L2 factor on the weights, "
            "default batch size and epochs, whether DeepOBS has the problem, and whether its "
            "dataset is downloaded (get it with `curvbench data download NAME`)."
        ),
    )
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        default=None,
        help=f"data directory to check (default: ${DATA_ENV}, else ~/.cache/curvbench)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print a JSON list of problems instead of a table"
    )
    parser.set_defaults(func=run)
    return parser
