"""The driver's Tune callbacks find their search through `bind`, also after `Tuner.restore` unpickles them."""

from __future__ import annotations

import os
import pickle

import pytest

from automl.callbacks import SearchLimits, LedgerCallback, LiveSearch, bind, search_callbacks
from automl.state import FAILED, FINISHED, RUNNING, SearchState, TrialRecord


def _live(results) -> LiveSearch:
    state = SearchState(results_dir=str(results), skill="segformer", algorithm="random", metric="val_miou", mode="max",
                        settings={})
    return LiveSearch(state, tracker=None, epochs=2)


def test_pickled_callbacks_carry_only_their_folder_and_find_the_bound_search(tmp_path):
    live = _live(tmp_path / "a")
    callbacks = [*search_callbacks(tmp_path / "a"), SearchLimits(tmp_path / "a", 1)]
    restored = pickle.loads(pickle.dumps(callbacks))  # what Tuner.restore does with tuner.pkl
    assert all(vars(c).get("results_dir") == str(tmp_path / "a") for c in restored)
    assert restored[-1].limit == 1
    with bind(live):
        assert all(c.live is live for c in restored)
        assert not restored[-1].stop_all()
        live.state.trials["t1"] = TrialRecord(trial_id="t1", name="trial_000", params={}, status=FAILED)
        assert restored[-1].stop_all()  # the failure limit reads the live ledger
    with pytest.raises(RuntimeError, match="no search is bound"):
        restored[0].live


def test_a_moved_results_folder_still_resumes(tmp_path):
    """tuner.pkl names the folder the search started in; resumed from another, the one search of the
    process is the one to act on; with two bound, an unknown folder is an error naming them."""
    moved = LedgerCallback(tmp_path / "old")
    live = _live(tmp_path / "new")
    with bind(live):
        assert moved.live is live
        with bind(_live(tmp_path / "other")):
            with pytest.raises(RuntimeError, match="no search is bound to .*old"):
                moved.live


def test_ray_state_is_backed_up_and_restored_as_one_set(tmp_path):
    """A cut state file puts back the whole last complete set: restoring only the cut file would mix
    two moments of the search (a searcher waiting for a trial the experiment does not know)."""
    import json
    import pickle

    from automl.ray_session import backup_ray_state, repair_ray_state

    backup = tmp_path / ".state_backup.tar"
    experiment = tmp_path / "experiment_state-1.json"
    searcher = tmp_path / "searcher-state-1.pkl"
    generator = tmp_path / "search_gen_state-1.json"  # Ray's own name; a pickle inside
    experiment.write_text(json.dumps({"trials": ["a"]}))
    searcher.write_bytes(pickle.dumps({"live": ["a"]}))
    generator.write_bytes(pickle.dumps({"counter": 1}))
    assert backup_ray_state(tmp_path, backup)
    assert repair_ray_state(tmp_path, backup) == []  # all whole: nothing to do

    searcher.write_bytes(pickle.dumps({"live": ["a", "b"]}))  # a later moment...
    experiment.write_text('{"trials": ["a", "b"')  # ...whose experiment file the kill cut
    assert not backup_ray_state(tmp_path, backup)  # an incomplete set is never backed up
    assert repair_ray_state(tmp_path, backup) == sorted(p.name for p in (experiment, searcher, generator))
    assert json.loads(experiment.read_text()) == {"trials": ["a"]}
    assert pickle.loads(searcher.read_bytes()) == {"live": ["a"]}  # the same moment as the experiment file

    searcher.write_bytes(pickle.dumps({"live": ["a"]})[:-1])  # a cut pickle lacks its STOP opcode
    assert repair_ray_state(tmp_path, backup) and pickle.loads(searcher.read_bytes()) == {"live": ["a"]}
    # killed during Ray's very first save: every file empty and no copy to put back. Resume says so
    # (`incomplete_state`), and nothing reads the empty files as JSON on the way.
    from automl.ray_session import incomplete_state, relink_missing_checkpoints

    fresh = tmp_path / "first"
    fresh.mkdir()
    for name in (experiment.name, searcher.name, generator.name):
        (fresh / name).write_bytes(b"")
    assert repair_ray_state(fresh, fresh / ".state_backup.tar") == []
    assert incomplete_state(fresh) == sorted(p.name for p in (experiment, generator, searcher))
    assert relink_missing_checkpoints(fresh, lambda name: None) == []



