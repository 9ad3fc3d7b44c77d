"""Every search algorithm run for real on a tiny synthetic dataset (32 px, 3 classes, 8 images),
plus failed trials and the failure limit. One local Ray (2 CPUs) is shared by the module: the
driver uses a Ray that is already running and leaves it up, which is what a notebook does too."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

BASE_LR = 0.001  # the synthetic spec's own train.optim.lr (the baseline)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from segformer.data.synth import generate

    root = generate(tmp_path_factory.mktemp("synth") / "data", num_classes=3, size=32, train=8, val=4, test=4)
    # A second validation split with one corrupt JPEG: a trial pointed at it fails for real, every time.
    for kind in ("images", "masks"):
        shutil.copytree(root / kind / "val", root / kind / "val_bad")
    bad = sorted((root / "images" / "val_bad").iterdir())[0]
    bad.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg " * 4)
    return root / "spec.yaml"


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def _options(results: Path, spec: Path, **kw):
    from automl.driver import SearchOptions

    base = dict(results_dir=str(results), spec=str(spec), skill="segformer", max_trials=3, max_epochs=2,
                max_concurrent=1, only=["train.optim.lr", "model.backbone.freeze_backbone"], promote=False,
                overrides=["dataset.segment.batch_size=4", "model.decode_head.decoder_params.embed_dim=32"], grace_period=1, reduction_factor=2)
    base.update(kw)
    return SearchOptions(**base)


def _children(state):
    from mlflow import MlflowClient

    client = MlflowClient(state.mlflow_tracking_uri)
    runs = client.search_runs([state.mlflow_experiment_id],
                              filter_string=f"tags.`mlflow.parentRunId` = '{state.mlflow_parent_run_id}'")
    return {r.info.run_name: r for r in runs}


def _check_common(state, max_epochs: int) -> None:
    """Baseline first, ranking by best epoch, MLflow children match the ledger."""
    trials = sorted(state.trials.values(), key=lambda t: t.name)
    assert [t.name for t in trials] == [f"trial_{i:03d}" for i in range(len(trials))]
    assert trials[0].is_baseline and not any(t.is_baseline for t in trials[1:])
    runs = _children(state)
    started_with = runs["trial_000"].data.params  # as launched (PBT may change the ledger's params later)
    assert float(started_with["train.optim.lr"]) == pytest.approx(BASE_LR)
    assert started_with["model.backbone.freeze_backbone"] == "false"
    ranked = state.ranked()
    assert ranked and [t.best_value for t in ranked] == sorted((t.best_value for t in ranked), reverse=True)
    for t in trials:
        if t.history:
            assert t.best_value == pytest.approx(max(h["val_miou"] for h in t.history))  # best epoch, not last
    assert sorted(runs) == [t.name for t in trials]
    for t in trials:
        run = runs[t.name]
        if t.status == "STOPPED":  # early-stopped: not failed; finished in MLflow with a tag
            assert len({h["epoch"] for h in t.history}) < max_epochs
            assert run.info.status == "FINISHED" and run.data.tags["automl.stopped_early"] == "true"
        elif t.status == "FINISHED":
            assert run.info.status == "FINISHED" and run.data.tags["automl.stopped_early"] == "false"
        else:
            raise AssertionError(f"{t.name} ended {t.status}: {t.error}")


@pytest.mark.parametrize("algorithm", ["random", "asha", "hyperband", "bohb"])
def test_algorithm_runs(algorithm, dataset, tmp_path, ray_session):
    from automl import driver

    trials, epochs = (4, 3) if algorithm == "asha" else (3, 2)
    outcome = driver.run(_options(tmp_path / algorithm, dataset, algorithm=algorithm, max_trials=trials,
                                  max_epochs=epochs), echo=lambda _: None)
    state = outcome.state
    assert len(state.trials) == trials
    _check_common(state, max_epochs=epochs)
    if algorithm == "asha":  # 4 trials, eta 2, grace 1 epoch: the rung cuts the worse half
        assert any(t.status == "STOPPED" for t in state.trials.values()), {t.name: t.status for t in state.trials.values()}
    assert all(t.startup_s for t in state.trials.values())


@pytest.mark.slow  # 60-125 s on 2 shared cores; CI runs it (make test)
def test_pbt_exploits_another_trials_checkpoint(dataset, tmp_path, ray_session):
    """PBT, population 2 running together, perturbation every epoch: the worse trial continues from
    the better one's Lightning checkpoint (handed over by Ray) with perturbed values. Three epochs:
    at epoch 1 the other trial may not have reported yet, and the last epoch has nothing to continue."""
    from automl import driver

    outcome = driver.run(_options(tmp_path / "pbt", dataset, algorithm="pbt", population_size=2, max_concurrent=2,
                                  max_epochs=3, perturbation_interval=1), echo=lambda _: None)
    state = outcome.state
    assert len(state.trials) == 2
    _check_common(state, max_epochs=3)
    exploits = [(t.name, r) for t in state.trials.values() for r in t.restores if r["from"] != t.name]
    assert exploits, {t.name: (t.restores, len(t.history)) for t in state.trials.values()}
    name, restore = exploits[0]
    record = state.by_name(name)
    assert restore["epoch"] >= 1  # continued training after the donor's epoch, not from scratch
    epochs = [h["epoch"] for h in record.history]
    assert epochs == sorted(set(epochs)) and epochs[-1] == 3  # went on to the end of its budget
    run = _children(state)[name]
    assert any(k.startswith("automl.restored_") for k in run.data.tags)
    # explore: the trial went on with the donor's values perturbed, recorded in the ledger and MLflow
    assert any(k.startswith("automl.config_from_epoch_") for k in run.data.tags)
    # Some continued config differs from the trial's own first one. (Its last one may not: two
    # exploits in a row can perturb lr one step down and one step back up.)
    import ast
    import json as _json

    def parsed(text: str) -> dict:
        try:
            return _json.loads(text)
        except ValueError:
            return ast.literal_eval(text)

    first = {"train.optim.lr": float(run.data.params["train.optim.lr"]),
             "model.backbone.freeze_backbone": run.data.params["model.backbone.freeze_backbone"]}
    continued = [parsed(v) for k, v in run.data.tags.items() if k.startswith("automl.config_from_epoch_")]
    assert any(float(c["train.optim.lr"]) != pytest.approx(first["train.optim.lr"])
               or str(c["model.backbone.freeze_backbone"]).lower() != first["model.backbone.freeze_backbone"]
               for c in continued), (first, continued)


def test_grid_runs_every_point_once(dataset, tmp_path, ray_session):
    from automl import driver

    only = ["model.backbone.freeze_backbone", "dataset.segment.augmentation.random_flip.enable"]
    outcome = driver.run(_options(tmp_path / "grid", dataset, algorithm="grid", max_trials=20, max_epochs=1, only=only),
                         echo=lambda _: None)
    state = outcome.state
    points = sorted(tuple(t.params[k] for k in only) for t in state.trials.values())
    assert points == [(False, False), (False, True), (True, False), (True, True)]
    baseline = state.by_name("trial_000")
    assert baseline.is_baseline and (baseline.params[only[0]], baseline.params[only[1]]) == (False, True)
    assert {t.status for t in state.trials.values()} == {"FINISHED"}


_BAD_SPLIT = {"dataset.segment.validation_split": {"valid_options": ["val", "val_bad"]}}


def test_failed_trial_is_recorded_and_search_goes_on(dataset, tmp_path, ray_session):
    """One grid point validates on a split with a corrupt JPEG: that trial fails (real data error),
    recorded FAILED with its error in the ledger and MLflow; the other trials finish."""
    from automl import driver

    only = ["dataset.segment.validation_split"]
    outcome = driver.run(_options(tmp_path / "fail", dataset, algorithm="grid", max_trials=4, max_epochs=1, only=only,
                                  param_ranges=_BAD_SPLIT, override_disabled=True), echo=lambda _: None)
    state = outcome.state
    by_status: dict[str, list] = {}
    for t in state.trials.values():
        by_status.setdefault(t.status, []).append(t)
    assert len(by_status["FAILED"]) == 1 and len(by_status["FINISHED"]) == 1, state.counts()
    assert all(t.params["dataset.segment.validation_split"] == "val_bad" for t in by_status["FAILED"])
    runs = _children(state)
    for t in by_status["FAILED"]:
        assert "val_00000" in t.error  # the error names the corrupt file
        run = runs[t.name]
        assert run.info.status == "FAILED" and "val_00000" in run.data.tags["automl.error"]
    assert outcome.best is not None and outcome.best.status == "FINISHED"
    assert not outcome.stopped_by_failures


def test_failure_limit_ends_the_search(dataset, tmp_path, ray_session):
    from automl import driver

    lines: list[str] = []
    outcome = driver.run(_options(tmp_path / "limit", dataset, algorithm="random", max_trials=4, max_epochs=1,
                                  overrides=["dataset.segment.batch_size=4", "model.decode_head.decoder_params.embed_dim=32", "dataset.segment.validation_split=val_bad"],
                                  max_failed_trials=1), echo=lines.append)
    state = outcome.state
    assert state.counts().get("FAILED") == 1 and len(state.trials) <= 2, state.counts()
    assert outcome.stopped_by_failures and outcome.best is None
    text = "\n".join(lines)
    assert "stopped after 1 failed trials (limit --max-failed-trials 1)" in text
    assert state.status == "FINISHED"


def test_hyperband_bracket_count_follows_the_budget():
    """HyperBand's s_max + 1 brackets: more brackets when max_t / grace_period spans more rungs."""
    from automl.driver import hyperband_brackets

    assert hyperband_brackets(max_t=1, grace_period=1, reduction_factor=3) == 1
    assert hyperband_brackets(max_t=3, grace_period=1, reduction_factor=3) == 2
    assert hyperband_brackets(max_t=9, grace_period=1, reduction_factor=3) == 3
    assert hyperband_brackets(max_t=81, grace_period=1, reduction_factor=3) == 5
    assert hyperband_brackets(max_t=8, grace_period=2, reduction_factor=2) == 3


