"""``segformer inference``: segment every image of ``dataset.segment.predict_split``.

Writes to ``results_dir/inference``:

- ``vis_tao/<stem>.png``: class ids as a single-channel uint8 PNG at the image's original size.
  The ids are the palette's ``label_id`` values (training ids are the label ids of the palette's
  classes, see ``segformer.data.palette``);
- ``mask_tao/<stem>.png``: the prediction in palette colours over the image (every
  ``vis_after_n_batches``-th batch; the default 1 means every image).

Images are resized to ``img_size`` and the logits resized back to the original size. With
``inference.sliding_window`` an image with a side longer than ``img_size`` is instead normalized
at full resolution and covered by ``img_size`` windows overlapping by ``window_overlap``; the
logits of overlapping windows are averaged. All runtimes go through the same
:class:`~segformer.engine.predictor.Predictor` path, and the masks come from
:func:`~segformer.engine.predictor.class_ids`, which the MLflow model of a promoted champion
(:mod:`segformer.deploy.pyfunc`) also uses.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segformer.config import ExperimentConfig, action_results_dir, require
from segformer.data import build_data, load_image, overlay
from segformer.fileio import atomic_save_png
from segformer.engine.predictor import class_ids, load_predictor, run_predictor
from segformer.model import check_input_size
from segformer.parents import resolve_parents

log = logging.getLogger(__name__)

IDS_DIR = "vis_tao"
OVERLAY_DIR = "mask_tao"


@dataclass(frozen=True)
class InferenceResult:
    results_dir: Path
    num_images: int
    ids_dir: Path  # vis_tao
    overlay_dir: Path  # mask_tao


def run(cfg: ExperimentConfig, *, quiet: bool = False) -> InferenceResult:
    cfg = resolve_parents(cfg, "inference", quiet=quiet)  # a results folder as checkpoint/trt_engine: its file
    options = cfg.inference
    require(cfg, "inference.checkpoint", "inference.trt_engine")
    check_input_size(cfg.model, cfg.dataset.segment.img_size)
    results_dir = action_results_dir(cfg, "inference")
    data = build_data(cfg.dataset.segment, seed=max(cfg.train.seed, 0),
                      eval_batch_size=int(options.batch_size), check_data=False)
    data.setup("predict")
    samples = data.datasets["predict"].by_name
    predictor = load_predictor(cfg, "inference")
    align_corners = bool(cfg.model.decode_head.align_corners)
    vis_every = max(1, int(options.vis_after_n_batches))

    ids_dir, overlay_dir = results_dir / IDS_DIR, results_dir / OVERLAY_DIR
    count = 0
    loader = data.predict_dataloader()
    for batch_idx, batch in enumerate(_progress(loader, quiet)):
        logits = run_predictor(predictor, batch["image"])
        for i, name in enumerate(batch["name"]):
            image = load_image(samples[name].image)
            ids = class_ids(predictor, image, logits[i:i + 1], img_size=data.img_size, mean=data.mean,
                            std=data.std, align_corners=align_corners, sliding_window=bool(options.sliding_window),
                            window_overlap=float(options.window_overlap), batch_size=int(options.batch_size))
            atomic_save_png(ids_dir / f"{name}.png", ids)
            if batch_idx % vis_every == 0:
                atomic_save_png(overlay_dir / f"{name}.png", overlay(image, ids.astype(np.int64), data.decoder))
            count += 1
    if not quiet:
        print(f"inference: {count} image(s) -> {ids_dir} (class ids), {overlay_dir} (overlays)")
    return InferenceResult(results_dir, count, ids_dir, overlay_dir)


def _progress(loader: Any, quiet: bool) -> Any:
    if quiet:
        return loader
    from segformer.heartbeat import progress

    return progress(loader, "inference", "batch")
