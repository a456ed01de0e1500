"""Backward passes per step, counted (issue 15): ours' EKFAC takes one, curvlinops' 2 (MC) or 2C.

A pass is one propagation of a gradient through the network: counted by a tensor hook on the
first layer's output, which fires once per backward (``loss.backward()`` or ``autograd.grad``)
that reaches the first layer. The support matrix states these counts; here they are measured.
"""

import copy

import pytest
import torch
from torch import nn

from bench.overhead import support_matrix
from bench.overhead.backends import get_backend
from bench.overhead.problem_setup import TINY_PROBLEMS, problem_setup

pytestmark = pytest.mark.filterwarnings("ignore")
N = 6
CLASSES = TINY_PROBLEMS["tiny_cnn"][1]


def _available(name):
    ok, why = get_backend(name).available()
    if not ok:
        pytest.skip(why)


def _problem():
    torch.manual_seed(0)
    setup = problem_setup("tiny_cnn")
    x, y = setup.staged_batches(N, torch.device("cpu"), count=1)[0]
    return setup.model_fn().double(), x.double(), y


def count_passes(model: nn.Module) -> list[int]:
    """Count the backward passes through ``model``'s first layer (a one-element list, live)."""
    count = [0]

    def on_output(module, inputs, output):
        output.register_hook(lambda grad: count.__setitem__(0, count[0] + 1))

    model[0].register_forward_hook(on_output)
    return count


def _step_passes(backend: str, quantity: str) -> int:
    net, x, y = _problem()
    step = get_backend(backend).step_fn(copy.deepcopy(net), nn.CrossEntropyLoss(), quantity)
    count = count_passes(step.model)
    step(x, y)
    assert step.results or quantity == "grad"
    passes = count[0]
    step.close()
    return passes


@pytest.mark.parametrize(
    ("backend", "quantity", "expected"),
    [
        ("pytorch", "grad", 1),
        ("ours", "EKFAC", 1),
        ("ours_perstep", "EKFAC", 1),
        ("ours", "KFLR", 1),
        ("ours_expand", "KFLR", 1),
        ("curvlinops", "EKFAC", 1 + 2),  # the plain gradient, then factors and correction (MC)
        ("curvlinops", "KFAC", 1 + 1),
        ("curvlinops", "KFLR", 1 + CLASSES),
        ("nngeometry", "EKFAC", 1 + 2),  # the plain gradient, MC Fisher, diagonal update
        ("nngeometry", "KFLR", 1 + CLASSES - 1),
    ],
)
def test_backward_passes_of_a_step(backend, quantity, expected):
    _available(backend)
    assert _step_passes(backend, quantity) == expected


@pytest.mark.parametrize(("fisher_type", "expected"), [("mc", 2), ("type-2", 2 * CLASSES)])
def test_curvlinops_ekfac_takes_two_passes_mc_and_2c_type2(fisher_type, expected):
    """``EKFACLinearOperator`` alone: factors, then the eigenvalue correction, each 1 or C passes.

    Ours computes both EKFACs (MC and exact) inside the gradient's one backward.
    """
    _available("curvlinops")
    from curvlinops import EKFACLinearOperator

    net, x, y = _problem()
    count = count_passes(net)
    params = [p for p in net.parameters() if p.requires_grad]
    op = EKFACLinearOperator(
        net,
        nn.CrossEntropyLoss(),
        params,
        [(x, y)],
        check_deterministic=False,
        fisher_type=fisher_type,
        num_data=N,
        num_per_example_loss_terms=1,
    )
    op.compute_eigenvalue_correction()
    assert count[0] == expected

    import extensions

    ours_net = copy.deepcopy(net)
    ours_count = count_passes(ours_net)
    quantity = "EKFAC" if fisher_type == "mc" else "EKFACExact"
    extensions.compute(ours_net, nn.CrossEntropyLoss(), x, y, quantity)
    assert ours_count[0] == 1 < expected


def test_support_matrix_states_the_measured_counts():
    row = support_matrix.MATRIX["EKFAC"]
    assert row["ours"].startswith("1 backward")
    assert row["curvlinops"].startswith("2 MC backwards")
    assert row["nngeometry"].startswith("2 MC backwards + plain")
    assert support_matrix.MATRIX["KFLR"]["curvlinops"].startswith("C backwards")
    assert support_matrix.MATRIX["KFLR"]["nngeometry"].startswith("C-1 backwards")
