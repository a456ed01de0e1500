"""Leased run locks (issue 12 item 3): heartbeat, TTL on any host, atomic content, unlock.

A second host is simulated with ``$CURVBENCH_HOSTNAME`` (what every lock and sidecar records).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.gridsearch.store import HOSTNAME_ENV, LOCK_TTL_ENV, RunStore
from tests.bench.cli_cases import ROOT, run_cli

RUN = "0123456789abcdef"


def foreign_lock(store: RunStore, age_s: float, host: str = "node-b", pid: int = 4242) -> None:
    """A lock left by ``host``'s process, last heartbeat ``age_s`` ago."""
    path = store.lock_path(RUN)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'{{"host": "{host}", "pid": {pid}, "token": "t-{host}"}}\n')
    then = time.time() - age_s
    os.utime(path, (then, then))


def test_foreign_lock_is_trusted_only_within_its_ttl(tmp_path):
    store = RunStore(tmp_path, lock_ttl_s=60)
    store.write_sidecar(RUN, {"status": "running"})
    foreign_lock(store, age_s=5)
    assert store.status(RUN) == "running"
    with store.lock(RUN) as held:
        assert not held
    foreign_lock(store, age_s=120)  # scancel / OOM kill / node failure: no heartbeat any more
    assert store.status(RUN) == "interrupted"
    with store.lock(RUN) as held:
        assert held
        assert store.lock_holder(RUN).pid == os.getpid()
    assert not store.lock_path(RUN).exists()


def test_holder_refreshes_its_heartbeat(tmp_path):
    store = RunStore(tmp_path, lock_ttl_s=0.6, heartbeat_s=0.05)
    other = RunStore(tmp_path, lock_ttl_s=0.6)
    with store.lock(RUN) as held:
        assert held
        path = store.lock_path(RUN)
        os.utime(path, (time.time() - 10, time.time() - 10))  # as if the beat were late
        time.sleep(0.3)
        assert store.lock_holder(RUN).age_s() < 0.3
        time.sleep(0.6)  # longer than the TTL: still live, the heartbeat keeps it
        with other.lock(RUN) as again:
            assert not again


def test_lock_content_is_never_empty(tmp_path, monkeypatch):
    """The lock appears with its content (a hard link of a written file), never empty."""
    store = RunStore(tmp_path)
    seen = []
    real_link = os.link

    def link(src, dst):
        real_link(src, dst)
        seen.append(Path(dst).read_text())

    monkeypatch.setattr(os, "link", link)
    with store.lock(RUN) as held:
        assert held
    assert seen and all('"host"' in text for text in seen)


def test_unlock_removes_stale_locks_only_unless_forced(tmp_path):
    store = RunStore(tmp_path, lock_ttl_s=60)
    foreign_lock(store, age_s=5)
    out = run_cli(["gridsearch", "unlock", "--out", str(tmp_path)], env={LOCK_TTL_ENV: "60"})
    assert out.returncode == 0 and "live lock" in out.stdout, out.stderr
    assert store.lock_path(RUN).exists()
    forced = run_cli(["gridsearch", "unlock", "--out", str(tmp_path), "--force"])
    assert forced.returncode == 0 and "WARNING: removed the LIVE lock" in forced.stderr
    assert not store.lock_path(RUN).exists()
    foreign_lock(store, age_s=120)
    out = run_cli(["gridsearch", "unlock", "--out", str(tmp_path)], env={LOCK_TTL_ENV: "60"})
    assert "removed 1 lock(s)" in out.stdout and not store.lock_path(RUN).exists()


SWEEP = [
    "gridsearch", "run", "--problems", "cifar10_3c3d", "--methods", "Momentum",
    "--baseline-lrs", "0.01", "0.02", "0.03", "--no-best", "--source", "synthetic",
    "--epochs", "2", "--batch-size", "32", "--max-steps-per-epoch", "1", "--n-train", "160",
    "--n-test", "32", "--train-eval-size", "32", "--device", "cpu",
]  # fmt: skip


