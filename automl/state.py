"""Search state persisted after every trial event, so `automl status` and `automl resume` work.

The state file (``RESULTS_DIR/automl_state.json``) is the driver's own ledger: the search options it
was started with (`automl.options.SearchOptions.to_dict`), the spec's own values of the searched
parameters (the baseline), the MLflow parent run, and one record per trial (params, per-epoch
metrics, best epoch, status, MLflow child run id, node). Ray keeps its own experiment checkpoint next to it
(``RESULTS_DIR/ray/``) for `Tuner.restore`; the ledger is what makes MLflow consistent on resume
(a restored trial finds its child run here instead of creating a second one).

Every write is atomic (temporary file + ``os.replace``): a driver killed with SIGKILL leaves either
the previous or the new state, never half a file.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from automl.layout import Layout
from segformer.fileio import atomic_write_text

STATE_VERSION = 2  # 2: settings in sections (automl.options), baseline values kept, no start-up latencies

# Trial statuses. RUNNING trials found in a state file whose driver is gone were interrupted.
# STOPPED: ended without error before its epoch budget, by a scheduler (ASHA/HyperBand/BOHB early
# stopping); its results count like a finished trial's. KILLED: cut by Ctrl-C/SIGTERM, a killed
# driver, the time budget or the failure limit (its error says which); its results count too.
PENDING, RUNNING, FINISHED, FAILED, KILLED = "PENDING", "RUNNING", "FINISHED", "FAILED", "KILLED"
STOPPED = "STOPPED"
DONE = (FINISHED, STOPPED)  # ended normally (MLflow status FINISHED)


@dataclass
class TrialRecord:
    """What the driver knows about one trial."""

    trial_id: str  # Ray's trial id (stable across Tuner.restore)
    name: str  # trial_000, trial_001, ... (also the trial folder name)
    params: dict[str, Any]  # sampled overrides as dotted spec keys
    status: str = PENDING
    history: list[dict[str, float]] = field(default_factory=list)  # one dict per reported epoch
    best_value: float | None = None  # best `metric` over all epochs (direction-aware)
    best_epoch: int | None = None
    mlflow_run_id: str | None = None
    error: str | None = None
    node_ip: str | None = None
    node_id: str | None = None
    results_dir: str | None = None
    checkpoint: str | None = None  # Ray checkpoint directory of the best epoch, once known
    started_at: float | None = None
    ended_at: float | None = None
    is_baseline: bool = False  # runs the spec's own values of the searched parameters (SearchState.baseline_params)
    run_started_at: float | None = None  # when Ray last (re)started the trial (driver clock)
    restores: list[dict[str, Any]] = field(default_factory=list)  # checkpoints continued: {"from", "epoch"}
    config_changes: list[dict[str, Any]] = field(default_factory=list)  # PBT: {"epoch", "params"} it went on with
    pid: int | None = None  # process of the Ray worker that last reported for this trial
    recheck_of: str | None = None  # a re-check (another seed) of this trial (`automl.budget`); not ranked
    latency: dict[str, float] | None = None  # its architecture's latency on the deploy target (`automl.deploy`)
    infeasible: bool = False  # over --max-latency-ms: trained nothing, never ranked nor promoted

    @property
    def epochs_trained(self) -> int:
        """Epochs this trial has trained (its last reported epoch)."""
        return max((int(h.get("epoch", 0)) for h in self.history), default=0)


@dataclass
class SearchState:
    """The whole ledger; `save()` after each change."""

    results_dir: str
    skill: str
    algorithm: str
    metric: str
    mode: str
    settings: dict[str, Any]  # SearchOptions.to_dict() as resolved for this search
    spec: str | None = None
    baseline_params: dict[str, Any] | None = None  # the spec's own values of the searched parameters (None: no baseline trial)
    overrides: list[str] = field(default_factory=list)
    status: str = RUNNING  # RUNNING | FINISHED | FAILED | INTERRUPTED
    mlflow_tracking_uri: str | None = None
    mlflow_experiment_id: str | None = None
    mlflow_parent_run_id: str | None = None
    driver_pid: int | None = None
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    best_trial: str | None = None  # the promoted trial, once decided (the ranking's best unless the re-check says otherwise)
    budget: dict[str, Any] | None = None  # the epoch budget (`automl.budget.EpochBudget`), None without one
    recheck: dict[str, Any] | None = None  # the re-check's verdict (`automl.budget.verdict`)
    final_evaluation: dict[str, Any] | None = None  # the test split's scores of the promoted model and the baseline
    pareto: dict[str, Any] | None = None  # --objectives: the front and the member promoted (`automl.pareto`)
    promotion: dict[str, Any] = field(default_factory=dict)
    trials: dict[str, TrialRecord] = field(default_factory=dict)  # keyed by trial_id
    version: int = STATE_VERSION

    # ----------------------------------------------------------------- persistence
    @property
    def path(self) -> Path:
        return Layout.of(self.results_dir).state_file

    def save(self) -> None:
        self.updated_at = time.time()
        data = asdict(self)
        atomic_write_text(self.path, json.dumps(data, indent=1, sort_keys=False, default=str))

    @classmethod
    def load(cls, results_dir: str | Path) -> "SearchState":
        path = Layout.of(results_dir).state_file
        if not path.is_file():
            raise FileNotFoundError(
                f"no AutoML state in {results_dir}: expected {path}; was this folder made by `automl run`?"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise ValueError(f"{path} cannot be read as an AutoML state file ({err}); it was damaged outside "
                             f"automl (the driver writes it atomically): restore it from a copy or start a new search") from None
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            found = data.get("version") if isinstance(data, dict) else f"a JSON {type(data).__name__}"
            raise ValueError(f"{path}: state version {found} is not {STATE_VERSION}: this search was made by another "
                             f"release of segformer-automl (run it with that release or start a new one), or the file "
                             f"is not an AutoML state file")
        try:
            trials = {tid: TrialRecord(**rec) for tid, rec in data.pop("trials", {}).items()}
            data["results_dir"] = str(Path(results_dir).resolve())
            return cls(**data, trials=trials)
        except (TypeError, AttributeError) as err:
            raise ValueError(f"{path} does not have the shape of an AutoML state file ({err}); restore it from a copy "
                             f"or start a new search") from None

    # ----------------------------------------------------------------- queries
    def better(self, a: float, b: float | None) -> bool:
        """True if `a` beats `b` under `mode` (a missing `b` always loses)."""
        if b is None or b != b:  # None or NaN
            return a == a
        return a > b if self.mode == "max" else a < b

    def ranked(self) -> list[TrialRecord]:
        """Trials with a result, best first (by their best epoch, not their last); re-checks and
        trials over the latency limit are not ranked."""
        scored = [t for t in self.trials.values()
                  if t.best_value is not None and t.best_value == t.best_value and not t.recheck_of and not t.infeasible]
        return sorted(scored, key=lambda t: t.best_value, reverse=self.mode == "max")

    def best(self) -> TrialRecord | None:
        """The promoted trial once decided (`best_trial`), else the ranking's first."""
        chosen = self.by_name(self.best_trial) if self.best_trial else None
        if chosen is not None:
            return chosen
        ranked = self.ranked()
        return ranked[0] if ranked else None

    def baseline(self) -> TrialRecord | None:
        return next((t for t in self.trials.values() if t.is_baseline), None)

    def by_name(self, name: str) -> TrialRecord | None:
        return next((t for t in self.trials.values() if t.name == name), None)

    def epochs_trained(self) -> int:
        """Epochs every trial together has trained (what an epoch budget counts)."""
        return sum(t.epochs_trained for t in self.trials.values())

    def budget_epochs(self) -> int | None:
        """The epoch budget's total (`automl.budget.EpochBudget.total`), None without a budget."""
        return None if self.budget is None else int(round(self.budget["trainings"] * self.budget["spec_epochs"]))

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.trials.values():
            out[t.status] = out.get(t.status, 0) + 1
        return out

    def record_result(self, trial: TrialRecord, metrics: dict[str, float]) -> bool:
        """Append one epoch's metrics; returns True when it is the trial's new best epoch.

        A trial restored from an earlier checkpoint reports some epochs again: the later report
        replaces the earlier ones, so the history never holds an epoch twice.
        """
        epoch = metrics.get("epoch")
        if epoch is not None and any(h.get("epoch", 0) >= epoch for h in trial.history):
            trial.history = [h for h in trial.history if h.get("epoch", 0) < epoch]
            trial.best_value, trial.best_epoch = None, None
            for past in trial.history:
                value = past.get(self.metric)
                if value is not None and self.better(float(value), trial.best_value):
                    trial.best_value, trial.best_epoch = float(value), int(past.get("epoch", 0))
        trial.history.append(metrics)
        value = metrics.get(self.metric)
        if value is None or not self.better(float(value), trial.best_value):
            return False
        trial.best_value = float(value)
        trial.best_epoch = int(metrics.get("epoch", len(trial.history)))
        return True
