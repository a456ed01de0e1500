"""Public API: names vs objects, result keys, hooks removed, error paths, accumulation, dropout."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import extensions
from extensions import hooks
from tests.extensions.nets import LOSS_CASES, individual_gradients, make_problem, net_case

HAS_SECOND_ORDER = importlib.util.find_spec("extensions.second_order") is not None
needs_second_order = pytest.mark.skipif(not HAS_SECOND_ORDER, reason="no extensions.second_order")


def problem(case="mini-3c3d", batch_size=3):
    return make_problem(net_case(case), LOSS_CASES[0], batch_size)


def snapshot(model):
    """Everything a context could leave behind on the modules."""
    return [
        (
            name,
            dict(m._forward_hooks),
            dict(m._forward_pre_hooks),
            dict(m._backward_hooks),
            dict(getattr(m, "_backward_pre_hooks", {})),
            "forward" in m.__dict__,
        )
        for name, m in model.named_modules()
    ]


# ------------------------------------------------------------------------------------------------
# names, objects, keys
# ------------------------------------------------------------------------------------------------


def test_public_names():
    assert extensions.QUANTITIES == extensions.FIRST_ORDER + extensions.SECOND_ORDER
    assert len(extensions.QUANTITIES) == 10
    for name in extensions.QUANTITIES:
        assert getattr(extensions, name)().name == name


@pytest.mark.parametrize(
    "spec",
    [
        ["BatchGrad", "Variance"],
        [extensions.BatchGrad(), extensions.Variance()],
        [extensions.BatchGrad, extensions.Variance],
    ],
    ids=["names", "objects", "classes"],
)
def test_names_objects_and_classes_agree(spec):
    model, loss_fn, x, y = problem()
    ref = extensions.compute(copy.deepcopy(model), loss_fn, x, y, ["BatchGrad", "Variance"])
    res = extensions.compute(model, loss_fn, x, y, spec)
    assert list(res) == ["BatchGrad", "Variance"]
    for q in res:
        for name in ref[q]:
            torch.testing.assert_close(res[q][name], ref[q][name], rtol=0, atol=0)


def test_result_keys_are_named_parameters_in_order():
    model, loss_fn, x, y = problem()
    res = extensions.compute(model, loss_fn, x, y, "SumGradSquared")
    assert list(res["SumGradSquared"]) == [n for n, _ in model.named_parameters()]


def test_frozen_parameters_get_no_result_and_no_grad():
    model, loss_fn, x, y = problem()
    model[0].weight.requires_grad_(False)
    res = extensions.compute(model, loss_fn, x, y, ["BatchGrad"])
    assert "0.weight" not in res["BatchGrad"] and "0.bias" in res["BatchGrad"]
    assert model[0].weight.grad is None


def test_same_quantity_twice_with_different_settings_is_rejected():
    model, loss_fn, x, y = problem()
    with pytest.raises(ValueError, match="requested twice"):
        extensions.compute(
            model, loss_fn, x, y, [extensions.DiagGGNMC(1), extensions.DiagGGNMC(mc_samples=2)]
        )


@needs_second_order
def test_mixed_first_and_second_order():
    model, loss_fn, x, y = problem("mlp-sigmoid")
    res = extensions.compute(model, loss_fn, x, y, ["BatchL2Grad", extensions.DiagGGNMC(2)])
    names = [n for n, _ in model.named_parameters()]
    assert list(res) == ["BatchL2Grad", "DiagGGNMC"]
    assert list(res["DiagGGNMC"]) == names
    for name, p in model.named_parameters():
        assert res["DiagGGNMC"][name].shape == p.shape
        assert res["BatchL2Grad"][name].shape == (3,)


# ------------------------------------------------------------------------------------------------
# the context manager leaves nothing behind
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("quantities", [["BatchGrad"], ["BatchL2Grad", "Variance"]])
def test_context_removes_everything(quantities):
    model, loss_fn, x, y = problem("mini-allcnnc")
    before = snapshot(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with extensions.collect(model, loss_fn, *quantities) as results:
        assert snapshot(model) != before  # something was installed
        loss_fn(model(x), y).backward()
    assert set(results) == set(quantities)
    assert snapshot(model) == before
    assert snapshot(loss_fn) == snapshot(nn.CrossEntropyLoss())
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])
    for m in model.modules():  # stock forward, not a wrapper: the model pays nothing afterwards
        assert m.forward.__func__ is type(m).forward


def test_context_removes_everything_after_an_exception():
    model, loss_fn, x, y = problem()
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"), extensions.collect(model, loss_fn, "BatchGrad"):
        raise RuntimeError("boom")
    assert snapshot(model) == before


def test_model_outputs_unchanged_inside_and_after():
    model, loss_fn, x, y = problem("mini-allcnnc")
    state = torch.get_rng_state()
    plain = model(x)
    torch.set_rng_state(state)
    with extensions.collect(model, loss_fn, "BatchGrad", "SumGradSquared"):
        inside = model(x)
    torch.set_rng_state(state)
    after = model(x)
    assert torch.equal(plain, inside) and torch.equal(plain, after)


def test_no_grad_forward_inside_context_is_ignored():
    """Evaluation forwards (no_grad) do not count as a second use of the parameters."""
    model, loss_fn, x, y = problem()
    with extensions.collect(model, loss_fn, "BatchGrad") as results:
        with torch.no_grad():
            model(x)
        loss_fn(model(x), y).backward()
    assert results["BatchGrad"]["0.weight"].shape == (3, *model[0].weight.shape)


# ------------------------------------------------------------------------------------------------
# .grad accumulation and per-backward results
# ------------------------------------------------------------------------------------------------


def test_grad_accumulates_like_autograd_and_results_are_overwritten():
    model, loss_fn, x, y = problem()
    reference = copy.deepcopy(model)
    x2 = torch.randn_like(x)
    for inp in (x, x2):
        loss_fn(reference(inp), y).backward()
    with extensions.collect(model, loss_fn, "BatchGrad") as results:
        loss_fn(model(x), y).backward()
        loss_fn(model(x2), y).backward()
    for p, r in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, r.grad)
    expected = individual_gradients(copy.deepcopy(reference), loss_fn, x2, y)
    for name, value in results["BatchGrad"].items():
        torch.testing.assert_close(value, expected[name])


def _batch_grad_twice(keep):
    """Two backward passes in one context; ``keep`` picks what the caller holds from the first.

    Returns the held object, a clone of it taken after the first pass, the data pointers of
    both passes' results and the second pass's results with its brute-force reference.
    """
    model, loss_fn, x, y = problem(batch_size=4)
    x2 = torch.randn_like(x)
    with extensions.collect(model, loss_fn, "BatchGrad") as results:
        loss_fn(model(x), y).backward()
        held = keep(results["BatchGrad"])
        snapshot_ = copy.deepcopy(held)
        first = {n: v.data_ptr() for n, v in results["BatchGrad"].items()}
        loss_fn(model(x2), y).backward()
        second = {n: v.data_ptr() for n, v in results["BatchGrad"].items()}
        got = {n: v.clone() for n, v in results["BatchGrad"].items()}
    expected = individual_gradients(model, loss_fn, x2, y)
    return held, snapshot_, first, second, got, expected


def test_batch_grad_buffers_are_reused_when_nobody_holds_them():
    held, _, first, second, got, expected = _batch_grad_twice(lambda r: None)
    weights = [n for n in first if n.endswith("weight")]
    assert weights and all(first[n] == second[n] for n in weights)
    for name, value in got.items():
        torch.testing.assert_close(value, expected[name])


@pytest.mark.parametrize(
    "keep",
    [
        pytest.param(lambda r: dict(r), id="tensors"),
        pytest.param(lambda r: {n: v[1:] for n, v in r.items()}, id="views"),
    ],
)
def test_results_you_hold_are_never_overwritten(keep):
    held, snapshot_, first, second, got, expected = _batch_grad_twice(keep)
    assert all(first[n] != second[n] for n in first if n.endswith("weight"))
    for name, value in held.items():
        torch.testing.assert_close(value, snapshot_[name], rtol=0, atol=0)
    for name, value in got.items():
        torch.testing.assert_close(value, expected[name])


def _weight_ptrs(results):
    return {n: v.data_ptr() for n, v in results["BatchGrad"].items() if n.endswith("weight")}


def test_a_result_held_from_one_context_is_not_overwritten_by_the_next():
    model, loss_fn, x, y = problem(batch_size=4)
    x2 = torch.randn_like(x)
    first = extensions.compute(model, loss_fn, x, y, "BatchGrad")
    snapshot_ = copy.deepcopy(first)
    with extensions.collect(model, loss_fn, "BatchGrad") as second:
        loss_fn(model(x2), y).backward()
    assert not set(_weight_ptrs(first).values()) & set(_weight_ptrs(second).values())
    for name, value in first["BatchGrad"].items():
        torch.testing.assert_close(value, snapshot_["BatchGrad"][name], rtol=0, atol=0)
    expected = individual_gradients(model, loss_fn, x2, y)
    for name, value in second["BatchGrad"].items():
        torch.testing.assert_close(value, expected[name])


def test_compute_every_step_reuses_the_buffers_of_released_results():
    """``res = compute(...)`` each step: step k runs while step k-1 is held, k-2 is free."""
    model, loss_fn, x, y = problem(batch_size=4)
    inputs = [torch.randn_like(x) for _ in range(4)]
    ptrs = []
    res = None
    for inp in inputs:
        res = extensions.compute(model, loss_fn, inp, y, "BatchGrad")
        ptrs.append(_weight_ptrs(res))
    assert ptrs[0] != ptrs[1] and ptrs[2] == ptrs[0] and ptrs[3] == ptrs[1]
    expected = individual_gradients(model, loss_fn, inputs[-1], y)
    for name, value in res["BatchGrad"].items():
        torch.testing.assert_close(value, expected[name])


def test_a_context_per_step_reuses_the_buffers():
    model, loss_fn, x, y = problem(batch_size=4)
    ptrs = []
    for _ in range(3):
        with extensions.collect(model, loss_fn, "BatchGrad") as results:
            loss_fn(model(torch.randn_like(x)), y).backward()
        ptrs.append(_weight_ptrs(results))
        del results
    assert ptrs[0] == ptrs[1] == ptrs[2]


def _pooled(pool):
    import weakref

    return [weakref.ref(b) for slots in pool._buffers.values() for b in slots]


def test_pooled_memory_is_released_with_the_model():
    import gc
    import weakref

    from extensions import buffers

    model, loss_fn, x, y = problem(batch_size=4)
    res = extensions.compute(model, loss_fn, x, y, "BatchGrad")
    pool = weakref.ref(buffers.pool_for(model))
    pooled = _pooled(pool())
    assert pooled
    del res
    gc.collect()
    assert all(ref() is not None for ref in pooled)  # kept for the next step
    del model
    gc.collect()
    assert pool() is None and all(ref() is None for ref in pooled)


def test_release_drops_the_pooled_buffers():

    from extensions import buffers

    model, loss_fn, x, y = problem(batch_size=4)
    res = extensions.compute(model, loss_fn, x, y, "BatchGrad")
    pooled = _pooled(buffers.pool_for(model))
    del res
    extensions.release(model)
    assert pooled and all(ref() is None for ref in pooled)
    assert len(buffers.pool_for(model)) == 0


@needs_second_order
@pytest.mark.parametrize(
    "quantity", ["DiagGGNExact", "DiagHessian", "KFLR", "EKFACExact", "SumGradSquared"]
)
def test_scratch_reuse_across_steps_keeps_results_exact(quantity):
    """Scratch buffers (max-pool, patch matrices, rotated gradients) come from the session's
    pool on the second step, holding the first step's values: the results stay exact."""
    model, loss_fn, x, y = problem(batch_size=4)
    x2 = torch.randn_like(x)
    with extensions.collect(model, loss_fn, quantity) as results:
        loss_fn(model(x), y).backward()
        first = copy.deepcopy(results[quantity])
        loss_fn(model(x2), y).backward()
        second = copy.deepcopy(results[quantity])
    assert any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    for inputs, got in ((x, first), (x2, second)):
        expected = extensions.compute(copy.deepcopy(model), loss_fn, inputs, y, quantity)
        for name, value in got.items():
            torch.testing.assert_close(value, expected[quantity][name])


