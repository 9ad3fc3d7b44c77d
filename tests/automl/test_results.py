"""results.json (`automl.results`): TAO's results contract, valid JSON whatever the ledger holds."""

from __future__ import annotations

import json
from pathlib import Path

from automl.state import FINISHED, SearchState, TrialRecord


def _strict(text: str) -> dict:
    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_objectives_are_the_searched_ones_and_non_finite_values_are_null(tmp_path: Path) -> None:
    from automl.results import write_results

    state = SearchState(results_dir=str(tmp_path), skill="segformer", algorithm="bayesian", metric="val_loss", mode="min",
                        settings={"search": {"max_trials": 3}})
    for i, (value, latency) in enumerate([(0.5, 3.0), (0.4, 5.0), (float("inf"), 1.0)]):
        record = TrialRecord(trial_id=f"id{i}", name=f"trial_{i:03d}", params={"train.optim.lr": 10.0 ** -i},
                             status=FINISHED, is_baseline=i == 0,
                             latency={"latency_ms": latency, "model_mb": 3.6, "precision": "int8"})
        state.record_result(record, {"epoch": 1, "val_loss": value})
        state.trials[record.trial_id] = record
    state.pareto = {"objectives": ["val_loss:min", "latency_ms:min"], "chosen": "trial_001",
                    "front": [{"trial": "trial_001", "val_loss": 0.4, "latency_ms": 5.0, "feasible": True, "baseline": False,
                               "params": {"train.optim.lr": 0.1}}]}
    data = _strict(write_results(state).read_text())
    assert data["best"]["rec_id"] == 1 and data["best"]["objective_values"] == {"val_loss": 0.4, "latency_ms": 5.0}
    assert data["pareto_front"] == [{"rec_id": 1, "trial": "trial_001", "objective_values": {"val_loss": 0.4, "latency_ms": 5.0}}]
    assert [h["metric"] for h in data["history"]] == [0.5, 0.4, None]  # inf: null, not Infinity
    assert data["progress"]["total"] == 3 and data["final_evaluation"]["status"] == "pending"
    assert data["progress"]["completed"] == 3
    # killed with the driver: not completed while `automl resume` can continue it
    state.trials["id2"].status = "KILLED"
    assert _strict(write_results(state).read_text())["progress"]["completed"] == 2
    state.status = FINISHED  # killed by the search's end (a time budget): done
    assert _strict(write_results(state).read_text())["progress"]["completed"] == 3


def test_a_results_file_that_cannot_be_written_does_not_cost_the_ledger(tmp_path: Path) -> None:
    state = SearchState(results_dir=str(tmp_path), skill="segformer", algorithm="bayesian", metric="val_miou", mode="max",
                        settings={})
    (tmp_path / "results.json").mkdir()  # in the way
    state.save()
    assert SearchState.load(tmp_path).algorithm == "bayesian"


def test_the_final_evaluation_is_the_promoted_models_own_score_and_an_ended_search_is_not_pending(tmp_path: Path) -> None:
    """metric_value is the model best/ holds (MLflow's test_miou_promoted), not the mean over its
    configuration's two seeds (0.06 apart on a tiny search); a search that ended without a final
    evaluation says why instead of 'pending', on which a TAO-style poller waits for ever."""
    from automl.results import tao_results

    state = SearchState(results_dir=str(tmp_path), skill="segformer", algorithm="bayesian", metric="val_miou", mode="max",
                        settings={})
    state.final_evaluation = {"split": "test", "metric": "miou",
                              "promoted": {"trials": ["trial_004", "trial_001"], "test_miou": [0.375, 0.502], "mean": 0.4385},
                              "baseline": {"trials": ["trial_000", "trial_005"], "test_miou": [0.313, 0.19], "mean": 0.2515},
                              "test_miou": {"trial_004": 0.375, "trial_001": 0.502, "trial_000": 0.313, "trial_005": 0.19}}
    final = tao_results(state)["final_evaluation"]
    assert (final["status"], final["metric_value"], final["baseline_metric_value"]) == ("done", 0.375, 0.313)
    assert (final["metric_value_mean"], final["baseline_metric_value_mean"]) == (0.4385, 0.2515)
    assert final["trials"] == ["trial_004", "trial_001"] and final["baseline_trials"] == ["trial_000", "trial_005"]
    state.final_evaluation = None
    assert tao_results(state)["final_evaluation"]["status"] == "pending"  # still searching
    state.status = "FAILED"  # every trial failed
    assert tao_results(state)["final_evaluation"] == {"status": "skipped", "reason": "no trial has a result to promote",
                                                      "metric_value": None}
    state.status = FINISHED  # --skip-evaluate
    assert tao_results(state)["final_evaluation"]["status"] == "skipped"
