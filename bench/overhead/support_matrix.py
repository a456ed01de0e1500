"""REPORT.md's support matrix (quantity x library: how each computes it) and the peers' table.

:func:`render` returns markdown: the static matrix (read from each library's installed source:
curvlinops 3.0.1, asdfghjkl 0.1a5, nngeometry 0.4, BackPACK 1.7.1, Opacus 1.6), and, given the
overhead rows, one ratio table per group with ours (both usage patterns, and with the peers'
KFC-expand conv factors), BackPACK and the three peers, where a row labelled ``differs`` is marked
and compared only with the ours row that computes the same thing (``peers.same_quantity``).
"""

from __future__ import annotations

import pandas as pd

from bench.overhead.peers import CLASS_LOOP_BOUND_S, EKFAC, PEER_BACKEND_NAMES, same_quantity
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
    "ours_perstep": "ours (collect per step)",
    "ours_expand": "ours (expand conv factors)",
    "ours_perstep_expand": "ours (expand, per step)",
    "backpack_savemem": "BackPACK (save-mem conv)",
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
        "ours": ONE + " (conv: BackPACK's; `ours_expand`: expand, as the peers)",
        "backpack": ONE,
        "curvlinops": "1 MC backward + plain backward (conv: expand, differs)",
        "asdl": "1 + 1 backward (conv: expand, differs)",
        "nngeometry": "1 MC backward + plain backward (conv: expand, differs)",
    },
    "KFLR": {
        "ours": "1 backward, C columns (conv: BackPACK's; `ours_expand`: expand, as the peers)",
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


#: ours' two usage patterns (one long-lived ``collect`` context; one per step), each also with
#: the peers' KFC-expand conv factors (KFAC, KFLR)
OURS_VARIANTS = ("ours", "ours_perstep", "ours_expand", "ours_perstep_expand")
PEER_TABLE = (*OURS_VARIANTS, "backpack", "backpack_savemem", *PEER_BACKEND_NAMES)


def comparisons(index: dict[tuple[str, str], pd.Series], quantity: str) -> list[str]:
    """State, for ``quantity``, each ours variant against each peer that computes the same thing.

    A peer's row is compared with an ours row only when both are ``ok`` and
    :func:`~bench.overhead.peers.same_quantity` holds (a ``differs`` row only with the ours
    variant whose factors it has).
    """
    out = []
    for variant in OURS_VARIANTS:
        ours = index.get((variant, quantity))
        if ours is None or ours["status"] != "ok":
            continue
        for peer in PEER_BACKEND_NAMES:
            row = index.get((peer, quantity))
            if row is None or row["status"] != "ok":
                continue
            if not same_quantity(variant, str(row.get("note", ""))):
                continue
            verb = "ahead of" if ours["ratio_to_grad"] <= row["ratio_to_grad"] else "behind"
            out.append(
                f"{quantity}: {variant} {verb} {peer} "
                f"({ours['ratio_to_grad']:.2f} vs {row['ratio_to_grad']:.2f})"
            )
    return out


def peer_tables(df: pd.DataFrame) -> list[str]:
    """Ratio tables (ours, BackPACK, peers) per group, and where ours is ahead of each peer."""
    lines: list[str] = []
    for (problem, n, mode), group in df.groupby(["problem", "batch_size", "mode"], sort=False):
        if not group["backend"].isin(PEER_BACKEND_NAMES).any():
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
            ahead += comparisons(index, q)
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
        "Kronecker factors are KFC expand (compared with ours' KFAC/KFLR with the same factors, "
        "backends `ours_expand` and `ours_perstep_expand`), ASDL's conv diagonal on small output "
        "maps is x²·g². Ours is compared in both usage patterns: one long-lived `collect` "
        "context (`ours`) and one per step (`ours_perstep`). Class loops (C backwards) are "
        "bounded: a step estimated above "
        f"{CLASS_LOOP_BOUND_S:.0f} s (C x its gradient step) is a `bounded` row.",
        "",
        *matrix_lines(),
        "",
    ]
    tables = peer_tables(df) if df is not None and len(df) else []
    if tables:
        lines += ["## Ours vs. the peer libraries", "", *tables]
    return "\n".join(lines).rstrip("\n")
