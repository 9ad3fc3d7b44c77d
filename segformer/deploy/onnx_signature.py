"""The input/output names and shapes of an ONNX model, read without its weights.

Used by the exporter (to check what it wrote), the runtimes (to feed a model), the TensorRT
build and the DeepStream config; it imports only ``onnx``, inside :func:`read_onnx_signature`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segformer.errors import CheckpointError
from segformer.text import count

__all__ = ["OnnxSignature", "read_onnx_signature", "calibrate_at_static_batch"]


@dataclass(frozen=True)
class OnnxSignature:
    """Names and shapes of an exported model; a dimension is an int or a symbolic name (str)."""

    input_name: str
    input_shape: tuple[int | str, ...]
    output_name: str
    output_shape: tuple[int | str, ...]
    opset: int

    @property
    def dynamic_batch(self) -> bool:
        return not isinstance(self.input_shape[0], int)

    @property
    def static_batch(self) -> int | None:
        first = self.input_shape[0]
        return first if isinstance(first, int) else None

    @property
    def chw(self) -> tuple[int, int, int]:
        c, h, w = self.input_shape[1:]
        if not all(isinstance(d, int) for d in (c, h, w)):
            raise ValueError(f"input {self.input_name} has non-static C,H,W {self.input_shape[1:]}")
        return int(c), int(h), int(w)

    @property
    def num_classes(self) -> int | None:
        k = self.output_shape[1] if len(self.output_shape) > 1 else None
        return k if isinstance(k, int) else None


def calibrate_at_static_batch(model: str | Path, static_batch: int | None, batch_size: int,
                              batches: int) -> tuple[int, int, str | None]:
    """The calibration batch size and count for a model that runs ``static_batch`` images only
    (exported with export.batch_size), and a note saying so; ``(batch_size, batches, None)`` when
    any batch runs or the two agree. The same images are fed (``batch_size x batches``, rounded up
    to whole batches; ``batches`` <= 0, the whole folder, stays so)."""
    if not static_batch or static_batch == batch_size:
        return batch_size, batches, None
    images = batch_size * batches if batches > 0 else 0
    note = (f"{model} takes batches of {count(static_batch, 'image')} only (exported with "
            f"export.batch_size={static_batch}): calibrating in batches of {static_batch}"
            + (f" on the same images (up to {images}, as many as the folder holds)" if images else ""))
    return static_batch, (-(-images // static_batch) if images else batches), note


def _dims(value_info) -> tuple[int | str, ...]:
    dims: list[int | str] = []
    for d in value_info.type.tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?"))
    return tuple(dims)


def load_onnx(path: str | Path, load_external_data: bool = False) -> Any:
    """`onnx.load`, with a file that is not a complete ONNX model (truncated, garbage, another
    format) reported as a CheckpointError naming it, not a protobuf DecodeError traceback."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"ONNX model {path} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        return onnx.load(str(path), load_external_data=load_external_data)
    except Exception as exc:  # noqa: BLE001 (DecodeError, or a parse error deeper in protobuf)
        size = path.stat().st_size
        raise CheckpointError(f"{path} is not a readable ONNX model ({size} bytes; {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else 'cannot parse'}): it is truncated or not "
                              f"ONNX; export it again with `segformer export`") from None


def read_onnx_signature(path: str | Path) -> OnnxSignature:
    """Read input/output names and shapes without loading the weights."""
    model = load_onnx(path)
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise ValueError(
            f"{path}: expected one input and one output, got inputs {[i.name for i in inputs]} "
            f"and outputs {[o.name for o in model.graph.output]}"
        )
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return OnnxSignature(
        input_name=inputs[0].name,
        input_shape=_dims(inputs[0]),
        output_name=model.graph.output[0].name,
        output_shape=_dims(model.graph.output[0]),
        opset=opset,
    )
