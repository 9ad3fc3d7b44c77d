"""Latency of a SegFormer architecture on its deployment runtime: measured, not guessed.

What decides a model's speed is its architecture (``model.backbone.type``, the decoder's
``embed_dim``, the class count), its input size (the export's ``export.input_height/width``: a
search sets them to the size the model trains at, or to a searched ``dataset.segment.img_size``,
unless the user chose them) and the precision it is deployed in, never its learning rate. `measure` builds the architecture
with random weights, exports it to ONNX (the export action's exporter), quantizes it for int8 (ONNX
Runtime's static QDQ quantization, as the quantize action's onnxruntime backend does, calibrated on
random inputs: the values do not change the speed) and times it on the target:

- ``onnxruntime`` (the default, CPU): a session with ``threads`` intra-op threads;
- ``torch``: the eager model (fp32 only) with ``torch.set_num_threads(threads)``;
- ``tensorrt``: an engine built at the precision (fp32, fp16, or int8 from the QDQ model), timed on
  the first CUDA GPU on inputs already there; needs TensorRT and a GPU, refused with the reason
  otherwise. fp16 is timed on TensorRT only.

The latency is the median of ``runs`` timed calls after ``warmup`` untimed ones, batch ``batch``,
in each of `PASSES` passes made apart (the fastest pass counts: `measure_many`);
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
        return (f"{self.runtime}, batch {self.batch}, {self.thread_count} thread(s), median of {self.runs} warm runs, "
                f"the fastest of {PASSES} passes")


def architecture(cfg: Any, precision: str = "fp32") -> dict[str, Any]:
    """What decides the speed of `cfg`'s model (an `ExperimentConfig`), as a JSON-able mapping. Its
    input is the export's (export.input_height/width): the size the ONNX file and the engine take,
    which is what deploys, whatever size the model trains at."""
    export = cfg.export
    return {"backbone": str(cfg.model.backbone.type), "embed_dim": int(cfg.model.decode_head.decoder_params.embed_dim),
            "num_classes": int(cfg.dataset.segment.num_classes),
            "input": [int(export.input_channel), int(export.input_height), int(export.input_width)], "precision": precision}


def key_of(arch: dict[str, Any], target: Target) -> str:
    """The cache key of one architecture on one target."""
    return json.dumps({**arch, "runtime": target.runtime, "batch": target.batch, "threads": target.thread_count},
                      sort_keys=True)


def _check(arch: dict[str, Any], target: Target) -> None:
    precision = arch["precision"]
    if precision not in PRECISIONS:
        raise ValueError(f"{PRECISION_KEY} {precision!r} is not one of {', '.join(PRECISIONS)}")
    if target.runtime == "tensorrt":
        from segformer.deploy._deps import tensorrt_unavailable

        reason = tensorrt_unavailable()
        if reason:
            raise ValueError(f"latency on TensorRT: {reason}; time on onnxruntime (the CPU) or torch instead")
        return
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


PASSES = 3  # each architecture is timed this many times, the passes alternating; its latency is the fastest pass


def measure(cfg: Any, target: Target, precision: str = "fp32") -> dict[str, Any]:
    """Time `cfg`'s architecture on `target` (see the module's docstring); returns the record."""
    return measure_many([(cfg, precision)], target)[0]


def measure_many(items: list[tuple[Any, str]], target: Target) -> list[dict[str, Any]]:
    """Time several architectures (`cfg`, precision) on `target`: each is built, exported (and
    quantized) first; then `PASSES` passes over all of them, each loading one architecture alone
    (a fresh session, nothing else of ours running), timing its warm runs and releasing it. An
    architecture's latency is the fastest of its passes' medians.

    Why: a shared machine has slow spells. On this 2-core VM they double every latency for seconds
    to minutes (MiT-B0 at 128 px: 3.6-3.8 ms, and 7.1-7.3 ms in a spell); measured one after the
    other, the spec's model timed in a spell and the rest after it, and a limit of half the spec's
    latency doubled. With the passes alternating, every architecture sees the same spells, so the
    ratios a relative limit uses hold (64 px against 128 px: 0.34, 0.39, 0.34 in three measurements,
    one of them inside a spell). Of the passes the fastest counts: other work on the machine only
    ever adds time, so the least disturbed pass is the closest to what the model costs. Measured
    against a quiet run of MiT-B0 at 64, 96 and 128 px, fp32 and int8, on this VM: the median pass
    was 0-58% slow (34% on average) in a search's timing and 29-122% in a noisier one, the fastest
    1-5% in the first except one at 42%, and 0-52% in the noisier (29% on average). Sessions are
    never kept side by side: ONNX Runtime's spinning thread pools slow each other (3-5x, noisier)."""
    with tempfile.TemporaryDirectory(prefix="latency-") as folder:
        work = Path(folder)
        prepared = [_prepared(cfg, target, precision, work / str(index)) for index, (cfg, precision) in enumerate(items)]
        passes: list[list[list[float]]] = [[] for _ in items]
        for _ in range(PASSES):
            for (_, load), taken in zip(prepared, passes):
                call, release = load()
                try:
                    taken.append(_timed(call, target))
                finally:
                    release()
    records = []
    for (record, _), taken in zip(prepared, passes):
        every = sorted(v for samples in taken for v in samples)
        record["latency_ms"] = min(statistics.median(samples) for samples in taken)
        record["latency_p90_ms"] = every[min(len(every) - 1, int(round(0.9 * (len(every) - 1))))]
        record["passes_ms"] = [round(statistics.median(samples), 4) for samples in taken]
        record["measured_at"] = round(time.time(), 3)
        records.append(record)
    return records