def test_penalty_added_to_the_loss_reaches_grad_but_not_the_quantities():
    model, loss_fn, x, y = problem()
    reference = copy.deepcopy(model)
    penalty = lambda m: 0.5 * sum((p**2).sum() for n, p in m.named_parameters() if "weight" in n)  # noqa: E731
    (loss_fn(reference(x), y) + penalty(reference)).backward()
    with extensions.collect(model, loss_fn, "BatchGrad") as results:
        loss = loss_fn(model(x), y) + penalty(model)
        loss.backward()
    for p, r in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, r.grad)
    expected = individual_gradients(copy.deepcopy(model), loss_fn, x, y)
    for name, value in results["BatchGrad"].items():
        torch.testing.assert_close(value, expected[name])


# ------------------------------------------------------------------------------------------------
# error paths
# ------------------------------------------------------------------------------------------------


class SubConv(nn.Conv2d):
    """A subclass (like DeepOBS's tfconv2d): exact-class dispatch must refuse it."""


UNSUPPORTED = [
    (
        "batchnorm",
        lambda: nn.Sequential(nn.Conv2d(2, 2, 3), nn.BatchNorm2d(2), nn.Flatten()),
        "BatchNorm2d",
        "1",
    ),
    (
        "grouped-conv",
        lambda: nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), nn.Flatten()),
        "Conv2d",
        "0",
    ),
    (
        "reflect-pad-conv",
        lambda: nn.Sequential(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect")),
        "Conv2d",
        "0",
    ),
    ("conv-subclass", lambda: nn.Sequential(nn.Flatten(0, 0), SubConv(2, 2, 3)), "SubConv", "1"),
    ("conv1d", lambda: nn.Sequential(nn.Conv1d(2, 2, 3)), "Conv1d", "0"),
]


