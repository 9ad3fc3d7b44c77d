"""``segformer train``: fit a SegFormer with PyTorch Lightning and write TAO's results layout.

Outputs in ``results_dir/train`` (``train.results_dir`` or ``<results_dir>/train``):

- ``segformer_model_latest.pth``: Lightning checkpoint after every epoch (resume from it);
- ``model_epoch_<EEE>_step_<SSSSS>.pth`` every ``checkpoint_interval`` epochs or steps
  (0-based epoch index and optimizer steps so far, as Lightning and TAO number them);
- ``status.json``: one JSON object per line per epoch (``val_miou`` in 0..1);
- ``experiment.yaml``: the resolved spec;
- ``tensorboard/`` and an MLflow run when enabled;
- ``timing.json`` (step vs overhead wall time) only when a benchmark asks for it with
  ``SEGFORMER_STEP_TIMING`` (see ``segformer.engine.timing``).

All checkpoints are Lightning checkpoints written atomically, loadable with
``torch.load(weights_only=True)``; our model description is under ``checkpoint["segformer_meta"]``
so evaluate/export/``segformer.model.load_model_weights`` read them directly.

Nothing is written before the dataset has been checked, and when training fails before its
first checkpoint the files this run created are removed again (logs stay).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from torch import nn

from segformer.config import ExperimentConfig, action_results_dir, dump_config, to_dict
from segformer.data import build_datamodule
from segformer.engine.callbacks import AtomicCheckpointIO, EpochLines, PeriodicCheckpoint, RngState, StatusLog
from segformer.engine.checkpoint_files import LATEST_NAME, STATUS_NAME
from segformer.engine.module import SegFormerModule
from segformer.engine.optim import OptimizerSettings
from segformer.engine.timing import TIMING_NAME, StepTiming, step_timing_requested
from segformer.errors import CheckpointError, SegformerError
from segformer.fileio import mlflow_artifact_root
from segformer.heartbeat import is_terminal
from segformer.model import build_segformer, check_input_size, load_pretrained_model
from segformer.parents import check_weight_files, resolve_parents

log = logging.getLogger(__name__)

SPEC_NAME = "experiment.yaml"


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced. ``best_miou`` is in 0..1 (None if no validation ran)."""

    best_miou: float | None
    best_epoch: int | None
    last_checkpoint: Path
    results_dir: Path
    history: tuple[dict, ...]
    trained: bool = True  # False: a resume whose checkpoint had trained every epoch asked for already