def test_epoch_metrics_are_written_in_batches_and_a_closed_run_has_them_all(tmp_path, monkeypatch):
    """A trial's epoch reports are buffered off the event path (real sqlite store): written when due,
    and all of them before the run is closed."""
    import automl.tracking as tracking
    from automl.tracking import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", tmp_path, "batches")
    parent = tracker.start_parent("search", {}, {})
    record = TrialRecord(trial_id="t1", name="trial_000", params={"lr": 0.1})
    run = tracker.start_child(parent, record, {})
    monkeypatch.setattr(tracking, "FLUSH_S", 3600.0)
    for epoch in (1, 2):
        tracker.log_metrics(run, {"val_miou": 0.1 * epoch}, step=epoch, batched=True)
    tracker.flush_due()  # not due yet
    assert tracker.client.get_metric_history(run, "val_miou") == []
    monkeypatch.setattr(tracking, "FLUSH_S", 0.0)
    tracker.flush_due()
    assert [m.step for m in tracker.client.get_metric_history(run, "val_miou")] == [1, 2]
    monkeypatch.setattr(tracking, "FLUSH_S", 3600.0)
    tracker.log_metrics(run, {"val_miou": 0.3}, step=3, batched=True)
    tracker.end_run(run, "FINISHED", tags={"automl.best_epoch": 3})
    assert [m.step for m in tracker.client.get_metric_history(run, "val_miou")] == [1, 2, 3]
    closed = tracker.client.get_run(run)
    assert closed.info.status == "FINISHED" and closed.data.tags["automl.best_epoch"] == "3"


def test_searches_sharing_a_sqlite_store_keep_their_artifacts_beside_it(tmp_path):
    """Two searches given one sqlite --tracking-uri (real store): the experiment the first created
    keeps artifacts in mlartifacts next to the database, so the second search's champion does not
    land inside the first search's folder (which may be moved or deleted)."""
    from automl.tracking import Tracker

    store = f"sqlite:///{tmp_path / 'shared' / 'mlflow.db'}"
    (tmp_path / "shared").mkdir()
    runs = []
    for name in ("first", "second"):
        tracker = Tracker(store, tmp_path / name, "segformer")
        runs.append(tracker.start_parent(name, {}, {}))
        tracker.client.log_text(runs[-1], "model", "champion/MLmodel")
    for run in runs:
        uri = tracker.client.get_run(run).info.artifact_uri
        assert uri.startswith((tmp_path / "shared" / "mlartifacts").as_uri()), uri
    assert not (tmp_path / "first").exists() and not (tmp_path / "second").exists()
    assert len(list((tmp_path / "shared" / "mlartifacts").rglob("MLmodel"))) == 2


_OPEN_STORE = """
import pathlib, sys, time
import mlflow
from automl.tracking import Tracker
ready, go = pathlib.Path(sys.argv[2] + ".ready"), pathlib.Path(sys.argv[3])
ready.touch()
while not go.exists():  # every process opens the store at the same moment
    time.sleep(0.005)
print(Tracker(sys.argv[1], sys.argv[2], "segformer").experiment_id())
"""


def test_searches_starting_at_once_on_a_new_shared_store_all_start(tmp_path):
    """Four drivers open one new sqlite store at the same moment (as searches started together by a
    team's scheduler do): MLflow creates the store once, and every driver gets the one experiment
    (each created the tables itself, and all but one failed with "table ... already exists")."""
    import subprocess
    import sys
    import time

    (tmp_path / "shared").mkdir()
    store = f"sqlite:///{tmp_path / 'shared' / 'mlflow.db'}"
    procs = [subprocess.Popen([sys.executable, "-c", _OPEN_STORE, store, str(tmp_path / f"s{i}"), str(tmp_path / "go")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(4)]
    deadline = time.time() + 120
    while sum(1 for _ in tmp_path.glob("s*.ready")) < 4 and time.time() < deadline:  # all imported
        time.sleep(0.05)
    (tmp_path / "go").touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err[-800:] for _, err in outs]
    assert len({out.strip() for out, _ in outs}) == 1
    assert sorted(p.name for p in (tmp_path / "shared").iterdir()) == [".mlflow.db.lock", "mlflow.db"]
    assert (tmp_path / "shared" / ".mlflow.db.lock").stat().st_mode & 0o777 == 0o666  # a team's other users take it too


def test_a_store_held_too_long_by_another_process_is_said(tmp_path, monkeypatch):
    from filelock import FileLock

    from automl import tracking

    monkeypatch.setattr(tracking, "STORE_LOCK_S", 0.2)
    with FileLock(str(tmp_path / ".mlflow.db.lock")):  # another driver, stuck while it opens the store
        with pytest.raises(tracking.TrackingError) as err:
            tracking.Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}?timeout=30", tmp_path, "segformer").client
    assert str(err.value).startswith(f"the MLflow store {tmp_path / 'mlflow.db'} has been opened by another process")
    assert str(tmp_path / ".mlflow.db.lock") in str(err.value)


