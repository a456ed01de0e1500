"""The support matrix and the peers' table: every quantity and library, `differs` kept apart."""

import pandas as pd

from bench.overhead import support_matrix
from bench.overhead.backends import BACKENDS, get_backend
from bench.spec import QUANTITIES


def _row(backend, quantity, ratio, note="", status="ok"):
    return {
        "problem": "cifar10_3c3d",
        "batch_size": 128,
        "mode": "clean",
        "backend": backend,
        "quantity": quantity,
        "ratio_to_grad": ratio,
        "status": status,
        "note": note,
    }


def test_matrix_lists_what_each_backend_offers():
    text = support_matrix.render()
    for quantity in (*QUANTITIES, "EKFAC"):
        assert f"| {quantity} |" in text
    for name in support_matrix.LIBRARIES:
        offered = {q for q, row in support_matrix.MATRIX.items() if row.get(name)}
        backend = get_backend(name)
        assert {q for q in offered if q != "EKFAC"} == {
            q for q in QUANTITIES if backend.supports(q)
        }, name
        if name != "ours":
            assert ("EKFAC" in offered) == backend.supports("EKFAC"), name
    assert set(support_matrix.LIBRARIES) <= set(BACKENDS)


def test_differs_rows_are_marked_and_kept_out_of_ahead_of():
    df = pd.DataFrame(
        [
            _row("ours", "KFAC", 2.0),
            _row("curvlinops", "KFAC", 4.6, note="differs: conv layers get KFC-expand factors"),
            _row("ours", "BatchGrad", 1.2),
            _row("asdl", "BatchGrad", 3.0),
            _row("nngeometry", "KFLR", float("nan"), status="bounded"),
        ]
    )
    text = support_matrix.render(df)
    assert "4.60 (differs)" in text
    assert "BatchGrad: ours ahead of asdl (1.20 vs 3.00)" in text
    assert "ours ahead of curvlinops" not in text
    assert "| KFLR | — | — | — | bounded |" in text  # ours, curvlinops, asdl, nngeometry
