"""KFAC/KFLR with ``conv="expand"`` and EKFAC vs curvlinops 3.0.1 and brute force (float64).

Conventions (``mat`` = our backpropagated loss-Hessian columns, ``1/sqrt(N)`` of a mean loss and
``1/sqrt(M)`` of M MC samples included; ``u`` = unfolded input patches, S output positions):

* curvlinops' ``KFACLinearOperator(kfac_approx="expand", separate_weight_and_bias=True)``
  multiplies its ``sum_{n,s} g g^T`` of the output gradients ``g`` (``1/N`` of the mean loss
  inside) by ``N / M`` (mean) or ``1 / M`` (sum) and divides ``sum_{n,s} u u^T`` by ``N S``.
  Hence its ``ggT`` equals our ``B = sum_{v,n,s} mat mat^T`` and its ``aaT`` our ``A`` (expand),
  without any factor; BackPACK's (our default) conv ``A`` is ``S`` times it.
* ``EKFACLinearOperator`` uses the eigenvectors of those factors and corrects the eigenvalues
  with ``N / M`` times the squared rotated per-sample gradients: our ``lam``, again unscaled.

MC draws are shared by recording the labels ours samples (a recording ``Categorical`` /
``Normal``) and handing them to curvlinops' ``draw_label``; so MC is compared exactly, draw for
draw, not in expectation.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

import extensions
from extensions import ekfac, losses, per_sample
from tests.extensions.nets import LOSS_CASES, make_problem, net_case
from tests.extensions.test_second_order import (
    _close,
    build_trace,
    ggn_matrix,
    input_factor,
    output_ggn_factor,
)

curvlinops = pytest.importorskip("curvlinops")

#: nets with convolutions of several geometries, and one MLP (where expand = BackPACK)
NETS = ["cnn-stride2-pad-dilation", "cnn-zeropad-maxpool-ceil", "cnn-avgpool-adaptive", "mini-3c3d"]
LOSSES = {c.id: c for c in LOSS_CASES}
CASES = [(n, "ce-mean") for n in NETS] + [
    ("mini-3c3d", "ce-sum"),
    ("cnn-stride2-pad-dilation", "mse-mean"),
    ("mlp-sigmoid", "mse-sum"),
]
IDS = [f"{n}-{loss}" for n, loss in CASES]


def _problem(net: str, loss: str, batch_size: int = 4):
    model, loss_fn, x, y = make_problem(net_case(net), LOSSES[loss], batch_size=batch_size)
    return model, loss_fn, x, y


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)]


class _SharedDraws:
    """Record the labels our MC columns are built from; replay them to curvlinops."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.drawn: list[Tensor] = []
        self.calls = 0
        for name in ("Categorical", "Normal"):
            monkeypatch.setattr(losses, name, self._recording(getattr(losses, name)))

    def _recording(self, cls):
        drawn = self.drawn

        class Recording(cls):
            def sample(self, sample_shape=torch.Size()):  # noqa: B008 - torch's own default
                value = super().sample(sample_shape)
                drawn.append(value)
                return value

        return Recording

    def draw_label(self, output: Tensor) -> Tensor:
        """The ``calls``-th of our ``M`` samples (curvlinops asks M times per pass)."""
        (samples,) = self.drawn
        label = samples[self.calls % samples.shape[0]]
        self.calls += 1
        return label


def _curvlinops(cls, model, loss_fn, x, y, fisher_type, mc_samples=1, draws=None):
    op = cls(
        model,
        loss_fn,
        list(model.parameters()),
        [(x, y)],
        fisher_type=fisher_type,
        mc_samples=mc_samples,
        kfac_approx="expand",
        check_deterministic=False,
    )
    if draws is not None:
        op.draw_label = draws.draw_label
    return op


def _kfac_of_curvlinops(model, loss_fn, x, y, fisher_type, mc_samples=1, draws=None):
    op = _curvlinops(
        curvlinops.KFACLinearOperator, model, loss_fn, x, y, fisher_type, mc_samples, draws
    )
    op.compute_kronecker_factors()
    return op._gradient_covariances, op._input_covariances


def _assert_factors_equal(ours: dict, ggt: dict, aat: dict, model: nn.Module) -> None:
    for name, m in _layers(model):
        b, a = ours[name + ".weight"]
        _close(b, ggt[name], f"B {name}")
        _close(a, aat[name], f"A {name}")
        if m.bias is not None:
            (b_bias,) = ours[name + ".bias"]
            _close(b_bias, ggt[name], f"bias B {name}")


