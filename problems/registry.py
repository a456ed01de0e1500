"""The test problems (``problems.get(name)``) and what defines each of them.

``PROBLEMS`` (``names()``, what ``curvbench problems`` lists): the four CIFAR problems and the two
(Fashion-)MNIST problems of the paper's optimizer experiments. ``VARIANTS``: problems that
``get()`` accepts but ``names()`` does not list (networks the paper uses for one figure).

Batch size and epochs: DeepOBS's ``DEFAULT_TEST_PROBLEMS_SETTINGS`` has 128/100 for cifar10_3c3d,
256/350 for cifar100_allcnnc, 128/50 for mnist_logreg and 128/100 for fmnist_2c2d (the paper ran
those: spec gridsearch §5.2). It has no entry for cifar100_3c3d, and cifar10_allcnnc is not a
DeepOBS problem; those two take the values of their architecture's DeepOBS sibling (our choice).

``cifar10_allcnnc`` is **not in DeepOBS** (``in_deepobs=False``): it is cifar100_allcnnc's network
with a 10-class last layer (1,369,738 parameters) and cifar100_allcnnc's L2 factor 5e-4. (The only
CIFAR-10 All-CNN-C we know of, in the research fork ltatzel/DeepOBS, drops the dropout layers and
uses L2 1e-3; we do not follow it.)

``mnist_logreg`` and ``fmnist_2c2d`` are DeepOBS's, unregularised (``l2=0``): the logistic
regression (7,850 parameters, initialised to 0) on MNIST and 2C2D (3,274,634 parameters,
truncated-normal init) on Fashion-MNIST; their data is neither augmented nor normalised.

``cifar10_3c3dsig`` (a variant, **not in DeepOBS**): cifar10_3c3d with one ``nn.Sigmoid`` in place
of the ReLU after ``dense2``, the network of the BackPACK paper's Fig. 9 (the DiagHessian overhead
with a non-piecewise-linear activation). It keeps cifar10_3c3d's L2, batch size and epochs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from problems.nets import ARCHITECTURES, INPUT_SHAPES

_REDUCTIONS = ("mean", "sum", "none")


def _zero_like_parameters(module: nn.Module) -> Tensor:
    """Return a scalar 0 of the device and dtype of a module's first parameter (CPU float32)."""
    p = next(module.parameters(), None)
    return torch.zeros(
        (), device=None if p is None else p.device, dtype=None if p is None else p.dtype
    )


