"""Second-order quantities vs brute force (torch.func / autograd, float64) on the small test nets.

Oracles:
* DiagGGNExact: diagonal of ``J^T (d^2 L / d f^2) J`` with ``J = jacrev(model output, params)``.
* DiagHessian: the diagonal of the Hessian of the reduced loss by double backward.
* KFLR: ``B`` = the GGN w.r.t. the layer output (summed over samples' diagonal blocks and, for
  convolutions, over both spatial positions) -- the bias GGN block; ``A`` = ``(1/N) sum x x^T`` of
  ``F.unfold`` patches.
* KFRA: the recursion ``G_in = (1/N) sum_n J_n^T G_out J_n`` with dense per-sample module
  Jacobians from ``jacrev``, started at the batch-summed loss Hessian.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

import extensions
from extensions.errors import UnsupportedModuleError
from extensions.second_order import check_supported, compute_second_order
from extensions.trace import LossRecord, Record, Trace
from tests.extensions.nets import LOSS_CASES, NET_CASES, make_problem

QUANTITIES = ("DiagGGNExact", "DiagHessian", "KFLR", "KFRA")
_CURVED_IDS = (
    "mlp-sigmoid",
    "mlp-tanh-dropout-nobias",
    "cnn-stride2-pad-dilation",
    "cnn-avgpool-adaptive",
)


# ---------------------------------------------------------------------------------------------
# Trace helper: records every leaf module with forward hooks (dropout masks re-drawn exactly)
# ---------------------------------------------------------------------------------------------


def build_trace(model: nn.Module, loss_fn: nn.Module, x: Tensor, y: Tensor) -> Trace:
    """Run forward + loss and record leaf modules in forward order (no backward)."""
    trace = Trace()
    names = {m: n for n, m in model.named_modules()}
    trace.param_names = {id(p): n for n, p in model.named_parameters()}
    handles = []
    states: dict[nn.Module, Tensor] = {}

    def pre_hook(module, inputs):
        if isinstance(module, nn.Dropout):
            states[module] = torch.get_rng_state()

    def hook(module, inputs, output):
        extra = {}
        if isinstance(module, nn.Dropout) and module.training:
            after = torch.get_rng_state()
            torch.set_rng_state(states[module])
            extra["mask"] = F.dropout(torch.ones_like(inputs[0]), module.p, True) != 0
            torch.set_rng_state(after)
        trace.records.append(
            Record(
                names[module],
                len(trace.records),
                module,
                inputs[0].detach(),
                output.detach(),
                extra,
            )
        )

    for m in model.modules():
        if not list(m.children()):
            handles.append(m.register_forward_pre_hook(pre_hook))
            handles.append(m.register_forward_hook(hook))
    try:
        out = model(x)
    finally:
        for h in handles:
            h.remove()
    trace.loss = LossRecord(loss_fn, out.detach(), y)
    return trace


# ---------------------------------------------------------------------------------------------
# Brute-force references
# ---------------------------------------------------------------------------------------------


def _functional(model, x, rng_state):
    params = {n: p.detach() for n, p in model.named_parameters()}

    def f(flat: Tensor) -> Tensor:
        torch.set_rng_state(rng_state)
        ps, i = {}, 0
        for n, p in params.items():
            ps[n] = flat[i : i + p.numel()].view_as(p)
            i += p.numel()
        return torch.func.functional_call(model, ps, (x,))

    flat = torch.cat([p.flatten() for p in params.values()])
    return f, flat, params


def _split(vec: Tensor, params: dict[str, Tensor]) -> dict[str, Tensor]:
    out, i = {}, 0
    for n, p in params.items():
        out[n] = vec[i : i + p.numel()].view_as(p)
        i += p.numel()
    return out


def _output_hessian(loss_fn, out, y):
    h = torch.func.hessian(lambda o: loss_fn(o, y))(out)
    return h.reshape(out.numel(), out.numel())


def ggn_matrix(model, loss_fn, x, y, rng_state) -> tuple[Tensor, dict[str, Tensor]]:
    """The dense GGN ``J^T (d^2 L / d f^2) J`` over all parameters, and the parameters."""
    f, flat, params = _functional(model, x, rng_state)
    jac = torch.func.jacrev(f)(flat)  # [N, C, P]
    out = f(flat).detach()
    jac = jac.reshape(out.numel(), -1)
    return jac.t() @ _output_hessian(loss_fn, out, y) @ jac, params


def ggn_diagonal(model, loss_fn, x, y, rng_state) -> dict[str, Tensor]:
    ggn, params = ggn_matrix(model, loss_fn, x, y, rng_state)
    return _split(torch.diagonal(ggn), params)


def hessian_diagonal(model, loss_fn, x, y, rng_state) -> dict[str, Tensor]:
    """Diagonal of the full Hessian (``torch.func.hessian``; models without train-mode dropout)."""
    f, flat, params = _functional(model, x, rng_state)
    hess = torch.func.hessian(lambda t: loss_fn(f(t), y))(flat)
    return _split(torch.diagonal(hess), params)


def output_ggn_factor(
    model, loss_fn, x, y, rng_state, layer: nn.Module, conv: str = "backpack"
) -> Tensor:
    """KFLR's B oracle: GGN w.r.t. an additive perturbation of ``layer``'s output.

    Summed over samples' diagonal blocks; for a convolution, over both spatial positions
    (``conv="backpack"``) or over equal positions only (``"expand"``, KFC).
    """
    with torch.no_grad():
        torch.set_rng_state(rng_state)
        shape = {}
        h = layer.register_forward_hook(lambda m, i, o: shape.update(s=o.shape))
        model(x)
        h.remove()
    n = x.shape[0]

    def f(delta: Tensor) -> Tensor:
        torch.set_rng_state(rng_state)
        h = layer.register_forward_hook(lambda m, i, o: o + delta)
        try:
            return model(x)
        finally:
            h.remove()

    delta = torch.zeros(shape["s"], dtype=x.dtype)
    out = f(delta).detach()
    jac = torch.func.jacrev(f)(delta).reshape(out.numel(), n, -1)  # [N*C, N, h]
    hess = _output_hessian(loss_fn, out, y)
    jac = jac.reshape(out.numel(), -1)
    ggn = (jac.t() @ hess @ jac).reshape(n, -1, n, jac.shape[1] // n)
    blocks = torch.stack([ggn[i, :, i, :] for i in range(n)]).sum(0)  # [h, h]
    if len(shape["s"]) == 4:
        c = shape["s"][1]
        blocks = blocks.reshape(c, -1, c, blocks.shape[0] // c)
        if conv == "expand":
            return torch.einsum("asbs->ab", blocks)
        blocks = blocks.sum((1, 3))
    return blocks


def input_factor(rec: Record) -> Tensor:
    x = rec.input
    if isinstance(rec.module, nn.Linear):
        return x.t() @ x / x.shape[0]
    m = rec.module
    u = F.unfold(x, m.kernel_size, dilation=m.dilation, padding=m.padding, stride=m.stride)
    return torch.einsum("nkt,njt->kj", u, u) / x.shape[0]


def kfra_factors(trace: Trace) -> dict[int, Tensor]:
    """Output factors by position, from the dense per-sample Jacobian recursion."""
    loss = trace.loss
    out = loss.input
    n = out.shape[0]
    hess = _output_hessian(loss.module, out, loss.target).reshape(n, out.shape[1], n, -1)
    g = torch.stack([hess[i, :, i, :] for i in range(n)]).sum(0)
    result = {}
    for rec in reversed(trace.records):
        if isinstance(rec.module, nn.Linear | nn.Conv2d):
            if rec.output.dim() == 4:
                c = rec.output.shape[1]
                result[rec.position] = g.reshape(c, -1, c, g.shape[0] // c).sum((1, 3))
            else:
                result[rec.position] = g
        jac = torch.func.jacrev(lambda t, m=rec.module: m(t))(rec.input)
        jac = jac.reshape(n, rec.output[0].numel(), n, rec.input[0].numel())
        g = sum(jac[i, :, i].t() @ g @ jac[i, :, i] for i in range(n)) / n
    return result


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


def _setup(net, loss, batch_size=3, eval_mode=False):
    model, loss_fn, x, y = make_problem(net, loss, batch_size=batch_size)
    if eval_mode:
        model.eval()
    rng = torch.get_rng_state()
    trace = build_trace(model, loss_fn, x, y)
    return model, loss_fn, x, y, rng, trace


def ours(model, loss_fn, x, y, rng, quantities, memory_budget=None) -> dict:
    """The real path: ``extensions.compute`` (hooks + trace + compute_second_order).

    The RNG is reset to ``rng`` first so dropout draws the same masks as the oracles. Every call
    also checks that ``.grad`` is plain autograd's.
    """
    rng = torch.get_rng_state() if rng is None else rng
    reference = copy.deepcopy(model)
    torch.set_rng_state(rng)
    loss_fn(reference(x), y).backward()
    torch.set_rng_state(rng)
    model.zero_grad(set_to_none=True)
    kwargs = {} if memory_budget is None else {"memory_budget": memory_budget}
    results = extensions.compute(model, loss_fn, x, y, list(quantities), **kwargs)
    for (name, p), r in zip(model.named_parameters(), reference.parameters()):
        _close(p.grad, r.grad, f".grad {name} with {list(quantities)}")
    return results


def _close(a: Tensor, b: Tensor, what: str) -> None:
    torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("loss", LOSS_CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("net", NET_CASES, ids=lambda c: c.id)
def test_diag_ggn_exact(net, loss):
    model, loss_fn, x, y, rng, trace = _setup(net, loss)
    res = ours(model, loss_fn, x, y, rng, ["DiagGGNExact"])["DiagGGNExact"]
    ggn = ggn_diagonal(model, loss_fn, x, y, rng)
    assert set(res) == set(ggn)
    for name in ggn:
        _close(res[name], ggn[name], f"DiagGGNExact {name}")


CURVED_NETS = [c for c in NET_CASES if c.id in _CURVED_IDS]
#: every net with cross-entropy/mean plus one other loss (cycling), so that each loss and
#: reduction meets convolutional and dense nets without the full cross product
PAIRED = [(net, LOSS_CASES[0]) for net in NET_CASES] + [
    (net, LOSS_CASES[1 + i % 3]) for i, net in enumerate(NET_CASES)
]
PAIRED_IDS = [f"{net.id}-{loss.id}" for net, loss in PAIRED]


CURVED_PAIRED = [(net, loss) for net in CURVED_NETS for loss in LOSS_CASES[:2]] + [
    (net, LOSS_CASES[2 + i % 2]) for i, net in enumerate(CURVED_NETS)
]


@pytest.mark.parametrize(
    ("net", "loss"), CURVED_PAIRED, ids=[f"{n.id}-{loss.id}" for n, loss in CURVED_PAIRED]
)
def test_diag_hessian(net, loss):
    """Nets with sigmoid/tanh (nonzero residuals); eval mode so torch.func.hessian is exact."""
    model, loss_fn, x, y, rng, trace = _setup(net, loss, eval_mode=True)
    res = ours(model, loss_fn, x, y, rng, ["DiagHessian"])["DiagHessian"]
    hess = hessian_diagonal(model, loss_fn, x, y, rng)
    assert set(res) == set(hess)
    for name in hess:
        _close(res[name], hess[name], f"DiagHessian {name}")


def test_diag_hessian_train_mode_dropout_and_relu_net():
    """Train-mode dropout net (tanh before dropout): double-backward Hessian diagonal."""
    net = next(c for c in NET_CASES if c.id == "mlp-tanh-dropout-nobias")
    model, loss_fn, x, y, rng, trace = _setup(net, LOSS_CASES[0])
    res = ours(model, loss_fn, x, y, rng, ["DiagHessian"])["DiagHessian"]
    f, flat, params = _functional(model, x, rng)
    flat = flat.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss_fn(f(flat), y), flat, create_graph=True)
    diag = torch.stack(
        [torch.autograd.grad(g[i], flat, retain_graph=True)[0][i] for i in range(flat.numel())]
    )
    for name, ref in _split(diag.detach(), params).items():
        _close(res[name], ref, f"DiagHessian {name}")


@pytest.mark.parametrize("p", [0.0, 0.5, 1.0], ids=["p0", "p05", "p1"])
def test_train_mode_dropout_probabilities(p):
    """Dropout's Jacobian in train mode: identity (p=0), mask / (1-p), zero (p=1, no 0/0)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Dropout(p), nn.Linear(4, 2))
    model = model.double().train()
    loss_fn = nn.CrossEntropyLoss()
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randint(0, 2, (5,))
    rng = torch.get_rng_state()
    res = ours(model, loss_fn, x, y, rng, ["DiagGGNExact", "KFLR"])
    ggn = ggn_diagonal(model, loss_fn, x, y, rng)
    for name in ggn:
        _close(res["DiagGGNExact"][name], ggn[name], f"DiagGGNExact {name} p={p}")
    assert all(torch.isfinite(f).all() for v in res["KFLR"].values() for f in v)


