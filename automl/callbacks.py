"""The driver's Ray Tune callbacks, one per concern, and the failure limit.

=================== =============================================================================
callback            what it does on trial events (in this order: each reads what the ones before wrote)
=================== =============================================================================
`LedgerCallback`    the search's ledger (`automl.state`): records, statuses, epochs; saved after each
                    event, before Ray's own experiment checkpoint of that step
`MlflowCallback`    one MLflow child run per trial: params, per-epoch metrics, tags, final status
`RayStateBackup`    the last complete set of Ray's experiment state files (`automl.ray_session`)
`EarlyPromotion...` starts the promotion on an idle slot in the search's tail (`automl.promote`)
`ConsoleCallback`   a line per trial event (`automl run --live`, `automl.console.LiveTable`)
=================== =============================================================================

The ledger is saved at the end of every event it records, and again when MLflow's child run of a
new trial exists, so it is never behind Ray's experiment checkpoint (written after the events of a
controller step): a driver killed at any point resumes without losing a finished trial or
creating a second child run.

`Tuner` pickles its RunConfig, callbacks and stopper included, and `Tuner.restore` (`automl resume`)
unpickles them. So each callback carries only the results folder, and finds the search's live
objects (ledger, MLflow tracker, early promotion, console: a `LiveSearch`) through `bind`: by that
folder, or, for a folder moved since the search started, the one search this process runs. All of
this runs in the driver process, on Tune's controller thread (Ray Client, which runs the
controller on the cluster, is refused by `automl.ray_session`).
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from ray.tune import Callback, Stopper
from ray.tune.experiment import Trial

from automl.budget import BASELINE, RECHECK_OF
from automl.layout import Layout
from automl.state import FAILED, FINISHED, RUNNING, STOPPED, SearchState, TrialRecord
from automl.trial import ray_trial_name

log = logging.getLogger(__name__)

# Ray fills these into every result; they are bookkeeping, not model metrics.
_RAY_KEYS = {
    "training_iteration", "time_total_s", "time_this_iter_s", "timestamp", "time_since_restore",
    "iterations_since_restore", "timesteps_since_restore", "timesteps_total", "episodes_total",
    "pid", "done", "should_checkpoint", "epoch", "restored_at_epoch",
}


@dataclass
class LiveSearch:
    """What the callbacks of one running search share."""

    state: SearchState  # the ledger
    tracker: Any  # automl.tracking.Tracker
    epochs: int  # a trial's epoch budget: a trial ended before it was stopped early
    prune: bool = True  # delete a finished trial's per-epoch checkpoints (Ray keeps its best and latest)
    early: Any = None  # automl.promote.EarlyPromotion, or None where it does not apply
    console: Callable[[SearchState], None] | None = None  # the live table, or None
    echo: Callable[[str], None] | None = None  # where the budget's progress lines go (None: nowhere)
    pace: Any = None  # automl.progress.Pace of this fit (the budget's time left)
    repeated: dict[str, bool] = field(default_factory=dict)  # trial id -> its last result repeated an epoch unchanged
    stop_reasons: dict[str, str] = field(default_factory=dict)  # trial id -> why a scheduler last wanted it stopped (`automl.budget.note_stop`)
    epochs_at_start: int = 0  # epochs the ledger held when this driver started (more than 0: a resumed search)
    time_budget_s: float | None = None  # --time-budget, counted from this driver's start (`SearchLimits`)
    started: float = field(default_factory=time.time)
    _next: float = 0.0  # share of the budget at which the next progress line is due

    @property
    def deadline(self) -> float | None:
        return self.started + self.time_budget_s if self.time_budget_s else None

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.time() >= self.deadline

    @property
    def layout(self) -> Layout:
        return Layout.of(self.state.results_dir)

    def budget_progress(self) -> None:
        """With an epoch budget: an estimate in time once every slot has trained its first epochs,
        then a line at every tenth of the budget (epochs spent, minutes so far, minutes left)."""
        from automl.progress import Pace
        from segformer.text import span

        if self.state.budget is None or self.echo is None:
            return
        done = self.state.epochs_trained()
        if self.pace is None:
            self.pace = Pace()
        left = self.pace.left(self.state)  # the first call starts the clock
        if left is not None and self.deadline is not None:
            left = min(left, max(0.0, self.deadline - time.time()))  # the time budget ends it sooner
        total = self.state.budget_epochs() or 0
        if left is None or done - self.pace.start[1] < 2 or done / max(1, total) < self._next:
            return
        # Epochs this driver trained, since its trials started (after Ray's start; a resume's own, not the
        # search's whole time). Not the pace's window, which starts at the first epoch reported and so
        # left that epoch out of "3 trained" ("2 trained in the last 0 s").
        elapsed, measured = time.time() - self.started, done - self.epochs_at_start
        resumed = " since the resume" if self.epochs_at_start else ""
        self.echo(f"automl: budget {done}/{total} epochs ({measured} trained in {span(elapsed)}{resumed}); "
                  f"about {span(left)} left at this pace")
        self._next = (int(done / max(1, total) * 10) + 1) / 10


_LIVE: dict[str, LiveSearch] = {}


@contextmanager
def bind(live: LiveSearch) -> Iterator[LiveSearch]:
    """Make `live` the search the callbacks of its results folder act on, for the duration of a fit."""
    key = str(live.layout.root)
    _LIVE[key] = live
    try:
        yield live
    finally:
        _LIVE.pop(key, None)


class _Bound:
    """Pickled as its results folder only; finds its `LiveSearch` through `bind`."""

    def __init__(self, results_dir: str | Path) -> None:
        self.results_dir = str(Layout.of(results_dir).root)

    def __getstate__(self) -> dict[str, Any]:
        return {"results_dir": self.results_dir}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["results_dir"])  # type: ignore[misc]

    @property
    def live(self) -> LiveSearch:
        live = bound_search(self.results_dir)
        if live is None:
            raise RuntimeError(f"no search is bound to {self.results_dir} (automl.callbacks.bind); bound: {sorted(_LIVE)}")
        return live


def bound_search(results_dir: str) -> LiveSearch | None:
    """The `LiveSearch` bound to `results_dir`, or the only one bound (the results folder was moved
    or renamed since the search began); None when there is none."""
    live = _LIVE.get(results_dir)
    if live is None and len(_LIVE) == 1:
        live = next(iter(_LIVE.values()))
    return live


def _params(trial: Any) -> dict[str, Any]:
    return {k: v for k, v in trial.config.items() if not str(k).startswith("_")}


class LedgerCallback(_Bound, Callback):
    """Keeps the ledger in step with Ray: one record per trial, its status, epochs and checkpoint."""

    def __init__(self, results_dir: str | Path) -> None:
        super().__init__(results_dir)
        self._stopped: set[str] = set()  # trials a scheduler or stopper ended (seen on their last result)

    def record(self, trial: Any) -> TrialRecord:
        state = self.live.state
        record = state.trials.get(trial.trial_id)
        if record is None:
            record = self._take_over(trial)
        if record is None:
            name, params = ray_trial_name(trial), _params(trial)
            baseline_taken = any(t.is_baseline for t in state.trials.values())
            if state.budget is not None and state.algorithm != "grid":  # the budget's searcher flags it (`automl.budget.BASELINE`)
                is_baseline = bool(trial.config.get(BASELINE))
            else:  # the first trial with the spec's values
                is_baseline = state.baseline_params is not None and not baseline_taken and params == state.baseline_params
            record = TrialRecord(trial_id=trial.trial_id, name=name, params=params,
                                 results_dir=str(self.live.layout.trial_dir(name)), is_baseline=is_baseline,
                                 recheck_of=trial.config.get(RECHECK_OF))
            state.trials[trial.trial_id] = record
        return record

    def _take_over(self, trial: Any) -> TrialRecord | None:
        """The record of a lost trial whose name `TrialNamer` gave this new trial (same configuration):
        it goes on under Ray's new id, with its history, epochs and MLflow run."""
        state = self.live.state
        record = state.by_name(ray_trial_name(trial))
        if record is None or not record.lost:
            return None
        del state.trials[record.trial_id]
        record.trial_id, record.error = trial.trial_id, None
        state.trials[record.trial_id] = record
        state.save()  # a record re-keyed: the journal holds records, not removals
        if self.live.echo is not None:
            self.live.echo(f"automl: {record.name} goes on: the searcher proposed its configuration again")
        return record

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        record = self.record(trial)
        params = _params(trial)
        if params != record.params:  # PBT exploit/explore: the config changed mid-trial
            epoch = record.history[-1].get("epoch", len(record.history)) if record.history else 0
            record.config_changes.append({"epoch": epoch, "params": params})
            record.params = params
        record.status, record.error, record.paused = RUNNING, None, False
        # (Re)started: running, and on a node its first result names (a resumed search's is a new Ray node)
        record.ended_at = record.node_ip = record.node_id = None
        record.run_started_at = time.time()
        record.started_at = record.started_at or record.run_started_at
        self.live.state.save_trial(record)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        record = self.record(trial)
        metrics = {k: float(v) for k, v in result.items()
                   if k not in _RAY_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)}
        epoch = int(result.get("epoch", result.get("training_iteration", len(record.history) + 1)))
        metrics["epoch"] = epoch
        from automl.deploy import INFEASIBLE, LATENCY_METRICS

        if "latency_ms" in metrics:
            record.latency = {k: metrics[k] for k in LATENCY_METRICS if k in metrics}
        record.infeasible = record.infeasible or bool(metrics.pop(INFEASIBLE, 0))
        if record.infeasible and epoch == 0:  # its metric is the sampler's worst value, not a result: kept out of the ledger
            metric = self.live.state.metric
            metrics = {k: v for k, v in metrics.items() if k not in (metric, f"best_{metric}")}
        again = next((h for h in record.history if h.get("epoch") == epoch), None)
        metric = self.live.state.metric
        is_best = self.live.state.record_result(record, metrics)
        # A trial restored at its last epoch (automl resume; a PBT member continuing its own checkpoint)
        # reports that epoch once more: MLflow's history would show it twice (MlflowCallback skips it).
        # Its validation is the same; a retrained epoch (a new value) is logged.
        self.live.repeated[trial.trial_id] = again is not None and again.get(metric) == metrics.get(metric)
        record.node_ip = result.get("node_ip", record.node_ip)
        record.node_id = result.get("node_id", record.node_id)
        record.pid = result.get("pid", record.pid)
        if result.get("restored_from"):
            # A worker that continued a checkpoint: its own (automl resume) or, after a PBT exploit, a
            # better trial's. Recorded with the epoch it continued from.
            record.restores.append({"from": str(result["restored_from"]), "epoch": int(result.get("restored_at_epoch", 0))})
        if result.get("done") and epoch < self.live.epochs:
            # Ray marks the result on which a scheduler or stopper ended the trial (a trial that ends on
            # its own finishes without another result): stopped early unless it reached its budget.
            self._stopped.add(trial.trial_id)
            record.stopped_by = self.live.stop_reasons.pop(trial.trial_id, f"stopped by Ray at epoch {epoch}")  # the scheduler's reason
        if is_best and trial.checkpoint is not None:
            record.checkpoint = trial.checkpoint.path
        self.live.state.save_trial(record)
        self.live.budget_progress()

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        # Ray pauses a trial without telling callbacks (PBT: a member that reached a perturbation epoch
        # waits there for the others, and gives up its slot). It stays RUNNING for the budget and resume;
        # the flag tells the table that it is waiting, not training.
        state = self.live.state
        if state.algorithm != "pbt":  # the only scheduler of ours that pauses (each step walks every trial)
            return
        for trial in trials:
            record = state.trials.get(trial.trial_id)
            paused = trial.status == Trial.PAUSED
            if record is not None and record.status == RUNNING and record.paused != paused:
                record.paused = paused
                state.save_trial(record)

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        record = self.record(trial)
        if record.history and record.best_epoch == record.history[-1].get("epoch"):
            record.checkpoint = checkpoint.path
            self.live.state.save_trial(record)
        if self.live.prune and self.live.state.algorithm == "pbt":  # Ray keeps every PBT checkpoint (automl.runner)
            prune_ray_checkpoints(trials, {trial: checkpoint.path},
                                  {r.checkpoint for r in self.live.state.trials.values() if r.checkpoint})

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        record = self.record(trial)
        record.status, record.paused = (STOPPED if trial.trial_id in self._stopped else FINISHED), False
        if record.status == FINISHED and not record.infeasible:  # (an infeasible trial trained nothing)
            record.completed_epochs = self.live.epochs  # its last epochs may have come after its last report
        self.live.stop_reasons.pop(trial.trial_id, None)  # noted but overruled (a trial the budget trains in full)
        record.ended_at = time.time()
        if self.live.prune:
            prune_trial_dir(Path(record.results_dir or ""))
        self.live.state.save_trial(record)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        record = self.record(trial)
        record.status, record.ended_at, record.error, record.paused = FAILED, time.time(), _trial_error_text(trial), False
        self.live.state.save_trial(record)


