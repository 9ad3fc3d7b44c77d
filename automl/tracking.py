"""MLflow tracking for a search: one parent run per search, one nested child run per trial.

All MLflow writes happen in the driver process, never in Ray workers: Ray Tune streams every trial
event to `automl.callbacks.MlflowCallback` (a `ray.tune.Callback` running in the driver), which
batches each epoch's metrics into one `log_batch` call. The store therefore has a single writer,
which an embedded sqlite store needs, and a worker that crashes cannot leave a run half-logged.

Default store: ``sqlite:///<results_dir>/mlflow.db`` with artifacts under
``<results_dir>/mlartifacts`` (`automl.layout`) (without an explicit artifact location MLflow would write to
``./mlruns`` relative to whatever directory the driver happens to run in). A sqlite `--tracking-uri`
shared by several searches keeps every search's artifacts in ``mlartifacts`` next to its database
(`segformer.fileio.mlflow_artifact_root`); a server decides itself where artifacts go.

Child runs carry the tag ``mlflow.parentRunId`` (the MLflow UI draws the tree from it), sampled
params as dotted spec keys, per-epoch metrics with ``step=epoch``, and a final status
FINISHED/FAILED (KILLED for trials interrupted by a killed driver and not resumed by Ray). Their
names show the key parameters and the tag ``automl.trial`` the bare trial name; what the UI shows
by default is `automl.mlflow_view`'s.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from automl.layout import Layout
from automl.state import FAILED, FINISHED, KILLED, PENDING, RUNNING, SearchState, TrialRecord
from segformer.fileio import mlflow_artifact_root

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
INTERRUPTED_TAG = "automl.interrupted"  # on the search's run while it is stopped (Ctrl-C, SIGTERM) and not resumed
STORE_LOCK_S = 120.0  # how long a driver waits for another to create or open a shared sqlite store
_MAX_PARAM_LEN = 6000  # MLflow's param value limit (6000 on recent stores; longer values are cut)


class TrackingError(ValueError):
    """The MLflow store cannot be opened or written (the message names the URI)."""


FLUSH_S = 5.0  # seconds between two writes of the buffered per-epoch metrics (`Tracker.log_metrics`)


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:_MAX_PARAM_LEN]


def _now_ms() -> int:
    return int(time.time() * 1000)


def absolute_store_uri(uri: str | None) -> str | None:
    """A local MLflow store given relative to where the command ran (``sqlite:///rel/mlflow.db``, a
    folder path), made absolute: stored with the search as written, a resume from another folder opened
    a new empty store there. Servers and absolute paths are returned as they are."""
    if not uri:
        return uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        rest = uri[len("sqlite:///"):]
        return uri if not rest or rest.startswith(":") else "sqlite:///" + str(Path(rest).expanduser().absolute())
    if "://" not in uri and ("/" in uri or uri.startswith((".", "~"))):  # a folder ("databricks" is a scheme)
        return str(Path(uri).expanduser().absolute())
    return uri


class Tracker:
    """Thin wrapper around `MlflowClient` with the search's conventions."""

    def __init__(self, tracking_uri: str, results_dir: str | Path, experiment_name: str) -> None:
        self.tracking_uri = tracking_uri
        self.layout = Layout.of(results_dir)
        self.experiment_name = experiment_name
        self._client: "MlflowClient | None" = None
        self._experiment_id: str | None = None
        self.batched = True  # trials' epoch metrics buffered and written in batches (`log_metrics`)
        self._buffer: dict[str, list[Any]] = {}  # run id -> metrics not written yet
        self._flushed_at = time.monotonic()

    @property
    def client(self) -> "MlflowClient":
        if self._client is None:
            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
            from automl.probe import use_mlflow_http_defaults

            use_mlflow_http_defaults(self.tracking_uri)
            from mlflow import MlflowClient

            # "Creating initial MLflow database tables..." / "Updating database tables" are INFO
            # lines in the middle of the search's own output; warnings and errors still show.
            logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
            try:
                with self._creating():
                    self._client = MlflowClient(tracking_uri=self.tracking_uri)
            except TrackingError:
                raise
            except Exception as exc:  # noqa: BLE001 (any store error: say which store and what to do)
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                if "MLFLOW_ALLOW_FILE_STORE" in str(exc):  # MLflow 3.17+: not a permissions problem
                    raise TrackingError(
                        f"MLflow refuses the file store {self.tracking_uri}: its file backend is in maintenance mode. "
                        "Give --tracking-uri a database (sqlite:///path/to/mlflow.db) or a tracking server, or set "
                        "MLFLOW_ALLOW_FILE_STORE=true to keep the file store"
                    ) from None
                if self.is_embedded and "disk is full" in str(exc):
                    path = self.tracking_uri.split(":///", 1)[-1]
                    raise TrackingError(f"the disk holding the MLflow store {path} is full ({first}); free disk space "
                                        f"or give --results-dir on a disk with room") from None
                if self.is_embedded and "not a database" in str(exc):
                    path = self.tracking_uri.split(":///", 1)[-1]
                    raise TrackingError(
                        f"the MLflow store {path} is damaged ({first}); restore it from a copy. The search's own "
                        f"ledger (automl_state.json) and trial folders do not depend on it and are intact"
                    ) from None
                raise TrackingError(
                    f"cannot open the MLflow store {self.tracking_uri}: {first}; give --tracking-uri a store this "
                    "user can create and write (or leave it out: sqlite in the results folder)"
                ) from None
        return self._client

    @property
    def is_embedded(self) -> bool:
        return self.tracking_uri.startswith("sqlite:")

    @contextmanager
    def _creating(self) -> Iterator[None]:
        """Held while MLflow opens the store: a new sqlite store is created table by table, and two
        searches starting at once on one shared store both created it ("table ... already exists").
        A folder this user cannot write to opens without it (MLflow then says what is wrong)."""
        from filelock import FileLock, Timeout

        where = self.tracking_uri.split("?", 1)[0]  # (sqlite:////shared/mlflow.db?timeout=30: the same store)
        path = Path(where.split(":///", 1)[1]) if self.is_embedded and ":///" in where else None
        lock = None
        if path is not None and path.name and not path.name.startswith(":") and path.parent.is_dir():  # not :memory:
            # every user of a team's store may take it (a lock file the first user made 0644 shut the others out)
            lock = FileLock(str(path.with_name(f".{path.name}.lock")), mode=0o666)
        try:
            if lock is not None:
                lock.acquire(timeout=STORE_LOCK_S)
        except Timeout:
            raise TrackingError(f"the MLflow store {path} has been opened by another process for {STORE_LOCK_S:g} s "
                                f"(it holds {lock.lock_file}); if no search is starting there, delete that file") from None
        except (OSError, NotImplementedError):  # (no locks on that file system: open it as before)
            lock = None
        try:
            yield
        finally:
            if lock is not None:
                lock.release()

    def experiment_id(self) -> str:
        """The skill's experiment, created on first use (artifacts under the results folder)."""
        if self._experiment_id is None:
            experiment = self.client.get_experiment_by_name(self.experiment_name)
            if experiment is not None:
                self._experiment_id = experiment.experiment_id
            else:
                location = mlflow_artifact_root(self.tracking_uri)
                # "custom_model_development": the MLflow 3 UI then opens the model-training views
                # (runs, metrics, child runs) instead of the GenAI ones.
                try:
                    self._experiment_id = self.client.create_experiment(
                        self.experiment_name, artifact_location=location,
                        tags={"mlflow.experimentKind": "custom_model_development"},
                    )
                except Exception:  # another search in the store created it a moment ago: use that one
                    experiment = self.client.get_experiment_by_name(self.experiment_name)
                    if experiment is None:
                        raise
                    self._experiment_id = experiment.experiment_id
        return self._experiment_id

    # ------------------------------------------------------------------ runs
    def start_parent(self, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> str:
        run = self.client.create_run(self.experiment_id(), run_name=run_name, tags=tags)
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def start_child(self, parent_run_id: str, record: TrialRecord, tags: dict[str, str]) -> str:
        from automl.mlflow_view import TRIAL_TAG, run_name

        all_tags = {PARENT_TAG: parent_run_id, "automl.trial_id": record.trial_id, TRIAL_TAG: record.name, **tags}
        run = self.client.create_run(self.experiment_id(), run_name=run_name(record), tags=all_tags)
        self.log_params(run.info.run_id, record.params)
        return run.info.run_id

    def find_child(self, parent_run_id: str, name: str) -> str | None:
        """The child run of `parent_run_id` made for trial `name`, if there is one: a driver killed between
        creating it and noting its id in the ledger leaves it there, and a resume adopts it."""
        from automl.mlflow_view import TRIAL_TAG

        runs = self.client.search_runs([self.experiment_id()], max_results=1,
                                       filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}' and tags.`{TRIAL_TAG}` = '{name}'")
        return runs[0].info.run_id if runs else None

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(str(k), _param_value(v)) for k, v in params.items()]
        for start in range(0, len(items), 100):  # log_batch accepts at most 100 params per call
            self.client.log_batch(run_id, params=items[start : start + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int, *, batched: bool = False) -> None:
        from mlflow.entities import Metric

        stamp = _now_ms()
        items = [
            Metric(k, float(v), stamp, int(step))
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
        ]
        if not items:
            return
        if not (batched and self.batched):
            self.client.log_batch(run_id, metrics=items)
            return
        # `batched` (a trial's epoch reports): off the event path. An MLflow write (a store transaction,
        # ~15 ms on sqlite) per report would set the pace of a big search. Buffered here, written per
        # run every FLUSH_S seconds (`flush_due`, from the driver's step), when the run ends, and when
        # the search stops.
        self._buffer.setdefault(run_id, []).extend(items)

    def flush_due(self) -> None:
        """`flush` when FLUSH_S seconds have passed since the last one."""
        if self._buffer and time.monotonic() - self._flushed_at >= FLUSH_S:
            self.flush()

    def flush(self, run_id: str | None = None, tags: dict[str, Any] | None = None) -> None:
        """Write the buffered metrics (of `run_id` with its `tags`, or of every run) to the store."""
        from mlflow.entities import RunTag

        for run in [run_id] if run_id is not None else list(self._buffer):
            items = self._buffer.pop(run, [])
            labels = [RunTag(k, _param_value(v)) for k, v in (tags or {}).items()] if run == run_id else []
            # log_batch takes at most 1000 metrics per call; the tags (a handful, as `set_tags` writes them) go with the first
            for start in range(0, len(items), 1000) if items else ([0] if labels else []):
                self.client.log_batch(run, metrics=items[start : start + 1000], tags=labels if start == 0 else [])
        if run_id is None:
            self._flushed_at = time.monotonic()

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, _param_value(v)) for k, v in tags.items()])

    def end_run(self, run_id: str, status: str, tags: dict[str, Any] | None = None) -> None:
        """Close a run, its buffered metrics and `tags` written first (one store write with them)."""
        self.flush(run_id, tags)
        self.client.set_terminated(run_id, status=status)

    def reopen_run(self, run_id: str) -> None:
        self.client.update_run(run_id, status="RUNNING")

    def resume_parent(self, run_id: str) -> None:
        """The search's run reopened by `automl resume`: no longer tagged interrupted (a finished search
        kept the tag), and the resumes counted in ``automl.resumes``."""
        self.reopen_run(run_id)
        tags = self.client.get_run(run_id).data.tags
        if INTERRUPTED_TAG in tags:
            self.client.delete_tag(run_id, INTERRUPTED_TAG)
        self.set_tags(run_id, {"automl.resumes": int(tags.get("automl.resumes", 0)) + 1})

    def log_artifacts(self, run_id: str, paths: Iterable[str | Path], artifact_path: str | None = None) -> None:
        for path in paths:
            path = Path(path)
            if path.is_dir():
                self.client.log_artifacts(run_id, str(path), artifact_path)
            elif path.is_file():
                self.client.log_artifact(run_id, str(path), artifact_path)

    # ------------------------------------------------------------------ registry
    def register(self, model_name: str, run_id: str, artifact_path: str, alias: str,
                 tags: dict[str, str] | None = None) -> tuple[str, Any]:
        """Register `runs:/<run_id>/<artifact_path>` as a new version of `model_name` (with `tags`)
        and move `alias` to it. Returns (its version, the version the alias left, or None)."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(model_name)
        except MlflowException:
            pass  # already registered: add a version
        try:
            before = self.client.get_model_version_by_alias(model_name, alias)
        except MlflowException:
            before = None  # the alias is new
        version = self.client.create_model_version(
            model_name, source=f"runs:/{run_id}/{artifact_path}", run_id=run_id, tags=tags or None
        )
        self.client.set_registered_model_alias(model_name, alias, version.version)
        return str(version.version), before


def backfill_metrics(state: SearchState, tracker: Tracker) -> list[str]:
    """Write to MLflow the validated epochs the ledger holds and a trial's run lacks: epoch metrics are
    buffered (`Tracker.log_metrics`), so a driver killed between a report and the next flush loses them
    there, even for a trial the ledger already shows FINISHED. `automl resume` calls this before it goes
    on. Returns the names of the trials whose runs were mended."""
    mended = []
    for record in state.trials.values():
        if not record.mlflow_run_id or not record.history:
            continue
        logged = {m.step for m in tracker.client.get_metric_history(record.mlflow_run_id, state.metric)}
        best = None
        for entry in record.history:
            value = entry.get(state.metric)
            if value is None:
                continue
            best = value if state.better(value, best) else best
            if int(entry["epoch"]) not in logged:
                metrics = {k: v for k, v in entry.items() if k != "epoch"}
                tracker.log_metrics(record.mlflow_run_id, {**metrics, f"best_{state.metric}": best}, step=int(entry["epoch"]))
                if record.name not in mended:
                    mended.append(record.name)
    return mended


def reconcile_interrupted(state: SearchState, tracker: Tracker,
                          reason: str = "interrupted: the driver stopped while this trial ran",
                          keep: Iterable[str] = ()) -> list[str]:
    """When the driver stops: mark the trials that were running (or waiting) KILLED, in the ledger and
    MLflow, so nothing is left RUNNING. `automl resume` continues them from their last checkpoint in
    the same child run (reopened as RUNNING). Trials whose Ray ids are in `keep` are left as they are.
    Returns the names of the trials marked KILLED.
    """
    killed = mark_killed(state, reason, keep)
    close_stopped_runs(state, tracker, killed)
    return killed


def mark_killed(state: SearchState, reason: str, keep: Iterable[str] = ()) -> list[str]:
    """The ledger's half of `reconcile_interrupted` (no MLflow call, so nothing here can wait on a
    server): running or waiting trials not in `keep` become KILLED. Returns their names."""
    killed, keep = [], set(keep)
    for record in state.trials.values():
        if record.status in (RUNNING, PENDING) and record.trial_id not in keep:
            record.status, record.paused = KILLED, False
            record.error = record.error or reason
            record.ended_at = time.time()
            killed.append(record.name)
    return killed


def close_stopped_runs(state: SearchState, tracker: Tracker, killed: Iterable[str]) -> None:
    """MLflow's half of `reconcile_interrupted`: the child runs of the `killed` trials end KILLED, and
    a run whose trial ended just before the stop gets the ledger's status."""
    killed = set(killed)
    for record in state.trials.values():
        try:
            if record.name in killed:
                if record.mlflow_run_id:
                    tracker.end_run(record.mlflow_run_id, KILLED)
            elif record.mlflow_run_id and record.ended_at is not None and record.ended_at >= time.time() - 120:
                # Ended just before the stop: the ledger recorded the end, but the stop may have come
                # before MLflow's callback closed the run (with several trials at once, one ends while
                # Ctrl-C arrives). A run still RUNNING gets the ledger's status.
                if tracker.client.get_run(record.mlflow_run_id).info.status == RUNNING:
                    tracker.end_run(record.mlflow_run_id, FAILED if record.status == FAILED else FINISHED)
        except Exception as err:  # noqa: BLE001 (a signal can cut an MLflow write and leave sqlite locked)
            # The ledger is what `automl resume` reads, and it reopens or closes the run then.
            log.warning("could not update MLflow run of %s while stopping: %s", record.name, err)
