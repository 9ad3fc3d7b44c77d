"""Inputs that look odd but are valid: they must train and evaluate, not fail.

Grayscale, RGBA and palette (P) images are converted to RGB; 16-bit and 8-bit gray masks holding
class ids are read as ids (a colour palette reads single-channel masks as label_ids, TAO's rule).
"""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from relhelpers import TINY, run_inprocess


def test_gray_rgba_palette_images_and_class_id_masks_train_and_evaluate(data_copy, tmp_path, capsys):
    images, masks = data_copy / "images", data_copy / "masks"
    rgb = Image.open(images / "train/train_00000.jpg")
    rgb.convert("L").save(images / "train/train_00000.jpg")  # grayscale JPEG
    (images / "train/train_00001.jpg").unlink()
    rgb.convert("RGBA").save(images / "train/train_00001.png")  # RGBA PNG (alpha dropped)
    (images / "val/val_00000.jpg").unlink()
    Image.open(data_copy / "images/val/val_00001.jpg").convert("P").save(images / "val/val_00000.png")

    # colour mask -> class ids; saved as 16-bit and as indexed-P single-channel masks
    lut = {(0, 0, 0): 0, (230, 25, 75): 1, (60, 180, 75): 2, (255, 255, 255): 255}
    def ids_of(path):
        colour = np.array(Image.open(path).convert("RGB"))
        out = np.zeros(colour.shape[:2], np.uint16)
        for value, idx in lut.items():
            out[(colour == value).all(-1)] = idx
        return out
    Image.fromarray(ids_of(masks / "train/train_00002.png")).save(masks / "train/train_00002.png")  # I;16
    # 8-bit single-channel class ids (an indexed P mask would be read by its colours: documented)
    Image.fromarray(ids_of(masks / "val/val_00002.png").astype(np.uint8), mode="L").save(masks / "val/val_00002.png")
    assert Image.open(masks / "train/train_00002.png").mode.startswith("I")

    results = tmp_path / "results"
    common = ["-e", str(data_copy / "spec.yaml"), f"results_dir={results}", f"dataset.segment.root_dir={data_copy}", *TINY]
    train = run_inprocess(["train", *common], capsys)
    assert train.code == 0, train.stderr[-2000:]
    assert (results / "train/segformer_model_latest.pth").is_file()
    evaluate = run_inprocess(["evaluate", *common, "dataset.segment.test_split=val"], capsys)
    assert evaluate.code == 0, evaluate.stderr[-2000:]
    report = json.loads((results / "evaluate/results.json").read_text())
    assert report["num_images"] == 4 and 0.0 <= report["miou"] <= 1.0


def test_export_at_another_size_than_trained_warns(dataset, checkpoint, tmp_path, caplog):
    """SegFormer exports at any size, but the accuracy evaluate measured was at the trained size: say so.
    (In this process: three exports as commands took 45 s of CI; a command's warnings reach stderr
    as tested in test_cli.py.)"""
    from segformer.actions import export
    from segformer.config import load_config

    def run(size: int) -> str:
        caplog.clear()
        export.run(load_config(dataset / "spec.yaml", [f"results_dir={tmp_path / str(size)}", *TINY,
                                                       f"export.checkpoint={checkpoint}", f"export.input_height={size}",
                                                       f"export.input_width={size}", "export.opset_version=16"]),
                   quiet=True)  # opset 16: the TorchScript exporter, seconds faster than torch.export
        return caplog.text

    said = run(64)
    assert "are 64x64 but" in said and "was trained at 32x32" in said, said
    assert "was trained at" not in run(32)
    # export's default size (a spec without one; this test's spec has one, so it is given): named as the
    # default, with the settings for the trained size
    said = run(256)
    assert "are 256x256 (export's default) but" in said and "export.input_height=32 export.input_width=32" in said, said


def test_enum_values_in_another_case_are_read_as_tao_reads_them(dataset):
    """NVIDIA's specs write data_type: FP32; TAO compares options case-insensitively."""
    from relhelpers import run_subprocess

    outcome = run_subprocess("segformer", ["validate", "-e", str(dataset / "spec.yaml"), "results_dir=/tmp/unused",
                                           "gen_trt_engine.tensorrt.data_type=FP32", "train.optim.optim=AdamW"])
    assert outcome.code == 0, outcome.stdout[-2000:] + outcome.stderr[-2000:]
    bad = run_subprocess("segformer", ["validate", "-e", str(dataset / "spec.yaml"), "results_dir=/tmp/unused",
                                       "gen_trt_engine.tensorrt.data_type=FP64"])
    assert bad.code != 0 and "fp32" in bad.stdout + bad.stderr
