"""The timing gate's logic, and proof that it fires on an injected slowdown."""

import json

import pytest
import torch

from bench.overhead import backends, gate

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")


@pytest.mark.parametrize(
    ("measured", "ok"),
    [
        ({"KFAC": 2.0}, True),  # same as the reference
        ({"KFAC": 3.24}, True),  # 1.5 * 2.0 + 0.25 = 3.25
        ({"KFAC": 3.26}, False),  # just above the limit
        ({"KFAC": "oom: needs 40 GiB"}, False),  # a referenced quantity that did not run
        ({}, False),  # or is missing altogether
    ],
    ids=["equal", "at-limit", "above-limit", "did-not-run", "missing"],
)
def test_check_applies_factor_and_slack(measured, ok):
    (verdict,) = gate.check(measured, {"KFAC": 2.0}, factor=1.5, slack=0.25)
    assert verdict.ok is ok, verdict


def test_quantity_without_reference_passes_with_a_note():
    verdicts = gate.check({"KFAC": 2.0, "KFLR": 9.0}, {"KFAC": 2.0})
    assert [v.ok for v in verdicts] == [True, True]
    assert "refresh" in verdicts[1].reason


def test_case_key_is_keyed_by_device_type():
    assert gate.case_key("cifar10_3c3d", 8, "cuda:1") == "cifar10_3c3d/N=8/cuda"
    assert gate.case_key("cifar10_3c3d", 8, "cpu") == "cifar10_3c3d/N=8/cpu"


def test_reference_that_did_not_run_is_not_gated():
    (verdict,) = gate.check({"KFRA": "oom: over budget"}, {"KFRA": "oom: over budget"})
    assert verdict.ok and "not gated" in verdict.reason


def test_committed_reference_covers_every_quantity_on_cpu():
    data = json.loads(gate.REFERENCE_PATH.read_text())
    case = data["cases"][gate.case_key(gate.PROBLEM, gate.BATCH_SIZE, "cpu")]
    assert set(case["ratios"]) | set(case["not_run"]) == set(gate.QUANTITIES)
    assert all(r > 0.5 for r in case["ratios"].values())  # a step with a quantity is not free
    assert "refresh" in data["how_to_refresh"]


class _SlowedStep(backends.OursStep):
    """Ours plus ``EXTRA`` additional plain gradient passes: a slowdown proportional to grad."""

    EXTRA = 4

    def backward_with_quantity(self, inputs, targets):
        results = super().backward_with_quantity(inputs, targets)
        for _ in range(self.EXTRA):
            self.loss_fn(self.model(inputs), targets).backward()
        return results


class _SlowedOurs(backends.OursBackend):
    name = "ours_slowed"

    def _make_step(self, model, loss_fn, quantity):
        return _SlowedStep(model, loss_fn, quantity)


def test_gate_fires_on_an_injected_slowdown(monkeypatch):
    ok, why = backends.OursBackend().available()
    if not ok:
        pytest.skip(why)
    monkeypatch.setitem(backends.BACKENDS, "ours_slowed", _SlowedOurs)
    torch.set_num_threads(1)
    quantities = ["BatchL2Grad", "DiagGGNMC"]
    kw = {"quantities": quantities, "rounds": 3, "warmup": 1}
    reference = gate.measure_ratios(**kw)
    slowed = gate.measure_ratios(backend="ours_slowed", **kw)
    assert all(isinstance(reference[q], float) for q in quantities), reference
    verdicts = gate.check(slowed, reference)
    assert [v.ok for v in verdicts] == [False, False], gate.format_verdicts(verdicts)
    assert all("slower" in v.reason for v in verdicts)
