"""build_datamodule on real ExperimentConfig objects from segformer.config.load_config."""

from __future__ import annotations

from pathlib import Path

from segformer.config import load_config
from segformer.data.datamodule import build_datamodule
from segformer.data.synth import generate

FIXTURES = Path(__file__).parents[1] / "fixtures/tao_reference"


def test_synth_spec_loads_and_trains_batches(tmp_path):
    root = generate(tmp_path / "synth", num_classes=3, size=32, train=4, val=2, test=2, seed=1)
    cfg = load_config(root / "spec.yaml", [f"results_dir={tmp_path / 'results'}"])
    dm = build_datamodule(cfg.dataset.segment, cfg.train.seed)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["mask"].shape == (4, 32, 32)
    assert dm.class_names == ["background", "red", "green"]


def test_tao_documentation_spec_and_defaults_translate(tmp_path):
    cfg = load_config(FIXTURES / "tao_doc_example_spec.yaml", [f"dataset.segment.root_dir={tmp_path}"])
    dm = build_datamodule(cfg.dataset.segment, cfg.train.seed)
    assert dm.num_classes == 6 and dm.class_names[0] == "urban"
    assert dm.augmentation.color_probability == 0.0  # random_color.enable: False in the docs example
    defaults = load_config(None, [f"dataset.segment.root_dir={tmp_path}"])
    dm = build_datamodule(defaults.dataset.segment, defaults.train.seed)
    assert dm.decoder.label_transform == "norm" and dm.decoder.is_gray and dm.img_size == 256