def sweep(store_dir, host: str, ttl_s: float) -> subprocess.Popen:
    env = {**os.environ, HOSTNAME_ENV: host, LOCK_TTL_ENV: str(ttl_s), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "bench", *SWEEP, "--out", str(store_dir)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip


@pytest.mark.slow
def test_two_hosts_share_a_store_and_a_dead_hosts_lock_expires(tmp_path):
    """Two sweeps on "two hosts" in parallel; one dies holding a lock; the lease expires."""
    ttl = 3.0
    store = RunStore(tmp_path, lock_ttl_s=ttl)
    a, b = sweep(tmp_path, "node-a", ttl), sweep(tmp_path, "node-b", ttl)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill node-a once it holds a lock mid-run
        held = [p for p in (tmp_path / "locks").glob("*.lock") if "node-a" in p.read_text("utf-8")]
        if held:
            break
        time.sleep(0.02)
    else:
        pytest.fail("node-a never took a lock")
    os.killpg(a.pid, signal.SIGKILL)
    a.wait()
    b.wait(timeout=120)
    time.sleep(ttl)  # node-a's lock is older than the TTL now
    c = sweep(tmp_path, "node-b", ttl)
    assert c.wait(timeout=120) == 0
    for run_id in store.run_ids():
        sidecar = store.read_sidecar(run_id)
        assert sidecar["status"] == "finished", run_id
        starts = [a for a in sidecar["attempts"] if "resumed_from_epoch" not in a]
        assert len(starts) == 1, f"{run_id} trained from scratch twice: {sidecar['attempts']}"
        epochs = [int(r["epoch"]) for r in store.read_rows(run_id)]
        assert epochs == [0, 1, 2]
    assert len(store.run_ids()) == 3
    assert not list((tmp_path / "locks").glob("*"))


def test_lock_without_hard_links_is_still_exclusive(tmp_path, monkeypatch):
    """Filesystems without hard links: exclusive create; an empty lock is never taken over."""

    def no_links(src, dst):
        raise PermissionError("hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    store = RunStore(tmp_path)
    with store.lock(RUN) as held:
        assert held and store.lock_holder(RUN).pid == os.getpid()
        with store.lock(RUN) as again:
            assert not again
    store.lock_path(RUN).write_text("")  # the instant between create and write
    with store.lock(RUN) as held:
        assert not held


def test_taking_a_runs_lock_removes_only_its_orphaned_temporary_files(tmp_path):
    """A writer killed mid-write (kill -9, scancel) leaves its atomic write's temporary file;
    the next holder of the run's lock removes the run's own, and nothing else."""
    other = "fedcba9876543210"
    store = RunStore(tmp_path, lock_ttl_s=60)
    store.write_rows(RUN, [])
    store.write_sidecar(RUN, {"status": "running"})
    store.checkpoint_path(RUN).parent.mkdir(parents=True)
    orphans = [
        tmp_path / f".{RUN}.csv.k3x9q.tmp",  # results_io.atomic_write_csv
        tmp_path / f".{RUN}.json.a1b2c.tmp",  # results_io.atomic_write_json
        store.checkpoint_path(RUN).with_name(f"{RUN}.pt.4242.tmp"),  # train._save_checkpoint
    ]
    kept = [
        tmp_path / f".{other}.csv.zz9.tmp",  # another run's writer may be alive
        store.checkpoint_path(other).with_name(f"{other}.pt.77.tmp"),
        tmp_path / "notes.tmp",  # not ours at all
    ]
    for path in orphans + kept:
        path.write_text("partial")
    with store.lock(RUN) as held:
        assert held
        assert [p for p in orphans if p.exists()] == []
    assert all(p.exists() for p in kept)
    assert store.csv_path(RUN).exists() and store.sidecar_path(RUN).exists()