def test_diag_hessian_residuals_are_nonzero_on_sigmoid_net():
    """Guard: on a sigmoid net the Hessian diagonal differs from the GGN diagonal."""
    net = next(c for c in NET_CASES if c.id == "mlp-sigmoid")
    model, loss_fn, x, y, rng, trace = _setup(net, LOSS_CASES[0])
    res = ours(model, loss_fn, x, y, rng, ["DiagGGNExact", "DiagHessian"])
    diff = (res["DiagHessian"]["1.weight"] - res["DiagGGNExact"]["1.weight"]).abs().max()
    assert diff > 1e-4


@pytest.mark.parametrize(("net", "loss"), PAIRED, ids=PAIRED_IDS)
def test_kflr_factors(net, loss):
    model, loss_fn, x, y, rng, trace = _setup(net, loss)
    res = ours(model, loss_fn, x, y, rng, ["KFLR"])["KFLR"]
    for rec in trace.records:
        m = rec.module
        if not isinstance(m, nn.Linear | nn.Conv2d):
            continue
        b = output_ggn_factor(model, loss_fn, x, y, rng, m)
        w = rec.name + ".weight"
        assert len(res[w]) == 2
        _close(res[w][0], b, f"KFLR B {w}")
        _close(res[w][1], input_factor(rec), f"KFLR A {w}")
        if m.bias is not None:
            assert len(res[rec.name + ".bias"]) == 1
            _close(res[rec.name + ".bias"][0], b, f"KFLR bias {rec.name}")


