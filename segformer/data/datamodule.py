"""Lightning's DataModule over :class:`~segformer.data.segdata.SegData`, for training.

Everything but the Lightning hooks' base class lives in :mod:`segformer.data.segdata`, so the
actions that only read data (evaluate, inference, export, quantize) do not import Lightning.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningDataModule

from segformer.data.segdata import SegData, build_data


class SegDataModule(SegData, LightningDataModule):
    """:class:`SegData` as a LightningDataModule: the same arguments, loaders and ``setup``."""


def build_datamodule(segment_cfg: Any, seed: int, **kwargs: Any) -> SegDataModule:
    """``cfg.dataset.segment`` -> :class:`SegDataModule`; the arguments of :func:`build_data`."""
    return build_data(segment_cfg, seed, cls=SegDataModule, **kwargs)  # type: ignore[return-value]
