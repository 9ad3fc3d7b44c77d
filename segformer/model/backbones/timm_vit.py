"""Plain ViT backbones from timm, with a simple feature pyramid for SegFormer's head.

timm builds the transformer (``pretrained=False`` always: weights only come from local files
through ``model.backbone.pretrained_backbone_path`` or a checkpoint). ``forward_intermediates``
takes the token maps of four evenly spaced blocks, all at the patch stride; a simple feature
pyramid (ViTDet-style) turns them into strides 4, 8, 16, 32:

    level 0: 2x2 deconv -> GELU -> 2x2 deconv  (D -> D/4 channels, x4)
    level 1: 2x2 deconv                         (D -> D/2 channels, x2)
    level 2: identity                           (D channels)
    level 3: 2x2 max-pool                       (D channels, /2)

each followed by a channels LayerNorm. Patch-14 models are resized by bilinear interpolation to
the exact stride-4/8/16/32 sizes (ceil(H/s), ceil(W/s)). Any input whose sides are multiples of
the patch size works (``dynamic_img_size=True``).

TAO name -> timm architecture (why):

- vit_large_nvdinov2 -> vit_large_patch14_dinov2 (ViT-L/14, 304M); vit_giant_nvdinov2 ->
  vit_giant_patch14_dinov2 (ViT-g/14, 1.1B). NV-DINOv2 weights are DINOv2 ViTs.
- vit_base_nvclip_16_siglip -> vit_base_patch16_siglip_224 (ViT-B/16, SigLIP); its attention-pool
  head is not built (``global_pool=''``).
- vit_huge_nvclip_14_siglip -> vit_huge_patch14_clip_224 (ViT-H/14, 632M). timm has no SigLIP
  ViT-H/14 (its large SigLIP /14 is so400m, width 1152); NV-CLIP ViT-H is a ViT-H/14, so the
  ViT-H/14 layout is the one whose weights can be mapped.
- vit_{small,small_plus,base,large,huge_plus}_dinov3 -> vit_*_patch16_dinov3 (timm's Eva
  implementation of DINOv3: patch 16, RoPE, 4 register tokens; the variants without the ``_qkvb``
  suffix, whose layout Meta's released checkpoints map to with timm's Eva checkpoint filter).
- c_radio_v2_vit_{base,large,huge}_patch16_224 -> vit_{base,large,huge}_patch16_radio_v3: timm's
  C-RADIO ViTs (patch 16, 7 register tokens, no class-token position). Weights must come from
  local files: a C-RADIO checkpoint (``radio_model.model.*`` keys) is converted with timm's own
  filter when loaded (``adapt_state_dict``), which also resamples the 128x128 position grid.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from .registry import register_backbone


class LayerNorm2d(nn.LayerNorm):
    def forward(self, x: Tensor) -> Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class TimmViTBackbone(nn.Module):
    """A timm ViT + simple feature pyramid; ``forward`` returns maps at strides 4, 8, 16, 32."""

    strides: tuple[int, ...] = (4, 8, 16, 32)

    def __init__(self, arch: str, depth: int | None = None, drop_path_rate: float = 0.0, **timm_kwargs: Any) -> None:
        """``arch``: timm model name; ``depth`` builds a shallower variant (tests); ``timm_kwargs``
        are explicit architecture overrides from the factories (passed to timm as they are)."""
        super().__init__()
        import timm

        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub
        overrides = dict(timm_kwargs)
        if depth is not None:
            overrides["depth"] = depth
        self.arch = arch
        self.vit = timm.create_model(
            arch, pretrained=False, num_classes=0, global_pool="", dynamic_img_size=True,
            drop_path_rate=drop_path_rate, **overrides,
        )
        num_blocks = len(self.vit.blocks)
        # Four evenly spaced blocks, the last one included (e.g. 5, 11, 17, 23 for depth 24).
        # (a shallow test variant with fewer than 4 blocks reuses blocks).
        self.indices = tuple(max(num_blocks * (i + 1) // 4 - 1, 0) for i in range(4))
        dim = self.vit.embed_dim
        self.patch_size = int(self.vit.patch_embed.patch_size[0])
        self.input_multiple = self.patch_size  # input sides must be multiples of the patch size
        self.out_channels: tuple[int, ...] = (dim // 4, dim // 2, dim, dim)
        self.pyramid = nn.ModuleList([
            nn.Sequential(nn.ConvTranspose2d(dim, dim // 2, 2, stride=2), nn.GELU(),
                          nn.ConvTranspose2d(dim // 2, dim // 4, 2, stride=2)),
            nn.ConvTranspose2d(dim, dim // 2, 2, stride=2),
            nn.Identity(),
            nn.MaxPool2d(2, stride=2, ceil_mode=True),
        ])
        self.norms = nn.ModuleList(LayerNorm2d(c, eps=1e-6) for c in self.out_channels)

    def forward(self, x: Tensor) -> list[Tensor]:
        height, width = x.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"{self.arch} needs input sides that are multiples of {self.patch_size}, "
                             f"got {height}x{width}")
        taken = sorted(set(self.indices))
        outputs = self.vit.forward_intermediates(x, indices=taken, output_fmt="NCHW", intermediates_only=True)
        maps = [outputs[taken.index(i)] for i in self.indices]  # (B, D, H/p, W/p) each
        features = []
        for level, (feature, op, norm, stride) in enumerate(zip(maps, self.pyramid, self.norms, self.strides)):
            if self.patch_size != 16:  # put the token grid on the stride-16 grid first
                feature = F.interpolate(feature, size=(math.ceil(height / 16), math.ceil(width / 16)),
                                        mode="bilinear", align_corners=False)
            feature = op(feature)
            size = (math.ceil(height / stride), math.ceil(width / stride))
            if feature.shape[-2:] != size:
                feature = F.interpolate(feature, size=size, mode="bilinear", align_corners=False)
            features.append(norm(feature))
        return features

    def adapt_state_dict(self, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Keys ``vit.*`` in timm's or RADIO's convention -> ours, via timm's checkpoint filter
        (resamples position embeddings, converts C-RADIO checkpoints); other keys unchanged."""
        import importlib

        # the filter of the timm module that defines the architecture (vision_transformer, eva, ...)
        checkpoint_filter_fn = importlib.import_module(type(self.vit).__module__).checkpoint_filter_fn
        vit = {k.removeprefix("vit."): v for k, v in state_dict.items() if k.startswith("vit.")}
        rest = {k: v for k, v in state_dict.items() if not k.startswith("vit.")}
        if vit:
            vit = checkpoint_filter_fn(vit, self.vit)
        return {**rest, **{f"vit.{k}": v for k, v in vit.items()}}


