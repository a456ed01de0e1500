"""One training run under the DeepOBS protocol, checkpointed every epoch and resumable.

Protocol (``problems.md`` §4, ``gridsearch.md`` §5.1/5.3):

* Evaluate train_eval, valid and test before training and after every epoch (``epochs + 1``
  rows), with the network in ``eval()`` mode and without gradients; each loss is the mean over
  batches of (batch-mean cross-entropy + the L2 term), each accuracy the mean of batch accuracies.
* Train with the **data loss** only; the L2 factor enters the optimizer (curvature methods: as the
  paper's code did; baselines: torch's coupled ``weight_decay``, the same gradient).
* Log the minibatch loss (with the L2 term) every :data:`LOG_INTERVAL` steps (sidecar
  ``minibatch_losses``). A logged loss that is NaN/inf or above :data:`DIVERGENCE_LOSS`, or a
  non-finite evaluation, ends the run as ``diverged``; its rows are kept.
* After every epoch: checkpoint (model, optimizer, data generator, torch RNG, rows) written
  atomically, then the CSV, then the sidecar. A killed run resumes from the last checkpoint and
  reproduces what an uninterrupted run would have computed (on the same device).
* Checkpoints are portable: loaded on the CPU, then the model and optimizer state move to the
  run's device; the RNG streams that exist on this device are restored, and one that does not
  (a CUDA stream resumed on a CPU) is reported in the attempt's sidecar entry. The last two
  checkpoints are kept: a corrupt or truncated one falls back to the previous one, and with
  neither readable the run restarts cleanly from epoch 0 (reported, never a crash loop). The
  checkpoint holds the rows, so a torn CSV is rewritten from it, never appended to.
* The device ``"auto"`` is resolved here, where the run executes (CUDA if this process sees a
  GPU). Every attempt appends ``{at, host, pid, device, device_name, cuda_visible_devices,
  wall_s, ...}`` to the sidecar's ``attempts`` list.

``train_time_s`` is the cumulative wall time of the training steps (evaluation excluded), read
after a device synchronisation at the end of each epoch. ``max_steps_per_epoch`` (an option) is a
smoke-test truncation only: the paper's runs use full epochs.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bench.gridsearch.grid import RunConfig
from bench.gridsearch.store import RunStore, hostname

#: Steps between logged minibatch losses (DeepOBS ``train_log_interval``).
LOG_INTERVAL = 10
#: A logged loss above this ends the run as diverged (DeepOBS runner).
DIVERGENCE_LOSS = 1e10
#: Options a run understands (``RunConfig.options``); anything else is an error.
KNOWN_OPTIONS = ("average", "inverse_every", "max_steps_per_epoch", "data", "backend")


def resolve_device(name: str) -> torch.device:
    """Return the device ``name`` names here; ``"auto"``: CUDA if this process sees a GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _check_options(options: dict[str, Any]) -> None:
    unknown = sorted(set(options) - set(KNOWN_OPTIONS))
    if unknown:
        raise ValueError(f"unknown run options {unknown}; valid: {', '.join(KNOWN_OPTIONS)}")


def load_data(config: RunConfig, problem: Any, device: torch.device) -> Any:
    """Return the run's data (``problems.data.load_problem_data``) with the ``data`` options."""
    from problems.data import load_problem_data

    return load_problem_data(
        problem,
        source=config.source,
        seed=config.seed,
        device=device,
        batch_size=config.batch_size,
        **config.options.get("data", {}),
    )


@torch.no_grad()
def evaluate(
    model: nn.Module, loss_fn: nn.Module, penalty: Tensor, batches
) -> tuple[Tensor, Tensor]:
    """Return (mean loss incl. ``penalty``, mean accuracy) over ``batches`` as device tensors."""
    loss_sum = torch.zeros((), device=penalty.device)
    acc_sum = torch.zeros((), device=penalty.device)
    count = 0
    for x, y in batches:
        logits = model(x)
        loss_sum += loss_fn(logits, y).float() + penalty
        acc_sum += (logits.argmax(dim=1) == y).float().mean()
        count += 1
    return loss_sum / max(count, 1), acc_sum / max(count, 1)


