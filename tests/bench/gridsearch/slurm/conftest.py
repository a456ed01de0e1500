"""The ``slurm_cluster`` fixture: a real single-node SLURM cluster for this session's tests.

Skipped (with the reason) when not root or the SLURM/munge binaries are absent, unless
``CURVBENCH_REQUIRE_SLURM=1`` is set (CI sets it after ``.ci/slurm-setup.sh``), which turns the
skip into a failure.
"""

from __future__ import annotations

import os

import pytest

from tests.bench.gridsearch.slurm.cluster import SingleNodeCluster, why_unavailable

REQUIRE_ENV = "CURVBENCH_REQUIRE_SLURM"


@pytest.fixture(scope="session")
def slurm_cluster():
    """Yield a started :class:`SingleNodeCluster`; stopped and removed after the session."""
    reason = why_unavailable()
    if reason:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but no SLURM cluster can start: {reason}")
        pytest.skip(reason)
    with SingleNodeCluster() as cluster:
        yield cluster
