"""Training engine: LightningModule, loss, metrics, optimizers/schedules, callbacks, predictors.

Public names are imported lazily (PEP 562), like :mod:`segformer.data`: importing one submodule
(``segformer.engine.predictor``, which the MLflow model of a champion uses to predict) does not
pay for Lightning and the model zoo.
"""

from __future__ import annotations

from segformer.lazy import lazy_exports

_EXPORTS = {
    "AtomicCheckpointIO": "segformer.engine.callbacks",
    "ConfusionMatrix": "segformer.engine.metrics",
    "LrSchedule": "segformer.engine.optim",
    "META_KEY": "segformer.engine.module",
    "OptimizerSettings": "segformer.engine.optim",
    "PeriodicCheckpoint": "segformer.engine.callbacks",
    "Predictor": "segformer.engine.predictor",
    "RngState": "segformer.engine.callbacks",
    "Scores": "segformer.engine.metrics",
    "SegFormerModule": "segformer.engine.module",
    "StatusLog": "segformer.engine.callbacks",
    "TorchPredictor": "segformer.engine.predictor",
    "checkpoint_name": "segformer.engine.checkpoint_files",
    "create_lr_schedule": "segformer.engine.optim",
    "create_optimizer": "segformer.engine.optim",
    "load_predictor": "segformer.engine.predictor",
    "scores_from_confusion": "segformer.engine.metrics",
    "segmentation_cross_entropy": "segformer.engine.losses",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