# ---------------------------------------------------------------------------------------------
# KFAC / KFLR, conv="expand"
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("net", "loss"), CASES, ids=IDS)
def test_kflr_expand_equals_curvlinops_type2(net, loss):
    model, loss_fn, x, y = _problem(net, loss)
    ours = extensions.compute(model, loss_fn, x, y, extensions.KFLR(conv="expand"))["KFLR"]
    ggt, aat = _kfac_of_curvlinops(model, loss_fn, x, y, "type-2")
    _assert_factors_equal(ours, ggt, aat, model)


@pytest.mark.parametrize("mc_samples", [1, 3])
@pytest.mark.parametrize(("net", "loss"), CASES[3:], ids=IDS[3:])
def test_kfac_expand_equals_curvlinops_mc_with_shared_draws(net, loss, mc_samples, monkeypatch):
    model, loss_fn, x, y = _problem(net, loss)
    draws = _SharedDraws(monkeypatch)
    quantity = extensions.KFAC(mc_samples=mc_samples, conv="expand")
    ours = extensions.compute(model, loss_fn, x, y, quantity)["KFAC"]
    ggt, aat = _kfac_of_curvlinops(model, loss_fn, x, y, "mc", mc_samples, draws)
    assert draws.calls == mc_samples
    _assert_factors_equal(ours, ggt, aat, model)


@pytest.mark.parametrize("net", ["cnn-stride2-pad-dilation", "mini-3c3d"])
def test_kflr_expand_equals_the_brute_force_factors(net):
    """B: the GGN w.r.t. the layer output, summed over equal positions; A: ``sum u u^T / (N S)``."""
    model, loss_fn, x, y = _problem(net, "ce-mean")
    rng = torch.get_rng_state()
    trace = build_trace(model, loss_fn, x, y)
    ours = extensions.compute(model, loss_fn, x, y, extensions.KFLR(conv="expand"))["KFLR"]
    for rec in trace.records:
        if not isinstance(rec.module, nn.Linear | nn.Conv2d):
            continue
        positions = rec.output[0, 0].numel() if rec.output.dim() == 4 else 1
        b = output_ggn_factor(model, loss_fn, x, y, rng, rec.module, conv="expand")
        _close(ours[rec.name + ".weight"][0], b, f"B {rec.name}")
        _close(ours[rec.name + ".weight"][1], input_factor(rec) / positions, f"A {rec.name}")


def test_default_is_backpacks_factorisation_and_expand_differs_where_it_should():
    """Default = BackPACK (Fig. 6 unchanged); its conv ``A`` is ``S`` x expand's, ``B`` differs."""
    model, loss_fn, x, y = _problem("mini-3c3d", "ce-mean")
    default = extensions.compute(model, loss_fn, x, y, "KFLR")["KFLR"]
    expand = extensions.compute(model, loss_fn, x, y, extensions.KFLR(conv="expand"))["KFLR"]
    assert extensions.KFLR() == extensions.KFLR(conv="backpack")
    assert extensions.KFAC().conv == "backpack"
    trace = build_trace(model, loss_fn, x, y)
    for rec in trace.records:
        if not isinstance(rec.module, nn.Linear | nn.Conv2d):
            continue
        (b0, a0), (b1, a1) = default[rec.name + ".weight"], expand[rec.name + ".weight"]
        if isinstance(rec.module, nn.Conv2d):
            _close(a0, a1 * rec.output[0, 0].numel(), f"A scaling {rec.name}")
            assert (b0 - b1).abs().max() > 1e-3 * b0.abs().max()
        else:
            _close(b0, b1, f"B {rec.name}")
            _close(a0, a1, f"A {rec.name}")


def test_a_perturbed_or_backpack_factor_fails_the_curvlinops_comparison():
    model, loss_fn, x, y = _problem("mini-3c3d", "ce-mean")
    ggt, aat = _kfac_of_curvlinops(model, loss_fn, x, y, "type-2")
    ours = extensions.compute(model, loss_fn, x, y, extensions.KFLR(conv="expand"))["KFLR"]
    _assert_factors_equal(ours, ggt, aat, model)
    for which in (0, 1):
        perturbed = copy.deepcopy(ours)
        perturbed["4.weight"][which] = perturbed["4.weight"][which] * (1 + 1e-6)
        with pytest.raises(AssertionError):
            _assert_factors_equal(perturbed, ggt, aat, model)
    backpack = extensions.compute(model, loss_fn, x, y, "KFLR")["KFLR"]
    with pytest.raises(AssertionError):
        _assert_factors_equal(backpack, ggt, aat, model)


