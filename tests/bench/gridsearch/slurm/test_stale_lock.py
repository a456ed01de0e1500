"""A requeued SLURM task takes over the lock its own killed attempt left (no cluster needed).

On a cluster the requeued attempt may run on another node, where ``RunStore`` trusts a lock
from a foreign host; without the takeover the run would report ``running`` forever.
"""

from __future__ import annotations

import pytest

from bench.gridsearch.slurm import release_own_stale_lock
from bench.gridsearch.store import RunStore

RUN = "0123456789abcdef"


def leave_foreign_lock(store: RunStore) -> None:
    """A lock as left by a task killed on another node (its host is not this one)."""
    path = store.lock_path(RUN)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("some-other-node 4242")


@pytest.fixture
def store(tmp_path) -> RunStore:
    store = RunStore(tmp_path)
    store.write_sidecar(RUN, {"status": "running"})
    return store


def test_same_task_takes_over_its_own_dead_lock(store):
    assert release_own_stale_lock(store, RUN, "77_3") is False  # first attempt: claims
    leave_foreign_lock(store)  # ... then it is killed on its node
    assert store.status(RUN) == "running"  # a foreign lock is trusted
    assert release_own_stale_lock(store, RUN, "77_3") is True  # the requeued attempt
    assert not store.lock_path(RUN).exists()
    assert store.status(RUN) == "interrupted"
    with store.lock(RUN) as held:
        assert held


@pytest.mark.parametrize(
    "claimed_by", [None, "77_4", "78_3"], ids=["unclaimed", "other-index", "other-array"]
)
def test_another_tasks_lock_is_left_alone(store, claimed_by):
    if claimed_by is not None:
        release_own_stale_lock(store, RUN, claimed_by)
    leave_foreign_lock(store)
    assert release_own_stale_lock(store, RUN, "77_3") is False
    assert store.lock_path(RUN).read_text() == "some-other-node 4242"
    with store.lock(RUN) as held:
        assert not held


def test_outside_slurm_nothing_happens(store):
    leave_foreign_lock(store)
    assert release_own_stale_lock(store, RUN, None) is False
    assert store.lock_path(RUN).exists()
    assert not (store.root / "slurm").exists()
