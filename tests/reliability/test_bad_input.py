"""Bad-input corpus: every case runs the real `segformer` command line and must fail with one
clear message (naming the file, key or value and the fix), a non-zero exit, no traceback and no
result files left behind.

The table ``CASES`` is the corpus: id, action, how to break the input, expected exit code and the
pieces the message must contain. Most cases run ``segformer.cli.main`` in-process (fast); those
marked ``subprocess`` run the installed console script in a fresh process.
"""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from relhelpers import TINY, assert_clean_failure, is_root, run_inprocess, run_subprocess


@dataclass
class Ctx:
    """What a case builder may use and change (a private copy of the dataset)."""

    data: Path
    results: Path
    tmp: Path
    request: pytest.FixtureRequest

    def checkpoint(self) -> Path:
        return self.request.getfixturevalue("checkpoint")

    def spec(self) -> list[str]:
        return ["-e", str(self.data / "spec.yaml"), f"results_dir={self.results}",
                f"dataset.segment.root_dir={self.data}", *TINY]


Build = Callable[[Ctx], "tuple[list[str], list[str]]"]  # -> (argv after the action, expected pieces)


@dataclass
class Case:
    id: str
    action: str
    build: Build
    code: int = 1
    subprocess: bool = False
    skip_if_root: str | None = None
    marker: bool = False  # the builder plants a pickle payload: assert its marker file never appears
    extra: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------ input makers
def png_bytes(width: int, height: int, payload: bytes = b"\x00") -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (8-bit RGB) with a tiny IDAT."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(payload)) + chunk(b"IEND", b"")


