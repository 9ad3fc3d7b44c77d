"""`automl run` and `automl resume`, as short named steps.

    automl run --skill segformer --policy auto -e spec.yaml [key=value ...]

run:    skill files -> policy (search, or train once: `automl.plain`) -> plan (the spec's values, the
        epoch budget, the search space from ``train.schema.json``, the baseline) -> Ray
        (`automl.ray_session`) -> the ledger and MLflow's parent run -> fit -> finish.
resume: the ledger and the options it was started with -> Ray -> fit (Tune restores its own
        experiment) -> finish.
fit:    `ray.tune.Tuner` with the algorithm's searcher and scheduler (`automl.algorithms`), the
        trainable (`automl.trial`: every trial is the plain train action in a Ray worker) and one
        callback per concern (`automl.callbacks`).
finish: rank, promote the best trial (`automl.promote`), write the report (`automl.report`),
        close the parent run, print the summary (`automl.console`).

Trials a scheduler ends before their epoch budget are recorded as STOPPED (MLflow: FINISHED with the
tag ``automl.stopped_early=true``), never FAILED. Trials still running when the time budget or the
failure limit ends the search are KILLED, with that reason as their error.
Ctrl-C and SIGTERM save the ledger with the cut trials KILLED, close MLflow's runs and re-raise
KeyboardInterrupt; `automl resume` continues from Ray's experiment checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shlex
import shutil
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from automl.layout import Layout
from automl.options import SearchError, SearchOptions
from automl.state import FAILED, FINISHED, LOCK_FILE, RUNNING, STOPPED, SearchState, TrialRecord
from segformer.text import count, fmt

Echo = Callable[[str], None]


@dataclass(frozen=True)
class SearchOutcome:
    results_dir: Path
    mode: str  # "search" | "plain" | "dry-run"
    state: SearchState | None = None
    best: TrialRecord | None = None
    baseline: TrialRecord | None = None
    promotion: dict[str, Any] = field(default_factory=dict)
    report: Path | None = None
    message: str = ""
    stopped_by_failures: bool = False  # the failure limit ended the search


def run(opts: SearchOptions, *, echo: Echo = print, dry_run: bool = False, live: bool = False,
        progress: bool = True) -> SearchOutcome:
    """`automl run`: decide the policy, then search (or train once), promote and report.

    `progress`: the live view (`automl.progress`); `live`: also a line per trial event."""
    from automl.probe import check_tracking_uri
    from automl.skill import load_skill, resolve_policy
    from segformer.remote import is_url, redacted

    if is_url(opts.results_dir):  # (a local folder named "s3:" was made, and the search "finished" there)
        raise SearchError(f"the search folder {redacted(opts.results_dir)} is a URL: searches write to local folders only; "
                          f"give --results-dir a local path (copy the results afterwards, e.g. aws s3 sync)")
    opts = opts.with_values(results_dir=str(Layout.of(opts.results_dir).root))
    skill = load_skill(skill=None if opts.skill_dir else opts.skill, skill_dir=opts.skill_dir)
    decision = resolve_policy(skill, opts.policy)
    opts = _absolute_inputs(opts.with_values(spec=_spec_path(opts, skill)))
    echo(f"automl: {decision.reason}")
    if decision.mode == "plain":
        if dry_run:
            return SearchOutcome(Path(opts.results_dir), "dry-run", message=decision.reason)
        check_tracking_uri(opts.tracking.tracking_uri)  # seconds, not minutes of MLflow retries
        from automl.plain import run_plain

        with one_driver(Layout.of(opts.results_dir).root):
            return run_plain(opts, skill.name, echo=echo)
    opts, space, baseline, budget = _plan(opts, skill)
    if dry_run:
        _check_data(opts, echo)  # as README promises: a dry run checks the data is there (and readable)
        _print_plan(opts, space, baseline, budget, echo)
        return SearchOutcome(Path(opts.results_dir), "dry-run", message=decision.reason)
    layout = Layout.of(opts.results_dir)
    with one_driver(layout.root):
        _refuse_a_used_folder(layout)  # before the data check, which can take a while on a large dataset
        _note_action_outputs(layout, echo)
        _check_data(opts, echo)
        with _progress(echo, progress) as view:
            return _run_search(opts, skill, space, baseline, budget, layout, echo=view.echo if view else echo, live=live,
                               view=view)


def _check_data(opts: SearchOptions, echo: Echo) -> None:
    """The dataset read once before any trial starts (`segformer.data.segdata.check_splits`): a wrong
    root_dir, an image without its mask or a mask value outside the palette is one message now,
    not every trial failing with it. The test split is read too: the winner is evaluated on it."""
    from automl.trial import base_config
    from segformer.data.segdata import check_splits, split_counts
    from segformer.errors import DataError
    from segformer.parents import check_weight_files
    from segformer.remote import as_given

    cfg = base_config(opts.spec, opts.overrides, opts.results_dir)
    check_weight_files(cfg)  # every trial would load them and fail with it, one after another
    segment = cfg.dataset.segment
    splits = ", ".join(dict.fromkeys(str(name) for name in (segment.train_split, segment.validation_split, segment.test_split)))
    echo(f"automl: checking the dataset under {as_given(str(segment.root_dir))} ({splits})")
    try:
        counts = check_splits(segment)
    except DataError as exc:
        images = Path(str(segment.root_dir)) / "images"
        if segment.test_split != segment.validation_split and images.is_dir() and not (images / str(segment.test_split)).is_dir():
            raise DataError(f"{exc}\n  the test split is read only for the final evaluation of the promoted model; "
                            f"without one, set dataset.segment.test_split={segment.validation_split} and the "
                            "final evaluation is skipped") from None
        raise
    echo(f"automl: dataset read: {split_counts(counts)}, no problem found")


@contextmanager
def _progress(echo: Echo, enabled: bool) -> Iterator[Any]:
    """The live view (`automl.progress.Progress`) for the whole run, promotion included; None when off."""
    if not enabled:
        yield None
        return
    from automl.progress import Progress

    with Progress(echo) as view:
        yield view


def _refuse_a_used_folder(layout: Layout) -> None:
    if not layout.state_file.exists():
        return
    folder = shlex.quote(str(layout.root))
    try:
        status = SearchState.load(layout.root).status
    except Exception:  # noqa: BLE001 - a damaged ledger: resume says what is wrong with it
        status = None
    if status in (FINISHED, FAILED):  # resume has nothing to continue: the two messages sent the user to each other
        how = "finished search" if status == FINISHED else "search that ended with nothing to promote"
        raise SearchError(f"{layout.root} already holds a {how} (`automl status {folder}`); a search is not "
                          f"extended: for another one, pick another --results-dir")
    raise SearchError(f"{layout.root} already holds a search; continue it with `automl resume {folder}` "
                      f"or pick another --results-dir")


def _note_action_outputs(layout: Layout, echo: Echo) -> None:
    """A search started where `segformer` actions wrote (the spec's results_dir is the default search
    folder) writes beside their folders, which no search writes at its top: say so, so that the
    plain training's results and the search's are not taken for one another."""
    from segformer.actions import ACTIONS  # (names only: each action imports torch itself)

    found = [f"{name}/" for name in ACTIONS if (layout.root / name).is_dir()]
    if found:
        echo(f"automl: note: {layout.root} also holds results of segformer actions ({', '.join(found)}); the search "
             "writes beside them (trial_*, best/, mlflow.db) and leaves them as they are; --results-dir gives it a "
             "folder of its own")


def _run_search(opts: SearchOptions, skill: Any, space: Any, baseline: dict[str, Any] | None, budget: Any,
                layout: Layout, *, echo: Echo, live: bool, view: Any = None) -> SearchOutcome:
    from automl.console import settings_line
    from automl.probe import check_tracking_uri
    from automl.ray_session import RaySession
    from automl.tracking import absolute_store_uri

    check_tracking_uri(opts.tracking.tracking_uri)  # before any file or run exists (RaySession probes --address)
    with RaySession(opts) as session:
        trainings = _trainings_at_once(opts, budget)
        if trainings:
            session.share_cpus(trainings)
        opts = opts.with_values(cpus_per_trial=session.cpus_per_trial, gpus_per_trial=session.gpus_per_trial,
                                max_concurrent=session.slots(),
                                tracking_uri=absolute_store_uri(opts.tracking.tracking_uri) or layout.default_tracking_uri,
                                experiment_name=opts.tracking.experiment_name or skill.name)
        state = SearchState(results_dir=str(layout.root), skill=skill.name, algorithm=opts.search.algorithm,
                            metric=opts.search.metric, mode=opts.search.mode, settings=opts.to_dict(), spec=opts.spec,
                            overrides=list(opts.overrides), baseline_params=baseline, driver_pid=os.getpid(),
                            mlflow_tracking_uri=opts.tracking.tracking_uri,
                            budget=dataclasses.asdict(budget) if budget is not None else None)
        if view is not None:
            view.attach(state)
        tracker = _start_tracking(opts, state, space)
        state.save()
        echo(settings_line(opts, budget) + f" -> {layout.root}")
        if opts.search.measures_latency:
            from automl.deploy import premeasure

            opts = premeasure(opts, space, baseline, echo)
            state.settings = opts.to_dict()  # a relative limit, resolved in milliseconds
            state.save()
        from automl.algorithms import build_search

        stop_reason, early = _fit(opts, state, tracker, session, plan=build_search(opts, space, baseline, budget),
                                  echo=echo, live=live)
    return finish(opts, state, tracker, echo=echo, stop_reason=stop_reason, early=early)


def resume(results_dir: str | Path, *, echo: Echo = print, live: bool = False, address: str | None = None,
           progress: bool = True) -> SearchOutcome:
    """`automl resume`: continue an interrupted search from Ray's experiment checkpoint.

    Finished trials stay finished (their MLflow runs untouched); trials that were running resume
    from their latest checkpoint in the same MLflow child run. Nothing runs twice from scratch.
    """
    layout = Layout.of(results_dir)
    if not layout.state_file.is_file():
        SearchState.load(layout.root)  # its message names what is missing; no folder made for a lock
    with one_driver(layout.root), _progress(echo, progress) as view:
        return _resume_search(layout, echo=view.echo if view else echo, live=live, address=address, view=view)


def _resume_search(layout: Layout, *, echo: Echo, live: bool, address: str | None, view: Any = None) -> SearchOutcome:
    from automl.probe import check_tracking_uri
    from automl.ray_session import RaySession
    from automl.tracking import Tracker, backfill_metrics

    state = SearchState.load(layout.root)
    if view is not None:
        view.attach(state)
    opts = SearchOptions.from_dict(state.settings).with_values(results_dir=str(layout.root))
    if address is not None:
        opts = opts.with_values(address=address)
    if state.status in (FINISHED, FAILED):
        how = "finished" if state.status == FINISHED else "ended with no trial to promote"
        echo(f"automl: the search in {layout.root} already {how}; see `automl status {layout.root}`")
        return SearchOutcome(layout.root, "search", state=state, best=state.best(), baseline=state.baseline())
    check_tracking_uri(state.mlflow_tracking_uri)
    tracker = Tracker(state.mlflow_tracking_uri or "", layout.root, opts.tracking.experiment_name or state.skill)
    with RaySession(opts) as session:
        if state.mlflow_parent_run_id:
            tracker.resume_parent(state.mlflow_parent_run_id)
            mended = backfill_metrics(state, tracker)
            if mended:
                echo(f"automl: epoch metrics the kill kept from MLflow written from the ledger: {', '.join(mended)}")
        state.status, state.driver_pid = RUNNING, os.getpid()
        state.save()
        echo(f"automl: resuming {opts.search.algorithm} search in {layout.root} ({len(state.trials)} trials recorded)")
        stop_reason, early = _fit(opts, state, tracker, session, plan=None, echo=echo, live=live)
    return finish(opts, state, tracker, echo=echo, stop_reason=stop_reason, early=early)


@contextmanager
def one_driver(root: Path) -> Iterator[None]:
    """One driver per results folder, for the whole run or resume (promotion included).

    An advisory lock (`filelock`: flock on POSIX) on ``<root>/.automl.lock``: the kernel drops it
    when the holder dies, so a killed driver never leaves the folder locked; Ray's processes do not
    inherit it. Who holds it (pid, host, command) is written next to it for the message a second
    driver gets; it cannot live in the lock file, which every opener truncates.
    """
    import socket
    import sys

    from filelock import FileLock, Timeout

    from segformer.fileio import atomic_write_text

    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    lock, owner = FileLock(str(root / LOCK_FILE)), root / f"{LOCK_FILE}.owner"
    try:
        lock.acquire(timeout=0)
    except Timeout:
        try:
            holder = owner.read_text(encoding="utf-8").strip()
        except OSError:
            holder = "another process"
        raise SearchError(f"{root} is in use by another search driver ({holder or 'another process'}); wait for it "
                          f"to end or stop it, or pick another --results-dir") from None
    try:
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        atomic_write_text(owner, f"pid {os.getpid()} on {socket.gethostname()} since {started}: "
                                 f"{' '.join(['automl', *sys.argv[1:]])}\n")
        yield
    finally:
        owner.unlink(missing_ok=True)
        lock.release()
        if created and {p.name for p in root.iterdir()} <= {LOCK_FILE}:
            shutil.rmtree(root, ignore_errors=True)  # refused before anything was written: leave no folder


# ------------------------------------------------------------------------------------------------ plan


def _absolute_inputs(opts: SearchOptions) -> SearchOptions:
    """The spec's relative input paths (the dataset, weights) made absolute, as overrides, against the
    folder the command runs in, where `segformer train` resolves them: Ray runs each trial in a
    folder of its own, where they named nothing and every trial failed."""
    from automl.space import _lookup
    from automl.trial import base_config
    from segformer.config import to_dict
    from segformer.remote import INPUTS

    values = to_dict(base_config(opts.spec, opts.overrides, opts.results_dir))
    absolute = []
    for key in INPUTS:
        _, value = _lookup(values, key)
        if isinstance(value, str) and value not in ("", "???") and "://" not in value and not os.path.isabs(value):
            absolute.append(f"{key}={json.dumps(os.path.abspath(os.path.expanduser(value)))}")
    return dataclasses.replace(opts, overrides=(*opts.overrides, *absolute)) if absolute else opts


def _spec_path(opts: SearchOptions, skill: Any) -> str | None:
    """The spec every trial starts from: -e, else the skill's train template (None: defaults only)."""
    if opts.spec:
        from segformer.remote import is_url, redacted

        if is_url(opts.spec):
            raise SearchError(f"spec file -e {redacted(opts.spec)} is a URL: the spec is read from a local file (its "
                              f"dataset, checkpoints and weights may be URLs); copy it here first")
        path = Path(opts.spec).expanduser().resolve()
        if path.is_dir():
            raise SearchError(f"spec file -e {opts.spec} is a folder; give the YAML file in it")
        if not path.is_file():
            raise SearchError(f"spec file -e {opts.spec} does not exist")
        return str(path)
    template = skill.template_path("train")
    return str(template) if template.is_file() else None


