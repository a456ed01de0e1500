"""Our runs as DeepOBS result JSON, and DeepOBS result JSON as labelled baselines of the figures.

**Export** (``export_store(store, out)``, ``curvbench gridsearch export --format deepobs OUT``):
every finished or diverged run becomes one file in DeepOBS 1.1.2's layout and schema (the
PyTorch runner's ``_post_process_output``, ``generate_output_directory_name``, ``write_output``)::

    OUT/<testproblem>/<optimizer_name>/num_epochs__<E>__batch_size__<B>__<hp>__<value>...
        __source__<source>[__options__<hash>]/random_seed__<seed>__<YYYY-mm-dd-HH-MM-SS>.json

with the keys ``testproblem``, ``batch_size``, ``num_epochs``, ``random_seed``, ``weight_decay``
(``null``: the problem's default, as a DeepOBS run without ``--weight_decay``),
``optimizer_name``, ``optimizer_hyperparams``, ``training_params`` and the per-evaluation lists
``train_losses``, ``valid_losses``, ``test_losses``, ``train_accuracies``, ``valid_accuracies``,
``test_accuracies`` (``num_epochs + 1`` values each; ``train_*`` is DeepOBS's train_eval set) and
``minibatch_train_losses`` (every ``log_interval`` steps). Optimizer names and hyperparameters:
SGD-momentum is ``SGD`` with ``{lr, momentum: 0.9, nesterov: false}``, Adam ``Adam`` with
``{lr}``, a curvature optimizer its BackPACK quantity name (``KFAC``, ...) with ``{lr, damping}``.
``training_params`` carries the data source and, when a run has options (smoke truncation, data
sizes, averaging), an 8-hex hash of them, so two families never share a setting folder; the
folder-name numbers use DeepOBS's ``float2str``. An extra key ``curvbench`` holds the run id,
status, source and options. A diverged run is padded as DeepOBS's ``_abort_routine`` pads one
(the remaining epochs repeat the initial values). The date in the file name is the run's
``finished_at``, so an export is byte-stable.

**Import** (``import_deepobs(src, store)``, ``curvbench gridsearch import-deepobs DIR``): every
``*.json`` under ``src`` that has DeepOBS's required keys (``_check_output_structure``) is copied
byte for byte to ``<store>/deepobs/<testproblem>/<optimizer_name>/<setting>/<file>``. The figures
(``load_baselines``) draw, per problem and optimizer, the setting with the best final test
accuracy (DeepOBS's baseline protocol), median and quartiles over its files, dotted and labelled
"DeepOBS baseline".
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from bench.gridsearch.grid import DONE, RunConfig
from bench.gridsearch.store import RunStore

#: The folder of a run store that holds imported DeepOBS results.
BASELINE_FOLDER = "deepobs"
#: Keys a DeepOBS result must have (``deepobs.analyzer.shared_utils._check_output_structure``).
REQUIRED_KEYS = (
    "num_epochs",
    "batch_size",
    "testproblem",
    "random_seed",
    "optimizer_name",
    "optimizer_hyperparams",
    "train_losses",
    "valid_losses",
    "test_losses",
)
#: Our CSV column -> DeepOBS key.
METRICS = {
    "train_loss": "train_losses",
    "valid_loss": "valid_losses",
    "test_loss": "test_losses",
    "train_acc": "train_accuracies",
    "valid_acc": "valid_accuracies",
    "test_acc": "test_accuracies",
}


class DeepOBSFormatError(ValueError):
    """A file is not a DeepOBS result (the message names the file and what is wrong)."""


def float2str(x: float) -> str:
    """DeepOBS's folder-name float format (``abstract_runner_utils.float2str``)."""
    mantissa, exponent = f"{x:.10e}".split("e")
    return mantissa.rstrip("0") + "e" + exponent


