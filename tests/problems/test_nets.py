"""The rebuilt networks on their own: structure, TF "same" padding, init, dropout, devices."""

import math

import pytest
import torch
from torch import nn

import problems
from problems.nets import (
    STANDARD_MODULES,
    build_2c2d,
    build_3c3d,
    build_3c3d_sigmoid,
    build_allcnnc,
    build_mnist_logreg,
)

NAMES = problems.names() + problems.VARIANTS
#: the architectures DeepOBS initialises with Xavier (conv normal, linear uniform)
XAVIER = ("3c3d", "3c3dsig", "allcnnc")

#: DeepOBS's padding type per layer with a kernel, in forward order (problems spec §1.2, §1.3).
TF_PADDING = {
    "3c3d": [
        "valid",
        "same",
        "valid",
        "same",
        "same",
        "same",
    ],  # conv1 pool1 conv2 pool2 conv3 pool3
    "allcnnc": ["same"] * 6 + ["valid", "same", "same"],  # conv1..conv9
    "2c2d": ["same"] * 4,  # conv1 pool1 conv2 pool2
    "logreg": [],
}
TF_PADDING["3c3dsig"] = TF_PADDING["3c3d"]


def tf_same_padding(size, kernel, stride):
    """TensorFlow's 'same' padding (before, after) of one spatial dimension."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def applied_padding(model, x):
    """For each Conv2d/MaxPool2d: (unpadded input H, W, kernel, stride, (left, right, top, bottom)).

    The padding counts both a ZeroPad2d directly before the layer and the layer's own padding.
    """
    children = list(model.children())
    inputs = {}
    hooks = [
        m.register_forward_pre_hook(lambda mod, args: inputs.__setitem__(id(mod), args[0].shape))
        for m in children
    ]
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    found = []
    for i, m in enumerate(children):
        if not isinstance(m, nn.Conv2d | nn.MaxPool2d):
            continue
        own_h, own_w = _pair(m.padding)
        pad = [own_w, own_w, own_h, own_h]
        source = m
        if i > 0 and isinstance(children[i - 1], nn.ZeroPad2d):
            source = children[i - 1]
            pad = [a + b for a, b in zip(pad, children[i - 1].padding)]
        if isinstance(m, nn.MaxPool2d):
            assert m.ceil_mode is False
        height, width = inputs[id(source)][-2:]
        found.append((height, width, _pair(m.kernel_size), _pair(m.stride), tuple(pad)))
    return found


@pytest.mark.parametrize("name", NAMES)
def test_one_flat_sequential_of_standard_modules(name):
    model = problems.get(name).model()
    assert type(model) is nn.Sequential
    for child_name, child in model.named_children():
        assert not list(child.children()), f"{child_name} is nested"
        assert type(child) in STANDARD_MODULES, f"{child_name}: {type(child).__name__}"
    # parameter names are the readable child names
    assert all(n.split(".")[0] in dict(model.named_children()) for n, _ in model.named_parameters())


@pytest.mark.parametrize("name", NAMES)
def test_padding_is_tensorflow_same_or_valid_as_in_deepobs(name):
    problem = problems.get(name)
    found = applied_padding(problem.model(), torch.zeros(1, *problem.input_shape))
    expected_types = TF_PADDING[problem.architecture]
    assert len(found) == len(expected_types)
    for (height, width, kernel, stride, pad), kind in zip(found, expected_types):
        if kind == "valid":
            assert pad == (0, 0, 0, 0)
        else:
            left, right = tf_same_padding(width, kernel[1], stride[1])
            top, bottom = tf_same_padding(height, kernel[0], stride[0])
            assert pad == (left, right, top, bottom), (height, width, kernel, stride)
    # the asymmetric cases exist on CIFAR: TF puts the odd pixel right/bottom
    assert any(p[4] == (0, 1, 0, 1) for p in found) == (problem.architecture in XAVIER)


@pytest.mark.parametrize("name", NAMES)
def test_output_shape_and_dtype(name):
    problem = problems.get(name)
    model = problem.model()
    assert next(model.parameters()).dtype == torch.float32
    out = model.eval()(torch.randn(2, *problem.input_shape))
    assert out.shape == (2, problem.num_classes)


@pytest.mark.parametrize("name", [n for n in NAMES if problems.get(n).architecture in XAVIER])
def test_initialisation_follows_deepobs_scheme(name):
    problem = problems.get(name)
    model = problem.model()
    conv_bias = 0.1 if problem.architecture == "allcnnc" else 0.0
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            assert torch.all(module.bias == conv_bias)
            w = module.weight
            fan_in, fan_out = w.shape[1] * w[0, 0].numel(), w.shape[0] * w[0, 0].numel()
            std = math.sqrt(2.0 / (fan_in + fan_out))  # xavier_normal_
            if w.numel() > 10_000:
                assert w.std().item() == pytest.approx(std, rel=0.05)
                assert w.mean().abs().item() < 0.05 * std
        if isinstance(module, nn.Linear):
            assert torch.all(module.bias == 0.0)
            w = module.weight
            bound = math.sqrt(6.0 / (w.shape[0] + w.shape[1]))  # xavier_uniform_
            assert w.abs().max().item() <= bound
            if w.numel() > 10_000:
                assert w.abs().max().item() > 0.99 * bound
                assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)


@pytest.mark.parametrize("name", NAMES)
def test_seed_determines_weights(name):
    problem = problems.get(name)
    torch.manual_seed(3)
    a = problem.model()
    torch.manual_seed(3)
    b = problem.model()
    torch.manual_seed(4)
    c = problem.model()
    for (pname, p), q, r in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(p, q)
        if pname.endswith("weight") and problem.architecture != "logreg":  # logreg: all 0
            assert not torch.equal(p, r), pname


@pytest.mark.parametrize("name", NAMES)
def test_dropout_only_in_allcnnc_train_mode(name):
    problem = problems.get(name)
    model = problem.model()
    x = torch.randn(2, *problem.input_shape)
    with torch.no_grad():
        train_a, train_b = model.train()(x), model(x)
        eval_a, eval_b = model.eval()(x), model(x)
    assert torch.equal(eval_a, eval_b)
    if problem.architecture == "allcnnc":
        assert not torch.equal(train_a, train_b)
        # DeepOBS quirk: ReLU before the global average pool, so the logits are >= 0
        assert torch.all(eval_a >= 0)
    else:
        assert torch.equal(train_a, eval_a)


@pytest.mark.parametrize("name", NAMES)
def test_model_dtype_casts_after_cpu_init(name):
    problem = problems.get(name)
    torch.manual_seed(5)
    single = problem.model()
    torch.manual_seed(5)
    double = problem.model(dtype=torch.float64)
    for p, q in zip(single.parameters(), double.parameters()):
        assert q.dtype == torch.float64
        assert torch.equal(p.double(), q)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", NAMES)
def test_cuda_model_has_cpu_initial_weights(name):
    problem = problems.get(name)
    torch.manual_seed(6)
    cpu = problem.model().eval()
    torch.manual_seed(6)
    gpu = problem.model(device="cuda").eval()
    for p, q in zip(cpu.parameters(), gpu.parameters()):
        assert q.is_cuda
        assert torch.equal(p, q.cpu())
    x = torch.randn(2, *problem.input_shape)
    with torch.no_grad():
        torch.testing.assert_close(gpu(x.cuda()).cpu(), cpu(x), rtol=1e-4, atol=1e-4)


BUILDERS = [build_3c3d, build_allcnnc, build_3c3d_sigmoid, build_mnist_logreg, build_2c2d]


@pytest.mark.parametrize("builder", BUILDERS, ids=lambda b: b.__name__)
@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "10"], ids=repr)
def test_builders_reject_bad_num_classes(builder, bad):
    with pytest.raises(ValueError, match="num_classes"):
        builder(bad)


def test_mnist_logreg_starts_at_zero_and_predicts_uniformly():
    model = problems.get("mnist_logreg").model()
    assert all(torch.all(p == 0) for p in model.parameters())
    out = model(torch.rand(3, 1, 28, 28))
    loss = problems.get("mnist_logreg").loss_fn()(out, torch.tensor([0, 4, 9]))
    assert torch.equal(out, torch.zeros(3, 10))
    torch.testing.assert_close(loss, torch.tensor(math.log(10)))


def test_2c2d_truncated_normal_init():
    """Weights within 2 std (0.05) of 0, with the truncated normal's std; biases 0.05."""
    model = problems.get("fmnist_2c2d").model(dtype=torch.float64)
    # std of a standard normal truncated to [-2, 2]: sqrt(1 - 2 * 2 * phi(2) / (Phi(2) - Phi(-2)))
    phi = math.exp(-2.0) / math.sqrt(2 * math.pi)
    mass = math.erf(2 / math.sqrt(2))
    truncated_std = 0.05 * math.sqrt(1 - 4 * phi / mass)
    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert len(layers) == 4
    for module in layers:
        assert torch.all(module.bias == torch.tensor(0.05, dtype=torch.float32).double())
        w = module.weight
        assert w.abs().max().item() <= 2 * 0.05
        assert w.std().item() == pytest.approx(truncated_std, rel=0.1)


def test_sigmoid_variant_swaps_exactly_one_activation():
    relu, sig = build_3c3d(10), build_3c3d_sigmoid(10)
    kinds = [type(m) for m in relu.children()], [type(m) for m in sig.children()]
    changed = [i for i, (a, b) in enumerate(zip(*kinds)) if a is not b]
    assert len(kinds[0]) == len(kinds[1]) and len(changed) == 1
    (i,) = changed
    assert kinds[0][i] is nn.ReLU and kinds[1][i] is nn.Sigmoid
    assert list(sig.named_children())[i - 1][0] == "dense2"