@register_backbone(input_multiple=14)
def vit_large_nvdinov2(*, depth: int | None = None, drop_path_rate: float = 0.0) -> TimmViTBackbone:
    """NV-DINOv2 ViT-L/14 (timm ``vit_large_patch14_dinov2``)."""
    return TimmViTBackbone("vit_large_patch14_dinov2", depth=depth, drop_path_rate=drop_path_rate)


@register_backbone(input_multiple=14)
def vit_giant_nvdinov2(*, depth: int | None = None, drop_path_rate: float = 0.0) -> TimmViTBackbone:
    """NV-DINOv2 ViT-g/14 (timm ``vit_giant_patch14_dinov2``), 1.1B parameters."""
    return TimmViTBackbone("vit_giant_patch14_dinov2", depth=depth, drop_path_rate=drop_path_rate)


@register_backbone(input_multiple=16)
def vit_small_dinov3(*, depth: int | None = None, drop_path_rate: float = 0.0) -> TimmViTBackbone:
    """DINOv3 ViT-S/16 (timm ``vit_small_patch16_dinov3``)."""
    return TimmViTBackbone("vit_small_patch16_dinov3", depth=depth, drop_path_rate=drop_path_rate)


@register_backbone(input_multiple=16)
def vit_small_plus_dinov3(*, depth: int | None = None, drop_path_rate: float = 0.0) -> TimmViTBackbone:
    """DINOv3 ViT-S+/16 (timm ``vit_small_plus_patch16_dinov3``)."""
    return TimmViTBackbone("vit_small_plus_patch16_dinov3", depth=depth, drop_path_rate=drop_path_rate)