def _mlflow_version() -> tuple[int, ...]:
    from importlib.metadata import version

    return tuple(int(p) for p in version("mlflow").split(".")[:2] if p.isdigit())


@pytest.mark.skipif(_mlflow_version() < (3, 17), reason="MLflow refuses a file store from 3.17 on")
def test_a_file_store_mlflow_refuses_is_not_called_a_permissions_problem(tmp_path, monkeypatch):
    from automl.tracking import Tracker, TrackingError

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(TrackingError) as err:
        Tracker((tmp_path / "mlruns").as_uri(), tmp_path, "segformer").client
    assert "MLFLOW_ALLOW_FILE_STORE=true" in str(err.value) and "sqlite:///" in str(err.value)
    assert "can create and write" not in str(err.value)


def test_a_resume_writes_the_epoch_metrics_a_kill_kept_from_mlflow(tmp_path, monkeypatch):
    """A driver killed with epoch metrics still buffered: the ledger shows the trial FINISHED with
    epochs 1-3, MLflow has epoch 1 only (seen in CI on a PostgreSQL server). The resume's backfill
    writes epochs 2 and 3 from the ledger (real sqlite store), once: a second pass writes nothing."""
    import automl.tracking as tracking
    from automl.tracking import Tracker, backfill_metrics

    store = f"sqlite:///{tmp_path}/mlflow.db"
    killed = Tracker(store, tmp_path, "backfill")
    parent = killed.start_parent("search", {}, {})
    record = TrialRecord(trial_id="t1", name="trial_000", params={"lr": 0.1}, status=FINISHED,
                         history=[{"epoch": 1, "val_miou": 0.3, "train_loss": 1.0}, {"epoch": 2, "val_miou": 0.5, "train_loss": 0.8},
                                  {"epoch": 3, "val_miou": 0.4, "train_loss": 0.7}])
    record.mlflow_run_id = killed.start_child(parent, record, {})
    killed.log_metrics(record.mlflow_run_id, {"val_miou": 0.3}, step=1)
    monkeypatch.setattr(tracking, "FLUSH_S", 3600.0)
    killed.log_metrics(record.mlflow_run_id, {"val_miou": 0.5}, step=2, batched=True)  # buffered when the kill came
    state = SearchState(results_dir=str(tmp_path), skill="segformer", algorithm="bayesian", metric="val_miou", mode="max",
                        settings={}, mlflow_parent_run_id=parent)
    state.trials["t1"] = record
    tracker = Tracker(store, tmp_path, "backfill")  # the resuming driver's
    assert backfill_metrics(state, tracker) == ["trial_000"]
    history = tracker.client.get_metric_history(record.mlflow_run_id, "val_miou")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.3), (2, 0.5), (3, 0.4)]
    best = tracker.client.get_metric_history(record.mlflow_run_id, "best_val_miou")
    assert sorted((m.step, m.value) for m in best) == [(2, 0.5), (3, 0.5)]  # the best so far, as the search logged it
    assert [m.step for m in tracker.client.get_metric_history(record.mlflow_run_id, "train_loss")] == [2, 3]
    assert backfill_metrics(state, tracker) == []


def test_a_trial_lost_to_a_kill_is_taken_over_by_the_same_configuration(tmp_path):
    """A trial Ray's saved state did not know is marked lost on resume; when the restored searcher
    proposes its configuration again, the new Ray trial gets its name (folder, latest checkpoint) and
    its record goes on under the new id, history included; another configuration gets a new name."""
    from types import SimpleNamespace

    from automl.state import KILLED
    from automl.state import LOST
    from automl.trial import _LOST, _NAMES, TrialNamer

    live = _live(tmp_path)
    lost = TrialRecord(trial_id="old", name="trial_001", params={"train.optim.lr": 0.01}, status=KILLED,
                       error=LOST + "it started after Ray last saved", history=[{"epoch": 1, "val_miou": 0.2}])
    live.state.trials["a"] = TrialRecord(trial_id="a", name="trial_000", params={"train.optim.lr": 0.1}, status=FINISHED)
    live.state.trials["old"] = lost
    live.state.save()
    namer = TrialNamer(str(tmp_path))
    _NAMES.pop(str(tmp_path), None)
    other = SimpleNamespace(trial_id="n1", config={"train.optim.lr": 0.5}, checkpoint=None)
    again = SimpleNamespace(trial_id="n2", config={"train.optim.lr": 0.01, "_full": True}, checkpoint=None)
    try:
        other.custom_trial_name = namer(other)
        again.custom_trial_name = namer(again)
        assert (other.custom_trial_name, again.custom_trial_name) == ("trial_002", "trial_001")
        with bind(live):
            ledger = LedgerCallback(tmp_path)
            ledger.on_trial_start(iteration=0, trials=[], trial=again)
            ledger.on_trial_start(iteration=0, trials=[], trial=other)
        record = live.state.trials["n2"]
        assert "old" not in live.state.trials and record is lost
        assert record.status == RUNNING and record.error is None and record.history == [{"epoch": 1, "val_miou": 0.2}]
        assert live.state.trials["n1"].name == "trial_002" and live.state.trials["n1"].history == []
        assert sorted(t.name for t in SearchState.load(tmp_path).trials.values()) == ["trial_000", "trial_001", "trial_002"]
    finally:
        _NAMES.pop(str(tmp_path), None)
        _LOST.pop(str(tmp_path), None)


