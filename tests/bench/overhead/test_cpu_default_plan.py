"""The CPU default plan (``make overhead``) times what issue 15 compares, and says how many rows.

Both usage patterns of ours (``ours``, ``ours_perstep``) for the first-order quantities, EKFAC for
ours and every peer that offers it, and ours' expand-factor KFAC beside the peers' KFAC; the
count matches the help, the Makefile, README and docs, and the estimate in ``plan.CPU_ESTIMATE``.
"""

from pathlib import Path

from bench.overhead import plan as overhead_plan
from bench.overhead.backends import get_backend
from bench.overhead.cli import CPU_DEFAULT_PLAN_SIZE
from bench.overhead.peers import EXPAND_CONV, PEER_BACKEND_NAMES, same_quantity
from bench.spec import FIRST_ORDER

ROOT = Path(__file__).resolve().parents[3]


def _plan():
    return overhead_plan.default_plan(overhead_plan.PlanOptions())


def test_cpu_defaults_time_both_patterns_ekfac_and_ours_expand():
    rows = {(m.problem, m.batch_size, m.backend, m.quantity): m for m in _plan()}
    for n in (32, 128):
        for q in FIRST_ORDER:
            assert ("cifar10_3c3d", n, "ours", q) in rows
            assert ("cifar10_3c3d", n, "ours_perstep", q) in rows
    ekfac = {b for (p, n, b, q) in rows if q == "EKFAC" and (p, n) == ("cifar10_3c3d", 32)}
    assert ekfac == {"ours"} | {b for b in PEER_BACKEND_NAMES if get_backend(b).supports("EKFAC")}
    for peer in PEER_BACKEND_NAMES:  # every peer's conv KFAC has an ours row of the same quantity
        peer_kfac = rows[("cifar10_3c3d", 32, peer, "KFAC")]
        assert peer_kfac.note == EXPAND_CONV
        assert same_quantity("ours_expand", peer_kfac.note)
    assert ("cifar10_3c3d", 32, "ours_expand", "KFAC") in rows
    # nothing beyond the paper's on All-CNN-C (its steps are seconds long on a CPU)
    assert not [k for k in rows if k[0] == "cifar100_allcnnc" and k[3] == "EKFAC"]
    assert not [k for k in rows if k[0] == "cifar100_allcnnc" and k[2].startswith("ours_")]


def test_plan_size_is_stated_alike_everywhere():
    size = len(_plan())
    assert size == CPU_DEFAULT_PLAN_SIZE == overhead_plan.CPU_ESTIMATE[0]
    for path in ("Makefile", "README.md", "docs/overhead.md"):
        assert f"{size} measurements" in (ROOT / path).read_text(), path


def test_explicit_quantities_add_no_ekfac():
    options = overhead_plan.PlanOptions(quantities=("BatchGrad",))
    assert not [m for m in overhead_plan.default_plan(options) if m.quantity == "EKFAC"]