@register_backbone(input_multiple=16)
def vit_base_dinov3(*, depth: int | None = None, drop_path_rate: float = 0.0) -> TimmViTBackbone:
    """DINOv3 ViT-B/16 (timm ``vit_base_patch16_dinov3``)."""
    return TimmViTBackbone("vit_base_patch16_dinov3", depth=depth, drop_path_rate=drop_path_rate)


@register_backbone(input_multiple=16)
def vit_large_dinov3(*, depth: int | None = None, drop_path_rate: float = 0.0) -> TimmViTBackbone:
    """DINOv3 ViT-L/16 (timm ``vit_large_patch16_dinov3``)."""
    return TimmViTBackbone("vit_large_patch16_dinov3", depth=depth, drop_path_rate=drop_path_rate)


@register_backbone(input_multiple=16)
def vit_huge_plus_dinov3(*, depth: int | None = None, drop_path_rate: float = 0.0) -> TimmViTBackbone:
    """DINOv3 ViT-H+/16 (timm ``vit_huge_plus_patch16_dinov3``)."""
    return TimmViTBackbone("vit_huge_plus_patch16_dinov3", depth=depth, drop_path_rate=drop_path_rate)


@register_backbone(input_multiple=16)
def vit_base_nvclip_16_siglip(*, depth: int | None = None, drop_path_rate: float = 0.0) -> TimmViTBackbone:
    """NV-CLIP SigLIP ViT-B/16 (timm ``vit_base_patch16_siglip_224``)."""
    return TimmViTBackbone("vit_base_patch16_siglip_224", depth=depth, drop_path_rate=drop_path_rate)


@register_backbone(input_multiple=14)
def vit_huge_nvclip_14_siglip(*, depth: int | None = None, drop_path_rate: float = 0.0) -> TimmViTBackbone:
    """NV-CLIP ViT-H/14 (timm ``vit_huge_patch14_clip_224`` layout; see the module docstring)."""
    return TimmViTBackbone("vit_huge_patch14_clip_224", depth=depth, drop_path_rate=drop_path_rate)


@register_backbone(input_multiple=16)
def c_radio_v2_vit_base_patch16_224(*, depth: int | None = None, drop_path_rate: float = 0.0) -> TimmViTBackbone:
    """C-RADIO ViT-B/16 (timm ``vit_base_patch16_radio_v3``)."""
    return TimmViTBackbone("vit_base_patch16_radio_v3", depth=depth, drop_path_rate=drop_path_rate)


@register_backbone(input_multiple=16)
def c_radio_v2_vit_large_patch16_224(*, depth: int | None = None, drop_path_rate: float = 0.0) -> TimmViTBackbone:
    """C-RADIO ViT-L/16 (timm ``vit_large_patch16_radio_v3``)."""
    return TimmViTBackbone("vit_large_patch16_radio_v3", depth=depth, drop_path_rate=drop_path_rate)


@register_backbone(input_multiple=16)
def c_radio_v2_vit_huge_patch16_224(*, depth: int | None = None, drop_path_rate: float = 0.0) -> TimmViTBackbone:
    """C-RADIO ViT-H/16 (timm ``vit_huge_patch16_radio_v3``)."""
    return TimmViTBackbone("vit_huge_patch16_radio_v3", depth=depth, drop_path_rate=drop_path_rate)
