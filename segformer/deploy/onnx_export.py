"""ONNX export of a segmentation model with TAO's tensor names and a dynamic batch axis.

The exported graph has one input ``input`` (N, C, H, W) float32, normalized like training, and
one output ``output`` (N, K, H/4, W/4) with the raw logits, exactly what ``SegFormer.forward``
returns. Callers upsample and argmax, as for every other runtime.

Exporter choice (measured on this project's CPU machines, torch 2.15): the torch.export-based
exporter (``dynamo=True``) gives a graph about 4x smaller than the TorchScript exporter and
proper symbolic output shapes; the TorchScript exporter is deprecated and warns on every call.
So we use the dynamo exporter, silence its progress logging, embed the weights in one file
(``external_data=False``; models above 2 GiB cannot be one protobuf and get a ``.data`` file next
to the ``.onnx``), and fall back to the TorchScript exporter only when the dynamo exporter cannot
trace a model. A batch-1 example would specialise the batch axis to 1, so dynamic-batch exports
trace with a batch of 2.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from segformer.errors import SpecError
from segformer.fileio import atomic_output

from .onnx_signature import read_onnx_signature
from .runtime import OnnxPredictor

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "export_onnx",
    "name_nodes_by_module",
    "module_path_of_node",
    "onnx_parity",
    "ParityError",
]

INPUT_NAME = "input"
OUTPUT_NAME = "output"
DYNAMIC_EXAMPLE_BATCH = 2
_DYNAMO_MIN_OPSET = 18
# Below 17 the torch.export route always fails: its graph holds LayerNormalization (an opset-17 op),
# which onnx's converter cannot take lower. Those opsets go to the TorchScript exporter directly.
_LAYER_NORM_OPSET = 17
MIN_OPSET = 14  # the lowest opset these models export to (measured: 13 fails on the attention)
_PROTOBUF_LIMIT = 2**31 - 2**26  # 2 GiB less some headroom for the graph itself

log = logging.getLogger(__name__)


class ParityError(RuntimeError):
    """ONNX Runtime's output differs from PyTorch's by more than the tolerance."""


@contextlib.contextmanager
def _quiet_exporter(verbose: bool) -> Iterator[None]:
    """Silence the exporters' progress logs and deprecation chatter unless ``verbose``."""
    if verbose:
        yield
        return
    names = ("torch.onnx", "torch.export", "torch._export", "onnxscript", "onnx_ir", "torch._dynamo")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _param_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def _export_dynamo(model, example, path: Path, opset: int, dynamic: bool, external: bool, verbose: bool):
    import onnx
    import onnx_ir

    dynamic_shapes = None
    if dynamic:
        # One positional argument; a tuple of per-argument specs avoids naming forward's parameter.
        dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},)
    # The exporter implements opset >= 18; it converts lower opsets with onnx's C converter,
    # which drops the node metadata we name nodes from. So: export at 18, optimize, name the
    # nodes, then convert the opset ourselves.
    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        opset_version=max(opset, _DYNAMO_MIN_OPSET),
        dynamic_shapes=dynamic_shapes,
        verbose=verbose,
        optimize=False,
    )
    program.optimize()
    name_nodes_by_module(program.model)
    proto = onnx_ir.to_proto(program.model)
    if opset < _DYNAMO_MIN_OPSET:
        _drop_default_noop_with_empty_axes(proto)
        proto = onnx.version_converter.convert_version(proto, opset)
    if external:
        onnx.save(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=f"{path.name}.data")
    else:
        onnx.save(proto, str(path))


def _drop_default_noop_with_empty_axes(proto) -> None:
    """Remove ``noop_with_empty_axes=0`` (its default) from the Reduce nodes before converting down
    from opset 18. The exporter writes it on every ReduceMean, and onnx's converter keeps it on an
    opset-17 ReduceMean, which has no such attribute: the FAN backbones' exports failed the checker."""
    for node in proto.graph.node:
        if node.op_type.startswith("Reduce"):
            kept = [a for a in node.attribute if not (a.name == "noop_with_empty_axes" and a.i == 0)]
            if len(kept) != len(node.attribute):
                del node.attribute[:]
                node.attribute.extend(kept)


