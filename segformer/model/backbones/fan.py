"""FAN hybrid backbones (Fully Attentional Networks).

Zhou et al., "Understanding The Robustness in Vision Transformers", ICML 2022. The hybrid
variants put two ConvNeXt stages in front of a stack of FAN blocks:

    ConvNeXt stem (4x4/4) + stage 1 (128 ch, stride 4) -> downsample + stage 2 (256 ch, stride 8)
    -> 2x2/2 conv to tokens (E ch, stride 16) + Fourier positional encoding
    -> depth x FAN block: token self-attention, then *channel* attention that gates an MLP
    -> 2 class-attention blocks (CaiT) that read a class token from the patch tokens

Features for segmentation (as NVIDIA's FAN segmentation and TAO use them): the two ConvNeXt
stage outputs, the tokens after the last FAN block, and the tokens after the class-attention
blocks. ``feat_downsample`` ("Feature downsample for fan base backbone" in TAO's spec) adds a
stride-2 3x3 conv to 768 channels on the last level, making the strides (4, 8, 16, 32) instead of
(4, 8, 16, 16).

Sizes (ImageNet classification layout: + final LayerNorm + 1000-class linear head, as counted in
the FAN paper/README; ``classification_parameter_count`` reproduces the count):

=========================  =====  =====  =====  ========  ============  =========
backbone                   E      depth  heads  ConvNeXt  params (ours)  published
=========================  =====  =====  =====  ========  ============  =========
fan_tiny_8_p4_hybrid       192    8      8      (3, 3)    7.47M         7.4M
fan_small_12_p4_hybrid     384    10     8      (3, 3)    26.12M        26.3M
fan_base_16_p4_hybrid      448    16     8      (3, 3)    50.48M        50.4M
fan_large_16_p4_hybrid     480    22     10     (3, 5)    76.86M        76.8M
=========================  =====  =====  =====  ========  ============  =========

Our counts agree with the published ones within 1% (the test's tolerance); the remaining gap
(largest for FAN-S, -0.7%) comes from details of the released code that the paper does not state.
The segmentation backbone drops the classification norm and head: 7.27M, 25.73M, 50.03M, 76.37M. The block layout follows the published architecture; the code is our own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import Tensor, nn

from .registry import register_backbone

_EPS = 1e-6


def _tokens_to_image(tokens: Tensor, height: int, width: int) -> Tensor:
    """(B, H*W, C) -> (B, C, H, W) channels_last view."""
    return tokens.reshape(tokens.shape[0], height, width, -1).permute(0, 3, 1, 2)


def _image_to_tokens(image: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, H*W, C)."""
    return image.permute(0, 2, 3, 1).flatten(1, 2)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map."""

    def forward(self, x: Tensor) -> Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


# --------------------------------------------------------------------------- convolutional stages
class ConvNeXtBlock(nn.Module):
    """7x7 depthwise conv -> LayerNorm -> 4x MLP (GELU) -> layer scale, residual."""

    def __init__(self, dim: int, drop_path: float, layer_scale_init: float = 1e-6) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=_EPS)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale_init))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)  # (B, H, W, C)
        y = self.gamma * self.fc2(self.act(self.fc1(self.norm(y))))
        return x + self.drop_path(y.permute(0, 3, 1, 2))


class ConvStages(nn.Module):
    """The first two ConvNeXt stages: stride 4 and stride 8 feature maps."""

    def __init__(self, depths: Sequence[int], dims: Sequence[int], in_channels: int = 3) -> None:
        super().__init__()
        self.downsample = nn.ModuleList()
        self.stages = nn.ModuleList()
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            if i == 0:  # stem: 4x4 patches
                self.downsample.append(nn.Sequential(nn.Conv2d(in_channels, dim, 4, stride=4), LayerNorm2d(dim, eps=_EPS)))
            else:
                self.downsample.append(nn.Sequential(LayerNorm2d(dims[i - 1], eps=_EPS), nn.Conv2d(dims[i - 1], dim, 2, stride=2)))
            self.stages.append(nn.Sequential(*(ConvNeXtBlock(dim, drop_path=0.0) for _ in range(depth))))

    def forward(self, x: Tensor) -> list[Tensor]:
        features = []
        for downsample, stage in zip(self.downsample, self.stages):
            x = stage(downsample(x))
            features.append(x)
        return features


class FourierPositionalEncoding(nn.Module):
    """Sine/cosine codes of normalised (y, x) positions, projected to ``dim`` by a 1x1 conv."""

    def __init__(self, dim: int, hidden_dim: int = 32, temperature: float = 10000.0) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.temperature = temperature
        self.token_projection = nn.Conv2d(2 * hidden_dim, dim, kernel_size=1)

    def forward(self, height: int, width: int) -> Tensor:
        device, dtype = self.token_projection.weight.device, self.token_projection.weight.dtype
        y = torch.arange(1, height + 1, device=device, dtype=torch.float32) / (height + 1e-6) * 2 * math.pi
        x = torch.arange(1, width + 1, device=device, dtype=torch.float32) / (width + 1e-6) * 2 * math.pi
        freq = torch.arange(self.hidden_dim, device=device, dtype=torch.float32)
        freq = self.temperature ** (2 * torch.div(freq, 2, rounding_mode="floor") / self.hidden_dim)

        def encode(pos: Tensor) -> Tensor:  # (L,) -> (L, hidden_dim): sin on even, cos on odd, interleaved
            angles = pos[:, None] / freq
            return torch.stack([angles[:, 0::2].sin(), angles[:, 1::2].cos()], dim=2).flatten(1)

        pos_y = encode(y)[:, None, :].expand(height, width, self.hidden_dim)
        pos_x = encode(x)[None, :, :].expand(height, width, self.hidden_dim)
        codes = torch.cat([pos_y, pos_x], dim=2).permute(2, 0, 1)[None].to(dtype)  # (1, 2*hidden, H, W)
        return self.token_projection(codes)  # (1, dim, H, W)


# --------------------------------------------------------------------------- FAN blocks
class TokenAttention(nn.Module):
    """Plain multi-head self-attention over tokens (FAN's token mixing)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, attn_drop: float, proj_drop: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        batch, num_tokens, dim = x.shape
        head_dim = dim // self.num_heads
        q = self.q(x).view(batch, num_tokens, self.num_heads, head_dim).transpose(1, 2)
        k, v = self.kv(x).view(batch, num_tokens, 2, self.num_heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(batch, num_tokens, dim)))


