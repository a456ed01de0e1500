"""``bench.overhead.profile_step`` and its command line: the phase table of ours vs the gradient."""

from __future__ import annotations

import pytest

from bench.overhead import cli_profile_step, profile_step


@pytest.mark.parametrize(
    "quantity, expected",
    [
        ("BatchL2Grad", ["extensions::first_order::Conv2d", "extensions::first_order::Linear"]),
        (
            "KFAC",
            [
                "extensions::second_order",
                "extensions::jac_t::Conv2d",
                "extensions::extract::Conv2d",
                "extensions::extract::Linear",
                "extensions::input_factor::Conv2d",
            ],
        ),
    ],
    ids=["first-order", "second-order"],
)
def test_table_lists_the_phases_of_both_steps(quantity, expected, capsys):
    assert cli_profile_step.main(["tiny_cnn", quantity, "--batch-size", "4", "--steps", "1"]) == 0
    out = capsys.readouterr().out
    grad_part, ours_part = out.split(f"**{quantity}**")
    assert "**grad**" in grad_part and "step::forward" in grad_part
    assert "extensions::" not in grad_part  # the plain gradient runs no rule of ours
    for name in ["step::forward", "step::backward", *expected]:
        assert name in ours_part, name


def test_second_order_ranges_nest_inside_the_backward():
    import torch
    from torch import nn

    import extensions

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    loss_fn = nn.CrossEntropyLoss()
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 5, (4,))
    prof = profile_step.profile_variant(
        "DiagGGNMC",
        model,
        loss_fn,
        (x, y),
        2,
        torch.device("cpu"),
        extensions.collect(model, loss_fn, "DiagGGNMC"),
    )
    ranges = prof.ranges
    assert ranges["extensions::second_order"] <= ranges["step::backward"]
    parts = sum(
        t for n, t in ranges.items() if n.startswith(("extensions::jac_t", "extensions::extract"))
    )
    assert 0 < parts <= ranges["extensions::second_order"]
    assert prof.wall_s > 0 and prof.minor_faults >= 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["no_such_problem", "KFAC"], "unknown problem"),
        (["tiny_cnn", "DiagGGN"], "unknown quantity"),
        (["tiny_cnn", "KFAC", "--steps", "0"], "must be an integer >= 1"),
    ],
    ids=["unknown-problem", "unknown-quantity", "zero-steps"],
)
def test_bad_input_is_a_usage_error(argv, message, capsys):
    with pytest.raises(SystemExit) as err:
        cli_profile_step.main(argv)
    assert err.value.code == 2
    assert message in capsys.readouterr().err
