"""The SegFormer all-MLP decode head.

As published: each feature level i is projected to ``embed_dim`` channels by a linear layer
(P_i, a 1x1 conv), upsampled to the resolution of the first (stride-4) level, the levels are
concatenated (deepest first, as in the original and in transformers), fused by a 1x1 conv
without bias (W), then BatchNorm, ReLU, dropout and a 1x1 classifier.

How it is computed here (same result, less work): projection, bilinear upsampling and the fuse
conv are all linear, and the fuse conv acting on a concatenation is a sum of per-level blocks W_i.
So ``W @ concat(up(P_i x_i + b_i)) == sum_i up((W_i P_i) x_i + W_i b_i)`` (bilinear weights sum to
one, so biases pass through). The head multiplies the small matrices W_i P_i (embed_dim x C_i)
on every call, which keeps the parameters and their gradients exactly those of the published
layers (checkpoints load unchanged), and never builds the 4*embed_dim-channel map at 1/4
resolution. In eval mode BatchNorm is folded into the same per-level weights. For MiT-B0 at
512x512 this removes about half of the model's multiply-adds.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segformer.errors import SpecError


class SegFormerHead(nn.Module):
    """All-MLP decoder: per-level linear projection, upsample to 1/4, fuse, classify."""

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        embed_dim: int,
        dropout: float = 0.1,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if embed_dim < 1:
            raise SpecError(f"decode_head.decoder_params.embed_dim must be >= 1, got {embed_dim}")
        self.in_channels = tuple(in_channels)
        self.embed_dim = embed_dim
        self.align_corners = align_corners
        self.linear_projections = nn.ModuleList(nn.Conv2d(c, embed_dim, kernel_size=1) for c in self.in_channels)
        self.fuse = nn.Conv2d(embed_dim * len(self.in_channels), embed_dim, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(embed_dim)
        self.act = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout2d(dropout)  # mmseg/TAO decode heads drop whole channels
        self.classifier = nn.Conv2d(embed_dim, num_classes, kernel_size=1)

    def _level_weights(self) -> tuple[list[Tensor], Tensor | None]:
        """Per-level (W_i @ P_i) weights and one summed bias; BatchNorm folded in when evaluating."""
        num_levels, dim = len(self.linear_projections), self.embed_dim
        fuse = self.fuse.weight.flatten(1)  # (E, L*E); block 0 belongs to the deepest level
        fold_bn = not self.training
        if fold_bn:
            scale = self.bn.weight * torch.rsqrt(self.bn.running_var + self.bn.eps)  # (E,)
            fuse = fuse * scale[:, None]
        weights, bias = [], None
        for i, proj in enumerate(self.linear_projections):
            block = fuse[:, (num_levels - 1 - i) * dim : (num_levels - i) * dim]  # W_i: (E, E)
            weights.append((block @ proj.weight.flatten(1))[:, :, None, None])  # (E, C_i, 1, 1)
            level_bias = block @ proj.bias
            bias = level_bias if bias is None else bias + level_bias
        if fold_bn:
            bias = bias - scale * self.bn.running_mean + self.bn.bias
        return weights, bias

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """features[i]: (N, C_i, H_i, W_i), features[0] the finest -> logits (N, K, H_0, W_0)."""
        if len(features) != len(self.linear_projections):
            raise ValueError(f"decode head expects {len(self.linear_projections)} feature maps, got {len(features)}")
        weights, bias = self._level_weights()
        size = features[0].shape[-2:]
        fused = F.conv2d(features[0], weights[0], bias)  # (N, E, H/4, W/4); carries the summed bias
        for x, weight in zip(features[1:], weights[1:]):
            y = F.conv2d(x, weight)  # (N, E, H_i, W_i) at the level's own resolution
            fused = fused + F.interpolate(y, size=size, mode="bilinear", align_corners=self.align_corners)
        if self.training:
            fused = self.bn(fused)
        x = self.dropout(self.act(fused))
        return self.classifier(x)
