"""DeepOBS's networks, rebuilt as one flat ``nn.Sequential`` of standard modules.

CIFAR: 3C3D and All-CNN-C (and a 3C3D variant with one sigmoid, not in DeepOBS); (Fashion-)MNIST:
the logistic regression and 2C2D.

DeepOBS implements TensorFlow's "same" padding with forward pre-hooks on ``ZeroPad2d`` and a custom
``flatten`` module, both of which get in the way of per-module backward extensions. On 32x32
inputs the padding the hooks compute is static (problems spec §1.1), so it is written out here:

* stride-1 "same" convolutions pad symmetrically (``Conv2d(..., padding=k // 2)``);
* stride-2 "same" convolutions and the 3C3D max-pools pad **right/bottom only**:
  ``ZeroPad2d((0, 1, 0, 1))`` before the layer. A symmetric ``padding=1`` gives the right shape but
  shifts the sampling grid by one pixel (different values).

Modules are constructed in DeepOBS's order and then re-initialised in module order with DeepOBS's
scheme, so ``torch.manual_seed(s)`` followed by a builder reproduces DeepOBS's initial weights for
seed ``s`` bit for bit (the default initialisation of ``Conv2d``/``Linear`` consumes RNG, so the
construction order matters too). The CIFAR networks hard-code 32x32 inputs (3C3D's
``Linear(1152, 512)``, All-CNN-C's ``AvgPool2d(6)``), the MNIST ones 28x28 (``Linear(784, ...)``,
2C2D's ``Linear(3136, 1024)``).

2C2D on 28x28 inputs: its 5x5 stride-1 "same" convolutions pad 2 on every side (``padding=2``), and
its 2x2 stride-2 "same" max-pools pad nothing (28 and 14 are even), so they are plain
``MaxPool2d(2, 2)``. Its truncated-normal initialisation is DeepOBS's ``_truncated_normal_init``
(``tf_truncated_normal_``): a numpy seed drawn from torch's global generator, then scipy's
``truncnorm`` within two standard deviations, so it needs scipy, exactly as DeepOBS does.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import Tensor, nn

#: Input shape (channels, height, width) every CIFAR network here expects.
INPUT_SHAPE = (3, 32, 32)
#: Input shape of the (Fashion-)MNIST networks.
MNIST_INPUT_SHAPE = (1, 28, 28)
#: Standard deviation (and bias constant) of 2C2D's initialisation.
TRUNCATED_NORMAL_STD = 0.05

#: The only module types the networks are built from (the extensions walk leaf modules).
STANDARD_MODULES = (
    nn.Conv2d,
    nn.ZeroPad2d,
    nn.MaxPool2d,
    nn.ReLU,
    nn.Dropout,
    nn.Flatten,
    nn.Linear,
    nn.AvgPool2d,
    nn.Sigmoid,
)


def tf_same_right_bottom_pad() -> nn.ZeroPad2d:
    """TF "same" padding of a 3x3, stride-2 layer on an even-sized input: one zero row/column.

    Returns:
        ``nn.ZeroPad2d((0, 1, 0, 1))`` (left, right, top, bottom): the extra pixel goes
        right/bottom.

    """
    return nn.ZeroPad2d((0, 1, 0, 1))


def init_deepobs_(model: nn.Module, conv_bias: float) -> nn.Module:
    """Re-initialise ``model`` in place as DeepOBS does, in ``model.modules()`` order.

    Args:
        model: The network whose ``Conv2d`` and ``Linear`` layers are re-initialised.
        conv_bias: Constant for the convolution biases (0.0 for 3C3D, 0.1 for All-CNN-C).

    Returns:
        ``model`` itself. Convolutions get a ``xavier_normal_`` weight, linear layers a
        ``xavier_uniform_`` weight and bias 0.0.

    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.constant_(module.bias, conv_bias)
            nn.init.xavier_normal_(module.weight)
        if isinstance(module, nn.Linear):
            nn.init.constant_(module.bias, 0.0)
            nn.init.xavier_uniform_(module.weight)
    return model


def tf_truncated_normal_(tensor: Tensor, std: float, mean: float = 0.0) -> Tensor:
    """Fill ``tensor`` in place like DeepOBS's ``_truncated_normal_init`` (a TF truncated normal).

    One ``torch.randint(0, 2**32 - 1, (1, 1))`` from the global generator seeds a numpy
    ``RandomState``; scipy's ``truncnorm`` (cut at two standard deviations) draws the values in
    float64, which are then rounded to the tensor's dtype. A meta tensor is left alone (no draw).

    Args:
        tensor: The tensor to fill.
        std: Standard deviation before truncation.
        mean: Mean.

    Returns:
        ``tensor``.

    """
    if tensor.is_meta:
        return tensor
    from scipy.stats import truncnorm  # as DeepOBS; imported only when a net is initialised

    np_seed = torch.randint(0, 2**32 - 1, (1, 1)).view(-1).item()
    samples = truncnorm.rvs(
        a=-2,
        b=2,
        loc=mean,
        scale=std,
        size=tensor.numel(),
        random_state=np.random.RandomState(np_seed),
    )
    with torch.no_grad():
        tensor.copy_(torch.from_numpy(samples.reshape(tuple(tensor.shape))))
    return tensor