#: each net once, the losses cycling (KFRA's dense oracle is the slowest)
CYCLED = [(net, LOSS_CASES[i % 4]) for i, net in enumerate(NET_CASES)]


@pytest.mark.parametrize(("net", "loss"), CYCLED, ids=[f"{n.id}-{loss.id}" for n, loss in CYCLED])
def test_kfra_recursion(net, loss):
    """Eval mode (dropout = identity) so the dense module Jacobians are deterministic."""
    model, loss_fn, x, y, rng, trace = _setup(net, loss, eval_mode=True)
    res = ours(model, loss_fn, x, y, rng, ["KFRA", "KFLR"])
    ref = kfra_factors(trace)
    last = max(ref)
    for rec in trace.records:
        if rec.position not in ref:
            continue
        w = rec.name + ".weight"
        _close(res["KFRA"][w][0], ref[rec.position], f"KFRA B {w}")
        _close(res["KFRA"][w][1], input_factor(rec), f"KFRA A {w}")
        if rec.position == last:  # last layer: KFRA = KFLR
            _close(res["KFRA"][w][0], res["KFLR"][w][0], "KFRA = KFLR on the last layer")


def test_quantities_together_equal_separately():
    """Sharing the exact stream / A factors does not change values."""
    net = next(c for c in NET_CASES if c.id == "mini-3c3d")
    model, loss_fn, x, y, rng, trace = _setup(net, LOSS_CASES[0], batch_size=4)
    together = ours(model, loss_fn, x, y, rng, QUANTITIES)
    for q in QUANTITIES:
        alone = ours(model, loss_fn, x, y, rng, [q])[q]
        for name, value in alone.items():
            if isinstance(value, list):
                for a, b in zip(value, together[q][name]):
                    _close(a, b, f"{q} {name}")
            else:
                _close(value, together[q][name], f"{q} {name}")