def run(cfg: ExperimentConfig, *, callbacks: Sequence[Callback] = (), quiet: bool = False) -> TrainResult:
    """Train as the spec says. ``callbacks`` are extra Lightning callbacks (AutoML's Ray Tune
    reporter reads ``val_miou`` from them); ``quiet`` drops the progress bar and Lightning's
    banners (AutoML trials)."""
    cfg = resolve_parents(cfg, "train", quiet=quiet)  # a results folder as pretrained/resume path: its checkpoint
    train_cfg = cfg.train
    results_dir = action_results_dir(cfg, "train")
    resume = train_cfg.resume_training_checkpoint_path
    if resume and not Path(resume).is_file():
        raise SegformerError(f"train.resume_training_checkpoint_path points to {resume}, which does not exist")
    check_weight_files(cfg)  # on a resume too: the spec names a file that is not there (the resume itself does not read it)
    if not resume:
        _refuse_previous_training(results_dir)

    check_input_size(cfg.model, cfg.dataset.segment.img_size)  # seconds, not after the data check

    with _quiet_lightning(quiet):
        # Check every file of the splits in use before anything is written. (The data draws from
        # generators of its own, so the seed can wait for the model: a bad palette or file is said
        # without Lightning's "Seed set to" line above it.)
        datamodule = build_datamodule(cfg.dataset.segment, seed=max(train_cfg.seed, 0),
                                      shard_train=not train_cfg.use_distributed_sampler)
        datamodule.setup("fit")
        if train_cfg.seed >= 0:
            L.seed_everything(train_cfg.seed, workers=True, verbose=not quiet)
        model = build_segformer(cfg.model, datamodule.num_classes, load_pretrained=not resume)  # resumed: its weights
        if train_cfg.pretrained_model_path and not resume:
            load_pretrained_model(model, train_cfg.pretrained_model_path, backbone=cfg.model.backbone.type)
        resumed_step = None
        if resume:  # Lightning's own refusal lists every tensor (30 KB)
            resumed_step = _check_resume_fits(Path(resume), cfg, datamodule.num_classes)
        module = build_module(cfg, model, datamodule.class_names)

        status = StatusLog(results_dir / STATUS_NAME)
        checkpoints = PeriodicCheckpoint(results_dir, train_cfg.checkpoint_interval, train_cfg.checkpoint_interval_unit)
        run_callbacks: list[Callback] = [status, RngState(), checkpoints]
        bar = not quiet and is_terminal(sys.stdout)  # off a terminal, a line per epoch instead of a bar
        if not quiet and not bar:
            run_callbacks.append(EpochLines(status))
        logs = [status.path]
        if step_timing_requested():  # step vs overhead wall time, for the benchmarks only
            timing = StepTiming(results_dir / TIMING_NAME)
            run_callbacks.append(timing)
            logs.append(timing.path)
        trainer = build_trainer(cfg, results_dir, [*run_callbacks, *callbacks], quiet=quiet, bar=bar)

        existed = {path: path.exists() for path in logs}
        spec_before = _read_or_none(results_dir / SPEC_NAME)  # put back when nothing trains (it describes the checkpoint)
        try:
            created = _write_spec(cfg, results_dir)
        except OSError as exc:
            raise SegformerError(write_error_message(exc, results_dir)) from exc
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
        except BaseException as exc:
            # SystemExit(0) is an orderly stop from outside, e.g. an AutoML scheduler ending a trial
            # inside a reporting callback: what the run wrote so far is a result, not debris.
            stopped = isinstance(exc, SystemExit) and exc.code in (0, None)
            if not checkpoints.saved and not stopped:
                _remove_created([path for path in logs if not existed[path]] + created)
            translated = _translate_failure(exc, cfg, results_dir)
            if translated is not None:
                raise translated from exc
            raise

    history = tuple(status.history)
    validated = [r for r in history if r.get("val_miou") is not None]
    best = max(validated, key=lambda r: r["val_miou"], default=None)
    nothing = resumed_step is not None and trainer.global_step == resumed_step  # Lightning stopped at once, in silence
    if nothing:  # what this run wrote goes: the spec it would have trained, a new folder
        if spec_before is None:
            _remove_created(created)
        else:
            (results_dir / SPEC_NAME).write_bytes(spec_before)
    if nothing and trainer.is_global_zero:
        done = int(trainer.current_epoch)  # the epochs the checkpoint has completed
        note = (f"nothing trained: {resume} has trained {done} epoch{'s' if done != 1 else ''} already, and "
                f"train.num_epochs asks for {train_cfg.num_epochs}; raise train.num_epochs above {done} to train on from it")
        if quiet:
            log.warning(note)
        else:
            print(f"segformer train: {note}", file=sys.stderr, flush=True)
    elif not quiet and trainer.is_global_zero:  # where the results went (Lightning's last line: "max_epochs reached")
        numbered = len(list(results_dir.glob("model_epoch_*.pth")))
        score = f"; best val_miou {best['val_miou']:.4f} at epoch {best['epoch']}" if best is not None else ""
        print(f"segformer train: wrote {results_dir}: {checkpoints.latest_path.name}, {numbered} numbered "
              f"checkpoint{'s' if numbered != 1 else ''}, {STATUS_NAME}, {SPEC_NAME}{score}", flush=True)
    return TrainResult(
        best_miou=None if best is None else float(best["val_miou"]),
        best_epoch=None if best is None else int(best["epoch"]),
        last_checkpoint=Path(resume) if nothing else checkpoints.latest_path,  # nothing written: the checkpoint resumed
        results_dir=results_dir,
        history=history,
        trained=not nothing,
    )