def name_nodes_by_module(graph_model) -> None:
    """Name each node ``/<module/path>/<OpType>`` from the exporter's scope metadata.

    The dynamo exporter names nodes ``node_MatMul_26`` and folds Linear weights into anonymous
    initializers, which would leave ``quantize.skip_names`` and TensorRT ``layers_precision``
    nothing meaningful to match. These names follow the TorchScript exporter's convention
    (``/backbone/stages/0/blocks/1/attn/q/MatMul``) and the bulky per-node metadata (stack
    traces, FX nodes) is dropped.
    """
    import ast

    used: dict[str, int] = {}
    for node in graph_model.graph.all_nodes():
        props = node.metadata_props
        scopes = props.get("pkg.torch.onnx.name_scopes")
        module = ""
        if scopes:
            try:
                names = [s for s in ast.literal_eval(scopes)[:-1] if s]  # last entry is the op
            except (ValueError, SyntaxError):
                names = []
            module = names[-1] if names else ""
        if not module:  # rewritten nodes lose metadata; a parameter input still names the module
            params = [v.name for v in node.inputs[1:] if v is not None and v.const_value is not None and v.name]
            module = next((n.rsplit(".", 1)[0] for n in params if n.endswith((".weight", ".bias"))), "")
        base = "/" + "/".join(filter(None, [module.replace(".", "/"), node.op_type]))
        count = used.get(base, 0)
        used[base] = count + 1
        node.name = base if count == 0 else f"{base}_{count}"
        for key in list(props):
            if key.startswith("pkg.torch.onnx.") or key == "namespace":
                del props[key]


def _export_torchscript(model, example, path: Path, opset: int, dynamic: bool, verbose: bool):
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic else None
    torch.onnx.export(
        model,
        (example,),
        str(path),
        dynamo=False,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        opset_version=opset,
        dynamic_axes=axes,
        do_constant_folding=True,
        verbose=verbose,
    )


def check_export_settings(batch_size: int, opset_version: int, input_channel: int, input_height: int,
                          input_width: int) -> None:
    """The export section's values this exporter takes, or one SpecError (also `segformer validate
    --action export`'s check)."""
    if batch_size == 0 or batch_size < -1:
        raise SpecError(f"export.batch_size must be -1 (dynamic) or >= 1, got {batch_size}")
    if opset_version < MIN_OPSET:
        raise SpecError(f"export.opset_version must be {MIN_OPSET} or more (the attention exports as ONNX's "
                        f"scaled-dot-product pattern from opset {MIN_OPSET}), got {opset_version}; TAO's default is 17")
    if input_channel not in (1, 3):
        raise SpecError(f"export.input_channel must be 1 or 3, got {input_channel}")
    if input_height < 32 or input_width < 32:
        raise SpecError(
            f"export.input_height and input_width must be at least 32 (the deepest feature stride), "
            f"got {input_height}x{input_width}; the backbone's own size rule is checked by the export action"
        )


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    input_channel: int = 3,
    input_height: int,
    input_width: int,
    batch_size: int = -1,
    opset_version: int = 17,
    verbose: bool = False,
) -> Path:
    """Export ``model`` to ``path`` (written atomically) and return the path.

    ``batch_size`` -1 makes the batch axis dynamic; a positive value fixes it. The model is
    exported on the device its parameters are on (move it first for ``on_cpu``).
    """
    check_export_settings(batch_size, opset_version, input_channel, input_height, input_width)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dynamic = batch_size == -1
    example_batch = DYNAMIC_EXAMPLE_BATCH if dynamic else batch_size
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    example = torch.randn(example_batch, input_channel, input_height, input_width, device=device)
    external = _param_bytes(model) > _PROTOBUF_LIMIT
    if external:
        log.warning("model weights exceed 2 GiB: writing them to %s.data next to the .onnx", path.name)

    was_training = model.training
    model.eval()
    # The exporters write to a path themselves: a temporary one with the target's name (so an
    # external .data file keeps the name the graph refers to), moved into place once checked.
    try:
        with atomic_output(path) as tmp_path:
            with torch.no_grad(), _quiet_exporter(verbose):
                if opset_version < _LAYER_NORM_OPSET:
                    log.info("opset %d: exporting with the TorchScript exporter (the torch.export one needs opset %d "
                             "for LayerNormalization)", opset_version, _LAYER_NORM_OPSET)
                    _export_torchscript(model, example, tmp_path, opset_version, dynamic, verbose)
                    _check_exported(tmp_path, dynamic, batch_size)
                else:
                    _export_with_fallback(model, example, tmp_path, opset_version, dynamic, external, verbose, batch_size)
    finally:
        model.train(was_training)
    return path