class CodeRunningPayload:
    """Unpickling this object would create ``self.path`` (proof that pickled code ran)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def evil_checkpoint(ctx: Ctx, name: str = "evil.pth") -> Path:
    path = ctx.tmp / name
    marker = ctx.tmp / "PWNED"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": CodeRunningPayload(marker)}, path)
    return path


def truncated_checkpoint(ctx: Ctx) -> Path:
    source = ctx.checkpoint().read_bytes()
    path = ctx.tmp / "truncated.pth"
    path.write_bytes(source[: len(source) // 2])
    return path


def edit_mask(path: Path, edit: Callable[[np.ndarray], np.ndarray]) -> None:
    array = np.array(Image.open(path).convert("RGB"))
    Image.fromarray(edit(array)).save(path)


def write_spec(ctx: Ctx, text: str) -> Path:
    path = ctx.tmp / "bad_spec.yaml"
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------ builders
def _paint(value):
    def edit(a):
        a = a.copy()
        a[3, 4] = value
        return a
    return edit


def b_unknown_key(c): return c.spec() + ["train.optim.lrr=0.1"], ["train.optim.lrr", "did you mean", "train.optim.lr"]
def b_wrong_type(c): return c.spec() + ["train.num_epochs=abc"], ["train.num_epochs", "integer", "abc"]
def b_out_of_bounds(c): return c.spec() + ["train.optim.lr=3"], ["train.optim.lr", "(0, 1]", "3"]
def b_unknown_backbone(c): return c.spec() + ["model.backbone.type=mit_b9"], ["model.backbone.type", "mit_b9", "mit_b0"]
def b_bad_enum(c): return c.spec() + ["train.optim.optim=lion"], ["train.optim.optim", "lion"]
def b_override_syntax(c): return c.spec() + ["train.num_epochs"], ["train.num_epochs", "key=value"]


def b_spec_missing(c):
    return ["-e", str(c.tmp / "nope.yaml")], ["nope.yaml"]


def b_spec_malformed(c):
    path = write_spec(c, "train:\n  num_epochs: [1, 2\n  seed: 3\n")
    return ["-e", str(path)], ["bad_spec.yaml"]


def b_spec_python_tag(c):
    marker = c.tmp / "PWNED"
    path = write_spec(c, f"train:\n  num_epochs: !!python/object/apply:os.system ['touch {marker}']\n")
    return ["-e", str(path), f"results_dir={c.results}"], ["bad_spec.yaml"]


def b_spec_not_mapping(c):
    path = write_spec(c, "- just\n- a list\n")
    return ["-e", str(path)], ["bad_spec.yaml"]


def b_spec_binary(c):
    path = c.tmp / "bad_spec.yaml"
    path.write_bytes(bytes(range(256)) * 4)
    return ["-e", str(path)], ["bad_spec.yaml", "not a text file", "UTF-8"]


def b_spec_utf16(c):
    """UTF-16 with a byte-order mark is YAML too (PyYAML detects it): read, not refused."""
    path = c.tmp / "bad_spec.yaml"
    path.write_text("train:\n  num_epochs: 1\n  optim:\n    lr: 7.0\n", encoding="utf-16")
    return ["-e", str(path), f"results_dir={c.results}"], ["train.optim.lr", "7"]  # the value was read


def b_spec_folder(c):
    folder = c.tmp / "spec_folder.yaml"
    folder.mkdir()
    return ["-e", str(folder)], ["spec_folder.yaml", "is a folder"]


def b_spec_url(c):  # was "spec file 's3:/bkt/spec.yaml' does not exist"
    return ["-e", "s3://bkt/spec.yaml"], ["'s3://bkt/spec.yaml'", "is a URL", "local file"]


def b_spec_duplicate_key(c):
    path = write_spec(c, "train:\n  num_epochs: 2\n  seed: 1\n  num_epochs: 3\n")
    return ["-e", str(path)], ["bad_spec.yaml", "'num_epochs'", "lines 2 and 4"]


def b_spec_recursive_alias(c):
    path = write_spec(c, "train:\n  optim:\n    lr_steps: &steps [1, *steps]\n")
    return ["-e", str(path)], ["bad_spec.yaml", "line 3", "recursive"]


def b_spec_duplicate_section(c):
    path = write_spec(c, "train:\n  num_epochs: 2\ndataset:\n  segment: {}\ntrain:\n  seed: 3\n")
    return ["-e", str(path)], ["bad_spec.yaml", "'train'", "lines 1 and 5"]


def b_old_tao_layout(c):
    path = write_spec(c, "train:\n  max_iters: 1000\n  exp_config:\n    manual_seed: 49\n  trainer:\n    sf_optim:\n"
                         "      lr: 0.00006\nmodel:\n  input_height: 512\n  input_width: 512\ndataset:\n"
                         "  data_root: /data\n  img_norm_cfg:\n    mean: [127.5, 127.5, 127.5]\n  train_dataset:\n"
                         "    img_dir: /data/images/train\n    ann_dir: /data/masks/train\n  batch_size: 4\n")
    return ["-e", str(path), f"results_dir={c.results}"], [
        "older TAO SegFormer layout", "train.max_iters -> train.num_epochs", "model.input_height -> dataset.segment.img_size",
        "dataset.img_norm_cfg.mean -> dataset.segment.augmentation.mean", "dataset.batch_size -> dataset.segment.batch_size"]


def b_resume_other_freeze(c):
    return c.spec() + [f"train.resume_training_checkpoint_path={c.checkpoint()}", "model.backbone.freeze_backbone=true"], \
        ["train.resume_training_checkpoint_path", "other parameters", "freeze_backbone"]


def b_nan_value(c): return c.spec() + ["train.optim.lr=.nan"], ["train.optim.lr", "nan", "not a finite number"]
def b_inf_value(c): return c.spec() + ["train.optim.weight_decay=.inf"], ["train.optim.weight_decay", "inf"]
def b_huge_int(c): return c.spec() + ["dataset.segment.batch_size=99999999999999999999"], ["dataset.segment.batch_size", "99999999999999999999", "64-bit"]
def b_section_reset(c): return c.spec() + ["train.optim="], ["train.optim", "whole section"]
def b_section_null(c): return c.spec() + ["train=null"], ["'train'", "whole section"]


def b_root_missing(c):
    return c.spec() + [f"dataset.segment.root_dir={c.tmp / 'nowhere'}"], ["nowhere/images/train", "does not exist", "root_dir"]


def b_root_unset(c): return c.spec() + ["dataset.segment.root_dir=???"], ["dataset.segment.root_dir"]


def b_split_missing(c):
    shutil.rmtree(c.data / "masks" / "val")
    return c.spec(), ["masks/val", "does not exist", "_split"]


def b_split_name(c): return c.spec() + ["dataset.segment.validation_split=valid"], ["images/valid", "does not exist"]


def b_image_without_mask(c):
    (c.data / "masks/train/train_00003.png").unlink()
    return c.spec(), ["train_00003.jpg", "without a mask", "pair by file stem"]


def b_jpeg_masks(c):
    """Masks saved as JPEG: named as lossy, not reported as images without a mask."""
    for mask in (c.data / "masks/train").glob("*.png"):
        Image.open(mask).convert("RGB").save(mask.with_suffix(".jpg"), quality=90)
        mask.unlink()
    return c.spec(), ["masks/train", "JPEG or WebP, not read as masks", "train_00000.jpg", "PNG"]


def b_palette_shared_label_id(c):
    spec = (c.data / "spec.yaml").read_text()
    assert "label_id: 2" in spec
    (c.data / "spec.yaml").write_text(spec.replace("label_id: 2", "label_id: 1"))
    return c.spec() + ["dataset.segment.num_classes=2"], ["'red'", "'green'", "share label_id 1", "mapping_class"]


def b_garbage_onnx(c):
    path = c.tmp / "model.onnx"
    path.write_bytes(os.urandom(3000))
    return c.spec() + [f"evaluate.checkpoint={path}"], ["model.onnx", "not a readable ONNX model", "segformer export"]


def b_engine_as_checkpoint(c):
    path = c.tmp / "model.engine"
    path.write_bytes(os.urandom(3000))
    return c.spec() + [f"evaluate.checkpoint={path}"], ["TensorRT", "tensorrt"]


def b_export_onnx_file_is_a_folder(c):
    (c.tmp / "model.onnx").mkdir()
    return c.spec() + [f"export.checkpoint={c.checkpoint()}", f"export.onnx_file={c.tmp / 'model.onnx'}"], \
        [f"cannot access {c.tmp / 'model.onnx'}: is a directory", "a folder is in the way of a file"]


def b_export_onnx_under_a_file(c):
    (c.tmp / "afile").write_text("x")
    return c.spec() + [f"export.checkpoint={c.checkpoint()}", f"export.onnx_file={c.tmp / 'afile' / 'm.onnx'}"], \
        [f"cannot access {c.tmp / 'afile'}", "a file is in the way of a folder"]


def b_quantize_calibration_folder_missing(c):
    return c.spec() + [f"quantize.model_path={c.checkpoint()}", "quantize.backend=onnxruntime",
                       f"dataset.segment.quant_calibration_dataset.images_dir={c.tmp / 'nocal'}"], \
        [f"calibration folder {c.tmp / 'nocal'} does not exist", "quant_calibration_dataset.images_dir"]


def b_eval_results_cannot_be_made(c):
    return c.spec() + [f"evaluate.checkpoint={c.checkpoint()}", "evaluate.results_dir=/proc/segformer_results"], \
        ["cannot access /proc/segformer_results", "does not exist and cannot be made there"]


def b_quantize_calibration_unreadable(c):
    folder = c.tmp / "calibration"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(os.urandom(500))
    return c.spec() + [f"quantize.model_path={c.checkpoint()}", "quantize.backend=onnxruntime", "quantize.mode=static_ptq",
                       f"dataset.segment.quant_calibration_dataset.images_dir={folder}"], \
        ["a.jpg", "dataset.segment.quant_calibration_dataset.images_dir"]


def b_mask_without_image(c):
    (c.data / "images/train/train_00004.jpg").unlink()
    return c.spec(), ["train_00004.png", "without an image"]


def b_corrupt_png(c):
    (c.data / "masks/train/train_00001.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    return c.spec(), ["train_00001.png", "cannot read mask", "replace or remove"]


def b_corrupt_jpeg(c):
    path = c.data / "images/train/train_00002.jpg"
    path.write_bytes(path.read_bytes()[:300])
    return c.spec(), ["train_00002.jpg", "cannot read image", "replace or remove"]


def b_mask_size(c):
    path = c.data / "masks/train/train_00000.png"
    Image.open(path).resize((16, 16), Image.NEAREST).save(path)
    return c.spec(), ["train_00000.png", "16x16", "32x32", "exactly its image's size"]


def b_unknown_colour(c):
    edit_mask(c.data / "masks/train/train_00005.png", _paint((1, 2, 3)))
    return c.spec(), ["train_00005.png", "rgb (1, 2, 3)", "row 3, col 4", "add a palette entry"]


def b_label_too_large(c):
    # single-channel mask of class ids; 7 >= num_classes (3) and is no palette label_id
    ids = np.zeros((32, 32), np.uint8)
    ids[5, 6] = 7
    Image.fromarray(ids, mode="L").save(c.data / "masks/val/val_00001.png")
    return c.spec(), ["val_00001.png", "7 at row 5, col 6", "label_id"]


def b_16bit_bad(c):
    ids = np.zeros((32, 32), np.uint16)
    ids[0, 0] = 1000
    Image.fromarray(ids).save(c.data / "masks/train/train_00006.png")
    return c.spec(), ["train_00006.png", "1000"]


def b_empty_split(c):
    for kind in ("images", "masks"):
        for path in (c.data / kind / "val").iterdir():
            path.unlink()
    return c.spec(), ["no images", "images/val"]


def b_bomb(c):
    (c.data / "images/train/train_00007.jpg").unlink()
    (c.data / "images/train/train_00007.png").write_bytes(png_bytes(100_000, 100_000))
    return c.spec(), ["train_00007.png", "too large", "10000000000 pixels", "resize"]


def b_symlink_file(c):
    outside = c.tmp / "outside.jpg"
    target = c.data / "images/train/train_00000.jpg"
    shutil.move(target, outside)
    target.symlink_to(outside)
    return c.spec(), ["train_00000.jpg", "outside the dataset root"]


def b_symlink_dir(c):
    outside = c.tmp / "outside_masks"
    shutil.move(c.data / "masks/val", outside)
    (c.data / "masks/val").symlink_to(outside, target_is_directory=True)
    return c.spec(), ["masks/val", "outside the dataset root"]


def b_duplicate_stem(c):
    shutil.copy(c.data / "images/train/train_00000.jpg", c.data / "images/train/train_00000.png")
    return c.spec(), ["train_00000", "share the stem", "rename or remove"]


def b_unreadable(c):
    (c.data / "masks/train/train_00002.png").chmod(0)
    return c.spec(), ["train_00002.png", "permission denied"]


def b_num_classes(c): return c.spec() + ["dataset.segment.num_classes=5"], ["num_classes is 5", "defines 3", "num_classes: 3"]


def b_nan_loss(c):
    # a near-zero std blows the normalized inputs up to ~1e30: the first loss is NaN, before any update,
    # so the message points at the inputs, not at the learning rate
    return c.spec() + ["dataset.segment.augmentation.std=[1e-30,1e-30,1e-30]"], \
        ["loss is nan on the first batch, before any update", "augmentation.mean/std"]


def b_eval_float_as_quantized(c):
    # best/experiment.yaml names the float best/model.pth; is_quantized=true on it was a ValueError traceback
    return c.spec() + [f"evaluate.checkpoint={c.checkpoint()}", "evaluate.is_quantized=true"], \
        ["is not a quantized model", "is_quantized=true"]


def b_in_index_out_of_range(c):
    return c.spec() + ["model.decode_head.in_index=[0,1,2,4]"], ["model.decode_head.in_index", "0..3", "[0, 1, 2, 4]"]


def b_empty_angle_list(c):
    return c.spec() + ["dataset.segment.augmentation.random_rotate.angle_list=[]"], ["random_rotate.angle_list", "empty"]


def b_export_old_opset(c):
    return c.spec() + [f"export.checkpoint={c.checkpoint()}", "export.opset_version=11"], ["export.opset_version", "14", "11"]


def b_export_other_channels(c):
    return c.spec() + [f"export.checkpoint={c.checkpoint()}", "export.input_channel=1"], \
        ["export.input_channel=1", "3-channel", "export.input_channel=3"]


def b_quantize_fp8_layer(c):
    return c.spec() + [f"quantize.model_path={c.checkpoint()}", "quantize.backend=onnxruntime", "quantize.mode=static_ptq",
                       "quantize.layers=[{module_name: 'decode_head*', weights: {dtype: fp8}}]"], \
        ["quantize.layers[0].weights.dtype", "fp8"]


def b_convert_missing(c):
    return ["--from", "hf", str(c.tmp / "nope.safetensors"), str(c.tmp / "out.pth")], ["SRC", "nope.safetensors", "does not exist"]


def b_resume_missing(c):
    return c.spec() + [f"train.resume_training_checkpoint_path={c.tmp / 'gone.pth'}"], \
        ["train.resume_training_checkpoint_path", "gone.pth", "does not exist"]


def b_resume_truncated(c):
    return c.spec() + [f"train.resume_training_checkpoint_path={truncated_checkpoint(c)}"], \
        ["truncated.pth", "cannot read checkpoint", "truncated"]


def b_resume_evil(c):
    return c.spec() + [f"train.resume_training_checkpoint_path={evil_checkpoint(c)}"], ["evil.pth", "refused", "weights_only", "io.open"]


def b_pretrained_evil(c):
    return c.spec() + [f"train.pretrained_model_path={evil_checkpoint(c)}"], ["evil.pth", "refused", "weights_only", "io.open"]


def b_results_under_file(c):
    c.results = c.data / "spec.yaml" / "sub"
    return c.spec(), ["spec.yaml/sub", "not a directory", "results_dir"]


def b_results_readonly(c):
    c.results.mkdir()
    c.results.chmod(0o555)
    return c.spec(), [str(c.results), "permission denied", "results_dir"]


def b_eval_backbone(c):
    ckpt = c.checkpoint()
    return c.spec() + [f"evaluate.checkpoint={ckpt}", "model.backbone.type=mit_b2"], \
        [ckpt.name, "'mit_b0'", "'mit_b2'", "model.backbone.type: mit_b0"]


def b_eval_truncated(c):
    return c.spec() + [f"evaluate.checkpoint={truncated_checkpoint(c)}"], ["truncated.pth", "cannot read checkpoint"]


def b_eval_text_file(c):
    labels = c.tmp / "labels.txt"  # export's class list, given where the checkpoint goes
    labels.write_text("background\nnucleus\n")
    return c.spec() + [f"evaluate.checkpoint={labels}"], ["labels.txt", "not a PyTorch checkpoint"]


def b_eval_evil(c):
    return c.spec() + [f"evaluate.checkpoint={evil_checkpoint(c)}"], ["evil.pth", "refused", "weights_only", "io.open"]


def b_eval_not_torch(c):
    path = c.tmp / "notes.pth"
    path.write_text("not a checkpoint\n")
    return c.spec() + [f"evaluate.checkpoint={path}"], ["notes.pth", "not a pytorch checkpoint"]


def b_eval_missing(c):
    return c.spec() + [f"evaluate.checkpoint={c.tmp / 'none.pth'}"], ["evaluate.checkpoint", "none.pth", "does not exist"]


def b_eval_head_width(c):
    # a checkpoint with another decoder width than the spec's: one line naming the key and its value
    # (it listed every decoder tensor's shape, ~1,100 characters, and never said embed_dim)
    ckpt = c.checkpoint()
    return c.spec() + [f"evaluate.checkpoint={ckpt}", "model.decode_head.decoder_params.embed_dim=64"], \
        [ckpt.name, "decoder_params.embed_dim is 64", "set model.decode_head.decoder_params.embed_dim: "]


def b_infer_backbone(c):
    ckpt = c.checkpoint()
    return c.spec() + [f"inference.checkpoint={ckpt}", "model.backbone.type=mit_b1"], [ckpt.name, "'mit_b0'", "'mit_b1'"]


def b_infer_corrupt(c):
    (c.data / "images/test/test_00000.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    return c.spec() + [f"inference.checkpoint={c.checkpoint()}"], ["test_00000.jpg", "cannot read image"]


def b_quant_onnx_for_torch_backend(c):
    # TAO's "modelopt" is ModelOpt's PyTorch backend: an ONNX model_path is told which backend takes it
    onnx = c.tmp / "exported.onnx"
    onnx.write_bytes(b"not read")
    return c.spec() + ["quantize.backend=modelopt", f"quantize.model_path={onnx}"], \
        ["exported.onnx", "quantize.backend: modelopt.onnx", "the .pth checkpoint"]


def b_unknown_action(c): return [], ["invalid choice", "trian"]
def b_no_spec(c): return [], ["-e"]


CASES = [
    Case("unknown_key", "train", b_unknown_key, subprocess=True),
    Case("wrong_type", "train", b_wrong_type),
    Case("out_of_bounds", "train", b_out_of_bounds),
    Case("unknown_backbone", "train", b_unknown_backbone),
    Case("bad_enum_value", "train", b_bad_enum),
    Case("override_without_equals", "train", b_override_syntax),
    Case("spec_missing", "train", b_spec_missing),
    Case("spec_malformed_yaml", "train", b_spec_malformed),
    Case("spec_python_tag", "train", b_spec_python_tag, marker=True),
    Case("spec_not_a_mapping", "train", b_spec_not_mapping),
    Case("spec_binary_garbage", "train", b_spec_binary, subprocess=True),
    Case("spec_utf16", "train", b_spec_utf16),
    Case("spec_is_a_folder", "train", b_spec_folder, subprocess=True),
    Case("spec_is_a_url", "train", b_spec_url),
    Case("spec_duplicate_key", "train", b_spec_duplicate_key),
    Case("spec_duplicate_section", "train", b_spec_duplicate_section),
    Case("spec_recursive_alias", "train", b_spec_recursive_alias),
    Case("spec_old_tao_layout", "train", b_old_tao_layout, subprocess=True),
    Case("nan_value", "train", b_nan_value),
    Case("inf_value", "train", b_inf_value),
    Case("huge_integer", "train", b_huge_int),
    Case("section_reset_by_override", "train", b_section_reset),
    Case("section_set_to_null", "train", b_section_null),
    Case("root_dir_missing", "train", b_root_missing),
    Case("root_dir_unset", "train", b_root_unset),
    Case("split_folder_missing", "train", b_split_missing),
    Case("split_name_unknown", "train", b_split_name),
    Case("image_without_mask", "train", b_image_without_mask),
    Case("mask_without_image", "train", b_mask_without_image),
    Case("masks_saved_as_jpeg", "train", b_jpeg_masks),
    Case("palette_label_id_shared", "train", b_palette_shared_label_id),
    Case("corrupt_png_mask", "train", b_corrupt_png, subprocess=True),
    Case("corrupt_jpeg_image", "train", b_corrupt_jpeg),
    Case("mask_other_size", "train", b_mask_size),
    Case("unknown_palette_colour", "train", b_unknown_colour),
    Case("label_ge_num_classes", "train", b_label_too_large),
    Case("mask_16bit_bad_value", "train", b_16bit_bad),
    Case("empty_split", "train", b_empty_split),
    Case("decompression_bomb", "train", b_bomb),
    Case("symlink_file_outside_root", "train", b_symlink_file),
    Case("symlink_split_outside_root", "train", b_symlink_dir),
    Case("duplicate_stem", "train", b_duplicate_stem),
    Case("unreadable_file", "train", b_unreadable,
         skip_if_root="running as root: chmod 000 does not stop root from reading a file"),
    Case("num_classes_vs_palette", "train", b_num_classes),
    Case("nan_loss", "train", b_nan_loss),
    Case("resume_missing", "train", b_resume_missing),
    Case("resume_truncated", "train", b_resume_truncated),
    Case("resume_with_another_optimizer", "train", b_resume_other_freeze),
    Case("resume_pickle_payload", "train", b_resume_evil, marker=True),
    Case("pretrained_pickle_payload", "train", b_pretrained_evil, marker=True),
    Case("results_dir_under_a_file", "train", b_results_under_file, subprocess=True),
    Case("results_dir_read_only", "train", b_results_readonly,
         skip_if_root="running as root: a mode 555 folder is still writable by root "
                      "(results_dir_under_a_file covers 'cannot create')"),
    Case("eval_other_backbone", "evaluate", b_eval_backbone, subprocess=True),
    Case("eval_truncated_checkpoint", "evaluate", b_eval_truncated),
    Case("eval_text_file_as_checkpoint", "evaluate", b_eval_text_file),
    Case("eval_pickle_payload", "evaluate", b_eval_evil, marker=True),
    Case("eval_not_a_checkpoint", "evaluate", b_eval_not_torch),
    Case("eval_checkpoint_missing", "evaluate", b_eval_missing),
    Case("eval_float_checkpoint_as_quantized", "evaluate", b_eval_float_as_quantized),
    Case("in_index_out_of_range", "train", b_in_index_out_of_range),
    Case("empty_angle_list", "train", b_empty_angle_list),
    Case("export_old_opset", "export", b_export_old_opset),
    Case("export_other_channels", "export", b_export_other_channels),
    Case("quantize_fp8_layer", "quantize", b_quantize_fp8_layer),
    Case("convert_source_missing", "convert", b_convert_missing, code=2),
    Case("eval_garbage_onnx", "evaluate", b_garbage_onnx),
    Case("eval_engine_without_tensorrt", "evaluate", b_engine_as_checkpoint),
    Case("quantize_calibration_unreadable", "quantize", b_quantize_calibration_unreadable),
    Case("export_onnx_file_is_a_folder", "export", b_export_onnx_file_is_a_folder),
    Case("export_onnx_under_a_file", "export", b_export_onnx_under_a_file),
    Case("eval_results_dir_cannot_be_made", "evaluate", b_eval_results_cannot_be_made),
    Case("quantize_calibration_folder_missing", "quantize", b_quantize_calibration_folder_missing),
    Case("eval_other_head_width", "evaluate", b_eval_head_width),
    Case("quantize_onnx_for_torch_backend", "quantize", b_quant_onnx_for_torch_backend),
    Case("inference_other_backbone", "inference", b_infer_backbone),
    Case("inference_corrupt_image", "inference", b_infer_corrupt),
    Case("unknown_action", "trian", b_unknown_action, code=2),
    Case("action_without_spec", "train", b_no_spec, code=2),
]


def test_corpus_is_large_enough():
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, data_copy: Path, tmp_path: Path, request, capsys):
    if case.skip_if_root and is_root():
        pytest.skip(case.skip_if_root)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    ctx = Ctx(data=data_copy, results=tmp_path / "results", tmp=scratch, request=request)
    argv, expected = case.build(ctx)
    argv = [case.action, *argv]
    try:
        if case.subprocess:
            outcome = run_subprocess("segformer", argv)
        else:
            outcome = run_inprocess(argv, capsys)
    finally:
        if ctx.results.exists() and ctx.results.is_dir():
            ctx.results.chmod(0o755)
    results = ctx.results if ctx.results.parent.is_dir() else None
    assert_clean_failure(outcome, case.code, expected, results)
    if case.marker:
        assert not (scratch / "PWNED").exists(), "a pickle/YAML payload ran code"
