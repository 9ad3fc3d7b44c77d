"""Promote the best trial: evaluate -> export (ONNX) -> quantize -> gen_trt_engine, into ``best/``.

Each step is the plain `segformer` action, configured like a user would configure it: the spec,
the user's overrides, the best trial's sampled values, and the step's input/output paths. A step
whose action module is missing, whose optional runtime is absent (TensorRT on a CPU machine) or
that fails reports ``skipped: <reason>`` or ``failed: <error>`` and the others go on; promotion
never loses the search's results.

The promoted model is the best trial's checkpoint at its best epoch (a Lightning checkpoint that
evaluate/export/quantize read directly). It is logged to the best trial's MLflow run under
``model/`` (checkpoint, ONNX, spec) and registered in the MLflow model registry as a new version
with an alias (``champion`` by default). The registry stores a reference (``runs:/<id>/model``):
this works with the sqlite store and any artifact store, without a flavour-specific model format.
"""

from __future__ import annotations

import importlib
import json
import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from automl.state import SearchState, TrialRecord
from segformer.fileio import atomic_write_text
from automl.trial import CHECKPOINT_FILE

BEST_DIR = "best"
MODEL_FILE = "model.pth"


@dataclass(frozen=True)
class PromoteOptions:
    evaluate: bool = True
    export: bool = True
    quantize: bool = True
    trt: bool = True
    register: bool = True
    model_name: str = "segformer"
    alias: str = "champion"


def best_checkpoint(record: TrialRecord) -> Path | None:
    """The trial's checkpoint at its best epoch (Ray's copy), else its latest train checkpoint."""
    candidates = []
    if record.checkpoint:
        candidates.append(Path(record.checkpoint) / CHECKPOINT_FILE)
    if record.results_dir:
        candidates.append(Path(record.results_dir) / "train" / "segformer_model_latest.pth")
    return next((c for c in candidates if c.is_file()), None)


def _action(name: str) -> tuple[Any, str | None]:
    """`segformer.actions.<name>` or the reason it cannot be used."""
    try:
        return importlib.import_module(f"segformer.actions.{name}"), None
    except ModuleNotFoundError as err:
        return None, f"skipped: action module segformer.actions.{name} is not available ({err.name} missing)"
    except ImportError as err:
        return None, f"skipped: segformer.actions.{name} cannot be imported ({err})"


def _tensorrt_missing() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "skipped: TensorRT not available (install the tensorrt extra on a machine with an NVIDIA GPU)"
    try:
        import torch

        if not torch.cuda.is_available():
            return "skipped: TensorRT not available (no CUDA GPU)"
    except ImportError:
        pass
    return None


def _result_dict(result: Any) -> dict[str, Any]:
    if result is None:
        return {}
    if hasattr(result, "__dataclass_fields__"):
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(result).items()
                if isinstance(v, (str, int, float, bool, Path, type(None)))}
    return {"result": str(result)}


def _first_file(folder: Path, suffixes: tuple[str, ...]) -> Path | None:
    if not folder.is_dir():
        return None
    found = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in suffixes)
    return found[0] if found else None


def promote(state: SearchState, record: TrialRecord, tracker: Any, options: PromoteOptions = PromoteOptions(),
            *, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the promotion chain for `record`; returns (and writes to best/promotion.json) what happened."""
    from segformer.config import apply_overrides, dump_config, load_config

    best_dir = Path(state.results_dir) / BEST_DIR
    best_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"trial": record.name, "params": record.params, state.metric: record.best_value,
                              "best_epoch": record.best_epoch, "steps": {}}
    source = best_checkpoint(record)
    if source is None:
        report["steps"]["checkpoint"] = "failed: no checkpoint found for the best trial"
        _write(best_dir, report)
        return report
    model = best_dir / MODEL_FILE
    shutil.copy2(source, model)
    report["checkpoint"] = str(model)

    overrides: dict[str, Any] = dict(record.params)
    overrides["results_dir"] = str(best_dir)
    cfg = apply_overrides(load_config(state.spec, [f"results_dir={best_dir}", *state.overrides]), overrides)
    dump_config(cfg, best_dir / "experiment.yaml")
    onnx_file = best_dir / "export" / "segformer.onnx"

    def step(name: str, enabled: bool, configure: Callable[[Any], dict[str, Any]], precheck: str | None = None) -> Any:
        if not enabled:
            report["steps"][name] = "skipped: disabled by flag"
            return None
        module, missing = _action(name)
        reason = missing or precheck
        if reason:
            report["steps"][name] = reason
            echo(f"automl: promote {name}: {reason}")
            return None
        started = time.time()
        try:
            result = module.run(apply_overrides(cfg, configure(cfg)))
        except Exception as err:  # one failing step must not lose the others
            report["steps"][name] = f"failed: {type(err).__name__}: {err}"
            (best_dir / f"{name}_error.txt").write_text(traceback.format_exc(), encoding="utf-8")
            echo(f"automl: promote {name}: failed: {err}")
            return None
        report["steps"][name] = {"status": "done", "seconds": round(time.time() - started, 2), **_result_dict(result)}
        echo(f"automl: promote {name}: done in {time.time() - started:.1f} s")
        return result

    step("evaluate", options.evaluate, lambda c: {"evaluate.checkpoint": str(model),
                                                 "evaluate.results_dir": str(best_dir / "evaluate")})
    evaluate_json = best_dir / "evaluate" / "results.json"
    if evaluate_json.is_file():
        try:
            report["evaluate"] = json.loads(evaluate_json.read_text(encoding="utf-8"))
        except ValueError:
            pass
    step("export", options.export, lambda c: {"export.checkpoint": str(model), "export.onnx_file": str(onnx_file),
                                             "export.results_dir": str(best_dir / "export"), "export.on_cpu": _no_cuda()})
    onnx = onnx_file if onnx_file.is_file() else _first_file(best_dir / "export", (".onnx",))
    step("quantize", options.quantize, lambda c: {"quantize.model_path": str(model),
                                                 "quantize.results_dir": str(best_dir / "quantize"),
                                                 "quantize.device": "cpu" if _no_cuda() else c.quantize.device})
    trt_reason = _tensorrt_missing()
    if trt_reason is None and onnx is None:
        trt_reason = "skipped: no ONNX model to build from (export did not run)"
    step("gen_trt_engine", options.trt, lambda c: {"gen_trt_engine.onnx_file": str(onnx),
                                                    "gen_trt_engine.results_dir": str(best_dir / "gen_trt_engine")},
         precheck=trt_reason)

    if options.register and tracker is not None and record.mlflow_run_id:
        try:
            files = [model, best_dir / "experiment.yaml"] + ([onnx] if onnx else [])
            tracker.log_artifacts(record.mlflow_run_id, files, "model")
            version = tracker.register(options.model_name, record.mlflow_run_id, "model", options.alias)
            report["registry"] = {"model": options.model_name, "version": version, "alias": options.alias,
                                  "source": f"runs:/{record.mlflow_run_id}/model"}
            echo(f"automl: registered {options.model_name} version {version} as @{options.alias}")
        except Exception as err:  # the registry is optional (e.g. a tracking server without one)
            report["registry"] = f"failed: {type(err).__name__}: {err}"
    _write(best_dir, report)
    return report


def _no_cuda() -> bool:
    try:
        import torch

        return not torch.cuda.is_available()
    except ImportError:
        return True


def _write(best_dir: Path, report: dict[str, Any]) -> None:
    atomic_write_text(best_dir / "promotion.json", json.dumps(report, indent=2, default=str))
