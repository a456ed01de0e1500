"""The peer libraries' steps against BackPACK 1.7.1 in float64, on tiny nets.

Scaling to BackPACK's conventions (what ``bench.overhead.peers`` converts; every test below fails
when a factor is wrong): nngeometry's Jacobian rows are ``g_n`` (BackPACK: ``g_n / N``); ASDL's
batch gradients are already ``g_n / N``; the Fisher diagonals (ASDL, nngeometry) have factor 1;
curvlinops' and ASDL's linear-layer factors have factor 1 each; nngeometry's ``A`` carries
``sqrt(#outputs)`` and its ``B`` ``1/sqrt(#outputs)`` (#outputs = C - 1 for the exact Fisher, 1 for
one MC sample). MC quantities are checked in expectation: the mean over many steps against the
exact quantity.
"""

import copy

import pytest
import torch
from torch import nn

import extensions
from bench.overhead import peers
from bench.overhead.backends import get_backend
from bench.overhead.plan import PlanOptions, default_plan
from bench.overhead.problem_setup import problem_setup
from bench.overhead.run import classify_error

pytestmark = pytest.mark.filterwarnings("ignore")
N = 6
MC_STEPS = 150
MC_RTOL = 0.15  # the mean of 150 one-sample estimates at N=6: a few percent off, a factor N not


def _available(name):
    ok, why = get_backend(name).available()
    if not ok:
        pytest.skip(why)


def _net(name):
    torch.manual_seed(0)
    return problem_setup(name).model_fn().double()


def _batch(name, n=N):
    x, y = problem_setup(name).staged_batches(n, torch.device("cpu"), count=1)[0]
    return x.double(), y


def small_map_cnn():
    """A conv whose 2x2 output map sends ASDL's diagonal to its inexact ``x² g²`` branch."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(32, 3)
    ).double()


def _results(backend, net, x, y, quantity, seed=None):
    if seed is not None:
        torch.manual_seed(seed)
    step = get_backend(backend).step_fn(copy.deepcopy(net), nn.CrossEntropyLoss(), quantity)
    step(x, y)
    return step.results


def _assert_equal(got, expected, names=None):
    for name in names or expected:
        g, e = got[name], expected[name]
        for a, b in zip(g, e) if isinstance(e, list) else [(g, e)]:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


EXACT_CASES = [
    ("asdl", "DiagGGNExact"),
    ("nngeometry", "DiagGGNExact"),
    ("curvlinops", "KFLR"),
    ("asdl", "KFLR"),
    ("nngeometry", "KFLR"),
    ("asdl", "SumGradSquared"),
    ("asdl", "Variance"),
    ("nngeometry", "SumGradSquared"),
    ("nngeometry", "Variance"),
]


@pytest.mark.parametrize(("backend", "quantity"), EXACT_CASES)
def test_exact_quantities_equal_backpack_on_an_mlp(backend, quantity):
    _available(backend)
    _available("backpack")
    net, (x, y) = _net("tiny_mlp"), _batch("tiny_mlp")
    expected = _results("backpack", net, x, y, quantity)
    got = _results(backend, net, x, y, quantity)
    assert got.keys() == expected.keys()
    _assert_equal(got, expected)
    assert get_backend(backend).note(net, (3, 4, 4), quantity) == ""


def test_nngeometry_jacobian_rows_are_n_times_backpacks_batch_grad():
    _available("nngeometry")
    from nngeometry.jacobian import Jacobian
    from nngeometry.layercollection import LayerCollection

    net, (x, y) = _net("tiny_mlp"), _batch("tiny_mlp")
    lc = LayerCollection.from_model(net)

    def per_sample_loss(inputs, targets):
        return nn.functional.cross_entropy(net(inputs), targets, reduction="none")

    raw = Jacobian(net, (x, y), function=per_sample_loss, layer_collection=lc).to_torch()[0]
    ours_scaled = _results("nngeometry", net, x, y, "BatchGrad")
    flat = torch.cat([ours_scaled[k].flatten(1) for k in ("1.weight", "1.bias")], 1)
    torch.testing.assert_close(raw[:, : flat.shape[1]], N * flat)


MC_CASES = [
    ("curvlinops", "KFAC", "KFLR"),
    ("asdl", "KFAC", "KFLR"),
    ("nngeometry", "KFAC", "KFLR"),
    ("asdl", "DiagGGNMC", "DiagGGNExact"),
    ("nngeometry", "DiagGGNMC", "DiagGGNExact"),
]


@pytest.mark.parametrize(("backend", "quantity", "exact"), MC_CASES)
def test_mc_quantities_average_to_the_exact_ones(backend, quantity, exact):
    """One MC label per sample: the mean over steps is the exact GGN's (KFAC: the B factor)."""
    _available(backend)
    _available("backpack")
    net, (x, y) = _net("tiny_mlp"), _batch("tiny_mlp")
    expected = _results("backpack", net, x, y, exact)
    step = get_backend(backend).step_fn(copy.deepcopy(net), nn.CrossEntropyLoss(), quantity)
    total = {}
    for seed in range(MC_STEPS):
        torch.manual_seed(seed)
        step(x, y)
        for name, value in step.results.items():
            b = value[0] if isinstance(value, list) else value
            total[name] = total.get(name, 0) + b / MC_STEPS
            if isinstance(value, list) and len(value) == 2:  # the A factor is not sampled
                torch.testing.assert_close(value[1], expected[name][1])
    for name, mean in total.items():
        e = expected[name][0] if isinstance(expected[name], list) else expected[name]
        assert (mean - e).norm() <= MC_RTOL * e.norm(), name