def test_unknown_conv_factorisation_is_rejected():
    with pytest.raises(ValueError, match="backpack, expand"):
        extensions.KFAC(conv="reduce")


# ---------------------------------------------------------------------------------------------
# EKFAC
# ---------------------------------------------------------------------------------------------


def ekfac_matrix(result: dict, model: nn.Module) -> Tensor:
    """The dense block-diagonal EKFAC matrix (parameter order) from our result format."""
    blocks = []
    for name, _ in model.named_parameters():
        value = result[name]
        if len(value) == 3:
            q_b, q_a, lam = value
            q = torch.kron(q_b, q_a)
            blocks.append(q @ torch.diag(lam.flatten()) @ q.T)
        else:
            q_b, lam_b = value
            blocks.append(q_b @ torch.diag(lam_b) @ q_b.T)
    return torch.block_diag(*blocks)


def _ekfac_of_curvlinops(model, loss_fn, x, y, fisher_type, mc_samples=1, draws=None) -> Tensor:
    op = _curvlinops(
        curvlinops.EKFACLinearOperator, model, loss_fn, x, y, fisher_type, mc_samples, draws
    )
    dim = sum(p.numel() for p in model.parameters())
    return torch.as_tensor(op @ torch.eye(dim, dtype=torch.float64))


@pytest.mark.parametrize(("net", "loss"), CASES, ids=IDS)
def test_ekfac_exact_equals_curvlinops_type2(net, loss):
    model, loss_fn, x, y = _problem(net, loss)
    ours = extensions.compute(model, loss_fn, x, y, "EKFACExact")["EKFACExact"]
    _close(ekfac_matrix(ours, model), _ekfac_of_curvlinops(model, loss_fn, x, y, "type-2"), "EKFAC")


@pytest.mark.parametrize("mc_samples", [1, 2])
@pytest.mark.parametrize(("net", "loss"), CASES[3:], ids=IDS[3:])
def test_ekfac_mc_equals_curvlinops_with_shared_draws(net, loss, mc_samples, monkeypatch):
    model, loss_fn, x, y = _problem(net, loss)
    draws = _SharedDraws(monkeypatch)
    quantity = extensions.EKFAC(mc_samples=mc_samples)
    ours = extensions.compute(model, loss_fn, x, y, quantity)["EKFAC"]
    theirs = _ekfac_of_curvlinops(model, loss_fn, x, y, "mc", mc_samples, draws)
    assert draws.calls == 2 * mc_samples  # curvlinops: a factor pass and a correction pass
    _close(ekfac_matrix(ours, model), theirs, "EKFAC MC")


@pytest.mark.parametrize("net", ["cnn-zeropad-maxpool-ceil", "mini-3c3d"])
def test_ekfac_exact_is_the_ggn_diagonal_in_the_kflr_eigenbasis(net):
    """Brute force: ``lam_ij = (q_B,i x q_A,j)^T G (q_B,i x q_A,j)`` with the dense GGN ``G``."""
    model, loss_fn, x, y = _problem(net, "ce-mean")
    rng = torch.get_rng_state()
    res = extensions.compute(model, loss_fn, x, y, ["EKFACExact", extensions.KFLR(conv="expand")])
    ggn, params = ggn_matrix(model, loss_fn, x, y, rng)
    offset = 0
    for name, p in params.items():
        block = ggn[offset : offset + p.numel(), offset : offset + p.numel()]
        offset += p.numel()
        value = res["EKFACExact"][name]
        factors = res["KFLR"][name]
        q = torch.kron(value[0], value[1]) if len(value) == 3 else value[0]
        _close(value[-1].flatten(), torch.diagonal(q.T @ block @ q), f"lam {name}")
        for basis, factor in zip(value[:-1], factors):  # eigenvectors of the KFLR factors
            _close(basis.T @ basis, torch.eye(len(basis), dtype=basis.dtype), f"Q^T Q {name}")
            rotated = basis.T @ factor @ basis
            _close(rotated, torch.diag(torch.diagonal(rotated)), f"Q^T F Q {name}")


