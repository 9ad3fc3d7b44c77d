"""The LightningModule that trains a SegFormer: loss, optimizer, schedule and validation mIoU."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from segformer.errors import TrainingDivergedError
from segformer.model import upsample_logits

from .losses import segmentation_cross_entropy
from .metrics import ConfusionMatrix, Scores
from .optim import OptimizerSettings, create_lr_schedule, create_optimizer, follow_spec

META_KEY = "segformer_meta"
"""Lightning checkpoints carry our model meta (backbone, classes, img_size, ...) under this key."""


class SegFormerModule(L.LightningModule):
    """Trains ``model`` with pixel-wise cross-entropy on full-resolution logits.

    Args:
        model: a ``SegFormer`` (1/4-resolution logits); kept as ``self.model`` so checkpoint keys
            are ``model.*``, which ``segformer.model.load_model_weights`` understands.
        num_classes: number of training classes (ids 0..K-1; 255 is ignored).
        optimizer: optimizer and learning-rate schedule settings.
        align_corners: for upsampling 1/4 logits to label size (the decode head's setting).
        freeze_backbone: keep the backbone's parameters out of the optimizer.
        ignore_index: label id left out of loss and metrics.
        class_names: for logging per-class scores.
        meta: plain model description (backbone type, num_classes, img_size, mean, std, palette),
            stored in every checkpoint under ``checkpoint["segformer_meta"]``.
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        optimizer: OptimizerSettings,
        *,
        align_corners: bool = False,
        freeze_backbone: bool = False,
        ignore_index: int = 255,
        class_names: Sequence[str] = (),
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.num_classes = num_classes
        self.optimizer_settings = optimizer
        self.align_corners = align_corners
        self.freeze_backbone = freeze_backbone
        self.ignore_index = ignore_index
        self.class_names = tuple(class_names)
        self.meta = dict(meta or {})
        if freeze_backbone:
            for parameter in self._backbone().parameters():
                parameter.requires_grad_(False)
        # Primitive hyper-parameters only: checkpoints must load with torch.load(weights_only=True).
        settings = asdict(optimizer)
        settings["lr_steps"] = list(optimizer.lr_steps)
        self.save_hyperparameters(
            {"num_classes": num_classes, "align_corners": align_corners, "freeze_backbone": freeze_backbone,
             "ignore_index": ignore_index, "optimizer": settings}
        )
        self._val_confusion: ConfusionMatrix | None = None
        self.last_scores: Scores | None = None
        self._checkpoint_schedules: list[dict | None] | None = None  # a resumed checkpoint's, see on_load_checkpoint

    def _backbone(self) -> nn.Module:
        backbone = getattr(self.model, "backbone", None)
        if backbone is None:
            raise TypeError(f"freeze_backbone needs a model with a .backbone, got {type(self.model).__name__}")
        return backbone

    def forward(self, images: Tensor) -> Tensor:
        """Logits at 1/4 resolution, as the exported model returns them."""
        return self.model(images)

    # ---------------------------------------------------------------- training
    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        images, masks = batch["image"], batch["mask"]
        loss = segmentation_cross_entropy(self.model(images), masks, self.align_corners, self.ignore_index)
        if not torch.isfinite(loss):
            if self.global_step == 0:  # before any update: the learning rate had no part in it
                raise TrainingDivergedError(
                    f"the training loss is {loss.item()} on the first batch, before any update: the starting weights "
                    "(train.pretrained_model_path, model.backbone.pretrained_backbone_path) hold NaN or inf values, or "
                    "the images do (dataset.segment.augmentation.mean/std, a broken image file); check those, not the "
                    "learning rate")
            raise TrainingDivergedError(
                f"the training loss became {loss.item()} at epoch {self.current_epoch}, step {self.global_step} "
                f"(train.optim.lr={self.optimizer_settings.lr}); lower train.optim.lr (for example by 10x), "
                "add warm-up (train.optim.warmup_ratio) or disable train.amp"
            )
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=images.shape[0], sync_dist=True)
        return loss

    # ---------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        self._val_confusion = ConfusionMatrix(self.num_classes, self.ignore_index, device=self.device)

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        images, masks = batch["image"], batch["mask"]
        logits = upsample_logits(self.model(images), masks.shape[-2:], self.align_corners)
        loss = segmentation_cross_entropy(logits, masks, self.align_corners, self.ignore_index)
        self.log("val_loss", loss, on_step=False, on_epoch=True, batch_size=images.shape[0], sync_dist=True)
        assert self._val_confusion is not None
        self._val_confusion.update(logits.argmax(1), masks)

    def on_validation_epoch_end(self) -> None:
        assert self._val_confusion is not None
        # Sum the matrices of all processes; every rank then computes the same scores.
        matrix = self.trainer.strategy.reduce(self._val_confusion.matrix, reduce_op="sum")
        scores = ConfusionMatrix(self.num_classes, self.ignore_index)
        scores.merge(matrix)
        self.last_scores = scores.compute()
        for name, value in (("val_miou", self.last_scores.miou), ("val_macc", self.last_scores.macc),
                            ("val_aacc", self.last_scores.aacc)):
            self.log(name, 0.0 if math.isnan(value) else value, prog_bar=name == "val_miou")

    # ---------------------------------------------------------------- optimizer
    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = create_optimizer(self.model.named_parameters(), self.optimizer_settings)
        schedule = create_lr_schedule(self.optimizer_settings, self._planned_steps(), self.trainer.max_epochs or 1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _planned_steps(self) -> int:
        """Optimizer steps of the whole run. Lightning's ``estimated_stepping_batches`` starts the train
        loader to count them, before a resume restores the epoch: persistent workers then fetched the
        resumed epoch's first batches as epoch 0's. Our data module counts them without a loader."""
        trainer = self.trainer
        datamodule = getattr(trainer, "datamodule", None)
        if not hasattr(datamodule, "train_batches") or trainer.max_steps not in (-1, None) \
                or trainer.accumulate_grad_batches != 1 or trainer.limit_train_batches not in (1, 1.0):
            return int(trainer.estimated_stepping_batches)
        return datamodule.train_batches(trainer.world_size) * (trainer.max_epochs or 1)

    # ---------------------------------------------------------------- modes and checkpoints
    def train(self, mode: bool = True) -> SegFormerModule:
        """A frozen backbone also stays in eval mode (no dropout / drop-path noise in features)."""
        super().train(mode)
        if self.freeze_backbone and mode:
            self._backbone().eval()
        return self

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[META_KEY] = dict(self.meta)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Resuming: this spec's schedule and optimizer values, not the checkpoint's (see ``follow_spec``).

        ``LambdaLR`` would put back its schedule object's fields (total steps, warmup, milestones);
        they are taken out here and kept to compare with this run's in ``on_train_start``.
        """
        states = checkpoint.get("lr_schedulers") or []
        self._checkpoint_schedules = [(state.get("lr_lambdas") or [None])[0] for state in states]
        for state in states:
            if state.get("lr_lambdas"):
                state["lr_lambdas"] = [None] * len(state["lr_lambdas"])

    def on_train_start(self) -> None:
        saved, self._checkpoint_schedules = self._checkpoint_schedules, None
        if saved is None:  # not a resume
            return
        for config, old in zip(self.trainer.lr_scheduler_configs, saved):
            changes = follow_spec(config.scheduler.optimizer, config.scheduler, self.optimizer_settings,
                                  self.model.named_parameters(), old)
            if changes:
                warnings.warn(f"resuming at optimizer step {config.scheduler.last_epoch} (train.num_epochs="
                              f"{self.trainer.max_epochs}): this spec's values replace the checkpoint's: "
                              + "; ".join(changes))
