"""CPU lending (automl.lending): the driver's plan, the files it writes, and the trial side on a
real Lightning fit (threads followed, recorded by StepTiming, given back at the end)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from automl.lending import LENT_THREADS_FILE, CpuLending, clear, read_threads, write_threads
from automl.state import FAILED, FINISHED, PENDING, RUNNING, SearchState, TrialRecord


def _state(tmp_path: Path, statuses: dict[str, str]) -> SearchState:
    state = SearchState(results_dir=str(tmp_path), skill="segformer", algorithm="random", metric="val_miou",
                        mode="max", settings={})
    for i, (name, status) in enumerate(statuses.items()):
        state.trials[f"id{i}"] = TrialRecord(trial_id=f"id{i}", name=name, params={}, status=status)
    return state


def _files(tmp_path: Path) -> dict[str, int | None]:
    return {p.parent.name: read_threads(p) for p in sorted(tmp_path.glob(f"trial_*/{LENT_THREADS_FILE}"))}


def test_tail_lends_idle_slots_and_takes_them_back(tmp_path):
    lending = CpuLending(tmp_path, expected_trials=3, slots=2)
    # Not the tail yet: a trial is still to start (PENDING), or not all trials exist yet.
    lending.update(_state(tmp_path, {"trial_000": FINISHED, "trial_001": RUNNING, "trial_002": PENDING}))
    assert _files(tmp_path) == {} and not lending.lending
    lending.update(_state(tmp_path, {"trial_000": FINISHED, "trial_001": RUNNING}))
    assert _files(tmp_path) == {}
    # Every trial started, one slot idle: the running trial gets its CPU.
    lending.update(_state(tmp_path, {"trial_000": FINISHED, "trial_001": RUNNING, "trial_002": RUNNING}))
    assert _files(tmp_path) == {}  # both slots busy
    lending.update(_state(tmp_path, {"trial_000": FINISHED, "trial_001": FINISHED, "trial_002": RUNNING}))
    assert _files(tmp_path) == {"trial_002": 2} and lending.lending
    # It ends: its file goes (a retry under the same name must start with its own threads).
    lending.update(_state(tmp_path, {"trial_000": FINISHED, "trial_001": FINISHED, "trial_002": FINISHED}))
    assert _files(tmp_path) == {} and not lending.lending and lending.lent_to == {"trial_002"}


def test_a_trial_being_retried_keeps_its_slot_and_one_failed_for_good_frees_it(tmp_path):
    """Ray reports a crashed trial it will retry as a recovery, not an error: the ledger keeps it
    RUNNING, so its slot is not lent. FAILED (retries used up) frees the slot like any end."""
    lending = CpuLending(tmp_path, expected_trials=3, slots=2)
    lending.update(_state(tmp_path, {"trial_000": FINISHED, "trial_001": RUNNING, "trial_002": RUNNING}))
    assert _files(tmp_path) == {}
    lending.update(_state(tmp_path, {"trial_000": FINISHED, "trial_001": FAILED, "trial_002": RUNNING}))
    assert _files(tmp_path) == {"trial_002": 2}


def test_idle_cpus_are_shared_and_the_promotion_keeps_its_own(tmp_path):
    held = [1]
    lending = CpuLending(tmp_path, expected_trials=5, slots=4, promotion_threads=lambda: held[0])
    statuses = {"trial_000": FINISHED, "trial_001": FINISHED, "trial_002": RUNNING, "trial_003": FINISHED,
                "trial_004": RUNNING}
    lending.update(_state(tmp_path, statuses))
    # 2 idle slots, 1 held by the promotion; a trial at its own threads gets no file
    assert _files(tmp_path) == {"trial_002": 2}
    held[0] = 0
    lending.refresh()  # the promotion ended
    assert _files(tmp_path) == {"trial_002": 2, "trial_004": 2}
    written = {p: p.stat().st_mtime_ns for p in tmp_path.glob(f"trial_*/{LENT_THREADS_FILE}")}
    lending.update(_state(tmp_path, statuses))  # nothing changed: nothing rewritten
    assert {p: p.stat().st_mtime_ns for p in written} == written


def test_two_cpus_per_trial_lend_in_whole_cpus(tmp_path):
    lending = CpuLending(tmp_path, expected_trials=2, slots=2, cpus_per_trial=2)
    lending.update(_state(tmp_path, {"trial_000": FINISHED, "trial_001": RUNNING}))
    assert lending.base == 2 and _files(tmp_path) == {"trial_001": 4}


def test_fractional_cpus_never_oversubscribe(tmp_path):
    """0.5 CPU per trial, 4 slots on 2 CPUs: each running trial still runs one thread, so two
    running trials already use both CPUs and nothing is lent; one running trial gets the other."""
    lending = CpuLending(tmp_path, expected_trials=4, slots=4, cpus_per_trial=0.5)
    two = {"trial_000": FINISHED, "trial_001": FINISHED, "trial_002": RUNNING, "trial_003": RUNNING}
    lending.update(_state(tmp_path, two))
    assert lending.base == 1 and _files(tmp_path) == {}
    lending.update(_state(tmp_path, {**two, "trial_003": FINISHED}))
    assert _files(tmp_path) == {"trial_002": 2}


def test_lending_file_reading_is_strict_and_clear_removes_old_files(tmp_path):
    path = tmp_path / "trial_000" / LENT_THREADS_FILE
    assert read_threads(path) is None
    write_threads(path, 3)
    assert read_threads(path) == 3 and not list(path.parent.glob(".*tmp"))
    for text in ("{", "[]", '{"threads": 0}', '{"threads": true}', '{"threads": 1.5}', '{"threads": "2"}'):
        path.write_text(text)
        assert read_threads(path) is None, text
    clear(tmp_path)
    assert not path.exists()


class _Toy(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.threads_seen: list[int] = []

    def training_step(self, batch, batch_idx):
        self.threads_seen.append(torch.get_num_threads())
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def validation_step(self, batch, batch_idx):
        self.log("val_miou", 0.5)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _LendAfterFirstEpoch(L.Callback):
    """Plays the driver: lends a second thread once the first epoch has ended."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == 0:
            write_threads(self.path, 2)


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_trial_follows_the_lent_threads_and_records_them(tmp_path, one_thread):
    from automl.tune_report import LentThreads
    from segformer.engine.timing import StepTiming, read_timing

    lent = tmp_path / LENT_THREADS_FILE
    timing = tmp_path / "timing.json"
    model = _Toy()
    data = DataLoader(TensorDataset(torch.randn(8, 2), torch.randn(8, 1)), batch_size=4)
    trainer = L.Trainer(max_epochs=2, callbacks=[StepTiming(timing), _LendAfterFirstEpoch(lent), LentThreads(lent)],
                        logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(model, train_dataloaders=data, val_dataloaders=data)
    assert model.threads_seen == [1, 1, 2, 2]  # read at the epoch start after the file appeared
    assert torch.get_num_threads() == 1  # given back when the fit ended
    run = read_timing(timing)[0]
    assert run["threads"] == 1
    first, second = run["epochs"]
    assert first["train_step_thread_s"] == pytest.approx(first["train_step_s"])
    assert second["train_step_thread_s"] == pytest.approx(2 * second["train_step_s"])
    assert second["val_step_thread_s"] == pytest.approx(2 * second["val_step_s"])
    json.dumps(run)


class _StopAtSecondEpoch(L.Callback):
    """Plays Ray stopping a trial: `SystemExit` from inside the epoch (Ray's report does that)."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            raise SystemExit(0)


def test_threads_are_given_back_when_the_trial_is_stopped(tmp_path, one_thread):
    """Lightning calls on_exception, not teardown, when a fit ends by an exception; torch keeps
    the thread count as the default of threads started later (the next trial's, in a reused Ray
    actor), so it must be reset there too."""
    import threading

    from automl.tune_report import LentThreads

    lent = tmp_path / LENT_THREADS_FILE
    write_threads(lent, 2)
    data = DataLoader(TensorDataset(torch.randn(8, 2), torch.randn(8, 1)), batch_size=4)
    trainer = L.Trainer(max_epochs=3, callbacks=[LentThreads(lent), _StopAtSecondEpoch()], logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    model = _Toy()
    with pytest.raises(SystemExit):
        trainer.fit(model, train_dataloaders=data, val_dataloaders=data)
    assert model.threads_seen == [2, 2] and torch.get_num_threads() == 1
    seen: list[int] = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert seen == [1]


def test_lending_applies_to_cpu_trials_on_one_node_only():
    from automl.driver import SearchOptions, lending_applies

    # Without Ray up nothing is known about the nodes: no lending.
    assert not lending_applies(SearchOptions(results_dir="unused", max_concurrent=2))
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        def applies(**kw):
            return lending_applies(SearchOptions(**{"results_dir": "unused", "max_concurrent": 2, **kw}))

        assert applies()
        assert not applies(lend_cpus=False)
        assert not applies(gpus_per_trial=0.5)
        assert not applies(max_concurrent=1)
        assert not applies(algorithm="pbt")  # its exploits must not depend on timing
        assert not applies(address="127.0.0.1:6379")  # a cluster that other jobs may share
        assert not applies(cpus_per_trial=2)  # 2 CPUs fit one trial of 2: never an idle slot beside it
    finally:
        ray.shutdown()