class MlflowCallback(_Bound, Callback):
    """One nested MLflow child run per trial (the parent run is the search's)."""

    def _record(self, trial: Any) -> TrialRecord:
        return self.live.state.trials[trial.trial_id]  # made by LedgerCallback, which runs first

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        live, record = self.live, self._record(trial)
        parent = live.state.mlflow_parent_run_id
        if record.mlflow_run_id is None and parent and live.epochs_at_start:
            # a resumed search: the killed driver may have made this trial's run without noting it
            record.mlflow_run_id = live.tracker.find_child(parent, record.name)
            if record.mlflow_run_id is not None:
                live.tracker.log_params(record.mlflow_run_id, record.params)  # the kill may have come before them
                live.state.save_trial(record)
        if record.mlflow_run_id is None and parent:
            tags = {"automl.baseline": str(record.is_baseline).lower(), "automl.algorithm": live.state.algorithm}
            record.mlflow_run_id = live.tracker.start_child(parent, record, tags)
            live.state.save_trial(record)  # the run's id before anything else happens: a resume reopens it, never a second one
        elif record.mlflow_run_id is not None:
            live.tracker.reopen_run(record.mlflow_run_id)  # restored by Ray: same run, never a new one
            live.tracker.set_tags(record.mlflow_run_id, {"automl.trial_id": record.trial_id})  # new after a take-over
            if record.config_changes:  # PBT: the configs it went on with, by the epoch they started at
                live.tracker.set_tags(record.mlflow_run_id, {f"automl.config_from_epoch_{c['epoch']}": c["params"]
                                                             for c in record.config_changes})

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.live.tracker.flush_due()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        live, record = self.live, self._record(trial)
        if not record.mlflow_run_id or not record.history:
            return
        if result.get("restored_from"):
            restore = record.restores[-1]
            live.tracker.set_tags(record.mlflow_run_id,
                                  {f"automl.restored_{len(record.restores)}": f"{restore['from']}@epoch{restore['epoch']}"})
        if live.repeated.get(trial.trial_id):
            return
        logged = {k: v for k, v in record.history[-1].items() if k != "epoch"}
        if record.infeasible:
            live.tracker.set_tags(record.mlflow_run_id, {"automl.infeasible": "true"})
        if record.best_value is not None:
            logged[f"best_{live.state.metric}"] = record.best_value
        live.tracker.log_metrics(record.mlflow_run_id, logged, step=int(record.history[-1]["epoch"]), batched=True)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        live, record = self.live, self._record(trial)
        if record.mlflow_run_id:
            # MLflow has no "stopped" status: FINISHED plus a tag (the run did end normally).
            tags = {"automl.best_epoch": record.best_epoch, "automl.node_ip": record.node_ip,
                    "automl.node_id": record.node_id, "automl.stopped_early": str(record.status == STOPPED).lower(),
                    "automl.stopped_by": record.stopped_by if record.status == STOPPED else None,
                    "automl.epochs_trained": record.epochs_trained}  # as results.json: 0 for a trial over the latency limit
            live.tracker.end_run(record.mlflow_run_id, FINISHED, tags={k: v for k, v in tags.items() if v is not None})

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        live, record = self.live, self._record(trial)
        if record.mlflow_run_id:
            live.tracker.set_tags(record.mlflow_run_id, {"automl.error": (record.error or "").splitlines()[-1][:500]})
            error_file = live.layout.trial_dir(record.name) / "error.txt"
            error_file.parent.mkdir(parents=True, exist_ok=True)
            error_file.write_text(record.error or "", encoding="utf-8")
            live.tracker.log_artifacts(record.mlflow_run_id, [error_file])
            live.tracker.end_run(record.mlflow_run_id, FAILED)