def evaluate_all(model: nn.Module, problem: Any, data: Any) -> dict[str, float]:
    """Evaluate train_eval, valid and test (DeepOBS order) in eval mode; one host sync."""
    was_training = model.training
    model.eval()
    loss_fn = problem.loss_fn()
    with torch.no_grad():
        penalty = problem.l2_penalty(model).detach().float()
        values = []
        for phase in (data.train_eval, data.valid, data.test):
            values.extend(evaluate(model, loss_fn, penalty, phase()))
    model.train(was_training)
    numbers = torch.stack(values).tolist()
    keys = ("train_loss", "train_acc", "valid_loss", "valid_acc", "test_loss", "test_acc")
    return dict(zip(keys, numbers))


def _row(config: RunConfig, epoch: int, step: int, metrics: dict[str, float], t: float) -> dict:
    return {
        "run_id": config.run_id,
        "problem": config.problem,
        "method": config.method,
        "lr": config.lr,
        "damping": config.damping,
        "seed": config.seed,
        "epoch": epoch,
        "step": step,
        **metrics,
        "train_time_s": round(t, 4),
    }


def _diverged(value: float) -> bool:
    return not math.isfinite(value) or value > DIVERGENCE_LOSS


def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> list[str]:
    """Restore the RNG streams that exist on ``device``; returns the names of those that do not.

    A ``cuda`` stream resumed on a CPU, or a CUDA run resumed from a CPU checkpoint (its CUDA
    stream keeps this process's seed), cannot continue the original sequence: reported, not fatal.
    """
    torch.set_rng_state(state["cpu"].cpu())
    missing = []
    if "cuda" in state:
        if device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda"].cpu(), device)
        else:
            missing.append("cuda (checkpoint from a CUDA device, resumed on " + device.type + ")")
    elif device.type == "cuda":
        missing.append("cuda (checkpoint from a CPU run: the CUDA stream starts fresh)")
    return missing


def _previous(path: os.PathLike) -> str:
    """Return the path of the checkpoint before ``path`` (kept as a fallback)."""
    return f"{os.fspath(path)}.prev"


def _save_checkpoint(path: os.PathLike, payload: dict[str, Any]) -> None:
    """``torch.save`` to a temp file beside ``path``, keep the last one as ``.prev``, replace.

    Every step is an ``os.replace`` (atomic): a kill leaves the new or the previous checkpoint.
    """
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    torch.save(payload, tmp)
    if os.path.exists(path):
        os.replace(path, _previous(path))
    os.replace(tmp, path)


#: What a checkpoint must hold to be resumed from.
CHECKPOINT_KEYS = (
    "epoch", "step", "train_time", "rows", "minibatch_losses", "model", "optimizer", "data", "rng",
)  # fmt: skip


def load_checkpoint(path: os.PathLike) -> dict[str, Any]:
    """Load a checkpoint on the CPU (portable across devices) and check it is whole.

    Raises:
        Exception: whatever ``torch.load`` raises for a corrupt or truncated file, or a
            ``KeyError`` naming what is missing.

    """
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise KeyError(f"checkpoint {os.fspath(path)} lacks {missing}")
    return ckpt


