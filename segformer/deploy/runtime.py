"""Predictors for exported and quantized models (the engine's ``Predictor`` protocol).

Each predictor takes normalized float32 images (N, 3, H, W) as a torch tensor and returns
logits (N, K, h, w) as a float32 CPU torch tensor, so evaluate and inference share one
decode + metric path for PyTorch, ONNX Runtime, TensorRT and quantized models.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ._deps import TENSORRT_HINT, require
from .onnx_signature import read_onnx_signature

if TYPE_CHECKING:
    from segformer.config import ModelConfig

__all__ = ["OnnxPredictor", "TrtPredictor", "load_quantized_predictor", "default_ort_providers"]


def default_ort_providers(on_cpu: bool = False) -> list[str]:
    """CUDA then CPU when onnxruntime-gpu and a GPU are there; always ends with CPU."""
    ort = require("onnxruntime", purpose="ONNX Runtime inference", hint="pip install onnxruntime")
    available = ort.get_available_providers()
    wanted = [] if on_cpu else ["CUDAExecutionProvider"]
    return [p for p in wanted if p in available] + ["CPUExecutionProvider"]


def _chunks(images: torch.Tensor, size: int | None) -> list[torch.Tensor]:
    if size is None or images.shape[0] <= size:
        return [images]
    return list(torch.split(images, size))


class OnnxPredictor:
    """Runs an ONNX model (float or QDQ int8) in ONNX Runtime.

    A model exported with a static batch is fed in chunks of that batch (the last chunk
    padded), so any evaluate batch size works with any export.
    """

    def __init__(
        self,
        path: str | Path,
        providers: Sequence[str] | None = None,
        *,
        num_threads: int | None = None,
    ) -> None:
        ort = require("onnxruntime", purpose="ONNX Runtime inference", hint="pip install onnxruntime")
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {self.path}")
        self.signature = read_onnx_signature(self.path)
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: ORT warns about unused initializers etc.
        if num_threads:
            options.intra_op_num_threads = num_threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(self.path), sess_options=options, providers=list(providers or default_ort_providers())
        )
        shape = self.signature.input_shape
        self.input_size: tuple[int, int] | None = (
            (int(shape[2]), int(shape[3])) if all(isinstance(d, int) for d in shape[2:4]) else None
        )
        k = self.signature.num_classes
        if k is None:
            raise ValueError(f"{self.path}: output {self.signature.output_shape} has no static class axis")
        self.num_classes: int = k
        self.static_batch: int | None = self.signature.static_batch

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.signature.output_name], {self.signature.input_name: batch})[0]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        outputs = []
        for chunk in _chunks(images, self.static_batch):
            batch = np.ascontiguousarray(chunk.detach().cpu().numpy(), dtype=np.float32)
            n = batch.shape[0]
            if self.static_batch is not None and n < self.static_batch:
                pad = np.zeros((self.static_batch - n, *batch.shape[1:]), dtype=np.float32)
                batch = np.concatenate([batch, pad])
            outputs.append(self._run(batch)[:n])
        # one chunk (the usual case) is returned as ONNX Runtime gave it: no copy of the logits
        logits = outputs[0] if len(outputs) == 1 else np.concatenate(outputs)
        return torch.from_numpy(logits.astype(np.float32, copy=False))


class TrtPredictor:
    """Runs a serialized TensorRT engine (built by ``gen_trt_engine``) on the current CUDA GPU.

    Uses TensorRT 10's named-tensor API; inputs larger than the profile's max batch are split.
    """

    def __init__(self, path: str | Path, *, device: int | str = 0) -> None:
        trt = require("tensorrt", purpose="TensorRT inference", hint=TENSORRT_HINT)
        if not torch.cuda.is_available():
            raise RuntimeError("TensorRT inference needs a CUDA GPU; none is visible to PyTorch")
        from .trt import engine_io

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"TensorRT engine not found: {self.path}")
        self.device = torch.device(f"cuda:{device}" if isinstance(device, int) else device)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise RuntimeError(
                f"{self.path}: TensorRT could not deserialize the engine (built with another "
                "TensorRT version or GPU? rebuild it with gen_trt_engine on this machine)"
            )
        self.context = self.engine.create_execution_context()
        self.io = engine_io(self.engine, trt)
        _, c, h, w = self.io.input_shape
        self.input_size = (h, w) if h > 0 and w > 0 else None
        k = self.io.output_shape[1]
        if k <= 0:
            raise ValueError(f"{self.path}: output {self.io.output_shape} has no static class axis")
        self.num_classes = int(k)
        self.max_batch = self.io.max_batch

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        outputs = []
        stream = torch.cuda.Stream(self.device)
        for chunk in _chunks(images, self.max_batch):
            x = chunk.to(self.device, torch.float32).contiguous()
            self.context.set_input_shape(self.io.input_name, tuple(x.shape))
            out_shape = tuple(self.context.get_tensor_shape(self.io.output_name))
            y = torch.empty(out_shape, device=self.device, dtype=torch.float32)
            self.context.set_tensor_address(self.io.input_name, x.data_ptr())
            self.context.set_tensor_address(self.io.output_name, y.data_ptr())
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError(f"TensorRT execution failed for a batch of shape {tuple(x.shape)}")
            stream.synchronize()
            outputs.append(y.float().cpu())
        return torch.cat(outputs)


class _TorchQuantPredictor:
    """A quantized PyTorch model behind the Predictor protocol."""

    input_size: tuple[int, int] | None = None

    def __init__(self, model: torch.nn.Module, num_classes: int, device: torch.device) -> None:
        self.model = model.eval()
        self.num_classes = num_classes
        self.device = device

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images.to(self.device)).float().cpu()


def load_quantized_predictor(
    path: str | Path, model_cfg: ModelConfig, num_classes: int, device: str | torch.device = "cpu"
):
    """Load a ``quantize`` artifact as a Predictor.

    ``.onnx`` (onnxruntime or modelopt.onnx QDQ) runs in ONNX Runtime; ``.pth`` artifacts
    (torchao or modelopt.pytorch) are rebuilt from ``model_cfg`` (the spec's ``model`` section),
    re-quantized with the recorded settings, then loaded from ``model_state_dict``.
    """
    path = Path(path)
    if path.suffix == ".onnx":
        on_cpu = torch.device(device).type == "cpu"
        return OnnxPredictor(path, providers=default_ort_providers(on_cpu=on_cpu))
    from .quantize.artifacts import load_quantized_model

    device = torch.device(device)
    model = load_quantized_model(path, model_cfg, num_classes, device)
    return _TorchQuantPredictor(model, num_classes, device)