def test_kfac_kflr_refuse_linear_with_3d_input():
    model = nn.Sequential(nn.Linear(4, 3), nn.Flatten(), nn.Linear(6, 2)).double()
    x = torch.randn(5, 2, 4, dtype=torch.float64)
    y = torch.randint(0, 2, (5,))
    rng = torch.get_rng_state()
    for q in ("KFAC", "KFLR", "KFRA"):
        with pytest.raises(UnsupportedModuleError, match="2-d inputs"):
            ours(model, nn.CrossEntropyLoss(), x, y, rng, [q])
    # the diagonal quantities handle the 3-d input
    res = ours(model, nn.CrossEntropyLoss(), x, y, rng, ["DiagGGNExact"])["DiagGGNExact"]
    ref = ggn_diagonal(model, nn.CrossEntropyLoss(), x, y, rng)
    _close(res["0.weight"], ref["0.weight"], "3-d Linear input")


@pytest.mark.parametrize(
    "module",
    [nn.LeakyReLU(), nn.BatchNorm1d(4), nn.Conv2d(2, 2, 3, groups=2)],
    ids=["leakyrelu", "batchnorm", "grouped-conv"],
)
def test_unsupported_module_names_module_position_quantity(module):
    model = nn.Sequential(nn.Identity(), module)
    with pytest.raises(UnsupportedModuleError) as err:
        check_supported(model, ["DiagGGNExact"])
    msg = str(err.value)
    assert type(module).__name__ in msg and "position 1" in msg and "DiagGGNExact" in msg


