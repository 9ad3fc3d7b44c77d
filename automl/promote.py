"""Promote the best trial: evaluate -> export (ONNX) -> quantize -> gen_trt_engine, into ``best/``.

Each step is the plain `segformer` action, configured like a user would configure it: the spec,
the user's overrides, the best trial's sampled values, and the step's input/output paths. A step
whose action module is missing, whose optional runtime is absent (TensorRT on a CPU machine) or
that fails reports ``skipped: <reason>`` or ``failed: <error>`` and the others go on; promotion
never loses the search's results.

The promoted model is the best trial's checkpoint at its best epoch (a Lightning checkpoint that
evaluate/export/quantize read directly). It is logged to the best trial's MLflow run under
``model/`` as a real MLflow model (step ``mlflow_model``; `segformer.deploy.pyfunc`): flavour
``python_function``, which runs the fp32 ONNX export in ONNX Runtime with the spec's
preprocessing, taking an RGB uint8 image batch (N, H, W, 3) and returning class-id masks
(N, H, W) at the input's size, the same code path as ``segformer inference``. The model folder
also carries the quantized ONNX model, the DeepStream config and labels, the resolved spec and
the checkpoint, the code it runs (``code/segformer``) and its environment (``requirements.txt``,
``python_env.yaml``, ``conda.yaml``: what loading imports, pinned to the versions used here).
It is registered in the MLflow model registry as a new version with an alias (``champion`` by
default), with the source ``runs:/<id>/model``, so ``mlflow.pyfunc.load_model("models:/<name>@champion")``
predicts masks and ``mlflow models serve -m models:/<name>@champion`` answers REST requests.
Without an ONNX model (export disabled or failed) the checkpoint and spec are logged as plain
files and registered all the same, without a flavour; a failure there is recorded, not raised.
"""

from __future__ import annotations

import importlib
import json
import shutil
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from automl.layout import Layout
from automl.options import PromotionConfig
from automl.signals import raise_if_swallowed
from automl.state import DONE, PENDING, RUNNING, SearchState, TrialRecord
from segformer.deploy.quantize import ONNX_BACKENDS
from segformer.fileio import atomic_write_text

MODEL_FILE = "model.pth"
SPEC_FILE = "experiment.yaml"  # in best/: the spec each action runs as written (`chain_spec`)
ONNX_FILE = "export/segformer.onnx"  # in best/: the export step's output
MODEL_ARTIFACT_PATH = "model"  # the champion's folder in its trial's MLflow run
MODEL_TMP_PREFIX = ".automl-mlflow-model-"  # in the results folder while the champion is logged (`_log_model`)


def model_name(options: PromotionConfig, skill: str) -> str:
    """The registered model's name: --register-model, else "segformer" (our skill) or "<skill>-segformer"."""
    return options.register_model or ("segformer" if skill == "segformer" else f"{skill}-segformer")


def best_checkpoint(state: SearchState, record: TrialRecord) -> Path | None:
    """The trial's checkpoint at its best epoch (Ray's copy), else its train/'s best: the rule of
    `segformer.parents` for a trial folder (``<search>/trial_NNN`` given as a model path), with the
    ledger's record in memory. The trial folder is the one in this search's folder, not the
    record's ``results_dir`` (an absolute path: stale once the search folder is moved)."""
    from segformer.parents import trial_checkpoint

    choice = trial_checkpoint(Layout.of(state.results_dir).trial_dir(record.name), record.checkpoint)
    return None if choice is None else choice.path


def _action(name: str) -> tuple[Any, str | None]:
    """`segformer.actions.<name>` or the reason it cannot be used."""
    try:
        return importlib.import_module(f"segformer.actions.{name}"), None
    except ModuleNotFoundError as err:
        return None, f"skipped: action module segformer.actions.{name} is not available ({err.name} missing)"
    except ImportError as err:
        return None, f"skipped: segformer.actions.{name} cannot be imported ({err})"


def _tensorrt_missing() -> str | None:
    from segformer.deploy._deps import tensorrt_unavailable

    reason = tensorrt_unavailable()
    return None if reason is None else f"skipped: {reason}"


def _result_dict(result: Any) -> dict[str, Any]:
    if result is None:
        return {}
    if hasattr(result, "__dataclass_fields__"):
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(result).items()
                if isinstance(v, (str, int, float, bool, Path, type(None)))}
    return {"result": str(result)}