@pytest.mark.parametrize(
    "build,module,position", [u[1:] for u in UNSUPPORTED], ids=[u[0] for u in UNSUPPORTED]
)
def test_unsupported_module_with_parameters(build, module, position):
    model = build()
    with pytest.raises(extensions.UnsupportedModuleError) as err:
        extensions.compute(
            model, nn.CrossEntropyLoss(), torch.randn(2, 2, 5, 5), torch.zeros(2), ["BatchGrad"]
        )
    assert module in str(err.value) and "BatchGrad" in str(err.value)
    assert err.value.position == position and err.value.quantity == "BatchGrad"


def test_inplace_activation_is_detected_before_running():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(inplace=True), nn.Linear(4, 2))
    with pytest.raises(extensions.UnsupportedModuleError, match="in-place") as err:
        extensions.collect(model, nn.CrossEntropyLoss(), "BatchGrad").__enter__()
    assert err.value.position == "1" and "ReLU" in str(err.value)
    assert snapshot(model) == snapshot(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)))


def test_shared_module_is_a_parameter_used_twice():
    lin = nn.Linear(3, 3)
    model = nn.Sequential(lin, nn.ReLU(), lin)
    with pytest.raises(extensions.ExtensionError, match="parameter used twice"):
        extensions.compute(model, nn.MSELoss(), torch.randn(2, 3), torch.randn(2, 3), ["BatchGrad"])


class CallsTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x):
        return self.lin(torch.tanh(self.lin(x)))


def test_module_called_twice_in_forward_is_a_parameter_used_twice():
    with pytest.raises(extensions.ExtensionError, match="parameter used twice") as err:
        extensions.compute(
            CallsTwice(), nn.MSELoss(), torch.randn(2, 3), torch.randn(2, 3), ["Variance"]
        )
    assert err.value.position == "lin"


def test_unknown_quantity_lists_the_valid_names():
    model, loss_fn, x, y = problem()
    with pytest.raises(ValueError, match="unknown quantity 'BatchGrads'") as err:
        extensions.compute(model, loss_fn, x, y, ["BatchGrads"])
    for name in extensions.QUANTITIES:
        assert name in str(err.value)


@pytest.mark.parametrize(
    "loss_fn",
    [nn.NLLLoss(), nn.CrossEntropyLoss(reduction="none"), nn.L1Loss(), nn.BCEWithLogitsLoss()],
    ids=["nll", "ce-none", "l1", "bce"],
)
def test_unsupported_loss(loss_fn):
    model, _, x, y = problem()
    with pytest.raises(extensions.UnsupportedModuleError, match="unsupported loss") as err:
        extensions.compute(model, loss_fn, x, y, ["BatchGrad"])
    assert err.value.position == "loss"