def init_truncated_normal_(model: nn.Module, std: float | None = None) -> nn.Module:
    """Re-initialise ``model`` in place as DeepOBS's 2C2D: weights truncated normal, biases ``std``.

    In ``model.modules()`` order, every ``Conv2d`` and ``Linear`` gets bias ``std`` and a
    ``tf_truncated_normal_(std)`` weight; ``std`` defaults to ``TRUNCATED_NORMAL_STD`` (0.05,
    DeepOBS's), read at call time.

    Returns:
        ``model`` itself.

    """
    std = TRUNCATED_NORMAL_STD if std is None else std
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            nn.init.constant_(module.bias, std)
            tf_truncated_normal_(module.weight, std)
    return model


def build_3c3d(num_classes: int, *, sigmoid_after_dense2: bool = False) -> nn.Sequential:
    """DeepOBS's 3C3D network (``net_cifar10_3c3d``) for 32x32 RGB inputs.

    Three conv layers (5x5 valid, 3x3 valid, 3x3 same) each followed by ReLU and a 3x3, stride-2
    TF-"same" max-pool, then dense layers 1152 -> 512 -> 256 -> ``num_classes`` with ReLUs. No
    dropout. Init: conv ``xavier_normal_``, linear ``xavier_uniform_``, biases 0.

    Args:
        num_classes: Number of outputs (10 for CIFAR-10, 100 for CIFAR-100).
        sigmoid_after_dense2: Put an ``nn.Sigmoid`` (``sigmoid5``) in place of the ReLU after
            ``dense2`` (the BackPACK paper's Fig. 9 network; not in DeepOBS). Same parameters
            and the same initial weights for a seed.

    Returns:
        A flat ``nn.Sequential`` mapping ``[N, 3, 32, 32]`` to logits ``[N, num_classes]``.

    """
    _check_num_classes(num_classes)
    act5 = ("sigmoid5", nn.Sigmoid()) if sigmoid_after_dense2 else ("relu5", nn.ReLU())
    layers = OrderedDict(
        [
            ("conv1", nn.Conv2d(3, 64, kernel_size=5)),
            ("relu1", nn.ReLU()),
            ("pad1", tf_same_right_bottom_pad()),
            ("maxpool1", nn.MaxPool2d(kernel_size=3, stride=2)),
            ("conv2", nn.Conv2d(64, 96, kernel_size=3)),
            ("relu2", nn.ReLU()),
            ("pad2", tf_same_right_bottom_pad()),
            ("maxpool2", nn.MaxPool2d(kernel_size=3, stride=2)),
            ("conv3", nn.Conv2d(96, 128, kernel_size=3, padding=1)),
            ("relu3", nn.ReLU()),
            ("pad3", tf_same_right_bottom_pad()),
            ("maxpool3", nn.MaxPool2d(kernel_size=3, stride=2)),
            ("flatten", nn.Flatten()),
            ("dense1", nn.Linear(3 * 3 * 128, 512)),
            ("relu4", nn.ReLU()),
            ("dense2", nn.Linear(512, 256)),
            act5,
            ("dense3", nn.Linear(256, num_classes)),
        ]
    )
    return init_deepobs_(nn.Sequential(layers), conv_bias=0.0)


