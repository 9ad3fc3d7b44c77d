"""MLflow tracking for a search: one parent run per search, one nested child run per trial.

All MLflow writes happen in the driver process, never in Ray workers: Ray Tune streams every trial
event to `TrackingCallback` (a `ray.tune.Callback` running in the driver), which batches each
epoch's metrics into one `log_batch` call and updates the search ledger (`automl.state`). The store
therefore has a single writer, which an embedded sqlite store needs, and a worker that crashes
cannot leave a run half-logged.

Default store: ``sqlite:///<results_dir>/mlflow.db`` with artifacts under
``<results_dir>/mlartifacts`` (without an explicit artifact location MLflow would write to
``./mlruns`` relative to whatever directory the driver happens to run in). `--tracking-uri`
points at a server instead; the server then decides where artifacts go.

Child runs carry the tag ``mlflow.parentRunId`` (the MLflow UI draws the tree from it), sampled
params as dotted spec keys, per-epoch metrics with ``step=epoch``, and a final status
FINISHED/FAILED (KILLED for trials interrupted by a killed driver and not resumed by Ray).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from automl.state import FAILED, FINISHED, KILLED, RUNNING, STOPPED, SearchState, TrialRecord
from automl.trial import trial_name

if TYPE_CHECKING:
    from mlflow import MlflowClient

ARTIFACTS_DIR = "mlartifacts"
DB_FILE = "mlflow.db"
PARENT_TAG = "mlflow.parentRunId"
# Ray fills these into every result; they are bookkeeping, not model metrics.
_RAY_KEYS = {
    "training_iteration", "time_total_s", "time_this_iter_s", "timestamp", "time_since_restore",
    "iterations_since_restore", "timesteps_since_restore", "timesteps_total", "episodes_total",
    "pid", "done", "should_checkpoint", "epoch", "first_step_at", "restored_at_epoch",
}
_MAX_PARAM_LEN = 6000  # MLflow's param value limit (6000 on recent stores; longer values are cut)


class TrackingError(ValueError):
    """The MLflow store cannot be opened or written (the message names the URI)."""


def default_tracking_uri(results_dir: str | Path) -> str:
    return f"sqlite:///{Path(results_dir).resolve() / DB_FILE}"


def _sqlite_file(tracking_uri: str) -> Path | None:
    """The database file of a `sqlite:///path` tracking URI (None for any other store)."""
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix) or tracking_uri[len(prefix):] in ("", ":memory:"):
        return None
    return Path(tracking_uri[len(prefix):].split("?", 1)[0])


def _store_template() -> Path | None:
    """Where an empty sqlite store of the installed MLflow version is kept for new searches."""
    import importlib.metadata

    try:
        version = importlib.metadata.version("mlflow")
    except importlib.metadata.PackageNotFoundError:
        return None
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "segformer-automl" / f"mlflow-{version}-empty.db"


def _copy_atomically(source: Path, target: Path) -> None:
    """A real copy (never a hard link: sqlite writes in place), written by `segformer.fileio`."""
    from segformer.fileio import atomic_write

    with source.open("rb") as src:
        atomic_write(target, lambda out: shutil.copyfileobj(src, out))


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:_MAX_PARAM_LEN]


def _now_ms() -> int:
    return int(time.time() * 1000)


class Tracker:
    """Thin wrapper around `MlflowClient` with the search's conventions."""

    def __init__(self, tracking_uri: str, results_dir: str | Path, experiment_name: str) -> None:
        self.tracking_uri = tracking_uri
        self.results_dir = Path(results_dir).resolve()
        self.experiment_name = experiment_name
        self._client: "MlflowClient | None" = None
        self._experiment_id: str | None = None

    @property
    def client(self) -> "MlflowClient":
        if self._client is None:
            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
            if self.tracking_uri.startswith(("http:", "https:")):
                from automl.probe import MLFLOW_HTTP_DEFAULTS

                for key, value in MLFLOW_HTTP_DEFAULTS.items():  # few retries; the user's values win
                    os.environ.setdefault(key, value)
            from mlflow import MlflowClient

            db = _sqlite_file(self.tracking_uri)
            template = _store_template() if db is not None and not db.exists() else None
            seeded = False
            if template is not None and template.is_file():
                # A new sqlite store runs MLflow's schema migrations (~2 s on 2 cores); an empty
                # store of the same MLflow version, made once and kept in the user's cache, is the
                # same database in a millisecond.
                try:
                    _copy_atomically(template, db)
                    seeded = True
                except OSError:
                    pass
            try:
                self._client = MlflowClient(tracking_uri=self.tracking_uri)
            except Exception as exc:  # noqa: BLE001 (any store error: say which store and what to do)
                raise TrackingError(
                    f"cannot open the MLflow store {self.tracking_uri}: {exc}; give --tracking-uri a store this "
                    "user can create and write (or leave it out: sqlite in the results folder)"
                ) from exc
            if template is not None and not seeded:
                try:
                    self._client.search_experiments(max_results=1)  # the store exists, migrated, empty
                    _copy_atomically(db, template)
                except OSError:
                    pass  # no cache folder (read-only home): the next search migrates again
        return self._client

    @property
    def is_embedded(self) -> bool:
        return self.tracking_uri.startswith("sqlite:")

    def experiment_id(self) -> str:
        """The skill's experiment, created on first use (artifacts under the results folder)."""
        if self._experiment_id is None:
            experiment = self.client.get_experiment_by_name(self.experiment_name)
            if experiment is not None:
                self._experiment_id = experiment.experiment_id
            else:
                location = (self.results_dir / ARTIFACTS_DIR).as_uri() if self.is_embedded else None
                # "custom_model_development": the MLflow 3 UI then opens the model-training views
                # (runs, metrics, child runs) instead of the GenAI ones.
                self._experiment_id = self.client.create_experiment(
                    self.experiment_name, artifact_location=location,
                    tags={"mlflow.experimentKind": "custom_model_development"},
                )
        return self._experiment_id

    # ------------------------------------------------------------------ runs
    def start_parent(self, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> str:
        run = self.client.create_run(self.experiment_id(), run_name=run_name, tags=tags)
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def start_child(self, parent_run_id: str, record: TrialRecord, tags: dict[str, str]) -> str:
        all_tags = {PARENT_TAG: parent_run_id, "automl.trial_id": record.trial_id, **tags}
        run = self.client.create_run(self.experiment_id(), run_name=record.name, tags=all_tags)
        self.log_params(run.info.run_id, record.params)
        return run.info.run_id

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(str(k), _param_value(v)) for k, v in params.items()]
        for start in range(0, len(items), 100):  # log_batch accepts at most 100 params per call
            self.client.log_batch(run_id, params=items[start : start + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        stamp = _now_ms()
        items = [
            Metric(k, float(v), stamp, int(step))
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
        ]
        if items:
            self.client.log_batch(run_id, metrics=items)

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, _param_value(v)) for k, v in tags.items()])

    def end_run(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status=status)

    def reopen_run(self, run_id: str) -> None:
        self.client.update_run(run_id, status="RUNNING")

    def log_artifacts(self, run_id: str, paths: Iterable[str | Path], artifact_path: str | None = None) -> None:
        for path in paths:
            path = Path(path)
            if path.is_dir():
                self.client.log_artifacts(run_id, str(path), artifact_path)
            elif path.is_file():
                self.client.log_artifact(run_id, str(path), artifact_path)

    def children(self, parent_run_id: str) -> list[Any]:
        return self.client.search_runs(
            [self.experiment_id()], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'", max_results=10000
        )

    # ------------------------------------------------------------------ registry
    def register(self, model_name: str, run_id: str, artifact_path: str, alias: str) -> str:
        """Register `runs:/<run_id>/<artifact_path>` as a new version of `model_name` with `alias`."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(model_name)
        except MlflowException:
            pass  # already registered: add a version
        version = self.client.create_model_version(
            model_name, source=f"runs:/{run_id}/{artifact_path}", run_id=run_id
        )
        self.client.set_registered_model_alias(model_name, alias, version.version)
        return str(version.version)


def reconcile_interrupted(state: SearchState, tracker: Tracker, keep: set[str] = frozenset(),
                          reason: str = "interrupted: the driver stopped while this trial ran") -> list[str]:
    """After a killed driver: close the child runs of trials that were running and will not resume.

    Trials in `keep` (those Ray restores from its experiment checkpoint) keep their run: the
    callback reopens it when the trial starts again, so there is never a duplicate. Returns the
    names of the trials marked KILLED.
    """
    killed = []
    for record in state.trials.values():
        if record.status in (RUNNING, "PENDING") and record.trial_id not in keep:
            record.status = KILLED
            record.error = record.error or reason
            record.ended_at = time.time()
            if record.mlflow_run_id:
                tracker.end_run(record.mlflow_run_id, KILLED)
            killed.append(record.name)
    return killed


def _load_tune_callback_base() -> type:
    from ray.tune import Callback

    return Callback


class TrackingCallback(_load_tune_callback_base()):
    """Ray Tune callback (driver side): ledger + MLflow for every trial event.

    Picklable on purpose: Tuner stores its RunConfig (with this callback) in the experiment
    checkpoint, and `Tuner.restore` unpickles it. The MLflow client and the loaded ledger are
    rebuilt lazily after unpickling, from the results folder.
    """

    def __init__(self, results_dir: str, tracking_uri: str, experiment_name: str, on_change: Any = None) -> None:
        self.results_dir = str(results_dir)
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.on_change = on_change  # optional callable(state) for a live table; not pickled
        self._state: SearchState | None = None
        self._tracker: Tracker | None = None
        self._stopped: set[str] = set()  # trials a scheduler/stopper ended (seen on their last result)

    def __getstate__(self) -> dict[str, Any]:
        return {
            "results_dir": self.results_dir,
            "tracking_uri": self.tracking_uri,
            "experiment_name": self.experiment_name,
            "on_change": None,
            "_state": None,
            "_tracker": None,
            "_stopped": set(),
        }

    @property
    def state(self) -> SearchState:
        if self._state is None:
            self._state = SearchState.load(self.results_dir)
        return self._state

    def attach(self, state: SearchState, tracker: Tracker) -> None:
        """Share the driver's ledger and tracker (avoids a second loader in the same process)."""
        self._state, self._tracker = state, tracker

    @property
    def tracker(self) -> Tracker:
        if self._tracker is None:
            self._tracker = Tracker(self.tracking_uri, self.results_dir, self.experiment_name)
        return self._tracker

    def _save(self) -> None:
        self.state.save()
        backup_ray_state(Path(self.results_dir) / "ray" / "search")
        if self.on_change is not None:
            self.on_change(self.state)

    def _record(self, trial: Any) -> TrialRecord:
        record = self.state.trials.get(trial.trial_id)
        if record is None:
            params = {k: v for k, v in trial.config.items() if not str(k).startswith("_")}
            record = TrialRecord(
                trial_id=trial.trial_id,
                name=trial_name(trial),
                params=params,
                results_dir=str(Path(self.results_dir) / trial_name(trial)),
                is_baseline=trial_name(trial) == "trial_000",  # the searchers' first point is the spec
            )
            self.state.trials[trial.trial_id] = record
        return record

    # ------------------------------------------------------------------ Ray Tune hooks
    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        record = self._record(trial)
        parent = self.state.mlflow_parent_run_id
        if record.mlflow_run_id is None and parent:
            tags = {"automl.baseline": str(record.is_baseline).lower(), "automl.algorithm": self.state.algorithm}
            record.mlflow_run_id = self.tracker.start_child(parent, record, tags)
        elif record.mlflow_run_id is not None:
            self.tracker.reopen_run(record.mlflow_run_id)  # restored by Ray: same run, never a new one
            new = {k: v for k, v in trial.config.items() if not str(k).startswith("_")}
            if new != record.params:  # PBT exploit/explore: config changed mid-trial
                epoch = record.history[-1].get("epoch", len(record.history)) if record.history else 0
                self.tracker.set_tags(record.mlflow_run_id, {f"automl.config_from_epoch_{epoch}": new})
                record.params = new
        record.status = RUNNING
        record.error = None
        record.run_started_at = time.time()
        record.started_at = record.started_at or record.run_started_at
        self._save()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        record = self._record(trial)
        metrics = {
            k: float(v)
            for k, v in result.items()
            if k not in _RAY_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        epoch = int(result.get("epoch", result.get("training_iteration", len(record.history) + 1)))
        metrics["epoch"] = epoch
        is_best = self.state.record_result(record, metrics)
        record.node_ip = result.get("node_ip", record.node_ip)
        record.node_id = result.get("node_id", record.node_id)
        record.pid = result.get("pid", record.pid)
        if result.get("first_step_at") is not None and record.run_started_at is not None:
            record.startup_s.append(round(float(result["first_step_at"]) - record.run_started_at, 3))
        if result.get("restored_from"):
            # A worker that continued a checkpoint: its own (automl resume) or, after a PBT
            # exploit, a better trial's. Recorded with the epoch it continued from.
            restore = {"from": str(result["restored_from"]), "epoch": int(result.get("restored_at_epoch", 0))}
            record.restores.append(restore)
            if record.mlflow_run_id:
                self.tracker.set_tags(record.mlflow_run_id,
                                      {f"automl.restored_{len(record.restores)}": f"{restore['from']}@epoch{restore['epoch']}"})
        if result.get("done"):
            # Ray marks the result on which a scheduler or stopper ended the trial (a trial that
            # ends on its own finishes without another result): stopped early unless it had
            # reached its epoch budget anyway.
            budget = self.state.settings.get("max_epochs")
            if budget is None or epoch < int(budget):
                self._stopped.add(trial.trial_id)
        if is_best and trial.checkpoint is not None:
            record.checkpoint = trial.checkpoint.path
        if record.mlflow_run_id:
            logged = {k: v for k, v in metrics.items() if k != "epoch"}
            if record.best_value is not None:
                logged[f"best_{self.state.metric}"] = record.best_value
            self.tracker.log_metrics(record.mlflow_run_id, logged, step=epoch)
        self._save()

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        record = self._record(trial)
        if record.history and record.best_epoch == record.history[-1].get("epoch"):
            record.checkpoint = checkpoint.path

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        record = self._record(trial)
        stopped = trial.trial_id in self._stopped
        record.status = STOPPED if stopped else FINISHED
        record.ended_at = time.time()
        if record.mlflow_run_id:
            # MLflow has no "stopped" status: FINISHED plus a tag (the run did end normally).
            tags = {"automl.best_epoch": record.best_epoch, "automl.node_ip": record.node_ip,
                    "automl.node_id": record.node_id, "automl.stopped_early": str(stopped).lower(),
                    "automl.epochs_trained": len(record.history)}
            self.tracker.set_tags(record.mlflow_run_id, {k: v for k, v in tags.items() if v is not None})
            self.tracker.end_run(record.mlflow_run_id, FINISHED)
        prune_trial_dir(Path(record.results_dir or ""))
        self._save()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        record = self._record(trial)
        record.status = FAILED
        record.ended_at = time.time()
        record.error = _trial_error_text(trial)
        if record.mlflow_run_id:
            self.tracker.set_tags(record.mlflow_run_id, {"automl.error": record.error.splitlines()[-1][:500]})
            error_file = Path(self.results_dir) / record.name / "error.txt"
            error_file.parent.mkdir(parents=True, exist_ok=True)
            error_file.write_text(record.error, encoding="utf-8")
            self.tracker.log_artifacts(record.mlflow_run_id, [error_file])
            self.tracker.end_run(record.mlflow_run_id, FAILED)
        self._save()


def _trial_error_text(trial: Any) -> str:
    """The trial's traceback as Ray recorded it (falls back to the exception's repr)."""
    for attr in ("error_file", "pickled_error_file"):
        path = getattr(trial, attr, None)
        if path and attr == "error_file" and Path(path).is_file():
            return Path(path).read_text(encoding="utf-8", errors="replace").strip()
    error = getattr(trial, "get_error", lambda: None)()
    return repr(error) if error is not None else "trial failed (no error recorded by Ray)"


def prune_trial_dir(trial_dir: Path) -> None:
    """Drop a finished trial's per-epoch checkpoints; Ray keeps the best and latest for promotion.

    Kept: status.json, experiment.yaml, the latest checkpoint (`segformer_model_latest.pth`) and
    anything that is not a checkpoint.
    """
    train_dir = trial_dir / "train"
    if not train_dir.is_dir():
        return
    for path in train_dir.glob("model_epoch_*"):
        if path.is_file():
            path.unlink(missing_ok=True)
    shutil.rmtree(trial_dir / "restore", ignore_errors=True)


RAY_STATE_BACKUP = ".backup"
_RAY_STATE_FILES = ("experiment_state-*.json", "search_gen_state-*.json", "searcher-state-*.pkl", "tuner.pkl")


def _complete(path: Path) -> bool:
    """A Ray state file that is whole: non-empty, and parseable when it is JSON."""
    try:
        if path.stat().st_size == 0:
            return False
        if path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def backup_ray_state(experiment_dir: Path) -> None:
    """Keep the last complete copy of Ray's experiment state files next to them.

    Ray writes ``experiment_state-*.json`` in place (open "w" + dump), so a driver killed with
    SIGKILL during a snapshot leaves it empty or cut, and `Tuner.restore` would then start over.
    This runs in the driver between Ray's snapshots (Tune callbacks and snapshots share the
    controller thread), copying each complete file atomically to ``.backup/``.
    """
    backup = experiment_dir / RAY_STATE_BACKUP
    for pattern in _RAY_STATE_FILES:
        for path in experiment_dir.glob(pattern):
            if not _complete(path):
                continue
            backup.mkdir(exist_ok=True)
            tmp = backup / f".{path.name}.tmp"
            shutil.copyfile(path, tmp)
            os.replace(tmp, backup / path.name)


def repair_ray_state(experiment_dir: Path) -> list[str]:
    """Before `Tuner.restore`: replace cut or empty Ray state files by their last complete copy."""
    backup = experiment_dir / RAY_STATE_BACKUP
    repaired = []
    for saved in sorted(backup.glob("*")) if backup.is_dir() else []:
        if saved.name.startswith("."):
            continue
        target = experiment_dir / saved.name
        if not target.exists() or not _complete(target):
            shutil.copyfile(saved, target)
            repaired.append(saved.name)
    return repaired