def test_loss_input_must_be_the_model_output():
    model, loss_fn, x, y = problem()
    with (
        pytest.raises(extensions.ExtensionError, match="not the model output"),
        extensions.collect(model, loss_fn, "BatchGrad"),
    ):
        loss_fn(2 * model(x), y)


def test_memory_budget_is_checked_before_allocating():
    model, loss_fn, x, y = problem()
    with pytest.raises(extensions.MemoryBudgetError, match="memory budget"):
        extensions.compute(model, loss_fn, x, y, ["BatchGrad"], memory_budget=100)


# ------------------------------------------------------------------------------------------------
# dropout: the recorded mask is the exact one, the output bit-identical to nn.Dropout
# ------------------------------------------------------------------------------------------------


class _Sink:
    def __init__(self):
        self._pending_extra = {}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("p", [0.2, 0.5, 0.9])
def test_dropout_override_is_bit_identical(p, dtype):
    module = nn.Dropout(p).train()
    x = torch.randn(16, 3, 5, 5, dtype=dtype)
    torch.manual_seed(7)
    expected = F.dropout(x, p, True)
    after_expected = torch.rand(3)
    sink = _Sink()
    torch.manual_seed(7)
    out = hooks._dropout_forward(sink, module, x)
    assert torch.equal(out, expected)
    assert torch.equal(torch.rand(3), after_expected)  # same RNG consumption
    mask = sink._pending_extra[id(module)]["mask"]
    assert mask.dtype == torch.bool and mask.shape == x.shape
    assert torch.equal(mask, expected != 0)  # x has no exact zeros
    torch.testing.assert_close(out, x * mask / (1 - p))


@pytest.mark.parametrize("ceil_mode", [False, True], ids=["floor", "ceil"])
def test_maxpool_override_keeps_the_indices_autograd_uses(ceil_mode):
    module = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=ceil_mode)
    x = torch.randn(2, 3, 8, 7, requires_grad=True)
    sink = _Sink()
    out = hooks._maxpool_forward(sink, module, x)
    expected, idx = F.max_pool2d(x, 3, 2, 1, ceil_mode=ceil_mode, return_indices=True)
    assert torch.equal(out, expected)
    assert torch.equal(sink._pending_extra[id(module)]["_maxpool_indices"], idx.flatten(2))
    g = torch.randn_like(out)
    (got,) = torch.autograd.grad(out, x, g)
    (want,) = torch.autograd.grad(module(x), x, g)
    assert torch.equal(got, want)


@pytest.mark.parametrize("mode", ["eval", "p0", "p1"])
def test_dropout_override_edge_cases(mode):
    p = {"eval": 0.5, "p0": 0.0, "p1": 1.0}[mode]
    module = nn.Dropout(p).train(mode != "eval")
    x = torch.randn(4, 3)
    torch.manual_seed(1)
    expected = module(x)
    torch.manual_seed(1)
    out = hooks._dropout_forward(_Sink(), module, x)
    assert torch.equal(out, expected)


@needs_second_order
def test_dropout_inside_second_order_context_matches_plain_forward():
    model, loss_fn, x, y = problem("mini-allcnnc")
    state = torch.get_rng_state()
    plain = model(x)
    torch.set_rng_state(state)
    with extensions.collect(model, loss_fn, "DiagGGNMC") as results:
        out = model(x)
        assert torch.equal(out, plain)
        loss_fn(out, y).backward()
    assert set(results["DiagGGNMC"]) == {n for n, _ in model.named_parameters()}


def _plain_grads(model, loss_fn, x, y):
    reference = copy.deepcopy(model)
    loss_fn(reference(x), y).backward()
    return [p.grad for p in reference.parameters()]


