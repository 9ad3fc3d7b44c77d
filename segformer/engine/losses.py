"""Segmentation loss on full-resolution logits (TAO's ``train.segment.loss: ce``)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from segformer.model import upsample_logits

LOSSES = ("ce",)


def segmentation_cross_entropy(
    logits: Tensor, target: Tensor, align_corners: bool = False, ignore_index: int = 255
) -> Tensor:
    """Pixel-wise cross-entropy; 1/4-resolution logits are first resized to the label size.

    Computed in float32 even under mixed precision: the log-softmax over many pixels is where
    half precision loses accuracy.
    """
    logits = upsample_logits(logits, target.shape[-2:], align_corners)
    target = target.long()
    # Mean over the labelled pixels. A batch whose pixels are all ignored (an image that is all
    # "unknown", label_id 255, at batch size 1) gives 0 with a graph, not mean-over-nothing = NaN,
    # which would read as divergence and stop training.
    total = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="sum")
    labelled = (target != ignore_index).sum()
    return total / labelled.clamp(min=1)
