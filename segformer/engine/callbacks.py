"""Callbacks and the checkpoint writer behind the train action's results layout.

- :class:`AtomicCheckpointIO`: every checkpoint goes to a temporary file, is fsynced and renamed,
  so a crash never leaves a truncated file under a final name.
- :class:`PeriodicCheckpoint`: ``segformer_model_latest.pth`` after every epoch and
  ``model_epoch_<EEE>_step_<SSSSS>.pth`` every ``checkpoint_interval`` epochs or steps.
  Numbering follows Lightning (and TAO): ``epoch`` is the 0-based index of the epoch the
  checkpoint closes, ``step`` the number of optimizer steps taken so far.
- :class:`StatusLog`: ``status.json``, one JSON object per line per epoch.
- :class:`EpochLines`: training progress where there is no terminal for a bar: a line per epoch
  (and every 30 seconds within a long one).
- :class:`RngState`: saves and restores the Python/NumPy/torch random generators, so a resumed
  run draws the same shuffles, augmentations and dropout masks as an uninterrupted one.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import random
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from segformer.engine.checkpoint_files import LATEST_NAME, checkpoint_name
from segformer.errors import SpecError
from segformer.fileio import atomic_write, atomic_write_text, link_or_copy
from segformer.text import fmt, span

log = logging.getLogger(__name__)

CHECKPOINT_UNITS = ("epoch", "step")


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a temporary file in the target folder, fsync, then ``os.replace``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"storage_options are not supported by {type(self).__name__}, got {storage_options!r}")
        atomic_write(Path(path), lambda handle: torch.save(checkpoint, handle))

    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        # Our checkpoints hold only tensors and plain values: always load safely.
        from segformer.model.checkpoints import safe_torch_load

        # Our checkpoints hold only tensors and plain values; a bad file is a CheckpointError.
        return safe_torch_load(path, map_location=map_location or "cpu")


class PeriodicCheckpoint(Checkpoint):
    """Writes the latest and the periodic checkpoints (see the module docstring for names).

    A :class:`Checkpoint` subclass, so Lightning runs it after the other callbacks: the status
    history of an epoch is complete when that epoch's checkpoint is written.
    """

    def __init__(self, dirpath: str | Path, interval: int = 1, unit: str = "epoch") -> None:
        if unit not in CHECKPOINT_UNITS:
            raise SpecError(f"train.checkpoint_interval_unit must be one of {CHECKPOINT_UNITS}, got {unit!r}")
        if interval < 1:
            raise SpecError(f"train.checkpoint_interval must be >= 1, got {interval}")
        self.dirpath = Path(dirpath)
        self.interval = interval
        self.unit = unit
        self.saved: list[Path] = []
        self._due_at_epoch_end = False

    @property
    def latest_path(self) -> Path:
        return self.dirpath / LATEST_NAME

    def _save(self, trainer: L.Trainer, name: str) -> Path:
        path = self.dirpath / name
        trainer.save_checkpoint(path, weights_only=False)  # full state: resumable
        self.saved.append(path)
        return path

    def _save_periodic(self, trainer: L.Trainer) -> None:
        """A numbered checkpoint, and ``segformer_model_latest.pth`` pointing at it.

        The latest file always follows the newest checkpoint, so a run killed at any moment after
        its first checkpoint can resume from ``segformer_model_latest.pth``. Same content: a link
        (or copy) instead of serializing twice; rank 0 holds the file.
        """
        periodic = self._save(trainer, checkpoint_name(trainer.current_epoch, trainer.global_step))
        if trainer.is_global_zero:
            link_or_copy(periodic, self.latest_path)
        trainer.strategy.barrier("segformer_latest_checkpoint")
        self.saved.append(self.latest_path)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        step = trainer.global_step
        if self.unit == "step" and step > 0 and step % self.interval == 0 and not trainer.sanity_checking:
            if trainer.is_last_batch:
                # Saved now, the checkpoint would miss this epoch's end (validation, status line),
                # and a resume from it would skip them: save it once the epoch is complete.
                self._due_at_epoch_end = True
            else:
                self._save_periodic(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step_due, self._due_at_epoch_end = self._due_at_epoch_end, False
        if step_due or (self.unit == "epoch" and (trainer.current_epoch + 1) % self.interval == 0):
            self._save_periodic(trainer)
            return
        # Not a checkpoint epoch (or step unit): the end-of-epoch state is the latest one.
        self._save(trainer, LATEST_NAME)


class StatusLog(L.Callback):
    """``status.json``: one JSON object per line per epoch (epoch, val_miou, val_loss, train_loss,
    lr, seconds, ...). Validation values are null in epochs without validation.

    The history is part of the checkpoint, so a resumed run rewrites the file with the epochs up
    to the checkpoint and continues from there (no lines from a discarded future).

    When the training ends as asked, its last line says so in TAO's fields (status SUCCESS), for the
    tools that poll a status file for the end; there is still one line per epoch.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.history: list[dict[str, Any]] = []
        self._epoch_start = time.monotonic()
        self._validated = False
        self._trained = False  # an epoch ended in this run (a resume of a finished training trains none)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = time.monotonic()
        self._validated = False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validated = True

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics

        def value(name: str, validated_only: bool = True) -> float | None:
            if (validated_only and not self._validated) or name not in metrics:
                return None
            number = float(metrics[name])
            return None if math.isnan(number) else number

        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None
        record = {
            "epoch": trainer.current_epoch,
            "max_epochs": trainer.max_epochs,
            "step": trainer.global_step,
            "train_loss": value("train_loss", validated_only=False),
            "val_loss": value("val_loss"),
            "val_miou": value("val_miou"),
            "val_macc": value("val_macc"),
            "val_aacc": value("val_aacc"),
            "lr": lr,
            "seconds": round(time.monotonic() - self._epoch_start, 3),
        }
        record.update(_tao_status(record, trainer.max_epochs))
        self.history.append(record)
        self._trained = True
        self._write(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._trained and self.history:
            self.history[-1].update(status="SUCCESS", message="Training finished successfully")
            self._write(trainer)

    def _write(self, trainer: L.Trainer) -> None:
        if trainer.is_global_zero:
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.history))

    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(r) for r in self.history]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(r) for r in state_dict.get("history", [])]


