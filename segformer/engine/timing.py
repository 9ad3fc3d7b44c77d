"""Where a training run's wall time goes: inside training/validation steps, or around them.

A measurement for the benchmarks (``benchmarks/``), not a result of training: the train action
attaches :class:`StepTiming` only when the environment variable ``SEGFORMER_STEP_TIMING``
(:data:`STEP_TIMING_ENV`) is set to a non-empty value other than ``0`` (see
:func:`step_timing_requested`); a plain run writes no ``timing.json``. The variable is read in the
process that trains: for AutoML trials, set it before the search starts its Ray workers. When
attached it costs two ``time.perf_counter()`` calls per batch and one small file write per epoch,
and writes ``timing.json`` next to ``status.json``::

    {"runs": [{"created_at": ..., "fit_start_at": ..., "first_batch_at": ..., "fit_end_at": ...,
               "train_step_s": ..., "val_step_s": ..., "epochs": [{"epoch": 0, "train_step_s": ...,
               "train_steps": ..., "val_step_s": ..., "val_steps": ..., "data_wait_s": ...,
               "epoch_start_at": ..., "val_start_at": ..., "val_end_at": ..., "epoch_end_at": ...,
               "val_miou": ...}, ...]}, ...]}

``*_at`` values are absolute ``time.time()`` stamps (comparable with Ray's and the AutoML ledger's
clocks on the same machine); ``*_s`` values are durations summed with ``time.perf_counter()``.
A training step is everything between ``on_train_batch_start`` and ``on_train_batch_end`` (forward,
loss, backward, optimizer step); a validation step likewise. Everything else in a run (building
the data and the model, Lightning's set-up, waiting for the data loader, checkpoints, reporting)
is overhead from the point of view of the benchmarks in ``benchmarks/search_overhead``.

A resumed run (same results folder) appends a new entry to ``runs``, so no measurement is lost.
The file is also written at each validation end, so an epoch interrupted right after its
validation (an AutoML trial stopped by its scheduler) is recorded without ``epoch_end_at``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import lightning as L

from segformer.fileio import atomic_write_text

TIMING_NAME = "timing.json"
STEP_TIMING_ENV = "SEGFORMER_STEP_TIMING"
log = logging.getLogger(__name__)


def step_timing_requested() -> bool:
    """Whether ``SEGFORMER_STEP_TIMING`` asks for ``timing.json`` (set, non-empty and not ``0``)."""
    return os.environ.get(STEP_TIMING_ENV, "").strip() not in ("", "0")


class StepTiming(L.Callback):
    """Measures wall time inside training and validation steps; see the module docstring.

    Construct it as early as possible in the run (``created_at`` is the run's start: the time to
    check the data and build the model counts from there).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.run: dict[str, Any] = {"created_at": time.time(), "pid": os.getpid(), "epochs": []}
        self._previous_runs: list[dict[str, Any]] | None = None
        self._epoch: dict[str, Any] | None = None
        self._batch_start: float | None = None
        self._last_batch_end: float | None = None
        self._warned = False

    # ------------------------------------------------------------------ fit
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.run["fit_start_at"] = time.time()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.run["train_start_at"] = time.time()
        self.run["start_epoch"] = int(trainer.current_epoch)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.run["fit_end_at"] = time.time()
        self._write(trainer)

    # ------------------------------------------------------------------ training
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch = {"epoch": int(trainer.current_epoch), "epoch_start_at": time.time(),
                       "train_step_s": 0.0, "train_steps": 0, "val_step_s": 0.0, "val_steps": 0,
                       "data_wait_s": 0.0}
        self._last_batch_end = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        if "first_batch_at" not in self.run:
            self.run["first_batch_at"] = time.time()
        if self._epoch is not None and self._last_batch_end is not None:
            self._epoch["data_wait_s"] += now - self._last_batch_end
        self._batch_start = now

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        now = time.perf_counter()
        if self._epoch is not None and self._batch_start is not None:
            self._epoch["train_step_s"] += now - self._batch_start
            self._epoch["train_steps"] += 1
        self._batch_start = None
        self._last_batch_end = now

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._epoch is None:
            return
        self._epoch["epoch_end_at"] = time.time()
        self.run["epochs"].append(self._epoch)
        self._epoch = None
        self._write(trainer)

    # ------------------------------------------------------------------ validation
    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and self._epoch is not None:
            self._epoch["val_start_at"] = time.time()

    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        self._batch_start = time.perf_counter()

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if trainer.sanity_checking or self._epoch is None or self._batch_start is None:
            return
        self._epoch["val_step_s"] += time.perf_counter() - self._batch_start
        self._epoch["val_steps"] += 1
        self._batch_start = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self._epoch is None:
            return
        self._epoch["val_end_at"] = time.time()
        value = trainer.callback_metrics.get("val_miou")
        if value is not None:
            number = float(value)
            self._epoch["val_miou"] = number if math.isfinite(number) else None
        # Written now as well: a scheduler may stop an AutoML trial inside the report that follows
        # (before on_train_epoch_end), and its epochs must still be on record.
        self._write(trainer)

    # ------------------------------------------------------------------ output
    def summary(self) -> dict[str, Any]:
        """This run with totals over its epochs."""
        run = dict(self.run)
        if self._epoch is not None and "val_end_at" in self._epoch:  # validated, not yet ended
            run["epochs"] = [*run["epochs"], dict(self._epoch)]
        run["train_step_s"] = round(sum(e["train_step_s"] for e in run["epochs"]), 6)
        run["val_step_s"] = round(sum(e["val_step_s"] for e in run["epochs"]), 6)
        return run

    def _write(self, trainer: L.Trainer) -> None:
        if not trainer.is_global_zero:
            return
        if self._previous_runs is None:  # a resumed run in the same folder keeps the earlier entries
            self._previous_runs = read_timing(self.path)
        text = json.dumps({"runs": [*self._previous_runs, self.summary()]}, indent=1)
        # Cheap atomic write: temporary file + rename, no fsync. A measurement must never end a
        # training run: a folder that cannot be written (full disk, permissions) is reported by the
        # checkpoint writer with the fix; here it only costs the timing file.
        try:
            atomic_write_text(self.path, text, sync=False)
        except OSError as err:
            if not self._warned:
                log.warning("could not write %s (%s); step timing is not recorded", self.path, err)
                self._warned = True


def read_timing(path: str | Path) -> list[dict[str, Any]]:
    """The ``runs`` of a ``timing.json`` ([] when missing or unreadable)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    runs = data.get("runs") if isinstance(data, dict) else None
    return list(runs) if isinstance(runs, list) else []
