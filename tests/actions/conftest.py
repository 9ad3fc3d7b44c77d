"""A tiny synthetic dataset and one short training run, shared by the action tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from segformer.config import load_config
from segformer.data.synth import generate

TINY = [
    "train.num_epochs=2",
    "train.checkpoint_interval=1",
    "train.seed=7",
    "model.decode_head.decoder_params.embed_dim=32",
    "dataset.segment.batch_size=4",
    "dataset.segment.workers=0",
    "evaluate.batch_size=4",
    "inference.batch_size=3",
]


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """3 classes, 32x32 pixels, 8 train / 4 val / 4 test images (written once per session)."""
    return generate(tmp_path_factory.mktemp("synth"), num_classes=3, size=32, train=8, val=4, test=4, seed=0)


def make_config(dataset: Path, results_dir: Path, *overrides: str):
    return load_config(dataset / "spec.yaml", [f"results_dir={results_dir}", f"dataset.segment.root_dir={dataset}",
                                               *TINY, *overrides])


@pytest.fixture(scope="session")
def make_cfg():
    """``make_cfg(dataset, results_dir, *overrides)`` -> tiny ExperimentConfig."""
    return make_config


@pytest.fixture(scope="session")
def trained(tiny_dataset, tmp_path_factory):
    """(config, TrainResult) of a 2-epoch run on the tiny dataset."""
    from segformer.actions import train

    cfg = make_config(tiny_dataset, tmp_path_factory.mktemp("results"))
    return cfg, train.run(cfg, quiet=True)


@pytest.fixture
def dataset_copy(tiny_dataset, tmp_path) -> Path:
    """A private copy of the tiny dataset that a test may break."""
    target = tmp_path / "data"
    shutil.copytree(tiny_dataset, target)
    return target
