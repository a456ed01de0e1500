"""The figures' shared style: ICLR sizes (tueplots), PDF + PNG that rebuild byte-stably.

Both wings' figures (``bench.overhead.figures``, ``bench.gridsearch.figures``) use it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def style() -> None:
    """ICLR sizes and fonts without LaTeX; quiet font fallbacks."""
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
    try:
        from tueplots import bundles

        plt.rcParams.update(bundles.iclr2024(usetex=False))
    except ImportError:
        plt.rcParams.update({"font.size": 9, "figure.constrained_layout.use": True})
    plt.rcParams["font.serif"] = [*plt.rcParams["font.serif"], "DejaVu Serif"]
    plt.rcParams["svg.hashsalt"] = "curvbench"


def figsize(nrows: int, ncols: int) -> tuple[float, float]:
    """ICLR text width, height by the grid."""
    try:
        from tueplots import figsizes

        return figsizes.iclr2024(nrows=nrows, ncols=ncols, height_to_width_ratio=0.8)[
            "figure.figsize"
        ]
    except ImportError:
        return (5.5, 1.9 * nrows)


def save(fig: plt.Figure, plots_dir: str | Path, stem: str) -> list[Path]:
    """Save ``fig`` as ``<stem>.pdf`` and ``<stem>.png`` (no timestamps) and close it."""
    out = Path(plots_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.pdf", out / f"{stem}.png"]
    fig.savefig(paths[0], metadata={"CreationDate": None, "ModDate": None})
    fig.savefig(paths[1], dpi=200, metadata={"Software": None})
    plt.close(fig)
    return paths
