"""What the MLflow UI shows of a search (automl.mlflow_view), against a real sqlite MLflow store.
The browser side (the view as rendered) is test_driver's test_mlflow_ui_answers_which_trial_is_best..."""

from __future__ import annotations

import json

from automl.mlflow_view import NOTE_TAG, SHARE_TAG_PREFIX, TRIAL_TAG, parent_note, run_name, view_key, write_view
from automl.state import FINISHED, SearchState, TrialRecord
from automl.tracking import Tracker


def _state(tmp_path) -> SearchState:
    state = SearchState(results_dir=str(tmp_path), skill="segformer", algorithm="bayesian", metric="val_miou",
                        mode="max", settings={})
    trials = [TrialRecord("a", "trial_000", {"train.optim.lr": 0.001, "train.optim.weight_decay": 0.01}, is_baseline=True),
              TrialRecord("b", "trial_001", {"train.optim.lr": 0.00031415, "train.optim.weight_decay": 0.0002}),
              TrialRecord("c", "trial_002", {"train.optim.lr": 0.00031415, "train.optim.weight_decay": 0.0002,
                                             "train.seed": 2}, recheck_of="trial_001")]
    for trial, value in zip(trials, (0.61, 0.65, 0.64)):
        trial.status, trial.best_value, trial.best_epoch = FINISHED, value, 3
        state.trials[trial.trial_id] = trial
    return state


def test_child_runs_are_named_with_their_key_parameters(tmp_path):
    state = _state(tmp_path)
    names = [run_name(t) for t in state.trials.values()]
    assert names == ["trial_000 (spec) lr=0.001 wd=0.01", "trial_001 lr=0.000314 wd=0.0002",
                     "trial_002 re-check of trial_001 seed=2"]
    wide = state.by_name("trial_001")
    wide.params = {"dataset.segment.augmentation.random_color.enable": True, "model.backbone.type": "mit_b1", **wide.params}
    assert run_name(wide) == "trial_001 random_color=True backbone=mit_b1 lr=0.000314"


def test_the_search_view_lists_its_trials_best_first_and_the_parent_says_which_is_best(tmp_path):
    state = _state(tmp_path)
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path, "segformer")
    state.mlflow_parent_run_id = tracker.start_parent("search", {}, {})
    state.mlflow_experiment_id = tracker.experiment_id()
    child = tracker.start_child(state.mlflow_parent_run_id, state.by_name("trial_001"), {})
    assert tracker.client.get_run(child).data.tags[TRIAL_TAG] == "trial_001"
    assert tracker.client.get_run(child).info.run_name == "trial_001 lr=0.000314 wd=0.0002"

    key = write_view(tracker, state, ["train.optim.lr", "train.optim.weight_decay"], ["latency_ms"])
    assert key == view_key(state.mlflow_parent_run_id)
    view = json.loads(tracker.client.get_experiment(state.mlflow_experiment_id).tags[SHARE_TAG_PREFIX + key])
    # the UI's search filter finds exactly the search's children
    found = tracker.client.search_runs([state.mlflow_experiment_id], filter_string=view["searchFilter"])
    assert [r.info.run_id for r in found] == [child]
    assert (view["orderByKey"], view["orderByAsc"]) == ("metrics.`best_val_miou`", False)
    assert view["selectedColumns"][:3] == ["metrics.`best_val_miou`", "metrics.`val_miou`", "metrics.`latency_ms`"]
    scatter = next(c for c in view["compareRunCharts"] if c["type"] == "SCATTER")
    assert (scatter["xaxis"]["key"], scatter["yaxis"]["key"]) == ("train.optim.lr", "best_val_miou")

    state.best_trial = "trial_001"
    state.recheck = {"reason": "trial_001 gained +0.030 on the fresh seed, above the noise 0.010"}
    note = parent_note(state)
    assert "**Best: trial_001**, val_miou 0.6500 at epoch 3 (the spec's own values, trial_000: 0.6100)" in note
    assert "Re-check: trial_001 gained" in note and f"viewStateShareKey={key}" in note
    assert tracker.client.get_run(state.mlflow_parent_run_id).data.tags[NOTE_TAG].startswith("**AutoML search**")
