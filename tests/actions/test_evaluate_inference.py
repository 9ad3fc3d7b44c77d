"""train -> evaluate -> inference on the tiny synthetic dataset."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segformer.actions import evaluate, inference
from segformer.config import apply_overrides
from segformer.errors import SegformerError


def _eval_cfg(cfg, tmp_path, *overrides):
    checkpoint = cfg.results_dir + "/train/segformer_model_latest.pth"
    return apply_overrides(cfg, [f"evaluate.checkpoint={checkpoint}", f"inference.checkpoint={checkpoint}",
                                 f"evaluate.results_dir={tmp_path / 'evaluate'}",
                                 f"inference.results_dir={tmp_path / 'inference'}", *overrides])


def test_evaluate_writes_tables_json_and_figures(trained, tmp_path, capsys):
    cfg, _ = trained
    result = evaluate.run(_eval_cfg(cfg, tmp_path, "evaluate.vis_after_n_batches=1"))
    printed = capsys.readouterr().out
    assert "| Class" in printed and "| IoU" in printed and "| Scope  | mIoU" in printed and "| global |" in printed
    report = json.loads(result.results_file.read_text())
    size = cfg.dataset.segment.img_size
    assert f"{Path(report['model']).name} on the 'test' split (4 images, masks scored at {size} px):" in printed
    assert report["miou"] == pytest.approx(result.miou) and 0.0 <= report["miou"] <= 1.0
    assert [c["class"] for c in report["per_class"]] == ["background", "red", "green"]
    assert np.array(report["confusion_matrix"]).shape == (3, 3)
    assert f"{100 * result.miou:.2f}" in printed
    assert (result.results_dir / "confusion_matrix.png").stat().st_size > 0
    assert len(list((result.results_dir / "vis").glob("*.png"))) == 4  # 4 test images, every batch


def test_evaluate_full_resolution_and_lightning_or_own_checkpoint(trained, tmp_path):
    cfg, result = trained
    from segformer.model import build_segformer, load_model_weights, save_model_checkpoint, load_into

    state, meta = load_model_weights(result.last_checkpoint)
    model = build_segformer(cfg.model, 3, load_pretrained=False)
    load_into(model, state, strict=True)
    own = save_model_checkpoint(tmp_path / "ours.pth", model, meta)
    scores = [evaluate.run(_eval_cfg(cfg, tmp_path / name, f"evaluate.checkpoint={path}"), quiet=True).miou
              for name, path in (("lightning", result.last_checkpoint), ("ours", own))]
    assert scores[0] == pytest.approx(scores[1])
    full = evaluate.run(_eval_cfg(cfg, tmp_path / "full", "evaluate.full_resolution=true"), quiet=True)
    assert 0.0 <= full.miou <= 1.0 and not math.isnan(full.miou)


def test_a_model_run_at_another_size_than_it_was_trained_at_is_said(trained, tmp_path, caplog):
    """Evaluate and inference at another img_size than the checkpoint's ran without a word, and scored
    otherwise (0.92 at 256 px for a model of 0.84 at its own 64 px)."""
    cfg, _ = trained
    size = cfg.dataset.segment.img_size
    with caplog.at_level("WARNING", logger="segformer.engine.predictor"):
        evaluate.run(_eval_cfg(cfg, tmp_path / "same"), quiet=True)
        assert not [r for r in caplog.records if "was trained at" in r.getMessage()]
        evaluate.run(_eval_cfg(cfg, tmp_path / "other", f"dataset.segment.img_size={2 * size}"), quiet=True)
    said = [r.getMessage() for r in caplog.records if "was trained at" in r.getMessage()]
    assert said == [f"segformer_model_latest.pth was trained at {size}x{size} but dataset.segment.img_size is {2 * size}: "
                    f"images are resized to that for it, so its scores are not those of the model at its own size; set "
                    f"dataset.segment.img_size={size} to run it as trained"], said


def test_evaluate_needs_a_checkpoint(trained, tmp_path):
    cfg, _ = trained
    bad = _eval_cfg(cfg, tmp_path, f"evaluate.checkpoint={tmp_path / 'missing.pth'}")
    with pytest.raises(SegformerError, match="does not exist"):
        evaluate.run(bad, quiet=True)


def test_evaluate_refuses_wrong_num_classes(trained, tmp_path, dataset_copy):
    cfg, _ = trained
    from segformer.engine.predictor import load_predictor

    bad = _eval_cfg(cfg, tmp_path)
    bad = replace(bad, dataset=replace(bad.dataset, segment=replace(bad.dataset.segment, num_classes=4)))
    with pytest.raises(SegformerError, match="trained for 3 classes"):
        load_predictor(bad, "evaluate")


@pytest.mark.parametrize("sliding", [False, True])
def test_inference_writes_ids_and_overlays_at_original_size(trained, tmp_path, dataset_copy, sliding):
    cfg, _ = trained
    # one image much larger than img_size (32): resized, or covered by overlapping 32 px windows
    Image.open(dataset_copy / "images" / "test" / "test_00000.jpg").resize((80, 72)).save(
        dataset_copy / "images" / "test" / "big.png")
    overrides = [f"dataset.segment.root_dir={dataset_copy}", f"inference.sliding_window={str(sliding).lower()}"]
    result = inference.run(_eval_cfg(cfg, tmp_path, *overrides), quiet=True)
    assert result.num_images == 5
    sizes = {f"test_{i:05d}": (32, 32) for i in range(4)} | {"big": (80, 72)}
    for stem, size in sizes.items():
        ids = Image.open(result.ids_dir / f"{stem}.png")
        assert ids.mode == "L" and ids.size == size
        assert set(np.unique(np.array(ids))) <= {0, 1, 2}
        colour = Image.open(result.overlay_dir / f"{stem}.png")
        assert colour.mode == "RGB" and colour.size == size


def test_evaluate_overlays_are_at_each_images_size(trained, tmp_path, dataset_copy):
    """evaluate's vis/ overlays were the model's input, at img_size: a 80x72 image got a 32x32 one."""
    cfg, _ = trained
    for folder in ("images", "masks"):
        path = next((dataset_copy / folder / "test").glob("test_00000.*"))
        Image.open(path).resize((80, 72), Image.NEAREST).save(path)
    result = evaluate.run(_eval_cfg(cfg, tmp_path, f"dataset.segment.root_dir={dataset_copy}",
                                    "evaluate.vis_after_n_batches=1"), quiet=True)
    sizes = {path.stem: Image.open(path).size for path in (result.results_dir / "vis").glob("*.png")}
    assert sizes == {f"test_{i:05d}": (80, 72) if i == 0 else (32, 32) for i in range(4)}


def test_sliding_window_covers_and_averages():
    import torch

    from segformer.engine.predictor import sliding_window_logits

    class Constant:
        num_classes, input_size = 2, None

        def __call__(self, images):
            return torch.ones(images.shape[0], 2, images.shape[2] // 4, images.shape[3] // 4)

    logits = sliding_window_logits(Constant(), torch.zeros(1, 3, 50, 37), (16, 16), overlap=0.5)
    assert logits.shape == (1, 2, 50, 37) and torch.allclose(logits, torch.ones_like(logits))
