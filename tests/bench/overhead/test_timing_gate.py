"""The CI timing gate (``make gate``): ours / gradient vs bench/overhead/reference_ratios.json.

Refresh the reference after an intended speed change:
``python -m bench.overhead.cli_gate --refresh`` on a quiet machine, then commit
bench/overhead/reference_ratios.json.
"""

import pytest
import torch

from bench.overhead import gate

pytestmark = [pytest.mark.timing, pytest.mark.filterwarnings("ignore:Full backward hook")]


def test_no_quantity_got_slower_relative_to_the_gradient(benchmark):
    key = gate.case_key(gate.PROBLEM, gate.BATCH_SIZE, "cpu")
    reference = gate.reference_for(key)
    assert reference, f"no reference for {key}: run `python -m bench.overhead.cli_gate --refresh`"
    threads = torch.get_num_threads()
    torch.set_num_threads(gate.THREADS)
    try:
        measured = benchmark.pedantic(
            gate.measure_ratios, kwargs={"device": "cpu"}, rounds=1, iterations=1
        )
    finally:
        torch.set_num_threads(threads)
    benchmark.extra_info.update({f"ratio_{q}": v for q, v in measured.items()})
    verdicts = gate.check(measured, reference)
    assert all(v.ok for v in verdicts), "\n" + gate.format_verdicts(verdicts)
