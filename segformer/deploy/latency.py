"""Latency of a SegFormer architecture on its deployment runtime: measured, not guessed.

What decides a model's speed is its architecture (``model.backbone.type``, the decoder's
``embed_dim``, the class count), its input size (``dataset.segment.img_size``: the export follows
it) and the precision it is deployed in, never its learning rate. `measure` builds the architecture
with random weights, exports it to ONNX (the export action's exporter), quantizes it for int8 (ONNX
Runtime's static QDQ quantization, as the quantize action's onnxruntime backend does, calibrated on
random inputs: the values do not change the speed) and times it on the target:

- ``onnxruntime`` (the default, CPU): a session with ``threads`` intra-op threads;
- ``torch``: the eager model (fp32 only) with ``torch.set_num_threads(threads)``;
- ``tensorrt``: needs TensorRT and a GPU; refused with the reason otherwise.

The latency is the median of ``runs`` timed calls after ``warmup`` untimed ones, batch ``batch``;
the record also holds the 90th percentile, the thread count, the ONNX file's size, the parameter
count and GFLOPs of one forward pass at batch 1 (``torch.utils.flop_counter``: a multiply-add
counts 2). `LatencyCache` keeps one record per architecture and target in a JSON file shared by
the processes of a search (a file lock; atomic writes), so each is measured once.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RUNTIMES = ("onnxruntime", "torch", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")
# The spec keys that make an architecture (their values decide the speed); with the deploy
# precision they are what a deploy-aware search searches.
STRUCTURE_KEYS = ("model.backbone.type", "dataset.segment.img_size", "model.decode_head.decoder_params.embed_dim")
PRECISION_KEY = "deploy.precision"  # not a spec key: the promotion's precision (quantize or not)


@dataclass(frozen=True)
class Target:
    """Where and how a model is timed."""

    runtime: str = "onnxruntime"
    batch: int = 1
    threads: int | None = None  # None: the cores this process may use
    warmup: int = 5
    runs: int = 15

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise ValueError(f"latency runtime {self.runtime!r} is not one of {', '.join(RUNTIMES)}")
        if self.batch < 1 or (self.threads is not None and self.threads < 1) or self.runs < 1 or self.warmup < 0:
            raise ValueError(f"latency batch, threads and runs must be positive, got {self}")

    @property
    def thread_count(self) -> int:
        return self.threads or len(os.sched_getaffinity(0))

    def describe(self) -> str:
        return f"{self.runtime}, batch {self.batch}, {self.thread_count} thread(s), median of {self.runs} warm runs"


def architecture(cfg: Any, precision: str = "fp32") -> dict[str, Any]:
    """What decides the speed of `cfg`'s model (an `ExperimentConfig`), as a JSON-able mapping."""
    size = cfg.dataset.segment.img_size
    height, width = (int(size[0]), int(size[1])) if isinstance(size, (list, tuple)) else (int(size), int(size))
    return {"backbone": str(cfg.model.backbone.type), "embed_dim": int(cfg.model.decode_head.decoder_params.embed_dim),
            "num_classes": int(cfg.dataset.segment.num_classes), "input": [int(cfg.export.input_channel), height, width],
            "precision": precision}


def key_of(arch: dict[str, Any], target: Target) -> str:
    """The cache key of one architecture on one target."""
    return json.dumps({**arch, "runtime": target.runtime, "batch": target.batch, "threads": target.thread_count},
                      sort_keys=True)


def _check(arch: dict[str, Any], target: Target) -> None:
    precision = arch["precision"]
    if precision not in PRECISIONS:
        raise ValueError(f"{PRECISION_KEY} {precision!r} is not one of {', '.join(PRECISIONS)}")
    if target.runtime == "tensorrt":
        from segformer.deploy._deps import TENSORRT_HINT

        raise ValueError(f"latency on TensorRT needs TensorRT and a GPU, which this machine lacks ({TENSORRT_HINT}); "
                         "time on onnxruntime (the CPU) or torch instead")
    if precision == "fp16":
        raise ValueError(f"{PRECISION_KEY} fp16 is a GPU precision (TensorRT); on {target.runtime} on the CPU time fp32 or int8")
    if target.runtime == "torch" and precision != "fp32":
        raise ValueError(f"latency on torch times the eager fp32 model; {PRECISION_KEY} {precision} needs the onnxruntime runtime")