def _prepared(cfg: Any, target: Target, precision: str, work: Path) -> tuple[dict[str, Any], Any]:
    """`cfg`'s architecture built (random weights), exported and quantized as `precision` asks: its
    record so far (no latency yet) and a loader that returns (the call to time, its release)."""
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
                              "threads": target.thread_count, "runs": target.runs, "passes": PASSES,
                              "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
                              "gflops": _flops(model, example) / 1e9}
    work.mkdir(parents=True, exist_ok=True)
    onnx_file = export_onnx(model, work / "model.onnx", input_channel=channels, input_height=height,
                            input_width=width, batch_size=target.batch)
    if precision == "int8":
        from segformer.deploy.quantize.ort_static import quantize_onnx_static

        rng = np.random.default_rng(0)
        batches = [rng.standard_normal((target.batch, channels, height, width), dtype=np.float32) for _ in range(2)]
        onnx_file = work / "model_int8.onnx"
        # TensorRT takes int8 with zero point 0 only; ONNX Runtime's CPU kernels are fast with uint8
        quantize_onnx_static(work / "model.onnx", onnx_file, batches, symmetric=target.runtime == "tensorrt")
    record["model_mb"] = onnx_file.stat().st_size / 2**20
    if target.runtime == "tensorrt":
        return record, _tensorrt_loader(onnx_file, precision, target, work, record)
    if target.runtime == "torch":
        @torch.no_grad()
        def forward() -> Any:
            return model(example)

        def load_torch() -> tuple[Any, Any]:
            previous = torch.get_num_threads()
            torch.set_num_threads(target.thread_count)
            return forward, lambda: torch.set_num_threads(previous)

        return record, load_torch
    del model

    def load_onnx() -> tuple[Any, Any]:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = target.thread_count
        options.inter_op_num_threads = 1
        holder = [ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])]
        feed = {holder[0].get_inputs()[0].name: example.numpy()}
        return (lambda: holder[0].run(None, feed)), holder.clear  # cleared: the session and its threads go

    return record, load_onnx


def _tensorrt_loader(onnx_file: Path, precision: str, target: Target, work: Path, record: dict[str, Any]) -> Any:
    """Build a TensorRT engine of `onnx_file` at `precision` (int8: the symmetric QDQ model's own
    scales, as gen_trt_engine builds from the quantize step's model) and return its loader. What is timed is
    one enqueue of the engine on its own stream and the wait for it, on inputs already on the GPU:
    the engine's latency, as trtexec's GPU compute time counts it, without the host copies that a
    DeepStream pipeline does not make."""
    import torch

    from segformer.deploy.runtime import TrtPredictor
    from segformer.deploy.trt import build_engine

    engine_file, _, _ = build_engine(onnx_file, work / "model.engine", data_type=precision, batch_size=target.batch)
    record["model_mb"] = engine_file.stat().st_size / 2**20  # the engine is what deploys
    record["device"] = torch.cuda.get_device_name(0)

    def load_trt() -> tuple[Any, Any]:
        engine = TrtPredictor(engine_file)  # the inference runtime's own loading, on cuda:0
        context, io, device = engine.context, engine.io, engine.device
        x = torch.randn(target.batch, *io.input_shape[1:], device=device)
        context.set_input_shape(io.input_name, tuple(x.shape))
        y = torch.empty(tuple(context.get_tensor_shape(io.output_name)), device=device)
        context.set_tensor_address(io.input_name, x.data_ptr())
        context.set_tensor_address(io.output_name, y.data_ptr())
        # everything the GPU holds, reached only through `held`, so that the release frees it at once
        held = {"engine": engine, "buffers": (x, y), "stream": torch.cuda.Stream(device)}

        def call() -> None:
            stream = held["stream"]
            if not held["engine"].context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError(f"TensorRT failed to run the engine built from {onnx_file}")
            stream.synchronize()

        def release() -> None:
            held.clear()
            torch.cuda.empty_cache()

        return call, release

    return load_trt


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
        return self.lookup_many([(cfg, precision)])[0]

    def lookup_many(self, items: list[tuple[Any, str]]) -> list[dict[str, Any]]:
        """The records of several architectures (`cfg`, precision); those not measured yet are
        measured together (`measure_many`: their passes alternate, so they compare fairly)."""
        from filelock import FileLock

        from segformer.fileio import atomic_write_text

        keys = [key_of(architecture(cfg, precision), self.target) for cfg, precision in items]
        found = self._read()
        if all(key in found for key in keys):
            return [found[key] for key in keys]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path) + ".lock"):
            data = self._read()
            missing = {key: item for key, item in zip(keys, items) if key not in data}
            if missing:
                data.update(zip(missing, measure_many(list(missing.values()), self.target)))
                atomic_write_text(self.path, json.dumps(data, indent=1))
            return [data[key] for key in keys]

