"""One AutoML trial: the plain `segformer train` action, run in-process inside a Ray Tune worker.

A trial is configured exactly like a user run: spec file -> the user's key=value overrides -> the
sampled values (dotted spec keys) -> the trial's own results folder, all through the same
`segformer.config.apply_overrides` (with its validation). Nothing here knows about SegFormer's
internals; the only hook is a Lightning callback passed through `train.run(callbacks=...)` that
reports every validation to Ray Tune together with a Lightning checkpoint.

Multi-fidelity algorithms (ASHA, HyperBand, BOHB) stop trials early, but every trial is configured
with the full `num_epochs` budget, so its learning-rate schedule is the one a single full run would
use: a promoted trial's checkpoint is exactly what `segformer train` would have produced at that
epoch, and its metric history is comparable across trials (no schedule squeezed into a short rung).

Checkpoints reported to Ray are full Lightning checkpoints (model, optimizer, scheduler, loop
state). Ray hands the latest one back through `ray.tune.get_checkpoint()` when a trial is restored
(`automl resume`) or when Population Based Training copies a better trial's state (exploit); the
trial then resumes training from it via `train.resume_training_checkpoint_path`. For PBT the newly
sampled hyperparameters (explore) are applied to the restored optimizer in `on_train_start`.
"""

from __future__ import annotations

import math
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L

CHECKPOINT_FILE = "checkpoint.ckpt"

# Spec keys the PBT explore step can change on a restored optimizer.
_LR_KEY = "train.optim.lr"
_WD_KEY = "train.optim.weight_decay"
_MOMENTUM_KEY = "train.optim.momentum"  # SGD momentum; beta1 for adam/adamw (TAO's meaning)


@dataclass(frozen=True)
class TrialContext:
    """Everything a trial needs besides its sampled values (picklable; sent once to the workers)."""

    results_dir: str  # the search's results folder; each trial writes into <results_dir>/<trial name>
    spec: str | None  # the user's spec file (None: defaults only)
    overrides: tuple[str, ...] = ()  # the user's key=value overrides, applied before sampled values
    metric: str = "val_miou"
    mode: str = "max"  # direction of `metric`; `best_<metric>` is the best value so far
    max_epochs: int | None = None  # per-trial epoch budget (train.num_epochs); None keeps the spec's
    fixed: dict[str, Any] = field(default_factory=dict)  # extra overrides every trial gets
    apply_restored_hparams: bool = False  # PBT: push the trial's (new) config into a restored optimizer


# Names given in this process, per results folder. Ray copies the name creator (the basic variant
# generator deep-copies the experiment spec it belongs to), so the counter cannot live in the object.
_NAMES: dict[str, dict[str, str]] = {}


class TrialNamer:
    """Ray `trial_name_creator`/`trial_dirname_creator`: trial_000, trial_001, ... in creation order.

    Ray's trial ids are random, so the number is ours. Ray stores the name with the trial, so a
    restored trial keeps it; after `Tuner.restore` (a new process) numbering goes on after the
    highest name already used in the results folder, the ledger or Ray's experiment. Copies of
    the namer in one process share their names (see `_NAMES`).
    """

    def __init__(self, results_dir: str) -> None:
        self.results_dir = str(results_dir)

    def _first_free(self) -> int:
        root = Path(self.results_dir)
        used = [p.name for p in root.glob("trial_*")] + [p.name for p in (root / "ray").glob("*/trial_*")]
        state = root / "automl_state.json"
        if state.is_file():
            import json

            used += [t.get("name", "") for t in json.loads(state.read_text(encoding="utf-8")).get("trials", {}).values()]
        numbers = [int(m.group(1)) for n in used if (m := re.fullmatch(r"trial_(\d+)", n))]
        return max(numbers, default=-1) + 1

    def __call__(self, trial: Any) -> str:
        names = _NAMES.get(self.results_dir)
        if names is None:
            names = _NAMES[self.results_dir] = {}
            first = self._first_free()
        else:
            first = None
        if trial.trial_id not in names:
            if first is None:
                first = max((int(n.split("_")[1]) for n in names.values()), default=self._first_free() - 1) + 1
            names[trial.trial_id] = f"trial_{first:03d}"
        return names[trial.trial_id]


def trial_name(trial: Any) -> str:
    """The name a Ray `Trial` was given by `TrialNamer` (its string form otherwise)."""
    return getattr(trial, "custom_trial_name", None) or str(trial)


def _scalar(value: Any) -> float | None:
    try:
        number = float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError, RuntimeError):
        return None
    return number if math.isfinite(number) else None


