"""TensorRT engine building: batch profile, precision plan, INT8 calibration, build, engine I/O.

The decisions (which batch range, which builder flags, whether a calibrator is needed, the
calibration cache) are pure functions and small classes tested without TensorRT. Only
:func:`build_engine`, :func:`make_entropy_calibrator` and :func:`engine_io` touch the
``tensorrt`` module, and they receive it as an argument so tests can pass a fake of the few
attributes used. Written against TensorRT 10 (named tensors, explicit batch).
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from segformer.errors import SpecError
from segformer.fileio import atomic_write_bytes

from ._deps import TENSORRT_HINT, require
from .onnx_signature import calibrate_at_static_batch

__all__ = [
    "DATA_TYPES",
    "BatchProfile",
    "resolve_batch_profile",
    "PrecisionPlan",
    "plan_precision",
    "parse_layers_precision",
    "onnx_has_qdq",
    "CalibrationFeeder",
    "make_entropy_calibrator",
    "EngineIO",
    "engine_io",
    "build_engine",
    "import_tensorrt",
]

DATA_TYPES = ("fp32", "fp16", "int8")
LAYER_PRECISIONS = ("fp32", "fp16", "int8")
log = logging.getLogger(__name__)


def import_tensorrt() -> ModuleType:
    """``import tensorrt`` or a :class:`MissingDependencyError` naming what to install."""
    return require("tensorrt", purpose="gen_trt_engine (TensorRT)", hint=TENSORRT_HINT)


# ---------------------------------------------------------------------------------------------
# Batch profile


@dataclass(frozen=True)
class BatchProfile:
    """Min/opt/max batch of the engine's single optimization profile."""

    min: int
    opt: int
    max: int

    def shapes(self, chw: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        c, h, w = chw
        return (self.min, c, h, w), (self.opt, c, h, w), (self.max, c, h, w)


def resolve_batch_profile(
    onnx_batch: int | str,
    *,
    batch_size: int = -1,
    min_batch_size: int = 1,
    opt_batch_size: int = 1,
    max_batch_size: int = 1,
) -> BatchProfile:
    """Pick the engine's batch range from the ONNX batch axis and the spec.

    - ONNX with a static batch B: the engine can only run B, so the spec must agree
      (``batch_size`` -1 or B, and min/opt/max all B).
    - ONNX with a dynamic batch and ``batch_size`` > 0: a fixed-batch engine (B, B, B).
    - ONNX with a dynamic batch and ``batch_size`` -1: ``tensorrt.{min,opt,max}_batch_size``,
      which must satisfy 1 <= min <= opt <= max.
    """
    if batch_size == 0 or batch_size < -1:
        raise SpecError(f"gen_trt_engine.batch_size must be -1 (use min/opt/max) or >= 1, got {batch_size}")
    if isinstance(onnx_batch, int) and onnx_batch > 0:
        fixed = onnx_batch
        if batch_size not in (-1, fixed):
            raise SpecError(
                f"the ONNX model has a static batch of {fixed} but gen_trt_engine.batch_size is "
                f"{batch_size}; set it to -1 or {fixed}, or re-export with export.batch_size=-1"
            )
        asked = (min_batch_size, opt_batch_size, max_batch_size)
        if batch_size == -1 and asked != (fixed,) * 3:
            raise SpecError(
                f"the ONNX model has a static batch of {fixed} but tensorrt min/opt/max_batch_size "
                f"are {asked}; set all three to {fixed}, or re-export with export.batch_size=-1"
            )
        return BatchProfile(fixed, fixed, fixed)
    if batch_size > 0:
        return BatchProfile(batch_size, batch_size, batch_size)
    if not 1 <= min_batch_size <= opt_batch_size <= max_batch_size:
        raise SpecError(
            "gen_trt_engine.tensorrt batch sizes must satisfy 1 <= min_batch_size <= opt_batch_size <= "
            f"max_batch_size, got min={min_batch_size}, opt={opt_batch_size}, max={max_batch_size}"
        )
    return BatchProfile(min_batch_size, opt_batch_size, max_batch_size)


# ---------------------------------------------------------------------------------------------
# Precision


@dataclass(frozen=True)
class PrecisionPlan:
    """Builder flags and whether an INT8 calibrator must be attached."""

    flags: tuple[str, ...]  # names in trt.BuilderFlag, e.g. ("FP16", "INT8")
    needs_calibrator: bool
    notes: tuple[str, ...] = ()


def plan_precision(
    data_type: str,
    *,
    onnx_has_qdq: bool,
    has_calibration_source: bool,
    platform_fast_fp16: bool = True,
    platform_fast_int8: bool = True,
) -> PrecisionPlan:
    """Decide builder flags for ``data_type`` (fp32, fp16 or int8).

    INT8 also enables FP16 so layers without INT8 kernels fall back to FP16 rather than FP32.
    A QDQ (explicitly quantized) ONNX model carries its own scales and needs no calibrator; a
    float model in INT8 needs calibration images or an existing calibration cache.
    """
    data_type = str(data_type).lower()
    if data_type not in DATA_TYPES:
        raise SpecError(f"gen_trt_engine.tensorrt.data_type must be one of {DATA_TYPES}, got {data_type!r}")
    notes: list[str] = []
    if data_type == "fp32":
        if onnx_has_qdq:
            notes.append("the ONNX model has Q/DQ nodes: TensorRT runs those layers in INT8 anyway")
            return PrecisionPlan(("INT8",), False, tuple(notes))
        return PrecisionPlan((), False)
    if data_type == "fp16":
        if not platform_fast_fp16:
            notes.append("this GPU has no fast FP16; the engine may be no faster than FP32")
        flags = ("FP16", "INT8") if onnx_has_qdq else ("FP16",)
        return PrecisionPlan(flags, False, tuple(notes))
    if not platform_fast_int8:
        notes.append("this GPU has no fast INT8; the engine may be no faster than FP16")
    if onnx_has_qdq:
        notes.append("explicit quantization from the ONNX Q/DQ nodes; no calibration")
        return PrecisionPlan(("FP16", "INT8"), False, tuple(notes))
    if not has_calibration_source:
        raise SpecError(
            "data_type int8 on a float ONNX model needs calibration: set "
            "gen_trt_engine.tensorrt.calibration.cal_image_dir (or dataset.segment.quant_calibration_dataset."
            f"images_dir, or an existing cal_cache_file), or give it a QDQ model: {TENSORRT_INT8_HINT}"
        )
    return PrecisionPlan(("FP16", "INT8"), True, tuple(notes))


def parse_layers_precision(entries: Sequence[str] | None) -> list[tuple[str, str]]:
    """Parse TAO's ``layers_precision`` entries ``"<layer name pattern>:<fp32|fp16|int8>"``."""
    rules: list[tuple[str, str]] = []
    for entry in entries or ():
        pattern, sep, precision = str(entry).rpartition(":")
        precision = precision.strip().lower()
        if not sep or not pattern.strip() or precision not in LAYER_PRECISIONS:
            raise SpecError(
                f"gen_trt_engine.tensorrt.layers_precision entry {entry!r} must be "
                f"'<layer name pattern>:<precision>' with precision in {LAYER_PRECISIONS}"
            )
        rules.append((pattern.strip(), precision))
    return rules


def onnx_has_qdq(path: str | Path) -> bool:
    """True when the ONNX graph is explicitly quantized (QuantizeLinear/DequantizeLinear)."""
    from segformer.deploy.onnx_signature import load_onnx

    model = load_onnx(path)
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


def tensorrt_refuses(path: str | Path) -> str | None:
    """Why TensorRT cannot build the QDQ model at ``path`` (it takes int8 with zero point 0 only), or
    None when it can (or the model has no Q/DQ nodes). Reads the zero points only."""
    import onnx
    from onnx import numpy_helper

    from segformer.deploy.onnx_signature import load_onnx

    path = Path(path)
    model = load_onnx(path)
    constants = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output:
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                constants[node.output[0]] = value
    nodes = refused = unsigned = shifted = 0
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3 or not node.input[2]:
            continue
        zero = constants.get(node.input[2])
        if zero is None:
            continue
        nodes += 1
        is_unsigned = zero.data_type == onnx.TensorProto.UINT8
        # a large per-channel zero point may be in the model's external data file, beside the model
        is_shifted = bool(np.any(numpy_helper.to_array(zero, base_dir=str(path.parent)) != 0))
        unsigned, shifted, refused = unsigned + is_unsigned, shifted + is_shifted, refused + (is_unsigned or is_shifted)
    if not refused:
        return None
    kinds = " and ".join(k for k, n in (("uint8", unsigned), ("non-zero", shifted)) if n)
    return (f"{refused} of its {nodes} Q/DQ nodes have {kinds} zero points (as ONNX Runtime's default "
            f"CPU int8 model has); TensorRT takes int8 with zero point 0 only")


TENSORRT_INT8_HINT = ("quantize for TensorRT (quantize.backend modelopt.onnx, or onnxruntime with "
                      "quantize.backend_kwargs={symmetric: true})")


def check_workspace(workspace_mib: int) -> None:
    if workspace_mib < 1:
        raise SpecError(f"gen_trt_engine.tensorrt.workspace_size (MiB) must be >= 1, got {workspace_mib}")


# ---------------------------------------------------------------------------------------------
# INT8 calibration


def _torch_to_device(batch: np.ndarray) -> tuple[Any, int]:
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).cuda()
    return tensor, int(tensor.data_ptr())


