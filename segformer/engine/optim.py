"""Optimizers and per-iteration learning-rate schedules with TAO's names and meanings."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from segformer.errors import SpecError

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
            raise SpecError(f"train.optim.optim must be one of {OPTIMIZERS}, got {self.name!r}")
        if self.policy not in POLICIES:
            raise SpecError(f"train.optim.policy must be one of {POLICIES}, got {self.policy!r}")
        if not self.lr > 0:
            raise SpecError(f"train.optim.lr must be > 0, got {self.lr}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise SpecError(f"train.optim.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        object.__setattr__(self, "lr_steps", tuple(int(s) for s in self.lr_steps))


def _no_decay(name: str, param: nn.Parameter) -> bool:
    """Norm weights, biases and position embeddings: regularising them toward 0 only hurts.

    This is the SegFormer/mmseg recipe (``norm``/``pos_block`` decay_mult 0) and common practice;
    every other weight gets ``weight_decay``.
    """
    return param.ndim <= 1 or "pos_embed" in name or "pos_block" in name or name.endswith(".bias")


def parameter_groups(
    named_params: Iterable[tuple[str, nn.Parameter]], weight_decay: float
) -> list[dict[str, object]]:
    """Trainable parameters split into a decayed and a non-decayed group (empty groups dropped)."""
    decay, no_decay = [], []
    for name, param in named_params:
        if param.requires_grad:
            (no_decay if _no_decay(name, param) else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


def create_optimizer(
    named_params: Iterable[tuple[str, nn.Parameter]], settings: OptimizerSettings
) -> torch.optim.Optimizer:
    """The optimizer over ``model.named_parameters()``; frozen parameters are left out.

    One learning rate for the whole model (TAO's ``train.optim.lr``); weight decay skips norms,
    biases and position embeddings (see :func:`_no_decay`).
    """
    groups = parameter_groups(named_params, settings.weight_decay)
    if not groups:
        raise ValueError("no trainable parameters (is everything frozen?)")
    if settings.name == "sgd":
        return torch.optim.SGD(groups, lr=settings.lr, momentum=settings.momentum)
    betas = (settings.momentum, 0.999)
    if settings.name == "adam":
        return torch.optim.Adam(groups, lr=settings.lr, betas=betas)
    return torch.optim.AdamW(groups, lr=settings.lr, betas=betas)


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


def follow_spec(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    settings: OptimizerSettings,
    named_params: Iterable[tuple[str, nn.Parameter]],
    checkpoint_schedule: dict | None,
) -> list[str]:
    """Make an optimizer and schedule restored from a checkpoint follow this run's settings.

    A resume restores the optimizer's lr, weight decay and momentum and (``LambdaLR``) the schedule
    object's fields; the spec's own values would be ignored, and a larger ``train.num_epochs`` would
    train past the old schedule's end (lr 0 under the linear policy). The step count, the optimizer's
    moments and the model stay the checkpoint's. ``scheduler.lr_lambdas`` must already be this run's
    schedule (the checkpoint's fields left out when loading). Returns what changed, for the user.
    """
    changes: list[str] = []
    schedule = scheduler.lr_lambdas[0]
    step = scheduler.last_epoch
    if isinstance(checkpoint_schedule, dict) and isinstance(schedule, LrSchedule) and checkpoint_schedule != vars(schedule):
        before = (f", not x{LrSchedule(**checkpoint_schedule)(step):.3g}"
                  if set(checkpoint_schedule) == set(vars(schedule)) else "")
        changes.append(f"the learning-rate schedule over {schedule.total_steps} steps (the checkpoint's "
                       f"{checkpoint_schedule.get('total_steps')}), x{schedule(step):.3g} of the lr from here{before}")
    base = scheduler.base_lrs[0]
    if not math.isclose(base, settings.lr, rel_tol=1e-9):
        ratio = settings.lr / base
        scheduler.base_lrs = [b * ratio for b in scheduler.base_lrs]
        for group in optimizer.param_groups:
            if "initial_lr" in group:
                group["initial_lr"] *= ratio
        changes.append(f"train.optim.lr {settings.lr:g} (the checkpoint's {base:g})")
    decayed = {id(p) for name, p in named_params if p.requires_grad and not _no_decay(name, p)}
    for group in optimizer.param_groups:
        if any(id(p) in decayed for p in group["params"]) and group.get("weight_decay") != settings.weight_decay:
            changes.append(f"train.optim.weight_decay {settings.weight_decay:g} (the checkpoint's {group['weight_decay']:g})")
            group["weight_decay"] = settings.weight_decay
        if "betas" in group and group["betas"][0] != settings.momentum:
            changes.append(f"train.optim.momentum {settings.momentum:g} (the checkpoint's {group['betas'][0]:g})")
            group["betas"] = (settings.momentum, group["betas"][1])
        elif "momentum" in group and group["momentum"] != settings.momentum:
            changes.append(f"train.optim.momentum {settings.momentum:g} (the checkpoint's {group['momentum']:g})")
            group["momentum"] = settings.momentum
    if changes:
        for group, base_lr, fn in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["lr"] = base_lr * fn(step)
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    return list(dict.fromkeys(changes))  # a value shared by several groups is said once
