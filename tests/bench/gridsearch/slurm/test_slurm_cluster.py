"""The test cluster itself: a batch job with a job step runs and writes its output."""

from __future__ import annotations

import subprocess
import time

import pytest

pytestmark = pytest.mark.slurm


def test_batch_job_with_srun_step_completes(slurm_cluster, tmp_path):
    out = tmp_path / "job.out"
    submitted = subprocess.run(
        ["sbatch", "--parsable", f"--output={out}", "--wrap", "srun echo step-of-$SLURM_JOB_ID"],
        capture_output=True,
        text=True,
        check=True,
    )
    job_id = submitted.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 30
    states = []
    while time.monotonic() < deadline:
        states = [state for jid, state, _ in slurm_cluster.squeue("-j", job_id) if jid == job_id]
        if states and states[0] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
            break
        time.sleep(0.3)
    assert states == ["COMPLETED"], slurm_cluster.logs()
    assert out.read_text().strip() == f"step-of-{job_id}"
