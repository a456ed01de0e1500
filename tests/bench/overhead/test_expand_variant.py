"""Ours with the peers' KFC-expand conv factors (``ours_expand``): the same quantity (issue 15).

On a conv net the peers' KFAC/KFLR rows are labelled ``differs`` against ours (BackPACK's conv
factors). ``ours_expand`` / ``ours_perstep_expand`` time ours with the expand factors: checked here
against each peer's KFLR in float64 (Kronecker products equal; nngeometry moves the ``1/S`` from
``A`` to ``B``, so only the product is compared), planned next to the peers, and compared with the
peers' rows in the support matrix's "ahead of" statements.
"""

import copy

import pandas as pd
import pytest
import torch
from torch import nn

from bench.overhead import support_matrix
from bench.overhead.backends import get_backend
from bench.overhead.peers import EXPAND_CONV, EXPAND_OURS, same_quantity
from bench.overhead.plan import PlanOptions, default_plan
from bench.overhead.problem_setup import problem_setup
from tests.bench.overhead.test_support_matrix import _row

pytestmark = pytest.mark.filterwarnings("ignore")
N = 6


def _available(name):
    ok, why = get_backend(name).available()
    if not ok:
        pytest.skip(why)


def _results(backend, net, x, y, quantity):
    step = get_backend(backend).step_fn(copy.deepcopy(net), nn.CrossEntropyLoss(), quantity)
    step(x, y)
    results = step.results
    step.close()
    return results


def _tiny_cnn():
    torch.manual_seed(0)
    setup = problem_setup("tiny_cnn")
    x, y = setup.staged_batches(N, torch.device("cpu"), count=1)[0]
    return setup.model_fn().double(), x.double(), y


@pytest.mark.parametrize("backend", ["curvlinops", "asdl", "nngeometry"])
def test_ours_expand_kflr_is_each_peers_conv_kflr(backend):
    _available(backend)
    net, x, y = _tiny_cnn()
    peer = _results(backend, net, x, y, "KFLR")
    for variant in ("ours_expand", "ours_perstep_expand"):
        ours = _results(variant, net, x, y, "KFLR")
        for name in ("3.weight", "6.weight"):  # the conv and the linear layer
            torch.testing.assert_close(
                torch.kron(*ours[name]), torch.kron(*peer[name]), rtol=1e-9, atol=1e-12
            )
        if backend != "nngeometry":  # same factors one by one, the bias' B too
            for name in ("3.weight", "3.bias"):
                for a, b in zip(ours[name], peer[name]):
                    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    backpack_factors = _results("ours", net, x, y, "KFLR")["3.weight"]
    assert not torch.allclose(torch.kron(*backpack_factors), torch.kron(*peer["3.weight"]))


def test_ours_expand_rows_are_planned_and_labelled():
    plan = default_plan(
        PlanOptions(
            problems=("tiny_cnn", "tiny_mlp"),
            quantities=("BatchGrad", "KFAC", "KFLR", "EKFAC"),
            backends=("ours", "ours_expand", "ours_perstep_expand", "curvlinops"),
            batch_sizes=(4,),
        )
    )
    notes = {(m.problem, m.backend, m.quantity): m.note for m in plan}
    for variant in ("ours_expand", "ours_perstep_expand"):
        for q in ("KFAC", "KFLR"):
            assert notes[("tiny_cnn", variant, q)] == EXPAND_OURS
            assert notes[("tiny_mlp", variant, q)] == ""  # no conv: both factorisations agree
            assert same_quantity(variant, notes[("tiny_cnn", "curvlinops", q)])
            assert not same_quantity("ours", notes[("tiny_cnn", "curvlinops", q)])
        assert not any(b == variant and q in ("BatchGrad", "EKFAC") for _, b, q in notes)
    assert notes[("tiny_cnn", "curvlinops", "KFAC")] == EXPAND_CONV


def test_peer_kfac_on_conv_nets_is_compared_with_ours_expand_only():
    df = pd.DataFrame(
        [
            _row("ours", "KFAC", 1.5),
            _row("ours_perstep", "KFAC", 1.55),
            _row("ours_expand", "KFAC", 1.6, EXPAND_OURS),
            _row("ours_perstep_expand", "KFAC", 1.65, EXPAND_OURS),
            _row("curvlinops", "KFAC", 2.0, EXPAND_CONV),
            _row("asdl", "KFAC", 1.62, EXPAND_CONV),
            _row("nngeometry", "KFAC", 3.0, "differs: something else entirely"),
            _row("ours_perstep", "BatchGrad", 1.2),
            _row("asdl", "BatchGrad", 3.0),
        ]
    )
    text = support_matrix.render(df)
    assert "KFAC: ours_expand ahead of curvlinops (1.60 vs 2.00)" in text
    assert "KFAC: ours_expand ahead of asdl (1.60 vs 1.62)" in text
    assert "KFAC: ours_perstep_expand behind asdl (1.65 vs 1.62)" in text
    assert "BatchGrad: ours_perstep ahead of asdl (1.20 vs 3.00)" in text
    for variant in ("ours", "ours_perstep"):  # BackPACK's conv factors: not the same quantity
        assert f"KFAC: {variant} ahead of" not in text
    assert "nngeometry (" not in text  # a differs row of another kind is compared with nothing
    assert "| KFAC | 1.50 | 1.55 | 1.60 | 1.65 | 2.00 (differs) |" in text
