"""``segformer export``: checkpoint -> ONNX (+ DeepStream nvinfer config), checked in ONNX Runtime.

Writes ``export.onnx_file`` (default ``<results_dir>/export/segformer.onnx``): input ``input``
(N, C, H, W), output ``output`` (N, K, H/4, W/4) logits, batch axis dynamic when
``export.batch_size`` is -1. Right after writing, ONNX Runtime runs the file on a batch of real
validation images (``<root_dir>/images/<validation_split>``; random inputs with a note when there
are none) and the largest logit difference from PyTorch is printed and must stay within the
tolerance. Next to the ONNX file: ``config_infer_primary_segformer.txt`` and ``labels.txt`` for
DeepStream's Gst-nvinfer.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from segformer.config import ConfigError, ExperimentConfig, action_results_dir, require
from segformer.data.transforms import size_pair
from segformer.errors import SpecError
from segformer.model import check_input_size
from segformer.parents import resolve_parents

log = logging.getLogger(__name__)

DEFAULT_ONNX_NAME = "segformer.onnx"
PARITY_IMAGES = 4


@dataclass(frozen=True)
class ExportResult:
    onnx_file: Path
    max_abs_diff: float
    parity_inputs: str  # "validation images" or "random inputs"
    deepstream_config: Path
    labels_file: Path
    results_dir: Path


def _export_device(on_cpu: bool, gpu_id: int) -> torch.device:
    if not on_cpu and torch.cuda.is_available():
        return torch.device("cuda", gpu_id)
    if not on_cpu:
        log.info("no CUDA GPU: exporting on the CPU")
    return torch.device("cpu")


def parity_images(cfg: ExperimentConfig, height: int, width: int, channels: int) -> tuple[torch.Tensor, str]:
    """Up to PARITY_IMAGES validation images preprocessed like evaluation, else random inputs."""
    segment = cfg.dataset.segment
    folder = Path(segment.root_dir or "") / "images" / str(segment.validation_split or "")
    if channels == 3 and segment.root_dir and folder.is_dir() and any(folder.iterdir()):
        from segformer.data import iter_calibration_batches
        from segformer.errors import DataError

        aug = segment.augmentation
        try:
            batch = next(iter_calibration_batches(folder, (height, width), aug.mean, aug.std, PARITY_IMAGES, 1), None)
        except DataError as err:
            log.warning("cannot use validation images for the ONNX check: %s", err)
            batch = None
        if batch is not None and len(batch):
            return batch, f"{len(batch)} validation images from {folder}"
    generator = torch.Generator().manual_seed(0)
    return torch.randn(2, channels, height, width, generator=generator), "2 random inputs (no validation images found)"


def deepstream_files(cfg: ExperimentConfig, onnx_file: Path, num_classes: int) -> tuple[Path, Path]:
    """DeepStream's Gst-nvinfer config and labels file for ``onnx_file``, beside it: the spec's classes,
    normalisation, batch size and ``gen_trt_engine.tensorrt.data_type``. int8 on a float model names
    the calibration cache gen_trt_engine writes (nvinfer has no scales without it); a QDQ model
    carries its own."""
    from segformer.actions.gen_trt_engine import calibration_cache
    from segformer.data import MaskDecoder
    from segformer.deploy.deepstream import write_deepstream_config
    from segformer.deploy.trt import onnx_has_qdq

    aug = cfg.dataset.segment.augmentation
    decoder = MaskDecoder(cfg.dataset.segment.palette, cfg.dataset.segment.label_transform, num_classes)
    class_names = [name or f"class_{i}" for i, name in enumerate(decoder.class_names)]
    options = cfg.export
    ds_batch = int(options.batch_size) if options.batch_size > 0 else max(1, int(cfg.gen_trt_engine.tensorrt.max_batch_size))
    data_type = str(cfg.gen_trt_engine.tensorrt.data_type)
    calib: str | None = None
    if data_type == "int8" and not onnx_has_qdq(onnx_file):
        given = cfg.gen_trt_engine.tensorrt.calibration.cal_cache_file
        try:
            cache = calibration_cache(cfg)
        except ConfigError:  # no results_dir: where gen_trt_engine will write it is not known
            cache = None
        if cache is None:
            log.warning("DeepStream config: gen_trt_engine.tensorrt.data_type is int8 on a float model, and nvinfer "
                        "needs TensorRT's calibration cache for its scales: set gen_trt_engine.tensorrt.calibration."
                        "cal_cache_file to name it (int8-calib-file)")
        else:
            # a path the user gave stays as given (made absolute); the default, beside export/ in the same
            # results folder, relative to the config, so that the folder can move as a whole
            calib = str(cache.absolute()) if given else os.path.relpath(cache.absolute(), onnx_file.parent.absolute())
            if not cache.is_file():
                log.warning("DeepStream config: gen_trt_engine.tensorrt.data_type is int8 on a float model: nvinfer "
                            "reads its int8 scales from %s (int8-calib-file), which `segformer gen_trt_engine` with "
                            "data_type int8 writes; run it before DeepStream builds the engine", cache)
    return write_deepstream_config(onnx_file, onnx_file.parent, class_names=class_names, mean=list(aug.mean),
                                   std=list(aug.std), batch_size=ds_batch, data_type=data_type,
                                   gpu_id=int(options.gpu_id), int8_calib_file=calib)


def run(cfg: ExperimentConfig, *, quiet: bool = False) -> ExportResult:
    from segformer.deploy.onnx_export import export_onnx, onnx_parity
    from segformer.deploy.runtime import default_ort_providers
    from segformer.engine.predictor import load_torch_model_and_meta

    cfg = resolve_parents(cfg, "export", quiet=quiet)  # a results folder as export.checkpoint: its best checkpoint
    options = cfg.export
    checkpoint = Path(require(cfg, "export.checkpoint"))
    check_input_size(cfg.model, (int(options.input_height), int(options.input_width)),
                     key="export.input_height/input_width")
    results_dir = action_results_dir(cfg, "export")
    onnx_file = Path(options.onnx_file) if options.onnx_file else results_dir / DEFAULT_ONNX_NAME
    if str(options.format).lower() != "onnx":
        log.warning("export.format %r is not implemented: writing ONNX", options.format)
    num_classes = int(cfg.dataset.segment.num_classes)
    device = _export_device(bool(options.on_cpu), int(options.gpu_id))
    model, meta = load_torch_model_and_meta(cfg.model, num_classes, checkpoint)
    model = model.to(device).eval()

    height, width, channels = int(options.input_height), int(options.input_width), int(options.input_channel)
    takes = next((m.in_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)), channels)
    if channels != takes:
        raise SpecError(f"export.input_channel={channels}, but {checkpoint} takes {takes}-channel images "
                             f"(its first layer); set export.input_channel={takes}")
    trained = meta.get("img_size")
    trained_hw = size_pair(trained) if trained else None  # as evaluate reads it (`predictor._warn_other_size`)
    if trained_hw and (height, width) != trained_hw:
        # Works (SegFormer is size-agnostic) but the exported graph's size is what the deployment
        # sees; accuracy measured at the trained size does not carry over.
        from segformer.config.experiment import ExportConfig

        default = ExportConfig()
        unset = (height, width) == (default.input_height, default.input_width)
        log.warning("export.input_height/input_width are %dx%d%s but %s was trained at %dx%d "
                    "(dataset.segment.img_size): accuracy at this size is not what evaluate measured; "
                    "export at %dx%d (export.input_height=%d export.input_width=%d) unless the deployment needs this size",
                    height, width, " (export's default)" if unset else "", checkpoint,
                    *trained_hw, *trained_hw, *trained_hw)
    export_onnx(
        model,
        onnx_file,
        input_channel=channels,
        input_height=height,
        input_width=width,
        batch_size=int(options.batch_size),
        opset_version=int(options.opset_version),
        verbose=bool(options.verbose),
    )
    images, source = parity_images(cfg, height, width, channels)
    providers = default_ort_providers(on_cpu=device.type == "cpu")
    diff = onnx_parity(model, onnx_file, images, providers=providers)
    message = f"ONNX Runtime vs PyTorch on {source}: max |logit difference| = {diff:.3g}"
    if quiet:
        log.info(message)
    else:
        print(message)

    config_path, labels_path = deepstream_files(cfg, onnx_file, num_classes)
    if not quiet:
        print(f"wrote {onnx_file}, {config_path.name} and {labels_path.name}")
    return ExportResult(onnx_file, diff, source, config_path, labels_path, results_dir)
