"""Write ``results/overhead/REPORT.md``: our ratios beside BackPACK's, the peers' and the paper's.

    curvbench figures overhead      # also writes the report
    python -m bench.overhead.cli_report --csv results/overhead/local/cpu-2core.csv --out REPORT.md

With CSVs of several (device, machine) pairs the report has one section per pair, each with its
own environment line (from that CSV's sidecar).

The paper's ratios (median time / median gradient time, GPU, data loading inside the timed call)
are the ones recomputed from its raw benchmark pickles (``shared/spec/overhead.md`` §4.2); the
BackPACK ratios measured earlier on this project's CPU machine (§5) are shown as a cross-check of
our BackPACK column.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from bench import results_io
from bench.overhead import support_matrix
from bench.overhead.figures import (
    BACKEND_LABELS,
    PROBLEM_LABELS,
    QUANTITY_LABELS,
    load,
    sections,
)
from bench.spec import C_COLUMN_QUANTITIES, GRAD, QUANTITIES

#: Paper ratios to the gradient, BackPACK 1.0 on an unnamed GPU (spec overhead.md §4.2).
PAPER_RATIOS: dict[str, dict[int, dict[str, float]]] = {
    "3c3d": {
        32: {"SumGradSquared": 0.96, "Variance": 1.14, "BatchL2Grad": 1.01, "BatchGrad": 1.01,
             "DiagGGNMC": 1.29, "KFAC": 1.12, "KFLR": 1.45, "DiagGGNExact": 1.49,
             "DiagHessian": 1.62, "loop/BatchGrad": 5.8},
        48: {"SumGradSquared": 1.01, "Variance": 1.12, "BatchL2Grad": 1.02, "BatchGrad": 1.01,
             "DiagGGNMC": 1.24, "KFAC": 1.09, "KFLR": 1.48, "DiagGGNExact": 1.61,
             "DiagHessian": 1.74, "loop/BatchGrad": 6.9},
        64: {"SumGradSquared": 1.00, "Variance": 1.28, "BatchL2Grad": 1.09, "BatchGrad": 1.17,
             "DiagGGNMC": 1.22, "KFAC": 1.07, "KFLR": 1.41, "DiagGGNExact": 1.81,
             "DiagHessian": 1.73, "loop/BatchGrad": 6.6},
        128: {"SumGradSquared": 1.17, "Variance": 1.33, "BatchL2Grad": 1.17, "BatchGrad": 1.25,
              "DiagGGNMC": 1.24, "KFAC": 1.23, "KFLR": 1.74, "DiagGGNExact": 1.93,
              "DiagHessian": 1.95, "loop/BatchGrad": 8.4},
    },
    "allcnnc": {
        16: {"SumGradSquared": 1.47, "BatchL2Grad": 1.93, "DiagGGNMC": 1.59, "KFAC": 2.07,
             "BatchGrad": 2.77, "Variance": 3.10, "KFLR": 23.1, "DiagGGNExact": 35.2,
             "DiagHessian": 35.3},
        32: {"SumGradSquared": 1.36, "BatchL2Grad": 1.76, "DiagGGNMC": 1.59, "KFAC": 2.27,
             "BatchGrad": 3.25, "Variance": 3.60, "KFLR": 30.2},
        48: {"SumGradSquared": 1.38, "BatchL2Grad": 1.68, "DiagGGNMC": 1.62, "KFAC": 2.31,
             "BatchGrad": 3.49, "Variance": 3.87},
        64: {"SumGradSquared": 1.39, "BatchL2Grad": 1.63, "DiagGGNMC": 1.61, "KFAC": 2.32,
             "BatchGrad": 3.59, "Variance": 3.96},
    },
}  # fmt: skip

#: BackPACK 1.7.1 ratios measured on this project's 2-core CPU (spec overhead.md §5).
SPEC_CPU_BACKPACK: dict[str, dict[int, dict[str, float]]] = {
    "3c3d": {
        128: {"BatchGrad": 5.01, "BatchL2Grad": 1.59, "SumGradSquared": 4.04, "Variance": 7.34,
              "DiagGGNMC": 2.29, "DiagGGNExact": 11.46, "KFAC": 3.08, "KFLR": 6.84,
              "DiagHessian": 10.90, "backpack_savemem/BatchGrad": 3.17,
              "backpack_savemem/SumGradSquared": 2.16, "backpack_savemem/Variance": 3.13},
    },
    "allcnnc": {
        128: {"BatchGrad": 9.18, "BatchL2Grad": 1.93, "SumGradSquared": 8.32, "Variance": 13.27,
              "DiagGGNMC": 2.32, "KFAC": 4.93, "backpack_savemem/BatchGrad": 2.27,
              "backpack_savemem/SumGradSquared": 2.43, "backpack_savemem/Variance": 3.58},
        16: {"BatchGrad": 6.36, "DiagGGNMC": 2.36, "KFAC": 5.21, "DiagGGNExact": 113.80,
             "KFLR": 56.07, "DiagHessian": 112.67},
    },
}  # fmt: skip

TABLE_BACKENDS = ("ours", "backpack", "backpack_savemem", "torch.func", "opacus", "loop")


def _arch(problem: str) -> str:
    return "allcnnc" if problem.endswith("allcnnc") else "3c3d" if problem.endswith("3c3d") else ""


def reference_ratio(
    table: dict[str, dict[int, dict[str, float]]], problem: str, n: int, key: str
) -> tuple[float, int] | None:
    """Look up the reference ratio for ``key`` at the batch size nearest ``n``: (value, batch)."""
    by_n = {m: v[key] for m, v in table.get(_arch(problem), {}).items() if key in v}
    if not by_n:
        return None
    nearest = min(by_n, key=lambda m: (abs(math.log(m / n)), m))
    return by_n[nearest], nearest


def _fmt_ratio(row: pd.Series | None) -> str:
    if row is None:
        return ""
    if row["status"] != "ok":
        return str(row["status"])
    spread = row["iqr_s"] / row["median_s"] * row["ratio_to_grad"] if row["median_s"] else 0
    return f"{row['ratio_to_grad']:.2f} ±{spread / 2:.2f}"


def _fmt_ref(ref: tuple[float, int] | None, n: int) -> str:
    if ref is None:
        return "–"
    value, m = ref
    return f"{value:.2f}" + ("" if m == n else f" (N={m})")


def _fmt_mem(row: pd.Series | None) -> str:
    if row is None or row["status"] != "ok" or pd.isna(row["peak_mem_mb"]):
        return ""
    return f"{row['peak_mem_mb']:.0f}"


def group_table(group: pd.DataFrame) -> list[str]:
    """Render the markdown table of one (problem, batch size, mode) group."""
    problem, n = group["problem"].iloc[0], int(group["batch_size"].iloc[0])
    index = {(r["backend"], r["quantity"]): r for _, r in group.iterrows()}
    backends = [b for b in TABLE_BACKENDS if b in set(group["backend"])]
    head = ["quantity", *(BACKEND_LABELS[b] for b in backends)]
    head += ["paper (GPU)", "spec §5 BackPACK (CPU)", "peak MB ours", "peak MB BackPACK"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    grad = index.get(("pytorch", GRAD))
    grad_cell = f"1.00 ({grad['median_s'] * 1e3:.1f} ms)" if grad is not None else ""
    if grad is not None and grad["status"] != "ok":
        grad_cell = grad["status"]
    lines.append(
        "| Grad (ref.) | "
        + " | ".join(grad_cell if b == backends[0] else "" for b in backends)
        + f" | 1.00 | 1.00 | {_fmt_mem(grad)} | {_fmt_mem(index.get(('backpack', GRAD)))} |"
    )
    for q in QUANTITIES:
        if not any((b, q) in index for b in backends):
            continue
        cells = [_fmt_ratio(index.get((b, q))) for b in backends]
        paper_key = "loop/BatchGrad" if q == "BatchGrad" and "loop" in backends else q
        paper = _fmt_ref(reference_ratio(PAPER_RATIOS, problem, n, q), n)
        if paper_key != q:
            loop_ref = reference_ratio(PAPER_RATIOS, problem, n, paper_key)
            if loop_ref is not None:
                paper += f"; loop {_fmt_ref(loop_ref, n)}"
        spec = _fmt_ref(reference_ratio(SPEC_CPU_BACKPACK, problem, n, q), n)
        bp_row = index.get(("backpack", q), index.get(("backpack_savemem", q)))
        mem = [_fmt_mem(index.get(("ours", q))), _fmt_mem(bp_row)]
        label = QUANTITY_LABELS[q] + (" ¹" if q in C_COLUMN_QUANTITIES else "")
        lines.append(f"| {label} | " + " | ".join([*cells, paper, spec, *mem]) + " |")
    return lines


def comparisons(df: pd.DataFrame) -> list[str]:
    """State where ours beats BackPACK, and by how much."""
    ok = df[df["status"] == "ok"]
    lines = []
    for (problem, n, mode), group in ok.groupby(["problem", "batch_size", "mode"], sort=False):
        ours = group[group["backend"] == "ours"].set_index("quantity")["ratio_to_grad"]
        bp = group[group["backend"].isin(["backpack", "backpack_savemem"])]
        best = bp.groupby("quantity")["ratio_to_grad"].min()
        common = [q for q in QUANTITIES if q in ours.index and q in best.index]
        if not common:
            continue
        speedups = {q: best[q] / ours[q] for q in common}
        faster = [q for q in common if speedups[q] > 1]
        summary = ", ".join(f"{q} {speedups[q]:.2f}x" for q in common)
        lines.append(
            f"- {PROBLEM_LABELS.get(problem, problem)}, N={n}, {mode}: ours is faster than the "
            f"better BackPACK path on {len(faster)} of {len(common)} quantities "
            f"(BackPACK ratio / ours ratio: {summary})."
        )
    return lines


EXPLANATIONS = """\
- **Device and timing protocol.** The paper timed on a GPU, and each timed call built a fresh
  DataLoader iterator and augmented the batch on the CPU (spec §4.4). That fixed cost sits in the
  gradient reference as well and compresses every ratio towards 1. `clean` mode excludes data
  loading, so its ratios are larger; `paper` mode reproduces the per-step fetch + augment, but
  with this suite's on-device augmentation (`sample_train_batch()`), not a CPU DataLoader, so on
  a GPU its loading share is smaller than the paper's.