def test_a_resume_adopts_the_run_a_kill_left_unnoted(tmp_path):
    """A driver killed between creating a trial's MLflow run and noting its id in the ledger: the
    resumed search adopts that run for the trial (real sqlite store) instead of making a second one."""
    from types import SimpleNamespace

    from automl.callbacks import MlflowCallback
    from automl.tracking import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", tmp_path, "adopt")
    parent = tracker.start_parent("search", {}, {})
    record = TrialRecord(trial_id="t2", name="trial_001", params={"train.optim.lr": 0.01})
    orphan = tracker.start_child(parent, record, {})  # the kill came before the ledger heard of it
    live = _live(tmp_path)
    live.tracker, live.epochs_at_start = tracker, 4  # a resumed search
    live.state.mlflow_parent_run_id = parent
    live.state.trials["t2"] = record
    callback = MlflowCallback(tmp_path)
    with bind(live):
        callback.on_trial_start(0, [], SimpleNamespace(trial_id="t2"))
    assert record.mlflow_run_id == orphan
    children = tracker.client.search_runs([tracker.experiment_id()], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
    assert [r.info.run_id for r in children] == [orphan]


def test_a_finished_trials_folder_keeps_its_latest_checkpoint_only(tmp_path):
    """What a finished trial's folder keeps (delete_intermediate_checkpoints): its latest checkpoint,
    status and spec. Per-epoch checkpoints go, and so does a report's hand-over folder that a killed
    worker left (a hard link to an older latest: it holds a whole checkpoint's disk space)."""
    from automl.callbacks import prune_trial_dir

    train = tmp_path / "trial_000" / "train"
    (train / "automl_ckpt_x1y2").mkdir(parents=True)
    (train / "segformer_model_latest.pth").write_bytes(b"latest")
    os.link(train / "segformer_model_latest.pth", train / "automl_ckpt_x1y2" / "checkpoint.ckpt")
    for name in ("model_epoch_000_step_00002.pth", "status.json", "experiment.yaml"):
        (train / name).write_text("x")
    (tmp_path / "trial_000" / "restore").mkdir()
    prune_trial_dir(tmp_path / "trial_000")
    assert sorted(p.name for p in (tmp_path / "trial_000").rglob("*")) == [
        "experiment.yaml", "segformer_model_latest.pth", "status.json", "train"]


def test_old_pbt_checkpoints_go_and_what_can_still_be_read_stays(tmp_path):
    """Under PBT Ray keeps every checkpoint; the search deletes a member's checkpoints older than the
    two latest that Ray has registered, except its best and another member's exploit source. A newer
    folder than the registered latest (reported, not yet registered: saved at a pause) stays."""
    from types import SimpleNamespace

    from automl.callbacks import prune_ray_checkpoints

    class Member:  # what the search reads of a Ray trial: its name and its current checkpoint
        def __init__(self, name, checkpoint):
            self.custom_trial_name, self.checkpoint = name, SimpleNamespace(path=str(checkpoint))

    search = tmp_path / "ray" / "search"
    for name, count in (("trial_000", 7), ("trial_001", 3), ("trial_002", 4)):
        for i in range(count):
            (search / name / f"checkpoint_{i:06d}").mkdir(parents=True)
    a = Member("trial_000", search / "trial_000" / "checkpoint_000004")  # 5 and 6 reported, not registered
    b = Member("trial_001", search / "trial_000" / "checkpoint_000001")  # exploited trial_000's epoch, not restored yet
    c = Member("trial_002", search / "trial_002" / "checkpoint_000002")  # its checkpoint 3 arriving now
    prune_ray_checkpoints([a, b, c], {c: str(search / "trial_002" / "checkpoint_000003")},
                          best={str(search / "trial_000" / "checkpoint_000000")})
    left = {name: sorted(int(p.name[-6:]) for p in (search / name).iterdir()) for name in ("trial_000", "trial_001", "trial_002")}
    assert left == {"trial_000": [0, 1, 3, 4, 5, 6], "trial_001": [0, 1, 2], "trial_002": [2, 3]}


def test_a_trial_ray_paused_shows_paused_and_stays_running_for_the_budget(tmp_path):
    """Ray pauses PBT members without a callback (one that reached a perturbation epoch waits there for
    the others, off its slot): the table and the counts said '4 running' while 2 trained. The ledger
    keeps it RUNNING (the budget, resume and `status --json` count it as started); the table says PAUSED."""
    from ray.tune.experiment import Trial

    from automl.console import counts_text, format_table

    live = _live(tmp_path)
    live.state.algorithm = "pbt"
    live.state.save()
    trials = [Trial("segformer", config={"train.optim.lr": lr}, stub=True) for lr in (1e-3, 2e-3, 4e-3)]
    with bind(live):
        ledger = LedgerCallback(tmp_path)
        for trial in trials:
            ledger.on_trial_start(iteration=0, trials=trials, trial=trial)
            trial.set_status(Trial.RUNNING)
        trials[1].set_status(Trial.PAUSED)
        ledger.on_step_end(iteration=1, trials=trials)
        records = [live.state.trials[t.trial_id] for t in trials]
        assert [r.status for r in records] == [RUNNING] * 3 and [r.paused for r in records] == [False, True, False]
        assert counts_text(live.state) == "1 paused, 2 running"
        rows = {line.split()[0]: line.split()[1] for line in format_table(live.state).splitlines()[3:]}
        assert rows == {records[0].name: "RUNNING", records[1].name: "PAUSED", records[2].name: "RUNNING"}
        assert SearchState.load(tmp_path).trials[trials[1].trial_id].paused  # `automl status` from another process
        trials[1].set_status(Trial.RUNNING)  # its turn again
        ledger.on_step_end(iteration=2, trials=trials)
        assert not records[1].paused and counts_text(live.state) == "3 running"
        trials[2].set_status(Trial.PAUSED)
        ledger.on_step_end(iteration=3, trials=trials)
        ledger.on_trial_complete(iteration=4, trials=trials, trial=trials[2])
        assert records[2].status == FINISHED and not records[2].paused and counts_text(live.state) == "1 finished, 2 running"


def test_a_trials_reports_carry_the_train_loss_of_their_own_epoch(tmp_path):
    """Each epoch's report (what MLflow and the ledger keep) holds that epoch's train_loss, as the
    train action's status.json does: read at validation end it was the epoch before's (epoch 1 had
    none, and the last epoch's was lost)."""
    import json

    from automl.trial import base_config
    from automl.tune_report import TuneReportCallback
    from segformer.actions import train
    from segformer.data.synth import generate

    class Captured(TuneReportCallback):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.sent: list[dict] = []

        def _report(self, trainer, metrics, improved, source=None):  # the values, not Ray's session
            self.sent.append(dict(metrics))

    root = generate(tmp_path / "data", num_classes=2, size=32, train=4, val=2, test=2, epochs=3)
    cfg = base_config(root / "spec.yaml", ["dataset.segment.batch_size=2", "model.decode_head.decoder_params.embed_dim=32",
                                           f"train.results_dir={tmp_path / 'train'}"], tmp_path)
    captured = Captured("val_miou", "max")
    train.run(cfg, callbacks=[captured], quiet=True)
    status = [json.loads(line) for line in (tmp_path / "train" / "status.json").read_text().splitlines() if line.strip()]
    own = {r["epoch"] + 1: r["train_loss"] for r in status if r.get("train_loss") is not None}  # status.json counts from 0, as TAO's
    assert [m["epoch"] for m in captured.sent] == [1, 2, 3] and sorted(own) == [1, 2, 3]
    assert [m["train_loss"] for m in captured.sent] == pytest.approx([own[1], own[2], own[3]])
    # the report the epoch's checkpoint keeps (a resume re-sends it) holds the same values: it held the
    # epoch before's train_loss, which a resume wrote over the ledger's and logged to MLflow a second time
    import torch

    from automl.tune_report import STATE_KEY

    kept = torch.load(tmp_path / "train" / "segformer_model_latest.pth", weights_only=True)[STATE_KEY]["pending"]
    assert kept[0]["epoch"] == 3 and kept[0]["train_loss"] == pytest.approx(own[3])