class RayStateBackup(_Bound, Callback):
    """The last complete set of Ray's experiment state files (`automl.ray_session.backup_ray_state`),
    taken from Ray's driver staging folder at the end of a step of its loop, whenever the trials or
    the searcher changed (`automl.ray_session.state_fingerprint`).

    Ray saves its state into that staging folder in the same thread, just before the step ends, so
    the set read there is whole and of one moment; the copy in the results folder is made from it in
    the background, file by file, and is what a kill can cut or mix. (A backup that waited for the
    results folder's files to look unchanged was never taken: with TUNE_GLOBAL_CHECKPOINT_S=0 Ray
    rewrites them twice a second.)"""

    look_every_s = 0.5

    def __init__(self, results_dir: str | Path) -> None:
        super().__init__(results_dir)
        self._saved = ""
        self._looked_at = 0.0
        self._tuner = b""  # tuner.pkl, once read whole (Ray writes it once, when the fit starts)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if not trials or time.monotonic() - self._looked_at < self.look_every_s:
            return
        self._looked_at = time.monotonic()
        try:
            self._backup(Path(trials[0].storage.experiment_driver_staging_path))
        except (OSError, ValueError, AttributeError) as err:  # a backup missed is taken at the next look
            log.debug("Ray state backup skipped: %s", err)

    def _backup(self, staging: Path) -> None:
        from automl.ray_session import backup_ray_state, read_ray_state, state_fingerprint

        contents = read_ray_state(staging)
        if contents is None:
            return
        if "tuner.pkl" not in contents:  # written to the results folder, not staged: without it nothing restores
            if not self._tuner:
                tuner = self.live.layout.ray_experiment / "tuner.pkl"
                data = tuner.read_bytes() if tuner.is_file() else b""
                if not data.endswith(b"."):  # a whole pickle ends with STOP: not yet written, or being written
                    return
                self._tuner = data
            contents["tuner.pkl"] = self._tuner
        now = state_fingerprint(contents)
        if now != self._saved and backup_ray_state(staging, self.live.layout.ray_backup, contents):
            self._saved = now