def test_unsupported_loss():
    model = nn.Sequential(nn.Linear(3, 2)).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    trace = build_trace(model, nn.BCEWithLogitsLoss(), x, torch.rand(4, 2, dtype=torch.float64))
    with pytest.raises(UnsupportedModuleError, match="CrossEntropyLoss, MSELoss"):
        compute_second_order(trace, ["KFLR"])
    with pytest.raises(Exception, match="BCEWithLogitsLoss"):
        ours(
            model, nn.BCEWithLogitsLoss(), x, torch.rand(4, 2, dtype=torch.float64), None, ["KFLR"]
        )


def test_unknown_quantity_lists_valid_names():
    with pytest.raises(ValueError, match="DiagGGNExact"):
        check_supported(nn.Sequential(nn.Linear(2, 2)), ["DiagGGN"])


CONV_GEOMETRIES = [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=3, stride=2),
    dict(kernel_size=(3, 2), stride=(1, 2), padding=(2, 0), dilation=(1, 2)),
    dict(kernel_size=5, dilation=2, padding=3, stride=3),
    dict(kernel_size=(3, 5), padding=(1, 3), dilation=(2, 1)),  # asymmetric, wide padding
    dict(kernel_size=3, padding=3),  # every kernel column sees every image column
    dict(kernel_size=3, stride=(3, 1), padding=1),  # rows of a row shift not one progression
    dict(kernel_size=(2, 4)),  # no padding: boundary columns on both sides
    dict(kernel_size=3, dilation=(6, 1), padding=(6, 1)),  # kernel rows 0 and 2 never share data
]


def _factor_algorithms(geometry: dict) -> list[str]:
    """The A-factor algorithms that apply to ``geometry`` (column shifts need column stride 1)."""
    conv = nn.Conv2d(1, 1, **geometry)
    column_shifts = conv.stride[1] == 1 and conv.dilation[1] == 1
    return ["unfold", "kernel-column", *(["column-shift"] if column_shifts else [])]