def _promoted_onnx(best_dir: Path) -> Path | None:
    """The export step's ONNX model in ``best/`` (its configured name, else the first one there)."""
    onnx_file = best_dir / ONNX_FILE
    return onnx_file if onnx_file.is_file() else _first_file(best_dir / "export", (".onnx",))


def _first_file(folder: Path, suffixes: tuple[str, ...]) -> Path | None:
    if not folder.is_dir():
        return None
    found = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in suffixes)
    return found[0] if found else None


def _alias_moved(before: Any, spec: str) -> str:
    """What the alias left: the version it named and, when that came from another spec (another
    dataset, other classes), how to keep such models apart."""
    if before is None:
        return ""
    tags = getattr(before, "tags", None) or {}
    where = f" (search {tags['automl.results_dir']})" if tags.get("automl.results_dir") else ""
    other = tags.get("automl.spec") and tags["automl.spec"] != spec
    hint = (f"; that version was trained from another spec ({tags['automl.spec']}): give each dataset its own model "
            f"name with --register-model NAME, or it replaces the other's champion") if other else ""
    return f", which was version {before.version}{where}{hint}"


def promote(state: SearchState, record: TrialRecord, tracker: Any, options: PromotionConfig = PromotionConfig(),
            *, echo: Callable[[str], None] = print, prepared: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the promotion chain for `record`; returns (and writes to best/promotion.json) what happened.

    `prepared`: the steps already run for this trial by :class:`EarlyPromotion` (only the
    registration and the report remain). Without a `tracker` nothing is registered.
    """
    report = prepared if prepared is not None else prepare(state, record, options, echo=echo)
    best_dir = Layout.of(state.results_dir).best_dir
    if "checkpoint" in report and tracker is not None and record.mlflow_run_id:
        name = model_name(options, state.skill)
        try:
            _log_model(tracker, record, best_dir, report, {"skill": state.skill, state.metric: record.best_value},
                       echo=echo)
            spec = str(Path(state.spec).resolve()) if state.spec else ""
            version, before = tracker.register(name, record.mlflow_run_id, MODEL_ARTIFACT_PATH, options.alias,
                                               {"automl.results_dir": str(state.results_dir), "automl.spec": spec})
            report["registry"] = {"model": name, "version": version, "alias": options.alias,
                                  "source": f"runs:/{record.mlflow_run_id}/{MODEL_ARTIFACT_PATH}"}
            echo(f"automl: registered {name} version {version} as @{options.alias}{_alias_moved(before, spec)}")
        except Exception as err:  # the registry is optional (e.g. a tracking server without one)
            # ... but a Ctrl-C or SIGTERM that Python wrapped (in the RuntimeError of an import it cut, as
            # MLflow's lazy pydantic imports are) is the user's stop, not a registry failure
            raise_if_swallowed()
            report["registry"] = f"failed: {type(err).__name__}: {err}"
    _write(best_dir, report)
    return report


def already_registered(state: SearchState, record: TrialRecord) -> bool:
    """Whether `record` was promoted and registered before the driver stopped (a Ctrl-C or a kill in the
    final evaluation, after registration): resume then keeps that promotion; running it again
    registered the same model a second time."""
    done = state.promotion or {}
    best = Layout.of(state.results_dir).best_dir / "promotion.json"
    return done.get("trial") == record.name and isinstance(done.get("registry"), dict) and best.is_file()


def champion_artifacts(best_dir: Path, report: dict[str, Any]) -> dict[str, Path]:
    """The files of ``best/`` the MLflow model carries, by artifact name (`segformer.deploy.pyfunc`):
    the fp32 ONNX model, the resolved spec, the checkpoint, and where the steps wrote them the
    quantized ONNX model, the DeepStream config and the labels. Without an ONNX model: none."""
    from segformer.deploy import pyfunc

    onnx = _promoted_onnx(best_dir)
    if onnx is None:
        return {}
    files = {pyfunc.ONNX: onnx, pyfunc.SPEC: best_dir / SPEC_FILE, pyfunc.CHECKPOINT: best_dir / MODEL_FILE}
    export, quantize = report.get("steps", {}).get("export"), report.get("steps", {}).get("quantize")
    for step in (export, quantize):  # the quantize step's config when the model deploys at int8 (`_deploy_int8`)
        if isinstance(step, dict) and step.get("deepstream_config"):
            files[pyfunc.DEEPSTREAM] = Path(step["deepstream_config"])
            files[pyfunc.LABELS] = Path(step.get("labels_file") or "")
    if isinstance(quantize, dict) and str(quantize.get("artifact") or "").endswith(".onnx"):
        files[pyfunc.QUANTIZED_ONNX] = Path(quantize["artifact"])
    return {key: path for key, path in files.items() if str(path) not in ("", ".") and path.is_file()}


def _log_model(tracker: Any, record: TrialRecord, best_dir: Path, report: dict[str, Any], metadata: dict[str, Any],
               *, echo: Callable[[str], None]) -> None:
    """Log the champion to its trial's run under ``model/``: an MLflow model (pyfunc flavour, see
    `segformer.deploy.pyfunc`) when there is an ONNX model, else the checkpoint and spec as plain
    files (what the registry can still point at). The outcome is the ``mlflow_model`` step."""
    import tempfile

    from segformer.model.checkpoints import save_weights_copy

    started = time.time()
    report.setdefault("steps", {})
    artifacts = champion_artifacts(best_dir, report)
    # In the results folder, not TMPDIR: a driver killed here leaves a copy of the weights (tens to hundreds
    # of MB) that nothing would ever delete; the next promotion in this folder (it holds the folder's lock) does.
    for stale in best_dir.parent.glob(f"{MODEL_TMP_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=MODEL_TMP_PREFIX, dir=best_dir.parent) as tmp:
        # The model carries the weights without the optimizer state (two thirds of the file, which
        # nothing served reads); best/model.pth and the trial's folder keep the resumable checkpoint.
        try:
            weights = save_weights_copy(best_dir / MODEL_FILE, Path(tmp) / "weights" / MODEL_FILE)
        except Exception:  # noqa: BLE001 (none, or not a checkpoint this toolkit reads: logged as it is)
            weights = best_dir / MODEL_FILE
        if not artifacts:
            report["steps"]["mlflow_model"] = "skipped: no ONNX model (export did not run); logged the checkpoint and spec"
        else:
            try:
                from segformer.deploy import pyfunc

                from automl.deploy import precision_of

                artifacts[pyfunc.CHECKPOINT] = weights
                # A deploy-aware search that met its latency limit at int8 deploys the int8 model: served by default.
                precision = "int8" if precision_of(record.latency) == "int8" and pyfunc.QUANTIZED_ONNX in artifacts else "fp32"
                folder = pyfunc.save_model(Path(tmp) / MODEL_ARTIFACT_PATH, artifacts,
                                           metadata={"trial": record.name, **metadata},
                                           input_example=pyfunc.input_example(), precision=precision)
                tracker.log_artifacts(record.mlflow_run_id, [folder], MODEL_ARTIFACT_PATH)
                report["steps"]["mlflow_model"] = {"status": "done", "seconds": round(time.time() - started, 2),
                                                   "flavor": "python_function", "artifacts": ", ".join(artifacts),
                                                   "precision": precision}
                echo(f"automl: promote mlflow_model: done in {time.time() - started:.1f} s (pyfunc: images -> class-id "
                     f"masks, {precision} by default)")
                return
            except Exception as err:  # the checkpoint and spec are still logged and registered below
                report["steps"]["mlflow_model"] = f"failed: {type(err).__name__}: {err}"
                (best_dir / "mlflow_model_error.txt").write_text(traceback.format_exc(), encoding="utf-8")
                echo(f"automl: promote mlflow_model: failed: {err}")
        files = [weights, best_dir / SPEC_FILE] + [p for p in [_promoted_onnx(best_dir)] if p]
        tracker.log_artifacts(record.mlflow_run_id, files, MODEL_ARTIFACT_PATH)


def prepare(state: SearchState, record: TrialRecord, options: PromotionConfig = PromotionConfig(),
            *, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """The promotion steps (checkpoint, evaluate, export, quantize, TensorRT) into a fresh ``best/``.

    Registers nothing and writes no promotion.json: :func:`promote` does, once the trial is
    known to be the search's best. Kept whole: the steps run in the chain's order, each feeding the
    next (the checkpoint, then the ONNX file), and the chain reads best top to bottom.
    """
    from automl.trial import base_config
    from segformer.config import apply_overrides

    best_dir = Layout.of(state.results_dir).best_dir
    shutil.rmtree(best_dir, ignore_errors=True)  # never mix two trials' artifacts
    best_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    report: dict[str, Any] = {"trial": record.name, "params": record.params, state.metric: record.best_value,
                              "best_epoch": record.best_epoch, "steps": {}}
    source = best_checkpoint(state, record)
    if source is None:
        report["steps"]["checkpoint"] = "failed: no checkpoint found for the best trial"
        return report
    model = best_dir / MODEL_FILE
    shutil.copy2(source, model)
    report["checkpoint"] = str(model)

    from automl.deploy import precision_of, spec_overrides

    overrides: dict[str, Any] = spec_overrides(state, record.params)
    overrides["results_dir"] = str(best_dir)
    int8 = precision_of(record.latency) == "int8"
    if int8:
        overrides["quantize.backend"] = "onnxruntime"  # the int8 model the search timed (ONNX Runtime's QDQ)
    cfg = apply_overrides(base_config(state.spec, state.overrides, best_dir), overrides)
    if int8 and _timed_on_tensorrt(state):  # ... with zero point 0, the model TensorRT builds (`latency._prepared`)
        cfg = apply_overrides(cfg, {"quantize.backend_kwargs": {**dict(cfg.quantize.backend_kwargs or {}),
                                                                "symmetric": True}})
    cfg = chain_spec(cfg, best_dir, None)

    def step(name: str, enabled: bool, configure: Callable[[Any], dict[str, Any]], precheck: str | None = None) -> Any:
        raise_if_swallowed()  # Ctrl-C or SIGTERM during the step before (`automl.runner.finish`)
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
        raise_if_swallowed()
        return result

    # Each step's input is already in cfg (`chain_spec`): only where it writes, and the device, vary.
    step("evaluate", options.evaluate, lambda c: {"evaluate.results_dir": str(best_dir / "evaluate")})
    evaluate_json = best_dir / "evaluate" / "results.json"
    if evaluate_json.is_file():
        try:
            report["evaluate"] = json.loads(evaluate_json.read_text(encoding="utf-8"))
        except ValueError:
            pass
    step("export", options.export, lambda c: {"export.results_dir": str(best_dir / "export"), "export.on_cpu": _no_cuda()})
    onnx = _promoted_onnx(best_dir)
    if onnx is not None:  # the ONNX model exists now: quantize (ONNX backends) and gen_trt_engine take it
        cfg = chain_spec(cfg, best_dir, onnx)
    quantized = step("quantize", options.quantize, lambda c: {"quantize.results_dir": str(best_dir / "quantize"),
                                                             "quantize.device": "cpu" if _no_cuda() else c.quantize.device},
                     precheck=_precision_skip(state, record))
    if int8 and quantized is not None and quantized.artifact.suffix == ".onnx":
        cfg = _deploy_int8(cfg, best_dir, quantized.artifact, report, echo)
    trt_reason = _tensorrt_missing()
    if trt_reason is None and onnx is None:
        trt_reason = "skipped: no ONNX model to build from (export did not run)"
    step("gen_trt_engine", options.trt, lambda c: {"gen_trt_engine.results_dir": str(best_dir / "gen_trt_engine"),
                                                   **_engine_as_timed(state, record, quantized)},
         precheck=trt_reason)
    report["timing"] = {"started_at": round(started, 3), "ended_at": round(time.time(), 3)}
    return report


def chain_spec(cfg: Any, best_dir: Path, onnx: Path | None) -> Any:
    """``cfg`` with each action's input set to its file in ``best/``, written to ``best/experiment.yaml``.

    The promoted checkpoint ``model.pth`` for evaluate, inference and export; export writes
    ``export/segformer.onnx``; once that exists (``onnx``), the ONNX backends of quantize take it
    (instead of exporting a second time; the backend that runs: torchao where it is not installed
    is onnxruntime) and so does gen_trt_engine, else quantize takes the checkpoint. The promotion
    steps run with these inputs, so ``segformer <action> -e best/experiment.yaml`` runs evaluate,
    export and quantize as written, on the files they used. The file names them relative to
    ``results_dir`` (``${results_dir}/model.pth``), so a ``best/`` moved elsewhere runs with
    ``results_dir=<its new path>``.
    """
    from segformer.actions.quantize import resolve_backend
    from segformer.config import apply_overrides, dump_config

    model, onnx_file = best_dir / MODEL_FILE, best_dir / ONNX_FILE
    backend, _ = resolve_backend(str(cfg.quantize.backend))
    quantize_input = onnx if onnx is not None and backend in ONNX_BACKENDS else model
    cfg = apply_overrides(cfg, {"evaluate.checkpoint": str(model), "inference.checkpoint": str(model),
                                "export.checkpoint": str(model), "export.onnx_file": str(onnx_file),
                                "quantize.model_path": str(quantize_input),
                                "gen_trt_engine.onnx_file": str(onnx or onnx_file)})
    dump_config(cfg, best_dir / SPEC_FILE, movable=True)
    return cfg


def _timed_on_tensorrt(state: SearchState) -> bool:
    return (state.settings.get("search") or {}).get("latency_runtime") == "tensorrt"


def _deploy_int8(cfg: Any, best_dir: Path, quantized: Path, report: dict[str, Any], echo: Callable[[str], None]) -> Any:
    """A search that chose int8 deploys the quantized model: ``best/experiment.yaml`` points evaluate
    and inference at it (is_quantized). Where TensorRT can build it (a search timed on TensorRT
    quantizes with zero point 0), gen_trt_engine takes it too, with data_type int8 (the QDQ scales,
    no calibration), and a DeepStream config beside it (network-mode int8) is the one the champion
    carries. ONNX Runtime's CPU model (uint8 activations) TensorRT cannot build: gen_trt_engine and
    the DeepStream config stay with the float model, and the quantize step says so. The float files
    stay in best/export/."""
    from segformer.actions.export import deepstream_files
    from segformer.config import apply_overrides, dump_config
    from segformer.deploy.trt import tensorrt_refuses

    overrides: dict[str, Any] = {"evaluate.checkpoint": str(quantized), "evaluate.is_quantized": True,
                                 "inference.checkpoint": str(quantized), "inference.is_quantized": True}
    refused = tensorrt_refuses(quantized)
    if refused is None:
        overrides.update({"gen_trt_engine.onnx_file": str(quantized), "gen_trt_engine.tensorrt.data_type": "int8"})
    cfg = apply_overrides(cfg, overrides)
    dump_config(cfg, best_dir / SPEC_FILE, movable=True)
    step = report["steps"].get("quantize")
    if refused is not None:
        said = ("the int8 model is ONNX Runtime's, for the CPU; gen_trt_engine and the DeepStream config build from "
                "the float model in best/export (TensorRT cannot build it: it needs zero points 0)")
        echo(f"automl: promote quantize: {said}")
        if isinstance(step, dict):
            step["tensorrt"] = f"not for TensorRT: {refused}; {said}"
        return cfg
    config, labels = deepstream_files(cfg, quantized, int(cfg.dataset.segment.num_classes))
    if isinstance(step, dict):
        step.update(deepstream_config=str(config), labels_file=str(labels))
    return cfg


def _precision_skip(state: SearchState, record: TrialRecord) -> str | None:
    """Why the quantize step does not run for a search that chose the deploy precision (fp32 met
    the latency limit, or fp32 was the most accurate allowed)."""
    from automl.deploy import precision_of

    allowed = ((state.settings.get("search") or {}).get("structure") or {}).get("deploy.precision")
    chosen = precision_of(record.latency)
    if allowed and chosen in ("fp32", "fp16"):
        return (f"skipped: the deploy precision is {chosen} (the most accurate of --precisions within the latency "
                "limit)" + ("; TensorRT builds it from the float model" if chosen == "fp16" else ""))
    return None


def _engine_as_timed(state: SearchState, record: TrialRecord, quantized: Any) -> dict[str, Any]:
    """gen_trt_engine's precision and input where the search timed its trials on TensorRT: the
    engine is built as it was timed (int8 from the quantize step's QDQ model, as the search's own
    int8 timing built it); otherwise the spec's gen_trt_engine settings stand."""
    from automl.deploy import precision_of

    chosen = precision_of(record.latency)
    if not _timed_on_tensorrt(state) or chosen is None:
        return {}
    out: dict[str, Any] = {"gen_trt_engine.tensorrt.data_type": chosen}
    if chosen == "int8" and quantized is not None and getattr(quantized, "backend", None) == "onnxruntime":
        out["gen_trt_engine.onnx_file"] = str(quantized.artifact)
    return out


