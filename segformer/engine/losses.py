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
    return F.cross_entropy(logits.float(), target.long(), ignore_index=ignore_index)