def build_allcnnc(num_classes: int) -> nn.Sequential:
    """DeepOBS's All-CNN-C network (``net_cifar100_allcnnc``) for 32x32 RGB inputs.

    Dropout(0.2) on the input; conv blocks 96-96-96(stride 2) and 192-192-192(stride 2), each
    followed by Dropout(0.5); then 3x3 valid, 1x1 and 1x1 -> ``num_classes`` convs, every conv
    followed by ReLU (also the last: logits are >= 0, as in DeepOBS and its TF original), and a
    global 6x6 average pool. Init: ``xavier_normal_`` weights, biases 0.1.

    Args:
        num_classes: Number of outputs (DeepOBS has only 100; 10 is this suite's CIFAR-10 variant).

    Returns:
        A flat ``nn.Sequential`` mapping ``[N, 3, 32, 32]`` to logits ``[N, num_classes]``.

    """
    _check_num_classes(num_classes)
    layers = OrderedDict(
        [
            ("dropout1", nn.Dropout(p=0.2)),
            ("conv1", nn.Conv2d(3, 96, kernel_size=3, padding=1)),
            ("relu1", nn.ReLU()),
            ("conv2", nn.Conv2d(96, 96, kernel_size=3, padding=1)),
            ("relu2", nn.ReLU()),
            ("pad3", tf_same_right_bottom_pad()),
            ("conv3", nn.Conv2d(96, 96, kernel_size=3, stride=2)),
            ("relu3", nn.ReLU()),
            ("dropout2", nn.Dropout(p=0.5)),
            ("conv4", nn.Conv2d(96, 192, kernel_size=3, padding=1)),
            ("relu4", nn.ReLU()),
            ("conv5", nn.Conv2d(192, 192, kernel_size=3, padding=1)),
            ("relu5", nn.ReLU()),
            ("pad6", tf_same_right_bottom_pad()),
            ("conv6", nn.Conv2d(192, 192, kernel_size=3, stride=2)),
            ("relu6", nn.ReLU()),
            ("dropout3", nn.Dropout(p=0.5)),
            ("conv7", nn.Conv2d(192, 192, kernel_size=3)),
            ("relu7", nn.ReLU()),
            ("conv8", nn.Conv2d(192, 192, kernel_size=1)),
            ("relu8", nn.ReLU()),
            ("conv9", nn.Conv2d(192, num_classes, kernel_size=1)),
            ("relu9", nn.ReLU()),
            ("avgpool", nn.AvgPool2d(kernel_size=6)),
            ("flatten", nn.Flatten()),
        ]
    )
    return init_deepobs_(nn.Sequential(layers), conv_bias=0.1)


def build_3c3d_sigmoid(num_classes: int) -> nn.Sequential:
    """3C3D with one ``nn.Sigmoid`` in place of the ReLU after ``dense2`` (paper Fig. 9).

    Not a DeepOBS network: ``build_3c3d(num_classes, sigmoid_after_dense2=True)``.
    """
    return build_3c3d(num_classes, sigmoid_after_dense2=True)


def build_mnist_logreg(num_classes: int) -> nn.Sequential:
    """DeepOBS's multinomial logistic regression (``net_mnist_logreg``) for 28x28 inputs.

    ``Flatten`` and ``Linear(784, num_classes)``; weights and biases initialised to 0.

    Args:
        num_classes: Number of outputs (10).

    Returns:
        A flat ``nn.Sequential`` mapping ``[N, 1, 28, 28]`` to logits ``[N, num_classes]``.

    """
    _check_num_classes(num_classes)
    net = nn.Sequential(
        OrderedDict(
            [("flatten", nn.Flatten()), ("dense", nn.Linear(28 * 28, num_classes))],
        )
    )
    nn.init.constant_(net.dense.bias, 0.0)
    nn.init.constant_(net.dense.weight, 0.0)
    return net


def build_2c2d(num_classes: int) -> nn.Sequential:
    """DeepOBS's 2C2D network (``net_mnist_2c2d``) for 28x28 grey-scale inputs.

    Two 5x5 TF-"same" convolutions (32 and 64 channels), each followed by ReLU and a 2x2,
    stride-2 TF-"same" max-pool (no padding on 28 and 14), then dense 3136 -> 1024 with ReLU and
    1024 -> ``num_classes``. Init: truncated normal weights (std 0.05, cut at 2 std), biases 0.05.

    Args:
        num_classes: Number of outputs (10).

    Returns:
        A flat ``nn.Sequential`` mapping ``[N, 1, 28, 28]`` to logits ``[N, num_classes]``.

    """
    _check_num_classes(num_classes)
    layers = OrderedDict(
        [
            ("conv1", nn.Conv2d(1, 32, kernel_size=5, padding=2)),
            ("relu1", nn.ReLU()),
            ("maxpool1", nn.MaxPool2d(kernel_size=2, stride=2)),
            ("conv2", nn.Conv2d(32, 64, kernel_size=5, padding=2)),
            ("relu2", nn.ReLU()),
            ("maxpool2", nn.MaxPool2d(kernel_size=2, stride=2)),
            ("flatten", nn.Flatten()),
            ("dense1", nn.Linear(7 * 7 * 64, 1024)),
            ("relu3", nn.ReLU()),
            ("dense2", nn.Linear(1024, num_classes)),
        ]
    )
    return init_truncated_normal_(nn.Sequential(layers))


#: architecture name -> builder
ARCHITECTURES = {
    "3c3d": build_3c3d,
    "allcnnc": build_allcnnc,
    "3c3dsig": build_3c3d_sigmoid,
    "logreg": build_mnist_logreg,
    "2c2d": build_2c2d,
}
#: architecture name -> input shape (channels, height, width)
INPUT_SHAPES = {
    "3c3d": INPUT_SHAPE,
    "allcnnc": INPUT_SHAPE,
    "3c3dsig": INPUT_SHAPE,
    "logreg": MNIST_INPUT_SHAPE,
    "2c2d": MNIST_INPUT_SHAPE,
}


def _check_num_classes(num_classes: int) -> None:
    """Raise ``ValueError`` unless ``num_classes`` is a positive int."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