def _export_with_fallback(model, example, path: Path, opset: int, dynamic: bool, external: bool, verbose: bool,
                          batch_size: int) -> None:
    """The torch.export exporter, and where it fails to trace or writes an invalid graph, the TorchScript one."""
    try:
        _export_dynamo(model, example, path, opset, dynamic, external, verbose)
        _check_exported(path, dynamic, batch_size)
    except Exception as err:  # noqa: BLE001 - a tracing failure or an invalid graph: the other exporter
        log.warning("torch.export-based ONNX export failed (%s: %s); retrying with the TorchScript exporter",
                    type(err).__name__, str(err).splitlines()[0][:200])
        for leftover in path.parent.iterdir():  # the folder is private to this export
            leftover.unlink()
        _export_torchscript(model, example, path, opset, dynamic, verbose)
        _check_exported(path, dynamic, batch_size)


def _check_exported(path: Path, dynamic: bool, batch_size: int) -> None:
    import onnx

    onnx.checker.check_model(str(path))
    sig = read_onnx_signature(path)
    if sig.input_name != INPUT_NAME or sig.output_name != OUTPUT_NAME:
        raise RuntimeError(f"exported names {sig.input_name!r}/{sig.output_name!r}, expected input/output")
    if dynamic and not sig.dynamic_batch:
        raise RuntimeError(f"batch axis was fixed at {sig.input_shape[0]} although batch_size is -1")
    if not dynamic and sig.static_batch != batch_size:
        raise RuntimeError(f"batch axis is {sig.input_shape[0]}, expected {batch_size}")


def onnx_parity(
    model: nn.Module,
    onnx_path: str | Path,
    images: torch.Tensor,
    *,
    atol: float = 1e-3,
    rtol: float = 1e-3,
    providers: list[str] | None = None,
) -> float:
    """Run ``images`` through PyTorch and ONNX Runtime and return the max abs logit difference.

    Raises :class:`ParityError` when the difference exceeds ``atol + rtol * max|torch logits|``.
    """
    predictor = OnnxPredictor(onnx_path, providers=providers)
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with torch.no_grad():
        expected = model(images.to(device)).float().cpu()
    got = predictor(images.cpu())
    if got.shape != expected.shape:
        raise ParityError(f"ONNX output shape {tuple(got.shape)} != PyTorch {tuple(expected.shape)}")
    diff = float((got - expected).abs().max())
    limit = atol + rtol * float(expected.abs().max())
    if not diff <= limit:  # also catches NaN
        raise ParityError(
            f"ONNX Runtime output differs from PyTorch by {diff:.3g} (> tolerance {limit:.3g}) on "
            f"{images.shape[0]} images; the export is not faithful (try another opset_version)"
        )
    return diff


def module_path_of_node(node_name: str) -> str:
    """``/backbone/stages/0/attn/q/MatMul_1`` -> ``backbone.stages.0.attn.q`` (see above)."""
    parts = [p for p in node_name.split("/") if p]
    return ".".join(parts[:-1])
