"""build_datamodule / build_data: TAO config keys -> loaders with the contract's batch format;
calibration batches; reading data without Lightning."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from segformer.data.datamodule import SegDataModule, build_datamodule
from segformer.data.segdata import iter_calibration_batches
from segformer.errors import DataError

from datahelpers import COLOR_PALETTE, segment_cfg, write_image


def cfg_for(root, **updates):
    base = dict(root_dir=str(root), img_size=16, batch_size=4, workers=0, label_transform=None,
                palette=COLOR_PALETTE, test_split="test", predict_split="test")
    return segment_cfg(**{**base, **updates})


def test_batches_follow_the_contract(color_dataset):
    dm = build_datamodule(cfg_for(color_dataset), seed=3)
    dm.setup("fit")
    assert set(dm.reports) == {"train", "val"} and dm.class_names == ["sky", "grass"]
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 16, 16) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (4, 16, 16) and batch["mask"].dtype == torch.int64
    assert set(batch["mask"].unique().tolist()) <= {0, 1, 255}
    assert len(batch["name"]) == 4 and isinstance(batch["name"][0], str)
    assert batch["orig_size"].tolist() == [[32, 32]] * 4
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape == (2, 3, 16, 16) and val["mask"].shape == (2, 16, 16)
    dm.setup("predict")
    predict = next(iter(dm.predict_dataloader()))
    assert "mask" not in predict and predict["image"].shape == (2, 3, 16, 16)


def test_augmentation_flags_and_overrides_are_translated(color_dataset):
    dm = build_datamodule(cfg_for(color_dataset, augmentation={"random_color": {"enable": False},
                                                                "random_flip": {"hflip_probability": 0.25}}),
                          seed=0, train_batch_size=2, eval_batch_size=1)
    aug = dm.augmentation
    assert aug.color_probability == 0.0 and aug.hflip_probability == 0.25 and aug.vflip_probability == 0.5
    assert aug.scale_range == (1.0, 1.2) and aug.random_crop and aug.random_blur
    assert aug.angle_list == (90.0, 180.0, 270.0)
    assert dm.batch_size == 2 and dm.eval_batch_size == 1


def test_workers_persist_and_shuffle_is_honoured(color_dataset):
    dm = build_datamodule(cfg_for(color_dataset, workers=1, shuffle=False), seed=0)
    loader = dm.train_dataloader()
    assert loader.num_workers == 1 and loader.persistent_workers
    assert [i for _, i in loader.sampler] == list(range(6))
    shuffled = build_datamodule(cfg_for(color_dataset, shuffle=True), seed=0).train_dataloader()
    assert sorted(i for _, i in shuffled.sampler) == list(range(6))


def test_config_errors_are_raised_before_training(color_dataset):
    with pytest.raises(DataError, match="num_classes is 3"):
        build_datamodule(cfg_for(color_dataset, num_classes=3), seed=0)
    with pytest.raises(DataError, match="dataset.segment.dataset must be one of"):
        build_datamodule(cfg_for(color_dataset, dataset="CustomDataset"), seed=0)
    with pytest.raises(DataError, match="root_dir is not set"):
        build_datamodule(segment_cfg(), seed=0)
    # a mask colour outside the palette stops setup, naming the file
    write_image(color_dataset / "masks/val/img0.png", np.full((32, 32, 3), 7, np.uint8))
    dm = build_datamodule(cfg_for(color_dataset), seed=0)
    with pytest.raises(DataError, match=r"masks/val/img0.png.*rgb \(7, 7, 7\) at row 0, col 0 \(1024 pixels\)"):
        dm.setup("fit")


def test_explicit_constructor_without_config(color_dataset):
    dm = SegDataModule(root_dir=color_dataset, num_classes=2, img_size=8, palette=COLOR_PALETTE,
                       label_transform="None", batch_size=2, workers=0, check_data=False,
                       test_split="test", full_resolution_masks=True)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert batch["image"].shape == (2, 3, 8, 8) and batch["mask"].shape == (2, 32, 32)


def test_calibration_batches(color_dataset):
    batches = list(iter_calibration_batches(color_dataset / "images/train", 16, (0.5,) * 3, (0.5,) * 3,
                                            batch_size=4, max_batches=None))
    assert [b.shape for b in batches] == [(4, 3, 16, 16), (2, 3, 16, 16)]
    limited = list(iter_calibration_batches(color_dataset / "images/train", 16, (0.5,) * 3, (0.5,) * 3, 2, 1))
    assert len(limited) == 1 and limited[0].shape == (2, 3, 16, 16)
    with pytest.raises(DataError, match="does not exist"):
        next(iter_calibration_batches(color_dataset / "nope", 16, (0.5,) * 3, (0.5,) * 3, 2, 1))
    # a file too large to read (PIL's decompression-bomb guard) was a traceback here, one line in train
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 100  # 32x32 images are "too large" below 200 pixels
    try:
        with pytest.raises(DataError, match=r"calibration image .*img0.png is too large to read"):
            next(iter_calibration_batches(color_dataset / "images/train", 16, (0.5,) * 3, (0.5,) * 3, 2, 1))
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def test_reading_data_does_not_import_lightning(color_dataset):
    """Evaluation, inference, export, quantization and the search's report read data through
    SegData, so a process doing what they do never imports Lightning (about 5 s a process, paid
    by every promotion step and `segformer evaluate`); training gets the same data as Lightning's
    DataModule."""
    from lightning.pytorch import LightningDataModule

    from segformer.data.segdata import SegData

    training = build_datamodule(cfg_for(color_dataset), seed=0)
    assert isinstance(training, LightningDataModule) and isinstance(training, SegData)
    repo = Path(__file__).resolve().parents[2]
    code = (
        "import sys\n"
        f"sys.path[:0] = [{str(repo)!r}, {str(repo / 'tests' / 'data')!r}]\n"
        "import automl.report, segformer.actions.evaluate, segformer.actions.export, segformer.actions.inference\n"
        "import segformer.actions.quantize\n"
        "from datahelpers import COLOR_PALETTE, segment_cfg\n"
        "from segformer.data import build_data, iter_calibration_batches\n"
        f"cfg = segment_cfg(root_dir={str(color_dataset)!r}, img_size=16, batch_size=4, workers=0, label_transform=None,\n"
        "                  palette=COLOR_PALETTE, test_split='test', predict_split='test')\n"
        "data = build_data(cfg, seed=0)\n"
        "data.setup('test')\n"
        "batch = next(iter(data.test_dataloader()))\n"
        f"calibration = next(iter_calibration_batches({str(color_dataset / 'images/train')!r}, 16, (0.5,) * 3, (0.5,) * 3, 2))\n"
        "print(tuple(batch['image'].shape), tuple(calibration.shape), sorted(m for m in ('lightning', 'torchmetrics') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "(2, 3, 16, 16) (2, 3, 16, 16) []", out.stdout  # two test images; no Lightning