@pytest.mark.parametrize(
    "geometry, algorithm",
    [(g, a) for g in CONV_GEOMETRIES for a in _factor_algorithms(g)],
    ids=lambda v: "-".join(map(str, v.values())) if isinstance(v, dict) else v,
)
@pytest.mark.parametrize("temporaries", ["fresh", "dirty-scratch"])
def test_conv_input_factor_algorithms(geometry, algorithm, temporaries, monkeypatch):
    """Each A-factor algorithm (row/column shifts, unfold chunks) equals the F.unfold definition.

    "dirty-scratch" hands every temporary out filled with NaN (a reused buffer holds the last
    layer's values): each must be overwritten or zeroed before it is read.
    """
    from extensions import kronecker, per_sample

    structured = algorithm != "unfold"
    monkeypatch.setattr(kronecker, "use_structured_input_factor", lambda x, m: structured)
    chosen = {
        "kernel-column": kronecker._kernel_column_blocks,
        "column-shift": kronecker._column_shift_blocks,
    }.get(algorithm)
    if chosen is not None:
        monkeypatch.setattr(kronecker, "row_block_algorithm", lambda x, m: chosen)
    monkeypatch.setattr(kronecker, "GRAM_BLOCK_ROWS", 8)  # K = 27..75: blocked Gram in use
    conv = nn.Conv2d(3, 2, **geometry).double()
    x = torch.randn(4, 3, 11, 10, dtype=torch.float64)
    rec = Record("c", 0, conv, x, conv(x).detach())
    scratch = per_sample.fresh_scratch
    if temporaries == "dirty-scratch":
        scratch = lambda name, numel, like: like.new_full((numel,), float("nan"))  # noqa: E731
    _close(kronecker.conv2d_input_factor(x, conv, scratch), input_factor(rec), "A")


@pytest.mark.parametrize(
    "channels, width, geometry, expected",
    [
        (96, 32, dict(kernel_size=3, padding=1), "_column_shift_blocks"),  # All-CNN-C
        (192, 16, dict(kernel_size=3, padding=1), "_column_shift_blocks"),
        (64, 14, dict(kernel_size=3), "_kernel_column_blocks"),  # 3C3D: 110 vs 108 columns
        (96, 33, dict(kernel_size=3, stride=2), "_kernel_column_blocks"),  # column stride 2
        (96, 32, dict(kernel_size=3, padding=1, dilation=(1, 2)), "_kernel_column_blocks"),
    ],
    ids=["allcnnc-32", "allcnnc-16", "3c3d-valid-14", "stride-2", "column-dilation"],
)
def test_conv_input_factor_picks_the_cheaper_row_algorithm(channels, width, geometry, expected):
    from extensions import kronecker

    x = torch.zeros(2, channels, width, width)
    chosen = kronecker.row_block_algorithm(x, nn.Conv2d(channels, 8, **geometry))
    assert chosen.__name__ == expected


@pytest.mark.parametrize("rows", [1, 5, 17, 64], ids=lambda k: f"K{k}")
@pytest.mark.parametrize("block_rows", [4, 1000], ids=["blocked", "one-block"])
@pytest.mark.parametrize("accumulate", [False, True], ids=["new", "into-out"])
def test_symmetric_gram_is_u_times_u_transposed(rows, block_rows, accumulate, monkeypatch):
    from extensions import kronecker

    monkeypatch.setattr(kronecker, "GRAM_BLOCK_ROWS", block_rows)
    u = torch.randn(rows, 9, dtype=torch.float64)
    start = torch.randn(rows, rows, dtype=torch.float64)
    start = start + start.T
    expected = u @ u.T + (start if accumulate else 0)
    got = kronecker.symmetric_gram(u, out=start.clone() if accumulate else None)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("chunk_elements", [1, 2**30], ids=["row-chunks", "one-call"])
@pytest.mark.parametrize("geometry", CONV_GEOMETRIES, ids=lambda g: "-".join(map(str, g.values())))
def test_conv_jac_t_is_the_input_gradient_of_every_column(geometry, chunk_elements, monkeypatch):
    """Chunked transposed convolutions of a cropped ``[V, N, ...]`` view = autograd's backward."""
    from extensions import derivatives

    monkeypatch.setattr(derivatives, "JAC_T_CHUNK_ELEMENTS", chunk_elements)
    conv = nn.Conv2d(3, 2, **geometry).double()
    x = torch.randn(4, 3, 11, 10, dtype=torch.float64)
    out = conv(x).detach()
    padded = torch.randn(5, 4, 2, out.shape[2] + 1, out.shape[3] + 1, dtype=torch.float64)
    mat = padded[..., 1:, :-1]  # non-contiguous, as after a ZeroPad2d backward
    got = derivatives.conv2d_jac_t(Record("c", 0, conv, x, out), mat)
    expected = torch.stack(
        [
            torch.nn.grad.conv2d_input(
                x.shape, conv.weight, col, conv.stride, conv.padding, conv.dilation
            )
            for col in mat
        ]
    )
    torch.testing.assert_close(got, expected)