class _Run:
    """The state of one run in this process (model, optimizer, data, rows, counters)."""

    def __init__(self, config: RunConfig, store: RunStore, problem: Any | None):
        import problems
        from extensions.optimizers import make_optimizer, resolve_backend

        _check_options(config.options)
        self.config, self.store = config, store
        self.device = resolve_device(config.device)
        if self.device.type == "cuda":  # DeepOBS: config.IS_DETERMINISTIC
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
        self.problem = problem if problem is not None else problems.get(config.problem)
        torch.manual_seed(config.seed)
        self.model = self.problem.model().to(self.device)
        self.loss_fn = self.problem.loss_fn()
        self.data = load_data(config, self.problem, self.device)
        opts = config.options
        self.optimizer = make_optimizer(
            config.method,
            self.problem.l2_groups(self.model),
            config.lr,
            config.damping,
            **{k: opts[k] for k in ("average", "inverse_every") if k in opts},
        )
        self.backend = resolve_backend(opts.get("backend", "auto")) if config.is_curvature else None
        self.max_steps = opts.get("max_steps_per_epoch")
        self.epoch, self.step, self.train_time = 0, 0, 0.0
        self.rows: list[dict[str, Any]] = []
        self.minibatch_losses: list[list[float]] = []

    # ------------------------------------------------------------------ checkpoints

    def save(self) -> None:
        """Checkpoint, then CSV (never ahead of the checkpoint); the caller writes the sidecar."""
        _save_checkpoint(
            self.store.checkpoint_path(self.config.run_id),
            {
                "epoch": self.epoch,
                "step": self.step,
                "train_time": self.train_time,
                "rows": self.rows,
                "minibatch_losses": self.minibatch_losses,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "data": self.data.state_dict(),
                "rng": _rng_state(self.device),
            },
        )
        self.store.write_rows(self.config.run_id, self.rows)

    def checkpoints(self) -> list[str]:
        """Return the checkpoints to resume from, newest first (those that exist)."""
        path = self.store.checkpoint_path(self.config.run_id)
        return [p for p in (os.fspath(path), _previous(path)) if os.path.exists(p)]

    def restore(self, path: str) -> list[str]:
        """Resume from the checkpoint at ``path``; returns the RNG streams not restored.

        Raises:
            Exception: the checkpoint is unreadable or does not fit this run (the caller falls
                back to an older one or a clean restart, with a fresh :class:`_Run`).

        """
        ckpt = load_checkpoint(path)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])  # torch casts state to the params'
        self.data.load_state_dict(ckpt["data"])
        missing = _set_rng_state(ckpt["rng"], self.device)
        self.epoch, self.step = int(ckpt["epoch"]), int(ckpt["step"])
        self.train_time = float(ckpt["train_time"])
        self.rows, self.minibatch_losses = list(ckpt["rows"]), list(ckpt["minibatch_losses"])
        self.store.write_rows(self.config.run_id, self.rows)  # repair a CSV behind the ckpt
        return missing

    # ------------------------------------------------------------------ training

    def evaluate(self) -> bool:
        """Append an evaluation row; returns False if an evaluated loss is not finite."""
        metrics = evaluate_all(self.model, self.problem, self.data)
        self.rows.append(_row(self.config, self.epoch, self.step, metrics, self.train_time))
        return not any(_diverged(metrics[k]) for k in ("train_loss", "valid_loss", "test_loss"))

    def _train_step(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict | None]:
        """Forward and backward on the data loss; return the detached loss and the curvature."""
        from extensions.optimizers import loss_and_curvature

        self.optimizer.zero_grad(set_to_none=True)
        if self.config.is_curvature:
            return loss_and_curvature(
                self.model, self.loss_fn, x, y, self.config.method, self.backend
            )
        loss = self.loss_fn(self.model(x), y)
        loss.backward()
        return loss.detach(), None

    def _diverged_on(self, x: Tensor, y: Tensor) -> bool:
        """Whether the weights or this batch's loss are NaN/inf/huge (host sync; error path)."""
        with torch.no_grad():
            if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
                return True
            return _diverged(float(self.loss_fn(self.model(x), y)))

    def train_epoch(self) -> bool:
        """Train one epoch; returns False if a logged minibatch loss diverged."""
        self.model.train()
        _sync(self.device)
        start = time.perf_counter()
        ok, loss = True, None
        for i, (x, y) in enumerate(self.data.train()):
            if self.max_steps is not None and i >= self.max_steps:
                break
            try:
                loss, curvature = self._train_step(x, y)
            except (ValueError, RuntimeError):
                # NaN/inf weights (a divergence between two logged steps) make curvature code
                # raise, e.g. MC label sampling from NaN probabilities: that is a divergence.
                if not self._diverged_on(x, y):
                    raise
                ok = False
                self.minibatch_losses.append([self.step, float("nan")])
                break
            log = self.step % LOG_INTERVAL == 0
            if log:  # DeepOBS logs the loss with the L2 term, before the update
                with torch.no_grad():
                    logged = (loss + self.problem.l2_penalty(self.model)).item()
            if curvature is not None:
                self.optimizer.step(curvature)
            else:
                self.optimizer.step()
            self.step += 1
            if log:
                self.minibatch_losses.append([self.step - 1, logged])
                if _diverged(logged):
                    ok = False
                    break
        _sync(self.device)
        self.train_time += time.perf_counter() - start
        self.epoch += 1
        if (
            ok and loss is not None and _diverged(loss.item())
        ):  # DeepOBS: the epoch's last minibatch loss
            ok = False
        return ok

    # ------------------------------------------------------------------ sidecar

    def sidecar(self, status: str, base: dict[str, Any] | None) -> dict[str, Any]:
        """Build the sidecar for ``status``, keeping the history fields of ``base``."""
        out = dict(base or {})
        out.update(
            run_id=self.config.run_id,
            config=self.config.to_dict(),
            identity=self.config.identity(),
            status=status,
            epochs_done=self.epoch,
            steps=self.step,
            train_time_s=self.train_time,
            curvature_backend=self.backend,
            minibatch_losses=self.minibatch_losses,
            log_interval=LOG_INTERVAL,
            updated_at=_now(),
        )
        return out