@pytest.mark.parametrize("backend", ["curvlinops", "asdl", "nngeometry"])
def test_ekfac_corrected_eigenvalues_sum_to_the_ggn_trace(backend):
    """``sum S = 1/N sum_n ||G_n||²`` in any eigenbasis: in expectation the exact GGN's trace."""
    _available(backend)
    _available("backpack")
    net, (x, y) = _net("tiny_mlp"), _batch("tiny_mlp")
    diag = _results("backpack", net, x, y, "DiagGGNExact")
    step = get_backend(backend).step_fn(copy.deepcopy(net), nn.CrossEntropyLoss(), "EKFAC")
    total = {}
    for seed in range(MC_STEPS):
        torch.manual_seed(seed)
        step(x, y)
        for name, value in step.results.items():
            q_b, *q_a, s = value
            assert torch.allclose(q_b.T @ q_b, torch.eye(len(q_b), dtype=q_b.dtype))
            total[name] = total.get(name, 0) + s.sum().item() / MC_STEPS
    joint = backend == "nngeometry"  # one eigenbasis for weight and bias together
    for layer in ("1", "3"):
        expected = diag[f"{layer}.weight"].sum().item()
        if joint:
            expected += diag[f"{layer}.bias"].sum().item()
        else:
            assert total[f"{layer}.bias"] == pytest.approx(
                diag[f"{layer}.bias"].sum().item(), rel=MC_RTOL
            )
        assert total[f"{layer}.weight"] == pytest.approx(expected, rel=MC_RTOL)
    assert (get_backend(backend).note(net, (3, 4, 4), "EKFAC") != "") == joint


@pytest.mark.parametrize("backend", ["curvlinops", "asdl", "nngeometry"])
def test_conv_kronecker_factors_differ_from_backpacks_and_are_labelled(backend):
    """The peers' conv KFLR is KFC expand: ``(1/N sum g gᵀ) ⊗ (1/(N S) sum x xᵀ)``.

    curvlinops and ASDL put the ``1/S`` on ``A``, nngeometry on ``B``: the products agree (checked
    against a brute-force expand product), and differ from BackPACK's.
    """
    _available(backend)
    _available("backpack")
    net, (x, y) = _net("tiny_cnn"), _batch("tiny_cnn")
    expected = _results("backpack", net, x, y, "KFLR")
    got = _results(backend, net, x, y, "KFLR")
    _assert_equal(got, expected, ["6.weight", "6.bias"])  # the linear layer: the same
    conv = net[3]
    out_map = {}
    handle = conv.register_forward_hook(lambda m, i, o: out_map.update(x=i[0], out=o))
    logits = net(x)
    handle.remove()
    patches = nn.functional.unfold(out_map["x"], 3).transpose(1, 2).flatten(0, 1)  # (N S) x d
    positions = out_map["out"][0, 0].numel()
    a_expand = patches.T @ patches / (N * positions)
    probs = logits.softmax(1)
    b_expand = 0
    for c in range(logits.shape[1]):  # exact loss Hessian: sqrt(p_c) (e_c - p) columns
        column = probs.sqrt()[:, c : c + 1] * (torch.eye(len(probs.T), dtype=x.dtype)[c] - probs)
        (g,) = torch.autograd.grad(logits, out_map["out"], column, retain_graph=True)
        g = g.permute(0, 2, 3, 1).flatten(0, 2)  # (N S) x c_out, of the per-sample loss
        b_expand = b_expand + g.T @ g / N
    b, a = got["3.weight"]
    torch.testing.assert_close(torch.kron(b, a), torch.kron(b_expand, a_expand))
    assert not torch.allclose(torch.kron(b, a), torch.kron(*expected["3.weight"]))
    for quantity in ("KFAC", "KFLR"):  # ours keep BackPACK's conv factors
        assert get_backend(backend).note(net, (3, 8, 8), quantity).startswith("differs:")
    ours_expand = extensions.compute(
        net, nn.CrossEntropyLoss(), x, y, [extensions.KFLR(conv="expand")]
    )
    torch.testing.assert_close(torch.kron(*ours_expand["KFLR"]["3.weight"]), torch.kron(b, a))


