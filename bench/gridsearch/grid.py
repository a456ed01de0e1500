"""The grid search's runs and their ids: the paper's grids, one :class:`RunConfig` per run.

A *run* is one training run: ``(problem, method, lr, damping, seed, epochs, batch size, source,
options)`` (:class:`RunConfig`). Its ``run_id`` is a hash of that canonical config (the device is
not part of it), so a rerun of the sweep finds what it already has and a changed grid reuses
every run that matches. The runs' files live in a :class:`bench.gridsearch.store.RunStore`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

#: The paper's curvature optimizers (BackPACK quantity names).
CURVATURE_METHODS = ("DiagGGNExact", "DiagGGNMC", "KFAC", "KFLR", "KFRA")
#: First-order baselines: SGD with momentum 0.9 and Adam.
BASELINE_METHODS = ("Momentum", "Adam")
#: Curvature optimizers beyond the paper (``extensions.optimizers.EXTENDED``, ours only): KFAC and
#: KFLR with the KFC "expand" conv factors, EKFAC with MC and with exact loss-Hessian columns. The
#: overhead benchmark times the same curvatures (``ours_expand`` KFAC/KFLR, ``EKFAC``). They run
#: on the same alpha x lambda grid but only when asked (``--methods``): never in the defaults.
EXTENDED_METHODS = ("KFAC-expand", "KFLR-expand", "EKFAC", "EKFAC-exact")
#: Every curvature method a run accepts (the paper's and the extended ones).
ALL_CURVATURE_METHODS = CURVATURE_METHODS + EXTENDED_METHODS
#: The paper's methods (the default of a problem :data:`PAPER_METHODS` does not list).
PAPER_DEFAULT_METHODS = CURVATURE_METHODS + BASELINE_METHODS
#: Every method ``--methods`` accepts: the paper's, then the extended ones.
METHODS = PAPER_DEFAULT_METHODS + EXTENDED_METHODS

#: The paper's grid (App. C.2): lr in logspace(-4, 0, 5), damping in logspace(-4, 1, 6).
PAPER_LRS = tuple(10.0**e for e in range(-4, 1))
PAPER_DAMPINGS = tuple(10.0**e for e in range(-4, 2))
#: DeepOBS's baseline protocol: 36 learning rates 10^-5 ... 10^2 in steps of 10^0.2.
BASELINE_LRS = tuple(10.0 ** (-5 + 0.2 * i) for i in range(36))
#: The seeds of the best setting's reruns (anon release ``best_run.py``).
BEST_SEEDS = tuple(range(42, 52))
GRID_SEED = 42

#: Curvatures the paper ran per problem (anon release ``_exclude``); ours default to the same.
PAPER_METHODS = {
    "cifar10_3c3d": ("DiagGGNExact", "DiagGGNMC", "KFAC", "KFLR", "Momentum", "Adam"),
    "cifar100_allcnnc": ("DiagGGNMC", "KFAC", "Momentum", "Adam"),
    "cifar100_3c3d": ("DiagGGNMC", "KFAC", "Momentum", "Adam"),
    "cifar10_allcnnc": ("DiagGGNExact", "DiagGGNMC", "KFAC", "KFLR", "Momentum", "Adam"),
    "mnist_logreg": (*CURVATURE_METHODS, *BASELINE_METHODS),
    "fmnist_2c2d": ("DiagGGNExact", "DiagGGNMC", "KFAC", "KFLR", "Momentum", "Adam"),
}
#: The four problems the paper trained on (spec gridsearch §5.2), in its order.
PAPER_PROBLEMS = ("mnist_logreg", "fmnist_2c2d", "cifar10_3c3d", "cifar100_allcnnc")

#: Data sources (``problems.data.SOURCES``): ``real`` (the problem's own data set), ``synthetic``,
#: and the family names ``cifar`` / ``mnist`` (the real data, refused for the other family).
SOURCES = ("real", "synthetic", "cifar", "mnist")

DONE = ("finished", "diverged")
STATUSES = ("pending", "running", "interrupted", "finished", "diverged", "failed")


def _canonical_float(x: float | None) -> str | None:
    """Ten significant digits, so ``1e-3`` and ``np.logspace(-4, 0, 5)[1]`` hash the same."""
    return None if x is None else format(float(x), ".10g")


def data_family(problem: str) -> str:
    """Return ``"cifar"`` for the CIFAR problems, else ``"mnist"`` ((Fashion-)MNIST)."""
    return "cifar" if problem.startswith("cifar") else "mnist"


def canonical_source(problem: str, source: str) -> str:
    """Return the source as the run's identity spells it.

    The real data has three names (``real``, and the family's ``cifar`` or ``mnist``); they load
    the same images, so they hash the same. CIFAR's real data is spelt ``"cifar"`` (the only
    name before MNIST existed, so earlier stores keep their run ids), (Fashion-)MNIST's
    ``"real"``.

    Raises:
        ValueError: an unknown source, or a family source for the other family.

    """
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; valid: {', '.join(SOURCES)}")
    if source == "synthetic":
        return source
    family = data_family(problem)
    if source in ("cifar", "mnist") and source != family:
        raise ValueError(f"source {source!r} does not fit {problem} (a {family} problem)")
    return "cifar" if family == "cifar" else "real"


def check_method(method: str) -> str:
    """Return ``method`` if known, else raise a ValueError listing the valid names."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")
    return method