def _tao_status(record: dict[str, Any], max_epochs: int | None) -> dict[str, Any]:
    """The fields TAO's status logger writes on each epoch's line (its status.json, which TAO's tools
    read: kpi.val_miou, status, message), beside ours; TAO's max_epoch is the last epoch's index."""
    now = datetime.datetime.now()
    last = max_epochs - 1 if max_epochs and max_epochs > 0 else None
    seconds = float(record["seconds"])
    scores = {k: record[k] for k in ("val_miou", "val_macc", "val_aacc", "val_loss") if record.get(k) is not None}
    return {
        "date": f"{now.month}/{now.day}/{now.year}",
        "time": now.strftime("%H:%M:%S"),
        "status": "RUNNING",
        "verbosity": "INFO",
        "message": "Training loop in progress",
        "max_epoch": last,
        "time_per_epoch": str(datetime.timedelta(seconds=seconds)),
        "eta": str(datetime.timedelta(seconds=seconds * (last - record["epoch"]))) if last is not None else None,
        "kpi": scores,
        "graphical": {**({"train_loss": record["train_loss"]} if record.get("train_loss") is not None else {}), **scores,
                      **({"lr": record["lr"]} if record.get("lr") is not None else {})},
    }


class EpochLines(L.Callback):
    """Training progress off a terminal (a log file, CI, ``| tee``), in place of the bar's carriage
    returns: after each epoch a line from the record :class:`StatusLog` has just written,
    ``Epoch 3/49: train_loss 0.412, val_miou 0.612, val_loss 0.39, lr 5.8e-05, 12 s (about 9 min
    left)``, and within an epoch a line every ``every_s`` seconds (batch i of n). Epochs are numbered
    as Lightning's bars and ``status.json`` number them: 0-based, of ``max_epochs - 1``."""

    def __init__(self, status: StatusLog, every_s: float = 30.0, stream: TextIO | None = None) -> None:
        self.status = status
        self.every_s = every_s
        self.stream = stream
        self._seconds: list[float] = []  # epochs trained by this process (a resumed run's earlier ones are not timed)
        self._epoch_start = self._last = time.monotonic()

    def _say(self, text: str) -> None:
        print(text, file=self.stream or sys.stdout, flush=True)

    @staticmethod
    def _label(trainer: L.Trainer) -> str:
        last = trainer.max_epochs - 1 if trainer.max_epochs and trainer.max_epochs > 0 else "?"
        return f"Epoch {trainer.current_epoch}/{last}"

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = self._last = time.monotonic()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        now = time.monotonic()
        if now - self._last >= self.every_s and trainer.is_global_zero:
            self._last = now
            total = trainer.num_training_batches
            of = f" of {total}" if isinstance(total, int) else ""
            self._say(f"{self._label(trainer)}: batch {batch_idx + 1}{of} ({now - self._epoch_start:.0f} s)")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or not self.status.history:
            return
        record = self.status.history[-1]
        if record.get("epoch") != trainer.current_epoch:
            return
        self._seconds.append(float(record["seconds"]))
        parts = [f"{name} {fmt(record[name], 3)}" for name in ("train_loss", "val_miou", "val_loss", "lr")
                 if record.get(name) is not None]
        seconds = float(record["seconds"])
        parts.append(f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s")
        left = (trainer.max_epochs or 0) - 1 - trainer.current_epoch
        if left > 0:
            parts[-1] += f" (about {span(left * sum(self._seconds) / len(self._seconds))} left)"
        self._say(f"{self._label(trainer)}: " + ", ".join(parts))


class RngState(L.Callback):
    """Random generator states in the checkpoint, as plain values and tensors (weights_only-safe)."""

    def state_dict(self) -> dict[str, Any]:
        numpy_state = np.random.get_state(legacy=True)
        state: dict[str, Any] = {
            "python": _to_lists(random.getstate()),
            "numpy": {"key": torch.from_numpy(numpy_state[1].astype(np.int64)), "pos": int(numpy_state[2]),
                      "has_gauss": int(numpy_state[3]), "cached_gaussian": float(numpy_state[4])},
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        version, internal, gauss = state_dict["python"]
        random.setstate((version, tuple(internal), gauss))
        numpy_state = state_dict["numpy"]
        np.random.set_state(("MT19937", numpy_state["key"].numpy().astype(np.uint32), numpy_state["pos"],
                             numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
        torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available() and len(state_dict["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


def _to_lists(value: Any) -> Any:
    return [_to_lists(v) for v in value] if isinstance(value, tuple) else value