class ConvMlp(nn.Module):
    """fc1 -> x + gamma * (dw3x3 -> GELU -> BN -> dw3x3)(x) -> fc2: the MLP inside channel attention."""

    def __init__(self, dim: int, hidden_dim: int, drop: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv1 = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim)
        self.act = nn.GELU()
        self.bn = nn.BatchNorm2d(hidden_dim)
        self.dwconv2 = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim)
        self.gamma = nn.Parameter(torch.ones(hidden_dim))
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        x = self.fc1(x)  # (B, N, hidden)
        local = self.dwconv2(self.bn(self.act(self.dwconv1(_tokens_to_image(x, height, width)))))
        x = x + self.drop(self.gamma * _image_to_tokens(local))
        return self.drop(self.fc2(x))


class ChannelAttention(nn.Module):
    """FAN's channel processing: a per-channel sigmoid gate, computed by attention, on an MLP's output.

    For each head, a query per channel (softmax over tokens of ``q(x)``) meets a key per token
    (softmax over tokens of ``x``, averaged over the head's channels); the sigmoid of their product,
    times a learned per-head temperature, scales the channels of ``norm(mlp(x))``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, attn_drop: float, drop: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.mlp_v = ConvMlp(dim, int(dim * mlp_ratio), drop=drop)
        self.norm_v = nn.LayerNorm(dim, eps=1e-5)
        self.attn_drop = nn.Dropout(attn_drop)

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        batch, num_tokens, dim = x.shape
        heads, head_dim = self.num_heads, dim // self.num_heads
        q = self.q(x).view(batch, num_tokens, heads, head_dim).softmax(dim=1)  # (B, N, h, d) over tokens
        k = x.view(batch, num_tokens, heads, head_dim).softmax(dim=1).mean(dim=3)  # (B, N, h)
        gate = torch.sigmoid(torch.einsum("bnhd,bnh->bhd", q, k)) * self.temperature[:, :, 0]  # (B, h, d)
        gate = self.attn_drop(gate).reshape(batch, 1, dim)
        return gate * self.norm_v(self.mlp_v(x, height, width))  # (B, N, C)


class FANBlock(nn.Module):
    """x + gamma1 * TokenAttention(LN(x)); x + gamma2 * ChannelAttention(LN(x))."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, drop: float, attn_drop: float,
        drop_path: float, eta: float,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=_EPS)
        self.attn = TokenAttention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.norm2 = nn.LayerNorm(dim, eps=_EPS)
        self.mlp = ChannelAttention(dim, num_heads, mlp_ratio, qkv_bias, attn_drop, drop)
        self.gamma1 = nn.Parameter(torch.full((dim,), eta))
        self.gamma2 = nn.Parameter(torch.full((dim,), eta))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        x = x + self.drop_path(self.gamma1 * self.attn(self.norm1(x)))
        return x + self.drop_path(self.gamma2 * self.mlp(self.norm2(x), height, width))