class CalibrationFeeder:
    """The TensorRT calibrator callbacks, minus TensorRT.

    Feeds ``max_batches`` batches of exactly ``batch_size`` images (a short last batch is
    dropped: TensorRT calibrates at a fixed shape), and reads/writes the calibration cache so
    a rebuild with the same cache skips calibration. ``to_device`` copies a batch to GPU memory
    and returns (keep-alive object, device pointer).
    """

    def __init__(
        self,
        batches: Iterable[np.ndarray],
        *,
        batch_size: int,
        max_batches: int,
        cache_file: str | Path | None,
        to_device: Callable[[np.ndarray], tuple[Any, int]] = _torch_to_device,
    ) -> None:
        if batch_size < 1 or max_batches < 1:
            raise SpecError(f"gen_trt_engine.tensorrt.calibration cal_batch_size and cal_batches must be >= 1, got "
                            f"{batch_size} and {max_batches}")
        self.batch_size = batch_size
        self.max_batches = max_batches
        self.cache_file = Path(cache_file) if cache_file else None
        self._batches: Iterator[np.ndarray] = iter(batches)
        self._to_device = to_device
        self._alive: Any = None
        self.batches_fed = 0

    def get_batch_size(self) -> int:
        return self.batch_size

    def get_batch(self, names: Sequence[str]) -> list[int] | None:
        if self.batches_fed >= self.max_batches:
            return None
        batch = next(self._batches, None)
        if batch is None or batch.shape[0] != self.batch_size:
            return None
        self._alive, pointer = self._to_device(batch)
        self.batches_fed += 1
        return [pointer] * len(names) if len(names) > 1 else [pointer]

    def read_calibration_cache(self) -> bytes | None:
        if self.cache_file is not None and self.cache_file.is_file() and self.cache_file.stat().st_size:
            log.info("using INT8 calibration cache %s", self.cache_file)
            return self.cache_file.read_bytes()
        return None

    def write_calibration_cache(self, cache: bytes | memoryview) -> None:
        if self.cache_file is None:
            return
        atomic_write_bytes(self.cache_file, bytes(cache))


