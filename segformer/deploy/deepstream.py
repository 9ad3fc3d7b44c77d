"""DeepStream Gst-nvinfer configuration for an exported SegFormer ONNX model.

nvinfer preprocesses each pixel as ``y = net-scale-factor * (x - offsets[c])`` with ``x`` in
0..255, while training normalizes ``(x / 255 - mean[c]) / std[c]``. So ``offsets = 255 * mean``
and ``net-scale-factor = 1 / (255 * std)``. nvinfer has one scale factor for all channels: when
the spec's std differs across channels we use the mean of the three std values (the scale NVIDIA's
own ImageNet-normalized SegFormer configs use), write a comment with the resulting per-channel
scale error into the file, and warn. For an exact match, train with equal std values.

nvinfer's semantic segmentation parser (network-type=2, cluster-mode=4: no clustering) takes
the NCHW score tensor ``output`` and labels each pixel with the class of highest score if that
score exceeds ``segmentation-threshold``. Our ``output`` holds raw logits at 1/4 resolution, so a
pixel whose best logit is below the threshold (0.0 by default) stays unlabelled (-1); the config
also enables ``output-tensor-meta`` so applications can take the full argmax themselves.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from segformer.fileio import atomic_write_text

from .onnx_signature import read_onnx_signature

__all__ = ["DEEPSTREAM_CONFIG_NAME", "LABELS_NAME", "preprocessing_params", "write_deepstream_config", "parse_nvinfer_config"]

DEEPSTREAM_CONFIG_NAME = "config_infer_primary_segformer.txt"
LABELS_NAME = "labels.txt"
NETWORK_MODES = {"fp32": 0, "int8": 1, "fp16": 2}
log = logging.getLogger(__name__)


def preprocessing_params(mean: Sequence[float], std: Sequence[float]) -> tuple[float, list[float], float]:
    """(net-scale-factor, offsets, worst relative per-channel scale error) for 0..1 mean/std."""
    if len(mean) != len(std) or not mean:
        raise ValueError(f"mean and std must have the same non-zero length, got {list(mean)} and {list(std)}")
    if any(s <= 0 for s in std):
        raise ValueError(f"std values must be > 0, got {list(std)}")
    std_used = sum(std) / len(std)
    scale = 1.0 / (255.0 * std_used)
    error = max(abs(std_used / s - 1.0) for s in std)
    return scale, [255.0 * m for m in mean], error


def write_deepstream_config(
    onnx_path: str | Path,
    out_dir: str | Path,
    *,
    class_names: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 1,
    data_type: str = "fp16",
    engine_file: str | Path | None = None,
    segmentation_threshold: float = 0.0,
    gpu_id: int = 0,
    int8_calib_file: str | None = None,
) -> tuple[Path, Path]:
    """Write ``config_infer_primary_segformer.txt`` and ``labels.txt`` next to each other.

    Shapes and names come from the ONNX file itself, so the config cannot disagree with it.
    ``batch_size`` is used when the ONNX batch axis is dynamic; a static axis wins.
    ``int8_calib_file``: TensorRT's calibration cache for int8 on a float model (``int8-calib-file``,
    written as given: nvinfer reads a relative path from the config's folder; without one nvinfer has
    no int8 scales).
    """
    onnx_path = Path(onnx_path)
    sig = read_onnx_signature(onnx_path)
    c, h, w = sig.chw
    if sig.num_classes is None:
        raise ValueError(f"{onnx_path}: output shape {sig.output_shape} has no static class axis")
    if len(class_names) != sig.num_classes:
        raise ValueError(f"{len(class_names)} class names for a model with {sig.num_classes} classes")
    if c == 3 and len(mean) != 3:
        raise ValueError(f"3-channel input needs 3 mean/std values, got {list(mean)}")
    if data_type not in NETWORK_MODES:
        raise ValueError(f"data_type must be one of {sorted(NETWORK_MODES)}, got {data_type!r}")
    scale, offsets, error = preprocessing_params(mean[:c], std[:c])
    batch = sig.static_batch or max(1, batch_size)
    out_dir = Path(out_dir)
    engine = Path(engine_file) if engine_file else onnx_path.with_name(
        f"{onnx_path.name}_b{batch}_gpu{gpu_id}_{data_type}.engine"
    )
    lines = [
        "# Gst-nvinfer config for a SegFormer model exported by segformer-automl.",
        f"# Input {sig.input_name} (N,{c},{h},{w}) normalized as (x/255 - mean)/std; output "
        f"{sig.output_name} = logits (N,{sig.num_classes},{sig.output_shape[2]},{sig.output_shape[3]}).",
    ]
    if error > 1e-6:
        msg = (
            f"std {list(std)} differs across channels but nvinfer has one net-scale-factor: using "
            f"mean std {sum(std) / len(std):.6g}, per-channel scale off by up to {error:.2%}"
        )
        log.warning("DeepStream config: %s", msg)
        lines.append(f"# NOTE: {msg}.")
    lines += [
        "# nvinfer labels a pixel only if its best logit > segmentation-threshold; use",
        "# output-tensor-meta for a full argmax.",
        "[property]",
        f"gpu-id={gpu_id}",
        f"net-scale-factor={scale:.10g}",
        f"offsets={';'.join(f'{o:.6g}' for o in offsets)}",
        f"model-color-format={0 if c == 3 else 2}",  # 0 RGB, 2 GRAY
        f"onnx-file={onnx_path.name}",
        f"model-engine-file={engine.name if engine.parent == onnx_path.parent else engine}",
        f"labelfile-path={LABELS_NAME}",
        f"infer-dims={c};{h};{w}",
        f"batch-size={batch}",
        f"network-mode={NETWORK_MODES[data_type]}",
        *([f"int8-calib-file={int8_calib_file}"] if int8_calib_file else []),
        f"num-detected-classes={sig.num_classes}",
        "interval=0",
        "gie-unique-id=1",
        "network-type=2",
        "cluster-mode=4",
        f"output-blob-names={sig.output_name}",
        "segmentation-output-order=0",
        f"segmentation-threshold={segmentation_threshold}",
        "output-tensor-meta=1",
        "",
    ]
    config_path = out_dir / DEEPSTREAM_CONFIG_NAME
    labels_path = out_dir / LABELS_NAME
    atomic_write_text(labels_path, "\n".join(class_names) + "\n")
    atomic_write_text(config_path, "\n".join(lines))
    return config_path, labels_path


def parse_nvinfer_config(path: str | Path) -> dict[str, str]:
    """Read the ``[property]`` group of an nvinfer config (key=value lines; # comments)."""
    values: dict[str, str] = {}
    group = None
    for raw in Path(path).read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            group = line[1:-1]
            continue
        if group == "property" and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values
