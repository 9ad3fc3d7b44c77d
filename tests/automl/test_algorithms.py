"""Every search algorithm run for real on a tiny synthetic dataset (32 px, 3 classes, 8 images),
plus failed trials and the failure limit. One local Ray (2 CPUs) is shared by the module: the
driver uses a Ray that is already running and leaves it up, which is what a notebook does too."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from searchhelpers import TINY, search_options

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


def _options(results: Path, spec: Path, overrides: tuple[str, ...] = TINY, **kw):
    return search_options(results, spec, overrides, **{"max_trials": 3, "max_epochs": 2, "max_concurrent": 1,
                                                       "only": ["train.optim.lr", "model.backbone.freeze_backbone"],
                                                       "promote": False, "grace_period": 1, "reduction_factor": 2, **kw})


def _children(state):
    from mlflow import MlflowClient

    client = MlflowClient(state.mlflow_tracking_uri)
    runs = client.search_runs([state.mlflow_experiment_id],
                              filter_string=f"tags.`mlflow.parentRunId` = '{state.mlflow_parent_run_id}'")
    return {r.data.tags["automl.trial"]: r for r in runs}


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
            assert t.stopped_by.split(":")[0] in ("rung", "curve"), t.stopped_by  # why, not only that
            assert run.data.tags["automl.stopped_by"] == t.stopped_by
        elif t.status == "FINISHED":
            assert run.info.status == "FINISHED" and run.data.tags["automl.stopped_early"] == "false"
            assert t.stopped_by is None and "automl.stopped_by" not in run.data.tags
        else:
            raise AssertionError(f"{t.name} ended {t.status}: {t.error}")


# asha and hyperband run below with the same checks (test_epoch_multiplier_..., test_hyperband_search_is_reproducible_...):
# each search here costs a trial process and its imports, more than its epochs.
@pytest.mark.parametrize("algorithm", ["random", "hyperband_es", "bohb", "dehb", "bfbo"])
def test_algorithm_runs(algorithm, dataset, tmp_path, ray_session):
    import automl

    # hyperband_es fits curves from epoch 3; dehb breeds from 4 finished trials (after the baseline and 3 startup points)
    trials, epochs = {"hyperband_es": (3, 4), "dehb": (5, 2)}.get(algorithm, (3, 2))
    outcome = automl.run(_options(tmp_path / algorithm, dataset, algorithm=algorithm, max_trials=trials,
                                  max_epochs=epochs), echo=lambda _: None)
    state = outcome.state
    assert len(state.trials) == trials
    _check_common(state, max_epochs=epochs)


def test_bfbo_gives_a_free_slot_another_configuration_than_the_running_one() -> None:
    """bfbo's Gaussian process takes the trials still training into account: asked twice before the
    first answer (two slots), it proposes two different points, where a sampler blind to the running
    trial would propose the model's optimum twice."""
    import optuna

    from automl.algorithms import sampler

    def two_asks(running_counts: bool) -> tuple[float, float]:
        study = optuna.create_study(direction="maximize", sampler=sampler("bfbo", seed=0, startup=4))
        x = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}
        for value in (0.1, 0.3, 0.6, 0.9, 0.45):  # a peak at 0.5
            study.enqueue_trial({"x": value})
            trial = study.ask(x)
            study.tell(trial, -(trial.params["x"] - 0.5) ** 2)
        first = study.ask(x)
        if not running_counts:
            study.tell(first, state=optuna.trial.TrialState.FAIL)
        return first.params["x"], study.ask(x).params["x"]

    first, second = two_asks(running_counts=True)
    assert abs(first - 0.5) < 0.05 and abs(second - first) > 0.03, (first, second)
    blind_first, blind_second = two_asks(running_counts=False)
    assert abs(blind_second - blind_first) < 0.01, (blind_first, blind_second)