class EarlyPromotionCallback(_Bound, Callback):
    """Starts the search tail's promotion once it applies (`automl.promote.EarlyPromotion.consider`)."""

    def _consider(self, *args: Any, **info: Any) -> None:
        live = self.live
        if live.early is not None:
            live.early.consider(live.state)

    on_trial_start = on_trial_complete = on_trial_error = _consider


class ConsoleCallback(_Bound, Callback):
    """A line per trial event on the console (`automl run --live`; the live table is `automl.progress`)."""

    def _show(self, *args: Any, **info: Any) -> None:
        live = self.live
        if live.console is not None:
            live.console(live.state)

    on_trial_start = on_trial_result = on_trial_complete = on_trial_error = _show


class SearchLimits(_Bound, Stopper):
    """Ends the search after `limit` failed trials, or at the time budget (Ray asks `stop_all` after
    every event, and the stopper itself after every result).

    The time budget (`LiveSearch.time_budget_s`) stops no epoch half-way. Ray's own
    (TuneConfig.time_budget_s) stops every trial at once, and an epoch a trial had finished but not
    yet reported was lost to the ledger and MLflow though its status.json and checkpoint held it.
    Past the deadline a trial stops at its next epoch's end, that epoch recorded; a budgeted search
    starts no trial (`automl.budget.BudgetSearcher`); once no trial that was running at the deadline
    is left, the search ends. The clock starts with the driver (`automl resume` gets the budget again)."""

    def __init__(self, results_dir: str | Path, limit: int | None = None) -> None:
        super().__init__(results_dir)
        self.limit = limit

    def __getstate__(self) -> dict[str, Any]:
        return {"results_dir": self.results_dir, "limit": self.limit}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["results_dir"], state.get("limit"))

    def __call__(self, trial_id: str, result: dict) -> bool:
        live = self.live
        if not live.out_of_time():
            return False
        live.stop_reasons[trial_id] = (f"time: the time budget of {live.time_budget_s:g} s ran out; it stopped at the "
                                       f"end of epoch {result.get('epoch')}")
        return True

    def stop_all(self) -> bool:
        live, state = self.live, self.live.state
        if self.limit is not None and state.counts().get(FAILED, 0) >= self.limit:
            return True
        # A trial that started after the deadline (a slot freed under --max-trials) is cut: it would
        # train past the budget. A PBT member paused at a perturbation epoch has recorded its epochs.
        return live.out_of_time() and not any(t.status == RUNNING and not t.paused and (t.started_at or 0) < live.deadline
                                              for t in state.trials.values())


