"""DeepOBS export and import (issue 14): the installed ``deepobs`` analyzer and runner judge.

The exported files must pass ``deepobs.analyzer.shared_utils._check_output_structure`` (it prints
on failure, so the test reads its output) and ``aggregate_runs``, sit in the folder DeepOBS's own
``generate_output_directory_name`` names, and survive DeepOBS's setting ranking. Imported files
(ours, and one written by DeepOBS's ``_post_process_output`` + ``write_output``) reach the
figures as dotted "DeepOBS baseline" curves; a file without DeepOBS's keys is refused.
"""

from __future__ import annotations

import csv
import importlib
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.cli import main as cli_main
from bench.gridsearch import deepobs_io
from bench.gridsearch.grid import RunConfig
from bench.gridsearch.store import RunStore, load_runs

ROOT = Path(__file__).resolve().parents[3]
SMOKE = ROOT / "results" / "gridsearch" / "reference" / "smoke"


def _load_deepobs():
    """``deepobs.analyzer.shared_utils`` and ``deepobs.abstract_runner.abstract_runner``, loaded
    through stub packages so that deepobs' TensorFlow/torchvision ``__init__`` files never run."""
    spec = importlib.util.find_spec("deepobs")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("deepobs is not installed")
    root = Path(next(iter(spec.submodule_search_locations)))
    loader_spec = importlib.util.spec_from_file_location(
        "curvbench_tests_deepobs_loader", ROOT / "tests" / "problems" / "deepobs_loader.py"
    )
    loader = sys.modules.get(loader_spec.name)
    if loader is None:
        loader = importlib.util.module_from_spec(loader_spec)
        sys.modules[loader_spec.name] = loader  # dataclasses look their module up there
        loader_spec.loader.exec_module(loader)
    stubs = {
        name: loader._stub_package(name, path)
        for name, path in (
            ("deepobs", root),
            ("deepobs.analyzer", root / "analyzer"),
            ("deepobs.abstract_runner", root / "abstract_runner"),
        )
    }
    return loader.import_with_stubs(
        stubs, ["deepobs.analyzer.shared_utils", "deepobs.abstract_runner.abstract_runner"]
    )


@pytest.fixture(scope="module")
def deepobs():
    return _load_deepobs()


def _deepobs_runner(runner_module, optimizer_name: str):
    """A DeepOBS ``AbstractRunner`` with only its name set (its naming/output code is pure)."""

    base = runner_module.Runner
    Runner = type("Runner", (base,), {name: None for name in base.__abstractmethods__})
    obj = object.__new__(Runner)
    obj._optimizer_name = optimizer_name
    return obj


@pytest.fixture
def store(tmp_path) -> RunStore:
    if not any(SMOKE.glob("*.json")):
        pytest.skip("no committed smoke store")
    shutil.copytree(SMOKE, tmp_path / "store", ignore=shutil.ignore_patterns("deepobs"))
    return RunStore(tmp_path / "store")


def test_export_passes_deepobs_checks(store, tmp_path, deepobs, capsys):
    shared, runner_module = deepobs
    out = tmp_path / "export"
    assert cli_main(["gridsearch", "export", "--format", "deepobs", str(out),
                     "--store", str(store.root)]) == 0  # fmt: skip
    files = sorted(out.rglob("*.json"))
    done = [r for r in store.run_ids() if store.status(r) in ("finished", "diverged")]
    assert len(files) == len(done) > 0
    capsys.readouterr()
    for path in files:
        shared._check_output_structure(str(path.parent), path.name)
    assert "corrupted" not in capsys.readouterr().out
    table = load_runs(store)
    for path in files:
        data = json.loads(path.read_text())
        rid = data["curvbench"]["run_id"]
        cfg = RunConfig.from_dict(store.read_sidecar(rid)["config"])
        # the folder DeepOBS's own runner would name for these settings
        runner = _deepobs_runner(runner_module, data["optimizer_name"])
        run_dir, file_name = runner.generate_output_directory_name(
            data["testproblem"], data["batch_size"], data["num_epochs"], data["weight_decay"],
            data["random_seed"], str(out), data["optimizer_hyperparams"], **data["training_params"],
        )  # fmt: skip
        assert Path(run_dir) == path.parent
        assert path.name.startswith(file_name[: -len("YYYY-mm-dd-HH-MM-SS")])
        ours = table[table["run_id"] == rid].sort_values("epoch")
        assert data["test_accuracies"] == pytest.approx(list(ours["test_acc"]))
        assert data["num_epochs"] == cfg.epochs and data["random_seed"] == cfg.seed
    for setting in {p.parent for p in files}:
        agg = shared.aggregate_runs(str(setting))
        runs = [json.loads(p.read_text()) for p in setting.glob("*.json")]
        finals = sorted(r["test_accuracies"][-1] for r in runs)
        assert sorted(agg["test_accuracies"]["all_final_values"]) == pytest.approx(finals)
        assert agg["test_accuracies"]["median"][-1] == pytest.approx(np.median(finals))
    for optimizer in {p.parent.parent for p in files}:
        ranked = shared.create_setting_analyzer_ranking(str(optimizer), "final", "valid_accuracies")
        assert len(ranked) == len([d for d in optimizer.iterdir() if d.is_dir()])
    # the check is an oracle: a file missing a list is reported
    broken = json.loads(files[0].read_text())
    del broken["valid_losses"][-1]
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    shared._check_output_structure(str(tmp_path), "broken.json")
    assert "corrupted" in capsys.readouterr().out
    # byte-stable: exporting again changes nothing
    before = {p: p.read_bytes() for p in files}
    deepobs_io.export_store(store, out)
    assert {p: p.read_bytes() for p in sorted(out.rglob("*.json"))} == before


