"""TF32 / cuDNN / determinism flags: set explicitly and equally, recorded (issue 12, item 11)."""

from __future__ import annotations

import pytest
import torch

from bench import results_io
from bench.overhead import numerics
from bench.overhead import plan as overhead_plan
from bench.overhead import run as overhead_run
from bench.overhead.run import classify_error

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")


@pytest.fixture(autouse=True)
def _restore_flags():
    yield
    numerics.Numerics().apply()


def _plan():
    options = overhead_plan.PlanOptions(
        problems=["tiny_mlp"], batch_sizes=[2], backends=["loop"], quantities=["BatchGrad"]
    )
    return overhead_plan.default_plan(options)


def test_a_backend_that_flips_a_flag_does_not_change_what_the_others_run_under(monkeypatch):
    real_build = overhead_run.build_step
    seen = []

    def build(setup, backend, quantity, device, seed=0):
        step = real_build(setup, backend, quantity, device, seed)
        torch.backends.cuda.matmul.allow_tf32 = True  # e.g. a library enabling TF32 on import
        torch.backends.cudnn.benchmark = True
        real_call = step.__call__

        class Recording(type(step)):
            def __call__(self, x, y):
                seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark))
                return real_call(x, y)

        step.__class__ = Recording
        return step

    monkeypatch.setattr(overhead_run, "build_step", build)
    options = overhead_run.RunOptions(rounds=2, warmup=0, memory=False)
    rows = overhead_run.run_group(_plan(), options)
    assert all(r["status"] == "ok" for r in rows), rows
    assert seen and set(seen) == {(False, False)}  # every call ran under the requested flags


def test_the_flags_are_recorded_in_the_sidecar(tmp_path):
    options = overhead_run.RunOptions(
        rounds=1, warmup=0, memory=False, numerics=numerics.Numerics(tf32=True)
    )
    path = overhead_run.run(_plan(), options, tmp_path, "t", show_progress=False)
    meta = results_io.read_json(path.with_suffix(".json"))
    flags = meta["numerics"]["flags"]
    assert flags["cuda_matmul_allow_tf32"] and flags["cudnn_allow_tf32"]
    assert flags["float32_matmul_precision"] == "high"
    assert not flags["deterministic_algorithms"] and not flags["cudnn_benchmark"]
    assert meta["fingerprint"]["numerics"]["tf32"] is True


def test_deterministic_turns_torch_deterministic_mode_on_and_benchmark_off():
    flags = numerics.Numerics(deterministic=True, cudnn_benchmark=True).apply()
    assert torch.are_deterministic_algorithms_enabled()
    assert flags["cudnn_deterministic"] and not flags["cudnn_benchmark"]
    assert flags["cublas_workspace_config"]
    assert not numerics.Numerics().apply()["deterministic_algorithms"]


def test_deterministic_names_ours_scatter_quantities_on_maxpool_networks():
    affected = numerics.scatter_affected(
        ["cifar10_3c3d", "cifar100_allcnnc"], ["BatchGrad", "KFAC", "KFRA"], ["ours"]
    )
    assert affected == ["cifar10_3c3d: KFAC KFRA"]  # All-CNN-C has no MaxPool2d
    assert numerics.scatter_affected(["cifar10_3c3d"], ["KFAC"], ["backpack"]) == []


def test_an_op_without_deterministic_kernel_is_unsupported():
    err = RuntimeError(
        "adaptive_max_pool2d_backward_cuda does not have a deterministic implementation, but "
        "you set 'torch.use_deterministic_algorithms(True)'"
    )
    assert classify_error(err) == "unsupported"


def test_cli_deterministic_dry_run_prints_the_flags(capsys):
    from bench.overhead.cli import main

    argv = ["--problems", "tiny_mlp", "--batch-sizes", "2", "--deterministic", "--dry-run"]
    assert main(argv) == 0
    assert "deterministic_algorithms=True" in capsys.readouterr().out
