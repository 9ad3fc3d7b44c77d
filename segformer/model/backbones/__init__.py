"""Backbones for SegFormer. Importing this package registers every backbone."""

from . import fan, mit, timm_vit  # noqa: F401  (register their factories)
from .registry import create_backbone, get_backbone_factory, is_backbone, list_backbones, register_backbone

__all__ = ["create_backbone", "get_backbone_factory", "is_backbone", "list_backbones", "register_backbone"]