def test_diverged_run_is_padded_like_deepobs(store, tmp_path):
    rid = next(r for r in store.run_ids() if store.status(r) == "finished")
    sidecar = store.read_sidecar(rid)
    sidecar["status"] = "diverged"
    store.sidecar_path(rid).write_text(json.dumps(sidecar))
    path = store.csv_path(rid)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:2]) + "\n")  # header + the initial evaluation
    rel, data = deepobs_io.run_to_deepobs(store, rid)
    n = data["num_epochs"] + 1
    first = float(next(csv.DictReader(lines))["test_loss"])
    assert data["test_losses"] == [pytest.approx(first)] * n
    assert data["curvbench"]["status"] == "diverged"


def _deepobs_written(runner_module, out: Path, seed: int, acc: float) -> Path:
    """A result written by DeepOBS's own ``_post_process_output`` + ``write_output``."""
    runner = _deepobs_runner(runner_module, "SGD")
    hyper = {"lr": 0.0207, "momentum": 0.9, "nesterov": False}
    run_dir, name = runner.generate_output_directory_name(
        "mnist_logreg", 128, 2, None, seed, str(out), hyper
    )
    output = {
        "train_losses": [2.3, 0.5, 0.3], "valid_losses": [2.3, 0.5, 0.31],
        "test_losses": [2.3, 0.5, 0.32], "minibatch_train_losses": [2.3, 0.4],
        "train_accuracies": [0.1, 0.8, acc], "valid_accuracies": [0.1, 0.8, acc],
        "test_accuracies": [0.1, 0.8, acc],
    }  # fmt: skip
    output = runner._post_process_output(output, "mnist_logreg", 128, 2, seed, None, hyper)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    runner.write_output(output, run_dir, name)
    return Path(run_dir) / f"{name}.json"


def test_import_deepobs_files_reach_the_figures(store, tmp_path, deepobs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.gridsearch.figures import _draw_baselines

    _, runner_module = deepobs
    src = tmp_path / "deepobs_results"
    written = [_deepobs_written(runner_module, src, s, a) for s, a in ((42, 0.9), (43, 0.92))]
    exported = tmp_path / "export"
    deepobs_io.export_store(store, exported)
    for folder in (src, exported):
        assert cli_main(["gridsearch", "import-deepobs", str(folder),
                         "--store", str(store.root)]) == 0  # fmt: skip
    copied = sorted((store.root / deepobs_io.BASELINE_FOLDER).rglob("*.json"))
    assert len(copied) == len(written) + len(list(exported.rglob("*.json")))
    for path in written:
        rel = path.relative_to(src)
        assert (store.root / deepobs_io.BASELINE_FOLDER / rel).read_bytes() == path.read_bytes()
    baselines = deepobs_io.load_baselines(store.root)
    sgd = baselines[(baselines["problem"] == "mnist_logreg") & (baselines["optimizer"] == "SGD")]
    final = sgd[(sgd["epoch"] == 2) & (sgd["setting"] == written[0].parent.name)]
    assert sorted(final["test_acc"]) == pytest.approx([0.9, 0.92])
    fig, axes = plt.subplots(2, 2)
    _draw_baselines(axes.ravel(), baselines, "mnist_logreg")
    labels = axes.ravel()[2].get_legend_handles_labels()[1]
    assert any(lab.startswith("DeepOBS baseline: SGD") for lab in labels)
    lines = axes.ravel()[2].lines
    median = [ln for ln in lines if ln.get_label().startswith("DeepOBS baseline: SGD")]
    assert median[0].get_linestyle() == ":"
    assert median[0].get_ydata()[-1] == pytest.approx(0.91)
    plt.close(fig)
    # importing the same files again is a no-op; the figures draw them
    assert cli_main(["gridsearch", "import-deepobs", str(src), "--store", str(store.root)]) == 0
    from bench.gridsearch.figures import make_all

    paths = make_all(store.root, tmp_path / "plots")
    assert any(p.name.startswith("gridsearch_fig7_") and p.suffix == ".png" for p in paths)


def test_import_refuses_a_file_that_is_not_deepobs(store, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.json").write_text(json.dumps({"testproblem": "mnist_logreg", "num_epochs": 1}))
    assert cli_main(["gridsearch", "import-deepobs", str(bad), "--store", str(store.root)]) == 2
    assert "missing" in capsys.readouterr().err
    assert not (store.root / deepobs_io.BASELINE_FOLDER).exists()
