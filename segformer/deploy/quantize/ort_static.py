"""ONNX Runtime static INT8 quantization (QDQ) for CPU deployment: backend ``onnxruntime``.

Recipe measured on this project's CPUs: pre-process with
``quant_pre_process(skip_symbolic_shape=True)`` (symbolic shape inference fails on attention
graphs), QDQ format, uint8 activations (asymmetric; the u8s8 kernels are the fast ones without
VNNI), int8 per-channel weights, and only MatMuls with a constant weight, so the attention
products Q.K^T and A.V stay in float. The QDQ quantizer ignores ``MatMulConstBOnly`` (only the
QOperator one reads it): given every MatMul it wrapped the attention products and their Softmax in
Q/DQ, which ONNX Runtime fused into QLinearMatMul and QLinearSoftmax, 8x slower than the float
Softmax; MiT-B0 at 512x512 then ran at the speed of fp32 (1.03x at batch 1, 1.07x at batch 8,
idle AVX-512 VNNI CPU). So the candidates are Conv and the MatMul/Gemm nodes whose weight is a
constant (:func:`onnx_quant_candidates`), their outputs left in float (one MatMulIntegerToFloat
each, no Q/DQ pair before the float ops that follow), plus the Adds that sum the decode head's
Conv branches (ONNX Runtime adds their uint8 outputs in one QLinearAdd instead of dequantizing
each 128x128x256 branch first; never a residual Add, whose int8 costs accuracy), and the ReLU after
that sum (the quantizer folds it into the sum's uint8 range). The GELUs, which
the exporter writes below opset 20 as five nodes that ONNX Runtime cannot fuse once their input is
dequantized, become one Gelu node each (:func:`fuse_erf_gelu`). MiT-B0 512x512 on an Intel Xeon
with AVX-512 VNNI and AMX, int8 against fp32, batch 1 / batch 8, in the same rounds
(benchmarks/RESULTS.md, "Deploy speed"): 1.18x / 1.14x before these, 1.34x / 1.34x with the Gelu,
1.55x / 1.47x with the sums and the ReLU too.
Calibration streams the calibration images through a ``CalibrationDataReader``.

TensorRT cannot build that model: it takes int8 with zero point 0 only ("TRT only supports symmetric
quantization"). ``symmetric=True`` (``quantize.backend_kwargs: {symmetric: true}``) writes int8
activations with zero point 0 instead, for TensorRT; ONNX Runtime runs it too, but its s8s8 kernels
lose most of the CPU speed-up (MiT-B0 512x512 on the Intel Xeon with AVX-512 VNNI and AMX: 1.08x
fp32's speed at batch 1 and 8, against 1.51x and 1.47x for uint8; mIoU the same within 0.04 points
on two real sets). `segformer.deploy.trt.tensorrt_refuses` tells the two apart.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segformer.errors import SpecError
from segformer.fileio import atomic_output

from ..onnx_export import module_path_of_node
from .patterns import LayerRule, nothing_to_quantize, select_names

log = logging.getLogger(__name__)

__all__ = ["quantize_onnx_static", "fuse_erf_gelu", "onnx_quant_candidates", "OnnxQuantSummary", "ORT_ALGORITHMS", "ORT_KWARGS"]

# No "entropy": ONNX Runtime's quantize_static runs its entropy calibrator with 128 histogram bins for
# 128 quantized bins (num_bins cannot be passed through it), one candidate threshold, the full range:
# it wrote exactly minmax's model, byte for byte (MiT-B0, 2026-12-06), under another name.
ORT_ALGORITHMS = {"minmax": "MinMax", "max": "MinMax", "percentile": "Percentile"}
ORT_KWARGS = ("per_channel", "fuse_gelu", "symmetric")  # the quantize.backend_kwargs quantize_onnx_static takes
QUANT_OP_TYPES = ("Conv", "MatMul", "Gemm")
_PARAM_SUFFIX = re.compile(r"\.(weight|bias|weight_[a-z]+)$")


@dataclass(frozen=True)
class OnnxQuantSummary:
    output: Path
    quantized_nodes: tuple[str, ...]
    skipped_nodes: tuple[str, ...]
    calibration_batches: int


def onnx_quant_candidates(model, activation_matmuls: bool = False,
                          branch_adds: bool = False) -> tuple[list[tuple[str, str]], dict[str, list[str]]]:
    """(node name, op type) of quantizable nodes, and each node's module path(s) from its weights.
    Quantizable: every Conv, and the MatMul/Gemm nodes with a constant weight; with
    `activation_matmuls` also the products of two activations (attention); with `branch_adds` the
    Adds that sum Conv outputs, at least one of them resized or itself such a sum (the decode
    head's branches), never a residual Add, and a Relu that follows such a sum. A sum also answers
    to the names and module paths of the branches it reads, so a skip list that names a branch's
    Conv keeps in float every sum that it reaches (and the Relu)."""
    initializers = {i.name for i in model.graph.initializer}
    # Weights are sometimes behind a Transpose/Identity of an initializer: follow one hop.
    produced_from = {}
    for node in model.graph.node:
        if node.op_type in ("Transpose", "Identity", "Cast") and node.input and node.input[0] in initializers:
            for out in node.output:
                produced_from[out] = node.input[0]
    producer = {out: node for node in model.graph.node for out in node.output}
    summed: set[str] = set()  # outputs of the branch Adds found so far (the graph is in topological order)

    def branch(name: str) -> bool:
        node = producer.get(name)
        return node is not None and (node.op_type == "Conv" or name in summed
                                     or (node.op_type == "Resize" and branch(node.input[0])))

    def feeding(name: str) -> str:  # the candidate behind a branch input (through its Resize)
        node = producer[name]
        return feeding(node.input[0]) if node.op_type == "Resize" else node.name

    candidates, aliases = [], {}
    for index, node in enumerate(model.graph.node):
        if (node.op_type == "Add" and branch_adds and len(node.input) == 2 and all(branch(i) for i in node.input)
                and any(i in summed or producer[i].op_type == "Resize" for i in node.input)):
            summed.update(node.output)  # a sum of upsampled branches (two Convs alone: a backbone's own Add)
        elif node.op_type == "Relu" and node.input[0] in summed:
            pass  # the quantizer folds it into the sum's uint8 range: no DequantizeLinear, Relu, QuantizeLinear
        elif node.op_type not in QUANT_OP_TYPES:
            continue
        if (not activation_matmuls and node.op_type in ("MatMul", "Gemm")
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
        if node.op_type in ("Add", "Relu"):  # a branch sum, or the Relu after one
            paths += [path for i in node.input for path in (feeding(i), *aliases.get(feeding(i), ()))]
        candidates.append((name, node.op_type))
        aliases[name] = sorted(set(paths) | ({from_name} if from_name else set()))
    return candidates, aliases


GELU_OPSET = 20  # the first opset with a Gelu operator


def fuse_erf_gelu(model) -> int:
    """Replace each ``x * 0.5 * (1 + erf(x / sqrt(2)))`` subgraph (how the exporter writes GELU
    below opset 20) by one standard ``Gelu`` node, raising the model's opset to 20 with onnx's
    version converter first; return the number fused. The model is changed in place only when the
    whole rewrite succeeds (0: it is left as it was).

    Why, before quantizing: the GELU's input is a quantized Conv's output (the Mix-FFN's depthwise
    Conv), so in a QDQ graph it comes from a DequantizeLinear with two consumers (the Div and the
    Mul). ONNX Runtime gives each consumer its own copy of that DequantizeLinear, which also keeps
    it from fusing the GELU; in float graphs it fuses it. One Gelu node has one input.
    """
    import onnx
    from onnx import helper, numpy_helper, version_converter

    def constants(graph) -> dict[str, float]:
        """Scalar constants (rank 0 or 1, one value: they broadcast without changing a shape)."""
        inputs = {i.name for i in graph.input}  # an initializer that is also an input can be fed
        values = {}
        for init in graph.initializer:
            if len(init.dims) <= 1 and math.prod(init.dims) == 1 and init.name not in inputs:
                values[init.name] = float(numpy_helper.to_array(init).reshape(()))
        for node in graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                tensor = node.attribute[0].t
                if len(tensor.dims) <= 1 and math.prod(tensor.dims) == 1:
                    values[node.output[0]] = float(numpy_helper.to_array(tensor).reshape(()))
        return values

    def find(graph) -> list[tuple[str, str, list[int]]]:
        """(x, y, node positions) of each GELU: the Div/Mul, Erf, Add and the two Muls, in any operand order."""
        value = constants(graph)
        position = {node.output[0]: i for i, node in enumerate(graph.node)}  # output names are unique
        producer = {out: node for node in graph.node for out in node.output}
        consumers: dict[str, list] = {}
        for node in graph.node:
            for name in node.input:
                consumers.setdefault(name, []).append(node)
        outputs = {o.name for o in graph.output}

        def only_consumer(name: str, op_type: str):
            nodes = consumers.get(name, [])
            if name in outputs or len(nodes) != 1 or nodes[0].op_type != op_type:
                return None
            return nodes[0]

        def other(node, name: str) -> str:
            return node.input[1] if node.input[0] == name else node.input[0]

        def near(name: str, target: float) -> bool:
            return name in value and abs(value[name] - target) < 1e-4 * abs(target)

        found = []
        for erf in graph.node:
            if erf.op_type != "Erf":
                continue
            scale = producer.get(erf.input[0])
            if scale is None or only_consumer(erf.input[0], "Erf") is None:
                continue
            if scale.op_type == "Div" and near(scale.input[1], 2 ** 0.5):
                x = scale.input[0]
            elif scale.op_type == "Mul" and near(scale.input[1], 2 ** -0.5):
                x = scale.input[0]
            elif scale.op_type == "Mul" and near(scale.input[0], 2 ** -0.5):
                x = scale.input[1]
            else:
                continue
            add = only_consumer(erf.output[0], "Add")
            if add is None or not near(other(add, erf.output[0]), 1.0):
                continue
            first = only_consumer(add.output[0], "Mul")
            if first is None:
                continue
            second = only_consumer(first.output[0], "Mul")
            if second is None:
                continue
            # 0.5 and x multiply (1 + erf) in either order: (half * a) * x or (x * a) * half
            pair = {other(first, add.output[0]), other(second, first.output[0])}
            half = next((n for n in pair if near(n, 0.5)), None)
            if half is None or pair - {half} != {x}:
                continue
            found.append((x, second.output[0], [position[n.output[0]] for n in (scale, erf, add, first, second)]))
        return found

    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in model.graph.node for a in n.attribute):
        return 0  # If/Loop/Scan bodies may read what the rewrite removes; not a graph the exporter writes
    if not find(model.graph):
        return 0
    work = copy.copy(model)
    opset = next((o.version for o in work.opset_import if o.domain in ("", "ai.onnx")), 0)
    try:
        if opset < GELU_OPSET:
            work = version_converter.convert_version(work, GELU_OPSET)
        graph = work.graph
        matches = find(graph)
        fused = {i for _, _, positions in matches for i in positions}
        gelus = {positions[-1]: helper.make_node("Gelu", [x], [y], name=f"{graph.node[positions[-1]].name or y}_gelu")
                 for x, y, positions in matches}
        gone = {out for i in fused - set(gelus) for out in graph.node[i].output}
        # each Gelu where its last Mul was: after x is computed, before y is used
        nodes = [gelus.get(i, node) for i, node in enumerate(graph.node) if i in gelus or i not in fused]
        # the fused nodes' constants (sqrt 2, 1, 0.5) that nothing reads now: ONNX Runtime warns of each
        read = {name for node in nodes for name in node.input} | {o.name for o in graph.output}
        unread = {name for i in fused for name in graph.node[i].input} - read
        nodes = [node for node in nodes if not (node.op_type == "Constant" and node.output[0] in unread)]
        initializers = [init for init in graph.initializer if init.name not in unread]
        infos = [info for info in graph.value_info if info.name not in gone]
        for field, kept in ((graph.node, nodes), (graph.initializer, initializers), (graph.value_info, infos)):
            kept = [copy.copy(proto) for proto in kept]  # copies: the originals go with the del
            del field[:]
            field.extend(kept)
        onnx.checker.check_model(work)
    except Exception as exc:  # onnx raises several kinds (converter, checker); the model stays as it was
        log.warning("GELU left as exported (int8 runs slower in ONNX Runtime): rewriting it at opset %d "
                    "failed (%s)", GELU_OPSET, exc)
        return 0
    model.CopyFrom(work)
    return len(matches)


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


class _LastResortButRoot(logging.Handler):
    """Stands in for "no handler" on the root logger: the records of named loggers (this project's
    warnings) go to `logging.lastResort` as they would without it; the root's own (ONNX Runtime's
    quantizer calling `logging.info(...)`) are dropped."""

    def emit(self, record: logging.LogRecord) -> None:
        last = logging.lastResort
        if record.name != "root" and last is not None and record.levelno >= last.level:
            last.handle(record)


@contextlib.contextmanager
def _root_logging_left_alone() -> Iterator[None]:
    """ONNX Runtime's quantizer logs through the root logger (`logging.info(...)` at module level),
    which calls `logging.basicConfig()` when the root has no handler yet: every later warning of the
    process then printed as "WARNING:segformer.engine.predictor:...". A handler on the root for the
    duration keeps it as it was; it passes on what the process's other loggers say (calibration
    images' warnings), as Python does for a root without handlers."""
    root = logging.getLogger()
    if root.handlers:
        yield
        return
    stand_in = _LastResortButRoot()
    root.addHandler(stand_in)
    try:
        yield
    finally:
        root.removeHandler(stand_in)


