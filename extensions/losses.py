"""Loss-Hessian factors at the network output (the start of every second-order backward pass).

For a loss module ``loss(f, y)`` with per-sample Hessians ``H_n = d^2 l_n / d f_n^2`` this module
returns the objects the backward pass starts from (BackPACK 1.7.1 conventions, spec
extensions.md §1.1 and §2.1):

* :func:`sqrt_hessian`: exact columns ``S`` of shape ``[C, N, C]`` with
  ``sum_v S[v, n] S[v, n]^T = H_n / N`` (mean reduction) or ``H_n`` (sum reduction);
* :func:`sqrt_hessian_sampled`: ``M`` Monte-Carlo columns ``[M, N, C]`` whose outer products
  are unbiased for the same matrices (labels drawn from the model's predictive distribution with
  the global RNG, exactly as BackPACK draws them);
* :func:`sum_hessian`: the batch-summed Hessian ``sum_n H_n / N`` (``[C, C]``), KFRA's start;
* :func:`output_gradient`: the gradient of the (reduced) loss w.r.t. the network output.

Supported: ``nn.CrossEntropyLoss`` (class-index targets, ``weight=None``, no label smoothing) and
``nn.MSELoss``, both with ``reduction`` ``"mean"`` or ``"sum"``, on 2-d outputs ``[N, C]``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Normal

from extensions.errors import UnsupportedModuleError
from extensions.trace import LossRecord

SUPPORTED_LOSSES = (nn.CrossEntropyLoss, nn.MSELoss)


def check_loss_supported(module: nn.Module, quantity: str | None = None) -> None:
    """Raise :class:`UnsupportedModuleError` unless ``module`` is a supported loss configuration.

    Args:
        module: The loss module.
        quantity: Quantity name for the error message.

    """
    if type(module) not in SUPPORTED_LOSSES:
        valid = ", ".join(cls.__name__ for cls in SUPPORTED_LOSSES)
        raise UnsupportedModuleError(
            f"loss {type(module).__name__} is not supported; supported losses: {valid}",
            module=module,
            position="loss",
            quantity=quantity,
        )
    if module.reduction not in ("mean", "sum"):
        raise UnsupportedModuleError(
            f"reduction={module.reduction!r} is not supported; use 'mean' or 'sum'",
            module=module,
            position="loss",
            quantity=quantity,
        )
    if isinstance(module, nn.CrossEntropyLoss) and (
        module.weight is not None or module.label_smoothing != 0.0
    ):
        raise UnsupportedModuleError(
            "CrossEntropyLoss with class weights or label smoothing is not supported",
            module=module,
            position="loss",
            quantity=quantity,
        )


def _check_record(loss: LossRecord, quantity: str | None = None) -> None:
    check_loss_supported(loss.module, quantity)
    if loss.input.dim() != 2:
        raise UnsupportedModuleError(
            f"the loss input must be 2-d [N, C], got shape {tuple(loss.input.shape)}",
            module=loss.module,
            position="loss",
            quantity=quantity,
        )
    if isinstance(loss.module, nn.CrossEntropyLoss) and loss.target.dtype.is_floating_point:
        raise UnsupportedModuleError(
            "CrossEntropyLoss with probability targets is not supported; use class indices",
            module=loss.module,
            position="loss",
            quantity=quantity,
        )


def mean_normalization(loss: LossRecord) -> int:
    """Return what PyTorch divides the summed loss by: N (CE), N*C (MSE), or 1 (sum)."""
    if loss.module.reduction == "sum":
        return 1
    if isinstance(loss.module, nn.MSELoss):
        return loss.input.numel()
    return loss.input.shape[0]


def sqrt_hessian(loss: LossRecord) -> Tensor:
    """Exact symmetric factor of the loss Hessian, as ``C`` columns ``[C, N, C]``.

    Cross-entropy: column ``v`` is ``sqrt(p_v) (e_v - p)``; MSE: ``sqrt(2) I``. Both are divided by
    ``sqrt`` of :func:`mean_normalization`.

    Args:
        loss: The recorded loss call.

    Returns:
        ``S`` with ``sum_v S[v, n] S[v, n]^T`` = the Hessian of the reduced loss w.r.t. ``f_n``.

    """
    _check_record(loss)
    f = loss.input
    n, c = f.shape
    scale = 1.0 / math.sqrt(mean_normalization(loss))
    if isinstance(loss.module, nn.MSELoss):
        eye = torch.eye(c, dtype=f.dtype, device=f.device) * (math.sqrt(2.0) * scale)
        return eye.unsqueeze(1).expand(c, n, c).contiguous()
    p = torch.softmax(f, dim=1)  # [N, C]
    tau = p.sqrt()
    eye = torch.eye(c, dtype=f.dtype, device=f.device)
    # S[v, n, i] = tau[n, v] * (delta_vi - p[n, i])
    s = eye.unsqueeze(1) - p.unsqueeze(0)  # [V, N, C]
    s = s * tau.t().unsqueeze(2)
    return s * scale


def sqrt_hessian_sampled(loss: LossRecord, mc_samples: int) -> Tensor:
    """Monte-Carlo factor of the loss Hessian, ``[M, N, C]``, drawn from the global RNG.

    Cross-entropy: ``(p - onehot(y_hat)) / sqrt(M)`` with ``y_hat ~ Categorical(softmax(f))``;
    MSE: ``2 (y_hat - f) / sqrt(M)`` with ``y_hat ~ Normal(f, sqrt(1/2))``. Both divided by
    ``sqrt`` of :func:`mean_normalization` (BackPACK 1.7.1's ``_sqrt_hessian_sampled``, same draws).

    Args:
        loss: The recorded loss call.
        mc_samples: Number of sampled labels ``M >= 1``.

    Returns:
        Columns whose outer products are unbiased for the loss Hessian.

    """
    if mc_samples < 1:
        raise ValueError(f"mc_samples must be >= 1, got {mc_samples}")
    _check_record(loss)
    f = loss.input
    if isinstance(loss.module, nn.MSELoss):
        dist = Normal(f, torch.tensor(math.sqrt(0.5), dtype=f.dtype, device=f.device))
        samples = dist.sample(torch.Size([mc_samples]))
        grads = 2 * (samples - f.unsqueeze(0))
    else:
        p = torch.softmax(f, dim=1)
        labels = Categorical(probs=p).sample(torch.Size([mc_samples]))  # [M, N], as BackPACK
        onehot = nn.functional.one_hot(labels, num_classes=f.shape[1]).to(f.dtype)
        grads = p.unsqueeze(0) - onehot
    return grads / math.sqrt(mc_samples * mean_normalization(loss))


def sum_hessian(loss: LossRecord) -> Tensor:
    """Batch-summed loss Hessian ``sum_n H_n / normalisation`` (``[C, C]``), KFRA's start.

    Args:
        loss: The recorded loss call.

    Returns:
        The Hessian of the reduced loss summed over samples' outputs.

    """
    _check_record(loss)
    f = loss.input
    n, c = f.shape
    if isinstance(loss.module, nn.MSELoss):
        h = 2.0 * n * torch.eye(c, dtype=f.dtype, device=f.device)
    else:
        p = torch.softmax(f, dim=1)
        h = torch.diag(p.sum(0)) - p.t() @ p
    return h / mean_normalization(loss)


def output_gradient(loss: LossRecord) -> Tensor:
    """Gradient of the reduced loss w.r.t. the network output, ``[N, C]``.

    Args:
        loss: The recorded loss call.

    Returns:
        ``d L / d f`` including the ``1/N`` (or ``1/(N C)``) of mean reduction.

    """
    _check_record(loss)
    f = loss.input
    if isinstance(loss.module, nn.MSELoss):
        g = 2 * (f - loss.target.to(f.dtype))
    else:
        g = torch.softmax(f, dim=1)
        g = g - nn.functional.one_hot(loss.target, num_classes=f.shape[1]).to(f.dtype)
    return g / mean_normalization(loss)
