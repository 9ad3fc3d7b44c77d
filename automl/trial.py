"""One AutoML trial: the plain `segformer train` action, run in-process inside a Ray Tune worker.

A trial is configured exactly like a user run: spec file -> the user's key=value overrides -> the
sampled values (dotted spec keys) -> the trial's own results folder, all through the same
`segformer.config.apply_overrides` (with its validation). Nothing here knows about SegFormer's
internals; the only hook is a Lightning callback passed through `train.run(callbacks=...)` that
reports every validated epoch to Ray Tune (`automl.tune_report.TuneReportCallback`).

Multi-fidelity algorithms (ASHA, HyperBand, BOHB) stop trials early, but every trial is configured
with the full `num_epochs` budget, so its learning-rate schedule is the one a single full run would
use: a promoted trial's checkpoint is exactly what `segformer train` would have produced at that
epoch, and its metric history is comparable across trials (no schedule squeezed into a short rung).

Checkpoints reported to Ray are full Lightning checkpoints (model, optimizer, scheduler, loop
state): the train action's own `segformer_model_latest.pth`, handed over when the epoch improved the
best metric (every report under PBT), see `automl.tune_report`. Ray hands one back through
`ray.tune.get_checkpoint()` when a trial is restored (`automl resume`, a retry after a failure) or
when Population Based Training copies a better trial's state (exploit). A trial restored from its
own checkpoint continues from its own latest file, which is never older than Ray's copy; an
exploit continues from the other trial's checkpoint. Either way training resumes through
`train.resume_training_checkpoint_path`. For PBT the newly sampled hyperparameters (explore) are in
the trial's spec, and a resumed training takes its spec's optimizer values over the restored ones.

This module is imported by the driver too (names, context, the trainable's reference), so it
imports neither torch nor Lightning at module level; the Lightning part is `automl.tune_report`.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from automl.layout import CHECKPOINT_FILE, Layout, trial_name, trial_number


@dataclass(frozen=True)
class TrialContext:
    """Everything a trial needs besides its sampled values (picklable; sent once to the workers)."""

    results_dir: str  # the search's results folder; each trial writes into <results_dir>/<trial name>
    spec: str | None  # the user's spec file (None: defaults only)
    overrides: tuple[str, ...] = ()  # the user's key=value overrides, applied before sampled values
    metric: str = "val_miou"
    mode: str = "max"  # direction of `metric`; `best_<metric>` is the best value so far
    epochs: int | None = None  # per-trial epoch budget (train.num_epochs); None keeps the spec's
    checkpoint_every_report: bool = False  # PBT: exploit needs every trial's latest state in Ray
    deploy: Any = None  # the search's SearchConfig when it searches structure or measures latency (`automl.deploy`)


# Names given in this process, per results folder. Ray copies the name creator (the basic variant
# generator deep-copies the experiment spec it belongs to), so the counter cannot live in the object.
_NAMES: dict[str, dict[str, str]] = {}
# Lost trials of the ledger (`LOST`), per results folder: name -> params, until a new trial takes one over.
_LOST: dict[str, dict[str, dict[str, Any]]] = {}


class TrialNamer:
    """Ray `trial_name_creator`/`trial_dirname_creator`: trial_000, trial_001, ... in creation order.

    Ray's trial ids are random, so the number is ours. Ray stores the name with the trial, so a
    restored trial keeps it; after `Tuner.restore` (a new process) numbering goes on after the
    highest name already used in the results folder, the ledger or Ray's experiment. Copies of
    the namer in one process share their names (see `_NAMES`).
    """

    def __init__(self, results_dir: str) -> None:
        self.results_dir = str(results_dir)

    def _first_free(self) -> int:
        layout = Layout.of(self.results_dir)
        used = layout.trial_names_on_disk()
        if layout.state_file.is_file():  # the ledger with its journal: a trial's first event may be only there
            from automl.state import SearchState

            trials = SearchState.load(layout.root).trials.values()
            used += [t.name for t in trials]
            _LOST[self.results_dir] = {t.name: t.params for t in trials if t.lost}
        numbers = [n for n in map(trial_number, used) if n is not None]
        return max(numbers, default=-1) + 1

    def __call__(self, trial: Any) -> str:
        names = _NAMES.get(self.results_dir)
        if names is None:
            names = _NAMES[self.results_dir] = {}
            first = self._first_free()
        else:
            first = None
        if trial.trial_id not in names:
            # A trial lost to a kill (started after Ray's last save) whose configuration the restored
            # searcher proposes again (a seeded searcher does) takes over its name, folder and latest
            # checkpoint (`train_trial`): the kill then costs no trial and no epoch.
            lost = _LOST.get(self.results_dir, {})
            params = {k: v for k, v in trial.config.items() if not str(k).startswith("_")}
            again = next((name for name, p in lost.items() if p == params), None)
            if again is not None:
                del lost[again]
                names[trial.trial_id] = again
                return again
            if first is None:
                first = max((trial_number(n) or 0 for n in names.values()), default=self._first_free() - 1) + 1
            names[trial.trial_id] = trial_name(first)
        return names[trial.trial_id]


def ray_trial_name(trial: Any) -> str:
    """The name a Ray `Trial` was given by `TrialNamer` (its string form otherwise)."""
    return getattr(trial, "custom_trial_name", None) or str(trial)


EXPORT_SIZE = ("export.input_height", "export.input_width")


def export_size_given(spec: str | None, overrides: Any) -> bool:
    """Whether the user chose the export's input size (in the spec's export section or an override)."""
    from segformer.config.loader import read_spec

    if any(str(o).partition("=")[0].strip() in EXPORT_SIZE for o in overrides or ()):
        return True
    section = read_spec(spec).get("export") if spec else None
    return isinstance(section, dict) and any(key.split(".")[1] in section for key in EXPORT_SIZE)


def base_config(spec: str | None, overrides: Any, results_dir: str | Path) -> Any:
    """The spec as a trial sees it: the user's spec and overrides with `results_dir` given first, so
    ${results_dir} in the spec resolves to the trial's (or the search's, or best/) folder.

    Where the user chose no export size, the model deploys at the size it trains at (not export's
    default, 256): the size promotion exports the ONNX at and the search times the model at."""
    from segformer.config import apply_overrides, load_config

    cfg = load_config(spec, [f"results_dir={results_dir}", *overrides])
    if export_size_given(spec, overrides):
        return cfg
    size = int(cfg.dataset.segment.img_size)
    return apply_overrides(cfg, dict.fromkeys(EXPORT_SIZE, size))


def train_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """Ray Tune function trainable: one `segformer train` run with `config` as spec overrides."""
    from ray import tune

    from automl.tune_report import TuneReportCallback
    from segformer.actions import train as train_action
    from segformer.config import apply_overrides
    from segformer.engine.checkpoint_files import LATEST_NAME

    name = tune.get_context().get_trial_name()
    trial_dir = Layout.of(ctx.results_dir).trial_dir(name)
    trial_dir.mkdir(parents=True, exist_ok=True)

    params = {k: v for k, v in config.items() if not k.startswith("_")}
    overrides: dict[str, Any] = dict(params)
    if ctx.deploy is not None:
        from automl.deploy import trial_overrides

        overrides = trial_overrides(params, ctx.deploy)
    overrides["results_dir"] = str(trial_dir)
    train_dir = trial_dir / "train"
    overrides["train.results_dir"] = str(train_dir)
    if ctx.epochs is not None:
        overrides["train.num_epochs"] = int(ctx.epochs)

    restored_from: str | None = None
    own_latest = train_dir / LATEST_NAME
    if not own_latest.is_file():  # killed between writing a numbered checkpoint and linking the latest to it
        own_latest = max(train_dir.glob("model_epoch_*.pth"), default=own_latest)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        # Ray stores a trial's checkpoints in <experiment>/<trial name>/checkpoint_NNNNNN: the
        # folder name says whose checkpoint this is (another trial's after a PBT exploit).
        restored_from = Path(str(checkpoint.path)).parent.name
    if (checkpoint is None or restored_from == name) and own_latest.is_file():
        # This trial ran before (`automl resume`, or Ray retrying it after a crash): its own latest
        # checkpoint is at least as new as anything it reported to Ray (reports link that file).
        restored_from = name
        overrides["train.resume_training_checkpoint_path"] = str(own_latest)
    elif checkpoint is not None:
        # PBT exploit (another trial's state), or a restore with no file of our own: continue from
        # the checkpoint Ray hands us. Copy it out of Ray's storage first: Ray may delete old
        # checkpoints while this trial runs.
        restore_dir = trial_dir / "restore"
        shutil.rmtree(restore_dir, ignore_errors=True)
        with checkpoint.as_directory() as src:
            shutil.copytree(src, restore_dir)
        overrides["train.resume_training_checkpoint_path"] = str(restore_dir / CHECKPOINT_FILE)

    cfg = apply_overrides(base_config(ctx.spec, ctx.overrides, trial_dir), overrides)
    extra: dict[str, float] = {}
    if ctx.deploy is not None and ctx.deploy.measures_latency:
        from automl import deploy
        from automl.budget import BASELINE

        extra, feasible = deploy.trial_latency(cfg, ctx.results_dir, ctx.deploy)
        if not feasible and config.get(BASELINE):
            # The spec's own model trains whatever its latency: the reference the others are measured
            # against (recorded over the limit, never promoted).
            extra[deploy.INFEASIBLE] = 1.0
        elif not feasible:
            # Over the limit: trains nothing; the worst value teaches the sampler to avoid the region.
            worst = deploy.worst_value(ctx.mode)
            tune.report({ctx.metric: worst, f"best_{ctx.metric}": worst, "epoch": 0, deploy.INFEASIBLE: 1, **extra})
            return
    callback = TuneReportCallback(ctx.metric, ctx.mode, restored_from,
                                  checkpoint_every_report=ctx.checkpoint_every_report,
                                  continue_best=restored_from == name, extra=extra)
    train_action.run(cfg, callbacks=[callback], quiet=True)
    if callback.reports == 0 and restored_from is None:
        raise RuntimeError(
            f"{name} finished without reporting '{ctx.metric}': the train action must log it at each "
            f"validation (check train.validation_interval <= train.num_epochs and the metric name)"
        )