class TuneReportCallback(L.Callback):
    """Reports each validation's metrics and a Lightning checkpoint to Ray Tune.

    Ray's own `ray.train.lightning.RayTrainReportCallback` only works inside a TorchTrainer; inside a
    function trainable `ray.tune.report` is the entry point. The reported dict carries `epoch`
    (1-based, the schedulers' time attribute), `best_<metric>` (the best value so far: trials are
    ranked by their best epoch, not their last) and `node_id` so the driver can show placement.
    """

    def __init__(self, metric: str, mode: str = "max", restored_hparams: dict[str, Any] | None = None,
                 restored_from: str | None = None) -> None:
        self.metric = metric
        self.mode = mode
        self.best: float | None = None
        self.restored_hparams = restored_hparams or {}
        self.restored_from = restored_from  # trial whose checkpoint this run continues (resume / PBT exploit)
        self.reports = 0
        self.first_step_at: float | None = None  # wall clock of the first training step (start-up latency)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.restored_hparams:
            apply_hparams_to_optimizers(trainer, self.restored_hparams)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if self.first_step_at is None:
            self.first_step_at = time.time()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        import ray
        from ray import tune

        metrics: dict[str, Any] = {}
        for key, value in trainer.callback_metrics.items():
            number = _scalar(value)
            if number is not None:
                metrics[key] = number
        if self.metric not in metrics:
            return  # nothing to rank on (e.g. a validation run without the monitored metric)
        value = metrics[self.metric]
        if self.best is None or (value > self.best if self.mode == "max" else value < self.best):
            self.best = value
        metrics[f"best_{self.metric}"] = self.best  # what searchers and schedulers rank on
        metrics["epoch"] = trainer.current_epoch + 1
        if trainer.optimizers:
            metrics.setdefault("lr", float(trainer.optimizers[0].param_groups[0]["lr"]))
        metrics["node_id"] = ray.get_runtime_context().get_node_id()
        if self.reports == 0:
            # First report of this worker run: when it started training, and whose checkpoint it
            # continues (the driver turns these into start-up latency and PBT exploit records).
            if self.first_step_at is not None:
                metrics["first_step_at"] = self.first_step_at
            if self.restored_from is not None:
                metrics["restored_from"] = self.restored_from
                metrics["restored_at_epoch"] = trainer.current_epoch
        with tempfile.TemporaryDirectory(prefix="automl_ckpt_") as tmp:
            trainer.save_checkpoint(str(Path(tmp) / CHECKPOINT_FILE))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
        self.reports += 1


def apply_hparams_to_optimizers(trainer: L.Trainer, hparams: dict[str, Any]) -> None:
    """Make a restored optimizer follow the trial's current config (PBT explore).

    Lightning restores the optimizer and scheduler state from the checkpoint, including the old
    learning rate. The new lr rescales the schedule (base lrs and current lr by the same factor) so
    the schedule keeps its shape over the full epoch budget.
    """
    new_lr = hparams.get(_LR_KEY)
    new_wd = hparams.get(_WD_KEY)
    new_momentum = hparams.get(_MOMENTUM_KEY)
    for index, optimizer in enumerate(trainer.optimizers):
        ratio = None
        if new_lr is not None:
            schedulers = [c.scheduler for c in trainer.lr_scheduler_configs if c.scheduler.optimizer is optimizer]
            base = schedulers[0].base_lrs[0] if schedulers and getattr(schedulers[0], "base_lrs", None) else None
            base = base or optimizer.param_groups[0].get("initial_lr") or optimizer.param_groups[0]["lr"]
            ratio = float(new_lr) / float(base) if base else None
            for scheduler in schedulers:
                if getattr(scheduler, "base_lrs", None):
                    scheduler.base_lrs = [b * ratio for b in scheduler.base_lrs]
        for group in optimizer.param_groups:
            if ratio is not None:
                group["lr"] *= ratio
                if "initial_lr" in group:
                    group["initial_lr"] *= ratio
            if new_wd is not None and "weight_decay" in group:
                group["weight_decay"] = float(new_wd)
            if new_momentum is not None:
                if "betas" in group:
                    group["betas"] = (float(new_momentum), group["betas"][1])
                elif "momentum" in group:
                    group["momentum"] = float(new_momentum)


def train_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """Ray Tune function trainable: one `segformer train` run with `config` as spec overrides."""
    from ray import tune

    from segformer.actions import train as train_action
    from segformer.config import apply_overrides, load_config

    name = tune.get_context().get_trial_name()
    trial_dir = Path(ctx.results_dir) / name
    trial_dir.mkdir(parents=True, exist_ok=True)

    overrides: dict[str, Any] = dict(ctx.fixed)
    overrides.update({k: v for k, v in config.items() if not k.startswith("_")})
    overrides["results_dir"] = str(trial_dir)
    overrides["train.results_dir"] = str(trial_dir / "train")
    if ctx.max_epochs is not None:
        overrides["train.num_epochs"] = int(ctx.max_epochs)

    restored_hparams: dict[str, Any] = {}
    restored_from: str | None = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        # Ray stores a trial's checkpoints in <experiment>/<trial name>/checkpoint_NNNNNN: the
        # folder name says whose checkpoint this is (another trial's after a PBT exploit).
        restored_from = Path(str(checkpoint.path)).parent.name
        # Resume (automl resume) or PBT exploit: continue from the checkpoint Ray hands us. Copy it
        # out of Ray's storage first: Ray may delete old checkpoints while this trial runs.
        restore_dir = trial_dir / "restore"
        shutil.rmtree(restore_dir, ignore_errors=True)
        with checkpoint.as_directory() as src:
            shutil.copytree(src, restore_dir)
        overrides["train.resume_training_checkpoint_path"] = str(restore_dir / CHECKPOINT_FILE)
        if ctx.apply_restored_hparams:
            restored_hparams = {k: v for k, v in config.items() if k in (_LR_KEY, _WD_KEY, _MOMENTUM_KEY)}

    cfg = apply_overrides(load_config(ctx.spec, [f"results_dir={trial_dir}", *ctx.overrides]), overrides)
    callback = TuneReportCallback(ctx.metric, ctx.mode, restored_hparams, restored_from)
    train_action.run(cfg, callbacks=[callback], quiet=True)
    if callback.reports == 0 and checkpoint is None:
        raise RuntimeError(
            f"{name} finished without reporting '{ctx.metric}': the train action must log it at each "
            f"validation (check train.validation_interval <= train.num_epochs and the metric name)"
        )
