"""The problem registry, the Problem methods, and the `curvbench problems` command."""

import argparse
import json
import types

import pytest
import torch
from torch import nn

import problems
from bench import spec
from bench.cli import main as cli_main
from bench.commands import problems as problems_cmd

#: name -> (dataset, classes, l2, batch size, epochs, in DeepOBS, parameters); the spec's numbers
EXPECTED = {
    "cifar10_3c3d": ("cifar10", 10, 0.002, 128, 100, True, 895_210),
    "cifar100_3c3d": ("cifar100", 100, 0.002, 128, 100, True, 918_340),
    "cifar10_allcnnc": ("cifar10", 10, 5e-4, 256, 350, False, 1_369_738),
    "cifar100_allcnnc": ("cifar100", 100, 5e-4, 256, 350, True, 1_387_108),
    "mnist_logreg": ("mnist", 10, 0.0, 128, 50, True, 7_850),
    "fmnist_2c2d": ("fmnist", 10, 0.0, 128, 100, True, 3_274_634),
}
#: problems get() accepts that names() does not list (paper Fig. 9's sigmoid 3C3D)
VARIANTS = {"cifar10_3c3dsig": ("cifar10", 10, 0.002, 128, 100, False, 895_210)}
#: the problems whose batch size and epochs are DeepOBS's DEFAULT_TEST_PROBLEMS_SETTINGS
DEEPOBS_DEFAULTS = ("cifar10_3c3d", "cifar100_allcnnc", "mnist_logreg", "fmnist_2c2d")
NAMES = tuple(EXPECTED)


def test_names_follow_the_spec():
    assert problems.names() == spec.PROBLEMS == problems.PROBLEMS == NAMES
    assert len(NAMES) == 6
    assert tuple(VARIANTS) == problems.VARIANTS
    assert not set(VARIANTS) & set(NAMES)


@pytest.mark.parametrize("name", NAMES + tuple(VARIANTS))
def test_attributes(name):
    problem = problems.get(name)
    assert isinstance(problem, spec.Problem)
    dataset, classes, l2, batch, epochs, in_deepobs, _ = {**EXPECTED, **VARIANTS}[name]
    assert problem.name == name
    assert (problem.dataset, problem.num_classes, problem.l2) == (dataset, classes, l2)
    assert (problem.batch_size, problem.epochs, problem.in_deepobs) == (batch, epochs, in_deepobs)
    assert problem.deepobs_defaults == (name in DEEPOBS_DEFAULTS)
    assert problem.input_shape == ((1, 28, 28) if "mnist" in dataset else (3, 32, 32))


@pytest.mark.parametrize("bad", ["cifar10", "CIFAR10_3C3D", "", None, 3], ids=repr)
def test_unknown_name_lists_valid_names(bad):
    with pytest.raises(ValueError, match="unknown problem") as info:
        problems.get(bad)
    for name in NAMES:
        assert name in str(info.value)


@pytest.mark.parametrize("name", NAMES + tuple(VARIANTS))
def test_parameter_count_without_rng_use(name):
    problem = problems.get(name)
    state = torch.random.get_rng_state()
    count = problem.num_parameters()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert count == {**EXPECTED, **VARIANTS}[name][-1]
    assert count == sum(p.numel() for p in problem.model().parameters())


@pytest.mark.parametrize("name", NAMES)
def test_l2_groups_are_weights_and_biases(name):
    problem = problems.get(name)
    model = problem.model()
    weights, biases = problem.l2_groups(model)
    assert (weights["l2"], biases["l2"]) == (problem.l2, 0.0)
    named = dict(model.named_parameters())
    ids = {id(p): n for n, p in named.items()}
    weight_names = [ids[id(p)] for p in weights["params"]]
    bias_names = [ids[id(p)] for p in biases["params"]]
    assert sorted(weight_names + bias_names) == sorted(named)
    assert all(n.endswith(".weight") and named[n].dim() > 1 for n in weight_names)
    assert all(n.endswith(".bias") and named[n].dim() == 1 for n in bias_names)
    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert len(weight_names) == len(bias_names) == len(layers)
    # usable as torch.optim parameter groups
    torch.optim.SGD(problem.l2_groups(model), lr=0.1)


@pytest.mark.parametrize("name", NAMES)
def test_l2_penalty_value_and_gradient(name):
    problem = problems.get(name)
    model = problem.model(dtype=torch.float64)
    penalty = problem.l2_penalty(model)
    direct = 0.5 * problem.l2 * sum((p**2).sum() for p in model.parameters() if p.dim() > 1)
    assert penalty.shape == ()
    torch.testing.assert_close(penalty, direct, rtol=1e-12, atol=0)
    assert penalty.dtype == torch.float64
    if problem.l2 == 0.0:  # unregularised (DeepOBS adds 0): a constant
        assert penalty.item() == 0.0 and not penalty.requires_grad
        return
    assert penalty.item() > 0
    penalty.backward()
    for pname, p in model.named_parameters():
        expected = problem.l2 * p.detach() if p.dim() > 1 else torch.zeros_like(p)
        grad = p.grad if p.grad is not None else torch.zeros_like(p)
        torch.testing.assert_close(grad, expected, rtol=1e-12, atol=0, msg=pname)