def test_ekfac_propagates_once_within_budget_and_twice_when_chunked(monkeypatch):
    """Default budget: basis and correction in the one propagation of the columns. A budget
    too small for one chunk: ``B`` first, the correction in a second propagation; same result.
    (Either way inside the one autograd backward of ``compute``.)
    """
    model, loss_fn, x, y = _problem("mini-3c3d", "ce-mean", batch_size=6)
    passes = []
    needs = ekfac.EkfacTarget.needs_second_pass

    def counting(self, engine):
        passes.append(needs(self, engine))
        return passes[-1]

    monkeypatch.setattr(ekfac.EkfacTarget, "needs_second_pass", counting)
    quantities = ["EKFACExact", "EKFAC"]
    torch.manual_seed(1)  # the same MC draw both times
    full = extensions.compute(model, loss_fn, x, y, quantities)
    assert passes == [False, False]
    torch.manual_seed(1)
    chunked = extensions.compute(model, loss_fn, x, y, quantities, memory_budget=20_000)
    assert passes == [False, False, True, True]
    for quantity in quantities:
        _close(
            ekfac_matrix(chunked[quantity], model), ekfac_matrix(full[quantity], model), quantity
        )


def test_a_perturbed_ekfac_fails_the_curvlinops_comparison():
    model, loss_fn, x, y = _problem("mini-3c3d", "ce-mean")
    ours = extensions.compute(model, loss_fn, x, y, "EKFACExact")["EKFACExact"]
    theirs = _ekfac_of_curvlinops(model, loss_fn, x, y, "type-2")
    _close(ekfac_matrix(ours, model), theirs, "EKFAC")
    for which in (0, 1, 2):
        perturbed = copy.deepcopy(ours)
        value = perturbed["4.weight"]
        value[which] = value[which] + 1e-5 * torch.randn_like(value[which])
        with pytest.raises(AssertionError):
            _close(ekfac_matrix(perturbed, model), theirs, "EKFAC")


@pytest.mark.parametrize("chunk", [1, 7, 2**22])
def test_expand_output_factor_equals_the_transposed_gram(monkeypatch, chunk):
    """B = sum_{v,n,s} s s^T over chunks of (column, sample) products equals the Gram of the
    columns laid out as [V N S, out], in float64 (one chunk, several, a ragged last one)."""
    from extensions import second_order

    monkeypatch.setattr(second_order, "_EXPAND_CHUNK_ELEMENTS", chunk * 5 * 5)
    mat = torch.randn(3, 4, 5, 6, 7, dtype=torch.float64)
    s = mat.flatten(3).transpose(2, 3).reshape(-1, 5)
    torch.testing.assert_close(second_order._expand_output_factor(mat), s.t() @ s)


# ---------------------------------------------------------------------------------------------
# EKFAC's fast paths vs their definitions (float64)
# ---------------------------------------------------------------------------------------------


def _orthogonal(k: int, gen: torch.Generator) -> Tensor:
    return torch.linalg.qr(torch.randn(k, k, dtype=torch.float64, generator=gen))[0]


def _lam_by_definition(rec, mat: Tensor, q_b: Tensor, q_a: Tensor) -> tuple[Tensor, Tensor]:
    """``sum_{v,n} (Q_B^T G_{v,n} Q_A)^2`` from explicit per-(column, sample) gradients."""
    m = rec.module
    if isinstance(m, nn.Conv2d):  # the unfolded input, by torch's own im2col
        geometry = dict(dilation=m.dilation, padding=m.padding, stride=m.stride)
        u = F.unfold(rec.input, m.kernel_size, **geometry).transpose(1, 2)  # [n, S, K]
        s = mat.flatten(3).transpose(2, 3)  # [V, n, S, out]
    else:
        u, s = rec.input.unsqueeze(1), mat.unsqueeze(2)
    g = torch.einsum("vnso,nsk->vnok", s, u)
    lam = (q_b.T @ g @ q_a).square().sum((0, 1))
    lam_b = (s.sum(2) @ q_b).square().sum((0, 1))
    return lam, lam_b


