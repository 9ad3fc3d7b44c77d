"""The ledger's journal: trial events appended, replayed on load, compacted, safe against a cut line."""

from __future__ import annotations

import shutil
from pathlib import Path

from automl.state import COMPACT_MIN, FAILED, FINISHED, RUNNING, SearchState, TrialRecord


def _state(root: Path) -> SearchState:
    state = SearchState(results_dir=str(root), skill="segformer", algorithm="random", metric="val_miou", mode="max",
                        settings={})
    state.save()
    return state


def _trial(state: SearchState, i: int) -> TrialRecord:
    record = TrialRecord(trial_id=f"id{i:05d}", name=f"trial_{i:03d}", params={"train.optim.lr": 1e-4 * (i + 1)})
    state.trials[record.trial_id] = record
    return record


def _report(state: SearchState, record: TrialRecord, epoch: int) -> None:
    state.record_result(record, {"epoch": epoch, "val_miou": 0.1 * epoch + 0.001 * int(record.trial_id[2:])})
    state.save_trial(record)


def test_trial_events_are_appended_and_load_replays_them(tmp_path):
    state = _state(tmp_path)
    whole = state.path.read_bytes()
    records = [_trial(state, i) for i in range(3)]
    for epoch in (1, 2, 3):
        for record in records:
            _report(state, record, epoch)
    assert state.path.read_bytes() == whole  # nine events, no rewrite of the whole ledger
    assert len(state.journal_path.read_text().splitlines()) == 9
    loaded = SearchState.load(tmp_path)
    assert {t.name: (t.epochs_trained, t.best_epoch) for t in loaded.trials.values()} == {
        "trial_000": (3, 3), "trial_001": (3, 3), "trial_002": (3, 3)}
    records[1].status = FINISHED
    state.save()  # a whole write takes the journal in and empties it
    assert not state.journal_path.exists()
    assert SearchState.load(tmp_path).trials["id00001"].status == FINISHED


def test_a_line_cut_by_a_kill_is_skipped_and_the_next_append_starts_a_new_line(tmp_path):
    state = _state(tmp_path)
    record = _trial(state, 0)
    for epoch in (1, 2, 3):
        _report(state, record, epoch)
    journal = state.journal_path
    journal.write_bytes(journal.read_bytes()[:-25])  # the driver died writing epoch 3
    resumed = SearchState.load(tmp_path)
    assert resumed.trials["id00000"].epochs_trained == 2  # the event before the cut one is kept
    _report(resumed, resumed.trials["id00000"], 3)
    assert SearchState.load(tmp_path).trials["id00000"].epochs_trained == 3


def test_the_journal_is_compacted_and_entries_a_whole_write_holds_are_not_replayed(tmp_path):
    state = _state(tmp_path)
    records = [_trial(state, i) for i in range(4)]
    for epoch in range(1, 41):
        for record in records:
            _report(state, record, epoch)
    # 160 events on 4 trials: the journal never holds more than the compaction threshold.
    assert len(state.journal_path.read_text().splitlines()) < max(COMPACT_MIN, len(records))
    assert {t.epochs_trained for t in SearchState.load(tmp_path).trials.values()} == {40}
    # A driver killed between a whole write and emptying the journal: the journal's entries are older
    # than the file and must not take a trial back.
    stale = tmp_path / "stale.journal"
    shutil.copy(state.journal_path, stale)
    for record in records:
        state.record_result(record, {"epoch": 41, "val_miou": 0.9})
    state.save()
    shutil.copy(stale, state.journal_path)
    assert {t.epochs_trained for t in SearchState.load(tmp_path).trials.values()} == {41}


def test_an_event_writes_one_trial_whatever_the_number_of_trials(tmp_path):
    appended = []
    for n in (10, 1000):
        state = _state(tmp_path / str(n))
        for i in range(n):
            _trial(state, i)
        state.save()
        record = state.trials["id00005"]
        _report(state, record, 1)
        appended.append(state.journal_path.stat().st_size)
    assert abs(appended[0] - appended[1]) <= 8  # the same record; only the event's time stamp may differ in length


