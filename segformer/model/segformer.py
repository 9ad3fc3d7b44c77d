"""SegFormer = backbone (any registered one) + all-MLP decode head, and its one build function.

What the model returns: ``SegFormer.forward(x)`` gives logits at 1/4 of the input resolution,
shape (N, num_classes, ceil(H/4), ceil(W/4)) for the MiT backbones. That is what TAO's model
returns and what export ships. Losses, metrics and visualisation need full resolution: call
``upsample_logits(logits, size, align_corners)``.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch.nn.functional as F
from torch import Tensor, nn

from segformer.errors import SpecError

from .backbones import get_backbone_factory
from .backbones.registry import backbone_input_multiple
from .head import SegFormerHead

if TYPE_CHECKING:
    from segformer.config import ModelConfig

log = logging.getLogger(__name__)


class SegFormer(nn.Module):
    """Backbone features -> decode head -> 1/4-resolution logits."""

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        embed_dim: int,
        dropout: float = 0.1,
        align_corners: bool = False,
        in_index: Sequence[int] = (0, 1, 2, 3),
    ) -> None:
        super().__init__()
        levels = len(backbone.out_channels)
        bad = [i for i in in_index if not 0 <= i < levels]
        if bad or not in_index:
            raise SpecError(f"decode_head.in_index must pick levels in 0..{levels - 1}, got {list(in_index)}")
        self.backbone = backbone
        self.in_index = tuple(in_index)
        self.num_classes = num_classes
        self.align_corners = align_corners
        self.decode_head = SegFormerHead(
            in_channels=[backbone.out_channels[i] for i in self.in_index],
            num_classes=num_classes,
            embed_dim=embed_dim,
            dropout=dropout,
            align_corners=align_corners,
        )

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, 3, H, W) normalised images -> logits (N, num_classes, H/4, W/4)."""
        features = self.backbone(x)
        return self.decode_head([features[i] for i in self.in_index])


