"""``segformer data synth``: a small, learnable synthetic segmentation dataset plus a spec that trains it.

Each image shows 2-5 shapes (circles, rectangles, triangles, blobs) on a gray noisy background.
Every class has its own colour AND texture (flat, stripes, checker, dots), so a network can tell
classes apart locally, not only by outline; per-image brightness shifts and pixel noise keep it
from being trivial. Masks are RGB colour PNGs with a palette (``label_transform: None``, rgb in
0..255); a few shapes get a one-pixel outline of ignore pixels (white, ``label_id: 255``), as
annotation tools often leave. Layout is exactly TAO's (``images/<split>``, ``masks/<split>`` for
train, val and test). The same seed gives byte-identical files; image ``i`` of a split depends only
on (seed, split, i), so asking for more images keeps the existing ones.

Imports stay light (numpy, PIL, yaml): ``segformer data synth --help`` must not load torch.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from segformer.errors import DataError

# Mask colours (palette rgb) per class id; id 0 is the background.
MASK_COLORS: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0), (230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (245, 130, 48), (128, 128, 0), (0, 128, 128), (170, 110, 40),
)
IGNORE_COLOR = (255, 255, 255)
MAX_CLASSES = len(MASK_COLORS)
CLASS_NAMES = ("background", "red", "green", "blue", "yellow", "purple", "cyan", "magenta",
               "orange", "olive", "teal", "brown")
SPLITS = ("train", "val", "test")
_MARKER = ".segformer_synth"


def _textures(size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Four zero-mean brightness patterns in [-1, 1]: flat, stripes, checker, dots."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, size=3)
    stripes = np.sin(2 * np.pi * yy / 6.0 + phase[0])
    checker = np.where(((xx + phase[1]) // 4 + (yy + phase[2]) // 4) % 2 == 0, 1.0, -1.0)
    dots = np.where((np.mod(xx, 5) - 2) ** 2 + (np.mod(yy, 5) - 2) ** 2 <= 2, 1.0, -1.0)
    return [np.zeros_like(xx), stripes, checker.astype(np.float32), dots.astype(np.float32)]


def _shape_region(kind: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean (size, size) region of one random circle (0), rectangle (1), triangle (2) or blob (3)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    radius = rng.uniform(0.12, 0.25) * size
    cy, cx = rng.uniform(radius * 0.6, size - radius * 0.6, size=2)
    dy, dx = yy - cy, xx - cx
    if kind == 0:
        return dx**2 + dy**2 <= radius**2
    if kind == 1:
        theta = rng.uniform(0, np.pi)
        u, v = dx * np.cos(theta) + dy * np.sin(theta), -dx * np.sin(theta) + dy * np.cos(theta)
        half_w, half_h = rng.uniform(0.6, 1.0, size=2) * radius
        return (np.abs(u) <= half_w) & (np.abs(v) <= half_h)
    if kind == 2:
        angles = rng.uniform(0, 2 * np.pi) + np.array([0, 2 * np.pi / 3, 4 * np.pi / 3]) + rng.uniform(-0.3, 0.3, 3)
        vy, vx = cy + 1.2 * radius * np.sin(angles), cx + 1.2 * radius * np.cos(angles)
        signs = []
        for i in range(3):
            j = (i + 1) % 3
            signs.append((vx[j] - vx[i]) * (yy - vy[i]) - (vy[j] - vy[i]) * (xx - vx[i]))
        return (np.stack(signs) >= 0).all(0) | (np.stack(signs) <= 0).all(0)
    phi = np.arctan2(dy, dx)
    p = rng.uniform(0, 2 * np.pi, size=2)
    boundary = radius * (1 + 0.25 * np.sin(3 * phi + p[0]) + 0.12 * np.sin(5 * phi + p[1]))
    return np.sqrt(dx**2 + dy**2) <= boundary


def _outline(region: np.ndarray) -> np.ndarray:
    """Pixels of the region with a 4-neighbour outside it."""
    padded = np.pad(region, 1, constant_values=False)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return region & ~inner


def render_sample(num_classes: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One (image uint8 (S,S,3), class-id map uint8 (S,S) with 255 = ignore)."""
    classes = np.zeros((size, size), dtype=np.int64)
    labels = np.zeros((size, size), dtype=np.uint8)
    count = int(rng.integers(2, 6))
    order = rng.permutation(np.arange(1, num_classes))
    for n in range(count):
        cls = int(order[n]) if n < len(order) else int(rng.integers(1, num_classes))
        region = _shape_region(int(rng.integers(0, 4)), size, rng)
        classes[region] = cls
        labels[region] = cls
        if rng.random() < 0.3:
            labels[_outline(region)] = 255
    textures = _textures(size, rng)
    image = np.empty((size, size, 3), dtype=np.float32)
    background = 110 + 25 * np.asarray(rng.standard_normal((size // 8 + 1, size // 8 + 1)), dtype=np.float32)
    background = np.kron(background, np.ones((8, 8), dtype=np.float32))[:size, :size]
    image[:] = background[..., None]
    for cls in range(1, num_classes):
        where = classes == cls
        if where.any():
            colour = np.asarray(MASK_COLORS[cls], dtype=np.float32)
            shade = 1.0 + 0.25 * textures[(cls - 1) % 4][where]
            image[where] = np.clip(colour[None] * shade[:, None] + 40 * (shade[:, None] - 1), 0, 255)
    image += rng.uniform(-15, 15)  # brightness shift per image
    image += rng.normal(0, 8, size=image.shape).astype(np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), labels


def _curve(size: int, rng: np.random.Generator, width: float) -> np.ndarray:
    """A thin wavy line across the image (a vessel, a crack, a cell border), `width` pixels wide."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    theta = rng.uniform(0, np.pi)
    u, v = xx * np.cos(theta) + yy * np.sin(theta), -xx * np.sin(theta) + yy * np.cos(theta)
    offset = rng.uniform(-0.3, 0.7) * size
    amplitude, period, phase = rng.uniform(0.03, 0.12) * size, rng.uniform(0.4, 1.2) * size, rng.uniform(0, 2 * np.pi)
    return np.abs(v - offset - amplitude * np.sin(2 * np.pi * u / period + phase)) <= width / 2


def render_hard_sample(num_classes: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A hard sample: the classes differ in shape and faint texture, not in colour.

    Class 1: large blobs (common); class 2: thin wavy lines 1-2 px wide (thin structures); class 3:
    a few small discs (rare: class imbalance); further classes: rectangles. Everything is grey with a
    faint tint, low contrast, on a textured background with unlabelled look-alike distractors (dim
    lines and spots) and strong pixel noise.
    """
    labels = np.zeros((size, size), dtype=np.uint8)
    regions: list[tuple[int, np.ndarray]] = []
    for _ in range(int(rng.integers(1, 4))):
        regions.append((1, _shape_region(int(rng.choice([0, 3])), size, rng)))
    if num_classes > 2:
        for _ in range(int(rng.integers(1, 4))):
            regions.append((2, _curve(size, rng, rng.uniform(1.0, 2.2))))
    if num_classes > 3 and rng.random() < 0.7:
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
        for _ in range(int(rng.integers(1, 4))):
            radius = rng.uniform(0.025, 0.05) * size
            cy, cx = rng.uniform(radius, size - radius, size=2)
            regions.append((3, (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2))
    for cls in range(4, num_classes):
        if rng.random() < 0.5:
            regions.append((cls, _shape_region(1, size, rng)))
    textures = _textures(size, rng)
    low = Image.fromarray(12 * np.asarray(rng.standard_normal((size // 12 + 2, size // 12 + 2)), dtype=np.float32))
    image = 120 + np.asarray(low.resize((size, size), Image.BILINEAR), dtype=np.float32) + 5 * textures[3]
    for _ in range(int(rng.integers(1, 4))):  # distractors: unlabelled, half the contrast of the real thing
        image[_curve(size, rng, rng.uniform(1.0, 2.0))] -= 14
    shift = {1: 26.0, 2: -34.0, 3: 40.0}
    for cls, region in regions:
        labels[region] = cls
        image[region] += shift.get(cls, 16.0 + 4 * cls) + 8 * textures[cls % 4][region]
    tint = np.array([1.0, rng.uniform(0.93, 1.0), rng.uniform(0.86, 1.0)], dtype=np.float32)
    rgb = image[..., None] * tint[None, None] + rng.normal(0, 13, size=(size, size, 3)).astype(np.float32)
    return np.clip(np.rint(rgb + rng.uniform(-20, 20)), 0, 255).astype(np.uint8), labels


def palette(num_classes: int) -> list[dict]:
    """TAO palette entries (label_transform None, rgb 0..255) including the ignore colour."""
    entries = [{"seg_class": CLASS_NAMES[i], "mapping_class": CLASS_NAMES[i], "label_id": i,
                "rgb": list(MASK_COLORS[i])} for i in range(num_classes)]
    entries.append({"seg_class": "ignore", "mapping_class": "ignore", "label_id": 255, "rgb": list(IGNORE_COLOR)})
    return entries


def spec_for(root: Path, num_classes: int, size: int, seed: int, epochs: int = 40) -> dict:
    """A spec that trains as is with ``results_dir=...`` on the command line (TAO keys only)."""
    checkpoint = "${results_dir}/train/segformer_model_latest.pth"
    return {
        "model": {
            "backbone": {"type": "mit_b0"},
            "decode_head": {"in_channels": [32, 64, 160, 256], "decoder_params": {"embed_dim": 256}},
        },
        "dataset": {"segment": {
            "root_dir": str(root),
            "dataset": "SFDataset",
            "num_classes": num_classes,
            "img_size": size,
            "batch_size": 8,
            "workers": 0,
            "shuffle": True,
            "train_split": "train",
            "validation_split": "val",
            "test_split": "test",
            "predict_split": "test",
            "label_transform": "None",
            "palette": palette(num_classes),
            "quant_calibration_dataset": {"images_dir": str(root / "images" / "train")},
            "augmentation": {
                "random_flip": {"enable": True, "hflip_probability": 0.5, "vflip_probability": 0.5},
                "random_rotate": {"enable": True, "rotate_probability": 0.5, "angle_list": [90, 180, 270]},
                # colour is what tells the classes apart here: no colour jitter
                "random_color": {"enable": False, "brightness": 0.3, "contrast": 0.3, "saturation": 0.3,
                                 "hue": 0.3, "color_probability": 0.5},
                "with_scale_random_crop": {"enable": True, "scale_range": [1.0, 1.2]},
                "with_random_crop": False,
                "with_random_blur": False,
                "mean": [0.5, 0.5, 0.5],
                "std": [0.5, 0.5, 0.5],
            },
        }},
        "train": {
            "seed": seed,
            "num_epochs": epochs,
            "validation_interval": 1,
            "checkpoint_interval": epochs,
            "optim": {"optim": "adamw", "lr": 0.001, "policy": "linear", "weight_decay": 0.01},
        },
        "evaluate": {"checkpoint": checkpoint, "batch_size": 8},
        "inference": {"checkpoint": checkpoint, "batch_size": 8},
        "export": {"checkpoint": checkpoint, "onnx_file": "${results_dir}/export/segformer.onnx",
                   "input_width": size, "input_height": size},
        # the engine is built from what export writes, as in TAO's gen_trt_engine template
        "gen_trt_engine": {"onnx_file": "${results_dir}/export/segformer.onnx"},
        # int8 for ONNX Runtime on the CPU: needs only onnxruntime (TAO's default, torchao, is an extra)
        "quantize": {"backend": "onnxruntime", "mode": "static_ptq", "model_path": checkpoint},
    }


def generate(out_dir: str | Path, num_classes: int = 4, size: int = 64, train: int = 32, val: int = 8,
             test: int = 8, seed: int = 0, hard: bool = False, epochs: int = 40) -> Path:
    """Write the dataset and ``out_dir/spec.yaml``; returns ``out_dir`` (absolute).

    ``hard``: `render_hard_sample` (thin structures, a rare class, no colour cue) instead of the
    easy, colour-coded shapes.

    An existing ``out_dir`` must be empty or an earlier synth output (whose image and mask
    folders are replaced).
    """
    import yaml

    if not 2 <= num_classes <= MAX_CLASSES:
        raise DataError(f"--num-classes must be in 2..{MAX_CLASSES} (background included), got {num_classes}")
    if epochs < 1:
        raise DataError(f"--epochs must be >= 1, got {epochs}")
    if size < 32:  # the spec written with it trains at img_size = size, which must be >= 32 (the deepest stride)
        raise DataError(f"--size must be >= 32 pixels (its spec's dataset.segment.img_size), got {size}")
    counts = {"train": train, "val": val, "test": test}
    for split, n in counts.items():
        if n < 1:
            raise DataError(f"--{split} must be >= 1 image, got {n}")
    root = Path(out_dir).expanduser().resolve()
    if root.exists() and any(root.iterdir()) and not (root / _MARKER).exists():
        raise DataError(f"{root} exists and is not empty; choose a new or empty folder for the synthetic dataset")
    for sub in ("images", "masks"):
        shutil.rmtree(root / sub, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    (root / _MARKER).write_text("written by segformer data synth; safe to overwrite\n")

    colours = np.array(list(MASK_COLORS[:num_classes]) + [IGNORE_COLOR] * (256 - num_classes), dtype=np.uint8)
    colours[255] = IGNORE_COLOR
    for split_index, split in enumerate(SPLITS):
        image_dir, mask_dir = root / "images" / split, root / "masks" / split
        image_dir.mkdir(parents=True)
        mask_dir.mkdir(parents=True)
        for i in range(counts[split]):
            rng = np.random.default_rng([seed, split_index, i])
            image, labels = (render_hard_sample if hard else render_sample)(num_classes, size, rng)
            name = f"{split}_{i:05d}"
            Image.fromarray(image).save(image_dir / f"{name}.jpg", quality=95, subsampling=0)
            Image.fromarray(colours[labels]).save(mask_dir / f"{name}.png")

    header = (f"# Synthetic SegFormer dataset ({'hard: ' if hard else ''}{num_classes} classes, {size}x{size}, seed {seed}) written by\n"
              "# `segformer data synth`. Train it with:\n"
              f"#   segformer train -e {root / 'spec.yaml'} results_dir=/path/to/results\n")
    body = yaml.safe_dump(spec_for(root, num_classes, size, seed, epochs), sort_keys=False, default_flow_style=None)
    (root / "spec.yaml").write_text(header + body)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    """``segformer data synth --out DIR [...]``; returns the exit code."""
    parser = argparse.ArgumentParser(prog="segformer data", description="dataset tools")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    synth = commands.add_parser("synth", help="write a learnable synthetic dataset (TAO layout) and its spec.yaml",
                                description=__doc__.split("\n\n")[1] if __doc__ else None)
    synth.add_argument("--out", required=True, help="output folder (new, empty, or an earlier synth output)")
    synth.add_argument("--num-classes", type=int, default=4, help="classes including background (default 4)")
    synth.add_argument("--size", type=int, default=64, help="image side in pixels, also img_size (default 64)")
    synth.add_argument("--train", type=int, default=32, help="training images (default 32)")
    synth.add_argument("--val", type=int, default=8, help="validation images (default 8)")
    synth.add_argument("--test", type=int, default=8, help="test images, with masks (default 8)")
    synth.add_argument("--seed", type=int, default=0, help="random seed; same seed, same files (default 0)")
    synth.add_argument("--hard", action="store_true", help="thin structures, a rare class and no colour cue: a set "
                                                           "where hyperparameters matter (the demo's)")
    synth.add_argument("--epochs", type=int, default=40, help="train.num_epochs of the written spec (default 40)")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    from segformer.remote import is_url

    if is_url(args.out):  # (a local folder named "s3:" was written)
        parser.error(f"--out {args.out} is a URL: the dataset is written to a local folder (upload it afterwards)")
    root = generate(args.out, num_classes=args.num_classes, size=args.size, train=args.train, val=args.val,
                    test=args.test, seed=args.seed, hard=args.hard, epochs=args.epochs)
    print(f"wrote {args.train}/{args.val}/{args.test} train/val/test images and {root / 'spec.yaml'}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
