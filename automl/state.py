"""Search state persisted after every trial event, so `automl status` and `automl resume` work.

The state file (``RESULTS_DIR/automl_state.json``) is the driver's own ledger: the search options it
was started with (`automl.options.SearchOptions.to_dict`), the spec's own values of the searched
parameters (the baseline), the MLflow parent run, and one record per trial (params, per-epoch
metrics, best epoch, status, MLflow child run id, node). Ray keeps its own experiment checkpoint next to it
(``RESULTS_DIR/ray/``) for `Tuner.restore`; the ledger is what makes MLflow consistent on resume
(a restored trial finds its child run here instead of creating a second one).

A trial event (a start, an epoch's result, an end) appends that one trial's record to a journal
next to it (``automl_state.journal``, JSON lines), so its cost does not grow with the number of
trials; the whole file is rewritten (`save`, which also empties the journal) for changes to the
search itself, once the journal holds as many entries as there are trials, and every few seconds
(a compaction: the rewrites cost a bounded share per event, and the file read raw is at most a few
seconds old). `load` replays the entries newer than the file.

Every write is atomic or an append: a driver killed with SIGKILL leaves the previous or the new
state file, and at worst a cut last journal line, which `load` ignores (the event before it is
kept). The whole file is fsynced; journal lines are not (an OS crash can lose the events since the
last whole write, as it can Ray's own state files, which Ray does not fsync either).
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from automl.layout import Layout
from segformer.engine.checkpoint_files import STATUS_NAME
from segformer.fileio import atomic_write_text

log = logging.getLogger(__name__)

COMPACT_MIN = 64  # journal entries before a compaction, at the least (then: as many as there are trials)
COMPACT_S = 5.0  # and at most this old a whole file for whoever reads it raw, while its writes cost under 5%
STATE_VERSION = 2  # 2: settings in sections (automl.options), baseline values kept, no start-up latencies

# Trial statuses. RUNNING trials found in a state file whose driver is gone were interrupted.
# STOPPED: ended without error before its epoch budget, by a scheduler (ASHA/HyperBand/BOHB early
# stopping); its results count like a finished trial's. KILLED: cut by Ctrl-C/SIGTERM, a killed
# driver, the time budget or the failure limit (its error says which); its results count too.
PENDING, RUNNING, FINISHED, FAILED, KILLED = "PENDING", "RUNNING", "FINISHED", "FAILED", "KILLED"
STOPPED = "STOPPED"
LOST = "lost: "  # the error of a trial Ray's saved state did not know when the search resumed (`TrialRecord.lost`)
STOP_KINDS = ("rung", "curve", "budget", "time")  # what stopped a trial early (TrialRecord.stopped_by starts with one)
DONE = (FINISHED, STOPPED)  # ended normally (MLflow status FINISHED)
ENDED_WITH_BUDGET_LEFT = "the search ended with budget left"  # SearchState.ended's tail for a budgeted search


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
    stopped_by: str | None = None  # why a scheduler stopped it early: "<rung|curve|budget|time>: <details>"
    paused: bool = False  # RUNNING, but Ray has paused it (PBT: waiting at a perturbation epoch for the others)
    completed_epochs: int = 0  # the epochs of a trial that ended on its own: all of them, the unvalidated last ones too

    @property
    def lost(self) -> bool:
        """Cut by a kill after Ray's last saved state: Ray cannot continue it (`automl.runner`); a new
        trial of the same configuration may take it over (`automl.trial.TrialNamer`)."""
        return self.status == KILLED and (self.error or "").startswith(LOST)

    @property
    def epochs_trained(self) -> int:
        """Epochs this trial has trained: its last reported epoch (`SearchState.record_result` keeps the
        history in epoch order), or all its epochs once it ended on its own. A trial reports validated
        epochs only, so with a train.validation_interval that does not divide its epochs the last
        ones (7 epochs, every 3rd validated: the 7th) train after its last report."""
        reported = int(self.history[-1].get("epoch", 0)) if self.history else 0
        return max(reported, self.completed_epochs)


LOCK_FILE = ".automl.lock"  # held by the search's driver while it runs (`automl.runner.one_driver`)


def driver_running(results_dir: str | Path) -> bool | None:
    """Whether a driver holds the folder's lock: False after the driver ended, killed included (the
    kernel drops a dead process's lock); None where that cannot be told (a folder we cannot write)."""
    from filelock import FileLock, Timeout

    path = Layout.of(results_dir).root / LOCK_FILE
    if not path.is_file():
        return False
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    except OSError:
        return None
    lock.release()
    return False