- **CPU vs GPU.** On a 2-core CPU the extra work of a quantity (unfolded inputs, per-sample
  contractions) is not hidden by idle parallel hardware as on a GPU, so first-order ratios on
  CPU are several times the paper's (compare the spec §5 column: BackPACK's own ratios on this
  machine).
- **BackPACK's conv path.** BackPACK's default conv weight-Jacobian builds an unfolded
  `[N, C_out, C_in k k, L]`-sized intermediate; `weight_jac_t_save_memory(True)` uses a grouped
  convolution instead and is 2-4x faster on CPU for BatchGrad / SumGradSquared / Variance
  (spec §5 supplement). "Better BackPACK path" above takes the faster of the two. The CPU
  defaults time only the save-memory path for those three quantities on All-CNN-C (the default
  path takes 10-22 s per step there); `--backends ...` times both, and "peak MB BackPACK" then
  falls back to the save-memory path's row.
- **C-column quantities (¹).** DiagGGNExact, KFLR and DiagHessian propagate C columns (C = 10 or
  100 classes); on CIFAR-100 they cost tens of gradients and on CPU run at a reduced batch by
  default (the `note` column says which). The paper's "two orders of magnitude" is the
  propagated width; its own data show 23-35x at N = 16 (spec §4.3).
- **Variance** is absent from the paper's Fig. 6; its data put it as the most expensive
  first-order quantity on All-CNN-C (3.1-4.0x), which our BackPACK column reproduces.
