"""``segformer gen_trt_engine``: build a TensorRT engine from the exported ONNX model.

``tensorrt.data_type`` fp32, fp16 or int8. INT8 takes its scales from a QDQ ONNX model (from
``quantize`` with backend modelopt.onnx, or onnxruntime with ``backend_kwargs: {symmetric: true}``:
TensorRT takes zero point 0 only, and ONNX Runtime's default CPU model, uint8, is refused in one
message before TensorRT is needed; no calibration) or calibrates a float
model over ``calibration.cal_image_dir`` (``cal_batches`` batches of ``cal_batch_size``) with an
entropy calibrator whose cache ``cal_cache_file`` makes later builds skip calibration.
``workspace_size`` is in MiB. The batch profile comes from the ONNX input and the spec (see
:func:`segformer.deploy.trt.resolve_batch_profile`). Without TensorRT the action stops with a
:class:`~segformer.errors.MissingDependencyError` that says what to install.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segformer.config import ExperimentConfig, action_results_dir, require
from segformer.errors import MissingDependencyError, SegformerError
from segformer.parents import resolve_parents

log = logging.getLogger(__name__)

DEFAULT_ENGINE_NAME = "segformer.engine"


@dataclass(frozen=True)
class GenTrtEngineResult:
    engine_file: Path
    data_type: str
    min_batch: int
    opt_batch: int
    max_batch: int
    results_dir: Path


def calibration_cache(cfg: ExperimentConfig) -> Path:
    """TensorRT's int8 calibration cache: ``tensorrt.calibration.cal_cache_file``, else ``cal.bin`` in
    gen_trt_engine's results folder (the DeepStream config of an int8 float model names it too)."""
    name = cfg.gen_trt_engine.tensorrt.calibration.cal_cache_file
    return Path(name) if name else action_results_dir(cfg, "gen_trt_engine") / "cal.bin"


def _onnx_file(cfg: ExperimentConfig, *, quiet: bool) -> tuple[ExperimentConfig, Path]:
    """The spec with its parents resolved (a results folder as onnx_file: its ONNX model), and the model."""
    cfg = resolve_parents(cfg, "gen_trt_engine", quiet=quiet)
    onnx_file = Path(require(cfg, "gen_trt_engine.onnx_file"))
    if not onnx_file.is_file():
        raise SegformerError(f"gen_trt_engine.onnx_file points to {onnx_file}, which does not exist")
    from segformer.deploy.trt import tensorrt_refuses

    why = tensorrt_refuses(onnx_file)
    if why:
        raise SegformerError(
            f"gen_trt_engine.onnx_file {onnx_file} cannot be built by TensorRT: {why}. For an int8 engine, build "
            "from the float ONNX model (export's segformer.onnx) with gen_trt_engine.tensorrt.data_type=int8 and "
            "calibration images (gen_trt_engine.tensorrt.calibration.cal_image_dir), or quantize for TensorRT: "
            "quantize.backend_kwargs={symmetric: true}")
    return cfg, onnx_file


def run(cfg: ExperimentConfig, *, quiet: bool = False) -> GenTrtEngineResult:
    from segformer.deploy import trt as trt_build

    try:
        trt = trt_build.import_tensorrt()  # first: without TensorRT nothing can be built
    except MissingDependencyError as exc:  # ... and the model to build from, if that is wrong too: both at once
        try:
            _onnx_file(cfg, quiet=True)
        except SegformerError as also:
            raise MissingDependencyError(f"{exc}; also, {also}") from None
        raise
    cfg, onnx_file = _onnx_file(cfg, quiet=quiet)
    options = cfg.gen_trt_engine
    results_dir = action_results_dir(cfg, "gen_trt_engine")
    engine_file = Path(options.trt_engine) if options.trt_engine else results_dir / DEFAULT_ENGINE_NAME
    settings = options.tensorrt
    calibration = settings.calibration
    cal_dirs = [Path(d) for d in (calibration.cal_image_dir or []) if d]
    cal_dirs = cal_dirs or ([Path(cfg.dataset.segment.quant_calibration_dataset.images_dir)]
                            if cfg.dataset.segment.quant_calibration_dataset.images_dir else [])
    cache_file = calibration_cache(cfg)

    from segformer.deploy.onnx_signature import read_onnx_signature

    _, height, width = read_onnx_signature(onnx_file).chw
    aug = cfg.dataset.segment.augmentation

    def calibration_batches(batch_size: int):
        from segformer.data import iter_calibration_batches

        for folder in cal_dirs:
            for batch in iter_calibration_batches(folder, (height, width), aug.mean, aug.std, batch_size, None):
                yield batch.numpy().astype(np.float32)

    try:
        engine, profile, plan = trt_build.build_engine(
            onnx_file,
            engine_file,
            data_type=str(settings.data_type),
            workspace_mib=int(settings.workspace_size),
            batch_size=int(options.batch_size),
            min_batch_size=int(settings.min_batch_size),
            opt_batch_size=int(settings.opt_batch_size),
            max_batch_size=int(settings.max_batch_size),
            layers_precision=list(settings.layers_precision or []),
            calibration_batches=calibration_batches if cal_dirs else None,
            cal_batch_size=int(calibration.cal_batch_size),
            cal_batches=int(calibration.cal_batches),
            cal_cache_file=cache_file,
            verbose=bool(options.verbose),
            trt=trt,
        )
    except ValueError as err:  # spec problems found by the profile/precision rules
        raise SegformerError(str(err)) from err
    if not quiet:
        print(f"wrote {engine} ({settings.data_type}, batch min/opt/max {profile.min}/{profile.opt}/{profile.max})")
    return GenTrtEngineResult(engine, str(settings.data_type), profile.min, profile.opt, profile.max, results_dir)
