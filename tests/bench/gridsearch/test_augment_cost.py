"""``bench.gridsearch.augment_cost`` and its command line: augmentation vs a 3C3D step."""

from __future__ import annotations

import pytest

from bench.gridsearch import augment_cost, cli_augment_cost


def test_the_cli_prints_both_ratios(capsys):
    assert cli_augment_cost.main(["--rounds", "2", "--repeats", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "ratio augment 256 / step 128" in out and "ratio fetch+augment 256" in out


def test_a_broken_registry_is_an_error_not_a_hand_built_stand_in(monkeypatch):
    import problems

    def broken(name):
        raise KeyError(name)

    monkeypatch.setattr(problems, "get", broken)
    with pytest.raises(KeyError, match="cifar10_3c3d"):
        augment_cost.run("cpu", rounds=2, repeats=1, threads=1, seed=0)


def test_run_returns_medians_and_ratio_statistics():
    res = augment_cost.run("cpu", rounds=2, repeats=1, threads=1, seed=0)
    for name in ("augment256", "fetch_augment256", "step128"):
        assert res[f"{name}_median_s"] > 0
    assert res["augment256_ratio"] > 0 and res["augment256_ratio_iqr"] >= 0


@pytest.mark.parametrize("argv", [["--rounds", "1"], ["--repeats", "0"]], ids=["rounds", "repeats"])
def test_too_few_rounds_or_repeats_is_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as err:
        cli_augment_cost.main(argv)
    assert err.value.code == 2 and "--rounds must be >= 2" in capsys.readouterr().err
