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
from typing import TYPE_CHECKING

import numpy as np

from segformer.config import ExperimentConfig, action_results_dir, require
from segformer.errors import MissingDependencyError, SegformerError
from segformer.parents import resolve_parents

if TYPE_CHECKING:
    from segformer.deploy.onnx_signature import OnnxSignature

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
    from segformer.deploy import trt as trt_build

    why = trt_build.tensorrt_refuses(onnx_file)
    if why:
        raise SegformerError(
            f"gen_trt_engine.onnx_file {onnx_file} cannot be built by TensorRT: {why}. For an int8 engine, build "
            "from the float ONNX model (export's segformer.onnx) with gen_trt_engine.tensorrt.data_type=int8 and "
            f"calibration images (gen_trt_engine.tensorrt.calibration.cal_image_dir), or {trt_build.TENSORRT_INT8_HINT}")
    return cfg, onnx_file


def _calibration_dirs(cfg: ExperimentConfig) -> list[Path]:
    """int8 calibration folders: tensorrt.calibration.cal_image_dir, else quant_calibration_dataset.images_dir."""
    cal_dirs = [Path(d) for d in (cfg.gen_trt_engine.tensorrt.calibration.cal_image_dir or []) if d]
    images_dir = cfg.dataset.segment.quant_calibration_dataset.images_dir
    return cal_dirs or ([Path(images_dir)] if images_dir else [])


def check(cfg: ExperimentConfig, *, quiet: bool = True) -> tuple[ExperimentConfig, Path, OnnxSignature]:
    """What a build would refuse that needs no TensorRT to find (`segformer validate --action
    gen_trt_engine` and a run without TensorRT say it): the model to build from, the batch profile
    against its batch axis, int8's source of scales, the layer precisions, the workspace. Returns the
    spec with its parents resolved, the model and its signature."""
    from segformer.deploy import trt as trt_build
    from segformer.deploy.onnx_signature import read_onnx_signature

    cfg, onnx_file = _onnx_file(cfg, quiet=quiet)
    options = cfg.gen_trt_engine
    settings = options.tensorrt
    trt_build.check_workspace(int(settings.workspace_size))
    try:
        signature = read_onnx_signature(onnx_file)
    except ValueError as err:  # not one input and one output: a model of another kind
        raise SegformerError(f"gen_trt_engine.onnx_file {onnx_file}: {err}") from None
    trt_build.resolve_batch_profile(signature.static_batch or "batch",
                                    batch_size=int(options.batch_size), min_batch_size=int(settings.min_batch_size),
                                    opt_batch_size=int(settings.opt_batch_size),
                                    max_batch_size=int(settings.max_batch_size))
    trt_build.plan_precision(str(settings.data_type), onnx_has_qdq=trt_build.onnx_has_qdq(onnx_file),
                             has_calibration_source=bool(_calibration_dirs(cfg)) or calibration_cache(cfg).is_file())
    trt_build.parse_layers_precision(list(settings.layers_precision or []))
    return cfg, onnx_file, signature


def run(cfg: ExperimentConfig, *, quiet: bool = False) -> GenTrtEngineResult:
    from segformer.deploy import trt as trt_build

    try:
        trt = trt_build.import_tensorrt()  # first: without TensorRT nothing can be built
    except MissingDependencyError as exc:  # ... and what the spec asks, if that is wrong too: both at once
        try:
            check(cfg)
        except SegformerError as also:
            raise MissingDependencyError(f"{exc}; also, {also}") from None
        raise
    cfg, onnx_file, signature = check(cfg, quiet=quiet)
    options = cfg.gen_trt_engine
    results_dir = action_results_dir(cfg, "gen_trt_engine")
    engine_file = Path(options.trt_engine) if options.trt_engine else results_dir / DEFAULT_ENGINE_NAME
    settings = options.tensorrt
    calibration = settings.calibration
    cal_dirs = _calibration_dirs(cfg)
    cache_file = calibration_cache(cfg)

    _, height, width = signature.chw
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