def _timed(call: Any, target: Target) -> list[float]:
    for _ in range(target.warmup):
        call()
    samples = []
    for _ in range(target.runs):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000.0)
    return samples


def _flops(model: Any, example: Any) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(example[:1])
    return float(counter.get_total_flops())


def measure(cfg: Any, target: Target, precision: str = "fp32") -> dict[str, Any]:
    """Time `cfg`'s architecture on `target` (see the module's docstring); returns the record."""
    import numpy as np
    import torch

    from segformer.deploy.onnx_export import export_onnx
    from segformer.model.segformer import build_segformer

    arch = architecture(cfg, precision)
    _check(arch, target)
    channels, height, width = arch["input"]
    torch.manual_seed(0)
    model = build_segformer(cfg.model, arch["num_classes"], load_pretrained=False, img_size=(height, width)).eval()
    example = torch.randn(target.batch, channels, height, width)
    record: dict[str, Any] = {"architecture": arch, "runtime": target.runtime, "batch": target.batch,
                              "threads": target.thread_count, "runs": target.runs,
                              "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
                              "gflops": _flops(model, example) / 1e9}
    with tempfile.TemporaryDirectory(prefix="latency-") as work:
        onnx_file = export_onnx(model, Path(work) / "model.onnx", input_channel=channels, input_height=height,
                                input_width=width, batch_size=target.batch)
        if precision == "int8":
            from segformer.deploy.quantize.ort_static import quantize_onnx_static

            rng = np.random.default_rng(0)
            batches = [rng.standard_normal((target.batch, channels, height, width), dtype=np.float32) for _ in range(2)]
            onnx_file = Path(work) / "model_int8.onnx"
            quantize_onnx_static(Path(work) / "model.onnx", onnx_file, batches)
        record["model_mb"] = onnx_file.stat().st_size / 2**20
        if target.runtime == "torch":
            previous = torch.get_num_threads()
            torch.set_num_threads(target.thread_count)
            try:
                with torch.no_grad():
                    samples = _timed(lambda: model(example), target)
            finally:
                torch.set_num_threads(previous)
        else:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.log_severity_level = 3
            options.intra_op_num_threads = target.thread_count
            options.inter_op_num_threads = 1
            session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
            feed = {session.get_inputs()[0].name: example.numpy()}
            samples = _timed(lambda: session.run(None, feed), target)
    samples.sort()
    record["latency_ms"] = statistics.median(samples)
    record["latency_p90_ms"] = samples[min(len(samples) - 1, int(round(0.9 * (len(samples) - 1))))]
    record["measured_at"] = round(time.time(), 3)
    return record


class LatencyCache:
    """Latency records of a search, one per architecture and target, in one JSON file.

    Processes share it (the driver and the trials): a file lock serialises measuring, so two
    trials of one new architecture measure it once, and nothing else times on the machine meanwhile
    through this cache.
    """

    def __init__(self, path: str | Path, target: Target) -> None:
        self.path = Path(path)
        self.target = target

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, cfg: Any, precision: str = "fp32") -> dict[str, Any] | None:
        """The record of `cfg`'s architecture if measured already."""
        return self._read().get(key_of(architecture(cfg, precision), self.target))

    def lookup(self, cfg: Any, precision: str = "fp32") -> dict[str, Any]:
        """The record of `cfg`'s architecture, measured now when no process has measured it yet."""
        from filelock import FileLock

        from segformer.fileio import atomic_write_text

        key = key_of(architecture(cfg, precision), self.target)
        found = self._read().get(key)
        if found is not None:
            return found
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path) + ".lock"):
            data = self._read()
            if key not in data:
                data[key] = measure(cfg, self.target, precision)
                atomic_write_text(self.path, json.dumps(data, indent=1))
            return data[key]

