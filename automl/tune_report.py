"""The Lightning side of an AutoML trial: reporting to Ray Tune and PBT's optimizer update.

Imported inside the Ray workers only (`automl.trial.train_trial` imports it when a trial starts), so
the driver process never loads torch or Lightning: that keeps `automl run` seconds faster to start
and to exit.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Checkpoint

from automl.layout import CHECKPOINT_FILE
from segformer.fileio import link_or_copy

STATE_KEY = "automl_tune_report"  # top-level checkpoint key of TuneReportCallback's state


def _scalar(value: Any) -> float | None:
    try:
        number = float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError, RuntimeError):
        return None
    return number if math.isfinite(number) else None


class TuneReportCallback(Checkpoint):
    """Reports each validated epoch's metrics to Ray Tune, with a checkpoint when it is needed.

    Ray's own `ray.train.lightning.RayTrainReportCallback` only works inside a TorchTrainer; inside a
    function trainable `ray.tune.report` is the entry point. The reported dict carries `epoch`
    (1-based, the schedulers' time attribute), `best_<metric>` (the best value so far: trials are
    ranked by their best epoch, not their last) and `node_id` so the driver can show placement.

    The report is made at the end of a validated epoch, once the train action's
    `PeriodicCheckpoint` has written `segformer_model_latest.pth` (both are Lightning `Checkpoint`
    callbacks, which Lightning runs last and in list order; the train action lists its own first).
    The Ray checkpoint is that file, hard-linked into a scratch folder for Ray to copy: one
    serialization per epoch, not two. It goes with a report only when Ray needs it:

    - the epoch improved `best_<metric>` (promotion takes the best epoch's checkpoint), or
    - `checkpoint_every_report` (Population Based Training exploits a trial's latest state).

    Other reports carry metrics only, which is all the schedulers and searchers read. A restored
    trial resumes from its own `segformer_model_latest.pth` when that is newer than Ray's copy
    (see `automl.trial.train_trial`), so no epoch is trained twice for want of a checkpoint.
    """

    def __init__(self, metric: str, mode: str = "max", restored_from: str | None = None, checkpoint_every_report: bool = False,
                 continue_best: bool = False, extra: dict[str, float] | None = None) -> None:
        self.metric = metric
        self.extra = dict(extra or {})  # constant metrics sent with every report (the trial's latency)
        self.mode = mode
        self.best: float | None = None
        self.restored_from = restored_from  # trial whose checkpoint this run continues (resume / PBT exploit)
        self.checkpoint_every_report = checkpoint_every_report
        self.reports = 0
        # A trial resumed from its own checkpoint keeps the best value stored in it (this
        # callback's state); a PBT exploit starts its own record from the copied state.
        self.continue_best = continue_best
        self._pending: tuple[dict[str, Any], bool] | None = None  # this epoch's metrics, improved?
        self._resend: tuple[dict[str, Any], bool] | None = None  # restored: the checkpoint's own report

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._send_restored_report(trainer)

    # The best value and the epoch's not yet sent report go into the checkpoint under their own
    # top-level key, not as a callback state: Lightning would warn anyone resuming the promoted
    # checkpoint with `segformer train` to add this callback.
    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # Written by the epoch's checkpoint, which comes before this epoch's report: with the epoch's
        # training metrics (a resume re-sends this report; it carried the epoch before's train_loss).
        pending = None if self._pending is None else [self._refreshed(trainer, dict(self._pending[0])), self._pending[1]]
        checkpoint[STATE_KEY] = {"best": self.best, "pending": pending}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(STATE_KEY) or {}
        if not self.continue_best:
            return
        self.best = state.get("best")
        pending = state.get("pending")
        if pending:
            # A run stopped between writing its checkpoint and reporting that epoch (a killed
            # driver or worker) would lose the epoch: report it again when training restarts
            # (the driver's ledger replaces an epoch it already has).
            self._resend = (dict(pending[0]), bool(pending[1]))

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._send_restored_report(trainer)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A checkpoint of the last epoch: no training starts, but its report may still be due.
        self._send_restored_report(trainer)

    def _send_restored_report(self, trainer: L.Trainer) -> None:
        """The restored checkpoint's own epoch report, once, at the first hook after the restore
        (before on_fit_start on one device; strategies that restore after set-up come later)."""
        resend, self._resend = self._resend, None
        if resend is not None:
            source = Path(trainer.ckpt_path) if trainer.ckpt_path and Path(trainer.ckpt_path).is_file() else None
            self._report(trainer, *resend, source=source)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The best value is updated here, before the epoch's checkpoint is written, so the
        # checkpoint holds it; the report waits for that checkpoint (epoch end).
        if trainer.sanity_checking:
            return
        metrics: dict[str, Any] = {}
        for key, value in trainer.callback_metrics.items():
            number = _scalar(value)
            if number is not None:
                metrics[key] = number
        if self.metric not in metrics:
            return  # nothing to rank on (e.g. a validation run without the monitored metric)
        value = metrics[self.metric]
        improved = self.best is None or (value > self.best if self.mode == "max" else value < self.best)
        if improved:
            self.best = value
        metrics[f"best_{self.metric}"] = self.best  # what searchers and schedulers rank on
        metrics["epoch"] = trainer.current_epoch + 1
        if trainer.optimizers:
            metrics.setdefault("lr", float(trainer.optimizers[0].param_groups[0]["lr"]))
        self._pending = (metrics, improved)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Epochs without validation (train.validation_interval > 1) are not reported.
        pending, self._pending = self._pending, None
        if pending is not None:
            # The epoch's training metrics (train_loss) are aggregated only now: at validation end the
            # callback metrics still held the epoch before's.
            metrics, improved = pending
            self._report(trainer, self._refreshed(trainer, metrics), improved)

    def _refreshed(self, trainer: L.Trainer, metrics: dict[str, Any]) -> dict[str, Any]:
        """`metrics` with the epoch's training metrics (train_loss), aggregated at the epoch's end."""
        for key, value in trainer.callback_metrics.items():
            number = _scalar(value)
            if number is not None and key != self.metric:
                metrics[key] = number
        return metrics

    def _report(self, trainer: L.Trainer, metrics: dict[str, Any], improved: bool, source: Path | None = None) -> None:
        """`tune.report` of one epoch; with a checkpoint (`source`, else this epoch's latest file)
        when the epoch improved the best value or every report must carry one (PBT)."""
        import ray
        from ray import tune

        metrics.update(self.extra)
        metrics["node_id"] = ray.get_runtime_context().get_node_id()
        # Once per worker run: whose checkpoint it continues (the driver records PBT exploits and resumes).
        if self.restored_from is not None and self.reports == 0:
            metrics["restored_from"] = self.restored_from
            metrics["restored_at_epoch"] = metrics["epoch"] if source is not None else trainer.current_epoch
        self.reports += 1
        if not (improved or self.checkpoint_every_report):
            tune.report(metrics)
            return
        latest = source or _latest_checkpoint(trainer)
        with tempfile.TemporaryDirectory(prefix="automl_ckpt_", dir=latest.parent if latest else None) as tmp:
            target = Path(tmp) / CHECKPOINT_FILE
            if latest is not None:
                link_or_copy(latest, target)  # Ray copies it into its storage; the link costs nothing
            else:
                trainer.save_checkpoint(str(target))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def _latest_checkpoint(trainer: L.Trainer) -> Path | None:
    """The train action's `segformer_model_latest.pth` when it was written for this epoch's end."""
    from segformer.engine.callbacks import PeriodicCheckpoint

    for callback in trainer.callbacks:
        if isinstance(callback, PeriodicCheckpoint) and callback.saved and callback.saved[-1] == callback.latest_path:
            if callback.latest_path.is_file():
                return callback.latest_path
    return None
