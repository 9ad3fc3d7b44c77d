"""Mix Transformer (MiT), the SegFormer encoder, in one file.

Xie et al., "SegFormer: Simple and Efficient Design for Semantic Segmentation with Transformers",
NeurIPS 2021. Four stages; each stage is

    overlapping patch embedding (strided conv + LayerNorm)
    -> depth x [x + DropPath(EfficientSelfAttention(LN(x))), x + DropPath(MixFFN(LN(x)))]
    -> LayerNorm

Efficient self-attention shortens the key/value sequence by a strided convolution with ratio R
(8, 4, 2, 1 per stage), so attention costs N * N / R^2 instead of N^2. Mix-FFN puts a 3x3
depthwise convolution between its two linear layers; it leaks positional information, so MiT
needs no positional embedding and runs at any input size.

Layout notes (why the code looks the way it does):
- tokens are kept as (B, N, C) with N = H * W in row-major order, i.e. the memory of an NHWC
  image. ``_tokens_to_image`` and ``_image_to_tokens`` switch between the two views with a
  permute that is free (no copy) because convolutions on a channels_last-strided input return
  channels_last output;
- keys and values share one projection (``kv``), queries have their own (``q``), as in the
  original implementation, and attention is ``F.scaled_dot_product_attention``.

Parameter counts (encoder only, this file; paper Table 6 in parentheses):
B0 3.32M (3.4), B1 13.15M (13.1), B2 24.20M (24.2), B3 44.04M (44.0), B4 60.82M (60.8), B5 81.44M (81.4).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from timm.layers import DropPath
from torch import Tensor, nn

from .registry import register_backbone


def _tokens_to_image(tokens: Tensor, height: int, width: int) -> Tensor:
    """(B, H*W, C) -> (B, C, H, W) as a channels_last view (no copy)."""
    batch, _, channels = tokens.shape
    return tokens.reshape(batch, height, width, channels).permute(0, 3, 1, 2)


def _image_to_tokens(image: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, H*W, C); free for channels_last input, one copy otherwise."""
    batch, channels, height, width = image.shape
    return image.permute(0, 2, 3, 1).reshape(batch, height * width, channels)


class OverlapPatchEmbed(nn.Module):
    """Strided convolution with kernel > stride, so neighbouring patches overlap; then LayerNorm."""

    def __init__(self, in_channels: int, embed_dim: int, patch_size: int, stride: int, eps: float) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(embed_dim, eps=eps)

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        x = self.proj(x)  # (B, C_in, H, W) -> (B, C, H/s, W/s)
        height, width = x.shape[-2:]
        return self.norm(_image_to_tokens(x)), height, width  # (B, N, C)


class EfficientSelfAttention(nn.Module):
    """Multi-head attention whose keys/values come from a sequence shrunk by ``sr_ratio`` per side."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, attn_drop: float, proj_drop: float, eps: float) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width must be divisible by num_heads, got dim={dim}, num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attn_drop = attn_drop
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)  # keys and values in one matmul
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        batch, num_tokens, dim = x.shape
        q = self.q(x).view(batch, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)  # (B, h, N, d)

        kv_input = x
        if self.sr_ratio > 1:
            kv_image = self.sr(_tokens_to_image(x, height, width))  # (B, C, H/R, W/R)
            kv_input = self.norm(_image_to_tokens(kv_image))  # (B, M, C), M = N / R^2
        kv = self.kv(kv_input).view(batch, -1, 2, self.num_heads, self.head_dim)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # 2 x (B, h, M, d)

        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        out = out.transpose(1, 2).reshape(batch, num_tokens, dim)  # (B, N, C)
        return self.proj_drop(self.proj(out))


class MixFFN(nn.Module):
    """Linear -> 3x3 depthwise conv -> GELU -> Linear; the conv gives positional cues."""

    def __init__(self, dim: int, hidden_dim: int, drop: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, kernel_size=3, padding=1, groups=hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        x = self.fc1(x)  # (B, N, 4C)
        x = _image_to_tokens(self.dwconv(_tokens_to_image(x, height, width)))  # 3x3 depthwise in NHWC memory
        x = self.drop(self.act(x))
        return self.drop(self.fc2(x))  # (B, N, C)


class MiTBlock(nn.Module):
    """Pre-norm transformer block: efficient self-attention then Mix-FFN, each with stochastic depth."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        sr_ratio: int,
        drop: float,
        attn_drop: float,
        drop_path: float,
        eps: float,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio, attn_drop=attn_drop, proj_drop=drop, eps=eps)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MixFFN(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), height, width))
        return x + self.drop_path(self.mlp(self.norm2(x), height, width))