def test_asdl_small_map_conv_diagonal_differs_and_is_labelled():
    _available("asdl")
    _available("backpack")
    net = small_map_cnn()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(N, 3, 6, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (N,), generator=gen)
    expected = _results("backpack", net, x, y, "DiagGGNExact")
    got = _results("asdl", net, x, y, "DiagGGNExact")
    assert peers.asdl_inexact_diagonal(net, (3, 6, 6)) == ["2"]
    assert "differs" in get_backend("asdl").note(net, (3, 6, 6), "DiagGGNExact")
    assert not torch.allclose(got["2.weight"], expected["2.weight"])
    _assert_equal(got, expected, ["0.weight", "4.weight"])  # the 4x4 map and the linear layer
    # on tiny_cnn ASDL takes the exact branch everywhere: equal, no label
    cnn, (xc, yc) = _net("tiny_cnn"), _batch("tiny_cnn")
    _assert_equal(
        _results("asdl", cnn, xc, yc, "DiagGGNExact"),
        _results("backpack", cnn, xc, yc, "DiagGGNExact"),
    )
    assert get_backend("asdl").note(cnn, (3, 8, 8), "DiagGGNExact") == ""


@pytest.mark.parametrize(
    ("backend", "quantity", "loops"),
    [
        ("curvlinops", "KFLR", True),
        ("asdl", "DiagGGNExact", True),
        ("nngeometry", "KFLR", True),
        ("asdl", "KFAC", False),
    ],
)
def test_class_looping_steps_are_bounded(backend, quantity, loops):
    _available(backend)
    net, (x, y) = _net("tiny_mlp"), _batch("tiny_mlp")
    step = get_backend(backend).step_fn(copy.deepcopy(net), nn.CrossEntropyLoss(), quantity)
    step.bound_s = 0.0
    if not loops:
        step(x, y)
        assert step.results
        return
    with pytest.raises(peers.StepOverBudget, match="class backward passes") as info:
        step(x, y)
    assert classify_error(info.value) == "bounded"
    fresh = get_backend(backend).step_fn(copy.deepcopy(net), nn.CrossEntropyLoss(), quantity)
    fresh(x, y)
    assert fresh.results


def test_plan_labels_rows_and_accepts_ekfac(monkeypatch):
    plan = default_plan(
        PlanOptions(
            problems=("tiny_cnn",),
            quantities=("KFLR", "BatchGrad", "EKFAC"),
            backends=("ours", "curvlinops", "asdl", "nngeometry"),
            batch_sizes=(4,),
        )
    )
    notes = {(m.backend, m.quantity): m.note for m in plan}
    assert notes[("curvlinops", "KFLR")].startswith("differs:")
    assert notes[("asdl", "BatchGrad")] == ""
    # ours EKFAC has the expand factors too: the same quantity as curvlinops' on a conv net
    assert notes[("curvlinops", "EKFAC")] == ""
    assert notes[("nngeometry", "EKFAC")].startswith("differs:")  # joint weight/bias basis
    from extensions import quantities

    assert ("ours", "EKFAC") in notes and get_backend("ours").supports("EKFAC")
    monkeypatch.setattr(quantities, "EXTRA", ())
    assert not get_backend("ours").supports("EKFAC")