def make_entropy_calibrator(trt: ModuleType, feeder: CalibrationFeeder) -> Any:
    """A ``trt.IInt8EntropyCalibrator2`` that delegates to ``feeder``.

    The subclass is created here because its base class exists only once TensorRT is imported.
    """

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[name-defined, misc]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.feeder = feeder

        def get_batch_size(self) -> int:
            return self.feeder.get_batch_size()

        def get_batch(self, names, *args):  # TensorRT passes (names) or (names, p_str)
            return self.feeder.get_batch(names)

        def read_calibration_cache(self, *args):
            return self.feeder.read_calibration_cache()

        def write_calibration_cache(self, cache, *args) -> None:
            self.feeder.write_calibration_cache(cache)

    return EntropyCalibrator()


# ---------------------------------------------------------------------------------------------
# Build


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    *,
    data_type: str = "fp16",
    workspace_mib: int = 1024,
    batch_size: int = -1,
    min_batch_size: int = 1,
    opt_batch_size: int = 1,
    max_batch_size: int = 1,
    layers_precision: Sequence[str] | None = None,
    calibration_batches: Callable[[int], Iterable[np.ndarray]] | None = None,
    cal_batch_size: int = 1,
    cal_batches: int = 1,
    cal_cache_file: str | Path | None = None,
    verbose: bool = False,
    trt: ModuleType | None = None,
) -> tuple[Path, BatchProfile, PrecisionPlan]:
    """Parse ``onnx_path``, build a TensorRT engine and write it to ``engine_path`` atomically.

    ``calibration_batches(batch_size)`` yields float32 (batch_size, C, H, W) arrays; it is only
    called for INT8 on a float model without a usable cache.
    """
    trt = trt or import_tensorrt()
    check_workspace(workspace_mib)
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    if network.num_inputs != 1:
        raise RuntimeError(f"{onnx_path}: expected one network input, got {network.num_inputs}")
    tensor = network.get_input(0)
    shape = tuple(tensor.shape)
    chw = shape[1:]
    if any(int(d) < 1 for d in chw):
        raise RuntimeError(f"{onnx_path}: input {tensor.name} needs static C,H,W, got {shape}")
    profile_range = resolve_batch_profile(
        int(shape[0]) if int(shape[0]) > 0 else "batch",
        batch_size=batch_size,
        min_batch_size=min_batch_size,
        opt_batch_size=opt_batch_size,
        max_batch_size=max_batch_size,
    )
    cache_ready = bool(cal_cache_file) and Path(cal_cache_file).is_file()
    plan = plan_precision(
        data_type,
        onnx_has_qdq=onnx_has_qdq(onnx_path),
        has_calibration_source=calibration_batches is not None or cache_ready,
        platform_fast_fp16=bool(getattr(builder, "platform_has_fast_fp16", True)),
        platform_fast_int8=bool(getattr(builder, "platform_has_fast_int8", True)),
    )
    for note in plan.notes:
        log.warning(note)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    for flag in plan.flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    profile = builder.create_optimization_profile()
    profile.set_shape(tensor.name, *profile_range.shapes(chw))
    config.add_optimization_profile(profile)

    rules = parse_layers_precision(layers_precision)
    if rules:
        _apply_layer_precisions(trt, network, rules)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)

    if plan.needs_calibrator:
        # A static-batch model (export.batch_size) runs that batch only: calibrate in it.
        cal_batch_size, cal_batches, note = calibrate_at_static_batch(
            onnx_path, int(shape[0]) if int(shape[0]) > 0 else None, cal_batch_size, cal_batches)
        if note and not cache_ready:  # with a cache nothing is calibrated (the profile still takes the batch)
            log.warning(note)
        feeder = CalibrationFeeder(
            calibration_batches(cal_batch_size) if calibration_batches and not cache_ready else (),
            batch_size=cal_batch_size,
            max_batches=cal_batches,
            cache_file=cal_cache_file,
        )
        config.int8_calibrator = make_entropy_calibrator(trt, feeder)
        # TensorRT calibrates at the calibration profile's opt shape: make it the feed's shape.
        cal_profile = builder.create_optimization_profile()
        cal_shape = (cal_batch_size, *chw)
        cal_profile.set_shape(tensor.name, cal_shape, cal_shape, cal_shape)
        config.set_calibration_profile(cal_profile)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(
            f"TensorRT failed to build an engine from {onnx_path} ({data_type}, batch "
            f"{profile_range}); rerun with gen_trt_engine.verbose=true for the builder log"
        )
    engine_path = Path(engine_path)
    atomic_write_bytes(engine_path, bytes(serialized))
    return engine_path, profile_range, plan