@needs_second_order
def test_autograd_grad_inside_a_second_order_context_is_plain_autograd():
    model, loss_fn, x, y = problem("mini-3c3d")
    expected = _plain_grads(model, loss_fn, x, y)
    with extensions.collect(model, loss_fn, "DiagGGNMC") as results:
        got = torch.autograd.grad(loss_fn(model(x), y), list(model.parameters()))
    assert set(results["DiagGGNMC"]) == {n for n, _ in model.named_parameters()}
    for g, want in zip(got, expected):
        torch.testing.assert_close(g, want)


@needs_second_order
def test_a_second_order_error_is_raised_after_grad_is_filled():
    """KFRA refused at the end of the backward: backward raises, .grad is complete."""
    model, loss_fn, x, y = problem("mini-3c3d")
    expected = _plain_grads(model, loss_fn, x, y)
    with extensions.collect(model, loss_fn, ["DiagGGNMC", "KFRA"], memory_budget=1000):
        with pytest.raises(extensions.MemoryBudgetError, match="KFRA"):
            loss_fn(model(x), y).backward()
        for p, want in zip(model.parameters(), expected):
            torch.testing.assert_close(p.grad, want)
        model.zero_grad(set_to_none=True)
        with pytest.raises(extensions.MemoryBudgetError, match="KFRA"):  # and again, cleanly
            loss_fn(model(x), y).backward()
    for p, want in zip(model.parameters(), expected):
        torch.testing.assert_close(p.grad, want)


@needs_second_order
@pytest.mark.parametrize("quantity", ["DiagGGNMC", "KFAC", "DiagHessian"])
def test_trace_keeps_only_the_activations_the_backward_reads(quantity):
    """A conv output that ReLU does not need is freed during forward, as without the context."""
    import weakref

    from extensions import derivatives

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 4))
    x, y = torch.randn(5, 2, 4, 4), torch.randint(0, 4, (5,))
    conv_out = []
    model[0].register_forward_hook(lambda m, a, out: conv_out.append(weakref.ref(out)))
    session = hooks.Session(model, nn.CrossEntropyLoss(), [quantity], 2**30)
    session.attach()
    try:
        loss = session.loss_fn(model(x), y)
        assert conv_out[0]() is None  # nobody holds the conv output: not even the trace
        for rec in session.trace.records:
            reads = derivatives.RULES[type(rec.module)].reads
            for what in ("input", "output"):
                stored = getattr(rec, what).untyped_storage().nbytes()
                assert (stored > 4) == (what in reads), (rec.name, what)
        loss.backward()
    finally:
        session.detach()
    results = session.results[quantity]
    assert set(results) == {n for n, _ in model.named_parameters()}
    assert all(
        torch.isfinite(v if isinstance(v, torch.Tensor) else v[0]).all() for v in results.values()
    )


@pytest.mark.parametrize("module", ["extensions", "extensions.api", "extensions.per_sample"])
def test_docstring_examples_run(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_context_recovers_after_a_failed_backward():
    """A backward that raised (over budget) leaves the same context usable for the next one."""
    model, loss_fn, x, y = problem(batch_size=6)
    budget = 3 * 8 * sum(p.numel() for p in model.parameters())  # BatchGrad of 3 samples
    with extensions.collect(model, loss_fn, "BatchGrad", memory_budget=budget) as results:
        with pytest.raises(extensions.MemoryBudgetError):  # noqa: SIM117 - the context goes on
            loss_fn(model(x), y).backward()
        loss_fn(model(x[:3]), y[:3]).backward()
    expected = individual_gradients(model, loss_fn, x[:3], y[:3])
    for name, value in results["BatchGrad"].items():
        torch.testing.assert_close(value, expected[name])


def test_bench_spec_names_mirror_the_quantity_classes():
    """bench.spec keeps literal names (problems must not import extensions); they must not drift."""
    from bench import spec

    assert spec.FIRST_ORDER == extensions.FIRST_ORDER
    assert spec.SECOND_ORDER == extensions.SECOND_ORDER
    assert spec.QUANTITIES == extensions.QUANTITIES == tuple(extensions.quantities.BY_NAME)
