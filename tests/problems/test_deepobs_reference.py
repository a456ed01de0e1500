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
from problems import nets

pytestmark = pytest.mark.reference

_spec = importlib.util.spec_from_file_location(
    "curvbench_tests_deepobs_loader", Path(__file__).with_name("deepobs_loader.py")
)
loader = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = loader  # dataclasses look their module up there
_spec.loader.exec_module(loader)

DEEPOBS_PROBLEMS = tuple(loader.DEEPOBS_NETS)
DTYPES = [pytest.param(torch.float32, id="float32"), pytest.param(torch.float64, id="float64")]
#: Parameter counts instantiated from DeepOBS (problems spec §1.2, §1.3; gridsearch spec §5.2).
DEEPOBS_COUNTS = {
    "cifar10_3c3d": 895_210,
    "cifar100_3c3d": 918_340,
    "cifar100_allcnnc": 1_387_108,
    "mnist_logreg": 7_850,
    "fmnist_2c2d": 3_274_634,
}


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


def _inputs(dtype, name, n=2):
    gen = torch.Generator().manual_seed(123)
    x = torch.randn(n, *problems.get(name).input_shape, generator=gen, dtype=dtype)
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
    x, _ = _inputs(dtype, name)
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
    x, _ = _inputs(dtype, name)
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


def _ref_problem(deepobs, name, ref):
    """DeepOBS's problem object for ``name`` with ``ref`` as its network."""
    ref_problem = deepobs.problem(name)
    ref_problem.net = ref
    ref_problem.regularization_groups = ref_problem.get_regularization_groups()
    return ref_problem


def _assert_same_loss_and_gradients(problem, ours, ref_problem, x, y):
    """Training loss (CE + L2) and every gradient equal DeepOBS's bit for bit (same dropout)."""
    ref = ref_problem.net
    ours.train()
    ref.train()
    torch.manual_seed(11)
    loss = problem.loss_fn()(ours(x), y) + problem.l2_penalty(ours)
    torch.manual_seed(11)
    ref_loss = nn.CrossEntropyLoss()(ref(x), y) + ref_problem.get_regularization_loss()
    loss.backward()
    ref_loss.backward()
    assert torch.equal(loss, ref_loss)
    for (pname, p), q in zip(ours.named_parameters(), ref.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad), pname


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", DEEPOBS_PROBLEMS)
def test_l2_penalty_and_gradients_identical(deepobs, name, dtype):
    problem = problems.get(name)
    ours, ref = _pair(deepobs, name, dtype=dtype)
    ref_problem = _ref_problem(deepobs, name, ref)
    assert (ref_problem._weight_decay or 0.0) == problem.l2  # unregularised: None in DeepOBS

    # same partition into regularised weights and unregularised biases (one group of all
    # parameters, l2 0, for the unregularised problems)
    ours_index = {id(p): i for i, p in enumerate(ours.parameters())}
    ref_index = {id(p): i for i, p in enumerate(ref.parameters())}
    ours_groups = {}
    for group in problem.l2_groups(ours):
        ours_groups.setdefault(group["l2"], []).extend(ours_index[id(p)] for p in group["params"])
    ref_groups = {
        l2: sorted(ref_index[id(p)] for p in params)
        for l2, params in ref_problem.regularization_groups.items()
    }
    assert {l2: sorted(v) for l2, v in ours_groups.items()} == ref_groups
    assert sorted(ref_groups) == sorted({0.0, problem.l2})

    penalty = problem.l2_penalty(ours)
    ref_penalty = torch.as_tensor(ref_problem.get_regularization_loss(), dtype=dtype)
    assert penalty.dtype == dtype
    assert torch.equal(penalty, ref_penalty)

    _assert_same_loss_and_gradients(problem, ours, ref_problem, *_inputs(dtype, name))


