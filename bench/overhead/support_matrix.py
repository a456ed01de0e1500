"""REPORT.md's support matrix (quantity x library: how each computes it) and the peers' table.

:func:`render` returns markdown: the static matrix (read from each library's installed source:
curvlinops 3.0.1, asdfghjkl 0.1a5, nngeometry 0.4, BackPACK 1.7.1, Opacus 1.6), and, given the
overhead rows, one ratio table per group with ours, BackPACK and the three peers, where a row
labelled ``differs`` is marked and kept out of the "ahead of" statements.
"""

from __future__ import annotations

import pandas as pd

from bench.overhead.peers import CLASS_LOOP_BOUND_S, EKFAC
from bench.spec import QUANTITIES

LIBRARIES = ("ours", "backpack", "torch.func", "opacus", "loop", "curvlinops", "asdl", "nngeometry")
LIBRARY_LABELS = {
    "ours": "ours",
    "backpack": "BackPACK 1.7.1",
    "torch.func": "torch.func",
    "opacus": "Opacus 1.6",
    "loop": "for-loop",
    "curvlinops": "curvlinops 3.0.1",
    "asdl": "ASDL 0.1a5",
    "nngeometry": "nngeometry 0.4",
}
ONE = "1 backward"
FIRST = "derived from per-sample grads (1 backward)"
#: quantity -> library -> how it is computed ("" = not offered)
MATRIX: dict[str, dict[str, str]] = {
    "BatchGrad": {
        "ours": ONE,
        "backpack": ONE,
        "torch.func": "vmap(grad): N per-sample graphs",
        "opacus": "1 backward (grad_sample hooks)",
        "loop": "N backwards",
        "asdl": "1 backward (OP_BATCH_GRADS)",
        "nngeometry": "per-sample Jacobian: 1 backward",
    },
    "BatchL2Grad": {
        "ours": ONE,
        "backpack": ONE,
        "torch.func": "vmap(grad), then norms",
        "opacus": "1 backward (ghost clipping norms)",
        "asdl": FIRST,
        "nngeometry": FIRST,
    },
    "SumGradSquared": {"ours": ONE, "backpack": ONE, "asdl": FIRST, "nngeometry": FIRST},
    "Variance": {"ours": ONE, "backpack": ONE, "asdl": FIRST, "nngeometry": FIRST},
    "DiagGGNExact": {
        "ours": "1 backward, C columns",
        "backpack": "1 backward, C columns",
        "asdl": "C backwards (diag; conv small maps: x²g², differs)",
        "nngeometry": "C-1 backwards (Cholesky of the Fisher)",
    },
    "DiagGGNMC": {
        "ours": ONE,
        "backpack": ONE,
        "asdl": "1 + 1 backward (MC, then loss)",
        "nngeometry": "1 MC backward + plain backward",
    },
    "DiagHessian": {"ours": "1 backward, C columns", "backpack": "1 backward, C columns"},
    "KFAC": {
        "ours": ONE,
        "backpack": ONE,
        "curvlinops": "1 MC backward + plain backward (conv: expand, differs)",
        "asdl": "1 + 1 backward (conv: expand, differs)",
        "nngeometry": "1 MC backward + plain backward (conv: expand, differs)",
    },
    "KFLR": {
        "ours": "1 backward, C columns",
        "backpack": "1 backward, C columns",
        "curvlinops": "C backwards (type-2; conv: expand, differs)",
        "asdl": "C backwards (exact; conv: expand, differs)",
        "nngeometry": "C-1 backwards (conv: expand, differs)",
    },
    "KFRA": {"ours": "1 backward, dense h x h", "backpack": "1 backward, dense h x h"},
    EKFAC: {
        "ours": "1 backward (expand factors, eigenbases, correction from the same columns)",
        "curvlinops": "2 MC backwards (factors, correction) + plain backward",
        "asdl": "1 + 1 backward (basis, correction from one batch; fails if N·S < c_in k²)",
        "nngeometry": "2 MC backwards + plain; weight and bias in one basis (differs)",
    },
}


def matrix_lines() -> list[str]:
    """Return the support matrix as markdown table lines."""
    head = ["quantity", *(LIBRARY_LABELS[b] for b in LIBRARIES)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for quantity in (*QUANTITIES, EKFAC):
        row = MATRIX[quantity]
        lines.append(f"| {quantity} | " + " | ".join(row.get(b, "—") for b in LIBRARIES) + " |")
    return lines


def _cell(row: pd.Series | None) -> str:
    if row is None:
        return "—"
    if row["status"] != "ok":
        return str(row["status"])
    mark = " (differs)" if str(row.get("note", "")).startswith("differs") else ""
    return f"{row['ratio_to_grad']:.2f}{mark}"


PEER_TABLE = ("ours", "backpack", "backpack_savemem", "curvlinops", "asdl", "nngeometry")


def peer_tables(df: pd.DataFrame) -> list[str]:
    """Ratio tables (ours, BackPACK, peers) per group, and where ours is ahead of each peer."""
    lines: list[str] = []
    for (problem, n, mode), group in df.groupby(["problem", "batch_size", "mode"], sort=False):
        if not group["backend"].isin(PEER_TABLE[3:]).any():
            continue
        index = {(r["backend"], r["quantity"]): r for _, r in group.iterrows()}
        backends = [b for b in PEER_TABLE if b in set(group["backend"])]
        quantities = [q for q in (*QUANTITIES, EKFAC) if any((b, q) in index for b in backends)]
        lines += [f"### {problem}, N = {n}, {mode}", ""]
        lines += ["| quantity | " + " | ".join(LIBRARY_LABELS.get(b, b) for b in backends) + " |"]
        lines += ["|" + "---|" * (len(backends) + 1)]
        ahead = []
        for q in quantities:
            lines.append(
                f"| {q} | " + " | ".join(_cell(index.get((b, q))) for b in backends) + " |"
            )
            ours = index.get(("ours", q))
            for peer in PEER_TABLE[3:]:
                row = index.get((peer, q))
                same = row is not None and not str(row.get("note", "")).startswith("differs")
                if same and ours is not None and ours["status"] == row["status"] == "ok":
                    verb = "ahead of" if ours["ratio_to_grad"] <= row["ratio_to_grad"] else "behind"
                    ahead.append(
                        f"{q}: ours {verb} {peer} "
                        f"({ours['ratio_to_grad']:.2f} vs {row['ratio_to_grad']:.2f})"
                    )
        lines += ["", "Same quantity, ours vs peer: " + ("; ".join(ahead) or "none") + ".", ""]
    return lines


def render(df: pd.DataFrame | None = None) -> str:
    """Return the support matrix (and, given overhead rows, the peers' ratio tables) as markdown."""
    lines = [
        "## Support matrix: quantity x library",
        "",
        "How each library computes each quantity for one batch (a step also fills `.grad`; "
        "'+ plain backward' = the library never fills it). 'differs' = not the same quantity as "
        "ours (labelled in the rows' `note`, kept out of ahead-of statements): the peers' conv "
        "Kronecker factors are KFC expand, ASDL's conv diagonal on small output maps is "
        "x²·g². Class loops (C backwards) are bounded: a step estimated above "
        f"{CLASS_LOOP_BOUND_S:.0f} s (C x its gradient step) is a `bounded` row.",
        "",
        *matrix_lines(),
        "",
    ]
    tables = peer_tables(df) if df is not None and len(df) else []
    if tables:
        lines += ["## Ours vs. the peer libraries", "", *tables]
    return "\n".join(lines).rstrip("\n")