def _refuse_previous_training(results_dir: Path) -> None:
    """A training from scratch does not go into a folder that holds another one's checkpoints: its
    numbered checkpoints would stay beside the new run's and, matching the new status.json's epochs,
    could be taken for the new run's (`segformer.parents`)."""
    from segformer.parents import read_status

    numbered = sorted(results_dir.glob("model_epoch_*.pth"))
    latest = results_dir / LATEST_NAME
    if not (numbered or latest.is_file()):
        return  # no weights: a run killed before its first checkpoint, whose status.json may be written again
    epochs = len(read_status(results_dir / STATUS_NAME))
    held = ", ".join(part for part in (f"{epochs} epoch{'s' if epochs != 1 else ''} in {STATUS_NAME}" if epochs else "",
                                      f"{len(numbered)} numbered checkpoint{'s' if len(numbered) != 1 else ''}" if numbered else "",
                                      LATEST_NAME if latest.is_file() else "") if part)
    newest = latest if latest.is_file() else numbered[-1]
    raise SegformerError(f"{results_dir} already holds a training ({held}); to continue it, set "
                         f"train.resume_training_checkpoint_path={newest}; to train from the start, give another "
                         "results_dir (or move that folder away first)")


# ----------------------------------------------------------------------------- builders
def build_module(cfg: ExperimentConfig, model: nn.Module, class_names: Sequence[str] = ()) -> SegFormerModule:
    """``train.optim`` + ``model`` + ``dataset.segment`` -> :class:`SegFormerModule` arguments."""
    optim = cfg.train.optim
    if cfg.train.segment.loss != "ce":
        raise SegformerError(f"train.segment.loss must be 'ce', got {cfg.train.segment.loss!r}")
    settings = OptimizerSettings(
        name=optim.optim,
        lr=float(optim.lr),
        momentum=float(optim.momentum),
        weight_decay=float(optim.weight_decay),
        policy=optim.policy,
        warmup_ratio=float(optim.warmup_ratio),
        lr_steps=tuple(optim.lr_steps or ()),
        lr_decay=float(optim.lr_decay),
    )
    return SegFormerModule(
        model,
        num_classes=int(cfg.dataset.segment.num_classes),
        optimizer=settings,
        align_corners=bool(cfg.model.decode_head.align_corners),
        freeze_backbone=bool(cfg.model.backbone.freeze_backbone),
        class_names=class_names,
        meta=model_meta(cfg, class_names),
    )


def model_meta(cfg: ExperimentConfig, class_names: Sequence[str] = ()) -> dict[str, Any]:
    """Plain description stored with every checkpoint (enough to rebuild and use the model)."""
    segment = to_dict(cfg)["dataset"]["segment"]
    return {
        "backbone": cfg.model.backbone.type,
        "num_classes": int(cfg.dataset.segment.num_classes),
        "embed_dim": int(cfg.model.decode_head.decoder_params.embed_dim),
        "in_index": list(cfg.model.decode_head.in_index or []),
        "align_corners": bool(cfg.model.decode_head.align_corners),
        "img_size": int(cfg.dataset.segment.img_size),
        "mean": [float(v) for v in cfg.dataset.segment.augmentation.mean],
        "std": [float(v) for v in cfg.dataset.segment.augmentation.std],
        "label_transform": segment.get("label_transform"),
        "palette": segment.get("palette"),
        "class_names": list(class_names),
    }


def build_trainer(cfg: ExperimentConfig, results_dir: Path, callbacks: Sequence[Callback], *,
                  quiet: bool = False, bar: bool | None = None) -> L.Trainer:
    """``train`` section -> ``lightning.Trainer`` (devices, strategy, precision, loggers, intervals).
    ``bar``: Lightning's progress bar (default: unless ``quiet``)."""
    bar = not quiet if bar is None else bar
    train_cfg = cfg.train
    accelerator, devices, num_nodes = resolve_devices(train_cfg.num_gpus, train_cfg.gpu_ids, train_cfg.num_nodes)
    distributed = num_nodes > 1 or (isinstance(devices, list) and len(devices) > 1)
    precision = resolve_precision(bool(train_cfg.amp), accelerator)
    all_callbacks = list(callbacks)
    if bar:
        all_callbacks.append(TQDMProgressBar(refresh_rate=1))
    return L.Trainer(
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy="ddp_find_unused_parameters_true" if distributed else "auto",
        sync_batchnorm=bool(train_cfg.sync_batchnorm) and distributed,
        use_distributed_sampler=bool(train_cfg.use_distributed_sampler),
        precision=precision,
        max_epochs=int(train_cfg.num_epochs),
        check_val_every_n_epoch=int(train_cfg.validation_interval),
        num_sanity_val_steps=0,
        callbacks=all_callbacks,
        logger=_loggers(cfg, results_dir) or False,
        enable_progress_bar=bar,
        enable_model_summary=not quiet,
        log_every_n_steps=10,
        deterministic="warn" if train_cfg.cudnn.deterministic else False,
        benchmark=bool(train_cfg.cudnn.benchmark),
        default_root_dir=str(results_dir),
        plugins=[AtomicCheckpointIO()],
    )


