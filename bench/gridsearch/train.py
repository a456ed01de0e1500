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

``train_time_s`` is the cumulative wall time of the training steps (evaluation excluded), read
after a device synchronisation at the end of each epoch. ``max_steps_per_epoch`` (an option) is a
smoke-test truncation only: the paper's runs use full epochs.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import time
from typing import Any

import torch
from torch import Tensor, nn

from bench.gridsearch.grid import RunConfig
from bench.gridsearch.store import RunStore

#: Steps between logged minibatch losses (DeepOBS ``train_log_interval``).
LOG_INTERVAL = 10
#: A logged loss above this ends the run as diverged (DeepOBS runner).
DIVERGENCE_LOSS = 1e10
#: Options a run understands (``RunConfig.options``); anything else is an error.
KNOWN_OPTIONS = ("average", "inverse_every", "max_steps_per_epoch", "data", "backend")


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


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _save_checkpoint(path: os.PathLike, payload: dict[str, Any]) -> None:
    """``torch.save`` to a temp file beside ``path``, then ``os.replace`` (atomic)."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    torch.save(payload, tmp)
    os.replace(tmp, path)


class _Run:
    """The state of one run in this process (model, optimizer, data, rows, counters)."""

    def __init__(self, config: RunConfig, store: RunStore, problem: Any | None):
        import problems
        from extensions.optimizers import make_optimizer, resolve_backend

        _check_options(config.options)
        self.config, self.store = config, store
        self.device = torch.device(config.device)
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

    def restore(self) -> bool:
        """Load the last checkpoint if there is one; returns whether it did."""
        path = self.store.checkpoint_path(self.config.run_id)
        if not path.exists():
            return False
        ckpt = torch.load(path, map_location=self.device, weights_only=True)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.data.load_state_dict(ckpt["data"])
        _set_rng_state(ckpt["rng"], self.device)
        self.epoch, self.step = int(ckpt["epoch"]), int(ckpt["step"])
        self.train_time = float(ckpt["train_time"])
        self.rows, self.minibatch_losses = list(ckpt["rows"]), list(ckpt["minibatch_losses"])
        self.store.write_rows(self.config.run_id, self.rows)  # repair a CSV behind the ckpt
        return True

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
    from bench.environment import collect_environment

    run_id = config.run_id
    previous = store.read_sidecar(run_id)
    if previous is not None and previous.get("status") in ("finished", "diverged"):
        return previous["status"]
    run = _Run(config, store, problem)
    resumed = run.restore()
    base = dict(previous or {})
    base.setdefault("started_at", _now())
    base["attempts"] = int(base.get("attempts", 0)) + 1
    base.setdefault("environment", collect_environment(run.device))
    base.setdefault("hosts", []).append(
        {
            "at": _now(),
            "pid": os.getpid(),
            "visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        }
    )
    if resumed:
        base.setdefault("resumed", []).append({"at": _now(), "from_epoch": run.epoch})
    if not resumed:
        ok = run.evaluate()  # epoch 0: before any training
        run.save()
        if not ok:
            return _finish(run, "diverged", base)
    store.write_sidecar(run_id, run.sidecar("running", base))
    while run.epoch < config.epochs:
        ok = run.train_epoch()
        ok = run.evaluate() and ok
        if not ok:
            store.write_rows(run_id, run.rows)
            return _finish(run, "diverged", base)
        run.save()
        store.write_sidecar(run_id, run.sidecar("running", base))
    return _finish(run, "finished", base)


def _finish(run: _Run, status: str, base: dict[str, Any]) -> str:
    """Write the final sidecar and drop the checkpoint."""
    base["finished_at"] = _now()
    run.store.write_rows(run.config.run_id, run.rows)
    run.store.write_sidecar(run.config.run_id, run.sidecar(status, base))
    run.store.checkpoint_path(run.config.run_id).unlink(missing_ok=True)
    return status