@dataclass(frozen=True)
class RunConfig:
    """One training run. ``damping`` is ``None`` for the baselines.

    Attributes:
        problem: a problem name (``problems.get``).
        method: a curvature (:data:`ALL_CURVATURE_METHODS`) or a baseline
            (:data:`BASELINE_METHODS`).
        lr: the learning rate alpha.
        damping: lambda (curvature methods only).
        seed: seeds the model init, the data order and augmentation, dropout and MC samples.
        epochs: training epochs (evaluations: ``epochs + 1``).
        batch_size: the training batch size.
        source: a data source (:data:`SOURCES`): ``"real"``, ``"synthetic"``, or the real data
            by its family's name (``"cifar"``, ``"mnist"``); see :func:`canonical_source`.
        options: further settings that change results, e.g. ``average`` (``"mean"``: running
            mean since the start, the paper's code; ``"fresh"``: this batch's curvature, the paper's
            text), ``inverse_every`` (k), ``max_steps_per_epoch`` (smoke-only truncation),
            ``data`` (keyword options of the data source), ``backend`` (curvature backend).
        device: where to train; not part of the run's identity.

    """

    problem: str
    method: str
    lr: float
    damping: float | None = None
    seed: int = GRID_SEED
    epochs: int = 1
    batch_size: int = 128
    source: str = "real"
    options: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"

    def __post_init__(self):
        check_method(self.method)
        if self.method in ALL_CURVATURE_METHODS and self.damping is None:
            raise ValueError(f"{self.method} needs a damping value")
        if self.method in BASELINE_METHODS and self.damping is not None:
            raise ValueError(f"baseline {self.method} takes no damping (got {self.damping})")
        canonical_source(self.problem, self.source)

    @property
    def is_curvature(self) -> bool:
        """Whether the method is a curvature optimizer (the paper's or an extended one)."""
        return self.method in ALL_CURVATURE_METHODS

    def identity(self) -> dict[str, Any]:
        """Return the canonical fields that define the run (everything but the device)."""
        return {
            "problem": self.problem,
            "method": self.method,
            "lr": _canonical_float(self.lr),
            "damping": _canonical_float(self.damping),
            "seed": int(self.seed),
            "epochs": int(self.epochs),
            "batch_size": int(self.batch_size),
            "source": canonical_source(self.problem, self.source),
            "options": json.loads(json.dumps(self.options, sort_keys=True)),
        }

    @property
    def run_id(self) -> str:
        """16 hex digits of the SHA-1 of the canonical config."""
        text = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha1(text.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict (what executors pass to ``bench.gridsearch.jobs.run_job``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Build a config from :meth:`to_dict`."""
        return cls(**data)

    def with_seed(self, seed: int) -> RunConfig:
        """Return the same run with another seed."""
        return replace(self, seed=seed)


# --------------------------------------------------------------------------------------------
# grids
# --------------------------------------------------------------------------------------------


def grid(
    problems: Sequence[str],
    methods: Sequence[str] | None = None,
    *,
    lrs: Sequence[float] = PAPER_LRS,
    dampings: Sequence[float] = PAPER_DAMPINGS,
    baseline_lrs: Sequence[float] = BASELINE_LRS,
    seed: int = GRID_SEED,
    **common: Any,
) -> list[RunConfig]:
    """List the grid runs: ``lrs x dampings`` per curvature method, ``baseline_lrs`` per baseline.

    Args:
        problems: problem names.
        methods: methods to run; ``None`` = the paper's methods per problem (:data:`PAPER_METHODS`;
            never the :data:`EXTENDED_METHODS`).
        lrs: curvature learning rates.
        dampings: curvature dampings.
        baseline_lrs: baseline learning rates.
        seed: the grid's seed.
        **common: further :class:`RunConfig` fields (epochs, batch_size, source, options, device).

    Returns:
        The runs in a stable order.

    """
    runs = []
    for problem in problems:
        chosen = methods
        if chosen is None:
            chosen = PAPER_METHODS.get(problem, PAPER_DEFAULT_METHODS)
        for method in chosen:
            check_method(method)
            if method in ALL_CURVATURE_METHODS:
                for lr in lrs:
                    for damping in dampings:
                        runs.append(RunConfig(problem, method, lr, damping, seed=seed, **common))
            else:
                for lr in baseline_lrs:
                    runs.append(RunConfig(problem, method, lr, None, seed=seed, **common))
    return runs
