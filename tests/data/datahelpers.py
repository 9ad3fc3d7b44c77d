"""Helpers for the data tests (imported as ``datahelpers``; fixtures live in conftest.py): tiny on-disk datasets and TAO-shaped config namespaces."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from PIL import Image

# TAO's dataset.segment defaults (spec_template_train.yaml), as plain data.
TAO_SEGMENT_DEFAULTS: dict[str, Any] = {
    "root_dir": "???",
    "dataset": "SFDataset",
    "num_classes": 2,
    "img_size": 256,
    "batch_size": 8,
    "workers": 1,
    "shuffle": True,
    "train_split": "train",
    "validation_split": "val",
    "test_split": "val",
    "predict_split": "test",
    "augmentation": {
        "random_flip": {"vflip_probability": 0.5, "hflip_probability": 0.5, "enable": True},
        "random_rotate": {"rotate_probability": 0.5, "angle_list": [90, 180, 270], "enable": True},
        "random_color": {"brightness": 0.3, "contrast": 0.3, "saturation": 0.3, "hue": 0.3, "enable": True,
                         "color_probability": 0.5},
        "with_scale_random_crop": {"scale_range": [1, 1.2], "enable": True},
        "with_random_blur": True,
        "with_random_crop": True,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
    },
    "label_transform": "norm",
    "palette": [
        {"label_id": 0, "mapping_class": "foreground", "rgb": [0, 0, 0], "seg_class": "foreground"},
        {"label_id": 1, "mapping_class": "background", "rgb": [1, 1, 1], "seg_class": "background"},
    ],
    "quant_calibration_dataset": {"images_dir": ""},
}

COLOR_PALETTE = [
    {"seg_class": "sky", "mapping_class": "sky", "label_id": 0, "rgb": [0, 0, 255]},
    {"seg_class": "grass", "mapping_class": "grass", "label_id": 1, "rgb": [0, 255, 0]},
    {"seg_class": "void", "mapping_class": "void", "label_id": 255, "rgb": [255, 255, 255]},
]


def namespace(value: Any) -> Any:
    """dicts -> nested SimpleNamespace (attribute access like the config dataclasses); lists kept."""
    if isinstance(value, dict):
        return SimpleNamespace(**{k: namespace(v) for k, v in value.items()})
    if isinstance(value, list):
        return [namespace(v) for v in value]
    return value


def merge(base: dict, updates: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def segment_cfg(**updates: Any) -> SimpleNamespace:
    """A ``cfg.dataset.segment`` stand-in: TAO defaults with ``updates`` merged in."""
    return namespace(merge(TAO_SEGMENT_DEFAULTS, updates))


def write_image(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def color_mask(ids: np.ndarray, palette: list[dict] = COLOR_PALETTE) -> np.ndarray:
    """Class ids (255 = ignore) -> RGB mask using a label_transform None colour palette."""
    out = np.zeros((*ids.shape, 3), dtype=np.uint8)
    for entry in palette:
        out[ids == entry["label_id"]] = entry["rgb"]
    return out


def random_ids(rng: np.random.Generator, size: int = 32, num_classes: int = 2, block: int = 8) -> np.ndarray:
    """Blocky class-id map (blocks keep interior pixels exact under resampling)."""
    coarse = rng.integers(0, num_classes, size=(size // block, size // block))
    return np.kron(coarse, np.ones((block, block), dtype=np.int64)).astype(np.uint8)


def make_color_dataset(root: Path, splits: dict[str, int], size: int = 32, seed: int = 0) -> Path:
    """images/<split>/<stem>.png + masks/<split>/<stem>.png with COLOR_PALETTE masks.

    Image pixels encode the class (class c -> value 60 + 120 * c in every channel), so a
    transform that misaligns image and mask is visible.
    """
    rng = np.random.default_rng(seed)
    for split, count in splits.items():
        for i in range(count):
            ids = random_ids(rng, size)
            image = np.repeat((60 + 120 * ids)[..., None], 3, axis=2).astype(np.uint8)
            write_image(root / "images" / split / f"img{i}.png", image)
            write_image(root / "masks" / split / f"img{i}.png", color_mask(ids))
    return root
