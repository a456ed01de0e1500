"""Import the reference DeepOBS (1.1.2 wheel) PyTorch nets and problems without TF or torchvision.

``import deepobs`` runs ``deepobs/__init__.py``, which imports TensorFlow; ``deepobs.pytorch``
imports its datasets, which import torchvision. Neither is installed (or importable beside the CPU
torch wheel). As problems spec §2.1 describes, we put empty stand-in packages for ``deepobs``,
``deepobs.pytorch`` and ``deepobs.pytorch.testproblems`` into ``sys.modules`` whose ``__path__``
points at the installed folders, so their submodules import without running the ``__init__``
files. The test-problem classes also import ``..datasets.cifar10/cifar100/mnist/fmnist``; those
modules are stubbed with placeholders that raise if called (we never build the data, only the nets
and the regulariser). Afterwards ``sys.modules`` is restored: the loaded modules keep working, and
nothing stubbed leaks into other tests.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

#: our problem name -> (DeepOBS net class name, constructor kwargs, DeepOBS problem module)
DEEPOBS_NETS: dict[str, tuple[str, dict[str, Any], str]] = {
    "cifar10_3c3d": ("net_cifar10_3c3d", {"num_outputs": 10}, "cifar10_3c3d"),
    "cifar100_3c3d": ("net_cifar10_3c3d", {"num_outputs": 100}, "cifar100_3c3d"),
    "cifar100_allcnnc": ("net_cifar100_allcnnc", {}, "cifar100_allcnnc"),
    "mnist_logreg": ("net_mnist_logreg", {"num_outputs": 10}, "mnist_logreg"),
    "fmnist_2c2d": ("net_mnist_2c2d", {"num_outputs": 10}, "fmnist_2c2d"),
}
#: the DeepOBS data set modules the problem modules import (stubbed)
_DATASETS = ("cifar10", "cifar100", "mnist", "fmnist")


class DeepOBSUnavailable(RuntimeError):
    """The reference package cannot be imported here (the message says why)."""


@dataclass
class DeepOBSReference:
    """The loaded reference modules."""

    modules: types.ModuleType  # deepobs.pytorch.testproblems.testproblems_modules
    problem_modules: dict[str, types.ModuleType]  # DeepOBS problem name -> its module

    def net(self, name: str) -> nn.Sequential:
        """A fresh DeepOBS network for our problem ``name`` (consumes RNG like DeepOBS)."""
        cls_name, kwargs, _ = DEEPOBS_NETS[name]
        return getattr(self.modules, cls_name)(**kwargs)

    def problem(self, name: str, batch_size: int = 2) -> Any:
        """DeepOBS's test-problem object for ``name`` with its default weight decay (no data)."""
        _, _, module_name = DEEPOBS_NETS[name]
        return getattr(self.problem_modules[module_name], module_name)(batch_size)


def _stub_package(name: str, path: Path | None) -> types.ModuleType:
    """An empty module; a package searching ``path`` when one is given."""
    module = types.ModuleType(name)
    if path is not None:
        module.__path__ = [str(path)]
    return module


def _data_placeholder(*args: Any, **kwargs: Any) -> None:
    raise RuntimeError("deepobs datasets are stubbed in tests (torchvision is not installed)")


def import_with_stubs(stubs: dict[str, types.ModuleType], names: list[str]) -> list[Any]:
    """Import ``names`` with the ``deepobs`` entries of ``sys.modules`` replaced by ``stubs``.

    Afterwards ``sys.modules`` is restored: the returned modules keep working, nothing stubbed
    leaks into other tests.
    """
    saved = {k: v for k, v in sys.modules.items() if k == "deepobs" or k.startswith("deepobs.")}
    for key in saved:
        del sys.modules[key]
    sys.modules.update(stubs)
    try:
        return [importlib.import_module(name) for name in names]
    finally:
        for key in [k for k in sys.modules if k == "deepobs" or k.startswith("deepobs.")]:
            del sys.modules[key]
        sys.modules.update(saved)


def load_deepobs() -> DeepOBSReference:
    """Import DeepOBS's PyTorch nets and problems via stub packages.

    Returns:
        The reference modules.

    Raises:
        DeepOBSUnavailable: If deepobs (or scipy, which its utils import) is not installed.
    """
    spec = importlib.util.find_spec("deepobs")
    if spec is None or not spec.submodule_search_locations:
        raise DeepOBSUnavailable("deepobs is not installed (pip install --no-deps deepobs==1.1.2)")
    if importlib.util.find_spec("scipy") is None:
        raise DeepOBSUnavailable("scipy is not installed (deepobs' testproblems_utils imports it)")
    root = Path(next(iter(spec.submodule_search_locations)))
    stubs = {
        "deepobs": _stub_package("deepobs", root),
        "deepobs.pytorch": _stub_package("deepobs.pytorch", root / "pytorch"),
        "deepobs.pytorch.testproblems": _stub_package(
            "deepobs.pytorch.testproblems", root / "pytorch" / "testproblems"
        ),
        "deepobs.pytorch.datasets": _stub_package("deepobs.pytorch.datasets", None),
    }
    for dataset in _DATASETS:
        module = _stub_package(f"deepobs.pytorch.datasets.{dataset}", None)
        setattr(module, dataset, _data_placeholder)
        stubs[module.__name__] = module

    names = [
        "deepobs.pytorch.testproblems.testproblems_modules",
        *(f"deepobs.pytorch.testproblems.{name}" for _, _, name in DEEPOBS_NETS.values()),
    ]
    try:
        loaded = import_with_stubs(stubs, names)
    except ImportError as err:
        raise DeepOBSUnavailable(f"deepobs does not import here: {err}") from err
    modules = loaded[0]
    problem_modules = {m.__name__.rsplit(".", 1)[1]: m for m in loaded[1:]}
    return DeepOBSReference(modules=modules, problem_modules=problem_modules)