def _plan(opts: SearchOptions, skill: Any) -> tuple[SearchOptions, Any, dict[str, Any] | None, Any]:
    """The options with the epoch budget resolved, the search space, the baseline's values, and the
    epoch budget (`automl.budget`; None when max_trials sizes the search)."""
    from automl import deploy
    from automl.algorithms import grid_count, grid_points
    from automl.budget import centre, plan_budget, prioritise
    from automl.params import SpaceWarning
    from automl.space import build_space
    from automl.trial import base_config
    from segformer.config import to_dict

    spec_values = to_dict(base_config(opts.spec, opts.overrides, opts.results_dir))  # validates spec and overrides
    train = spec_values["train"]
    if opts.search.max_epochs is None:  # the spec's own num_epochs, in units of epoch_multiplier epochs (rounded up)
        opts = opts.with_values(max_epochs=-(-int(train["num_epochs"]) // opts.search.epoch_multiplier))
    opts = dataclasses.replace(opts, search=deploy.fold_tao_route(opts.search))
    s = opts.search
    interval = int(train.get("validation_interval") or 1)
    if s.trial_epochs is not None and interval > s.trial_epochs:
        # A trial would never validate, so never report the metric the search ranks on (Ray then
        # stopped the whole search with a traceback).
        raise SearchError(f"train.validation_interval is {interval}, more than the {s.trial_epochs} epochs a trial trains: "
                          f"no trial would ever validate, and the search ranks trials on {s.metric}; set "
                          f"train.validation_interval={s.trial_epochs} or less, or train longer (train.num_epochs, --max-epochs)")
    deploy.check_pretrained(s, spec_values)
    space = build_space(skill.load_schema("train"), only=s.only, exclude=s.exclude, override_disabled=s.override_disabled,
                        spec=spec_values, **deploy.space_arguments(s, spec_values))
    space = _no_frozen_random_backbone(space, s, spec_values)
    if len(space) == 0:
        raise SearchError("the search space is empty: check --only/--exclude or the schema's automl_default_parameters")
    opts, space = _one_score_size(opts, space, spec_values)
    budget = None
    if s.budgeted:
        budget = plan_budget(s, int(train["num_epochs"]), int(train.get("validation_interval") or 1), int(train.get("seed") or 0))
        if budget.search < budget.trial_epochs:
            raise SearchError(f"--budget {s.budget:g} ({budget.total} epochs) cannot train the baseline's {budget.trial_epochs} "
                              f"epochs; raise --budget or lower --max-epochs")
        space = centre(space, spec_values, s.param_ranges)
        if s.only is None:
            space = prioritise(space, budget.configurations(s.reduction_factor), keep=(*s.include, *s.structure))
    elif s.max_trials is not None and s.only is None and s.algorithm not in ("grid", "pbt"):
        space = _few_trials_note(space, s.max_trials)
    baseline = space.baseline(spec_values) if s.baseline_first else None
    if baseline is not None:
        space.encode(baseline)  # raises when the spec's own value cannot be searched (e.g. not among the options)
        _outside(space, baseline)
    if s.algorithm == "grid":
        size = len(grid_points(space))  # raises naming the infinite parameters
        trained = grid_count(s, budget, size)
        if trained < size:
            what = f"--max-trials {s.max_trials}" if s.max_trials else f"the budget ({budget.search} epochs)"
            warnings.warn(f"the grid holds {size} points and {what} trains {trained} of them, in grid order "
                          f"(the baseline first); raise it to train them all", SpaceWarning, stacklevel=2)
    return opts, space, baseline, budget


def _few_trials_note(space: Any, trials: int) -> Any:
    """TAO's route (trials counted, not epochs) searches every default parameter of the schema, as TAO
    does; say when the trials are too few for them, and what the budget route does instead."""
    from automl.budget import CONFIGS_PER_PARAM

    if len(space) < 2 or trials >= CONFIGS_PER_PARAM * len(space):
        return space
    note = (f"{trials} trials for {len(space)} searched parameters (about {CONFIGS_PER_PARAM} configurations per "
            f"parameter find much, ~{CONFIGS_PER_PARAM * len(space)} here): name fewer with --only "
            "(automl_hyperparameters), or size the search with --budget instead of --max-trials, which searches the "
            "optimizer's parameters first and holds the rest at the spec's values")
    return dataclasses.replace(space, notes=(*space.notes, note))


FREEZE_KEY = "model.backbone.freeze_backbone"
WEIGHT_KEYS = ("model.backbone.pretrained_backbone_path", "train.pretrained_model_path")


def _no_frozen_random_backbone(space: Any, s: Any, spec_values: dict[str, Any]) -> Any:
    """The space without freeze_backbone when no trial starts from pretrained weights: the schema
    searches it by default, and a frozen backbone of random weights only wastes the trials that
    draw it (TAO's FAN backbone has no weights of ours to start from). Held at the spec's false, with
    a note; kept where the user named it (--only, automl_add_hyperparameters, custom_param_ranges),
    and where the spec itself freezes (a search may find that unfreezing pays)."""
    from automl.space import _lookup

    named = (*(s.only or ()), *s.include, *s.param_ranges)
    if FREEZE_KEY not in space or FREEZE_KEY in named or s.pretrained_backbones:
        return space
    if any(_lookup(spec_values, key)[1] for key in WEIGHT_KEYS):
        return space
    if any(p.depends_on == FREEZE_KEY for p in space):
        return space
    if _lookup(spec_values, FREEZE_KEY)[1]:  # the spec freezes a random backbone: unfreezing is worth a trial
        return space
    note = (f"{FREEZE_KEY} held at the spec's false: no trial starts from pretrained weights "
            f"({' and '.join(WEIGHT_KEYS)} are empty), so freezing would keep a random backbone; name it with --only "
            "or the settings' automl_add_hyperparameters to search it anyway")
    return dataclasses.replace(space, params=tuple(p for p in space.params if p.name != FREEZE_KEY),
                               notes=(*space.notes, note))


SIZE_KEY, SCORE_SIZE_KEY = "dataset.segment.img_size", "dataset.segment.score_size"
FINAL_ROWS = 20  # trials in the table printed as a search ends (the best ones; `automl status --all` has all)


def _one_score_size(opts: SearchOptions, space: Any, spec_values: dict[str, Any]) -> tuple[SearchOptions, Any]:
    """With img_size searched (--img-sizes, or TAO's route), every trial, the re-checks and the final
    evaluation score on masks of one size, the largest the search can train at (an override, kept
    by a resume), unless the spec sets dataset.segment.score_size. Scored on masks shrunk to its own
    input, a small input matched easier targets: a perfect 32 px model scores 0.86 mIoU on
    hgsc_nuclei_types' masks at 64 px."""
    from automl.space import _lookup

    if SIZE_KEY not in space or _lookup(spec_values, SCORE_SIZE_KEY)[1]:
        return opts, space
    param = space[SIZE_KEY]
    sizes = [int(c) for c in param.choices] if param.choices else [int(param.high)]
    largest = max([*sizes, int(_lookup(spec_values, SIZE_KEY)[1])])
    note = (f"every trial is scored on masks at {largest} px ({SCORE_SIZE_KEY}), the largest input size searched, so that "
            f"sizes compare fairly")
    return (dataclasses.replace(opts, overrides=(*opts.overrides, f"{SCORE_SIZE_KEY}={largest}")),
            dataclasses.replace(space, notes=(*space.notes, note)))


def _print_plan(opts: SearchOptions, space: Any, baseline: dict[str, Any] | None, budget: Any, echo: Echo) -> None:
    """--dry-run: the budget, the space and the first trials."""
    from automl.algorithms import first_points
    from automl.console import recommendations, settings_line

    echo(settings_line(_local_resources(opts, budget), budget))
    if opts.search.measures_latency:
        from automl.deploy import plan_line

        echo(plan_line(opts.search))
    echo(space.describe(baseline))
    echo("")
    # No more than the budget affords: a budget of 4 trainings searches one configuration besides the
    # baseline, and its other two trainings are the re-check.
    s, r = opts.search, opts.resources
    affordable = budget.configurations(s.reduction_factor) if budget is not None else s.max_trials
    shown = 3 if affordable is None else max(0, min(3, affordable - (baseline is not None)))
    from automl.ray_session import local_cpus, local_gpus, unfit

    cpus = r.num_cpus or local_cpus()
    if r.address is None and r.cpus_per_trial is not None and r.cpus_per_trial > cpus:  # the run would refuse it
        raise SearchError(unfit("CPU", r.cpus_per_trial, cpus, local=True))
    gpus = local_gpus() if r.address is None else None
    if gpus is not None and r.gpus_per_trial and r.gpus_per_trial > gpus:
        raise SearchError(unfit("GPU", r.gpus_per_trial, gpus, local=True))
    echo(recommendations(opts, baseline, first_points(opts, space, baseline, shown)))
    if affordable and s.algorithm != "grid":
        from automl.algorithms import grid_points

        try:
            size = len(grid_points(space))
        except SearchError:  # a continuous parameter: no end to new configurations
            size = None
        if size is not None and size < affordable:
            echo(f"note: the space holds {count(size, 'configuration')} (the baseline's among them) and the search asks for "
                 f"{affordable}: it ends once each has trained (no configuration trains twice)")
    if budget is not None and budget.recheck:
        echo(f"then the re-check ({budget.recheck} epochs): the leader (or, when the baseline leads, the runner-up) and "
             f"the baseline train again with train.seed={budget.seed + 1}")


def _trainings_at_once(opts: SearchOptions, budget: Any) -> int | None:
    """The most trainings that can run at once: what the epoch budget can finish, or --max-trials (not PBT,
    whose members take turns); None: no bound. Idle CPUs are shared out among them (`plan_resources`)."""
    if budget is not None:
        return budget.search // max(1, budget.first_rung)
    if opts.search.algorithm != "pbt" and opts.search.max_trials:
        return int(opts.search.max_trials)
    return None


def _local_resources(opts: SearchOptions, budget: Any) -> SearchOptions:
    """For --dry-run on a local Ray: the slots and CPUs/GPUs per trial the run will settle on here
    (`automl.ray_session.plan_resources`), not "auto"; a cluster (--address) is not asked."""
    from automl.ray_session import local_cpus, local_gpus, plan_resources

    r = opts.resources
    gpus = local_gpus()
    if r.address is not None or os.environ.get("RAY_ADDRESS") or gpus is None:  # the run would join a cluster
        return opts
    cpus = float(r.num_cpus or local_cpus())
    cpus_per_trial, gpus_per_trial, slots = plan_resources(r, cpus=cpus, largest_cpus=cpus, gpus=float(gpus),
                                                           trainings=_trainings_at_once(opts, budget))
    return opts.with_values(cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial, max_concurrent=slots)


PARENT_PARAMS = ("algorithm", "metric", "mode", "budget", "max_trials", "max_epochs", "spec", "overrides", "max_latency_ms")


def _start_tracking(opts: SearchOptions, state: SearchState, space: Any) -> Any:
    """The MLflow side of a new search: store, experiment, parent run, and the space as an artifact."""
    from automl.tracking import Tracker
    from segformer.fileio import atomic_write_text

    layout = Layout.of(state.results_dir)
    tracker = Tracker(opts.tracking.tracking_uri or layout.default_tracking_uri, layout.root,
                      opts.tracking.experiment_name or state.skill)
    from automl.mlflow_view import write_view

    # A handful of params keep the runs page's column list short; every setting is in search/settings.json.
    flat = opts.flat()
    params = {f"automl.{k}": flat[k] for k in PARENT_PARAMS if flat.get(k) not in (None, [], {}, ())}
    state.mlflow_parent_run_id = tracker.start_parent(
        f"search-{opts.search.algorithm}-{time.strftime('%Y%m%d-%H%M%S')}", params,
        {"automl.results_dir": str(layout.root), "automl.skill": state.skill, "automl.algorithm": opts.search.algorithm},
    )
    state.mlflow_experiment_id = tracker.experiment_id()
    atomic_write_text(layout.space_file, space.describe(state.baseline_params))
    atomic_write_text(layout.settings_file, json.dumps(opts.to_dict(), indent=2, default=str) + "\n")
    tracker.log_artifacts(state.mlflow_parent_run_id,
                          [layout.space_file, layout.settings_file, *([Path(opts.spec)] if opts.spec else [])], "search")
    write_view(tracker, state, [p.name for p in space], ["latency_ms"] if opts.search.measures_latency else [])
    return tracker


# ------------------------------------------------------------------------------------------------ fit


def _fit(opts: SearchOptions, state: SearchState, tracker: Any, session: Any, *, plan: Any, echo: Echo,
         live: bool) -> tuple[str, Any]:
    """Run the Tuner (a new one from `plan`, or Ray's restored experiment when `plan` is None) until
    the search ends; returns (why it stopped early, or "", the tail's early promotion)."""
    from automl.callbacks import LiveSearch, bind
    from automl.console import LiveTable
    from automl.signals import interrupt_on_sigterm, raise_if_swallowed
    from automl.tracking import reconcile_interrupted

    from automl.promote import EarlyPromotion

    # A budget sizes the search as it goes (and a re-check may change the winner): no early promotion.
    expected = (None if state.budget is not None else plan.num_samples if plan is not None
                else None if opts.search.algorithm == "grid" else opts.search.max_trials)
    early = EarlyPromotion.for_search(opts, expected, session.slots())
    search = LiveSearch(state, tracker, epochs=int(opts.search.trial_epochs or 0),
                        prune=opts.tracking.delete_intermediate_checkpoints, early=early,
                        console=LiveTable(echo) if live else None, echo=echo, epochs_at_start=state.epochs_trained(),
                        time_budget_s=opts.search.time_budget_s)
    # Ray Tune's own SIGINT handler would end `fit()` normally, and the search would be ranked,
    # promoted and closed as FINISHED although trials were cut. Ctrl-C and SIGTERM raise
    # KeyboardInterrupt here instead, and the search resumes like one whose driver was killed.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    started = time.time()
    # A signal the main thread cannot take (blocked in a call to Ray's stopped GCS) is handled by a
    # watchdog thread, which saves the same state and ends the process (`automl.signals._Watchdog`).
    with bind(search), interrupt_on_sigterm(stuck=lambda: _interrupted(opts, state, tracker, echo)):
        try:
            tuner = _new_tuner(opts, plan) if plan is not None else _restored_tuner(opts, state, tracker, echo)
            restored = _restore_or_stop(Layout.of(opts.results_dir).ray_experiment) if plan is None else nullcontext()
            with seeded_global_rngs(opts.search.seed), _quiet_tune_errors(), restored:
                try:
                    tuner.fit()
                finally:
                    tracker.flush()  # the trials' last epoch metrics (buffered: `Tracker.log_metrics`)
            raise_if_swallowed()  # a Ctrl-C that landed in a finalizer while the trials ran
        except KeyboardInterrupt:
            _interrupted(opts, state, tracker, echo)
            raise
    # since the trials started (after the data check and Ray's start, which the live view's "(30 s in)" counts)
    echo(f"automl: trials done in {time.time() - started:.1f} s")
    stop_reason, budget, ran_out = "", opts.search.time_budget_s, search.out_of_time()
    failed, limit = state.counts().get(FAILED, 0), opts.resources.max_failed_trials
    if limit is not None and failed >= limit:
        stop_reason = (f"the search stopped after {failed} failed trials (limit --max-failed-trials {limit}); "
                       f"see the errors with `automl status {opts.results_dir}`")
        echo(f"automl: {stop_reason}")
    elif ran_out and not any(t.history for t in state.trials.values()):
        stop_reason = (f"the time budget of {budget:g} s (--time-budget, settings time_budget_s) ran out before any trial "
                       f"reported an epoch: one trial needs longer than that here; raise it")
        echo(f"automl: {stop_reason}")
    elif ran_out:
        echo(f"automl: the time budget of {budget:g} s ran out: the trials then running stopped at the end of their epoch")
    elif failed and state.budget is not None and not state.ended \
            and (left := state.budget_epochs() - state.epochs_trained()) >= int(state.budget.get("first_rung") or 1):
        # Ray's trial count for the budget (`automl.algorithms._budget_plan`) ran out on failures
        echo(f"automl: the search ended with {left} of its "
             f"{state.budget_epochs()} budget epochs unspent: {failed} of its {len(state.trials)} trials failed, and a "
             f"budget's plan starts only so many trials, failed ones included; see the errors below")
    # Trials Ray stops for the whole search (failure limit, time budget) get no end event: KILLED here.
    reason = (f"stopped: the time budget of {budget:g} s ran out" if ran_out
              else f"stopped: {stop_reason}" if stop_reason else "interrupted: the driver stopped while this trial ran")
    killed = reconcile_interrupted(state, tracker, reason=reason)
    if killed:
        echo(f"automl: marked trials that did not end KILLED ({reason}): {', '.join(killed)}")
    return stop_reason, early


def _trainable(opts: SearchOptions) -> Any:
    """The trial function with its context and Ray resources."""
    from ray import tune

    from automl.trial import TrialContext, train_trial

    pbt = opts.search.algorithm == "pbt"
    ctx = TrialContext(results_dir=opts.results_dir, spec=opts.spec, overrides=opts.overrides, metric=opts.search.metric,
                       mode=opts.search.mode, epochs=opts.search.trial_epochs,
                       checkpoint_every_report=pbt, deploy=_deploy_part(opts.search))
    resources = {"cpu": opts.resources.cpus_per_trial or 1.0, "gpu": opts.resources.gpus_per_trial or 0.0}
    return tune.with_resources(tune.with_parameters(train_trial, ctx=ctx), resources)


def _deploy_part(s: Any) -> Any:
    """What a trial needs of the deploy-aware search (`automl.deploy`), None when there is none."""
    return s if s.structure or s.pretrained_backbones or s.measures_latency else None


def _new_tuner(opts: SearchOptions, plan: Any) -> Any:
    from ray import tune
    from ray.tune import CheckpointConfig, FailureConfig, RunConfig

    from automl.callbacks import SearchLimits, search_callbacks
    from automl.layout import EXPERIMENT_NAME
    from automl.trial import TrialNamer

    layout, s = Layout.of(opts.results_dir), opts.search
    namer = TrialNamer(opts.results_dir)
    # PBT clones the checkpoint a trial had at its last perturbation, which may be neither its best nor
    # its latest by the time another trial exploits it: Ray keeps them all, and the search deletes the
    # old ones (`automl.callbacks.prune_ray_checkpoints`). Otherwise the best one (Ray also keeps the
    # latest), or all of them when intermediate checkpoints are not to be deleted.
    keep_all = s.algorithm == "pbt" or not opts.tracking.delete_intermediate_checkpoints
    run_config = RunConfig(
        name=EXPERIMENT_NAME, storage_path=str(layout.ray_storage), verbose=0, log_to_file=True,
        failure_config=FailureConfig(max_failures=opts.resources.max_failures, fail_fast=False),
        checkpoint_config=CheckpointConfig(num_to_keep=None if keep_all else 1, checkpoint_score_attribute=s.ranking_metric,
                                           checkpoint_score_order=s.mode),
        stop=SearchLimits(opts.results_dir, opts.resources.max_failed_trials),
        callbacks=search_callbacks(opts.results_dir),
    )
    tune_config = tune.TuneConfig(search_alg=plan.search_alg, scheduler=plan.scheduler, num_samples=plan.num_samples,
                                  # concurrency: set on the search algorithm itself; the time budget: SearchLimits
                                  # A trial process serves the next trial and, under PBT, a member's restart
                                  # after each synchronous pause: about 5 s of process start and imports
                                  # saved each time on 2 CPU cores (benchmarks/RESULTS.md, "Search overhead")
                                  reuse_actors=True, trial_name_creator=namer, trial_dirname_creator=namer)
    return tune.Tuner(_trainable(opts), param_space=plan.param_space, tune_config=tune_config, run_config=run_config)


def _restored_tuner(opts: SearchOptions, state: SearchState, tracker: Any, echo: Echo) -> Any:
    """Ray's experiment as the killed driver left it (its callbacks rebind to this search: `automl.callbacks`)."""
    from ray import tune

    from automl.ray_session import incomplete_state, relink_missing_checkpoints, repair_ray_state, saved_trials
    from automl.state import LOST
    from automl.tracking import reconcile_interrupted

    layout = Layout.of(opts.results_dir)
    repaired = repair_ray_state(layout.ray_experiment, layout.ray_backup)
    if repaired:
        echo(f"automl: restored Ray state files cut by the kill from their last complete copy: {', '.join(repaired)}")
    if not tune.Tuner.can_restore(str(layout.ray_experiment)):
        raise SearchError(f"no Ray experiment checkpoint in {layout.ray_experiment}; cannot resume this search")
    cut = incomplete_state(layout.ray_experiment)
    if cut:
        raise SearchError(f"Ray's experiment state in {layout.ray_experiment} was cut by the kill ({', '.join(cut)}) before any "
                          f"complete copy was saved: Ray cannot continue this search. The ledger, the trial folders and MLflow "
                          f"are intact; start the search again with another --results-dir")
    # Ray saves its experiment state every 10 s or so: a trial that started after the last save, before
    # the kill, is one Ray does not know and will not continue. Its epochs stay spent (they count
    # against the budget); left RUNNING, it would hold budget back until the end.
    lost = reconcile_interrupted(state, tracker, keep={t.trial_id for t in saved_trials(layout.ray_experiment)},
                                 reason=f"{LOST}it started after Ray last saved its experiment state, and the driver "
                                        f"was killed before the next save; Ray cannot continue it")
    if lost:
        for name in lost:  # Ray's copies of its checkpoints: a trial that takes its name over starts its own
            for folder in (layout.ray_experiment / name).glob("checkpoint_*"):
                shutil.rmtree(folder, ignore_errors=True)
            record = state.by_name(name)
            if record is not None:
                record.checkpoint = None
        state.save()
        echo(f"automl: started after Ray's last saved state, so Ray cannot continue them: {', '.join(lost)}; marked "
             f"KILLED (their epochs count against the budget) unless the searcher proposes the same configuration "
             f"again, which then goes on under that name from its latest checkpoint")
    relinked = relink_missing_checkpoints(layout.ray_experiment, _own_latest(layout))
    if relinked:
        echo(f"automl: checkpoints Ray had deleted after its last saved state, standing in with the trials' newest: "
             f"{', '.join(relinked)}")
    return tune.Tuner.restore(str(layout.ray_experiment), trainable=_trainable(opts), resume_unfinished=True,
                              resume_errored=False, restart_errored=False)


def _own_latest(layout: Layout) -> Any:
    """A trial's own latest Lightning checkpoint (the train action's), by trial name; None if absent."""
    from segformer.engine.checkpoint_files import LATEST_NAME

    def latest(name: str) -> Path | None:
        path = layout.trial_dir(name) / "train" / LATEST_NAME
        return path if path.is_file() else None

    return latest


@contextmanager
def seeded_global_rngs(seed: int) -> Iterator[None]:
    """Python's and NumPy's global random generators seeded for the search, restored afterwards.

    Ray draws from them in the driver: asynchronous HyperBand picks each trial's bracket with
    `np.random.choice`, PBT's explore perturbs with `random`. Unseeded, `--seed` fixed the sampled
    values but not which trials HyperBand could stop early. The caller's generator state is put
    back, so a notebook's draws are not touched. Seeded from `seed` through a SeedSequence, not with
    `seed` itself: Optuna's samplers draw from a NumPy generator seeded with `seed`, and PBT's first
    resample gave the very value of the population's first random member.
    """
    import random

    import numpy as np

    py_state, np_state = random.getstate(), np.random.get_state()
    derived = [int(x) for x in np.random.SeedSequence([int(seed) % 2**32, 0x5EED]).generate_state(2)]
    random.seed(derived[0])
    np.random.seed(derived[1])
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def _outside(space: Any, baseline: Mapping[str, Any]) -> None:
    """Say where the spec's own value lies outside the range searched (a schema's search bounds, a
    custom range): the baseline trains it, every other trial stays inside. Optuna's own warning
    about it ("Fixed parameter ... is out of range") is then left out."""
    from automl.params import SpaceWarning

    for p in space.params:
        value = baseline.get(p.name)
        if p.kind in ("int", "float") and not p.choices and isinstance(value, (int, float)) and not isinstance(value, bool) \
                and not p.low <= value <= p.high:
            warnings.warn(f"{p.name}: the spec's {fmt(value)} lies outside the range searched [{fmt(p.low)}, {fmt(p.high)}] "
                          f"({p.source}); the baseline trains it, the other trials stay inside", SpaceWarning, stacklevel=2)
    warnings.filterwarnings("ignore", message=r"Fixed parameter .* is out of range", category=UserWarning)


@contextmanager
def _quiet_tune_errors() -> Iterator[None]:
    """Ray logs every failed trial's whole traceback at ERROR; the ledger and MLflow keep it instead,
    and the summary prints one line per failed trial."""
    tune_log = logging.getLogger("ray.tune")
    level = tune_log.level
    tune_log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        tune_log.setLevel(level)


class _RestoreFailed(BaseException):
    """Carries the exception of Ray's `TuneController.resume` past Ray's own `except Exception`."""


@contextmanager
def _restore_or_stop(experiment_dir: Path) -> Iterator[None]:
    """Ray's restore of its experiment (`automl resume`) either works or ends the resume with one message.

    When `TuneController.resume` raises, Ray logs it (at ERROR, which `_quiet_tune_errors` hides) and
    starts the experiment over from nothing, with an empty search space (`Tuner.restore` does not keep
    the Tuner's): a PBT or grid search then failed on its first preset point with a traceback
    (KeyError: 'train.optim.lr'; seen once in CI, PBT resumed after a kill that cut Ray's state files),
    and a Bayesian search trained a few trials and reported FINISHED with fewer than it was asked for.
    Here the failure ends the resume instead, with Ray's reason in the message. Ray builds the controller
    inside `Tuner.fit` and catches every Exception its `resume` raises, so the method is wrapped on the
    class for the fit, and what it raises travels as a BaseException."""
    try:
        from ray.tune.execution.tune_controller import TuneController

        original = TuneController.resume
    except (ImportError, AttributeError):  # a Ray laid out otherwise: its own behaviour
        yield
        return

    def resume(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return original(self, *args, **kwargs)
        except Exception as err:
            raise _RestoreFailed(err) from err

    TuneController.resume = resume
    try:
        yield
    except _RestoreFailed as failed:
        err = failed.args[0]
        raise SearchError(f"Ray could not restore its experiment state in {experiment_dir} ({type(err).__name__}: {err}), "
                          f"so this search cannot continue. The ledger, the trial folders and MLflow are intact; start "
                          f"the search again with another --results-dir") from err
    finally:
        TuneController.resume = original


def _interrupted(opts: SearchOptions, state: SearchState, tracker: Any, echo: Echo) -> None:
    """Ctrl-C / SIGTERM: cut trials KILLED (not left RUNNING), the ledger saved, the parent run closed.
    The ledger first: this also runs on the signal watchdog's thread, for a limited time, and MLflow
    (a server) can be slow to answer; `automl resume` reads the ledger and closes what MLflow missed."""
    import signal
    import threading

    from automl.tracking import INTERRUPTED_TAG, close_stopped_runs, mark_killed

    if threading.current_thread() is threading.main_thread():  # (else the signal watchdog's thread, which
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # has claimed every later signal: `automl.signals`)
    killed = mark_killed(state, "interrupted: the search was stopped (Ctrl-C/SIGTERM) while this trial ran; "
                                "`automl resume` continues it")
    state.status = "INTERRUPTED"
    state.save()
    shown = f" (trials cut: {', '.join(killed)})" if killed else ""
    echo(f"automl: interrupted{shown}; state saved; continue with `automl resume {shlex.quote(str(opts.results_dir))}`")
    try:
        tracker.flush()  # the trials' last epoch metrics (the main thread's path has flushed them already)
        close_stopped_runs(state, tracker, killed)
        if state.mlflow_parent_run_id:
            tracker.set_tags(state.mlflow_parent_run_id, {INTERRUPTED_TAG: "true"})
            tracker.end_run(state.mlflow_parent_run_id, "KILLED")
    except Exception as err:  # noqa: BLE001 (the signal may have cut an MLflow write: the ledger is saved)
        echo(f"automl: could not mark the MLflow runs KILLED ({err.__class__.__name__}); resume reopens them")


# ------------------------------------------------------------------------------------------------ finish


def finish(opts: SearchOptions, state: SearchState, tracker: Any, *, echo: Echo = print, stop_reason: str = "",
           early: Any = None) -> SearchOutcome:
    """Rank, promote the best trial, write the report, close the parent run.

    Ctrl-C or SIGTERM here (promotion can take minutes) ends like one during the search: the state
    says INTERRUPTED, the parent run is closed, and `automl resume` promotes again.
    """
    from automl.signals import interrupt_on_sigterm

    try:
        with interrupt_on_sigterm():
            return _finish(opts, state, tracker, echo=echo, stop_reason=stop_reason, early=early)
    except KeyboardInterrupt:
        _interrupted(opts, state, tracker, echo)
        raise


def _pareto_choice(opts: SearchOptions, state: SearchState, best: TrialRecord | None, echo: Echo) -> TrialRecord | None:
    """With --objectives: the front's chosen member is promoted (`automl.pareto`), unless it is the
    leader the re-check did not confirm (then the re-check's choice stands). Where it is the
    configuration the re-check kept, that configuration's better training (the re-check's pick) is
    handed over: re-check trainings are not on the front, which holds each configuration's first."""
    s = opts.search
    if not s.objectives:
        return best
    from automl.pareto import decide, write

    state.pareto = decide(state, s.objectives, s.max_latency_ms, s.objective_weights)
    if state.pareto is None:
        return best
    chosen = state.by_name(state.pareto["chosen"])
    unconfirmed = state.recheck is not None and not state.recheck["confirmed"] and chosen.name == state.recheck["leader"]
    if unconfirmed:
        state.pareto["chosen"], state.pareto["rule"] = best.name, state.pareto["rule"] + "; its lead did not hold on the re-check"
        chosen = best
    elif state.recheck is not None and chosen.name == state.recheck["configuration"] != state.recheck["promoted"]:
        chosen = state.by_name(state.recheck["promoted"]) or chosen
        state.pareto["chosen"] = chosen.name
        state.pareto["rule"] += (f"; {chosen.name} is {state.recheck['configuration']}'s configuration trained on the "
                                 f"re-check seed, the better of its two trainings")
    write(state, state.pareto)
    echo(f"automl: Pareto front: {len(state.pareto['front'])} of {len(state.pareto['points'])} trials; promoted "
         f"{chosen.name}: {state.pareto['rule']}")
    return chosen


def _finish(opts: SearchOptions, state: SearchState, tracker: Any, *, echo: Echo, stop_reason: str,
            early: Any) -> SearchOutcome:
    from automl.console import format_table, summary
    from automl.report import write_report

    from automl.budget import verdict
    from automl.finals import final_evaluation, final_lines, own_score
    from automl.signals import raise_if_swallowed

    state.recheck = verdict(state)
    if state.recheck is not None:
        echo(f"automl: re-check: {state.recheck['reason']}")
    best, baseline = state.best(), state.baseline()
    if state.recheck is not None:
        best = state.by_name(state.recheck["promoted"]) or best
    best = _pareto_choice(opts, state, best, echo)
    state.best_trial = best.name if best else None
    state.save()  # status and results.json name the trial being promoted, not the leader the re-check turned down
    prepared = early.take(best) if early is not None and best is not None else None
    if early is not None and early.started:
        echo(f"automl: promotion of {early.trial_name} started while the last trials ran")
        for line in early.lines:
            echo(line)
    if best is not None and opts.promotion.promote:
        from automl.promote import already_registered, promote

        if already_registered(state, best):
            registry = state.promotion["registry"]
            echo(f"automl: {best.name} was promoted and registered as {registry.get('model')} version "
                 f"{registry.get('version')} before the stop; kept, not promoted again")
        else:
            state.promotion = promote(state, best, tracker, opts.promotion, echo=echo, prepared=prepared)
    raise_if_swallowed()  # (a Ctrl-C in a finalizer during promotion: stop here, not after the report)
    if best is not None and opts.promotion.promote and opts.promotion.evaluate:
        state.final_evaluation = final_evaluation(state, best, echo=echo)
    raise_if_swallowed()
    report = write_report(state)
    parent = state.mlflow_parent_run_id
    if parent:
        counts = state.counts()
        metrics = {"trials_finished": counts.get(FINISHED, 0), "trials_stopped_early": counts.get(STOPPED, 0),
                   "trials_failed": counts.get(FAILED, 0)}
        for name, record in (("best", best), ("baseline", baseline)):
            if record is not None and record.best_value is not None:
                metrics[f"{name}_{opts.search.metric}"] = record.best_value
        if state.recheck is not None:
            metrics.update(recheck_gain=state.recheck["gain"], recheck_gain_stderr=state.recheck["gain_stderr"],
                           recheck_seed_noise=state.recheck["seed_noise"])
            for metric, key in (("recheck_fresh_seed_gain", "recheck_gain"), ("recheck_gain_noise", "gain_noise")):
                if state.recheck.get(key) is not None:  # verdicts written before the fresh-seed rule have neither
                    metrics[metric] = state.recheck[key]
        for role in ("promoted", "baseline"):
            # the model itself (the promoted one is best/ and the registered champion, listed first), and
            # where its configuration trained on more seeds, their mean, the fair comparison
            scored = ((state.final_evaluation or {}).get(role) or {})
            own = own_score(state.final_evaluation or {}, role)
            if own is not None:
                metrics[f"test_miou_{role}"] = own
            if len(scored.get("test_miou") or ()) > 1:
                metrics[f"test_miou_{role}_mean"] = scored["mean"]
        if state.budget is not None:
            metrics["epochs_trained"] = state.epochs_trained()
        tracker.log_metrics(parent, metrics, step=0)
        from automl.mlflow_view import NOTE_TAG, parent_note

        tags = {"automl.best_trial": best.name if best else "none", NOTE_TAG: parent_note(state),
                **({"automl.stop_reason": stop_reason} if stop_reason else {}),
                **({"automl.ended": state.ended} if state.ended else {}),
                # what the recheck_* metrics compare (settled levels since 2026-12-04; peak epochs before)
                **({"automl.recheck_basis": state.recheck["basis"]} if state.recheck and state.recheck.get("basis") else {}),
                **({"automl.best_params": best.params} if best is not None else {})}
        tracker.set_tags(parent, tags)
        tracker.log_artifacts(parent, [report.parent], "report")
        if state.pareto is not None:
            from automl.pareto import PARETO_FILE

            tracker.log_artifacts(parent, [Layout.of(state.results_dir).root / PARETO_FILE], "search")
    # Nothing to promote (every trial failed, none reported before a time budget ran out, none met
    # the latency limit): the search ended, as FAILED, which `automl status --watch` answers with 1.
    state.status = FINISHED if best is not None else FAILED
    state.save()
    if parent:
        tracker.end_run(parent, state.status)
    # The trials once more, as they ended: the live view erases its table, and a log's last block was
    # printed while trials still ran.
    echo(format_table(state, limit=FINAL_ROWS, show_errors=True))
    from automl.deploy import precision_of

    chosen = precision_of(best.latency) if best is not None else None
    echo(summary(state) + "".join("\n" + line for line in final_lines(state.final_evaluation or {}, state.recheck, chosen)))
    return SearchOutcome(Path(opts.results_dir), "search", state=state, best=best, baseline=baseline,
                         promotion=state.promotion, report=report, message=stop_reason, stopped_by_failures=bool(stop_reason))
