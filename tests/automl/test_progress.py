"""The live view (`automl.progress`) and the table it draws (`automl.console`), on a ledger made by hand:
redrawn in place on a terminal, a block every period elsewhere, nodes told apart by id."""

from __future__ import annotations

import io
import re
import time

from automl.console import format_table, node_labels
from automl.progress import Progress
from automl.state import FINISHED, RUNNING, SearchState, TrialRecord


def _state(tmp_path, n: int = 3, running: int = 1) -> SearchState:
    state = SearchState(results_dir=str(tmp_path), skill="segformer", algorithm="bayesian", metric="val_miou", mode="max",
                        settings={"search": {"max_trials": n}}, budget={"trainings": 2, "spec_epochs": 5})
    for i in range(n):
        t = TrialRecord(trial_id=f"t{i}", name=f"trial_{i:03d}", params={"train.optim.lr": 10 ** -(3 + i)},
                        status=RUNNING if i >= n - running else FINISHED, is_baseline=i == 0, node_ip="10.0.0.1")
        t.history = [{"epoch": e + 1, "val_miou": 0.4 + 0.01 * i + 0.01 * e} for e in range(3)]
        t.best_value, t.best_epoch = t.history[-1]["val_miou"], 3
        state.trials[t.trial_id] = t
    return state


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_redraws_the_table_in_place_under_the_messages(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # the lines are cut at the terminal's width (80 under pytest-xdist)
    monkeypatch.setenv("LINES", "40")
    screen = Terminal()
    view = Progress(lambda text: screen.write(text + "\n"), stream=screen)
    assert view.tty
    view.attach(_state(tmp_path))
    view.tick()
    first = screen.getvalue()
    drawn = first.count("\n")
    assert "trial_002" in first and "running" in first and "9 of 10 budget epochs" in first
    assert "best trial_002 0.44 (baseline 0.42)" in first
    view.echo("automl: a message")
    after = screen.getvalue()[len(first):]
    # the table is erased (cursor up over exactly its lines, clear to the end), the message printed, the table drawn again
    assert after.startswith(f"\x1b[{drawn}F\x1b[J" + "automl: a message\n"), repr(after[:60])
    assert after.count("trial_002") == first.count("trial_002")  # drawn once more, not twice
    view.__exit__(None, None, None)
    assert screen.getvalue().endswith("\x1b[J")  # nothing of the table left behind for the summary


def test_off_a_terminal_a_block_every_period_and_a_line_outside_the_search(tmp_path):
    out: list[str] = []
    state = _state(tmp_path, n=20, running=2)
    with Progress(out.append, stream=io.StringIO(), every_s=0.3) as view:
        view.attach(state)
        for i in range(15):  # other lines, more often than the period, do not hold the block back
            view.echo(f"automl: budget line {i}")
            time.sleep(0.1)
        for t in state.trials.values():
            t.status = FINISHED
        view.echo("automl: promoting trial_019")
        time.sleep(1.5)
    blocks = [o for o in out if o.startswith("automl ") and "\ntrial " in o]
    assert len(blocks) >= 2, out
    assert re.match(r"automl \d\d:\d\d:\d\d \(\d+ s in\): 18 finished, 2 running; 60 of 10 budget epochs", blocks[0])
    rows = blocks[0].splitlines()[3:]
    assert len(rows) == 16 and rows[-1].startswith("... and 5 more trials"), rows  # 15 rows: the running two first
    assert any("trial_018" in r for r in rows) and any("trial_019" in r for r in rows)
    still = [o for o in out if o.startswith("automl: still working")]
    assert still and "last: automl: promoting trial_019" in still[-1], out


def test_nodes_sharing_an_ip_are_told_apart_by_node_id(tmp_path):
    state = _state(tmp_path)
    trials = list(state.trials.values())
    assert set(node_labels(trials).values()) == {"10.0.0.1"}
    trials[0].node_id, trials[1].node_id, trials[2].node_id = "aaaaaaaa1111", "bbbbbbbb2222", "bbbbbbbb2222"
    labels = node_labels(trials)
    assert labels == {"t0": "10.0.0.1 (aaaaaaaa)", "t1": "10.0.0.1 (bbbbbbbb)", "t2": "10.0.0.1 (bbbbbbbb)"}
    assert "10.0.0.1 (aaaaaaaa)" in format_table(state)
    # a resumed search: its new local Ray is a new node id on the same machine, after the first had gone
    for t, (start, end) in zip(trials, ((100.0, 200.0), (300.0, 400.0), (350.0, None))):
        t.started_at, t.ended_at = start, end
    assert set(node_labels(trials).values()) == {"10.0.0.1"}
    trials[2].started_at = 150.0  # cut on the first node by the kill, restarted on the second at 350
    trials[2].run_started_at = 350.0
    assert set(node_labels(trials).values()) == {"10.0.0.1"}
    trials[0].ended_at = 320.0  # two nodes at one address, both running trials at once: told apart
    assert node_labels(trials)["t0"] == "10.0.0.1 (aaaaaaaa)"


def test_a_pbt_search_has_an_epoch_total_and_a_time_estimate(tmp_path, monkeypatch):
    """PBT runs without a budget or a trial count, but every member trains every epoch: the total is
    population x epochs, and the time left follows the epochs trained (there was no estimate)."""
    from automl.progress import Pace

    state = _state(tmp_path, n=2, running=2)
    state.algorithm, state.budget = "pbt", None
    state.settings = {"search": {"population_size": 2, "max_epochs": 5, "epoch_multiplier": 1}}
    clock = [1000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    pace = Pace()
    assert pace.left(state) is None  # the first look sets the start: 6 of 10 epochs trained
    for t in state.trials.values():
        t.history.append({"epoch": 4, "val_miou": 0.5})
    clock[0] += 60.0  # 2 epochs a minute: 2 left
    assert pace.left(state) == 60.0


def test_the_table_names_each_parameter_by_its_shortest_unique_tail(tmp_path):
    """Parameters sharing a last name are told apart by as little as it takes ("random_flip.enable"),
    not by the whole dotted key, which made a 2-trial table 600 characters wide."""
    from automl.console import _short_name, trial_rows

    keys = ["dataset.segment.augmentation.random_color.enable", "dataset.segment.augmentation.random_flip.enable",
            "model.backbone.freeze_backbone", "train.optim.lr", "a.lr.x", "b.lr.x"]
    assert [_short_name(k, keys) for k in keys] == ["random_color.enable", "random_flip.enable", "freeze_backbone",
                                                    "lr", "a.lr.x", "b.lr.x"]
    # alone among the keys, "enable" still says nothing: of what? (a grid's table headed a column "enable")
    assert _short_name(keys[1], keys[1:3]) == "random_flip.enable"
    state = _state(tmp_path)
    state.trials["t0"].params["dataset.segment.augmentation.random_flip.enable"] = True
    state.trials["t1"].params["dataset.segment.augmentation.random_color.enable"] = False
    header, _ = trial_rows(state)
    assert header[-3:] == ["random_color.enable", "random_flip.enable", "lr"]


def test_a_trial_cut_by_ctrl_c_is_not_listed_as_an_error_and_watch_writes_no_screen_codes_to_a_file(tmp_path):
    """After a Ctrl-C the cut trial (KILLED, resumable) was listed under "errors:" as if it failed;
    `automl status --watch > file` wrote the terminal's clear-screen codes into the file."""
    from automl.console import print_status
    from automl.state import FAILED, KILLED

    state = _state(tmp_path, n=3, running=0)
    state.trials["t1"].status, state.trials["t1"].error = FAILED, "Traceback ...\nRuntimeError: out of memory"
    state.trials["t2"].status = KILLED
    state.trials["t2"].error = "interrupted: the search was stopped (Ctrl-C/SIGTERM) while this trial ran"
    text = format_table(state)
    errors, cut = text.split("errors:\n")[1].split("cut (not failed):\n")
    assert "trial_001: RuntimeError: out of memory" in errors and "trial_002" not in errors
    assert "trial_002: interrupted: the search was stopped" in cut
    state.status = "FINISHED"
    state.save()
    said: list[str] = []
    assert print_status(tmp_path, watch=0.01, echo=said.append) == 0
    assert not any("\x1b" in line for line in said) and re.fullmatch(r"\d\d:\d\d:\d\d", said[0])
