"""Save and reload quantized PyTorch artifacts (TAO names and layout).

``quantized_model_torchao.pth`` and ``quantized_model_modelopt.pth`` hold the weights under
``model_state_dict`` (as TAO documents), plus what is needed to rebuild the quantized module
structure before loading them: the backend, the quantized module names and, for ModelOpt, its
``modelopt_state``. Reloading builds the float model from the spec's ``model`` section,
re-applies the recorded quantization, then loads the weights; nothing is unpickled beyond
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .._deps import QUANT_HINT, require

if TYPE_CHECKING:
    from segformer.config import ModelConfig

__all__ = ["ARTIFACT_FORMAT", "ARTIFACT_NAMES", "save_quantized_model", "load_quantized_model", "read_artifact"]

ARTIFACT_FORMAT = "segformer-automl-quantized"
ARTIFACT_NAMES = {
    "torchao": "quantized_model_torchao.pth",
    "modelopt.pytorch": "quantized_model_modelopt.pth",
    "modelopt.onnx": "quantized_model_modelopt.onnx",
    "onnxruntime": "quantized_model_onnxruntime.onnx",
}


def _safe_globals() -> list[Any]:
    """Classes torchao/modelopt put in state dicts, allowed for ``weights_only`` loading."""
    allowed: list[Any] = []
    try:  # torchao's quantized weight tensor subclasses
        import torchao.quantization as tq

        for name in ("Int8Tensor", "AffineQuantizedTensor", "LinearActivationQuantizedTensor"):
            if hasattr(tq, name):
                allowed.append(getattr(tq, name))
        from torchao.dtypes import AffineQuantizedTensor, PlainLayout
        from torchao.dtypes.uintx.plain_layout import PlainAQTTensorImpl

        allowed += [AffineQuantizedTensor, PlainLayout, PlainAQTTensorImpl]
        from torchao.quantization.quant_primitives import ZeroPointDomain

        allowed.append(ZeroPointDomain)
    except ImportError:
        pass
    return allowed


def save_quantized_model(
    path: str | Path,
    model: nn.Module,
    *,
    backend: str,
    quantized_modules: list[str],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the artifact atomically (temporary file + rename)."""
    payload: dict[str, Any] = {
        "format": ARTIFACT_FORMAT,
        "version": 1,
        "backend": backend,
        "quantized_modules": list(quantized_modules),
        "model_state_dict": model.state_dict(),
    }
    if backend == "modelopt.pytorch":
        mto = require("modelopt.torch.opt", purpose="saving a modelopt.pytorch artifact", hint=QUANT_HINT)
        payload["modelopt_state"] = mto.modelopt_state(model)
    payload.update(extra or {})
    from segformer.fileio import atomic_write

    return atomic_write(path, lambda handle: torch.save(payload, handle))


def read_artifact(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"quantized model not found: {path}")
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - report which file and why, whatever failed
        raise RuntimeError(
            f"cannot load quantized model {path} with weights_only=True ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:300]}); is the quantization backend installed ({QUANT_HINT})?"
        ) from err
    if not isinstance(payload, dict) or "model_state_dict" not in payload:
        from segformer.errors import CheckpointError

        raise CheckpointError(f"{path} is not a quantized model (it holds no 'model_state_dict'; a float checkpoint?): "
                              "with is_quantized=true give the quantized model (quantize/quantized_model_*.onnx or .pth) "
                              "or the folder that holds it, such as a search's best/")
    return payload


def load_quantized_model(path: str | Path, model_cfg: ModelConfig, num_classes: int, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the quantized model described by ``path`` for the spec's ``model`` section."""
    from segformer.model import build_segformer

    payload = read_artifact(path)
    backend = payload.get("backend") or ("modelopt.pytorch" if "modelopt_state" in payload else "torchao")
    model = build_segformer(model_cfg, num_classes, load_pretrained=False).eval()
    state = payload["model_state_dict"]
    if backend == "torchao":
        from .torch_backends import apply_torchao

        apply_torchao(model, payload.get("quantized_modules", []))
        model.load_state_dict(state, assign=True)
    elif backend == "modelopt.pytorch":
        mto = require("modelopt.torch.opt", purpose="loading a modelopt.pytorch artifact", hint=QUANT_HINT)
        if "modelopt_state" not in payload:
            raise ValueError(f"{path}: a modelopt artifact needs 'modelopt_state' to rebuild its quantizers")
        model = mto.restore_from_modelopt_state(model, payload["modelopt_state"])
        model.load_state_dict(state)
    else:
        raise ValueError(f"{path}: unknown quantization backend {backend!r}")
    return model.to(device).eval()
