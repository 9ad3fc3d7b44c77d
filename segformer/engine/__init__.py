"""Training engine: LightningModule, loss, metrics, optimizers/schedules, callbacks, predictors."""

from .callbacks import AtomicCheckpointIO, PeriodicCheckpoint, RngState, StatusLog, checkpoint_name
from .losses import segmentation_cross_entropy
from .metrics import ConfusionMatrix, Scores, scores_from_confusion
from .module import META_KEY, SegFormerModule
from .optim import LrSchedule, OptimizerSettings, create_lr_schedule, create_optimizer
from .predictor import Predictor, TorchPredictor, load_predictor

__all__ = [
    "AtomicCheckpointIO",
    "ConfusionMatrix",
    "LrSchedule",
    "META_KEY",
    "OptimizerSettings",
    "PeriodicCheckpoint",
    "Predictor",
    "RngState",
    "Scores",
    "SegFormerModule",
    "StatusLog",
    "TorchPredictor",
    "checkpoint_name",
    "create_lr_schedule",
    "create_optimizer",
    "load_predictor",
    "scores_from_confusion",
    "segmentation_cross_entropy",
]
