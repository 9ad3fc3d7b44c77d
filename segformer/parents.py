"""Parent models: every model path field of an action takes a folder as well as a file.

TAO's SDK hands an action its *parent model*: the results folder of the job before it. Here the
same fields take such a folder; the action picks the file in it and prints one line saying which
and why, for example::

    evaluate.checkpoint: /r/train is a train results folder; using /r/train/model_epoch_003_step_00008.pth
    (the best checkpoint by val_miou in status.json: epoch 3, 0.4123)

A path that is a file, or that does not exist, is used as given (the action reports a missing one
as before). This docstring is the one statement of the rule.

What each field looks for, first preference first
=================================================

- ``train.pretrained_model_path``: the best PyTorch checkpoint.
- ``train.resume_training_checkpoint_path``: the latest PyTorch checkpoint (training goes on from
  where it stopped, not from its best epoch).
- ``evaluate.checkpoint``, ``inference.checkpoint``: the best PyTorch checkpoint, else the fp32 ONNX
  model; with ``<section>.is_quantized: true`` the quantized model instead.
- ``evaluate.trt_engine``, ``inference.trt_engine``: a TensorRT engine.
- ``export.checkpoint``: the best PyTorch checkpoint.
- ``quantize.model_path``: the best PyTorch checkpoint; for the ONNX backends (``onnxruntime``,
  ``modelopt.onnx``) the fp32 ONNX model first (what AutoML's promotion feeds them too). The backend
  is the one that runs: ``torchao`` where it cannot be imported is ``onnxruntime``
  (`segformer.actions.quantize.resolve_backend`).
- ``gen_trt_engine.onnx_file``: the fp32 ONNX model; with ``tensorrt.data_type: int8`` a quantized
  (QDQ) ONNX model first, whose scales TensorRT then uses instead of calibrating, when TensorRT can
  build it (zero points 0: not ONNX Runtime's default uint8 CPU model, `segformer.deploy.trt.tensorrt_refuses`).

Where each is found, as its producer writes it
==============================================

- PyTorch checkpoint: a train results folder (``<results_dir>/train``): ``model_epoch_<EEE>_step_<SSSSS>.pth``
  and ``segformer_model_latest.pth`` (`segformer.engine.callbacks`). The *best* is the checkpoint
  of the epoch with the highest ``val_miou`` in the folder's ``status.json`` (matched by epoch and
  step; the first of equal scores, like ``TrainResult.best_epoch``). ``segformer_model_latest.pth``
  is an epoch's checkpoint when it is a link to that epoch's numbered file, else the last epoch's
  when it was written after ``status.json`` (a run killed between the two leaves the epoch before's
  weights in it, which then count as no epoch's). When that epoch's checkpoint is
  gone (``checkpoint_interval`` > 1, or pruned), the best of those still there, and the line says
  so; with no validated epoch that has a checkpoint, the latest. The *latest* is
  ``segformer_model_latest.pth`` (else the newest numbered one).
- fp32 ONNX model: an export folder: ``segformer.onnx``, else its only ``.onnx`` file (the quantized
  artifacts and quantize's own ``float_model.onnx`` do not count).
- quantized model: a quantize folder: ``quantized_model_<backend>.pth|.onnx``; of several, the one
  its ``quantize_report.json`` names (the last quantize run).
- TensorRT engine: a gen_trt_engine folder: ``segformer.engine``, else its only ``.engine``,
  ``.plan`` or ``.trt`` file.

Which folders
=============

- An action's results folder (``<results_dir>/train``, ``<results_dir>/export`` ...): its own files.
- A results folder (a spec's ``results_dir``, TAO's job output folder): the files of its
  ``train/``, ``export/``, ``quantize/`` and ``gen_trt_engine/``.
- An AutoML trial folder (``<search>/trial_NNN``): for the best checkpoint, the checkpoint of its
  best epoch as the search recorded it (``automl_state.json``; Ray's copy in
  ``ray/search/trial_NNN/checkpoint_*/checkpoint.ckpt``), looked for under this ``<search>`` first;
  the ledger's absolute path counts only when it lies in ``<search>`` (a search folder renamed, and
  a new search made at its old path, must not lend its trials the new one's checkpoints). Else its
  ``train/`` by the rule above (a search keeps only the latest of a trial's per-epoch checkpoints
  there). AutoML's promotion picks a trial's checkpoint by this rule too (`trial_checkpoint`).
- An AutoML search folder (it holds ``automl_state.json``): its promoted model, ``best/``.
- ``best/``, the promoted model: ``model.pth`` (the best trial at its best epoch: both the best
  and the latest checkpoint), and its ``export/``, ``quantize/``, ``gen_trt_engine/``.

A folder with nothing the field takes, or with two candidates the rule cannot order, is one
:class:`~segformer.errors.SegformerError` naming the folder, what was looked for and how to fix it.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from segformer.errors import SegformerError

__all__ = ["PARENT_FIELDS", "Choice", "field_wants", "resolve_folder", "resolve_parents", "trial_checkpoint"]

log = logging.getLogger(__name__)

# The model path fields of each action (TAO's `parent_model`, `resume_model` and
# `ptm_if_no_resume_model` spec parameters).
PARENT_FIELDS: dict[str, tuple[str, ...]] = {
    "train": ("train.pretrained_model_path", "train.resume_training_checkpoint_path"),
    "evaluate": ("evaluate.checkpoint", "evaluate.trt_engine"),
    "inference": ("inference.checkpoint", "inference.trt_engine"),
    "export": ("export.checkpoint",),
    "quantize": ("quantize.model_path",),
    "gen_trt_engine": ("gen_trt_engine.onnx_file",),
}

# What an AutoML search writes (automl.layout, automl.promote). segformer never imports automl;
# tests/automl/test_parents_search.py keeps these equal to automl's own names.
SEARCH_STATE_FILE = "automl_state.json"
BEST_DIR = "best"
PROMOTED_CHECKPOINT = "model.pth"
PROMOTION_FILE = "promotion.json"
RAY_TRIALS_DIR = "ray/search"
RAY_CHECKPOINT_FILE = "checkpoint.ckpt"
TRIAL_NAME = re.compile(r"trial_\d+")

# What a field can look for -> (how a message names it, the action whose results folder holds it)
WANTS: dict[str, tuple[str, str]] = {
    "best": ("a PyTorch checkpoint (model_epoch_*.pth or segformer_model_latest.pth of a train run, "
             "or best/model.pth of a search)", "train"),
    "latest": ("a PyTorch checkpoint to resume (segformer_model_latest.pth of a train run, or best/model.pth)", "train"),
    "onnx": ("an fp32 ONNX model (export's segformer.onnx)", "export"),
    "quantized": ("a quantized model (quantize's quantized_model_<backend>.pth or .onnx)", "quantize"),
    "engine": ("a TensorRT engine (gen_trt_engine's segformer.engine)", "gen_trt_engine"),
    "tensorrt_qdq": ("a quantized ONNX model TensorRT builds (quantize's quantized_model_modelopt.onnx, or "
                     "quantized_model_onnxruntime.onnx written with backend_kwargs {symmetric: true})", "quantize"),
}


@dataclass(frozen=True)
class Choice:
    """A file picked in a parent folder, and why (the end of the printed line)."""

    path: Path
    why: str


# ----------------------------------------------------------------------------------------- public
def field_wants(cfg: Any, key: str, *, quantize_backend: str | None = None) -> tuple[str, ...]:
    """What ``key`` looks for in a folder (keys of :data:`WANTS`), first preference first.
    ``quantize_backend``: the backend quantize runs (by default ``quantize.backend`` as
    `segformer.actions.quantize.resolve_backend` resolves it)."""
    section_name, _, name = key.partition(".")
    section = getattr(cfg, section_name)
    if key == "train.resume_training_checkpoint_path":
        return ("latest",)
    if name == "trt_engine":
        return ("engine",)
    if section_name in ("evaluate", "inference"):
        return ("quantized",) if section.is_quantized else ("best", "onnx")
    if key == "quantize.model_path":
        from segformer.deploy.quantize import ONNX_BACKENDS

        if quantize_backend is None:
            from segformer.actions.quantize import resolve_backend

            quantize_backend, _ = resolve_backend(str(section.backend))
        return ("onnx", "best") if quantize_backend in ONNX_BACKENDS else ("best",)
    if key == "gen_trt_engine.onnx_file":
        return ("tensorrt_qdq", "onnx") if str(section.tensorrt.data_type).lower() == "int8" else ("onnx",)
    return ("best",)


def resolve_parents(cfg: Any, action: str, *, quiet: bool = False, quantize_backend: str | None = None) -> Any:
    """``cfg`` with each model path field of ``action`` that names a folder set to the file picked
    in it (a new config through ``apply_overrides``; ``cfg`` itself when no field names a folder).
    Prints one line per pick unless ``quiet`` (it is logged either way). ``quantize_backend``: see
    :func:`field_wants`."""
    changes: dict[str, str] = {}
    for key in PARENT_FIELDS.get(action, ()):
        section_name, _, name = key.partition(".")
        value = getattr(getattr(cfg, section_name), name)
        if not value:
            continue
        folder = Path(str(value)).expanduser()
        if not folder.is_dir():
            continue
        choice = resolve_folder(folder, key, field_wants(cfg, key, quantize_backend=quantize_backend))
        line = f"{key}: {folder} is {_kind(folder)}; using {choice.path} ({choice.why})"
        log.info(line)
        if not quiet:
            print(line)
        changes[key] = str(choice.path)
    if not changes:
        return cfg
    from segformer.config import apply_overrides

    return apply_overrides(cfg, changes)


def resolve_folder(folder: Path, key: str, wants: tuple[str, ...]) -> Choice:
    """The file ``key`` takes from ``folder`` (the module docstring's rule), or one SegformerError."""
    find = _finder(folder, key)
    try:
        for i, want in enumerate(wants):
            choice = find(want)
            if choice is not None:
                return _stale(choice, find, wants[i + 1:]) if want == "onnx" else choice
    except SegformerError as err:
        raise SegformerError(f"{key}: {err}") from None
    raise SegformerError(_nothing_message(folder, key, wants, find))


def _stale(onnx: Choice, find: Callable[[str], Choice | None], others: tuple[str, ...]) -> Choice:
    """The ONNX model taken where the checkpoint it was exported from would do too (quantize's ONNX
    backends): said to be older than the checkpoint when a training wrote that since (a resume)."""
    try:
        checkpoint = find("best") if "best" in others else None
    except SegformerError:  # no checkpoint to compare with: the ONNX model was picked all the same
        checkpoint = None
    if checkpoint is None or not _written_after(checkpoint.path, onnx.path):
        return onnx
    return Choice(onnx.path, f"{onnx.why}; NOTE: it is older than {checkpoint.path}, so it may hold an earlier model: "
                             "export again to use the newer one")


# --------------------------------------------------------------------------------------- folders
def _finder(folder: Path, key: str) -> Callable[[str], Choice | None]:
    """want -> Choice (or None) for this kind of folder."""
    if (folder / SEARCH_STATE_FILE).is_file():
        best = folder / BEST_DIR
        if not best.is_dir():
            raise SegformerError(
                f"{key}: {folder} is an AutoML search folder without a promoted model ({best} does not exist: the "
                f"search has not finished, or ran without promotion); give one of its trial folders "
                f"({folder}/trial_NNN) or the file itself")

        def in_search(want: str) -> Choice | None:
            choice = _in_best(best, want)
            return None if choice is None else Choice(choice.path, f"its promoted model in {BEST_DIR}/: {choice.why}")
        return in_search
    if _is_best(folder):
        return lambda want: _in_best(folder, want)
    if _is_trial(folder):
        return lambda want: _in_trial(folder, want)
    return lambda want: _in_results(folder, want)


def _kind(folder: Path) -> str:
    if (folder / SEARCH_STATE_FILE).is_file():
        return "an AutoML search folder"
    if _is_best(folder):
        return "an AutoML promoted-model folder (best/)"
    if _is_trial(folder):
        return "an AutoML trial folder"
    actions = dict.fromkeys(action for _, action in WANTS.values())
    if any((folder / action).is_dir() for action in actions):
        return "a results folder"
    for want, (_, action) in WANTS.items():
        article = "an" if action[0] in "aeiou" else "a"
        try:
            if _FINDERS[want](folder) is not None:
                return f"{article} {action} results folder"
        except SegformerError:
            return f"{article} {action} results folder"
    return "a folder"


def _is_best(folder: Path) -> bool:
    return (folder / PROMOTION_FILE).is_file() or (folder.name == BEST_DIR and (folder / PROMOTED_CHECKPOINT).is_file())


def _is_trial(folder: Path) -> bool:
    return TRIAL_NAME.fullmatch(folder.name) is not None and (folder.parent / SEARCH_STATE_FILE).is_file()


def _in_results(folder: Path, want: str) -> Choice | None:
    """From the folder itself (an action's results folder), else from its action subfolder."""
    action = WANTS[want][1]
    for place in (folder, folder / action):
        if place.is_dir():
            choice = _FINDERS[want](place)
            if choice is not None:
                return choice if place == folder else Choice(choice.path, f"{choice.why}; from its {action}/")
    return None


def _in_best(best: Path, want: str) -> Choice | None:
    model = best / PROMOTED_CHECKPOINT
    if want in ("best", "latest") and model.is_file():
        return Choice(model, "the promoted checkpoint: the best trial at its best epoch")
    return _in_results(best, want)


def _in_trial(trial: Path, want: str) -> Choice | None:
    if want == "best":
        recorded, score = _ledger_entry(trial)
        return trial_checkpoint(trial, recorded, score=score)
    return _in_results(trial, want)


def trial_checkpoint(trial: Path, recorded: str | Path | None, *, score: str = "") -> Choice | None:
    """The best checkpoint of the AutoML trial folder ``trial`` (``<search>/trial_NNN``): the
    checkpoint in its Ray checkpoint folder ``recorded`` (as the search's ledger records it; None
    when it records none), found by the module docstring's rule, else its ``train/``'s best."""
    if recorded:
        search, recorded = trial.parent, Path(str(recorded))
        own = search / RAY_TRIALS_DIR / trial.name / recorded.name
        for folder in (own, recorded):
            if (folder / RAY_CHECKPOINT_FILE).is_file() and (folder is own or _inside(folder, search)):
                return Choice(folder / RAY_CHECKPOINT_FILE,
                              f"its best epoch's checkpoint, as the search recorded it in {SEARCH_STATE_FILE}{score}")
    return _in_results(trial, "best")


def _ledger_entry(trial: Path) -> tuple[str | None, str]:
    """(the Ray checkpoint folder its search's ledger records for ``trial``, ": <metric> <value>" or "")."""
    try:
        state = json.loads((trial.parent / SEARCH_STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None, ""
    records = state.get("trials") if isinstance(state, dict) else None
    for record in (records.values() if isinstance(records, dict) else ()):
        if isinstance(record, dict) and record.get("name") == trial.name and record.get("checkpoint"):
            value = record.get("best_value")
            score = f": {state.get('metric') or 'metric'} {value:.4f}" if isinstance(value, (int, float)) else ""
            return str(record["checkpoint"]), score
    return None, ""


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` lies in ``folder`` (links resolved)."""
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except OSError:
        return False


# ---------------------------------------------------------------------------------- one producer
def _train_checkpoint(folder: Path, *, latest: bool = False) -> Choice | None:
    """The best (or latest) checkpoint of a train results folder; None when it has none."""
    from segformer.engine.checkpoint_files import LATEST_NAME, STATUS_NAME, parse_checkpoint_name

    latest_file = folder / LATEST_NAME
    numbered = {key: path for path in folder.glob("model_epoch_*.pth")
                if path.is_file() and (key := parse_checkpoint_name(path.name)) is not None}
    if not numbered and not latest_file.is_file():
        return None
    newest = "the newest numbered checkpoint (there is no segformer_model_latest.pth)"
    if latest:
        return Choice(latest_file, "the latest checkpoint") if latest_file.is_file() else \
            Choice(numbered[max(numbered)], newest)

    history = read_status(folder / STATUS_NAME)
    on_disk: dict[tuple[int, int], Path] = dict(numbered)
    if latest_file.is_file() and history:
        # The latest file is a link to a numbered checkpoint, or the state at the end of the last
        # epoch in status.json when written after it: status.json is written first, so one written
        # before it holds an earlier epoch's weights (a run killed in between) and is no epoch's.
        twin = next((key for key, path in numbered.items() if _same_file(path, latest_file)), None)
        if twin is None and _written_after(latest_file, folder / STATUS_NAME):
            twin = (history[-1]["epoch"], history[-1]["step"])
        if twin is not None:
            on_disk.setdefault(twin, latest_file)
    validated = [r for r in history if r["val_miou"] is not None]
    kept = [r for r in validated if (r["epoch"], r["step"]) in on_disk]
    if kept:
        chosen = max(kept, key=lambda r: r["val_miou"])  # max keeps the first of equals
        why = f"the best checkpoint by val_miou in {STATUS_NAME}: epoch {chosen['epoch']}, {chosen['val_miou']:.4f}"
        overall = max(validated, key=lambda r: r["val_miou"])
        if overall is not chosen:
            # Past every checkpoint on disk: the run stopped between status.json's line and the save.
            lost = (overall["epoch"], overall["step"]) > max(on_disk)
            why += (f"; epoch {overall['epoch']} scored {overall['val_miou']:.4f} but " +
                    ("the run stopped before its checkpoint was written" if lost else
                     "its checkpoint is not kept (train.checkpoint_interval)"))
        return Choice(on_disk[(chosen["epoch"], chosen["step"])], why)
    reason = f"{STATUS_NAME} has no validated epoch with a checkpoint here"
    if latest_file.is_file():
        return Choice(latest_file, f"the latest checkpoint: {reason}")
    return Choice(numbered[max(numbered)], f"{newest}: {reason}")


def check_weight_files(cfg: Any) -> None:
    """The weight files a training loads exist: one message naming the key, not a traceback. `automl
    run` calls it before any trial (each would fail with it), where train.pretrained_model_path may
    still be a results folder (`segformer.parents` picks its file when the trial resolves it)."""
    for key, path, found, fix in (
            ("train.pretrained_model_path", cfg.train.pretrained_model_path, Path.exists,
             "give the weights file, or the results folder of the run that wrote it"),
            ("model.backbone.pretrained_backbone_path", cfg.model.backbone.pretrained_backbone_path, Path.is_file,
             "give the backbone's weights file, or clear the key to train the backbone from scratch")):
        if path and "://" not in str(path) and not found(Path(path)):
            raise SegformerError(f"{key} points to {path}, which does not exist; {fix}")


def read_status(path: str | Path) -> list[dict[str, Any]]:
    """A training's ``status.json`` (one JSON object per epoch) as [{epoch, step, val_miou}]:
    val_miou None in epochs without validation; lines it cannot read are passed over, and a
    missing file is no epochs. The one reader of the file (checkpoint choice here, benchmarks)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    records = []
    for line in lines:
        try:
            record = json.loads(line)
            epoch, step, miou = int(record["epoch"]), int(record["step"]), record.get("val_miou")
        except (ValueError, TypeError, KeyError):
            continue
        miou = float(miou) if isinstance(miou, (int, float)) and math.isfinite(miou) else None
        records.append({"epoch": epoch, "step": step, "val_miou": miou})
    return records


def _written_after(path: Path, other: Path) -> bool:
    try:
        return path.stat().st_mtime_ns > other.stat().st_mtime_ns
    except OSError:
        return False


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


def _onnx(folder: Path) -> Choice | None:
    from segformer.actions.export import DEFAULT_ONNX_NAME
    from segformer.actions.quantize import FLOAT_ONNX_NAME
    from segformer.deploy.quantize.artifacts import ARTIFACT_NAMES

    others = {*ARTIFACT_NAMES.values(), FLOAT_ONNX_NAME}
    found = sorted(p for p in folder.glob("*.onnx") if p.is_file() and p.name not in others)
    return _one(folder, found, DEFAULT_ONNX_NAME, "the fp32 ONNX model export writes", "fp32 ONNX models")


def _engine(folder: Path) -> Choice | None:
    from segformer.actions.gen_trt_engine import DEFAULT_ENGINE_NAME
    from segformer.engine.predictor import TRT_SUFFIXES

    found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in TRT_SUFFIXES)
    return _one(folder, found, DEFAULT_ENGINE_NAME, "the engine gen_trt_engine writes", "TensorRT engines")


def _one(folder: Path, found: list[Path], default: str, what: str, plural: str) -> Choice | None:
    """The file by its producer's default name, else the only one; several others are ambiguous."""
    if not found:
        return None
    if (folder / default) in found:
        return Choice(folder / default, f"{what}, {default}")
    if len(found) == 1:
        return Choice(found[0], f"the only {plural[:-1]} there")
    raise SegformerError(f"{folder} holds {len(found)} {plural} ({', '.join(p.name for p in found)}) and none is "
                         f"named {default}: give the file itself")


def _quantized(folder: Path, *, onnx_only: bool = False) -> Choice | None:
    from segformer.actions.quantize import REPORT_NAME
    from segformer.deploy.quantize.artifacts import ARTIFACT_NAMES

    found = [folder / name for name in ARTIFACT_NAMES.values()
             if (folder / name).is_file() and (not onnx_only or name.endswith(".onnx"))]
    if len(found) <= 1:
        return Choice(found[0], "the quantized model quantize wrote") if found else None
    try:
        last = Path(str(json.loads((folder / REPORT_NAME).read_text(encoding="utf-8")).get("artifact"))).name
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        last = None
    chosen = next((path for path in found if path.name == last), None)
    if chosen is None:
        raise SegformerError(f"{folder} holds {len(found)} quantized models ({', '.join(p.name for p in found)}) and "
                             f"its {REPORT_NAME} names none of them: give the file itself")
    return Choice(chosen, f"the quantized model of the last quantize run, as its {REPORT_NAME} names it")


def _tensorrt_qdq(folder: Path) -> Choice | None:
    """The quantized ONNX model of the folder when TensorRT can build it (zero points 0), else None:
    ONNX Runtime's default CPU model (uint8) is passed over for the float model, calibrated."""
    from segformer.deploy.trt import tensorrt_refuses

    choice = _quantized(folder, onnx_only=True)
    return choice if choice is not None and tensorrt_refuses(choice.path) is None else None


_FINDERS: dict[str, Callable[[Path], Choice | None]] = {
    "best": _train_checkpoint,
    "latest": lambda folder: _train_checkpoint(folder, latest=True),
    "onnx": _onnx,
    "quantized": _quantized,
    "tensorrt_qdq": _tensorrt_qdq,
    "engine": _engine,
}


# --------------------------------------------------------------------------------------- messages
def _nothing_message(folder: Path, key: str, wants: tuple[str, ...], find: Callable[[str], Choice | None]) -> str:
    looked = "; or ".join(f"{WANTS[w][0]} in it or in its {WANTS[w][1]}/" for w in wants)
    message = (f"{key}: {folder} is {_kind(folder)} with nothing {key} takes: looked for {looked}. Give the file "
               f"itself ({key}=/path/to/file) or the results folder of the run that wrote it")
    hint = _other_model_hint(key, wants, find)
    return f"{message}; {hint}" if hint else message


def _other_model_hint(key: str, wants: tuple[str, ...], find: Callable[[str], Choice | None]) -> str | None:
    """When the folder holds another kind of model: which, and the setting that would take it."""
    section, _, name = key.partition(".")
    for want in ("best", "onnx", "quantized", "engine"):
        if want in wants:
            continue
        try:
            other = find(want)
        except SegformerError:
            continue
        if other is None:
            continue
        holds = f"it holds {WANTS[want][0].split(' (')[0]}, {other.path}"
        if "tensorrt_qdq" in wants and want == "quantized" and other.path.suffix == ".onnx":
            from segformer.deploy.trt import TENSORRT_INT8_HINT, tensorrt_refuses

            why = tensorrt_refuses(other.path)
            if why:  # at int8 the quantized model is passed over: say why, and the two ways on
                return (f"{holds}, which TensorRT cannot build ({why}): give the float ONNX model with "
                        f"calibration images, or {TENSORRT_INT8_HINT}")
        if section not in ("evaluate", "inference"):
            return f"{holds}, which {key} does not take"
        if name == "trt_engine":
            fix = f"give it as {section}.checkpoint" + (f" with {section}.is_quantized=true" if want == "quantized" else "")
        elif want == "engine":
            fix = f"give the folder as {section}.trt_engine"
        else:
            fix = f"set {section}.is_quantized={'true' if want == 'quantized' else 'false'}"
        return f"{holds}: {fix} to use it"
    return None