@pytest.mark.slow  # 60-125 s on 2 shared cores; CI runs it (make test)
def test_pbt_exploits_another_trials_checkpoint(dataset, tmp_path, ray_session):
    """PBT, population 2 taking turns on one slot (Ray has room for two: --max-concurrent holds),
    perturbation every epoch: the worse trial continues from the better one's Lightning checkpoint
    (handed over by Ray) with perturbed values. Three epochs: the last has nothing to continue, so no
    trial is paused, restarted or given new values there."""
    import automl

    said: list[str] = []
    outcome = automl.run(_options(tmp_path / "pbt", dataset, algorithm="pbt", population_size=2, max_concurrent=1,
                                  max_epochs=3, perturbation_interval=1, perturbation_factor=2.0), echo=said.append)
    assert any("population 2 x 3 epochs (6 epochs in all) taking turns" in line and "1 at a time" in line for line in said), said[:5]
    state = outcome.state
    assert len(state.trials) == 2
    _check_common(state, max_epochs=3)
    # One population, time-shared: the second member started before the first finished (Ray's
    # generator once created a member only when another finished: separate groups, no exploit across)
    assert max(t.started_at for t in state.trials.values()) < min(t.ended_at for t in state.trials.values())
    # the search deletes old PBT checkpoints (Ray keeps them all) but not a trial's best, which promotion takes
    assert all((Path(t.checkpoint) / "checkpoint.ckpt").is_file() for t in state.trials.values())
    at_the_end = {t.name: ([r for r in t.restores if r["epoch"] >= 3], [c for c in t.config_changes if c["epoch"] >= 3])
                  for t in state.trials.values()}
    assert not any(r or c for r, c in at_the_end.values()), at_the_end
    exploits = [(t.name, r) for t in state.trials.values() for r in t.restores if r["from"] != t.name]
    assert exploits, {t.name: (t.restores, len(t.history)) for t in state.trials.values()}
    # members taking turns restart from their own checkpoints and re-send that epoch: MLflow keeps one
    # point per epoch, as the ledger does (it had the epoch twice, the re-sent one with a stale train_loss)
    from mlflow import MlflowClient

    client = MlflowClient(state.mlflow_tracking_uri)
    for t in state.trials.values():
        for key in ("val_miou", "train_loss"):
            steps = [m.step for m in client.get_metric_history(t.mlflow_run_id, key)]
            assert steps == [h["epoch"] for h in t.history], (t.name, key, steps)
    # The first exploit in time: its config is the donor's perturbed, never its own. A later one may
    # hand a trial the values it already has (the same donor's lr halved again), no config change.
    name, restore = min(exploits, key=lambda e: e[1]["epoch"])
    record = state.by_name(name)
    assert restore["epoch"] >= 1  # continued training after the donor's epoch, not from scratch
    epochs = [h["epoch"] for h in record.history]
    assert epochs == sorted(set(epochs)) and epochs[-1] == 3  # went on to the end of its budget
    run = _children(state)[name]
    assert any(k.startswith("automl.restored_") for k in run.data.tags)
    # explore: the trial went on with the donor's values perturbed, recorded in the ledger and MLflow
    assert any(k.startswith("automl.config_from_epoch_") for k in run.data.tags)
    # ...and the ledger has the config it went on with: the donor's at that epoch, perturbed (times or
    # divided by perturbation_factor, or resampled), never the donor's own value.
    runs = _children(state)

    def lr_at(trial, epoch: int) -> float:
        changes = [c for c in trial.config_changes if c["epoch"] <= epoch]
        return float(changes[-1]["params"]["train.optim.lr"] if changes else runs[trial.name].data.params["train.optim.lr"])

    assert record.config_changes, record
    continued = min(record.config_changes, key=lambda c: abs(c["epoch"] - restore["epoch"]))
    donor_lr = lr_at(state.by_name(restore["from"]), restore["epoch"])
    assert float(continued["params"]["train.optim.lr"]) != pytest.approx(donor_lr), (continued, donor_lr)
    # ...and trained with it: the restored optimizer took the trial's lr, not the donor's
    import torch

    from automl.layout import Layout

    latest = torch.load(Layout.of(tmp_path / "pbt").trial_dir(name) / "train" / "segformer_model_latest.pth",
                        weights_only=True)
    assert latest["lr_schedulers"][0]["base_lrs"][0] == pytest.approx(lr_at(record, 3))
    assert latest["optimizer_states"][0]["param_groups"][0]["initial_lr"] == pytest.approx(lr_at(record, 3))


def test_pbt_resamples_are_not_the_populations_draws() -> None:
    """PBT's explore resamples from NumPy's global generator, which the search seeds for
    reproducibility; the population's random members come from Optuna's sampler with the same
    --seed. Seeded with the same number, the first resample was the first member's value again."""
    from ray import tune

    from automl.algorithms import _drawn_points
    from automl.runner import seeded_global_rngs
    from automl.space import Param, Space

    space = Space((Param("train.optim.lr", "float", 1e-3, low=1e-5, high=1e-2, log=True),))
    for seed in (0, 1, 2):
        drawn = _drawn_points(space, 1, "pbt", seed)[0]["train.optim.lr"]
        with seeded_global_rngs(seed):
            first = tune.loguniform(1e-5, 1e-2).sample()
        with seeded_global_rngs(seed):
            again = tune.loguniform(1e-5, 1e-2).sample()
        assert first == again  # still reproducible
        assert first != pytest.approx(drawn), seed


