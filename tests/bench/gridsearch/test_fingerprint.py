"""A sweep writes only into a store of its own fingerprint (issue 13), and the fingerprint is what
the user asked for, not the submitting host's hardware (a SLURM login node has no GPU)."""

from __future__ import annotations

import argparse

import pytest
import torch

from bench.gridsearch import cli
from bench.gridsearch import fingerprint as fp
from bench.results_io import atomic_write_json, read_json


def test_torch_minor_drops_patch_and_local_version():
    assert fp.torch_minor("2.13.0+cpu") == "2.13" and fp.torch_minor("2.1.2") == "2.1"


def test_fingerprint_is_the_requested_device_type_and_the_data_kind():
    cpu = fp.fingerprint("cpu", "synthetic")
    assert cpu == {
        "version": fp.FINGERPRINT_VERSION,
        "torch": fp.torch_minor(torch.__version__),
        "device": "cpu",
        "source": "synthetic",
    }
    assert fp.fingerprint("cuda:3", "real") == fp.fingerprint("cuda", "cifar")  # same kind
    assert fp.fingerprint("auto", "real")["device"] == "auto"


def test_new_and_matching_stores_are_used_as_they_are(tmp_path):
    current = fp.fingerprint("cpu", "real")
    assert fp.resume_target(tmp_path / "new", current) == (tmp_path / "new", None)
    fp.record(tmp_path / "new", current)
    assert read_json(tmp_path / "new" / fp.FINGERPRINT_FILE) == current
    assert fp.resume_target(tmp_path / "new", current) == (tmp_path / "new", None)
    fp.record(tmp_path / "new", {**current, "torch": "0.1"})  # the first record wins
    assert read_json(tmp_path / "new" / fp.FINGERPRINT_FILE) == current


@pytest.mark.parametrize(
    ("field", "value"),
    [("version", 0), ("torch", "1.0"), ("device", "cuda"), ("source", "synthetic")],
)
def test_another_fingerprint_sends_the_sweep_beside_the_store(tmp_path, field, value):
    current = fp.fingerprint("cpu", "real")
    out = tmp_path / "paper"
    atomic_write_json(out / fp.FINGERPRINT_FILE, {**current, field: value})
    target, note = fp.resume_target(out, current)
    assert target == tmp_path / "paper-2"
    assert note == f"not resuming {out} ({field} {value!r} != {current[field]!r}); writing {target}"
    fp.record(target, current)
    atomic_write_json(tmp_path / "paper-3" / fp.FINGERPRINT_FILE, current)
    assert fp.resume_target(out, current)[0] == target  # the first matching one, again


def test_a_store_with_runs_but_no_fingerprint_is_an_older_ones(tmp_path):
    atomic_write_json(tmp_path / "old" / "abc.json", {"status": "finished"})
    atomic_write_json(tmp_path / "old" / ".environment.json", {"device_type": "cpu"})
    target, note = fp.resume_target(tmp_path / "old", fp.fingerprint("cpu", "real"))
    assert target == tmp_path / "old-2" and "records no fingerprint" in note
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / ".environment.json").write_text("{}")  # no runs: still new
    assert fp.resume_target(tmp_path / "bare", fp.fingerprint("cpu", "real"))[1] is None


def test_slurm_sweep_from_a_login_node_records_what_was_asked(tmp_path, monkeypatch, capsys):
    """No GPU on the submitting host; --slurm-gpus 1 asks for CUDA on the nodes: ``cuda``."""
    ran = []

    class FakeSlurm:
        def run(self, jobs, store):
            ran.append((len(jobs), store.root))

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(cli, "check_slurm_available", lambda: None)
    monkeypatch.setattr("bench.gridsearch.executors.make_executor", lambda *a, **k: FakeSlurm())
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers())
    argv = ["gridsearch", "run", "--executor", "slurm", "--problems", "mnist_logreg"]
    argv += ["--methods", "Adam", "--baseline-lrs", "0.01", "--no-best"]
    for gpus, device in (("1", "cuda"), ("0", "auto")):
        out = tmp_path / f"gpus{gpus}"
        args = parser.parse_args([*argv, "--slurm-gpus", gpus, "--out", str(out)])
        assert args.func(args) == 3  # nothing trained by the fake executor
        assert read_json(out / fp.FINGERPRINT_FILE)["device"] == device
        assert ran[-1] == (1, out.resolve())
    assert "not resuming" not in capsys.readouterr().out
