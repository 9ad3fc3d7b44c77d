"""Shared deploy fixtures: a tiny synthetic dataset, a random-weight MiT-B0 checkpoint, one export.

The export (the expensive step, several seconds on 2 cores) runs once per session through the
real export action; the other tests reuse its ONNX file.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from segformer.config import load_config
from segformer.data.synth import generate

from deploy_helpers import NUM_CLASSES, SIZE



TINY = [
    "model.decode_head.decoder_params.embed_dim=32",
    "dataset.segment.batch_size=4",
    "dataset.segment.workers=0",
    "evaluate.batch_size=4",
    f"export.input_height={SIZE}",
    f"export.input_width={SIZE}",
    "export.on_cpu=true",
]


@pytest.fixture(scope="session")
def deploy_dataset(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("deploy_synth"), num_classes=NUM_CLASSES, size=SIZE,
                    train=4, val=4, test=2, seed=1)


@pytest.fixture(scope="session")
def make_deploy_cfg(deploy_dataset):
    def make(results_dir: Path, *overrides: str):
        return load_config(deploy_dataset / "spec.yaml", [f"results_dir={results_dir}",
                                                          f"dataset.segment.root_dir={deploy_dataset}",
                                                          *TINY, *overrides])
    return make


@pytest.fixture(scope="session")
def checkpoint(make_deploy_cfg, tmp_path_factory) -> Path:
    """A random-weight model in our checkpoint format (what train writes)."""
    from segformer.model import build_segformer, save_model_checkpoint

    cfg = make_deploy_cfg(tmp_path_factory.mktemp("ckpt"))
    torch.manual_seed(0)
    model = build_segformer(cfg.model, NUM_CLASSES, load_pretrained=False)
    path = tmp_path_factory.mktemp("ckpt") / "model.pth"
    save_model_checkpoint(path, model, {"backbone": cfg.model.backbone.type, "num_classes": NUM_CLASSES})
    return path


@pytest.fixture(scope="session")
def exported(make_deploy_cfg, checkpoint, tmp_path_factory):
    """(config, ExportResult) of the export action with a dynamic batch."""
    from segformer.actions import export

    results = tmp_path_factory.mktemp("export_results")
    cfg = make_deploy_cfg(results, f"export.checkpoint={checkpoint}")
    return cfg, export.run(cfg, quiet=True)