def train_run(config: RunConfig, store: RunStore, *, problem: Any | None = None) -> str:
    """Train (or resume) one run and record it in ``store``; returns its final status.

    Args:
        config: the run.
        store: where its CSV, sidecar and checkpoint live.
        problem: a ``bench.spec.Problem`` to use instead of ``problems.get(config.problem)``.

    Returns:
        ``"finished"`` or ``"diverged"`` (exceptions propagate;
        :func:`bench.gridsearch.jobs.run_job` records them as ``failed``).

    """
    from bench.environment import collect_environment, device_info

    run_id = config.run_id
    previous = store.read_sidecar(run_id)
    if previous is not None and previous.get("status") in ("finished", "diverged"):
        return previous["status"]
    started = time.perf_counter()
    run = _Run(config, store, problem)
    attempt: dict[str, Any] = {
        "at": _now(),
        "host": hostname(),
        "pid": os.getpid(),
        "device": str(run.device),
        "device_name": device_info(run.device).get("device_name"),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
    run = _resume(run, config, store, problem, attempt)
    resumed = "resumed_from_epoch" in attempt
    base = dict(previous or {})
    base.setdefault("started_at", _now())
    attempts = base.get("attempts")
    base["attempts"] = [*(attempts if isinstance(attempts, list) else []), attempt]
    base.setdefault("environment", collect_environment(run.device))

    def sidecar(status: str) -> dict[str, Any]:
        _sync(run.device)
        attempt["wall_s"] = round(time.perf_counter() - started, 3)
        return run.sidecar(status, base)

    if resumed:
        base.setdefault("resumed", []).append({"at": _now(), "from_epoch": run.epoch})
    if not resumed:
        ok = run.evaluate()  # epoch 0: before any training
        run.save()
        if not ok:
            return _finish(run, "diverged", sidecar)
    store.write_sidecar(run_id, sidecar("running"))
    while run.epoch < config.epochs:
        ok = run.train_epoch()
        ok = run.evaluate() and ok
        if not ok:
            store.write_rows(run_id, run.rows)
            return _finish(run, "diverged", sidecar)
        run.save()
        store.write_sidecar(run_id, sidecar("running"))
    return _finish(run, "finished", sidecar)


def _resume(
    run: _Run, config: RunConfig, store: RunStore, problem: Any | None, attempt: dict[str, Any]
) -> _Run:
    """Resume ``run`` from its newest readable checkpoint; record what happened in ``attempt``.

    A checkpoint that fails to load or apply is skipped (``attempt["bad_checkpoints"]``), with a
    fresh run for the next try; with none left the run restarts from epoch 0. A torn CSV (cut
    mid-row by something other than our atomic writes: a copy, a full disk) is never appended to:
    the checkpoint's rows replace it (``attempt["torn_csv"]``), or the restart rewrites it.
    """
    from bench.results_io import CSVFileError

    try:
        store.read_rows(config.run_id)
    except CSVFileError as err:
        attempt["torn_csv"] = str(err)[:500]
        print(
            f"curvbench: run {config.run_id}: {err}; its rows are rewritten from the "
            "checkpoint (or from epoch 0), never appended to"
        )
    for path in run.checkpoints():
        try:
            missing = run.restore(path)
        except Exception as err:  # noqa: BLE001 - corrupt, truncated, or from another run
            attempt.setdefault("bad_checkpoints", []).append(
                {"path": os.path.basename(path), "error": f"{type(err).__name__}: {err}"[:500]}
            )
            print(f"curvbench: run {config.run_id}: unusable checkpoint {path} ({err})")
            run = _Run(config, store, problem)
            continue
        attempt["resumed_from_epoch"] = run.epoch
        if missing:
            attempt["rng_not_restored"] = missing
        return run
    if "bad_checkpoints" in attempt:
        attempt["restarted"] = "no usable checkpoint: training from epoch 0"
    return run


def _finish(run: _Run, status: str, sidecar) -> str:
    """Write the final sidecar (``sidecar(status)`` builds it) and drop the checkpoints."""
    run.store.write_rows(run.config.run_id, run.rows)
    final = sidecar(status)
    final["finished_at"] = _now()
    run.store.write_sidecar(run.config.run_id, final)
    path = run.store.checkpoint_path(run.config.run_id)
    for leftover in (path, _previous(path)):
        Path(leftover).unlink(missing_ok=True)
    return status
