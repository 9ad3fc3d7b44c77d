"""The names of the files a training writes into its results folder, without Lightning.

A resumed search, a search folder given as a parent model and the train action itself all need
these names; only the last needs Lightning. :mod:`segformer.engine.callbacks` writes the files and
imports Lightning (about 6 s of CPU on a small machine), so the names live here.
"""

from __future__ import annotations

import re

LATEST_NAME = "segformer_model_latest.pth"
STATUS_NAME = "status.json"

_CHECKPOINT_NAME = re.compile(r"model_epoch_(\d+)_step_(\d+)\.pth")


def checkpoint_name(epoch: int, step: int) -> str:
    """A periodic checkpoint's file name; ``epoch`` is 0-based, ``step`` counts optimizer steps (as Lightning and TAO)."""
    return f"model_epoch_{epoch:03d}_step_{step:05d}.pth"


def parse_checkpoint_name(name: str) -> tuple[int, int] | None:
    """(epoch, step) of a periodic checkpoint's file name (:func:`checkpoint_name`); None for any other name."""
    match = _CHECKPOINT_NAME.fullmatch(name)
    return (int(match.group(1)), int(match.group(2))) if match else None