@pytest.mark.parametrize("temporaries", ["fresh", "dirty-scratch"])
@pytest.mark.parametrize("order", ["patches", "gradients"])
@pytest.mark.parametrize(
    ("layer", "in_shape"),
    [
        (nn.Conv2d(3, 4, 3, padding=1), (3, 5, 5)),  # S = 25 <= K = 27: Q_B on the columns
        (nn.Conv2d(2, 5, 2, stride=2), (2, 8, 8)),  # S = 16 > K = 8: Q_B after G
        (nn.Linear(6, 3), (6,)),  # S = 1
    ],
    ids=["conv-S25-K27", "conv-S16-K8", "linear"],
)
def test_ekfac_correction_equals_its_definition_either_way(
    layer, in_shape, order, temporaries, monkeypatch
):
    """Both orders (rotate the patches, or form G and rotate it), in several sample chunks.

    "dirty-scratch" hands every temporary out NaN-filled (a reused buffer holds old values).
    """
    gen = torch.Generator().manual_seed(0)
    layer = layer.double()
    x = torch.randn(5, *in_shape, dtype=torch.float64, generator=gen)
    out = layer(x)
    padded = [d + 1 for d in out.shape[2:]]  # conv: a cropped view, as after a ZeroPad2d
    mat = torch.randn(3, *out.shape[:2], *padded, dtype=torch.float64, generator=gen)  # V = 3
    mat = mat[..., :-1, :-1] if padded else mat
    rec = type("Rec", (), {"module": layer, "input": x})()
    k = layer.weight[0].numel()
    q_b, q_a = _orthogonal(out.shape[1], gen), _orthogonal(k, gen)
    monkeypatch.setattr(ekfac, "gradients_first", lambda *a: order == "gradients")
    scratch = per_sample.fresh_scratch
    if temporaries == "dirty-scratch":
        scratch = lambda name, numel, like: like.new_full((numel,), float("nan"))  # noqa: E731
    elements = 2 * 3 * out.shape[1] * k
    lam, lam_b = ekfac.corrections(rec, mat, q_b, q_a, max_elements=elements, scratch=scratch)
    expected, expected_b = _lam_by_definition(rec, mat, q_b, q_a)
    _close(lam, expected, "lam")
    _close(lam_b, expected_b, "lam_b")
    with pytest.raises(AssertionError):
        _close(lam, _lam_by_definition(rec, mat, q_b, q_a.flip(1))[0], "a wrong basis")


def test_gradients_first_on_3c3d_conv1_and_conv2_not_conv3():
    assert ekfac.gradients_first(1, 784, 64, 75)  # conv1: S 784, out 64, K 75
    assert ekfac.gradients_first(1, 144, 96, 576)  # conv2
    assert not ekfac.gradients_first(1, 36, 128, 864)  # conv3
    assert not ekfac.gradients_first(100, 144, 96, 576)  # many columns: rotate the patches


@pytest.mark.parametrize("rows", [1, 3, 5])
def test_eigenbasis_of_rows_diagonalises_the_factor_like_eigh(rows):
    """Orthonormal, ``Q^T F Q`` diagonal with eigh's ascending eigenvalues (zeros first); also
    for rank-deficient rows (a repeated row)."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(rows, 13, dtype=torch.float64, generator=gen)
    x = torch.cat([x, x[:1]])  # rank <= rows < rows + 1
    assert ekfac.rows_basis_is_cheaper(x)
    factor = x.T @ x
    q = ekfac.eigenbasis_of_rows(x)
    _close(q.T @ q, torch.eye(13, dtype=torch.float64), "Q^T Q")
    rotated = q.T @ factor @ q
    _close(rotated, torch.diag(torch.linalg.eigvalsh(factor)), "Q^T F Q")
    assert not ekfac.rows_basis_is_cheaper(torch.zeros(7, 13))


@pytest.mark.parametrize("zero_column", [False, True])
def test_complete_householder_q_equals_lapacks_complete_qr(zero_column):
    """The compact-WY ``Q`` equals ``torch.linalg.qr(mode="complete")``'s, also where a
    reflector is the identity (``tau = 0``: a zero column)."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(9, 4, dtype=torch.float64, generator=gen)
    if zero_column:
        x[:, 1] = 0
    h, tau = torch.geqrf(x)
    assert (tau == 0).any() == zero_column
    _close(ekfac.complete_householder_q(h, tau), torch.linalg.qr(x, mode="complete")[0], "Q")
