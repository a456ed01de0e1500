"""Small random float64 test nets, losses and brute-force references for ``extensions`` tests.

Shared by the first- and second-order test suites. Every net is an ``nn.Sequential`` of standard
modules, small enough for dense brute-force references (Hessians, GGNs) in float64.

Use::

    from tests.extensions.nets import NET_CASES, LOSS_CASES, make_problem, individual_gradients

    @pytest.mark.parametrize("net", NET_CASES, ids=lambda c: c.id)
    @pytest.mark.parametrize("loss", LOSS_CASES, ids=lambda c: c.id)
    def test_x(net, loss):
        model, loss_fn, x, y = make_problem(net, loss, batch_size=3)
        ref = individual_gradients(model, loss_fn, x, y)  # {name: [N, *p.shape]} = BatchGrad
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

#: number of outputs of every test net (classes for cross-entropy, targets for MSE)
NUM_OUTPUTS = 3


@dataclass(frozen=True)
class NetCase:
    """A small test network: ``build()`` returns a fresh float64 ``nn.Sequential``."""

    id: str
    build: Callable[[], nn.Sequential]
    input_shape: tuple[int, ...]  # per-sample shape
    has_dropout: bool = False


@dataclass(frozen=True)
class LossCase:
    """A loss module of the two supported kinds with a reduction."""

    id: str
    kind: str  # "ce" | "mse"
    reduction: str  # "mean" | "sum"

    def build(self) -> nn.Module:
        """A fresh loss module."""
        cls = nn.CrossEntropyLoss if self.kind == "ce" else nn.MSELoss
        return cls(reduction=self.reduction)

    def targets(self, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        """Random targets: class indices for cross-entropy, float64 values for MSE."""
        if self.kind == "ce":
            return torch.randint(0, NUM_OUTPUTS, (batch_size,), generator=generator)
        return torch.randn(batch_size, NUM_OUTPUTS, dtype=torch.float64, generator=generator)


def _mlp_sigmoid() -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.Sigmoid(), nn.Linear(5, NUM_OUTPUTS))


def _mlp_tanh_dropout_nobias() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(6, 5),
        nn.Tanh(),
        nn.Dropout(p=0.4),
        nn.Linear(5, 4, bias=False),
        nn.ReLU(),
        nn.Linear(4, NUM_OUTPUTS),
    )


def _cnn_stride_pad_dilation() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(3, 4, 3, padding=2, dilation=2, bias=False),
        nn.Sigmoid(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, NUM_OUTPUTS),
    )


def _cnn_zeropad_maxpool_ceil() -> nn.Sequential:
    return nn.Sequential(
        nn.ZeroPad2d((0, 1, 0, 1)),
        nn.Conv2d(2, 3, 3, stride=2),
        nn.ReLU(),
        nn.ZeroPad2d((0, 1, 0, 1)),
        nn.MaxPool2d(3, stride=2, ceil_mode=True),
        nn.Flatten(),
        nn.Linear(3 * 2 * 2, NUM_OUTPUTS),
    )


def _cnn_avgpool_adaptive() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(2, 3, (3, 2), padding=(1, 0)),
        nn.Tanh(),
        nn.AvgPool2d(2),
        nn.Conv2d(3, 4, 1),
        nn.Sigmoid(),
        nn.AdaptiveAvgPool2d((2, 1)),
        nn.Flatten(),
        nn.Linear(4 * 2, NUM_OUTPUTS),
    )


def _cnn_dropout_maxpool() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.ReLU(),
        nn.Dropout(p=0.3),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 3 * 3, 5),
        nn.ReLU(),
        nn.Dropout(p=0.5),
        nn.Linear(5, NUM_OUTPUTS),
    )


def _mini_3c3d() -> nn.Sequential:
    """3C3D's layer pattern, shrunk: valid conv, 'same' max-pool via ZeroPad2d((0,1,0,1))."""
    return nn.Sequential(
        nn.Conv2d(2, 3, 3),
        nn.ReLU(),
        nn.ZeroPad2d((0, 1, 0, 1)),
        nn.MaxPool2d(3, stride=2),
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 3 * 3, 5),
        nn.ReLU(),
        nn.Linear(5, NUM_OUTPUTS),
    )


def _mini_allcnnc() -> nn.Sequential:
    """All-CNN-C's layer pattern, shrunk: dropout, stride-2 'same' conv, 1x1 conv, avg-pool head."""
    return nn.Sequential(
        nn.Dropout(p=0.2),
        nn.Conv2d(2, 3, 3, padding=1),
        nn.ReLU(),
        nn.ZeroPad2d((0, 1, 0, 1)),
        nn.Conv2d(3, 3, 3, stride=2),
        nn.ReLU(),
        nn.Dropout(p=0.5),
        nn.Conv2d(3, NUM_OUTPUTS, 1),
        nn.ReLU(),
        nn.AvgPool2d(3),
        nn.Flatten(),
    )