def quantize_onnx_static(
    model_path: str | Path,
    output_path: str | Path,
    calibration_batches: Iterable[np.ndarray],
    *,
    rules: Sequence[LayerRule] = (),
    skip_names: Sequence[str] = (),
    algorithm: str = "minmax",
    per_channel: bool = True,
    fuse_gelu: bool = True,
    symmetric: bool = False,
) -> OnnxQuantSummary:
    """Write a QDQ int8 copy of ``model_path`` to ``output_path`` (atomically). ``fuse_gelu``: write
    the GELUs as opset-20 Gelu nodes first (:func:`fuse_erf_gelu`; TensorRT parses Gelu from 10.0,
    the version the ``tensorrt`` extra asks for); false keeps the exported graph's operators, for a
    runtime without Gelu. ``symmetric``: int8 activations with zero point 0, the model TensorRT builds
    (slower on ONNX Runtime's CPU kernels; see the module's notes)."""
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
        raise SpecError(
            f"quantize.algorithm {algorithm!r} is not supported by the onnxruntime backend; use minmax"
            + (" (its entropy calibration gives the min-max range: quantize_static cannot set its histogram bins; "
               "TensorRT's entropy calibrator is gen_trt_engine's, on the float model)" if algorithm == "entropy" else "")
        )
    output_path = Path(output_path)
    with atomic_output(output_path) as out_tmp:
        work = out_tmp.parent / f"{out_tmp.name}.work"  # a subfolder: scratch, never moved into place
        work.mkdir()
        prepared = work / "prepared.onnx"
        with _root_logging_left_alone():
            quant_pre_process(str(model_path), str(prepared), skip_symbolic_shape=True)
        model = onnx.load(str(prepared))
        if fuse_gelu:
            fuse_erf_gelu(model)
        candidates, aliases = onnx_quant_candidates(model, branch_adds=True)
        onnx.save(model, str(prepared))  # with any generated node names
        chosen = select_names(candidates, rules, skip_names, aliases=aliases)
        kind_of = dict(candidates)
        if not {kind_of[name] for name in chosen} & set(QUANT_OP_TYPES):  # the decode head's sums alone are no int8 model
            raise nothing_to_quantize(rules, skip_names, "Conv/MatMul/Gemm node",
                                      f" (nodes look like {[c[0] for c in candidates[:3]]}, modules like "
                                      f"{[a for c in candidates[:3] for a in aliases[c[0]]]})")
        skipped = tuple(name for name, _ in candidates if name not in set(chosen))
        input_name = next(i.name for i in model.graph.input if i.name not in {x.name for x in model.graph.initializer})

        reader_impl = _Reader(input_name, calibration_batches)

        class Reader(CalibrationDataReader):
            def get_next(self):
                return reader_impl.get_next()

        with _root_logging_left_alone():
            quantize_static(
                str(prepared),
                str(out_tmp),
                Reader(),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=per_channel,
                nodes_to_quantize=list(chosen),
                op_types_to_quantize=[*QUANT_OP_TYPES, "Add", "Relu"],
                calibrate_method=getattr(CalibrationMethod, ORT_ALGORITHMS[algorithm]),
                # A MatMul's output stays float: ONNX Runtime then runs DQ -> MatMul as one MatMulIntegerToFloat
                # instead of QLinearMatMul followed by a DequantizeLinear for the float LayerNorm/Add after it
                # (MiT-B0 512px: 1.36x -> 1.48x the speed of fp32 at batch 8, 1.22x -> 1.27x at batch 1).
                extra_options={"MatMulConstBOnly": True, "ActivationSymmetric": bool(symmetric), "WeightSymmetric": True,
                               "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"],
                               # TensorRT's parser has refused ONNX Runtime's int32 bias DequantizeLinear
                               # (onnx-tensorrt#850, TensorRT#3360): for it the biases stay float
                               "QuantizeBias": not symmetric},
            )
        if reader_impl.count == 0:
            raise ValueError("calibration produced no batches; check the calibration images folder")
    return OnnxQuantSummary(output_path, tuple(chosen), skipped, reader_impl.count)