def test_l2_penalty_of_a_model_without_weights_is_zero():
    problem = problems.get("cifar10_3c3d")
    assert problem.l2_penalty(nn.Sequential(nn.ReLU())).item() == 0.0


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_loss_fn_is_cross_entropy(reduction):
    loss_fn = problems.get("cifar100_allcnnc").loss_fn(reduction)
    assert isinstance(loss_fn, nn.CrossEntropyLoss)
    logits, y = torch.randn(4, 100, dtype=torch.float64), torch.tensor([0, 5, 99, 5])
    manual = -torch.log_softmax(logits, dim=1)[torch.arange(4), y]
    expected = {"mean": manual.mean(), "sum": manual.sum(), "none": manual}[reduction]
    torch.testing.assert_close(loss_fn(logits, y), expected)
    assert problems.get("cifar10_3c3d").loss_fn().reduction == "mean"


def test_loss_fn_rejects_unknown_reduction():
    with pytest.raises(ValueError, match="mean, sum, none"):
        problems.get("cifar10_3c3d").loss_fn("avg")


@pytest.fixture
def fake_data(monkeypatch):
    """Replace problems.data by a recorder (works whether or not the real package is there)."""
    calls = []
    fake = types.ModuleType("problems.data")
    fake.load_problem_data = lambda *args, **kwargs: calls.append(("load", args, kwargs)) or "data"
    fake.is_cached = lambda *args: calls.append(("is_cached", args, {})) or args[0] == "cifar100"
    monkeypatch.setitem(__import__("sys").modules, "problems.data", fake)
    monkeypatch.setattr(problems, "data", fake, raising=False)
    return fake, calls


def test_data_delegates_to_the_data_package(fake_data):
    _, calls = fake_data
    problem = problems.get("cifar10_3c3d")
    out = problem.data(
        "synthetic", seed=3, root="R", device="meta", batch_size=7, train_eval_size=9
    )
    assert out == "data"
    assert calls == [
        (
            "load",
            (problem,),
            {
                "source": "synthetic",
                "seed": 3,
                "root": "R",
                "device": "meta",
                "batch_size": 7,
                "train_eval_size": 9,
            },
        )
    ]
    calls.clear()
    assert problems.get("cifar100_3c3d").data_present("D") is True
    assert problems.get("cifar10_allcnnc").data_present() is False
    assert calls == [("is_cached", ("cifar100", "D"), {}), ("is_cached", ("cifar10", None), {})]


def _run_command(argv, capsys):
    parser = argparse.ArgumentParser(prog="curvbench")
    problems_cmd.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    return capsys.readouterr().out


def test_command_table_lists_every_problem(fake_data, capsys):
    out = _run_command(["problems", "--data-dir", "D"], capsys)
    lines = out.splitlines()
    assert lines[0].split() == [
        "problem",
        "dataset",
        "classes",
        "parameters",
        "L2",
        "batch",
        "epochs",
        "DeepOBS",
        "data",
    ]
    for name, (dataset, classes, l2, batch, epochs, in_deepobs, count) in EXPECTED.items():
        (row,) = [line.split() for line in lines if line.startswith(name + " ")]
        assert row[:4] == [name, dataset, str(classes), f"{count:,}"]
        assert float(row[4]) == l2
        assert [int(v.rstrip("*")) for v in row[5:7]] == [batch, epochs]
        assert row[7] == ("yes" if in_deepobs else "no")
        assert row[8] == ("yes" if dataset == "cifar100" else "no")


def test_command_table_lists_the_variants_labelled(fake_data, capsys):
    """Issue 13: ``overhead --problems`` accepts cifar10_3c3dsig, so ``problems`` shows it."""
    lines = _run_command(["problems", "--data-dir", "D"], capsys).splitlines()
    for name in VARIANTS:
        (row,) = [line.split() for line in lines if line.startswith(name + " ")]
        assert row[7] == "variant"
    assert any(
        line.startswith("DeepOBS = variant: ") and "not in DeepOBS" in line for line in lines
    )


def test_command_json_parses(fake_data, capsys):
    _, calls = fake_data
    rows = json.loads(_run_command(["problems", "--json", "--data-dir", "D"], capsys))
    assert [r["name"] for r in rows] == [*NAMES, *VARIANTS]
    assert [r["name"] for r in rows if r["variant"]] == list(VARIANTS)
    for row in rows:
        problem = problems.get(row["name"])
        assert row["num_parameters"] == problem.num_parameters()
        assert row["l2"] == problem.l2
        assert row["in_deepobs"] is problem.in_deepobs
        assert row["data_present"] is (problem.dataset == "cifar100")
    assert {c[1] for c in calls} == {
        (row[0], "D") for row in (*EXPECTED.values(), *VARIANTS.values())
    }


def test_cli_entry_point_json_and_help(tmp_path, capsys):
    assert cli_main(["problems", "--json", "--data-dir", str(tmp_path)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == [*NAMES, *VARIANTS]
    assert all(r["data_present"] is False for r in rows)  # empty directory
    with pytest.raises(SystemExit) as info:
        cli_main(["problems", "--help"])
    assert info.value.code == 0
    help_text = capsys.readouterr().out
    assert "--json" in help_text and "CURVBENCH_DATA" in help_text