def search_callbacks(results_dir: str | Path) -> list[Callback]:
    """The callbacks of a search, in the order they must run."""
    return [cls(results_dir) for cls in (LedgerCallback, MlflowCallback, RayStateBackup, EarlyPromotionCallback,
                                         ConsoleCallback)]


def _trial_error_text(trial: Any) -> str:
    """The trial's traceback as Ray recorded it (falls back to the exception's repr)."""
    path = getattr(trial, "error_file", None)
    if path and Path(path).is_file():
        return Path(path).read_text(encoding="utf-8", errors="replace").strip()
    error = getattr(trial, "get_error", lambda: None)()
    return repr(error) if error is not None else "trial failed (no error recorded by Ray)"


def prune_ray_checkpoints(trials: list, arriving: dict[Any, str], best: set[str]) -> None:
    """Delete Ray checkpoint folders of `trials` that nothing can read any more (PBT).

    Under PBT Ray keeps every checkpoint (`automl.runner`: a count to keep per trial would delete
    one another member has exploited and not yet restored): one per member and report, 1.6 TB for
    8 members of a 1 GB model over 200 epochs. A trial's folder keeps its latest two (Ray restores
    the latest; a resume may name the one before), its best (`best`: promotion), and any other
    trial's current checkpoint (an exploit's source, until that member restores it). Only folders
    older than a trial's registered latest go: Ray tells callbacks of a checkpoint before it
    registers it (`arriving`: trial -> that checkpoint), and a member's report can be on disk
    before Ray registers it at all (saved at a pause); deleting by "not current" lost such a
    folder, and both members then failed to restore.
    """
    import shutil

    def index(folder: Path) -> int | None:
        digits = folder.name[len("checkpoint_"):]
        return int(digits) if folder.name.startswith("checkpoint_") and digits.isdigit() else None

    current = {t: Path(arriving.get(t) or t.checkpoint.path) for t in trials if t in arriving or t.checkpoint is not None}
    needed = {Path(p).resolve() for p in best} | {p.resolve() for p in current.values()}
    for trial, latest in current.items():
        newest = index(latest)
        if latest.parent.name != ray_trial_name(trial) or newest is None:
            continue  # exploited another member's checkpoint: its own folder's newest is not known here
        for folder in latest.parent.glob("checkpoint_*"):
            number = index(folder)
            if number is not None and number < newest - 1 and folder.resolve() not in needed:
                shutil.rmtree(folder, ignore_errors=True)


def prune_trial_dir(trial_dir: Path) -> None:
    """Drop a finished trial's per-epoch checkpoints; Ray keeps the best and latest for promotion.

    Kept: status.json, experiment.yaml, the latest checkpoint (`segformer_model_latest.pth`) and
    anything that is not a checkpoint.
    """
    import shutil

    train_dir = trial_dir / "train"
    if not train_dir.is_dir():
        return
    for path in train_dir.glob("model_epoch_*"):
        if path.is_file():
            path.unlink(missing_ok=True)
    for folder in train_dir.glob("automl_ckpt_*"):  # a report's hand-over folder a killed worker left
        shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(trial_dir / "restore", ignore_errors=True)