def starting(results_dir: str | Path) -> bool:
    """Whether a driver holds the folder but has not written its state yet: it takes the lock first,
    and writes the state after the data check and Ray's start (seconds). A plain training (policy
    off) holds the lock for its whole run and writes no state: not starting once its train/ exists."""
    layout = Layout.of(results_dir)
    return not layout.state_file.is_file() and not layout.plain_train_dir.is_dir() and bool(driver_running(results_dir))


def observed(state: "SearchState") -> "SearchState":
    """`state` as it is: a search whose file says RUNNING but whose driver holds no lock was killed
    (SIGKILL, a lost machine) and says INTERRUPTED, which `automl resume` continues; one whose file
    says INTERRUPTED while a driver holds the lock is being resumed (the resume rewrites the file
    once Ray has started, seconds later) and says RUNNING."""
    if state.status == RUNNING and driver_running(state.results_dir) is False:
        state.status = "INTERRUPTED"
    elif state.status == "INTERRUPTED" and driver_running(state.results_dir) and _holder_pid(state) != state.driver_pid:
        state.status = RUNNING  # (held by the stopped driver itself, still closing MLflow and Ray: interrupted)
    return state


def _holder_pid(state: "SearchState") -> int | None:
    """The pid of the driver holding the folder, from the line it writes beside the lock ("pid N on ...")."""
    try:
        text = (Layout.of(state.results_dir).root / f"{LOCK_FILE}.owner").read_text(encoding="utf-8")
    except OSError:
        return None
    match = re.match(r"pid (\d+)", text)
    return int(match[1]) if match else None


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
    ended: str | None = None  # why a search ended early: its space exhausted (`automl.budget.DistinctSearcher`)
    recheck: dict[str, Any] | None = None  # the re-check's verdict (`automl.budget.verdict`)
    final_evaluation: dict[str, Any] | None = None  # the test split's scores of the promoted model and the baseline
    pareto: dict[str, Any] | None = None  # --objectives: the front and the member promoted (`automl.pareto`)
    promotion: dict[str, Any] = field(default_factory=dict)
    trials: dict[str, TrialRecord] = field(default_factory=dict)  # keyed by trial_id
    journal_seq: int = 0  # the last journal entry this file holds (`save_trial`)
    version: int = STATE_VERSION

    def __post_init__(self) -> None:
        self._seq = self.journal_seq  # the last journal entry written or replayed
        self._entries = 0  # entries in the journal since the last compaction
        self._appended = False  # this object has appended to the journal
        self._saved_at, self._save_s = time.monotonic(), 0.0  # the last whole write: when, and how long it took

    # ----------------------------------------------------------------- persistence
    @property
    def path(self) -> Path:
        return Layout.of(self.results_dir).state_file

    @property
    def journal_path(self) -> Path:
        return Layout.of(self.results_dir).journal_file

    def save(self) -> None:
        """The whole ledger, atomically; the journal's entries are in it, so it is emptied."""
        started = time.monotonic()
        self.updated_at = time.time()
        self.journal_seq = self._seq
        atomic_write_text(self.path, json.dumps(asdict(self), indent=1, sort_keys=False, default=str))
        self._entries, self._appended = 0, False
        self.journal_path.unlink(missing_ok=True)  # killed before this: `load` skips entries <= journal_seq
        from automl.results import write_results

        try:  # results.json, TAO's results contract: a view of the ledger, never a reason to lose it
            write_results(self)
        except Exception as err:  # noqa: BLE001
            log.warning("could not write results.json in %s: %s", self.results_dir, err)
        self._saved_at = time.monotonic()
        self._save_s = self._saved_at - started

    def save_trial(self, record: TrialRecord) -> None:
        """One trial's change: its record appended to the journal, or the whole ledger rewritten
        (fsynced) when the journal has grown to as many entries as there are trials, or when the
        whole file is older than COMPACT_S (or than 20 times its last write took: under 5% of the time)."""
        stale = time.monotonic() - self._saved_at >= max(COMPACT_S, 20 * self._save_s)
        if stale or self._entries + 1 >= max(COMPACT_MIN, len(self.trials)):
            self.save()
            return
        self._seq += 1
        self.updated_at = time.time()
        line = json.dumps({"seq": self._seq, "at": self.updated_at, "trial": asdict(record)}, default=str)
        with open(self.journal_path, "a+b") as out:
            if not self._appended and out.tell() > 0:  # a journal this process did not write: a kill may have cut its end
                out.seek(out.tell() - 1)
                if out.read(1) != b"\n":
                    out.write(b"\n")
            self._appended = True
            out.write(line.encode("utf-8") + b"\n")  # no fsync: a killed driver loses nothing written (as Ray's own state)
        self._entries += 1

    @classmethod
    def load(cls, results_dir: str | Path) -> "SearchState":
        path = Layout.of(results_dir).state_file
        if not path.is_file():
            if starting(results_dir):
                raise FileNotFoundError(f"the search in {results_dir} is starting: its driver checks the data and starts "
                                        f"Ray before it writes {path.name}; try again in a few seconds")
            plain = Layout.of(results_dir).plain_train_dir / STATUS_NAME
            if plain.parent.is_dir():  # `automl run --policy off`: one training, no search (its epochs so far)
                raise FileNotFoundError(f"{results_dir} holds a plain training (automl run --policy off), not a search: its "
                                        f"epochs are in {plain}, and evaluate.checkpoint={plain.parent} takes its best checkpoint")
            raise FileNotFoundError(
                f"no AutoML state in {results_dir}: expected {path}; was this folder made by `automl run`?"
            )
        # A compaction between reading the file and its journal would hide the entries it took in:
        # read both again until the file did not change meanwhile.
        for _ in range(10):
            before = _signature(path)
            state = cls._read(path, results_dir)
            if _signature(path) == before:
                break
        return state

    @classmethod
    def _read(cls, path: Path, results_dir: str | Path) -> "SearchState":
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
            state = cls(**data, trials=trials)
            if isinstance(state.budget, dict) and state.budget.get("ended"):  # where it was kept until 2026-12-05
                state.ended = state.ended or f"{state.budget.pop('ended')}; {ENDED_WITH_BUDGET_LEFT}"
        except (TypeError, AttributeError) as err:
            raise ValueError(f"{path} does not have the shape of an AutoML state file ({err}); restore it from a copy "
                             f"or start a new search") from None
        for entry in _journal(state.journal_path):
            if entry["seq"] > state._seq:
                record = TrialRecord(**entry["trial"])
                state.trials[record.trial_id] = record
                state._seq, state.updated_at = entry["seq"], entry.get("at", state.updated_at)
                state._entries += 1
        return state

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


def _signature(path: Path) -> tuple:
    try:
        stat = path.stat()
    except OSError:
        return ()
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def _journal(path: Path) -> list[dict[str, Any]]:
    """The journal's entries in order; a line the kill cut (the last) or any that is not an entry is skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    entries = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("seq"), int) and isinstance(entry.get("trial"), dict):
            entries.append(entry)
    return entries