#: the small nets, each covering a set of module types (ids say which)
NET_CASES: tuple[NetCase, ...] = (
    NetCase("mlp-sigmoid", _mlp_sigmoid, (2, 3)),
    NetCase("mlp-tanh-dropout-nobias", _mlp_tanh_dropout_nobias, (6,), has_dropout=True),
    NetCase("cnn-stride2-pad-dilation", _cnn_stride_pad_dilation, (2, 7, 7)),
    NetCase("cnn-zeropad-maxpool-ceil", _cnn_zeropad_maxpool_ceil, (2, 8, 8)),
    NetCase("cnn-avgpool-adaptive", _cnn_avgpool_adaptive, (2, 5, 6)),
    NetCase("cnn-dropout-maxpool", _cnn_dropout_maxpool, (2, 6, 6), has_dropout=True),
    NetCase("mini-3c3d", _mini_3c3d, (2, 8, 8)),
    NetCase("mini-allcnnc", _mini_allcnnc, (2, 6, 6), has_dropout=True),
)

#: both losses with both reductions
LOSS_CASES: tuple[LossCase, ...] = (
    LossCase("ce-mean", "ce", "mean"),
    LossCase("ce-sum", "ce", "sum"),
    LossCase("mse-mean", "mse", "mean"),
    LossCase("mse-sum", "mse", "sum"),
)


def net_case(case_id: str) -> NetCase:
    """The net case with this id."""
    for case in NET_CASES:
        if case.id == case_id:
            return case
    raise KeyError(f"no net case {case_id!r}; valid: {[c.id for c in NET_CASES]}")


def make_problem(
    net: NetCase, loss: LossCase, batch_size: int = 3, seed: int = 0
) -> tuple[nn.Sequential, nn.Module, Tensor, Tensor]:
    """A seeded float64 ``(model, loss_fn, inputs, targets)`` in train mode."""
    torch.manual_seed(seed)
    model = net.build().to(torch.float64).train()
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch_size, *net.input_shape, dtype=torch.float64, generator=gen)
    return model, loss.build(), x, loss.targets(batch_size, gen)


def loss_normaliser(loss_fn: nn.Module, output: Tensor) -> float:
    """What PyTorch divides the summed loss by: N (CE mean), N*D (MSE mean) or 1 (sum)."""
    if loss_fn.reduction == "sum":
        return 1.0
    if isinstance(loss_fn, nn.MSELoss):
        return float(output.numel())
    return float(output.numel() // output.shape[1]) if output.dim() > 1 else 1.0


def _per_sample_losses(loss_fn: nn.Module, output: Tensor, target: Tensor) -> Tensor:
    """Unnormalised per-sample losses ``[N]`` (each summed over its own elements)."""
    unreduced = copy.deepcopy(loss_fn)
    unreduced.reduction = "none"
    losses = unreduced(output, target)
    return losses.reshape(losses.shape[0], -1).sum(1)


def individual_gradients(
    model: nn.Module,
    loss_fn: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    rng_state: Tensor | None = None,
) -> dict[str, Tensor]:
    """Brute force: each sample's contribution to the gradient of the batch loss (= BatchGrad).

    One forward pass of the whole batch (so dropout draws a single mask, reproducible via
    ``rng_state``), then one ``autograd.grad`` per sample of its own loss divided by the loss's
    normaliser. Returns ``{parameter name: [N, *p.shape]}``; the sum over N is the batch gradient.
    """
    if rng_state is not None:
        torch.set_rng_state(rng_state)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    output = model(inputs)
    losses = _per_sample_losses(loss_fn, output, targets) / loss_normaliser(loss_fn, output)
    rows = []
    for n in range(inputs.shape[0]):
        grads = torch.autograd.grad(losses[n], [p for _, p in named], retain_graph=True)
        rows.append(grads)
    return {name: torch.stack([row[i] for row in rows]) for i, (name, _) in enumerate(named)}


def individual_gradients_vmap(
    model: nn.Module, loss_fn: nn.Module, inputs: Tensor, targets: Tensor
) -> dict[str, Tensor]:
    """Brute force via ``torch.func.vmap(grad)`` (nets without train-mode dropout only).

    Same value and scaling as :func:`individual_gradients`; an independent second oracle.
    """
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    buffers = dict(model.named_buffers())
    with torch.no_grad():
        norm = loss_normaliser(loss_fn, model(inputs[:1]).repeat(inputs.shape[0], 1))

    def sample_loss(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        out = torch.func.functional_call(model, (p, buffers), (x.unsqueeze(0),))
        return _per_sample_losses(loss_fn, out, y.unsqueeze(0)).sum() / norm

    grads = torch.func.vmap(torch.func.grad(sample_loss), in_dims=(None, 0, 0))(
        params, inputs, targets
    )
    return dict(grads)