def resolve_devices(num_gpus: int, gpu_ids: Sequence[int] | None, num_nodes: int) -> tuple[str, Any, int]:
    """(accelerator, devices, num_nodes) for Lightning; the CPU with a note when there is no GPU."""
    if not torch.cuda.is_available():
        log.warning("no CUDA GPU found: training on the CPU (slow); train.num_gpus=%s, gpu_ids=%s and "
                    "num_nodes=%s are ignored", num_gpus, list(gpu_ids or []), num_nodes)
        return "cpu", 1, 1
    from segformer.config.loader import settle_gpus

    _, ids = settle_gpus(num_gpus, list(gpu_ids or [0]))  # as the spec loader settles them (TAO's rule)
    available = torch.cuda.device_count()
    unknown = [i for i in ids if i >= available]
    if unknown:
        raise SegformerError(f"train.gpu_ids {ids} names GPU(s) {unknown}, but this machine has {available} "
                             f"(ids 0..{available - 1})")
    return "gpu", ids, int(num_nodes)


def resolve_precision(amp: bool, accelerator: str) -> str:
    if not amp:
        return "32-true"
    if accelerator != "gpu":
        log.info("train.amp has no effect on the CPU: training in float32")
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


def _loggers(cfg: ExperimentConfig, results_dir: Path) -> list[Any]:
    loggers: list[Any] = []
    if cfg.train.tensorboard.enabled:
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=str(results_dir), name="tensorboard", version=""))
    if cfg.train.mlflow.enabled:
        try:
            from lightning.pytorch.loggers import MLFlowLogger
            import mlflow  # noqa: F401
        except ImportError as exc:
            raise SegformerError(f"train.mlflow.enabled needs mlflow ({exc}); pip install mlflow") from exc
        # Without a tracking URI use a local SQLite store next to the results (MLflow's plain file
        # store is refused by recent versions unless MLFLOW_ALLOW_FILE_STORE is set).
        uri = cfg.train.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or \
            f"sqlite:///{(results_dir / 'mlflow.db').resolve()}"
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # no INFO lines on creating the store
        loggers.append(MLFlowLogger(experiment_name=cfg.train.mlflow.experiment_name, tracking_uri=uri,
                                    artifact_location=mlflow_artifact_root(uri)))
    return loggers


# ----------------------------------------------------------------------------- failures
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST}


def write_error_message(exc: OSError, results_dir: Path) -> str:
    """One line for a results folder that cannot be written (full disk, permissions, a file in the way)."""
    target = exc.filename or results_dir
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free disk space or point results_dir (or train.results_dir) at a disk with room"
    elif exc.errno in (errno.ENOTDIR, errno.EEXIST):
        fix = "a part of that path is a regular file, not a folder: choose another results_dir"
    else:
        fix = "make it writable or point results_dir (or train.results_dir) somewhere you can write"
    return f"cannot write the training results at {target} ({exc.strerror or exc}); {fix}"