def _apply_layer_precisions(trt: ModuleType, network: Any, rules: list[tuple[str, str]]) -> None:
    dtypes = {"fp32": trt.float32, "fp16": trt.float16, "int8": trt.int8}
    matched = {pattern: 0 for pattern, _ in rules}
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        for pattern, precision in rules:
            if fnmatch.fnmatchcase(layer.name, pattern):
                layer.precision = dtypes[precision]
                matched[pattern] += 1
                break
    unused = [p for p, n in matched.items() if n == 0]
    if unused:
        log.warning("layers_precision patterns matched no layer: %s", unused)


# ---------------------------------------------------------------------------------------------
# Engine I/O (for inference)


@dataclass(frozen=True)
class EngineIO:
    input_name: str
    input_shape: tuple[int, ...]  # -1 for dynamic dims
    output_name: str
    output_shape: tuple[int, ...]
    max_batch: int | None


def engine_io(engine: Any, trt: ModuleType) -> EngineIO:
    """Find the single input/output of a deserialized engine and its profile's max batch."""
    inputs, outputs = [], []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        (inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(name)
    if len(inputs) != 1 or len(outputs) != 1:
        raise RuntimeError(f"expected one engine input and output, got {inputs} and {outputs}")
    in_shape = tuple(int(d) for d in engine.get_tensor_shape(inputs[0]))
    out_shape = tuple(int(d) for d in engine.get_tensor_shape(outputs[0]))
    max_batch = in_shape[0] if in_shape[0] > 0 else None
    if max_batch is None:
        _, _, max_shape = engine.get_tensor_profile_shape(inputs[0], 0)
        max_batch = int(max_shape[0])
    return EngineIO(inputs[0], in_shape, outputs[0], out_shape, max_batch)