def test_hyperband_search_is_reproducible_with_its_seed(dataset, tmp_path, ray_session):
    """--seed fixes the sampled values and HyperBand's bracket draws (Ray picks a trial's bracket with
    NumPy's global generator): two runs stop the same trials at the same epochs, with the same values."""
    from automl import driver

    runs = []
    for name in ("one", "two"):
        opts = _options(tmp_path / name, dataset, algorithm="hyperband", max_trials=6, max_epochs=4, seed=7)
        state = driver.run(opts, echo=lambda _: None).state
        runs.append({t.name: (len(t.history), t.params, [round(h["val_miou"], 6) for h in t.history])
                     for t in state.trials.values()})
    assert runs[0] == runs[1]
    assert len({epochs for epochs, _, _ in runs[0].values()}) > 1, "nothing was stopped early: not a HyperBand test"


def test_the_last_trial_gets_the_idle_slots_cpu(tmp_path, ray_session):
    """Two trials on 2 slots, one much slower (batch 1 against 16 on the same 32 images): once the
    fast one ends, the slow one trains its remaining epochs on both CPUs (automl.lending), and only
    then. Its timing.json records the threads; nothing is lent when the search is over."""
    from automl import driver
    from automl.lending import LENT_THREADS_FILE
    from segformer.data.synth import generate
    from segformer.engine.timing import read_timing

    spec = generate(tmp_path / "data", num_classes=3, size=64, train=32, val=4, test=4) / "spec.yaml"
    lines: list[str] = []
    outcome = driver.run(_options(tmp_path / "lend", spec, algorithm="grid", max_trials=2, max_epochs=6, max_concurrent=2,
                                  only=["dataset.segment.batch_size"], override_disabled=True,
                                  param_ranges={"dataset.segment.batch_size": {"valid_options": [1, 16]}},
                                  overrides=["dataset.segment.batch_size=1", "model.decode_head.decoder_params.embed_dim=32"]),
                         echo=lines.append)
    trials = sorted(outcome.state.trials.values(), key=lambda t: t.ended_at)
    assert [t.status for t in trials] == ["FINISHED", "FINISHED"], [(t.name, t.status, t.error) for t in trials]
    first, last = trials
    assert last.params["dataset.segment.batch_size"] == 1  # the slow one outlasted the other
    assert not list((tmp_path / "lend").glob(f"trial_*/{LENT_THREADS_FILE}"))
    assert any(f"lent idle CPUs to {last.name} " in line for line in lines), lines

    def epochs(trial):
        return [e for run in read_timing(tmp_path / "lend" / trial.name / "train" / "timing.json") for e in run["epochs"]]

    assert all(e["train_step_thread_s"] == pytest.approx(e["train_step_s"]) for e in epochs(first))
    lent = [e for e in epochs(last) if e["train_step_thread_s"] > 1.5 * e["train_step_s"]]
    assert lent, [(e["train_step_s"], e["train_step_thread_s"]) for e in epochs(last)]
    # Lent only in the tail: no epoch that ended before the other trial did ran on two threads.
    assert all(e["epoch_end_at"] > first.ended_at for e in lent)
    assert all(e["train_step_thread_s"] == pytest.approx(e["train_step_s"])
               for e in epochs(last) if e["epoch_end_at"] < first.ended_at)