class MiTStage(nn.Module):
    """Patch embedding (downsampling) -> blocks -> LayerNorm; returns an NCHW feature map."""

    def __init__(
        self,
        in_channels: int,
        dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        sr_ratio: int,
        patch_size: int,
        stride: int,
        drop: float,
        attn_drop: float,
        drop_paths: Sequence[float],
        eps: float,
    ) -> None:
        super().__init__()
        self.patch_embed = OverlapPatchEmbed(in_channels, dim, patch_size, stride, eps=eps)
        self.blocks = nn.ModuleList(
            MiTBlock(dim, num_heads, mlp_ratio, sr_ratio, drop, attn_drop, drop_paths[i], eps) for i in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        x, height, width = self.patch_embed(x)  # (B, N, C)
        for block in self.blocks:
            x = block(x, height, width)
        return _tokens_to_image(self.norm(x), height, width)  # (B, C, H, W), channels_last memory


class MixVisionTransformer(nn.Module):
    """MiT encoder: four stages at strides 4, 8, 16, 32; ``forward`` returns all four maps."""

    def __init__(
        self,
        embed_dims: Sequence[int],
        depths: Sequence[int],
        num_heads: Sequence[int],
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        mlp_ratios: Sequence[float] = (4, 4, 4, 4),
        patch_sizes: Sequence[int] = (7, 3, 3, 3),
        patch_strides: Sequence[int] = (4, 2, 2, 2),
        in_channels: int = 3,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,  # mmseg/TAO SegFormer recipes use 0.1
        layer_norm_eps: float = 1e-6,  # original implementation; transformers uses 1e-5
    ) -> None:
        super().__init__()
        lengths = {len(x) for x in (embed_dims, depths, num_heads, sr_ratios, mlp_ratios, patch_sizes, patch_strides)}
        if len(lengths) != 1:
            raise ValueError("embed_dims, depths, num_heads, sr_ratios, mlp_ratios, patch_sizes, patch_strides "
                             f"must have one entry per stage; got lengths {sorted(lengths)}")
        # Stochastic depth grows linearly from 0 to drop_path_rate over all blocks of all stages.
        total = sum(depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]

        stages = []
        cursor = 0
        for i, depth in enumerate(depths):
            stages.append(
                MiTStage(
                    in_channels=in_channels if i == 0 else embed_dims[i - 1],
                    dim=embed_dims[i],
                    depth=depth,
                    num_heads=num_heads[i],
                    mlp_ratio=mlp_ratios[i],
                    sr_ratio=sr_ratios[i],
                    patch_size=patch_sizes[i],
                    stride=patch_strides[i],
                    drop=drop_rate,
                    attn_drop=attn_drop_rate,
                    drop_paths=rates[cursor : cursor + depth],
                    eps=layer_norm_eps,
                )
            )
            cursor += depth
        self.stages = nn.ModuleList(stages)

        self.out_channels: tuple[int, ...] = tuple(embed_dims)
        strides, stride = [], 1
        for s in patch_strides:
            stride *= s
            strides.append(stride)
        self.strides: tuple[int, ...] = tuple(strides)
        self.apply(_init_weights)

    def forward(self, x: Tensor) -> list[Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


def _init_weights(module: nn.Module) -> None:
    """Truncated-normal linears, fan-out normal convolutions (as the original), unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, std=(2.0 / fan_out) ** 0.5)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# Paper Table 6: B0 is narrow; B1..B5 share widths (64, 128, 320, 512) and heads (1, 2, 5, 8)
# and differ in depth.
_WIDE = dict(embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8))


@register_backbone
def mit_b0(*, drop_path_rate: float = 0.1, layer_norm_eps: float = 1e-6) -> MixVisionTransformer:
    """MiT-B0: widths (32, 64, 160, 256), depths (2, 2, 2, 2); 3.3M parameters."""
    return MixVisionTransformer(embed_dims=(32, 64, 160, 256), depths=(2, 2, 2, 2), num_heads=(1, 2, 5, 8),
                                drop_path_rate=drop_path_rate, layer_norm_eps=layer_norm_eps)


@register_backbone
def mit_b1(*, drop_path_rate: float = 0.1, layer_norm_eps: float = 1e-6) -> MixVisionTransformer:
    """MiT-B1: widths (64, 128, 320, 512), depths (2, 2, 2, 2); 13.2M parameters."""
    return MixVisionTransformer(depths=(2, 2, 2, 2), drop_path_rate=drop_path_rate, layer_norm_eps=layer_norm_eps,
                                **_WIDE)


@register_backbone
def mit_b2(*, drop_path_rate: float = 0.1, layer_norm_eps: float = 1e-6) -> MixVisionTransformer:
    """MiT-B2: depths (3, 4, 6, 3); 24.2M parameters."""
    return MixVisionTransformer(depths=(3, 4, 6, 3), drop_path_rate=drop_path_rate, layer_norm_eps=layer_norm_eps,
                                **_WIDE)


@register_backbone
def mit_b3(*, drop_path_rate: float = 0.1, layer_norm_eps: float = 1e-6) -> MixVisionTransformer:
    """MiT-B3: depths (3, 4, 18, 3); 44.0M parameters."""
    return MixVisionTransformer(depths=(3, 4, 18, 3), drop_path_rate=drop_path_rate, layer_norm_eps=layer_norm_eps,
                                **_WIDE)


@register_backbone
def mit_b4(*, drop_path_rate: float = 0.1, layer_norm_eps: float = 1e-6) -> MixVisionTransformer:
    """MiT-B4: depths (3, 8, 27, 3); 60.8M parameters."""
    return MixVisionTransformer(depths=(3, 8, 27, 3), drop_path_rate=drop_path_rate, layer_norm_eps=layer_norm_eps,
                                **_WIDE)


@register_backbone
def mit_b5(*, drop_path_rate: float = 0.1, layer_norm_eps: float = 1e-6) -> MixVisionTransformer:
    """MiT-B5: depths (3, 6, 40, 3); 81.4M parameters."""
    return MixVisionTransformer(depths=(3, 6, 40, 3), drop_path_rate=drop_path_rate, layer_norm_eps=layer_norm_eps,
                                **_WIDE)
