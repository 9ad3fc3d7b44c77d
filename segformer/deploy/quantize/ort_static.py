"""ONNX Runtime static INT8 quantization (QDQ) for CPU deployment: backend ``onnxruntime``.

Recipe measured on this project's CPUs (AVX2, no VNNI): pre-process with
``quant_pre_process(skip_symbolic_shape=True)`` (symbolic shape inference fails on attention
graphs), QDQ format, uint8 activations (asymmetric; the u8s8 kernels are the fast ones without
VNNI), int8 per-channel weights, and only MatMuls with a constant weight, so the attention
products Q.K^T and A.V stay in float. The QDQ quantizer ignores ``MatMulConstBOnly`` (only the
QOperator one reads it): given every MatMul it wrapped the attention products and their Softmax in
Q/DQ, which ONNX Runtime fused into QLinearMatMul and QLinearSoftmax, 8x slower than the float
Softmax; MiT-B0 at 512x512 then ran at the speed of fp32 (1.03x at batch 1, 1.07x at batch 8,
idle AVX-512 VNNI CPU). So the candidates are Conv and the MatMul/Gemm nodes whose weight is a
constant (:func:`onnx_quant_candidates`), their outputs left in float (one MatMulIntegerToFloat
each, no Q/DQ pair before the float ops that follow). Calibration streams the calibration images through a
``CalibrationDataReader``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segformer.fileio import atomic_output

from ..onnx_export import module_path_of_node
from .patterns import LayerRule, select_names

__all__ = ["quantize_onnx_static", "onnx_quant_candidates", "OnnxQuantSummary", "ORT_ALGORITHMS", "ORT_KWARGS"]

ORT_ALGORITHMS = {"minmax": "MinMax", "max": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
ORT_KWARGS = ("per_channel",)  # the quantize.backend_kwargs quantize_onnx_static takes
QUANT_OP_TYPES = ("Conv", "MatMul", "Gemm")
_PARAM_SUFFIX = re.compile(r"\.(weight|bias|weight_[a-z]+)$")


@dataclass(frozen=True)
class OnnxQuantSummary:
    output: Path
    quantized_nodes: tuple[str, ...]
    skipped_nodes: tuple[str, ...]
    calibration_batches: int


def onnx_quant_candidates(model, activation_matmuls: bool = False) -> tuple[list[tuple[str, str]], dict[str, list[str]]]:
    """(node name, op type) of quantizable nodes, and each node's module path(s) from its weights.
    Quantizable: every Conv, and the MatMul/Gemm nodes with a constant weight; with
    `activation_matmuls` also the products of two activations (attention)."""
    initializers = {i.name for i in model.graph.initializer}
    # Weights are sometimes behind a Transpose/Identity of an initializer: follow one hop.
    produced_from = {}
    for node in model.graph.node:
        if node.op_type in ("Transpose", "Identity", "Cast") and node.input and node.input[0] in initializers:
            for out in node.output:
                produced_from[out] = node.input[0]
    candidates, aliases = [], {}
    for index, node in enumerate(model.graph.node):
        if node.op_type not in QUANT_OP_TYPES:
            continue
        if (not activation_matmuls and node.op_type != "Conv"
                and produced_from.get(node.input[1], node.input[1]) not in initializers):
            continue  # an activation times an activation (attention): kept in float
        name = node.name or f"{node.op_type}_{index}"
        if not node.name:
            node.name = name  # quantize_static identifies nodes by name
        paths = []
        for inp in node.input[1:]:
            source = produced_from.get(inp, inp)
            if source in initializers:
                paths.append(_PARAM_SUFFIX.sub("", source))
        from_name = module_path_of_node(name) if name.startswith("/") else ""
        candidates.append((name, node.op_type))
        aliases[name] = sorted(set(paths) | ({from_name} if from_name else set()))
    return candidates, aliases


class _Reader:
    """CalibrationDataReader over an iterable of float32 (N, C, H, W) batches."""

    def __init__(self, input_name: str, batches: Iterable[np.ndarray]) -> None:
        self.input_name = input_name
        self._batches: Iterator[np.ndarray] = iter(batches)
        self.count = 0

    def get_next(self):
        batch = next(self._batches, None)
        if batch is None:
            return None
        self.count += 1
        return {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}

    def rewind(self) -> None:  # single pass is all quantize_static needs
        pass


def quantize_onnx_static(
    model_path: str | Path,
    output_path: str | Path,
    calibration_batches: Iterable[np.ndarray],
    *,
    rules: Sequence[LayerRule] = (),
    skip_names: Sequence[str] = (),
    algorithm: str = "minmax",
    per_channel: bool = True,
) -> OnnxQuantSummary:
    """Write a QDQ int8 copy of ``model_path`` to ``output_path`` (atomically)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if algorithm not in ORT_ALGORITHMS:
        raise ValueError(
            f"quantize.algorithm {algorithm!r} is not supported by the onnxruntime backend; "
            f"use one of {sorted(ORT_ALGORITHMS)}"
        )
    output_path = Path(output_path)
    with atomic_output(output_path) as out_tmp:
        work = out_tmp.parent / f"{out_tmp.name}.work"  # a subfolder: scratch, never moved into place
        work.mkdir()
        prepared = work / "prepared.onnx"
        quant_pre_process(str(model_path), str(prepared), skip_symbolic_shape=True)
        model = onnx.load(str(prepared))
        candidates, aliases = onnx_quant_candidates(model)
        onnx.save(model, str(prepared))  # with any generated node names
        chosen = select_names(candidates, rules, skip_names, aliases=aliases)
        if not chosen:
            raise ValueError(
                "quantize.layers/skip_names exclude every Conv/MatMul/Gemm node; nothing to quantize "
                f"(nodes look like {[c[0] for c in candidates[:3]]}, modules like "
                f"{[a for c in candidates[:3] for a in aliases[c[0]]]})"
            )
        skipped = tuple(name for name, _ in candidates if name not in set(chosen))
        input_name = next(i.name for i in model.graph.input if i.name not in {x.name for x in model.graph.initializer})

        reader_impl = _Reader(input_name, calibration_batches)

        class Reader(CalibrationDataReader):
            def get_next(self):
                return reader_impl.get_next()

        quantize_static(
            str(prepared),
            str(out_tmp),
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            nodes_to_quantize=list(chosen),
            op_types_to_quantize=list(QUANT_OP_TYPES),
            calibrate_method=getattr(CalibrationMethod, ORT_ALGORITHMS[algorithm]),
            # A MatMul's output stays float: ONNX Runtime then runs DQ -> MatMul as one MatMulIntegerToFloat
            # instead of QLinearMatMul followed by a DequantizeLinear for the float LayerNorm/Add after it
            # (MiT-B0 512px: 1.36x -> 1.48x the speed of fp32 at batch 8, 1.22x -> 1.27x at batch 1).
            extra_options={"MatMulConstBOnly": True, "ActivationSymmetric": False, "WeightSymmetric": True,
                           "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"]},
        )
        if reader_impl.count == 0:
            raise ValueError("calibration produced no batches; check the calibration images folder")
    return OnnxQuantSummary(output_path, tuple(chosen), skipped, reader_impl.count)