class EarlyPromotion:
    """Promote the best trial on a slot the search no longer needs, while the last trials run.

    A search's tail (every trial started, fewer running than there are slots) leaves slots idle,
    and promotion (an ONNX export alone takes seconds) would otherwise start only after the last
    trial. Once the best trial so far has ended, its checkpoint is final: its promotion steps run in
    a thread meanwhile. At the end :meth:`take` hands the prepared report to :func:`promote` when
    that trial is still the best at the same epoch; when a trial still running overtook it,
    promotion runs again for the new best (the early work cost only idle time). Registration and
    ``promotion.json`` wait for the final answer either way. The thread's output is kept and
    printed at the end, so it does not garble the trials' lines.
    """

    @classmethod
    def for_search(cls, options: Any, expected_trials: int | None, slots: int) -> "EarlyPromotion | None":
        """The early promotion of a search (`automl.options.SearchOptions`), or None where it cannot
        apply: no promotion, one slot, an unknown number of trials (a resumed grid sizes itself), or
        PBT (its trials exploit each other's checkpoints until the end, and a thread competing for
        the CPU would change which)."""
        if not options.promotion.promote or slots < 2 or expected_trials is None or options.search.algorithm == "pbt":
            return None
        return cls(options.promotion, expected_trials=expected_trials, slots=slots)

    def __init__(self, options: PromotionConfig, *, expected_trials: int, slots: int) -> None:
        self.options = options
        self.expected_trials = expected_trials  # trials the search starts in all
        self.slots = slots  # trials that run at once
        self.lines: list[str] = []
        self._thread: Any = None
        self._record: TrialRecord | None = None
        self._report: dict[str, Any] | None = None

    @property
    def started(self) -> bool:
        return self._thread is not None

    @property
    def trial_name(self) -> str | None:
        return self._record.name if self._record is not None else None

    def _ready(self, state: SearchState) -> TrialRecord | None:
        """The best trial, once the search is in its tail and that trial has ended."""
        if self.started or len(state.trials) < self.expected_trials:
            return None
        statuses = [t.status for t in state.trials.values()]
        # A crashed trial that Ray retries stays RUNNING in the ledger (Ray reports a recovery, not
        # an error), so its slot never looks idle; FAILED means it failed for good.
        if PENDING in statuses:
            return None
        running = statuses.count(RUNNING)
        if running == 0 or running >= self.slots:  # nothing left to overlap, or no slot idle
            return None
        best = state.best()
        return best if best is not None and best.status in DONE else None

    def consider(self, state: SearchState) -> bool:
        """Start the early promotion if the search has reached that point; True when started."""
        record = self._ready(state)
        if record is None:
            return False
        import copy
        import threading

        self._record = copy.deepcopy(record)
        snapshot = copy.deepcopy(state)
        self._thread = threading.Thread(target=self._run, args=(snapshot,), name="automl-early-promotion", daemon=True)
        self._thread.start()
        return True

    def _run(self, state: SearchState) -> None:
        assert self._record is not None
        try:
            self._report = prepare(state, self._record, self.options, echo=self.lines.append)
        except Exception as err:  # noqa: BLE001 (promotion then runs again at the end, where errors show)
            self.lines.append(f"automl: early promotion failed: {type(err).__name__}: {err}")
            self._report = None

    def take(self, record: TrialRecord) -> dict[str, Any] | None:
        """Wait for the early promotion; its report if it promoted `record` at its best epoch."""
        if self._thread is None:
            return None
        self._thread.join()
        early = self._record
        if self._report is None or early is None:
            return None
        if (early.trial_id, early.best_epoch, early.checkpoint) != (record.trial_id, record.best_epoch, record.checkpoint):
            self.lines.append(f"automl: {record.name} overtook {early.name} after its early promotion; "
                              f"promoting {record.name}")
            return None
        self._report.setdefault("timing", {})["early"] = True
        return self._report


def _no_cuda() -> bool:
    try:
        import torch

        return not torch.cuda.is_available()
    except ImportError:
        return True


def _write(best_dir: Path, report: dict[str, Any]) -> None:
    atomic_write_text(best_dir / "promotion.json", json.dumps(report, indent=2, default=str))