def upsample_logits(logits: Tensor, size: Sequence[int], align_corners: bool = False) -> Tensor:
    """Bilinear resize of (N, K, h, w) logits to ``size`` = (H, W) for loss, metrics and masks."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=align_corners)


def freeze_backbone(model: SegFormer) -> None:
    """Stop gradients to the backbone (``model.backbone.freeze_backbone``); the head still trains.

    Only ``requires_grad`` changes: normalisation statistics of backbones that have BatchNorm keep
    updating in train mode, as in TAO.
    """
    for parameter in model.backbone.parameters():
        parameter.requires_grad_(False)


def check_input_size(model_cfg: ModelConfig, img_size: int | Sequence[int], key: str = "dataset.segment.img_size") -> None:
    """Fail early, naming both keys, when ``img_size`` does not suit ``model_cfg.backbone.type``.

    Plain ViTs need input sides that are multiples of their patch size (14 for the NV-DINOv2 and
    ViT-H/14 backbones, 16 for the others); MiT and FAN take any size. Call it before building data
    or the model, so a bad size fails in seconds rather than inside the first forward pass.
    ``img_size`` is ``dataset.segment.img_size`` (an int, or (height, width)); ``key`` names it in
    the error (e.g. ``"export.input_height/input_width"`` for export's size).
    """
    name = model_cfg.backbone.type
    multiple = backbone_input_multiple(name)
    sides = (int(img_size), int(img_size)) if isinstance(img_size, (int, float)) else tuple(int(v) for v in img_size)
    bad = sorted({side for side in sides if side % multiple})
    if not bad:
        return
    def nearest(side: int, step: int) -> str:
        below = max((side // step) * step, step)
        return " or ".join(str(v) for v in dict.fromkeys((below, below + step)))

    from segformer.config import ConfigError

    raise ConfigError(
        f"model.backbone.type={name!r} needs input sides that are multiples of {multiple} (its patch size), "
        f"but {key}={img_size!r} is not: use {'; '.join(nearest(s, multiple) for s in bad)}"
    )


def build_segformer(model_cfg: ModelConfig, num_classes: int, *, load_pretrained: bool = True,
                    img_size: int | Sequence[int] | None = None) -> SegFormer:
    """Turn the ``model`` spec section into a SegFormer; the only place config meets constructors.

    Reads ``backbone.type``, ``backbone.feat_downsample``, ``backbone.pretrained_backbone_path``,
    ``backbone.freeze_backbone`` and ``decode_head.{in_channels, in_index, feature_strides,
    align_corners, decoder_params.embed_dim}``. Channel lists come from the backbone;
    ``decode_head.in_channels``/``feature_strides`` in a spec are only checked (TAO templates carry
    MiT's [64, 128, 320, 512] whatever the backbone, so a mismatch warns and does not fail; an
    empty list is not checked).
    ``load_pretrained=False`` skips ``pretrained_backbone_path`` (evaluate/export load a whole
    checkpoint afterwards). With ``img_size`` (``dataset.segment.img_size``), ``check_input_size``
    runs first.
    """
    if img_size is not None:
        check_input_size(model_cfg, img_size)
    backbone_cfg, head_cfg = model_cfg.backbone, model_cfg.decode_head
    factory = get_backbone_factory(backbone_cfg.type)
    options: dict[str, Any] = {}
    feat_downsample = bool(backbone_cfg.feat_downsample)
    if "feat_downsample" in inspect.signature(factory).parameters:
        options["feat_downsample"] = feat_downsample
    elif feat_downsample:
        warnings.warn(f"model.backbone.feat_downsample=true has no effect for backbone {backbone_cfg.type!r} "
                      "(it applies to the FAN hybrid backbones only)", stacklevel=2)
    backbone = factory(**options)

    in_index = tuple(head_cfg.in_index)
    _check_declared("decode_head.in_channels", head_cfg.in_channels,
                    [backbone.out_channels[i] for i in in_index if 0 <= i < len(backbone.out_channels)],
                    backbone_cfg.type)
    _check_declared("decode_head.feature_strides", head_cfg.feature_strides,
                    [backbone.strides[i] for i in in_index if 0 <= i < len(backbone.strides)], backbone_cfg.type)

    model = SegFormer(
        backbone,
        num_classes=num_classes,
        embed_dim=int(head_cfg.decoder_params.embed_dim),
        align_corners=bool(head_cfg.align_corners),
        in_index=in_index,
    )
    path = backbone_cfg.pretrained_backbone_path
    if load_pretrained and path:
        from .checkpoints import load_pretrained_backbone

        load_pretrained_backbone(model, path, backbone=backbone_cfg.type)
    if backbone_cfg.freeze_backbone:
        freeze_backbone(model)
    return model


def decoder_inputs(backbone: str, in_index: Sequence[int] = (0, 1, 2, 3)) -> dict[str, list[int]]:
    """``model.decode_head.in_channels`` and ``feature_strides`` as backbone ``backbone`` provides
    them at ``in_index``: what goes with a change of backbone (a search over backbones), so that the
    spec stays consistent and :func:`build_segformer` has nothing to warn about. The backbone is
    built on the meta device: no weights are allocated."""
    import torch

    with torch.device("meta"):
        built = get_backbone_factory(backbone)()
    return {"in_channels": [int(built.out_channels[i]) for i in in_index],
            "feature_strides": [int(built.strides[i]) for i in in_index]}


_WARNED: set[str] = set()  # once per process: a promotion builds the model for every action and final test


def _check_declared(key: str, declared: Sequence[int], actual: Sequence[int], backbone: str) -> None:
    """Warn when the spec declares other channels or strides than the backbone provides; not when it
    left TAO's defaults (MiT-B1..B5's), which a MiT-B0 spec need not restate."""
    from segformer.config.experiment import DecodeHeadConfig

    if list(declared) == list(getattr(DecodeHeadConfig(), key.rpartition(".")[2])):
        return
    if declared and list(declared) != list(actual):
        message = (f"model.{key}={list(declared)} differs from what backbone {backbone!r} provides "
                   f"({list(actual)}); using the backbone's {list(actual)}")
        if message not in _WARNED:
            _WARNED.add(message)
            warnings.warn(message, stacklevel=3)