def test_grid_runs_every_point_once(dataset, tmp_path, ray_session):
    import automl

    only = ["model.backbone.freeze_backbone", "dataset.segment.augmentation.random_flip.enable"]
    outcome = automl.run(_options(tmp_path / "grid", dataset, algorithm="grid", max_trials=20, max_epochs=1, only=only),
                         echo=lambda _: None)
    state = outcome.state
    points = sorted(tuple(t.params[k] for k in only) for t in state.trials.values())
    assert points == [(False, False), (False, True), (True, False), (True, True)]
    baseline = state.by_name("trial_000")
    assert baseline.is_baseline and (baseline.params[only[0]], baseline.params[only[1]]) == (False, True)
    assert {t.status for t in state.trials.values()} == {"FINISHED"}


def test_a_grid_trains_no_more_points_than_its_count(dataset, tmp_path, ray_session):
    """--max-trials 2 on a grid of 4 points trained all 4 (Ray runs every preset point whatever
    num_samples says), and results.json read 'completed 4 of 2'; a budget overspent the same way.
    The grid is cut to its count, the baseline first, and a warning says so."""
    import automl
    from automl.params import SpaceWarning
    from automl.results import tao_results

    only = ["model.backbone.freeze_backbone", "dataset.segment.augmentation.random_flip.enable"]
    with pytest.warns(SpaceWarning, match=r"the grid holds 4 points and --max-trials 2 trains 2 of them, in grid order"):
        outcome = automl.run(_options(tmp_path / "cut", dataset, algorithm="grid", max_trials=2, max_epochs=1, only=only),
                             echo=lambda _: None)
    state = outcome.state
    assert len(state.trials) == 2 and state.by_name("trial_000").is_baseline, state.counts()
    assert {k: tao_results(state)["progress"][k] for k in ("completed", "total")} == {"completed": 2, "total": 2}


_BAD_SPLIT = {"dataset.segment.validation_split": {"valid_options": ["val", "val_bad"]}}


def test_failed_trial_is_recorded_and_search_goes_on(dataset, tmp_path, ray_session):
    """One grid point validates on a split with a corrupt JPEG: that trial fails (real data error),
    recorded FAILED with its error in the ledger and MLflow; the other trials finish."""
    import automl

    only = ["dataset.segment.validation_split"]
    outcome = automl.run(_options(tmp_path / "fail", dataset, algorithm="grid", max_trials=4, max_epochs=1, only=only,
                                  param_ranges=_BAD_SPLIT, override_disabled=True, max_failures=0), echo=lambda _: None)
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
    import automl

    # The spec's own splits are sound (automl run reads them before any trial); every trial draws the
    # corrupt split, so every trial fails in training.
    lines: list[str] = []
    outcome = automl.run(_options(tmp_path / "limit", dataset, algorithm="random", max_trials=4, max_epochs=1,
                                  only=["dataset.segment.validation_split"], override_disabled=True, baseline_first=False,
                                  param_ranges={"dataset.segment.validation_split": {"valid_options": ["val_bad"]}},
                                  max_failed_trials=1, max_failures=0), echo=lines.append)
    state = outcome.state
    assert state.counts().get("FAILED") == 1 and len(state.trials) <= 2, state.counts()
    assert outcome.stopped_by_failures and outcome.best is None
    text = "\n".join(lines)
    assert "stopped after 1 failed trials (limit --max-failed-trials 1)" in text
    # it ended with nothing to promote: FAILED, not FINISHED, wherever a script looks (it read 'finished',
    # and `automl status --watch` exited 0 while the driver exited 1)
    assert state.status == "FAILED"
    from automl.console import print_status
    from automl.results import tao_results

    assert print_status(state.results_dir, watch=0.1, echo=lambda _: None) == 1
    assert tao_results(state)["progress"]["status"] == "failed"
    from mlflow import MlflowClient

    assert MlflowClient(state.mlflow_tracking_uri).get_run(state.mlflow_parent_run_id).info.status == "FAILED"
    with pytest.raises(automl.SearchError, match="already holds a search that ended with nothing to promote"):
        automl.run(_options(tmp_path / "limit", dataset, max_trials=2), echo=lambda _: None)


def test_hyperband_bracket_count_follows_the_budget():
    """HyperBand's s_max + 1 brackets: more brackets when max_t / grace_period spans more rungs."""
    from automl.algorithms import hyperband_brackets

    assert hyperband_brackets(max_t=1, grace_period=1, reduction_factor=3) == 1
    assert hyperband_brackets(max_t=3, grace_period=1, reduction_factor=3) == 2
    assert hyperband_brackets(max_t=9, grace_period=1, reduction_factor=3) == 3
    assert hyperband_brackets(max_t=81, grace_period=1, reduction_factor=3) == 5
    assert hyperband_brackets(max_t=8, grace_period=2, reduction_factor=2) == 3


