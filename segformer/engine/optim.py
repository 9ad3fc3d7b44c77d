"""Optimizers and per-iteration learning-rate schedules with TAO's names and meanings."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

OPTIMIZERS = ("adamw", "adam", "sgd")
POLICIES = ("linear", "step")


@dataclass(frozen=True)
class OptimizerSettings:
    """Everything the optimizer and its schedule need; plain values so they fit in hparams.

    ``momentum`` is SGD momentum for ``sgd`` and beta1 for ``adam``/``adamw`` (TAO's meaning).
    ``lr_steps`` are milestone *epochs* for policy ``step``; empty means 2/3 and 8/9 of the epochs.
    ``warmup_ratio`` is the fraction of all iterations with a linear warm-up from ~0 to ``lr``
    (both policies).
    """

    name: str = "adamw"
    lr: float = 6e-5
    momentum: float = 0.9
    weight_decay: float = 0.01
    policy: str = "linear"
    warmup_ratio: float = 0.0
    lr_steps: tuple[int, ...] = field(default_factory=tuple)
    lr_decay: float = 0.1

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(f"train.optim.optim must be one of {OPTIMIZERS}, got {self.name!r}")
        if self.policy not in POLICIES:
            raise ValueError(f"train.optim.policy must be one of {POLICIES}, got {self.policy!r}")
        if not self.lr > 0:
            raise ValueError(f"train.optim.lr must be > 0, got {self.lr}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"train.optim.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        object.__setattr__(self, "lr_steps", tuple(int(s) for s in self.lr_steps))


def create_optimizer(params: Iterable[nn.Parameter], settings: OptimizerSettings) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters (is everything frozen?)")
    if settings.name == "sgd":
        return torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    betas = (settings.momentum, 0.999)
    if settings.name == "adam":
        return torch.optim.Adam(params, lr=settings.lr, betas=betas, weight_decay=settings.weight_decay)
    return torch.optim.AdamW(params, lr=settings.lr, betas=betas, weight_decay=settings.weight_decay)


@dataclass(frozen=True)
class LrSchedule:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based).

    A callable object with plain fields, so ``LambdaLR.state_dict`` stores it as primitives and a
    checkpoint stays loadable with ``torch.load(weights_only=True)``.
    """

    policy: str
    total_steps: int
    warmup_steps: int = 0
    milestones: tuple[int, ...] = ()  # in steps, policy "step" only
    decay: float = 0.1

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.policy == "linear":
            # poly with power 1: lr -> 0 at total_steps.
            span = max(1, self.total_steps - self.warmup_steps)
            return max(0.0, 1.0 - (step - self.warmup_steps) / span)
        passed = sum(1 for milestone in self.milestones if step >= milestone)
        return self.decay**passed


def create_lr_schedule(settings: OptimizerSettings, total_steps: int, num_epochs: int) -> LrSchedule:
    """Turn epoch-based settings into a per-iteration schedule for ``total_steps`` steps."""
    total_steps = max(1, int(total_steps))
    steps_per_epoch = max(1, total_steps // max(1, num_epochs))
    warmup = int(round(settings.warmup_ratio * total_steps))
    milestones: tuple[int, ...] = ()
    if settings.policy == "step":
        epochs: Sequence[int] = settings.lr_steps or default_lr_steps(num_epochs)
        milestones = tuple(sorted(int(e) * steps_per_epoch for e in epochs))
    return LrSchedule(settings.policy, total_steps, warmup, milestones, settings.lr_decay)


def default_lr_steps(num_epochs: int) -> tuple[int, ...]:
    """Milestones at 2/3 and 8/9 of training (the usual step schedule)."""
    return tuple(sorted({max(1, math.floor(num_epochs * 2 / 3)), max(1, math.floor(num_epochs * 8 / 9))}))
