"""The options model (one validator, sections, state round trip) and TAO settings files mapped onto it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from automl.options import ALGORITHMS, SearchError, SearchOptions
from automl.settings import SettingsError, SettingsWarning, load_settings, map_tao_settings, options_from_settings


def test_tao_keys_map_to_our_options(tmp_path: Path) -> None:
    path = tmp_path / "automl.yaml"
    path.write_text(
        "automl_algorithm: Hyperband\n"
        "automl_max_recommendations: 12\n"
        "automl_max_epochs: 9\n"
        "automl_reduction_factor: 3\n"
        "automl_max_concurrent: 2\n"
        'automl_hyperparameters: \'["train.optim.lr", "train.optim.momentum"]\'\n'
        "automl_delete_intermediate_ckpt: false\n"
        "epoch_multiplier: 2\n"
        "override_automl_disabled_params: true\n"
        "run_baseline: false\n"
        "automl_perturbation_factor: 1.5\n"
        "metric: val_miou\n"
        "direction: maximize\n"
        "custom_param_ranges:\n"
        "  train.optim.lr: {valid_min: 1.0e-5, valid_max: 1.0e-3}\n"
    )
    opts = options_from_settings(load_settings(path))
    s = opts.search
    assert s.algorithm == "hyperband"
    assert (s.max_trials, s.max_epochs, s.reduction_factor, opts.resources.max_concurrent) == (12, 9, 3, 2)
    assert s.only == ("train.optim.lr", "train.optim.momentum")
    assert opts.tracking.delete_intermediate_checkpoints is False and s.override_disabled is True
    assert s.epoch_multiplier == 2 and s.trial_epochs == 18 and s.mode == "max"
    assert s.baseline_first is False and s.perturbation_factor == 1.5
    assert s.param_ranges["train.optim.lr"] == {"valid_min": 1e-5, "valid_max": 1e-3}


def test_a_parameter_list_written_as_python_text_is_read(tmp_path: Path) -> None:
    """"['model.backbone.freeze_backbone']" (what str(list) writes) was refused as "not a JSON list"."""
    from automl.settings import SettingsError, _param_list

    assert _param_list("['train.optim.lr', 'train.optim.momentum']") == ("train.optim.lr", "train.optim.momentum")
    assert _param_list('["train.optim.lr"]') == ("train.optim.lr",) and _param_list("train.optim.lr, x.y") == ("train.optim.lr", "x.y")
    with pytest.raises(SettingsError, match=r"neither a JSON nor a Python list; write a YAML list, or quote the names"):
        _param_list("[train.optim.lr")


def test_json_file_and_nested_algorithm_params(tmp_path: Path) -> None:
    path = tmp_path / "automl.json"
    path.write_text(json.dumps({"automl_algorithm": "asha", "algorithm_specific_params": {"automl_max_trials": 7, "automl_R": 27, "automl_nu": 3}}))
    s = options_from_settings(load_settings(path), None).search
    assert (s.algorithm, s.max_trials, s.max_epochs, s.reduction_factor) == ("asha", 7, 27, 3)


def test_cli_wins_over_file(tmp_path: Path) -> None:
    path = tmp_path / "automl.yaml"
    path.write_text("automl_algorithm: bayesian\nautoml_max_recommendations: 30\nmetric: val_miou\n")
    opts = options_from_settings(load_settings(path), {"max_trials": 4, "algorithm": "random", "metric": None,
                                                       "gpus_per_trial": 0.5}, results_dir=str(tmp_path / "r"))
    assert (opts.search.algorithm, opts.search.max_trials, opts.search.metric) == ("random", 4, "val_miou")
    assert opts.resources.gpus_per_trial == 0.5 and opts.results_dir == str(tmp_path / "r")


def test_a_bad_value_from_a_settings_file_is_named_as_the_file_wrote_it(tmp_path: Path) -> None:
    """The user wrote automl_perturbation_factor, not perturbation_factor (our option's name)."""
    path = tmp_path / "automl.yaml"
    path.write_text("automl_algorithm: pbt\nautoml_perturbation_factor: 0.5\nautoml_max_recommendations: 3\n")
    with pytest.raises(SettingsError, match=r"^automl_perturbation_factor \(settings file\) must be > 1, got 0.5$"):
        options_from_settings(load_settings(path))
    path.write_text("automl_max_recommendations: 0\n")
    with pytest.raises(SettingsError, match=r"^automl_max_recommendations \(settings file\) must be an integer >= 1"):
        options_from_settings(load_settings(path), {"max_trials": None})
    with pytest.raises(SettingsError, match=r"^--max-trials must be an integer >= 1, got -1"):  # the flag's value
        options_from_settings(load_settings(path), {"max_trials": -1}, {"max_trials": "--max-trials"})


def test_one_set_of_defaults() -> None:
    """Settings file, command line and Python callers share one options model and its defaults."""
    opts = options_from_settings({}, {})
    assert opts == SearchOptions() == SearchOptions.build({})
    assert (opts.search.algorithm, opts.search.metric, opts.search.mode, opts.search.max_trials) == ("bayesian", "val_miou", "max", None)
    assert opts.resources.max_failures == 1 and opts.resources.gpus_per_trial is None
    assert opts.search.baseline_first and opts.search.epoch_multiplier == 1
    # The defaults: an epoch budget of 10 trainings, the leader re-checked, every slot busy.
    assert opts.search.budget == 10 and opts.search.budgeted and opts.search.rechecked
    assert opts.resources.max_concurrent is None


def test_max_trials_replaces_the_budget_and_its_recheck() -> None:
    """TAO's keys still work and override the budget: a trial count sizes the search, no re-check
    unless asked for; PBT sizes itself by its population."""
    tao = options_from_settings({"automl_max_recommendations": 8, "automl_algorithm": "bayesian"}, {})
    assert tao.search.max_trials == 8 and not tao.search.budgeted and not tao.search.rechecked
    with pytest.raises(SettingsError, match="recheck runs inside the epoch budget, and max_trials=8 replaces the budget"):
        options_from_settings({"automl_max_recommendations": 8, "recheck": True}, {})
    assert not options_from_settings({"automl_algorithm": "pbt"}, {}).search.budgeted
    assert not options_from_settings({}, {"recheck": False}).search.rechecked
    assert not options_from_settings({"run_baseline": False}, {}).search.rechecked  # nothing to re-check against
    assert options_from_settings({}, {"budget": 4}).search.budget == 4
    for bad in (0.5, float("nan"), "ten"):
        with pytest.raises(SettingsError, match="budget must be at least 1"):
            options_from_settings({}, {"budget": bad})


def test_state_round_trip_and_flat_names() -> None:
    opts = SearchOptions.build({"algorithm": "bohb", "only": ["train.optim.lr"], "param_ranges": {"train.optim.lr": {"valid_min": 1e-4}},
                                "cpus_per_trial": 2, "promote": False}, results_dir="r", overrides=("a=1",))
    data = json.loads(json.dumps(opts.to_dict()))  # what the state file holds
    assert SearchOptions.from_dict(data) == opts
    assert opts.flat()["cpus_per_trial"] == 2 and opts.flat()["promote"] is False and opts.flat()["results_dir"] == "r"
    with pytest.raises(SearchError, match="unknown AutoML option 'max_trails'.*did you mean 'max_trials'"):
        opts.with_values(max_trails=3)


def test_unknown_key_names_closest() -> None:
    with pytest.raises(SettingsError, match="unknown AutoML setting 'automl_max_recomendations'.*did you mean 'automl_max_recommendations'"):
        map_tao_settings({"automl_max_recomendations": 3})


def test_inapplicable_tao_key_warns() -> None:
    with pytest.warns(SettingsWarning, match="llm_endpoint"):
        assert map_tao_settings({"llm_endpoint": "http://x"}) == {}


def test_unknown_algorithm_lists_valid() -> None:
    with pytest.raises(SettingsError, match=f"valid: {', '.join(ALGORITHMS)}") as caught:
        options_from_settings({"automl_algorithm": "llm"}, {})
    assert "a TAO algorithm this driver does not run" in str(caught.value)
    assert options_from_settings({"automl_algorithm": "b"}, {}).search.algorithm == "bayesian"
    with pytest.raises(SearchError, match="did you mean 'hyperband'"):
        SearchOptions.build({"algorithm": "hyperbnd"})


def test_conflicting_aliases_and_bad_values() -> None:
    with pytest.raises(SettingsError, match="both set 'max_epochs'"):
        map_tao_settings({"automl_max_epochs": 10, "automl_R": 27})
    with pytest.raises(SettingsError, match="mode must be 'max' or 'min'"):
        options_from_settings({"direction": "up"}, {})
    with pytest.raises(SettingsError, match="max_trials must be an integer >= 1"):
        options_from_settings({}, {"max_trials": 0})
    with pytest.raises(SettingsError, match="epoch_multiplier must be an integer >= 1"):
        options_from_settings({"epoch_multiplier": 0})
    with pytest.raises(SettingsError, match="perturbation_factor must be > 1"):
        options_from_settings({"automl_perturbation_factor": 0.8})
    with pytest.raises(SettingsError, match="baseline_first must be true or false, got 'no'"):
        options_from_settings({"run_baseline": "no"})
    with pytest.raises(SearchError, match="grace_period 5 exceeds max_epochs 3"):
        SearchOptions.build({"algorithm": "asha", "grace_period": 5, "max_epochs": 3})
    assert SearchOptions.build({"algorithm": "bayesian", "grace_period": 5, "max_epochs": 3}).search.grace_period == 5  # bayesian stops nothing


def test_nvidia_multi_objective_keys(tmp_path: Path) -> None:
    """tao-automl 7.1's multi-objective settings, in its own two forms: its latency is the latency every
    trial records here, the search's metric comes first, and its weights decide the promotion."""
    flags = tmp_path / "flags.yaml"
    flags.write_text("metric: val_miou\ndirection: maximize\nmulti_objective: true\nlatency_metric: latency\n"
                     "latency_direction: minimize\nlatency_scale: 100.0\nlatency_weight: 1.0\n")
    listed = tmp_path / "listed.json"
    listed.write_text(json.dumps({"automl_settings": {"objectives": [
        {"metric": "val_miou", "direction": "maximize", "weight": 1.0},
        {"metric": "latency", "direction": "minimize", "weight": 1.0, "scale": 100.0}]}}))
    for path in (flags, listed):
        s = options_from_settings(load_settings(path)).search
        assert s.objective_weights == ((1.0, 1.0), (1.0, 100.0)) and s.measures_latency, path
        assert s.objectives in (("latency_ms:min",), ("val_miou:max", "latency_ms:min")), s.objectives
        data = json.loads(json.dumps(SearchOptions.build({"objectives": s.objectives, "objective_weights": s.objective_weights}).to_dict()))
        assert SearchOptions.from_dict(data).search.objective_weights == s.objective_weights  # the state file keeps them
    # the flag alone: the metric and the latency, no weights (the front's knee decides); directions inferred from the names
    plain = options_from_settings({"include_latency": True}).search
    assert plain.objectives == ("latency_ms:min",) and plain.objective_weights is None
    assert options_from_settings({"objectives": ["val_miou", "inference_latency_ms"]}).search.objectives == ("val_miou:max", "latency_ms:min")
    with pytest.raises(SettingsError, match="latency_scale set a latency objective that is not switched on; add multi_objective: true"):
        options_from_settings({"latency_scale": 100})
    with pytest.raises(SettingsError, match="objectives\\[1\\] has unknown keys \\['unit'\\]"):
        options_from_settings({"objectives": ["val_miou", {"metric": "latency", "unit": "ms"}]})
    with pytest.raises(SettingsError, match="both set the objectives; keep one"):
        options_from_settings({"objectives": ["val_miou:max", "latency_ms:min"], "multi_objective": True})
    with pytest.raises(SettingsError, match="latency_scale must be a number > 0, got 0"):
        options_from_settings({"multi_objective": True, "latency_scale": 0})
    with pytest.raises(SettingsError, match="objectives\\[1\\].weight must be a number >= 0, got '1'"):
        options_from_settings({"objectives": ["val_miou", {"metric": "latency", "weight": "1"}]})
    with pytest.raises(SettingsError, match="multi_objective must be true or false, got 'maybe'"):
        options_from_settings({"multi_objective": "maybe"})
    # as tao-automl reads them: the list names the metric (its direction from the name when not given),
    # in any order; a flag that is off (a YAML string included) adds nothing
    s = options_from_settings({"objectives": [{"metric": "latency"}, "val_loss"]}).search
    assert (s.metric, s.mode, s.objectives) == ("val_loss", "min", ("val_loss:min", "latency_ms:min"))
    assert options_from_settings({"metric": "val_loss", "multi_objective": True}).search.mode == "min"
    assert options_from_settings({"metric": "val_loss", "objectives": ["latency"]}).search.mode == "min"
    with pytest.warns(SettingsWarning, match="maximises val_loss"):  # taken as said, and questioned
        assert options_from_settings({"metric": "val_loss", "direction": "maximize"}).search.mode == "max"
    assert options_from_settings({"multi_objective": "false"}).search.objectives is None
    with pytest.raises(SettingsError, match="objectives makes the metric val_miou:max, but direction says 'minimize'; keep one"):
        options_from_settings({"direction": "minimize", "objectives": ["val_miou", "latency"]})
    with pytest.warns(SettingsWarning, match="latency_weight has no effect beside an objectives list"):
        assert options_from_settings({"objectives": ["val_miou", "latency"], "latency_weight": 5}).search.objective_weights is None
    # weights belong to the objectives they came with: other objectives on the command line drop them
    s = options_from_settings({"multi_objective": True, "latency_scale": 100}, {"objectives": "val_miou:max,model_mb:min"}).search
    assert s.objectives == ("val_miou:max", "model_mb:min") and s.objective_weights is None
    with pytest.raises(SettingsError, match="every objective weighs 0, so every model would score the same"):
        options_from_settings({"objectives": [{"metric": "val_miou", "weight": 0}, {"metric": "latency", "weight": 0}]})
    with pytest.raises(SearchError, match="every objective weighs 0"):
        SearchOptions.build({"objectives": ["latency_ms:min"], "objective_weights": [[0, 1], [0, 100]]})
    with pytest.raises(SearchError, match="objective_weights weigh the objectives: give objectives too"):
        SearchOptions.build({"objective_weights": [[1, 1], [1, 100]]})


def test_pbt_perturbation_factor_reaches_the_scheduler() -> None:
    from automl import pbt
    from automl.skill import find_skill
    from automl.space import build_space

    space = build_space(find_skill("segformer").load_schema(), only=["train.optim.lr", "train.optim.momentum"])
    opts = SearchOptions.build({"algorithm": "pbt", "perturbation_factor": 1.5})
    scheduler = pbt.scheduler(opts.search, pbt.mutations(space), space)
    assert scheduler._perturbation_factors == (1.5, 1 / 1.5)  # explore: x1.5 or /1.5
    # a perturbed value goes back into its searched range: momentum 0.95 x 1.5 is not a momentum
    keep = pbt.KeepInRange(space, pbt.mutations(space))
    high = space["train.optim.momentum"].high
    assert keep({"train.optim.momentum": 0.95 * 1.5, "train.optim.lr": 1e-3}) == {"train.optim.momentum": high,
                                                                                  "train.optim.lr": 1e-3}


class _Controller:
    """What Ray's synchronous PBT asks of Ray's TuneController: the trials, and (on an exploit) to pause one."""

    search_alg = None

    def __init__(self, trials):
        self.trials = trials

    def get_trials(self):
        return list(self.trials)

    def get_live_trials(self):
        return [t for t in self.trials if not t.is_finished()]

    def pause_trial(self, trial, should_checkpoint=True):
        from ray.tune.experiment import Trial

        trial.status = Trial.PAUSED


def _population(size, max_epochs=6):
    """Ray's own SynchronousPBT and Trial objects for a population of `size`, all running, as a fresh
    scheduler (a new or a resumed search) has them."""
    from ray.tune.experiment import Trial

    from automl import pbt
    from automl.skill import find_skill
    from automl.space import build_space

    space = build_space(find_skill("segformer").load_schema(), only=["train.optim.lr"])
    search = SearchOptions.build({"algorithm": "pbt", "max_epochs": max_epochs}).search
    scheduler = pbt.scheduler(search, pbt.mutations(space), space)
    scheduler._log_config = False  # Ray's per-step policy files want a trial folder
    controller = _Controller([Trial("segformer", config={"train.optim.lr": 1e-3}, stub=True) for _ in range(size)])
    for trial in controller.trials:
        scheduler.on_trial_add(controller, trial)
        trial.status = Trial.RUNNING
    return scheduler, controller, controller.trials, search.ranking_metric


def test_pbt_keeps_the_baseline_member_the_spec() -> None:
    """The baseline member is the spec the search's gain is measured against: in the worse half it
    neither exploits nor explores (it trains on with the spec's values); in the better half it can
    still be a donor. Ray's own scheduler and Trial objects."""
    from ray.tune.experiment import Trial

    from automl import pbt
    from automl.skill import find_skill
    from automl.space import build_space

    space = build_space(find_skill("segformer").load_schema(), only=["train.optim.lr"])
    search = SearchOptions.build({"algorithm": "pbt", "max_epochs": 6}).search
    scheduler = pbt.scheduler(search, pbt.mutations(space), space, baseline={"train.optim.lr": 1e-3})
    controller = _Controller([Trial("segformer", config={"train.optim.lr": lr}, stub=True) for lr in (1e-3, 2e-3, 3e-3, 4e-3)])
    for trial, score in zip(controller.trials, (0.1, 0.2, 0.3, 0.4)):
        scheduler.on_trial_add(controller, trial)
        trial.status = Trial.RUNNING
        scheduler._trial_state[trial].last_score = score
    spec, worse, *better = controller.trials
    lower, upper = scheduler._quantiles()
    assert lower == [worse] and upper == better  # Ray's alone: [spec, worse]
    scheduler._trial_state[spec].last_score = 0.9
    assert scheduler._quantiles()[1][-1] is spec  # the best: others may exploit it


def test_pbt_lets_a_member_go_when_nobody_is_left_to_synchronise_with() -> None:
    """Seen in CI (2026-12-02): a resumed PBT search hung. One member restored its epoch-4 checkpoint,
    trained epoch 5 (the synchronisation point) and paused to wait for the other, which had restored
    epoch 5, trained its last epoch (reported to nobody: no perturbation there) and finished. Ray's
    synchronous PBT then never chose the paused member again. Ray's own Trial objects and scheduler;
    the controller is reduced to what the scheduler asks of it."""
    from ray.tune.experiment import Trial

    scheduler, controller, (behind, ahead), metric = _population(2)
    assert scheduler.on_trial_result(controller, behind, {"epoch": 5, metric: 0.40}) == "PAUSE"  # waits for `ahead`
    assert scheduler.on_trial_result(controller, ahead, {"epoch": 6, metric: 0.42}) == "CONTINUE"  # its last epoch
    ahead.status, behind.status = Trial.TERMINATED, Trial.PAUSED
    assert scheduler.choose_trial_to_run(controller) is behind  # Ray's alone: None, forever

    # while another member can still reach the point, the paused one waits for it
    scheduler, controller, (behind, ahead, late), metric = _population(3)
    assert scheduler.on_trial_result(controller, behind, {"epoch": 5, metric: 0.40}) == "PAUSE"
    assert scheduler.on_trial_result(controller, ahead, {"epoch": 6, metric: 0.42}) == "CONTINUE"
    ahead.status, behind.status, late.status = Trial.TERMINATED, Trial.PAUSED, Trial.PAUSED
    assert scheduler.choose_trial_to_run(controller) is late


def test_pbt_members_restarted_from_their_checkpoints_go_on_training(tmp_path: Path) -> None:
    """Seen in CI (2026-12-04): a resumed PBT search (2 members, 6 epochs) restarted both members from
    their epoch-5 checkpoints over 300 times each and trained nothing more. A member restarted from
    its own checkpoint re-sends that epoch's report (a kill may have cut it: automl.tune_report). An
    exploit had copied the point the member was at, the re-sent report met the synchronisation point
    again as if new, and each member was paused to restart from the same file, in turn, for ever.

    The members here act as trials do: a report carries a checkpoint (PBT), a paused member restarts
    from the checkpoint Ray gives it: its own (re-sending that epoch) or, after an exploit, the other's."""
    from ray import tune
    from ray.train._internal.session import _TrainingResult
    from ray.tune.experiment import Trial

    scheduler, controller, members, metric = _population(2)
    score = {0: 0.40, 1: 0.30}  # member 0 is the better one: member 1 exploits it
    todo: dict[int, list[int]] = {0: [4, 5, 6], 1: [3, 4, 5, 6]}  # the resumed members re-send epochs 4 and 3
    restarts = 0

    def report(i: int) -> str:
        trial, epoch = members[i], todo[i].pop(0)
        folder = tmp_path / f"member{i}_epoch{epoch}_{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        # what Ray records of a report with a checkpoint (Ray's exploit sets the same field)
        trial.run_metadata.checkpoint_manager._latest_checkpoint_result = _TrainingResult(
            checkpoint=tune.Checkpoint.from_directory(str(folder)), metrics={"epoch": epoch})
        decision = scheduler.on_trial_result(controller, trial, {"epoch": epoch, metric: score[i] + epoch / 100})
        if decision == "PAUSE":
            trial.status = Trial.PAUSED
        elif trial.status == Trial.RUNNING and not todo[i]:
            trial.status = Trial.TERMINATED
        return decision

    def restart(trial: Trial) -> None:
        nonlocal restarts
        restarts += 1
        i = members.index(trial)
        owner, epoch = Path(trial.checkpoint.path).name.split("_")[:2]
        epoch = int(epoch.removeprefix("epoch"))
        own = owner == f"member{i}"
        todo[i] = list(range(epoch if own else epoch + 1, 7))  # its own: that epoch's report again
        trial.status = Trial.RUNNING

    assert report(0) == "PAUSE"  # at the point (a fresh scheduler's first), member 1 is not
    assert report(1) != "CONTINUE" and members[1].status == Trial.PAUSED  # the point met: member 1 exploits 0
    for _ in range(40):
        if all(t.status == Trial.TERMINATED for t in members):
            break
        running = [t for t in members if t.status == Trial.RUNNING]
        if not running:
            nxt = scheduler.choose_trial_to_run(controller)
            assert nxt is not None, "nobody runs and nobody is chosen: the search hangs"
            restart(nxt)
            continue
        report(members.index(running[0]))
    assert [t.status for t in members] == [Trial.TERMINATED] * 2, f"after {restarts} restarts: {todo}"
    assert restarts <= 6


def test_a_budget_flag_sizes_the_search_over_the_files_trial_count() -> None:
    """--budget 4 with a settings file that says automl_max_recommendations: 3: flags win, so the epoch
    budget sizes the search (the file's trial count was kept and the flag ignored without a word)."""
    settings = {"automl_max_recommendations": 3, "automl_max_epochs": 2}
    with pytest.warns(SettingsWarning, match="is not used: --budget sizes the search"):
        s = options_from_settings(settings, {"budget": 4.0}).search
    assert s.max_trials is None and s.budget == 4.0 and s.budgeted
    assert options_from_settings(settings, {"budget": 4.0, "max_trials": 5}).search.max_trials == 5  # both flags: as given
    assert options_from_settings(settings, {}).search.max_trials == 3


def test_what_the_command_line_overrules_in_a_settings_file_is_said(tmp_path: Path) -> None:
    """A file's trial count under --budget, and its parameter list under --only, went without a word;
    --recheck was ignored under PBT and grid; a loss maximised was not questioned."""
    import warnings

    path = tmp_path / "automl.yaml"
    path.write_text("automl_max_recommendations: 6\nautoml_hyperparameters: [train.optim.lr, train.optim.momentum]\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opts = options_from_settings(load_settings(path), {"budget": 3, "only": ["train.optim.lr"]})
    said = [str(w.message) for w in caught if issubclass(w.category, SettingsWarning)]
    assert opts.search.max_trials is None and list(opts.search.only) == ["train.optim.lr"]
    assert "settings file: automl_max_recommendations is not used: --budget sizes the search" in said, said
    assert ("settings file: automl_hyperparameters (train.optim.lr, train.optim.momentum) is replaced by the command "
            "line's (train.optim.lr)") in said, said
    for algorithm in ("pbt", "grid"):
        with pytest.raises(SettingsError, match=f"^--recheck needs a sampled search .*{algorithm} is sized by"):
            options_from_settings(None, {"algorithm": algorithm, "recheck": True}, {"recheck": "--recheck"})
    with pytest.warns(SettingsWarning, match="maximises val_loss"):
        options_from_settings(None, {"metric": "val_loss", "mode": "max"})


def test_a_metric_no_training_reports_is_refused_before_any_trial():
    """`--metric foo` passed the dry run; the search then died in Ray's check of the first report
    (two tracebacks), left RUNNING, and `automl resume` died the same way."""
    for name, hint in (("val_mIoU", "; did you mean 'val_miou'?"), ("foo", "")):
        with pytest.raises(SearchError) as refused:
            SearchOptions.build({"metric": name}, results_dir="r")
        assert str(refused.value).endswith(f"metric {name!r} is not one a training reports; valid: val_miou, val_macc, "
                                           f"val_aacc, val_loss{hint}"), str(refused.value)
    assert SearchOptions.build({"metric": "val_loss", "mode": "min"}, results_dir="r").search.metric == "val_loss"


def test_a_negative_seed_is_refused_by_name():
    """`--seed -1` ended in numpy's "Seed must be between 0 and 2**32 - 1", naming no flag."""
    with pytest.raises(SearchError, match=r"seed must be an integer >= 0, got -1"):
        SearchOptions.build({"seed": -1}, results_dir="r")