class ClassAttentionBlock(nn.Module):
    """CaiT class attention: only the class token queries; with tokens_norm every token is re-normed."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, eta: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim, eps=_EPS)
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=_EPS)
        self.fc1 = nn.Linear(dim, int(dim * mlp_ratio))
        self.act = nn.GELU()
        self.fc2 = nn.Linear(int(dim * mlp_ratio), dim)
        self.gamma1 = nn.Parameter(torch.full((dim,), eta))
        self.gamma2 = nn.Parameter(torch.full((dim,), eta))

    def forward(self, x: Tensor) -> Tensor:  # x: (B, 1 + N, C), class token first
        batch, length, dim = x.shape
        heads = self.num_heads
        normed = self.norm1(x)
        q = self.q(normed[:, :1]).view(batch, 1, heads, -1).transpose(1, 2)  # (B, h, 1, d)
        k = self.k(normed).view(batch, length, heads, -1).transpose(1, 2)  # (B, h, L, d)
        v = self.v(normed).view(batch, length, heads, -1).transpose(1, 2)
        cls = self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, 1, dim))
        # As published: patch tokens pass their normed values through the attention branch.
        x = x + self.gamma1 * torch.cat([cls, normed[:, 1:]], dim=1)
        x = self.norm2(x)
        cls = self.gamma2 * self.fc2(self.act(self.fc1(x[:, :1])))
        return x + torch.cat([cls, x[:, 1:]], dim=1)


class FANHybrid(nn.Module):
    """ConvNeXt stages + FAN blocks + class attention; returns four NCHW feature maps."""

    def __init__(
        self,
        embed_dim: int,
        depth: int,
        num_heads: int,
        conv_depths: Sequence[int] = (3, 3),
        conv_dims: Sequence[int] = (128, 256),
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        eta: float = 1.0,
        cls_attn_layers: int = 2,
        feat_downsample: bool = False,
        downsample_channels: int = 768,
    ) -> None:
        super().__init__()
        self.conv = ConvStages(conv_depths, conv_dims)
        self.patch_proj = nn.Conv2d(conv_dims[-1], embed_dim, kernel_size=2, stride=2)  # stride 8 -> 16
        self.pos_embed = FourierPositionalEncoding(embed_dim)
        self.pos_drop = nn.Dropout(drop_rate)
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            FANBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, rates[i], eta)
            for i in range(depth)
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.cls_attn_blocks = nn.ModuleList(
            ClassAttentionBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, eta) for _ in range(cls_attn_layers)
        )
        self.learnable_downsample = (
            nn.Conv2d(embed_dim, downsample_channels, kernel_size=3, stride=2, padding=1) if feat_downsample else None
        )
        last = downsample_channels if feat_downsample else embed_dim
        self.out_channels: tuple[int, ...] = (*conv_dims, embed_dim, last)
        self.strides: tuple[int, ...] = (4, 8, 16, 32 if feat_downsample else 16)
        self.apply(_init_weights)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x: Tensor) -> list[Tensor]:
        features = self.conv(x)  # (B, 128, H/4, W/4), (B, 256, H/8, W/8)
        tokens = self.patch_proj(features[-1])  # (B, E, H/16, W/16)
        height, width = tokens.shape[-2:]
        tokens = self.pos_drop(_image_to_tokens(tokens + self.pos_embed(height, width)))  # (B, N, E)
        for block in self.blocks:
            tokens = block(tokens, height, width)
        features.append(_tokens_to_image(tokens, height, width))

        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        for block in self.cls_attn_blocks:
            tokens = block(tokens)
        last = _tokens_to_image(tokens[:, 1:], height, width)
        features.append(self.learnable_downsample(last) if self.learnable_downsample is not None else last)
        return features


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def classification_parameter_count(backbone: FANHybrid, num_classes: int = 1000) -> int:
    """Parameters of the ImageNet layout the FAN paper counts: ours minus ``learnable_downsample``,
    plus the final LayerNorm and the linear classifier."""
    dim = backbone.cls_token.shape[-1]
    own = sum(p.numel() for name, p in backbone.named_parameters() if not name.startswith("learnable_downsample."))
    return own + 2 * dim + dim * num_classes + num_classes


@register_backbone
def fan_tiny_8_p4_hybrid(*, feat_downsample: bool = False, drop_path_rate: float = 0.1) -> FANHybrid:
    """FAN-T-Hybrid: E=192, 8 FAN blocks, 8 heads; 7.4M (ImageNet layout)."""
    return FANHybrid(embed_dim=192, depth=8, num_heads=8, feat_downsample=feat_downsample, drop_path_rate=drop_path_rate)


@register_backbone
def fan_small_12_p4_hybrid(*, feat_downsample: bool = False, drop_path_rate: float = 0.1) -> FANHybrid:
    """FAN-S-Hybrid: E=384, 10 FAN blocks (the name counts 12 layers), 8 heads; 26.3M."""
    return FANHybrid(embed_dim=384, depth=10, num_heads=8, feat_downsample=feat_downsample, drop_path_rate=drop_path_rate)


@register_backbone
def fan_base_16_p4_hybrid(*, feat_downsample: bool = False, drop_path_rate: float = 0.1) -> FANHybrid:
    """FAN-B-Hybrid: E=448, 16 FAN blocks, 8 heads; 50.4M."""
    return FANHybrid(embed_dim=448, depth=16, num_heads=8, feat_downsample=feat_downsample, drop_path_rate=drop_path_rate)


@register_backbone
def fan_large_16_p4_hybrid(*, feat_downsample: bool = False, drop_path_rate: float = 0.1) -> FANHybrid:
    """FAN-L-Hybrid: E=480, 22 FAN blocks, 10 heads, ConvNeXt depths (3, 5); 76.8M."""
    return FANHybrid(embed_dim=480, depth=22, num_heads=10, conv_depths=(3, 5), feat_downsample=feat_downsample,
                     drop_path_rate=drop_path_rate)
