"""Backbone registry: a dict, a decorator, ``create_backbone`` and ``list_backbones`` (timm style).

Every backbone factory returns an ``nn.Module`` with

- ``out_channels: tuple[int, ...]`` channels of each returned feature level,
- ``strides: tuple[int, ...]`` each level's stride relative to the input image,
- ``forward(x) -> list[Tensor]`` one NCHW tensor per level.

Each registered name also declares its ``input_multiple``: input sides must be multiples of it
(the patch size for plain ViTs: 14 or 16). MiT and FAN pad/ceil every stride and accept any side
(>= 32, the spec's lower bound), so theirs is 1. It is known without building the model, so a bad
``img_size`` fails before data checks and weight loading (``segformer.model.check_input_size``).

The decode head reads ``out_channels`` and ``strides``, so specs never repeat channel lists.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from segformer.errors import SpecError

BackboneFactory = Callable[..., nn.Module]
F = TypeVar("F", bound=BackboneFactory)

_BACKBONES: dict[str, BackboneFactory] = {}
_INPUT_MULTIPLE: dict[str, int] = {}


def register_backbone(fn: F | None = None, *, input_multiple: int = 1) -> Any:
    """Register ``fn`` under its function name: ``@register_backbone def mit_b0(...)``, or
    ``@register_backbone(input_multiple=14)`` for a backbone whose input sides must be multiples of 14."""
    if input_multiple < 1:
        raise ValueError(f"input_multiple must be >= 1, got {input_multiple}")

    def register(fn: F) -> F:
        name = fn.__name__
        if name in _BACKBONES:
            raise ValueError(f"backbone {name!r} is registered twice ({_BACKBONES[name].__module__} and {fn.__module__})")
        _BACKBONES[name] = fn
        _INPUT_MULTIPLE[name] = int(input_multiple)
        return fn

    return register(fn) if fn is not None else register


def backbone_input_multiple(name: str) -> int:
    """The number every input side must be a multiple of for backbone ``name`` (1: any size)."""
    get_backbone_factory(name)  # unknown names: the usual error listing valid ones
    return _INPUT_MULTIPLE[name]


def list_backbones() -> list[str]:
    """Names of every registered backbone, sorted."""
    return sorted(_BACKBONES)


def is_backbone(name: str) -> bool:
    return name in _BACKBONES


def get_backbone_factory(name: str) -> BackboneFactory:
    try:
        return _BACKBONES[name]
    except KeyError:
        raise SpecError(
            f"unknown backbone {name!r}; model.backbone.type must be one of: {', '.join(list_backbones())}"
        ) from None


def create_backbone(name: str, **kwargs: Any) -> nn.Module:
    """Build the backbone registered as ``name``; ``kwargs`` go to its factory unchanged.

    An unknown name is a ``ValueError`` that lists the valid names; an unknown keyword is the
    factory's own ``TypeError`` (factories take explicit keywords, they never swallow ``**kwargs``).
    """
    return get_backbone_factory(name)(**kwargs)