@dataclass(frozen=True)
class ImageProblem:
    """An image-classification test problem: network, loss, L2 regulariser and data.

    Implements the ``bench.spec.Problem`` protocol.

    Attributes:
        name: Registry name, e.g. ``"cifar10_3c3d"``.
        dataset: ``"cifar10"``, ``"cifar100"``, ``"mnist"`` or ``"fmnist"``.
        num_classes: Number of classes (network outputs).
        l2: DeepOBS weight-decay factor, applied to every parameter whose name has no ``"bias"``
            (0 for the unregularised MNIST problems).
        batch_size: Default training batch size.
        epochs: Default number of training epochs.
        in_deepobs: Whether DeepOBS (1.1.2 / 1.2.0-beta) has this problem.
        deepobs_defaults: Whether ``batch_size``/``epochs`` are DeepOBS defaults (else ours).
        architecture: Key of ``problems.nets.ARCHITECTURES`` (``"3c3d"``, ``"allcnnc"``,
            ``"3c3dsig"``, ``"logreg"``, ``"2c2d"``).
        description: One line for tables and ``--help``.

    """

    name: str
    dataset: str
    num_classes: int
    l2: float
    batch_size: int
    epochs: int
    in_deepobs: bool
    deepobs_defaults: bool
    architecture: str
    description: str

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of one input image (3x32x32 CIFAR, 1x28x28 MNIST)."""
        return INPUT_SHAPES[self.architecture]

    def _builder(self) -> Callable[[int], nn.Sequential]:
        """Return the network builder of this problem's architecture."""
        return ARCHITECTURES[self.architecture]

    def model(
        self, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> nn.Sequential:
        """Build a freshly initialised network (seed with ``torch.manual_seed`` first).

        The network is always built and initialised on the CPU from the global CPU generator (so a
        seed gives DeepOBS's initial weights on every device), then moved.

        Args:
            device: Where to move the network afterwards (default: stay on the CPU).
            dtype: Floating dtype to cast to afterwards (default: float32).

        Returns:
            A flat ``nn.Sequential`` of standard modules mapping ``[N, *input_shape]`` to
            ``[N, num_classes]`` logits.

        """
        with torch.device("cpu"):
            net = self._builder()(self.num_classes)
        if device is not None or dtype is not None:
            net = net.to(device=device, dtype=dtype)
        return net

    def loss_fn(self, reduction: str = "mean") -> nn.Module:
        """Return the data loss: cross-entropy on logits (the L2 term is ``l2_penalty``).

        Args:
            reduction: ``"mean"`` (DeepOBS's default), ``"sum"`` or ``"none"``.

        Returns:
            ``nn.CrossEntropyLoss(reduction=reduction)``.

        Raises:
            ValueError: For any other reduction.

        """
        if reduction not in _REDUCTIONS:
            raise ValueError(f"unknown reduction {reduction!r}; valid: {', '.join(_REDUCTIONS)}")
        return nn.CrossEntropyLoss(reduction=reduction)

    def l2_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """DeepOBS's regularisation groups: weights get ``l2``, biases 0.

        Args:
            model: A network of this problem (any module; grouped by parameter name).

        Returns:
            ``[{"params": weights, "l2": l2}, {"params": biases, "l2": 0.0}]`` where the biases are
            the parameters whose ``named_parameters()`` name contains ``"bias"``.

        """
        weights, biases = [], []
        for name, param in model.named_parameters():
            (biases if "bias" in name else weights).append(param)
        return [{"params": weights, "l2": self.l2}, {"params": biases, "l2": 0.0}]

    def l2_penalty(self, model: nn.Module) -> Tensor:
        """Compute the L2 regulariser ``0.5 * l2 * sum ||W||^2`` over the weights (not biases).

        Summed in DeepOBS's order (``0.5 * sum(l2 * ||W||^2)``), so value and gradients match its
        ``get_regularization_loss`` bit for bit.

        Args:
            model: A network of this problem.

        Returns:
            A scalar tensor on the model's device, differentiable w.r.t. the weights (a constant
            0 of the model's dtype when ``l2`` is 0, as DeepOBS's unregularised problems).

        """
        terms = [
            group["l2"] * param.pow(2).sum()
            for group in self.l2_groups(model)
            if group["l2"] > 0.0
            for param in group["params"]
        ]
        if not terms:  # no weights, or an unregularised problem (l2 = 0)
            return _zero_like_parameters(model)
        return 0.5 * sum(terms)

    def num_parameters(self) -> int:
        """Count the parameters (on the meta device: no RNG draws, no memory)."""
        with torch.device("meta"):
            net = self._builder()(self.num_classes)
        return sum(p.numel() for p in net.parameters())

    def data(
        self,
        source: str = "real",
        *,
        seed: int = 42,
        root: str | None = None,
        device: torch.device | str = "cpu",
        batch_size: int | None = None,
        train_eval_size: int = 10000,
        **options: Any,
    ) -> Any:
        """Load this problem's data splits via ``problems.data.load_problem_data``.

        Args:
            source: ``"real"`` (the real, cached dataset; ``"cifar"`` / ``"mnist"`` for that
                family only) or ``"synthetic"``.
            seed: Seed of the split and batch order.
            root: Data directory (default: ``$CURVBENCH_DATA`` or the user cache).
            device: Where the data lives.
            batch_size: Training batch size (default: ``self.batch_size``).
            train_eval_size: Size of the train-eval subset.
            **options: Passed on (``valid_size``, ``n_train``, ``n_test``, ``augment``,
                ``normalization``; see ``load_problem_data``).

        Returns:
            The ``DeepOBSData`` splits.

        """
        from problems.data import load_problem_data

        return load_problem_data(
            self,
            source=source,
            seed=seed,
            root=root,
            device=device,
            batch_size=batch_size,
            train_eval_size=train_eval_size,
            **options,
        )

    def data_present(self, root: str | None = None) -> bool:
        """Whether this problem's dataset is downloaded and verified in ``root``.

        Args:
            root: Data directory (default: ``$CURVBENCH_DATA`` or the user cache).

        Returns:
            ``problems.data.is_cached(self.dataset, root)``.

        """
        from problems.data import is_cached

        return bool(is_cached(self.dataset, root))


#: The former name of ``ImageProblem`` (when every problem was a CIFAR one).
CifarProblem = ImageProblem

_REGISTRY: dict[str, ImageProblem] = {
    p.name: p
    for p in (
        ImageProblem(
            name="cifar10_3c3d",
            dataset="cifar10",
            num_classes=10,
            l2=0.002,
            batch_size=128,
            epochs=100,
            in_deepobs=True,
            deepobs_defaults=True,
            architecture="3c3d",
            description="DeepOBS 3C3D on CIFAR-10 (3 conv + 3 dense layers)",
        ),
        ImageProblem(
            name="cifar100_3c3d",
            dataset="cifar100",
            num_classes=100,
            l2=0.002,
            batch_size=128,  # no DeepOBS default; as cifar10_3c3d
            epochs=100,
            in_deepobs=True,
            deepobs_defaults=False,
            architecture="3c3d",
            description="DeepOBS 3C3D on CIFAR-100 (no DeepOBS default batch size/epochs)",
        ),
        ImageProblem(
            name="cifar10_allcnnc",
            dataset="cifar10",
            num_classes=10,
            l2=5e-4,
            batch_size=256,  # not in DeepOBS; as cifar100_allcnnc
            epochs=350,
            in_deepobs=False,
            deepobs_defaults=False,
            architecture="allcnnc",
            description=(
                "All-CNN-C on CIFAR-10: NOT in DeepOBS; cifar100_allcnnc with 10 outputs and "
                "its L2/batch size/epochs"
            ),
        ),
        ImageProblem(
            name="cifar100_allcnnc",
            dataset="cifar100",
            num_classes=100,
            l2=5e-4,
            batch_size=256,
            epochs=350,
            in_deepobs=True,
            deepobs_defaults=True,
            architecture="allcnnc",
            description="DeepOBS All-CNN-C on CIFAR-100",
        ),
        ImageProblem(
            name="mnist_logreg",
            dataset="mnist",
            num_classes=10,
            l2=0.0,
            batch_size=128,
            epochs=50,
            in_deepobs=True,
            deepobs_defaults=True,
            architecture="logreg",
            description="DeepOBS logistic regression on MNIST (weights and biases init 0)",
        ),
        ImageProblem(
            name="fmnist_2c2d",
            dataset="fmnist",
            num_classes=10,
            l2=0.0,
            batch_size=128,
            epochs=100,
            in_deepobs=True,
            deepobs_defaults=True,
            architecture="2c2d",
            description="DeepOBS 2C2D on Fashion-MNIST (2 conv + 2 dense layers)",
        ),
    )
}
#: The problem names, in registry order (``curvbench problems`` lists them).
PROBLEMS = tuple(_REGISTRY)

_VARIANTS: dict[str, ImageProblem] = {
    p.name: p
    for p in (
        ImageProblem(
            name="cifar10_3c3dsig",
            dataset="cifar10",
            num_classes=10,
            l2=0.002,
            batch_size=128,  # not in DeepOBS; as cifar10_3c3d
            epochs=100,
            in_deepobs=False,
            deepobs_defaults=False,
            architecture="3c3dsig",
            description=(
                "3C3D on CIFAR-10 with a sigmoid after dense2 (paper Fig. 9): NOT in DeepOBS"
            ),
        ),
    )
}
#: Problems ``get()`` accepts that ``names()`` does not list.
VARIANTS = tuple(_VARIANTS)


def names() -> tuple[str, ...]:
    """Return the problem names, in registry order (without the ``VARIANTS``)."""
    return tuple(_REGISTRY)


def get(name: str) -> ImageProblem:
    """Return the problem (or variant) called ``name``.

    Args:
        name: One of ``names()`` or ``VARIANTS``.

    Returns:
        The (immutable) problem.

    Raises:
        ValueError: For an unknown name; the message lists the valid ones.

    """
    try:
        return _REGISTRY.get(name) or _VARIANTS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown problem {name!r}; valid problems: {', '.join(_REGISTRY)} "
            f"(variants: {', '.join(_VARIANTS)})"
        ) from None
