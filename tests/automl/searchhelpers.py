"""Shared helpers of the AutoML tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TINY = ("dataset.segment.batch_size=4", "model.decode_head.decoder_params.embed_dim=32")  # quick trials


def search_options(results: Path, spec: Path, overrides: tuple[str, ...] = TINY, **options: Any):
    """`automl.SearchOptions` for a small search of `spec` into `results` (flat option names)."""
    from automl import SearchOptions

    return SearchOptions.build(options, results_dir=str(results), spec=str(spec), skill="segformer",
                               overrides=tuple(overrides))


def download_folder(path: Path) -> str:
    """A new folder for MLflow to download a model into (`dst_path`, which must exist): without one
    every load leaves its copy (about 60 MB) in /tmp."""
    path.mkdir(parents=True)
    return str(path)
