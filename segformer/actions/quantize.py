"""``segformer quantize``: post-training quantization with TAO Quant's backends, plus ONNX Runtime.

Backends (``quantize.backend``):

- ``torchao`` (mode ``weight_only_ptq``): int8 weights of nn.Linear -> ``quantized_model_torchao.pth``
- ``modelopt.pytorch`` (``static_ptq``, algorithm minmax/max/entropy) -> ``quantized_model_modelopt.pth``
- ``modelopt.onnx`` (``static_ptq``): ModelOpt's ONNX PTQ (CPU calibration) -> ``quantized_model_modelopt.onnx``
- ``onnxruntime`` (``static_ptq``; our addition for CPU deployment): QDQ int8 with uint8
  activations -> ``quantized_model_onnxruntime.onnx``

``torchao`` is TAO's default backend but only in our ``[quant]`` extra. Where it cannot be imported,
the action falls back to ``onnxruntime`` (static PTQ; minmax unless the spec's algorithm is one ONNX
Runtime has) and says so in one line. Every TAO spec carries ``quantize.backend``, so a spec that
names torchao cannot be told from one that kept the default: the fallback always applies to
torchao, never silently, and the report and result record the backend asked for
(``requested_backend``), the one used (``backend``) and why (``note``). The modelopt backends are
never a default: naming one asks for it, and a missing ModelOpt stays an error naming the extra.

Static PTQ calibrates on ``dataset.segment.quant_calibration_dataset.images_dir``. The ONNX
backends take an ``.onnx`` ``model_path`` or export a ``.pth`` checkpoint first. Afterwards the
float and quantized models are evaluated on the validation split with the evaluate action (same
decode and metric code) and a table of mIoU and size changes is printed and written to
``<results_dir>/quantize/quantize_report.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segformer.config import ExperimentConfig, action_results_dir, require
from segformer.deploy.quantize import ONNX_BACKENDS
from segformer.remote import as_given
from segformer.errors import DataError, SegformerError
from segformer.parents import resolve_parents

log = logging.getLogger(__name__)

BACKENDS = ("torchao", "modelopt.pytorch", *ONNX_BACKENDS)
STATIC_BACKENDS = ("modelopt.pytorch", "modelopt.onnx", "onnxruntime")
REPORT_NAME = "quantize_report.json"
FLOAT_ONNX_NAME = "float_model.onnx"  # the ONNX backends' own export of a .pth model_path
FALLBACK_BACKEND = "onnxruntime"  # for torchao (TAO's default) where it is not installed: needs no extra
CALIBRATION_KWARGS = ("calibration_batch_size", "calibration_batches")  # backend_kwargs of every static backend


@dataclass(frozen=True)
class QuantizeResult:
    artifact: Path
    backend: str
    float_miou: float | None
    quantized_miou: float | None
    float_bytes: int
    quantized_bytes: int
    report_file: Path
    results_dir: Path
    requested_backend: str | None = None  # quantize.backend as configured (differs from backend after a fallback)
    note: str | None = None  # why the backend used is not the one asked for


def resolve_backend(backend: str) -> tuple[str, str | None]:
    """(backend to run, None) or, for torchao where it cannot be imported, (onnxruntime, the reason).

    torchao is TAO's default and only in the [quant] extra; the rule is in the module docstring.
    """
    if backend != "torchao":
        return backend, None
    from segformer.deploy._deps import QUANT_HINT

    try:
        import torchao  # noqa: F401
    except ModuleNotFoundError as err:
        missing = str(err.name or "")
        reason = "is not installed" if missing.split(".")[0] == "torchao" else f"cannot be imported ({err})"
    except Exception as err:  # noqa: BLE001 - a broken install (missing libraries, a torch it does not fit)
        reason = f"cannot be imported ({type(err).__name__}: {err})"
    else:
        return backend, None
    note = f"quantize.backend torchao {reason} ({QUANT_HINT}); quantizing with {FALLBACK_BACKEND} instead"
    return FALLBACK_BACKEND, note


def _announce_fallback(cfg: ExperimentConfig, note: str, mode: str, algorithm: str, kwargs: dict[str, Any], *,
                       quiet: bool) -> tuple[str, str, dict[str, Any], str]:
    """Say that quantize falls back (one line) and return the fallback's (mode, algorithm,
    backend_kwargs, note): static PTQ, the spec's algorithm where ONNX Runtime has it (torchao
    ignores it), else minmax, and the backend_kwargs ONNX Runtime takes (the note names the others,
    dropped: written for torchao, they would fail quantize_onnx_static)."""
    from segformer.deploy.quantize.ort_static import ORT_ALGORITHMS, ORT_KWARGS

    segment = cfg.dataset.segment
    if not (segment.quant_calibration_dataset.images_dir or segment.root_dir):
        raise SegformerError(f"{note}, which calibrates on images: set dataset.segment.quant_calibration_dataset."
                             f"images_dir (or dataset.segment.root_dir), or install torchao")
    algorithm = algorithm if algorithm in ORT_ALGORITHMS else "minmax"
    if mode != "static_ptq":  # the spec's mode is torchao's: the fallback quantizes activations too
        note += f", in mode static_ptq (int8 weights and activations, {algorithm} calibration), not {mode}"
    dropped = [key for key in kwargs if key not in (*ORT_KWARGS, *CALIBRATION_KWARGS)]
    if dropped:
        note += (f"; dropped quantize.backend_kwargs {', '.join(dropped)} ({FALLBACK_BACKEND} takes "
                 f"{', '.join((*ORT_KWARGS, *CALIBRATION_KWARGS))})")
        kwargs = {key: value for key, value in kwargs.items() if key not in dropped}
    _say(note, quiet)
    return "static_ptq", algorithm, kwargs, note


def _say(note: str, quiet: bool) -> None:
    """A note on what this run does differently from what the spec asked: a log warning when quiet."""
    if quiet:
        log.warning(note)
    else:
        print(f"segformer quantize: {note}", file=sys.stderr, flush=True)


def _calibration_folder(cfg: ExperimentConfig, quiet: bool) -> Path:
    """The calibration images' folder: quant_calibration_dataset.images_dir, else the train split
    (said once, before calibration starts: inside the quantizer a warning would not reach the user)."""
    segment = cfg.dataset.segment
    folder = segment.quant_calibration_dataset.images_dir
    if folder:
        return Path(folder)
    if not segment.root_dir:
        raise SegformerError(
            "static PTQ needs calibration images: set dataset.segment.quant_calibration_dataset.images_dir"
        )
    folder = Path(segment.root_dir) / "images" / str(segment.train_split)
    _say(f"dataset.segment.quant_calibration_dataset.images_dir is not set: calibrating on the train split {folder}",
         quiet)
    return folder


def _calibration_batches(cfg: ExperimentConfig, folder: Path, size: tuple[int, int], batch_size: int,
                         max_batches: int):
    """Normalized calibration batches (torch) from ``folder`` (:func:`_calibration_folder`)."""
    from segformer.data import iter_calibration_batches

    aug = cfg.dataset.segment.augmentation
    with _calibration_key(cfg):
        yield from iter_calibration_batches(folder, size, aug.mean, aug.std, batch_size, max_batches)


@contextlib.contextmanager
def _calibration_key(cfg: ExperimentConfig) -> Iterator[None]:
    """A calibration DataError names the spec key that chose the folder."""
    segment = cfg.dataset.segment
    key = ("dataset.segment.quant_calibration_dataset.images_dir" if segment.quant_calibration_dataset.images_dir
           else "dataset.segment.quant_calibration_dataset.images_dir, unset: the train split was used")
    try:
        yield
    except DataError as err:
        raise DataError(f"{err} ({key}: point it at a folder of readable calibration images)") from None


def _state_bytes(model: torch.nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def _device(name: str) -> torch.device:
    if name.startswith("cuda") and torch.cuda.is_available():
        return torch.device(name)
    if name not in ("cpu",):
        log.info("quantize.device %s unavailable or not for PyTorch: calibrating on the CPU", name)
    return torch.device("cpu")


def _evaluate(cfg: ExperimentConfig, checkpoint: Path, *, is_quantized: bool, results_dir: Path) -> float | None:
    """mIoU (0..1) of ``checkpoint`` on the validation split via the evaluate action."""
    segment = cfg.dataset.segment
    if not segment.root_dir or not (Path(segment.root_dir) / "images" / str(segment.validation_split)).is_dir():
        return None
    from segformer.actions import evaluate

    # dataclasses.replace rather than apply_overrides: only evaluate's inputs change, and the
    # quantize section (already checked above) need not be re-validated.
    sub = dataclasses.replace(
        cfg,
        evaluate=dataclasses.replace(cfg.evaluate, checkpoint=str(checkpoint), trt_engine=None,
                                     is_quantized=bool(is_quantized), results_dir=str(results_dir)),
        dataset=dataclasses.replace(cfg.dataset, segment=dataclasses.replace(
            segment, test_split=str(segment.validation_split))),
    )
    return float(evaluate.run(sub, quiet=True).miou)


def _format_table(rows: list[tuple[str, str, str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    out = [line]
    for index, row in enumerate(rows):
        out.append("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |")
        if index == 0:
            out.append(line)
    out.append(line)
    return "\n".join(out)


def run(cfg: ExperimentConfig, *, quiet: bool = False) -> QuantizeResult:
    from segformer.deploy.quantize.artifacts import ARTIFACT_NAMES, save_quantized_model
    from segformer.deploy.quantize.patterns import parse_layer_rules

    requested = str(cfg.quantize.backend)
    if requested not in BACKENDS:
        raise SegformerError(f"quantize.backend must be one of {BACKENDS}, got {requested!r}")
    backend, note = resolve_backend(requested)
    # a results folder as quantize.model_path: its model for the backend that runs
    cfg = resolve_parents(cfg, "quantize", quiet=quiet, quantize_backend=backend)
    options = cfg.quantize
    mode, algorithm = str(options.mode), str(options.algorithm)
    kwargs: dict[str, Any] = dict(options.backend_kwargs or {})
    if note is not None:
        mode, algorithm, kwargs, note = _announce_fallback(cfg, note, mode, algorithm, kwargs, quiet=quiet)
    if backend == "torchao" and mode != "weight_only_ptq":
        raise SegformerError(f"backend torchao does weight-only PTQ: set quantize.mode=weight_only_ptq (got {mode})")
    if backend in STATIC_BACKENDS and mode != "static_ptq":
        raise SegformerError(f"backend {backend} does static PTQ: set quantize.mode=static_ptq (got {mode})")
    if backend == "onnxruntime":
        from segformer.deploy.quantize.ort_static import ORT_KWARGS

        unknown = [key for key in kwargs if key not in (*ORT_KWARGS, *CALIBRATION_KWARGS)]
        if unknown:
            raise SegformerError(f"quantize.backend_kwargs {', '.join(unknown)}: backend onnxruntime takes only "
                                 f"{', '.join((*ORT_KWARGS, *CALIBRATION_KWARGS))}; remove the others")
    model_path = Path(require(cfg, "quantize.model_path"))
    if not model_path.is_file():
        raise SegformerError(f"quantize.model_path points to {model_path}, which does not exist")
    rules = parse_layer_rules(options.layers)  # before anything is written
    results_dir = action_results_dir(cfg, "quantize")
    results_dir.mkdir(parents=True, exist_ok=True)
    skip_names = [str(s) for s in options.skip_names or ()]
    num_classes = int(cfg.dataset.segment.num_classes)
    img_size = int(cfg.dataset.segment.img_size)
    cal_batch = int(kwargs.pop(CALIBRATION_KWARGS[0], 4))
    cal_batches = int(kwargs.pop(CALIBRATION_KWARGS[1], 8))
    artifact = results_dir / ARTIFACT_NAMES[backend]
    calibration: Path | None = None  # torchao quantizes weights only

    if backend in ("torchao", "modelopt.pytorch"):
        from segformer.deploy.quantize import torch_backends
        from segformer.engine.predictor import load_torch_model

        if model_path.suffix == ".onnx":
            onnx_twin = "modelopt.onnx" if backend == "modelopt.pytorch" else "onnxruntime"
            raise SegformerError(f"backend {backend} quantizes a PyTorch checkpoint; got the ONNX file {model_path}: set "
                                 f"quantize.backend: {onnx_twin} to quantize the ONNX model, or quantize.model_path to "
                                 f"the .pth checkpoint")
        if backend == "modelopt.pytorch":
            calibration = _calibration_folder(cfg, quiet)
        device = _device(str(options.device))
        model = load_torch_model(cfg.model, num_classes, model_path).to(device).eval()
        float_bytes = _state_bytes(model)
        if backend == "torchao":
            model, names = torch_backends.quantize_torchao(model, rules=rules, skip_names=skip_names)
        else:
            def forward_loop(m: torch.nn.Module) -> None:
                for batch in _calibration_batches(cfg, calibration, (img_size, img_size), cal_batch, cal_batches):
                    m(batch.to(device))

            model, names = torch_backends.quantize_modelopt(
                model, forward_loop, algorithm=algorithm, rules=rules, skip_names=skip_names
            )
        save_quantized_model(artifact, model.cpu(), backend=backend, quantized_modules=names,
                             extra={"meta": {"num_classes": num_classes, "backbone": cfg.model.backbone.type}})
        quantized_bytes = artifact.stat().st_size
        is_quantized_eval = True
    else:
        calibration = _calibration_folder(cfg, quiet)
        onnx_in, exported = model_path, None
        if model_path.suffix != ".onnx":
            from segformer.data import check_calibration_images
            from segformer.engine.predictor import load_torch_model

            model = load_torch_model(cfg.model, num_classes, model_path).eval()  # a bad checkpoint is said first
            with _calibration_key(cfg):  # then the images: before the export's seconds, not after them
                check_calibration_images(calibration, cal_batch, cal_batches)
            onnx_in = exported = _export_float_onnx(cfg, model, model_path, results_dir / FLOAT_ONNX_NAME)
        try:
            from segformer.deploy.onnx_signature import calibrate_at_static_batch, read_onnx_signature

            signature = read_onnx_signature(onnx_in)
            _, height, width = signature.chw
            fixed = signature.static_batch
            cal_batch, cal_batches, batch_note = calibrate_at_static_batch(onnx_in, fixed, cal_batch, cal_batches)
            if batch_note:
                _say(batch_note, quiet)

            def batches():
                for batch in _calibration_batches(cfg, calibration, (height, width), cal_batch, cal_batches):
                    if fixed and len(batch) != fixed:  # the folder's last, partial batch
                        continue
                    yield batch.numpy().astype(np.float32)

            if backend == "onnxruntime":
                from segformer.deploy.quantize.ort_static import quantize_onnx_static

                summary = quantize_onnx_static(onnx_in, artifact, batches(), rules=rules, skip_names=skip_names,
                                               algorithm=algorithm, **kwargs)
                names = list(summary.quantized_nodes)
            else:
                from segformer.deploy.quantize.modelopt_onnx import quantize_onnx_modelopt

                names = quantize_onnx_modelopt(onnx_in, artifact, np.concatenate(list(batches())), rules=rules,
                                               skip_names=skip_names, algorithm=algorithm,
                                               device=str(options.device), **kwargs)
        except BaseException:
            if exported is not None:  # a float model only this failed run needed: leave nothing half done
                exported.unlink(missing_ok=True)
            raise
        float_bytes = onnx_in.stat().st_size
        quantized_bytes = artifact.stat().st_size
        model_path = onnx_in
        is_quantized_eval = False  # an .onnx checkpoint already selects ONNX Runtime

    float_miou = _evaluate(cfg, model_path, is_quantized=False, results_dir=results_dir / "eval_float")
    quant_miou = _evaluate(cfg, artifact, is_quantized=is_quantized_eval, results_dir=results_dir / "eval_quantized")
    report = {
        "backend": backend,
        "requested_backend": requested,
        "note": note,
        "mode": mode,
        "algorithm": algorithm if backend != "torchao" else None,
        "float_model": as_given(str(model_path)),  # URLs as given, not their copies in the cache
        "artifact": str(artifact),
        "quantized": len(names),
        "calibration_images": None if calibration is None else as_given(str(calibration)),
        "split": str(cfg.dataset.segment.validation_split),
        "float_miou": float_miou,
        "quantized_miou": quant_miou,
        "miou_change": None if float_miou is None or quant_miou is None else quant_miou - float_miou,
        "float_bytes": float_bytes,
        "quantized_bytes": quantized_bytes,
        "size_ratio": quantized_bytes / float_bytes if float_bytes else None,
    }
    from segformer.fileio import atomic_write_json

    report_file = atomic_write_json(results_dir / REPORT_NAME, report)

    def pct(v: float | None) -> str:
        return "n/a (no validation split)" if v is None else f"{100 * v:.2f}"

    delta = report["miou_change"]
    table = _format_table([
        ("", "float", f"quantized ({backend})"),
        (f"mIoU (%), {report['split']} split", pct(float_miou), pct(quant_miou) + ("" if delta is None else f" ({100 * delta:+.2f})")),
        ("size (MB)", f"{float_bytes / 1e6:.2f}", f"{quantized_bytes / 1e6:.2f} (x{quantized_bytes / float_bytes:.2f})"),
    ])
    if not quiet:
        print(table)
        print(f"wrote {artifact} ({len(names)} layers quantized) and {report_file}")
    log.info("quantization summary:\n%s", table)
    return QuantizeResult(artifact, backend, float_miou, quant_miou, float_bytes, quantized_bytes, report_file, results_dir,
                          requested_backend=requested, note=note)


def _export_float_onnx(cfg: ExperimentConfig, model: torch.nn.Module, checkpoint: Path, onnx_path: Path) -> Path:
    """Export ``model`` (loaded from ``checkpoint``) to a float ONNX at img_size with a dynamic batch,
    as input to the ONNX backends."""
    from segformer.deploy.onnx_export import export_onnx

    size = int(cfg.dataset.segment.img_size)
    log.info("exporting %s to ONNX (%dx%d) for quantization", checkpoint, size, size)
    return export_onnx(model, onnx_path, input_height=size, input_width=size,
                       opset_version=int(cfg.export.opset_version))
