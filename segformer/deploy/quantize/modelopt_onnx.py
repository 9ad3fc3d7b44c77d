"""Backend ``modelopt.onnx``: NVIDIA ModelOpt's ONNX PTQ (int8 Q/DQ for TensorRT).

Works on the CPU with ``calibration_eps=["cpu"]`` when ``nvidia-modelopt`` is installed next to
onnx_graphsurgeon, onnxslim and polygraphy (the ``[quant]`` extra) without its ``[onnx]`` extra,
which would downgrade onnx and pull onnxruntime-gpu. ``high_precision_dtype`` stays fp32 so the
non-quantized parts of the graph keep running in ONNX Runtime on a CPU.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segformer.deploy.onnx_signature import load_onnx
from segformer.errors import SpecError
from segformer.fileio import atomic_output

from .._deps import QUANT_HINT, require
from .ort_static import onnx_quant_candidates
from .patterns import LayerRule, nothing_to_quantize, select_names

__all__ = ["quantize_onnx_modelopt", "MODELOPT_ONNX_METHODS"]

MODELOPT_ONNX_METHODS = {"minmax": "max", "max": "max", "entropy": "entropy"}
_EPS = {"cpu": ["cpu"], "cuda": ["cuda:0", "cpu"], "trt": ["trt", "cuda:0", "cpu"]}


def quantize_onnx_modelopt(
    model_path: str | Path,
    output_path: str | Path,
    calibration_data: np.ndarray,
    *,
    rules: Sequence[LayerRule] = (),
    skip_names: Sequence[str] = (),
    algorithm: str = "minmax",
    device: str = "cpu",
    **backend_kwargs: Any,
) -> list[str]:
    """Write an int8 Q/DQ model to ``output_path``; returns the names of the nodes chosen."""
    require("modelopt.onnx.quantization", purpose="quantize backend 'modelopt.onnx'", hint=QUANT_HINT)
    import onnx
    from modelopt.onnx.quantization import quantize as modelopt_quantize

    if algorithm not in MODELOPT_ONNX_METHODS:
        raise SpecError(f"quantize.algorithm {algorithm!r} is not supported by modelopt.onnx int8; use one of {sorted(MODELOPT_ONNX_METHODS)}")
    model = load_onnx(model_path, load_external_data=True)
    candidates, aliases = onnx_quant_candidates(model, activation_matmuls=True)  # TensorRT has int8 attention
    chosen = select_names(candidates, rules, skip_names, aliases=aliases)
    if not chosen:
        raise nothing_to_quantize(rules, skip_names, "Conv/MatMul/Gemm node")
    excluded = [re.escape(name) + "$" for name, _ in candidates if name not in set(chosen)]
    eps = _EPS.get(device.split(":")[0], ["cpu"])
    with atomic_output(output_path) as out_tmp:
        work = out_tmp.parent / f"{out_tmp.name}.work"  # a subfolder: scratch, never moved into place
        work.mkdir()
        source = work / "named.onnx"
        onnx.save(model, str(source))  # node names as matched above
        options: dict[str, Any] = {
            "quantize_mode": "int8",
            "calibration_data": np.ascontiguousarray(calibration_data, dtype=np.float32),
            "calibration_method": MODELOPT_ONNX_METHODS[algorithm],
            "calibration_eps": eps,
            "nodes_to_exclude": excluded or None,
            "high_precision_dtype": "fp32",
            "output_path": str(out_tmp),
            "log_level": "WARNING",
        }
        options.update(backend_kwargs)
        # ModelOpt writes its intermediate files next to output_path and deletes them at the end;
        # with backend_kwargs keep_intermediate_files: true they are moved in beside the model.
        modelopt_quantize(str(source), **options)
    return list(chosen)
