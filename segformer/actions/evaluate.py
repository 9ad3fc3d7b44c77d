"""``segformer evaluate``: mIoU, mAcc, aAcc and per-class IoU/Acc of a model on the test split.

Prints TAO's two tables (percent, two decimals) and writes to ``results_dir/evaluate``:

- ``results.json``: structured scores as fractions in 0..1 (``null`` for undefined classes), the
  confusion matrix (rows: ground truth, columns: prediction) and what was evaluated;
- ``confusion_matrix.png``;
- ``vis/<stem>.png``: prediction overlays, each image at its own size, for every ``vis_after_n_batches``-th batch.

The model runs through the engine's :class:`~segformer.engine.predictor.Predictor`, so PyTorch,
ONNX Runtime, TensorRT and quantized models are decoded and scored by the same code. Labels come
from the dataset (the one ``MaskDecoder``). With ``evaluate.full_resolution`` predictions are
upsampled to each mask's original size before scoring; otherwise masks are resized (nearest) to
``img_size``, exactly as during validation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from segformer.config import ExperimentConfig, action_results_dir, require
from segformer.data import build_data, load_image, overlay
from segformer.fileio import atomic_save_png, atomic_write_json
from segformer.engine.metrics import ConfusionMatrix
from segformer.engine.predictor import Predictor, load_predictor, resize_logits, run_predictor
from segformer.engine.report import format_tables, save_confusion_matrix
from segformer.model import check_input_size
from segformer.parents import resolve_parents
from segformer.remote import as_given
from segformer.text import count

log = logging.getLogger(__name__)

RESULTS_NAME = "results.json"
CONFUSION_NAME = "confusion_matrix.png"


@dataclass(frozen=True)
class EvaluateResult:
    """Scores in 0..1; ``per_class`` holds dicts with class_id, class, iou, acc (NaN if undefined)."""

    miou: float
    macc: float
    aacc: float
    per_class: tuple[dict, ...]
    results_file: Path
    results_dir: Path


def run(cfg: ExperimentConfig, *, quiet: bool = False) -> EvaluateResult:
    cfg = resolve_parents(cfg, "evaluate", quiet=quiet)  # a results folder as checkpoint/trt_engine: its file
    options = cfg.evaluate
    require(cfg, "evaluate.checkpoint", "evaluate.trt_engine")
    check_input_size(cfg.model, cfg.dataset.segment.img_size)
    results_dir = action_results_dir(cfg, "evaluate")
    full_resolution = bool(options.full_resolution)
    data = build_data(cfg.dataset.segment, seed=max(cfg.train.seed, 0),
                      eval_batch_size=int(options.batch_size), full_resolution_masks=full_resolution)
    data.setup("test")  # reads and checks every file of the split first
    predictor = load_predictor(cfg, "evaluate")
    loader = data.test_dataloader()
    if full_resolution:  # masks keep their file sizes, which may differ: batch them as a list
        loader = DataLoader(data.datasets["test"], batch_size=int(options.batch_size),
                            num_workers=data.workers, collate_fn=_collate_mask_list)

    align_corners = bool(cfg.model.decode_head.align_corners)
    confusion = ConfusionMatrix(data.num_classes)
    vis_every = max(1, int(options.vis_after_n_batches))
    num_images = 0
    for batch_idx, batch in enumerate(_progress(loader, quiet)):
        predictions = _predict_batch(predictor, batch["image"], batch["mask"], align_corners)
        for prediction, mask in zip(predictions, batch["mask"]):
            confusion.update(prediction, mask)
        num_images += len(predictions)
        if batch_idx % vis_every == 0:
            _save_overlays(results_dir / "vis", batch, predictions, data)

    scores = confusion.compute()
    names = data.class_names
    tables = format_tables(scores, names)
    if not quiet:  # which model, which images and at which size: the table alone said none of it
        scale = "each image's own size" if full_resolution else f"{data.score_size or data.img_size} px"
        print(f"{Path(str(options.trt_engine or options.checkpoint)).name} on the {data.splits['test']!r} split "
              f"({count(num_images, 'image')}, masks scored at {scale}):\n{tables}")
    log.info("evaluation results:\n%s", tables)
    report = {
        "scale": "fraction (0..1); TAO prints percent",
        **scores.as_dict(names),
        "num_images": num_images,
        "split": data.splits["test"],
        "full_resolution": full_resolution,
        "model": as_given(str(options.trt_engine or options.checkpoint)),  # an s3:// model: its URL, not the cache's copy
        "runtime": type(predictor).__name__,
        "confusion_matrix": confusion.matrix.tolist(),
    }
    results_file = atomic_write_json(results_dir / RESULTS_NAME, report)
    save_confusion_matrix(confusion.matrix, names, results_dir / CONFUSION_NAME)
    return EvaluateResult(scores.miou, scores.macc, scores.aacc, tuple(scores.as_dict(names)["per_class"]),
                          results_file, results_dir)


def _predict_batch(predictor: Predictor, images: torch.Tensor, masks: Any, align_corners: bool) -> list[torch.Tensor]:
    """Class-id maps at each mask's size (one forward pass per batch)."""
    logits = run_predictor(predictor, images)
    if isinstance(masks, torch.Tensor):
        return list(resize_logits(logits, masks.shape[-2:], align_corners).argmax(1).cpu())
    return [resize_logits(logits[i:i + 1], mask.shape[-2:], align_corners)[0].argmax(0).cpu()
            for i, mask in enumerate(masks)]


def _collate_mask_list(items: list[dict]) -> dict:
    return {
        "image": torch.stack([item["image"] for item in items]),
        "mask": [item["mask"] for item in items],
        "name": [item["name"] for item in items],
        "orig_size": torch.stack([item["orig_size"] for item in items]),
    }


def _save_overlays(folder: Path, batch: dict, predictions: list[torch.Tensor], data: Any) -> None:
    """Each image at its own size with the prediction over it (as inference's mask_tao): the model's
    input, squeezed to img_size, made a 4000x3000 photo a 512 px square."""
    samples = data.datasets["test"].by_name
    for prediction, name in zip(predictions, batch["name"]):
        image = load_image(samples[name].image)
        atomic_save_png(folder / f"{name}.png", overlay(image, prediction.numpy().astype(np.int64), data.decoder))


def _progress(loader: Any, quiet: bool) -> Any:
    if quiet:
        return loader
    from segformer.heartbeat import progress

    return progress(loader, "evaluate", "batch")