def test_status_of_a_big_search_shows_the_running_trials_and_the_best(tmp_path, capsys):
    from automl.cli import main
    from automl.state import RUNNING

    state = _state(tmp_path)
    for i in range(5000):
        record = _trial(state, i)
        record.status = RUNNING if i in (17, 4321) else FINISHED
        state.record_result(record, {"epoch": 1, "val_miou": (i * 7919 % 5000) / 5000})
    state.save()
    best = state.ranked()[0].name
    assert main(["status", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = [line.split()[0] for line in out.splitlines() if line.startswith("trial_")]
    assert len(rows) == 40 and {"trial_017", "trial_4321", best} <= set(rows)
    assert "4960 more trials" in out and "--all" in out
    assert main(["status", str(tmp_path), "--all"]) == 0
    assert sum(line.startswith("trial_") for line in capsys.readouterr().out.splitlines()) == 5000


def test_a_search_whose_trials_all_failed_says_each_error_once(tmp_path):
    """The errors were listed under the final table and again as 'failed trial_00N:' lines in the summary,
    each starting with the bullet of the message's last item ('- ...')."""
    from automl.console import format_table, summary

    state = _state(tmp_path)
    for i in range(3):
        record = _trial(state, i)
        record.status, record.error = FAILED, f"SearchError: the data is not usable:\n- val_{i}.jpg cannot be read"
    shown = format_table(state, limit=20, show_errors=True) + "\n" + summary(state)
    assert [line.strip() for line in shown.splitlines() if "cannot be read" in line] == [
        f"trial_{i:03d}: val_{i}.jpg cannot be read" for i in range(3)]
    assert f"the errors are above the summary (every one: automl status {tmp_path} --all)" in shown


def test_the_table_says_when_the_trials_are_done_and_the_driver_promotes(tmp_path):
    """After the last trial the driver promotes (evaluate, export, quantize, the test split: minutes);
    `automl status --watch` showed the search as running with every trial finished and no word why."""
    from automl.console import format_table

    state = _state(tmp_path)
    state.status = RUNNING
    first, second = _trial(state, 0), _trial(state, 1)
    first.status, second.status = FINISHED, RUNNING
    state.best_trial = "trial_000"  # (not set while trials run; here to show the running trial decides)
    assert "promoting" not in format_table(state).splitlines()[0]
    second.status = FINISHED
    assert format_table(state).splitlines()[0].endswith("; trials done; promoting trial_000")
    state.settings = {"promotion": {"promote": False}}  # --no-promote: only the report is left
    assert format_table(state).splitlines()[0].endswith("; trials done; writing the report")
    state.status = FINISHED
    assert "promoting" not in format_table(state).splitlines()[0]


def test_a_summary_says_when_no_recheck_backs_the_promoted_lead(tmp_path):
    """A budget of 2 trainings has no room for the re-check: the summary says the lead is one training's;
    when the baseline itself is best there is nothing to say."""
    from automl.console import summary

    state = _state(tmp_path)
    baseline, other = _trial(state, 0), _trial(state, 1)
    baseline.is_baseline = True
    state.budget = {"trainings": 2.0, "spec_epochs": 1, "trial_epochs": 1, "recheck": 0}
    for record in (baseline, other):
        record.status = FINISHED
        _report(state, record, 1)  # trial_001 scores 0.001 above the baseline
    text = summary(state)
    assert "trial_001: val_miou=" in text and "(epoch 1 of 1)" in text  # counted from 1, out of the epochs it trained
    assert ("re-check none: a budget of 2 epochs has no room for one (it needs 4 epochs: 4 trainings of a trial's 1 epoch, "
            "two of them to re-check the leader); "
            "trial_001's lead over the baseline comes from one training of each") in text
    state.budget["trainings"] = 10.0  # room enough: the re-check was not run
    assert "re-check none: not run in this search (--no-recheck, or a grid)" in summary(state)
    state.budget = None  # sized by a trial count: the console summary said nothing of it (report.md did)
    assert "re-check none: a search without an epoch budget (--max-trials, automl_max_recommendations) runs none" in summary(state)
    state.algorithm = "pbt"  # it advised --budget, which PBT does not take
    assert "re-check none: PBT runs none (its population is sized by automl_population_size" in summary(state)
    state.algorithm = "random"
    # a budget with its re-check, but the baseline over the latency limit: nothing to compare with (it said nothing)
    state.budget = {"trainings": 10.0, "spec_epochs": 1, "trial_epochs": 1, "recheck": 2}
    baseline.infeasible, state.settings = True, {"search": {"max_latency_ms": 5.0}}
    assert "re-check none: the baseline (the spec's own model) is over the latency limit" in summary(state)
    other.best_value = baseline.best_value - 0.05  # the best feasible trial trails the (infeasible) baseline: no "lead"
    assert "lead over the baseline" not in summary(state) and "re-check none: the baseline" in summary(state)
    other.best_value = baseline.best_value + 0.001
    from automl.report import _comparison

    text = _comparison(state, {"baseline_vs_best": "x.png"})[1].text
    assert "the baseline (the spec's own model) is over the latency limit" in text and "room for re-checks" not in text
    baseline.infeasible = False
    state.budget = {"trainings": 10.0, "spec_epochs": 1, "trial_epochs": 1, "recheck": 0}
    other.best_value = 0.0  # the baseline leads: nothing to re-check
    assert "re-check none" not in summary(state)


def test_a_promoted_second_seed_of_the_baseline_is_not_shown_as_a_gain(tmp_path):
    """When the re-check keeps the spec's configuration and its re-check training scored higher, that
    training is promoted: the summary names it as the baseline's configuration on another seed, and its
    lead over the first training as seed noise (it read "best +0.01" over "the baseline itself")."""
    from automl.console import summary

    state = _state(tmp_path)
    baseline, again = _trial(state, 0), _trial(state, 3)
    baseline.is_baseline, again.recheck_of, again.params = True, baseline.name, dict(baseline.params)
    for record in (baseline, again):
        record.status = FINISHED
        _report(state, record, 1)
    state.best_trial = again.name
    text = summary(state)
    assert "trial_003: val_miou=0.1030 (epoch 1 of 1); the baseline's configuration, trained on the re-check seed" in text
    assert "(trial_003 +0.0030: the same configuration on another seed, seed noise, not a gain)" in text
    assert "best +" not in text
    from automl.report import _summary, to_markdown

    report = to_markdown(_summary(state))  # the report said "improvement +0.0030"
    assert "(trial_003 +0.0030: the same configuration on another seed, seed noise, not a gain)" in report, report
    assert "improvement" not in report


def test_a_search_tracked_on_a_server_points_at_that_server(tmp_path):
    """`automl ui DIR` opens the search's own store; a search tracked with --tracking-uri has none
    there, and the summary sent the user to a command that refused."""
    from automl.console import summary

    state = _state(tmp_path)
    assert f"MLflow UI  automl ui {state.results_dir}" in summary(state)
    state.mlflow_tracking_uri, state.mlflow_experiment_id, state.mlflow_parent_run_id = "http://127.0.0.1:5000/", "3", "ab12"
    assert "MLflow UI  http://127.0.0.1:5000/#/experiments/3/runs/ab12" in summary(state)