@pytest.mark.parametrize("name", [n for n in DEEPOBS_PROBLEMS if n.startswith("cifar")])
def test_symmetric_padding_variant_differs(deepobs, name):
    """The `padding=1` shortcut has the right shapes but wrong values: the comparison can tell."""
    ours, ref = _pair(deepobs, name)
    symmetric = copy.deepcopy(ours)
    pads = [m for m in symmetric.modules() if isinstance(m, nn.ZeroPad2d)]
    assert pads, "expected right/bottom TF 'same' pads"
    for pad in pads:
        pad.padding = (1, 1, 1, 1)  # == Conv2d/MaxPool2d(padding=1) after a ReLU
    x, _ = _inputs(torch.float32, name)
    for model in (ours, symmetric, ref):
        model.eval()
    with torch.no_grad():
        expected, out, wrong = ref(x), ours(x), symmetric(x)
    assert torch.equal(out, expected)
    assert wrong.shape == expected.shape
    assert (wrong - expected).abs().max() > 1e-3


def _first_difference(deepobs, name, perturb=lambda: None, seed=0):
    """The first parameter of ours (built after ``perturb()``) that differs from DeepOBS's."""
    torch.manual_seed(seed)
    ref = deepobs.net(name)
    perturb()
    torch.manual_seed(seed)
    ours = problems.get(name).model()
    for (pname, p), q in zip(ours.named_parameters(), ref.parameters(), strict=True):
        if not torch.equal(p, q):
            return pname
    return None


def _normal_init(tensor, std, mean=0.0):
    """A close look-alike of DeepOBS's init: torch's own truncated normal, same std and cut."""
    return nn.init.trunc_normal_(tensor, mean, std, -2 * std, 2 * std)


@pytest.mark.parametrize(
    "perturb",
    [
        pytest.param(lambda mp: mp.setattr(nets, "TRUNCATED_NORMAL_STD", 0.051), id="std-0.051"),
        pytest.param(lambda mp: mp.setattr(nets, "tf_truncated_normal_", _normal_init), id="torch"),
    ],
)
def test_a_perturbed_2c2d_init_is_detected(deepobs, monkeypatch, perturb):
    """The bit-identity test above would catch an init that is merely statistically right."""
    assert _first_difference(deepobs, "fmnist_2c2d", lambda: perturb(monkeypatch)) == "conv1.weight"


def test_a_perturbed_logreg_init_is_detected(deepobs, monkeypatch):
    def keep_default_init():  # after DeepOBS's net is built: ours keeps nn.Linear's own init
        monkeypatch.setattr(nets.nn.init, "constant_", lambda tensor, value: tensor)

    assert _first_difference(deepobs, "mnist_logreg") is None
    assert _first_difference(deepobs, "mnist_logreg", keep_default_init) == "dense.weight"


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_variant_is_deepobs_3c3d_with_a_sigmoid_after_dense2(deepobs, dtype):
    """cifar10_3c3dsig (not in DeepOBS): DeepOBS's 3C3D, its relu5 swapped for a Sigmoid."""
    variant = problems.get("cifar10_3c3dsig")
    assert variant.in_deepobs is False and variant.name not in problems.names()
    torch.manual_seed(0)
    ref = deepobs.net("cifar10_3c3d")
    ref.relu5 = nn.Sigmoid()  # replaces the module in place, keeping the order
    torch.manual_seed(0)
    ours = variant.model()
    for p, q in zip(ours.parameters(), ref.parameters(), strict=True):
        assert torch.equal(p, q)
    assert [type(m) for m in ours.children()].count(nn.Sigmoid) == 1
    assert isinstance(ours.sigmoid5, nn.Sigmoid)
    ours, ref = ours.to(dtype), ref.to(dtype)
    x, y = _inputs(dtype, "cifar10_3c3d")
    _assert_same_loss_and_gradients(variant, ours, _ref_problem(deepobs, "cifar10_3c3d", ref), x, y)
    # and it is not the ReLU network
    relu = problems.get("cifar10_3c3d").model(dtype=dtype)
    relu.load_state_dict(ours.state_dict())
    with torch.no_grad():
        assert not torch.equal(relu(x), ours(x))