def test_hyperband_search_is_reproducible_with_its_seed(dataset, tmp_path, ray_session):
    """--seed fixes the sampled values and HyperBand's bracket draws (Ray picks a trial's bracket with
    NumPy's global generator): two runs stop the same trials at the same epochs, with the same values."""
    import automl

    runs = []
    for name in ("one", "two"):
        opts = _options(tmp_path / name, dataset, algorithm="hyperband", max_trials=6, max_epochs=4, seed=7)
        state = automl.run(opts, echo=lambda _: None).state
        assert len(state.trials) == 6
        _check_common(state, max_epochs=4)  # (test_algorithm_runs' checks, with trials HyperBand stopped at a rung)
        runs.append({t.name: (len(t.history), t.params, [round(h["val_miou"], 6) for h in t.history])
                     for t in state.trials.values()})
    assert runs[0] == runs[1]
    assert len({epochs for epochs, _, _ in runs[0].values()}) > 1, "nothing was stopped early: not a HyperBand test"


def test_epoch_multiplier_counts_the_budget_and_rungs_in_units(dataset, tmp_path, ray_session):
    """TAO's epoch_multiplier: 2 units of 2 epochs, grace 1 unit, eta 2: each trial trains up to 4
    epochs and ASHA stops trials only after a whole unit (2 epochs)."""
    import automl

    outcome = automl.run(_options(tmp_path / "units", dataset, algorithm="asha", max_trials=4, max_epochs=2,
                                  epoch_multiplier=2), echo=lambda _: None)
    assert len(outcome.state.trials) == 4
    _check_common(outcome.state, max_epochs=4)  # (test_algorithm_runs' checks, for ASHA)
    trained = {t.name: len(t.history) for t in outcome.state.trials.values()}
    assert set(trained.values()) <= {2, 4}, trained
    assert 4 in trained.values() and 2 in trained.values(), trained  # one ran its budget, one was stopped at a rung
    assert all((t.status == "STOPPED") == (len(t.history) == 2) for t in outcome.state.trials.values())


def test_a_budgeted_asha_search_says_why_it_stopped_each_trial(dataset, tmp_path, ray_session):
    """Under an epoch budget every early stop has its reason (a rung of successive halving, or the
    budget running out) in the ledger, the status table, results.json and the trial's MLflow run."""
    import json

    import automl
    from automl.console import format_table

    results = tmp_path / "why"
    opts = search_options(results, dataset, (*TINY, "train.num_epochs=4"), algorithm="asha", budget=3,
                          only=["train.optim.lr"], promote=False, max_concurrent=1)
    state = automl.run(opts, echo=lambda _: None).state
    stopped = [t for t in state.trials.values() if t.status == "STOPPED"]
    assert stopped, {t.name: (t.status, t.epochs_trained) for t in state.trials.values()}
    table = format_table(state)
    history = {h["trial"]: h for h in json.loads((results / "results.json").read_text())["history"]}
    runs = _children(state)
    for t in stopped:
        kind = t.stopped_by.split(":")[0]
        assert kind in ("rung", "budget"), t.stopped_by
        if kind == "rung":
            assert t.stopped_by == f"rung: not in the best 1/3 at epoch {t.epochs_trained}"
        assert f"STOPPED ({kind})" in next(line for line in table.splitlines() if line.startswith(t.name))
        assert history[t.name]["stopped_by"] == t.stopped_by == runs[t.name].data.tags["automl.stopped_by"]
    assert all(t.stopped_by is None for t in state.trials.values() if t.status == "FINISHED")


def test_run_baseline_off_runs_no_baseline(dataset, tmp_path, ray_session):
    """TAO's run_baseline: false: every trial is drawn by the sampler; none is marked the baseline."""
    import automl

    lines: list[str] = []
    outcome = automl.run(_options(tmp_path / "nobase", dataset, algorithm="random", max_trials=2, max_epochs=1,
                                  baseline_first=False, promote=True, export=False, quantize=False, trt=False),
                         echo=lines.append)
    state = outcome.state
    assert len(state.trials) == 2 and state.baseline() is None and state.baseline_params is None
    assert all(t.params["train.optim.lr"] != pytest.approx(BASE_LR) for t in state.trials.values())
    assert outcome.best is not None
    # the promoted model is still scored on the untouched test split (it was skipped: "no baseline"),
    # and the summary says its lead was checked against nothing
    final = state.final_evaluation
    assert "skipped" not in final and "baseline" not in final and final["promoted"]["trials"] == [outcome.best.name]
    text = "\n".join(lines)
    assert (f"  test     promoted {outcome.best.name} mIoU {final['promoted']['mean']:.4f} on the untouched test split "
            "(no baseline trial to compare with: run_baseline is off)") in text, text[-3000:]
    assert "  re-check none: no baseline trial (run_baseline is off)" in text
