"""Presets of the overhead benchmark for the paper's appendix figures (Fig. 8 and Fig. 9).

    curvbench overhead --preset fig9      # 3C3D-sigmoid, DiagGGN vs DiagHessian, N = 4..32
    curvbench overhead --preset fig8      # All-CNN-C / CIFAR-100, nine quantities, N = 16 (CUDA)

A preset fixes the problems, quantities, backends and batch sizes; on CPU it may shrink the batch
sizes (Fig. 8: N = 16 -> 4; Fig. 9: N = 4..32 -> 4, 8) and then labels every row in the CSV's
``note`` column. Its results go to ``<out-dir>/<preset>-<machine>.csv``; the committed ones live in
``results/overhead/reference/presets/`` (see :mod:`bench.overhead.paper_figures`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from bench.overhead.plan import Measurement, PlanOptions, default_plan
from bench.spec import QUANTITIES


@dataclass(frozen=True)
class Preset:
    """One paper figure's measurements."""

    name: str
    figure: str
    problems: tuple[str, ...]
    quantities: tuple[str, ...]
    backends: tuple[str, ...]
    #: the paper's batch sizes (also the CUDA default)
    batch_sizes: tuple[int, ...]
    #: the CPU default (``None``: the paper's)
    cpu_batch_sizes: tuple[int, ...] | None = None
    cpu_rounds: int = 2
    description: str = ""

    def sizes_for(self, device: str) -> tuple[int, ...]:
        """Return the batch sizes of ``device`` (CUDA: the paper's; CPU: maybe fewer)."""
        if torch.device(device).type == "cuda" or self.cpu_batch_sizes is None:
            return self.batch_sizes
        return self.cpu_batch_sizes

    def note_for(self, batch_sizes: tuple[int, ...]) -> str:
        """Return the ``note`` of every row: the preset, and the batch sizes if not the paper's."""
        note = f"{self.name} preset ({self.figure})"
        if tuple(batch_sizes) != self.batch_sizes:
            paper = ", ".join(map(str, self.batch_sizes))
            note += f"; N = {', '.join(map(str, batch_sizes))} instead of the paper's N = {paper}"
        return note


#: the nine quantities the paper timed (BackPACK 1.0 had no KFRA benchmark)
PAPER_QUANTITIES = tuple(q for q in QUANTITIES if q != "KFRA")

PRESETS = {
    "fig8": Preset(
        name="fig8",
        figure="Fig. 8",
        problems=("cifar100_allcnnc",),
        quantities=PAPER_QUANTITIES,
        backends=("ours", "backpack"),
        batch_sizes=(16,),
        cpu_batch_sizes=(4,),
        description="All-CNN-C / CIFAR-100, all nine quantities incl. the C-column ones",
    ),
    "fig9": Preset(
        name="fig9",
        figure="Fig. 9",
        problems=("cifar10_3c3dsig",),
        quantities=("DiagGGNExact", "DiagHessian"),
        backends=("ours", "backpack"),
        batch_sizes=(4, 8, 16, 32),
        #: DiagHessian's step grows linearly in N: 18-41 s at N = 4 on the loaded 2-core machine
        cpu_batch_sizes=(4, 8),
        description="3C3D with one Sigmoid after dense2 (not in DeepOBS), DiagGGN vs DiagHessian",
    ),
}


def get(name: str) -> Preset:
    """Return the preset ``name``; a ``ValueError`` lists the valid ones."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return PRESETS[name]


def plan_options(
    name: str,
    device: str = "cpu",
    batch_sizes: tuple[int, ...] | None = None,
    backends: tuple[str, ...] | None = None,
) -> PlanOptions:
    """Return the plan options of preset ``name`` on ``device`` (explicit values override)."""
    preset = get(name)
    return PlanOptions(
        problems=preset.problems,
        quantities=preset.quantities,
        backends=tuple(backends or preset.backends),
        batch_sizes=tuple(batch_sizes or preset.sizes_for(device)),
        device=device,
    )


def label(plan: list[Measurement], name: str) -> list[Measurement]:
    """Put the preset's note on every measurement (keeping a note the plan already had)."""
    preset = get(name)
    note = preset.note_for(tuple(sorted({m.batch_size for m in plan})))
    return [dataclasses.replace(m, note=f"{note}; {m.note}" if m.note else note) for m in plan]


def preset_plan(
    name: str,
    device: str = "cpu",
    batch_sizes: tuple[int, ...] | None = None,
    backends: tuple[str, ...] | None = None,
) -> list[Measurement]:
    """Return the labelled measurements of preset ``name`` on ``device``."""
    return label(default_plan(plan_options(name, device, batch_sizes, backends)), name)


def apply(args, device: str, explicit_backends: bool = False) -> PlanOptions:
    """Fill the ``curvbench overhead`` arguments ``args`` from ``args.preset``; the plan options.

    ``--batch-sizes`` and ``--backends`` override the preset's; ``--problems`` and
    ``--quantities`` other than their defaults conflict with it (``ValueError``). On CPU the
    rounds default to the preset's ``cpu_rounds``.
    """
    from bench.overhead.plan import DEFAULT_PROBLEMS

    preset = get(args.preset)
    if list(args.problems) != list(DEFAULT_PROBLEMS) or list(args.quantities) != list(QUANTITIES):
        raise ValueError(f"--preset {preset.name} sets the problems and quantities itself")
    backends = args.backends if explicit_backends else None
    options = plan_options(preset.name, device, args.batch_sizes, backends)
    args.problems, args.quantities = list(options.problems), list(options.quantities)
    args.backends = list(options.backends)
    args.batch_sizes = list(options.batch_sizes)  # the log then names no "cpu defaults"
    if args.rounds is None and torch.device(device).type != "cuda":
        args.rounds = preset.cpu_rounds
    return options
