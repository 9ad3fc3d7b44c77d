"""Semantic segmentation scores from an accumulated confusion matrix.

Definitions (the ones mmsegmentation and TAO report):

- ``IoU_c = TP_c / (TP_c + FP_c + FN_c)``; ``Acc_c = TP_c / (TP_c + FN_c)`` (per-class recall).
- ``mIoU`` is the mean IoU over classes that occur in the target *or* the prediction of the
  accumulated set. A class absent from both has IoU 0/0: it is reported as NaN (``null`` in JSON)
  and left out of the mean, so a validation split that lacks a rare class is not penalised for it.
  A class predicted but never present in the target keeps IoU 0 and counts.
- ``mAcc`` is the mean Acc over classes present in the target (Acc is undefined otherwise).
- ``aAcc`` is the fraction of all labelled pixels that are classified correctly.
- Pixels whose target is ``ignore_index`` (255) are left out everywhere.

All scores are fractions in 0..1 (``val_miou`` is logged on this scale); the evaluate action
prints them in percent with two decimals, as TAO does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Scores:
    """Scores in 0..1; per-class values are NaN where undefined (see the module docstring)."""

    miou: float
    macc: float
    aacc: float
    iou: tuple[float, ...]
    acc: tuple[float, ...]

    def as_dict(self, class_names: Sequence[str] | None = None) -> dict:
        """Plain JSON-able dict; NaN stays float NaN here (the JSON writer turns it into null)."""
        names = list(class_names) if class_names else [str(i) for i in range(len(self.iou))]
        return {
            "miou": self.miou,
            "macc": self.macc,
            "aacc": self.aacc,
            "per_class": [
                {"class_id": i, "class": name, "iou": iou, "acc": acc}
                for i, (name, iou, acc) in enumerate(zip(names, self.iou, self.acc))
            ],
        }


class ConfusionMatrix:
    """Accumulates a ``(K, K)`` matrix, rows = target class, columns = predicted class.

    Plain class (not an ``nn.Module``): the owner decides the device, and under DDP sums the
    matrices of all ranks (``strategy.reduce(matrix, reduce_op="sum")``) before ``compute``.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, device: torch.device | str | None = None):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def reset(self) -> None:
        self.matrix.zero_()

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch. ``pred`` and ``target`` are integer class maps of the same shape."""
        if pred.shape != target.shape:
            raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
        pred = pred.reshape(-1).to(self.matrix.device, torch.int64)
        target = target.reshape(-1).to(self.matrix.device, torch.int64)
        keep = target != self.ignore_index
        pred, target = pred[keep], target[keep]
        if target.numel() and (int(target.min()) < 0 or int(target.max()) >= self.num_classes):
            bad = int(target[(target < 0) | (target >= self.num_classes)][0])
            raise ValueError(
                f"target holds class id {bad}, outside 0..{self.num_classes - 1} "
                f"(and not the ignore index {self.ignore_index}); check dataset.segment.num_classes"
            )
        k = self.num_classes
        self.matrix += torch.bincount(target * k + pred.clamp(0, k - 1), minlength=k * k).reshape(k, k)

    def merge(self, matrix: Tensor) -> None:
        """Add another accumulated matrix (for example from another process)."""
        self.matrix += matrix.to(self.matrix.device, torch.int64)

    def compute(self) -> Scores:
        return scores_from_confusion(self.matrix)


def scores_from_confusion(matrix: Tensor) -> Scores:
    """mIoU, mAcc, aAcc and per-class IoU/Acc of a ``(K, K)`` target-by-prediction matrix."""
    cm = matrix.detach().to("cpu", torch.float64)
    tp = cm.diag()
    target_count = cm.sum(1)  # TP + FN
    pred_count = cm.sum(0)  # TP + FP
    union = target_count + pred_count - tp
    nan = torch.full_like(tp, math.nan)
    iou = torch.where(union > 0, tp / union.clamp(min=1), nan)
    acc = torch.where(target_count > 0, tp / target_count.clamp(min=1), nan)
    total = float(cm.sum())
    return Scores(
        miou=_nanmean(iou),
        macc=_nanmean(acc),
        aacc=float(tp.sum()) / total if total > 0 else math.nan,
        iou=tuple(float(v) for v in iou),
        acc=tuple(float(v) for v in acc),
    )


def _nanmean(values: Tensor) -> float:
    valid = values[~values.isnan()]
    return float(valid.mean()) if valid.numel() else math.nan
