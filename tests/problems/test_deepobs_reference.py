"""Our rebuilt networks against the installed DeepOBS 1.1.2 PyTorch reference (problems spec §2.2).

Equal means bit for bit here: the rebuild runs the very same torch ops as DeepOBS (only the padding
is static instead of computed by a hook), so any difference is a bug.
"""

import copy
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import problems

pytestmark = pytest.mark.reference

_spec = importlib.util.spec_from_file_location(
    "curvbench_tests_deepobs_loader", Path(__file__).with_name("deepobs_loader.py")
)
loader = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = loader  # dataclasses look their module up there
_spec.loader.exec_module(loader)

DEEPOBS_PROBLEMS = tuple(loader.DEEPOBS_NETS)
DTYPES = [pytest.param(torch.float32, id="float32"), pytest.param(torch.float64, id="float64")]
#: Parameter counts instantiated from DeepOBS (problems spec §1.2, §1.3).
DEEPOBS_COUNTS = {"cifar10_3c3d": 895_210, "cifar100_3c3d": 918_340, "cifar100_allcnnc": 1_387_108}


@pytest.fixture(scope="module")
def deepobs():
    try:
        return loader.load_deepobs()
    except loader.DeepOBSUnavailable as err:
        pytest.skip(f"reference deepobs not importable: {err}")


def _pair(deepobs, name, seed=0, dtype=torch.float32):
    """(ours, reference) built from the same seed, ours overwritten with the reference's values."""
    torch.manual_seed(seed)
    ref = deepobs.net(name)
    ours = problems.get(name).model()
    with torch.no_grad():
        for p, q in zip(ours.parameters(), ref.parameters(), strict=True):
            p.copy_(q)
    return ours.to(dtype), ref.to(dtype)


def _inputs(dtype, n=2):
    gen = torch.Generator().manual_seed(123)
    x = torch.randn(n, 3, 32, 32, generator=gen, dtype=dtype)
    y = torch.randint(0, 10, (n,), generator=gen)
    return x, y


@pytest.mark.parametrize("seed", [0, 42])
@pytest.mark.parametrize("name", DEEPOBS_PROBLEMS)
def test_initial_parameters_bit_identical(deepobs, name, seed):
    torch.manual_seed(seed)
    ref = deepobs.net(name)
    rng_after_ref = torch.random.get_rng_state()
    torch.manual_seed(seed)
    ours = problems.get(name).model()
    ours_params = list(ours.named_parameters())
    ref_params = list(ref.named_parameters())
    assert len(ours_params) == len(ref_params)
    for (name_ours, p), (name_ref, q) in zip(ours_params, ref_params):
        assert p.shape == q.shape, (name_ours, name_ref)
        assert p.dtype == q.dtype == torch.float32
        assert torch.equal(p, q), f"{name_ours} differs from DeepOBS {name_ref}"
    # the same random numbers were consumed, so what is drawn afterwards is identical too
    assert torch.equal(torch.random.get_rng_state(), rng_after_ref)


@pytest.mark.parametrize("name", DEEPOBS_PROBLEMS)
def test_parameter_counts(deepobs, name):
    ref_count = sum(p.numel() for p in deepobs.net(name).parameters())
    problem = problems.get(name)
    assert problem.num_parameters() == ref_count == DEEPOBS_COUNTS[name]
    assert sum(p.numel() for p in problem.model().parameters()) == ref_count


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", DEEPOBS_PROBLEMS)
def test_eval_outputs_identical(deepobs, name, dtype):
    ours, ref = _pair(deepobs, name, dtype=dtype)
    x, _ = _inputs(dtype)
    ours.eval()
    ref.eval()
    with torch.no_grad():
        out, expected = ours(x), ref(x)
    assert out.shape == (2, problems.get(name).num_classes)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", DEEPOBS_PROBLEMS)
def test_train_outputs_identical_with_same_dropout_rng(deepobs, name, dtype):
    ours, ref = _pair(deepobs, name, dtype=dtype)
    x, _ = _inputs(dtype)
    ours.train()
    ref.train()
    with torch.no_grad():
        torch.manual_seed(7)
        out = ours(x)
        torch.manual_seed(7)
        expected = ref(x)
        torch.manual_seed(8)
        other_mask = ours(x)
    assert torch.equal(out, expected)
    has_dropout = any(isinstance(m, nn.Dropout) for m in ours.modules())
    # control: with dropout, another RNG state gives other masks and outputs
    assert has_dropout == (not torch.equal(out, other_mask))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", DEEPOBS_PROBLEMS)
def test_l2_penalty_and_gradients_identical(deepobs, name, dtype):
    problem = problems.get(name)
    ours, ref = _pair(deepobs, name, dtype=dtype)
    ref_problem = deepobs.problem(name)
    ref_problem.net = ref
    ref_problem.regularization_groups = ref_problem.get_regularization_groups()
    assert ref_problem._weight_decay == problem.l2

    # same partition into regularised weights and unregularised biases, in the same order
    ours_groups = {g["l2"]: g["params"] for g in problem.l2_groups(ours)}
    ours_index = {id(p): i for i, p in enumerate(ours.parameters())}
    ref_index = {id(p): i for i, p in enumerate(ref.parameters())}
    assert sorted(ours_groups) == sorted(ref_problem.regularization_groups) == [0.0, problem.l2]
    for l2, params in ref_problem.regularization_groups.items():
        assert [ref_index[id(p)] for p in params] == [ours_index[id(p)] for p in ours_groups[l2]]

    penalty = problem.l2_penalty(ours)
    ref_penalty = ref_problem.get_regularization_loss()
    assert penalty.dtype == dtype
    assert torch.equal(penalty, ref_penalty)

    x, y = _inputs(dtype)
    ours.train()
    ref.train()
    torch.manual_seed(11)
    loss = problem.loss_fn()(ours(x), y) + problem.l2_penalty(ours)
    torch.manual_seed(11)
    ref_loss = nn.CrossEntropyLoss()(ref(x), y) + ref_problem.get_regularization_loss()
    loss.backward()
    ref_loss.backward()
    assert torch.equal(loss, ref_loss)
    for (pname, p), q in zip(ours.named_parameters(), ref.parameters()):
        assert torch.equal(p.grad, q.grad), pname


@pytest.mark.parametrize("name", DEEPOBS_PROBLEMS)
def test_symmetric_padding_variant_differs(deepobs, name):
    """The `padding=1` shortcut has the right shapes but wrong values: the comparison can tell."""
    ours, ref = _pair(deepobs, name)
    symmetric = copy.deepcopy(ours)
    pads = [m for m in symmetric.modules() if isinstance(m, nn.ZeroPad2d)]
    assert pads, "expected right/bottom TF 'same' pads"
    for pad in pads:
        pad.padding = (1, 1, 1, 1)  # == Conv2d/MaxPool2d(padding=1) after a ReLU
    x, _ = _inputs(torch.float32)
    for model in (ours, symmetric, ref):
        model.eval()
    with torch.no_grad():
        expected, out, wrong = ref(x), ours(x), symmetric(x)
    assert torch.equal(out, expected)
    assert wrong.shape == expected.shape
    assert (wrong - expected).abs().max() > 1e-3