def optimizer_of(cfg: RunConfig) -> tuple[str, dict[str, Any]]:
    """Return the DeepOBS ``optimizer_name`` and ``optimizer_hyperparams`` of a run."""
    if cfg.method == "Momentum":
        return "SGD", {"lr": cfg.lr, "momentum": 0.9, "nesterov": False}
    if cfg.method == "Adam":
        return "Adam", {"lr": cfg.lr}
    return cfg.method, {"lr": cfg.lr, "damping": cfg.damping}


def _options_hash(options: dict[str, Any]) -> str:
    text = json.dumps(options, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def setting_folder(cfg: RunConfig, source: str) -> tuple[str, dict[str, Any]]:
    """Return DeepOBS's setting-folder name of a run and its ``training_params``."""
    name, hyperparams = optimizer_of(cfg)
    training: dict[str, Any] = {"source": source}
    if cfg.options:
        training["options"] = _options_hash(cfg.options)
    folder = f"num_epochs__{cfg.epochs}__batch_size__{cfg.batch_size}"
    # DeepOBS: the hyperparameters sorted by name, then the training parameters sorted
    for key, value in [*sorted(hyperparams.items()), *sorted(training.items())]:
        folder += f"__{key}__{float2str(value) if isinstance(value, float) else value}"
    return folder, training


def _padded(values: list[float], num_epochs: int) -> list[float]:
    """DeepOBS's ``_abort_routine``: fill the missing evaluations with the initial value."""
    return values + [values[0]] * (num_epochs + 1 - len(values))


def run_to_deepobs(store: RunStore, run_id: str) -> tuple[Path, dict[str, Any]] | None:
    """Return ``(relative path, DeepOBS result)`` of a done run, ``None`` for any other."""
    sidecar = store.read_sidecar(run_id)
    rows = store.read_rows(run_id)
    if not sidecar or sidecar.get("status") not in DONE or not rows:
        return None
    cfg = RunConfig.from_dict(sidecar["config"])
    source = sidecar.get("identity", {}).get("source", cfg.source)
    name, hyperparams = optimizer_of(cfg)
    folder, training = setting_folder(cfg, source)
    result: dict[str, Any] = {
        "testproblem": cfg.problem,
        "batch_size": cfg.batch_size,
        "num_epochs": cfg.epochs,
        "random_seed": cfg.seed,
        "weight_decay": None,
        "optimizer_name": name,
        "optimizer_hyperparams": hyperparams,
        "training_params": training,
    }
    for column, key in METRICS.items():
        result[key] = _padded([float(r[column]) for r in rows], cfg.epochs)
    minibatch = [float(loss) for _, loss in sidecar.get("minibatch_losses") or []]
    result["minibatch_train_losses"] = minibatch
    result["curvbench"] = {
        "run_id": run_id,
        "status": sidecar["status"],
        "source": source,
        "options": cfg.options,
        "log_interval": sidecar.get("log_interval"),
    }
    stamp = (sidecar.get("finished_at") or sidecar.get("updated_at") or "")[:19]
    stamp = stamp.replace("T", "-").replace(":", "-") or "0000-00-00-00-00-00"
    rel = Path(cfg.problem) / name / folder / f"random_seed__{cfg.seed}__{stamp}.json"
    return rel, result


def export_store(store: RunStore, out: str | Path) -> list[Path]:
    """Write every done run of ``store`` under ``out`` in DeepOBS's layout; return the files.

    Raises:
        FileExistsError: a target file exists with other content (it is never overwritten).

    """
    from bench.results_io import atomic_write_text

    out = Path(out)
    written = []
    for run_id in store.run_ids():
        found = run_to_deepobs(store, run_id)
        if found is None:
            continue
        rel, result = found
        path = out / rel
        text = json.dumps(result, indent=4) + "\n"
        if path.exists() and path.read_text() != text:
            raise FileExistsError(f"{path} exists with other content; export into a new folder")
        written.append(atomic_write_text(path, text))
    return written


def check_result(path: Path) -> dict[str, Any]:
    """Load a DeepOBS result and check DeepOBS's required structure.

    Raises:
        DeepOBSFormatError: not JSON, a required key missing, or lists of the wrong length.

    """
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DeepOBSFormatError(f"{path}: not a JSON file ({err})") from None
    if not isinstance(data, dict):
        raise DeepOBSFormatError(f"{path}: not a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise DeepOBSFormatError(f"{path}: not a DeepOBS result, missing {', '.join(missing)}")
    lengths = {k: len(data[k]) for k in ("train_losses", "valid_losses", "test_losses")}
    if set(lengths.values()) != {int(data["num_epochs"]) + 1}:
        raise DeepOBSFormatError(
            f"{path}: expected num_epochs + 1 = {int(data['num_epochs']) + 1} values, got {lengths}"
        )
    return data


def import_deepobs(src: str | Path, store: RunStore) -> list[Path]:
    """Copy every DeepOBS result under ``src`` into ``<store>/deepobs/``; return the copies.

    All files are checked before any is copied. A file that already exists there with the
    same bytes is kept; with other bytes it is an error (nothing is overwritten).

    Raises:
        DeepOBSFormatError: a ``*.json`` file under ``src`` is not a DeepOBS result, or none is.
        FileExistsError: a different file of that name was imported before.

    """
    from bench.results_io import atomic_write_text

    src = Path(src)
    files = sorted(src.rglob("*.json")) if src.is_dir() else [src]
    plans = []
    for path in files:
        data = check_result(path)
        rel = Path(str(data["testproblem"])) / str(data["optimizer_name"]) / path.parent.name
        plans.append((path, store.root / BASELINE_FOLDER / rel / path.name))
    if not plans:
        raise DeepOBSFormatError(f"{src}: no DeepOBS result (*.json) found")
    copied = []
    for path, target in plans:
        text = path.read_text()
        if target.exists() and target.read_text() != text:
            raise FileExistsError(f"{target} was imported before with other content")
        copied.append(atomic_write_text(target, text))
    return copied


def load_baselines(store_root: str | Path):
    """Return the imported DeepOBS results of a store as per-evaluation rows (pandas).

    Columns: ``problem, optimizer, setting, file, epoch`` and our metric names (``train_loss``,
    ``test_acc``, ...; accuracies absent from a file are NaN). Empty if nothing was imported.
    """
    import pandas as pd

    rows = []
    root = Path(store_root) / BASELINE_FOLDER
    for path in sorted(root.rglob("*.json")) if root.is_dir() else []:
        data = check_result(path)
        for epoch in range(int(data["num_epochs"]) + 1):
            row = {
                "problem": data["testproblem"],
                "optimizer": data["optimizer_name"],
                "setting": path.parent.name,
                "file": path.name,
                "epoch": epoch,
            }
            for column, key in METRICS.items():
                values = data.get(key)
                row[column] = float(values[epoch]) if values else float("nan")
            rows.append(row)
    columns = ["problem", "optimizer", "setting", "file", "epoch", *METRICS]
    return pd.DataFrame(rows, columns=columns)


def best_baselines(baselines, problem: str):
    """Per optimizer, the rows of the setting with the best median final test accuracy."""
    frame = baselines[baselines["problem"] == problem]
    if frame.empty:
        return frame
    final = frame[frame["epoch"] == frame.groupby(["setting", "file"])["epoch"].transform("max")]
    score = final.groupby(["optimizer", "setting"])["test_acc"].median().fillna(float("-inf"))
    picks = score.reset_index().sort_values(["optimizer", "setting"], kind="stable")
    picks = picks.loc[picks.groupby("optimizer", sort=True)["test_acc"].idxmax()]
    keep = frame.set_index(["optimizer", "setting"]).index.isin(
        list(zip(picks["optimizer"], picks["setting"]))
    )
    return frame[keep]