- **Noise.** Ratios are medians over interleaved rounds in one process; ± is half the IQR
  scaled to the ratio. Expect about ±10 % between runs on a quiet machine, more on a shared one.
"""


def render(df: pd.DataFrame, meta: dict | None, csv_name: str) -> str:
    """Render the whole report as markdown."""
    env = (meta or {}).get("environment", {})
    config = (meta or {}).get("config", {})
    lines = [
        TITLE,
        "",
        f"Source: `{csv_name}` (rebuild with `curvbench figures overhead`; "
        "measure with `curvbench overhead`).",
        "",
        f"Environment: {env.get('device_name', '?')} ({env.get('device', '?')}), "
        f"torch {env.get('torch', '?')}, {env.get('num_threads', '?')} threads, "
        f"commit `{str(env.get('commit', '?'))[:10]}`"
        + (" (dirty)" if env.get("dirty") else "")
        + f", {env.get('time_utc', '?')}. "
        + (
            f"Defaults used: {'; '.join(config['defaults_used'])}."
            if config.get("defaults_used")
            else ""
        ),
        "",
        "Cells: median step time / median gradient step time of the same interleaved rounds "
        "(± half the IQR, as a ratio); `oom` / `unsupported` / `unavailable` / `error` rows are "
        "listed at the end. Paper: BackPACK 1.0 on a GPU (spec §4.2, nearest batch size in "
        "brackets). Spec §5: BackPACK 1.7.1 measured earlier on this CPU machine.",
        "",
    ]
    for (problem, n, mode), group in df.groupby(["problem", "batch_size", "mode"], sort=False):
        notes = sorted({x for x in group["note"] if x})
        lines += [f"## {PROBLEM_LABELS.get(problem, problem)}, N = {n}, {mode} mode", ""]
        if notes:
            lines += [f"Note: {'; '.join(notes)}.", ""]
        lines += group_table(group) + [""]
    lines += ["## Ours vs. BackPACK", "", *(comparisons(df) or ["- no ours/BackPACK pairs"]), ""]
    lines += [support_matrix.render(df), ""]
    lines += ["## Differences explained", "", EXPLANATIONS]
    failed = df[df["status"] != "ok"]
    if len(failed):
        lines += [
            "## Rows that did not run",
            "",
            "| problem | N | backend | quantity | status | message |",
            "|---|---|---|---|---|---|",
        ]
        for _, r in failed.iterrows():
            message = str(r.get("message", "")).replace("|", "/").replace("\n", " ")[:160]
            lines.append(
                f"| {r['problem']} | {r['batch_size']} | {r['backend']} | {r['quantity']} | "
                f"{r['status']} | {message} |"
            )
        lines.append("")
    return "\n".join(lines)


TITLE = "# Overhead benchmark: one training step with a quantity vs. the plain gradient"


def render_sections(parts: Sequence[tuple[str, pd.DataFrame, dict | None, str]]) -> str:
    """Render the report of several (label, rows, sidecar, csv name) sections, one per machine."""
    if len(parts) == 1:
        _, df, meta, name = parts[0]
        return render(df, meta, name)
    lines = [TITLE, "", f"One section per (machine, device): {', '.join(p[0] for p in parts)}.", ""]
    for label, df, meta, name in parts:
        body = render(df, meta, name).split("\n")[2:]  # without the title
        lines += [f"## {label}", ""]
        lines += ["#" + line if line.startswith("## ") else line for line in body]
    return "\n".join(lines)


def write_report(csv_paths: Sequence[str | Path], out: str | Path, figure_map: str = "") -> Path:
    """Render the report of ``csv_paths`` (each CSV with its sidecar) and write it atomically.

    ``figure_map`` (markdown, :mod:`bench.overhead.figure_map`) goes right after the title.
    """
    parts = []
    for path in map(Path, csv_paths):
        meta = results_io.read_json(path.with_suffix(".json"))
        split = sections(load([path]))
        for _, df in split:
            parts.append((f"{path.stem} ({df['device'].iloc[0]})", df, meta, path.name))
    if not parts:
        raise FileNotFoundError("no overhead CSV given")
    title, body = render_sections(parts).split("\n", 1)
    text = f"{title}\n\n{figure_map}{body}" if figure_map else f"{title}\n{body}"
    return results_io.atomic_write_text(out, text)