def _check_resume_fits(resume: Path, cfg: ExperimentConfig, num_classes: int) -> int | None:
    """The checkpoint to resume is of the spec's model: its classes, backbone and decoder width.
    Returns the optimizer steps it has trained (Lightning's global_step; None when not recorded)."""
    from segformer.engine.module import META_KEY
    from segformer.model.checkpoints import check_checkpoint_fits, read_state_file

    key = "train.resume_training_checkpoint_path"
    try:
        raw = read_state_file(resume)
    except (OSError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{key}: cannot read {resume}: {exc}") from exc
    check_checkpoint_fits(resume, dict(raw.get(META_KEY) or {}), backbone=cfg.model.backbone.type,
                          num_classes=num_classes, embed_dim=int(cfg.model.decode_head.decoder_params.embed_dim), key=key)
    step = raw.get("global_step")
    return int(step) if isinstance(step, int) else None


def _translate_failure(exc: BaseException, cfg: ExperimentConfig, results_dir: Path) -> SegformerError | None:
    """Known ways a run fails for reasons the user can fix -> one clear :class:`SegformerError`."""
    if isinstance(exc, SegformerError):
        return None  # already explained
    if isinstance(exc, torch.OutOfMemoryError):
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else "CUDA out of memory"
        segment = cfg.dataset.segment
        return SegformerError(
            f"the GPU ran out of memory while training {cfg.model.backbone.type} with "
            f"dataset.segment.batch_size={segment.batch_size} and dataset.segment.img_size={segment.img_size} "
            f"({first_line[:200]}); lower dataset.segment.batch_size or dataset.segment.img_size, "
            "or enable train.amp"
        )
    if isinstance(exc, ValueError) and "parameter group" in str(exc) and cfg.train.resume_training_checkpoint_path:
        # torch.optim: the checkpoint's optimizer state has other parameter groups than this spec's
        # optimizer (another freeze_backbone, backbone or decoder width than the run that wrote it).
        return SegformerError(
            f"train.resume_training_checkpoint_path {cfg.train.resume_training_checkpoint_path} was written by a run "
            f"whose optimizer had other parameters ({str(exc).strip()}); resume with that run's spec (its "
            f"experiment.yaml: model.backbone.freeze_backbone, the backbone and decoder must match), or start from "
            f"its weights with train.pretrained_model_path instead"
        )
    if isinstance(exc, RuntimeError) and "Error(s) in loading state_dict" in str(exc) and cfg.train.resume_training_checkpoint_path:
        # a checkpoint without our description (`_check_resume_fits`) that does not fit: Lightning lists every key
        return SegformerError(
            f"train.resume_training_checkpoint_path {cfg.train.resume_training_checkpoint_path} does not fit the "
            f"model of the spec ({str(exc).strip().splitlines()[0][:200]}); resume with the spec of the run that wrote "
            f"it (its experiment.yaml), or start from its weights with train.pretrained_model_path")
    # torch.save reports a full disk as a RuntimeError raised while handling the OSError: look
    # through the chain for the operating system's reason.
    cause: BaseException | None = exc
    for _ in range(5):
        if cause is None:
            break
        if isinstance(cause, OSError) and cause.errno in _WRITE_ERRNOS:
            return SegformerError(write_error_message(cause, results_dir))
        cause = cause.__cause__ or cause.__context__
    return None


# ----------------------------------------------------------------------------- files
def _write_spec(cfg: ExperimentConfig, results_dir: Path) -> list[Path]:
    """Create the results folder and write experiment.yaml; return what did not exist before."""
    created: list[Path] = []
    missing = [p for p in (results_dir, *results_dir.parents) if not p.exists()]
    results_dir.mkdir(parents=True, exist_ok=True)
    spec = results_dir / SPEC_NAME
    if not spec.exists():
        created.append(spec)
    dump_config(cfg, spec)
    return created + sorted(missing, key=lambda p: len(p.parts), reverse=True)


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _remove_created(paths: Sequence[Path]) -> None:
    """Undo a failed run's files (folders only when empty: logs stay)."""
    for path in paths:
        with contextlib.suppress(OSError):
            if path.is_dir():
                path.rmdir()
            else:
                path.unlink(missing_ok=True)


class _LightningTip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


@contextlib.contextmanager
def _filtered(logger: logging.Logger, kept: logging.Filter) -> Iterator[None]:
    logger.addFilter(kept)
    try:
        yield
    finally:
        logger.removeFilter(kept)


@contextlib.contextmanager
def _quiet_lightning(quiet: bool) -> Iterator[None]:
    """Never Lightning's advertisement for its cloud logger, nor a deprecation inside Lightning that the
    user can do nothing about; AutoML trials: no banners ("GPU available ...") and no per-trial
    data-loader hints either."""
    tips = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    with warnings.catch_warnings(), _filtered(tips, _LightningTip()):
        warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=r".*is smaller than the logging interval.*")
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")
        if not quiet:
            yield
            return
        names = ("lightning.pytorch", "lightning.fabric", "lightning")
        levels = {name: logging.getLogger(name).level for name in names}
        for name in names:
            logging.getLogger(name).setLevel(logging.WARNING)
        try:
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)
