"""The epoch budget, what it searches first, and the re-check before promotion (`automl.budget`).

The unit tests read the real schema of our skill; the search at the end is a real one (local Ray,
sqlite MLflow, the real train and evaluate actions) on a tiny synthetic dataset.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import pytest
from searchhelpers import search_options

from automl.budget import centre, plan_budget, prioritise, verdict
from automl.options import SearchOptions
from automl.space import build_space
from automl.state import FINISHED, KILLED, SearchState, TrialRecord

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "schemas" / "segformer" / "train.schema.json"


def _search(**values):
    return SearchOptions.build({"max_epochs": 20, **values}).search


def test_budget_in_trainings_of_the_spec() -> None:
    """10 trainings of a 20-epoch spec: 200 epochs, 40 kept for the re-check; full trainings by
    default, rungs from 2 epochs under asha."""
    full = plan_budget(_search(), spec_epochs=20, validation_interval=1, seed=7)
    assert (full.total, full.recheck, full.search, full.first_rung, full.seed) == (200, 40, 160, 20, 7)
    assert "budget 200 epochs (10 trainings of 20 epochs; 40 of the epochs for the re-check)" in full.text()
    assert full.configurations(3) == 1 + (160 - 20) // 20  # the baseline and 7 others
    # successive halving affords many more configurations than full trainings would
    asha = plan_budget(_search(algorithm="asha"), 20, 1, 0)
    assert asha.first_rung == 2 and asha.configurations(3) >= 3 * full.configurations(3)
    # the first rung is a validated epoch; a small budget keeps nothing back for a re-check
    assert plan_budget(_search(algorithm="asha"), 20, 5, 0).first_rung == 5
    small = plan_budget(_search(budget=3), 20, 1, 0)
    assert small.recheck == 0 and small.search == 60 and "no re-check" in small.text()
    assert plan_budget(_search(recheck=False), 20, 1, 0).recheck == 0
    # --max-epochs 5 on a 50-epoch spec: --budget 3 is 150 epochs, 30 trials of 5, room for the re-check
    short = plan_budget(SearchOptions.build({"max_epochs": 5, "budget": 3}).search, 50, 1, 0)
    assert (short.total, short.trial_epochs, short.recheck) == (150, 5, 10)
    one = plan_budget(SearchOptions.build({"max_epochs": 1, "budget": 3}).search, 1, 1, 0)  # a 1-epoch spec
    assert "budget 3 epochs (3 trainings of 1 epoch; no re-check)" in one.text()
    assert "budget 1 epoch (1 training of 1 epoch; no re-check)" in plan_budget(
        SearchOptions.build({"max_epochs": 1, "budget": 1}).search, 1, 1, 0).text()  # not "1 trainings"
    # epoch_multiplier 2 (TAO's resource unit): rungs at multiples of 2 epochs (the first was at epoch 1)
    units = plan_budget(SearchOptions.build({"algorithm": "asha", "max_epochs": 3, "epoch_multiplier": 2, "budget": 3}).search,
                        4, 1, 0)
    assert (units.trial_epochs, units.first_rung) == (6, 2)
    assert plan_budget(SearchOptions.build({"algorithm": "asha", "max_epochs": 9, "epoch_multiplier": 2}).search,
                       18, 3, 0).first_rung == 6  # and at validated epochs


def _spec(lr: float = 0.002, momentum: float = 0.9) -> dict:
    return {"train": {"optim": {"lr": lr, "weight_decay": 0.01, "momentum": momentum}},
            "dataset": {"segment": {"augmentation": {"random_flip": {"enable": True, "hflip_probability": 0.5}}}}}


def test_small_budgets_search_the_optimizer_first_around_the_spec() -> None:
    spec = _spec()
    space = centre(build_space(SCHEMA, spec=spec), spec, custom={})
    lr = space["train.optim.lr"]
    assert lr.log and lr.low == pytest.approx(0.002 / 10**1.5) and lr.high == pytest.approx(0.01)  # x/31.6 .. x31.6, inside the schema's 0.01
    assert "centred on the spec's 0.002 (x/31.6 .. x31.6)" in lr.source
    decay = space["train.optim.weight_decay"]
    assert decay.low == pytest.approx(0.01 / 10**1.5) and decay.high == pytest.approx(0.1)  # x31.6 is past the schema's 0.1
    momentum = space["train.optim.momentum"]
    assert momentum.low == pytest.approx(0.8525) and momentum.high == pytest.approx(0.9475)  # 0.9 +/- (0.99-0.8)/4
    small = prioritise(space, configurations=30)
    assert [p.name for p in small] == ["train.optim.lr", "train.optim.weight_decay"]
    assert any("held at the spec's values" in note and "random_flip.hflip_probability" in note for note in small.notes)
    assert len(prioritise(space, configurations=12 * len(space))) == len(space)  # a large budget searches them all
    # what the user adds is searched whatever the budget, with the parent its sampling depends on
    kept = prioritise(space, configurations=30, keep=("dataset.segment.augmentation.random_flip.hflip_probability",))
    assert {"dataset.segment.augmentation.random_flip.hflip_probability",
            "dataset.segment.augmentation.random_flip.enable"} <= {p.name for p in kept}
    # ranges the user gave are kept as given
    custom = {"train.optim.lr": {"valid_min": 1e-4, "valid_max": 1e-3}}
    given = build_space(SCHEMA, spec=spec, param_ranges=custom)
    assert centre(given, spec, custom=custom)["train.optim.lr"].high == pytest.approx(1e-3)


def test_the_search_starts_with_points_spread_over_the_space() -> None:
    """Space-filling start (scrambled Sobol): 4 points put one value in each quarter of every
    searched range (log scale here), where random draws cluster by chance; --dry-run shows a prefix."""
    from automl.algorithms import startup_count, startup_points

    spec = _spec()
    space = prioritise(centre(build_space(SCHEMA, spec=spec), spec, custom={}), configurations=8)
    points = startup_points(space, 4, seed=0)
    for name in ("train.optim.lr", "train.optim.weight_decay"):
        p = space[name]
        span = math.log(p.high) - math.log(p.low)
        assert sorted(int(4 * (math.log(x[name]) - math.log(p.low)) / span) for x in points) == [0, 1, 2, 3], name
    assert startup_points(space, 2, seed=0) == points[:2]
    assert startup_points(space, 4, seed=1) != points  # the search's seed draws another scramble
    # half of what the budget affords (10 trainings of 20 epochs: the baseline and 7 others), at least 3
    opts = SearchOptions.build({"max_epochs": 20})
    assert startup_count(opts, plan_budget(opts.search, 20, 1, 0)) == 4
    assert startup_count(SearchOptions.build({"max_trials": 4})) == 3


def _enqueued(plan) -> list[dict]:
    """The points the plan's Optuna searcher starts with (under Ray's and the budget's wrappers)."""
    searcher = plan.search_alg
    while not hasattr(searcher, "_points_to_evaluate"):
        searcher = searcher.searcher
    return searcher._points_to_evaluate


def test_hyperband_spreads_every_configuration_it_affords_and_random_stays_random(tmp_path) -> None:
    """HyperBand is random search under early stopping: its configurations after the baseline are
    the scrambled Sobol points (as many as the budget affords), so its first few cover each range
    where independent draws may cluster near the spec's value. `random` keeps independent draws."""
    from automl.algorithms import build_search, spread_count, startup_points

    spec = _spec()
    space = prioritise(centre(build_space(SCHEMA, spec=spec), spec, custom={}), configurations=8)
    baseline = space.baseline(spec)
    enqueued = {}
    for algorithm in ("hyperband", "hyperband_es", "random", "bayesian"):
        opts = SearchOptions.build({"algorithm": algorithm, "max_epochs": 20, "seed": 0, "max_concurrent": 2},
                                   results_dir=str(tmp_path / algorithm))
        budget = plan_budget(opts.search, 20, 1, 0)
        enqueued[algorithm] = _enqueued(build_search(opts, space, baseline, budget))
        assert enqueued[algorithm][0] == space.encode(baseline)
        if algorithm.startswith("hyperband"):
            count = spread_count(opts, budget)
            assert count == budget.configurations(opts.search.reduction_factor) > 8
            assert len(enqueued[algorithm]) == 1 + count
    assert enqueued["hyperband"] == enqueued["hyperband_es"]
    assert len(enqueued["random"]) == 1  # the baseline only
    spread = [space.encode(p) for p in startup_points(space, len(enqueued["hyperband"]) - 1, seed=0)]
    assert enqueued["hyperband"][1:] == spread
    assert enqueued["bayesian"][1:] == spread[:len(enqueued["bayesian"]) - 1]  # TPE starts from a prefix of the same


def _record(name: str, value: float, *, baseline: bool = False, of: str | None = None) -> TrialRecord:
    return TrialRecord(trial_id=name, name=name, params={}, status=FINISHED, best_value=value, best_epoch=4,
                       history=[{"epoch": 4, "val_miou": value}], is_baseline=baseline, recheck_of=of)


def _state(tmp_path: Path, baseline: tuple[float, float], leader: tuple[float, float], other: float = 0.5) -> SearchState:
    state = SearchState(results_dir=str(tmp_path), skill="segformer", algorithm="asha", metric="val_miou", mode="max",
                        settings={}, baseline_params={})
    for record in (_record("trial_000", baseline[0], baseline=True), _record("trial_001", leader[0]),
                   _record("trial_002", other), _record("trial_003", leader[1], of="trial_001"),
                   _record("trial_004", baseline[1], of="trial_000")):
        state.trials[record.trial_id] = record
    return state


def test_the_recheck_promotes_only_a_gain_above_the_noise(tmp_path: Path) -> None:
    # beats the baseline on both seeds, by more on the fresh seed (0.04) than the gain moved (0.02 / sqrt 2)
    state = _state(tmp_path, baseline=(0.60, 0.61), leader=(0.66, 0.65))
    v = verdict(state)
    assert v["confirmed"] and v["promoted"] == "trial_001" and v["gain"] == pytest.approx(0.05)
    assert v["recheck_gain"] == pytest.approx(0.04) and v["gain_noise"] == pytest.approx(0.02 / math.sqrt(2))
    assert v["gain_stderr"] == pytest.approx(0.01)  # |0.06 - 0.04| / 2
    assert v["seed_noise"] == pytest.approx(math.sqrt((0.01**2 + 0.01**2) / 4))
    # a seed that is bad for both configurations cancels out of the paired gains
    shifted = verdict(_state(tmp_path, baseline=(0.60, 0.50), leader=(0.64, 0.53)))
    assert shifted["confirmed"] and shifted["gain_stderr"] == pytest.approx(0.005) and shifted["seed_noise"] > 0.07
    # re-checks are never ranked: the search's best is the leader, not its re-check
    assert [t.name for t in state.ranked()] == ["trial_001", "trial_000", "trial_002"]
    # the lead did not survive another seed: the winner's curse, the baseline is promoted
    for leader in ((0.64, 0.61), (0.64, 0.62)):
        cursed = verdict(_state(tmp_path, baseline=(0.60, 0.62), leader=leader))
        assert not cursed["confirmed"] and "re-check seed" in cursed["reason"]
        # the spec's configuration is promoted: the better of its two trainings on the validation split
        assert cursed["configuration"] == "trial_000" and cursed["promoted"] == "trial_004"
        assert cursed["gain"] <= cursed["gain_stderr"]
    # ahead on both seeds, but by less on the fresh one (0.004) than the gain moved between them
    # (0.026 / sqrt 2): within the noise, the baseline is promoted and the reason says so
    small = verdict(_state(tmp_path, baseline=(0.600, 0.600), leader=(0.630, 0.604)))
    assert not small["confirmed"] and small["configuration"] == "trial_000" and "within the noise" in small["reason"]
    assert small["gain"] > small["gain_stderr"]  # the old rule (mean gain above its standard error) would have promoted it
    # the baseline led the search: the runner-up was re-checked, the better of the baseline's two trainings
    # is promoted, and the reason says the baseline led (not that a lead failed to hold)
    led = verdict(_state(tmp_path, baseline=(0.62, 0.63), leader=(0.60, 0.64)))
    assert led["baseline_led"] and not led["confirmed"] and led["promoted"] == "trial_004"
    assert led["reason"].startswith("the baseline led the search: trial_001") and "+0.0100 on the re-check seed" in led["reason"]
    assert not cursed["baseline_led"]
    # no re-check ran (no budget for it): no verdict, the ranking decides
    state = _state(tmp_path, baseline=(0.7, 0.7), leader=(0.6, 0.6))
    for name in ("trial_003", "trial_004"):
        del state.trials[name]
    assert verdict(state) is None


def test_the_recheck_compares_where_trainings_settled_not_their_peaks(tmp_path: Path) -> None:
    """A high-lr leader whose curve swings: its peak epoch beats the baseline on both seeds, but over
    the last quarter of the epochs it does not; the baseline is promoted, its better training by the
    best epoch (the checkpoint handed over), and the summary says what was compared."""
    from automl.budget import settled
    from automl.console import summary

    def curve(name: str, values: list[float], **kw) -> TrialRecord:
        history = [{"epoch": e + 1, "val_miou": v} for e, v in enumerate(values)]
        best = max(values)
        return TrialRecord(trial_id=name, name=name, params={}, status=FINISHED, history=history, best_value=best,
                           best_epoch=values.index(best) + 1, is_baseline=kw.get("baseline", False), recheck_of=kw.get("of"))

    steady = [0.50, 0.60, 0.66, 0.68, 0.69, 0.69, 0.70, 0.69]  # settles at 0.6925 (the last 2 of 8)
    spiky = [0.40, 0.55, 0.71, 0.62, 0.72, 0.63, 0.68, 0.66]  # peaks at 0.72, settles at 0.67
    state = SearchState(results_dir=str(tmp_path), skill="segformer", algorithm="bayesian", metric="val_miou", mode="max",
                        settings={}, baseline_params={})
    for record in (curve("trial_000", steady, baseline=True), curve("trial_001", spiky),
                   curve("trial_002", [0.5] * 8), curve("trial_003", [v + 0.005 for v in spiky], of="trial_001"),
                   curve("trial_004", [v - 0.001 for v in steady], of="trial_000")):
        state.trials[record.trial_id] = record
    assert settled(state.trials["trial_000"], "val_miou") == pytest.approx(0.695)
    assert settled(curve("x", [0.3]), "val_miou") == 0.3 and settled(curve("y", [0.1, 0.2, 0.3, 0.4, 0.5]), "val_miou") == pytest.approx(0.45)
    assert state.ranked()[0].name == "trial_001"  # the search ranks by the best epoch: the spiky curve leads
    v = verdict(state)
    assert v["leader_values"] == pytest.approx([0.67, 0.675]) and v["baseline_values"] == pytest.approx([0.695, 0.694])
    assert not v["confirmed"] and not v["baseline_led"] and v["configuration"] == "trial_000" and v["promoted"] == "trial_000"
    assert v["basis"] == "the mean of the last 2 of 8 validations" and "peak of a noisy curve" in v["reason"]
    state.recheck = v
    assert "over 2 seeds (the mean of the last 2 of 8 validations): gain -0.0220" in summary(state)
    # the same curves without the swing: the leader's level is ahead on both seeds, and it is confirmed
    state.trials["trial_001"] = curve("trial_001", [v + 0.03 for v in steady])
    state.trials["trial_003"] = curve("trial_003", [v + 0.03 for v in steady], of="trial_001")
    assert verdict(state)["confirmed"] and "about as good" not in verdict(state)["reason"]
    # ... and by a hair on both seeds (gains that agree, so a gain noise near 0): confirmed, and the
    # reason says the gain is below one training's seed noise
    state.trials["trial_001"] = curve("trial_001", [v + 0.0001 for v in steady])
    state.trials["trial_003"] = curve("trial_003", [v + 0.0001 - 0.01 for v in steady], of="trial_001")
    state.trials["trial_004"] = curve("trial_004", [v - 0.01 for v in steady], of="trial_000")
    hair = verdict(state)
    assert hair["confirmed"] and hair["recheck_gain"] == pytest.approx(0.0001, abs=1e-9)
    assert hair["seed_noise"] == pytest.approx(0.01 / 2 ** 0.5)  # the pooled SD of one training over the two seeds
    assert "smaller than one training's seed-to-seed SD (0.0071): the two configurations are about as good" in hair["reason"]
    state.trials["trial_003"] = curve("trial_003", [v + 0.03 for v in steady], of="trial_001")
    state.trials["trial_004"] = curve("trial_004", [v - 0.001 for v in steady], of="trial_000")
    # a leader the budget cut after 4 epochs is compared with the baseline's first 4 epochs, not its end
    state.trials["trial_001"] = curve("trial_001", [v + 0.03 for v in steady[:4]])
    cut = verdict(state)
    assert cut["leader_values"][0] == pytest.approx(0.71) and cut["baseline_values"][0] == pytest.approx(0.68)
    assert cut["confirmed"] and cut["basis"] == "the mean of the last 1 of 4 validations on the search's seed, the last 2 of 8 on the re-check seed"
    # the baseline led the search at its best epoch: its configuration is kept even where the
    # runner-up settled higher on both seeds
    state.trials["trial_001"] = curve("trial_001", [0.5] * 6 + [0.69, 0.69])
    state.trials["trial_003"] = curve("trial_003", [0.5] * 6 + [0.69, 0.69], of="trial_001")
    state.trials["trial_000"] = curve("trial_000", [0.5] * 6 + [0.71, 0.60], baseline=True)
    state.trials["trial_004"] = curve("trial_004", [0.5] * 6 + [0.71, 0.60], of="trial_000")
    kept = verdict(state)
    assert min(g - b for g, b in zip(kept["leader_values"], kept["baseline_values"])) > 0
    assert kept["baseline_led"] and not kept["confirmed"] and kept["configuration"] == "trial_000"


def test_the_test_line_names_what_the_baseline_was_compared_with() -> None:
    """When the baseline's configuration is promoted, the summary's test line sets the re-checked
    trial against it: "leader" when that trial led the search, "runner-up" when the baseline did."""
    from automl.finals import final_lines

    both = {"trials": ["trial_000", "trial_009"], "test_miou": [0.60, 0.61], "mean": 0.605}
    final = {"promoted": both, "baseline": both, "leader": {"trials": ["trial_004", "trial_008"], "test_miou": [0.6, 0.6], "mean": 0.6},
             "test_miou": {"trial_000": 0.60, "trial_009": 0.61, "trial_004": 0.6, "trial_008": 0.6}}
    led = final_lines(final, {"baseline_led": True, "confirmed": False})
    assert led == ["  test     runner-up trial_004 mIoU 0.6000 vs baseline trial_000 0.6050 (-0.0050) on the untouched "
                   "test split (means of 2 and 2 seeds)",
                   "  test     the promoted model itself, trial_000 (best/): mIoU 0.6000"]  # its own score, not the mean
    # its own scoring failed: the other seed's score is not given as its own
    failed = {**final, "promoted": {**both, "test_miou": [0.61]}, "test_miou": {"trial_009": 0.61, "trial_004": 0.6, "trial_008": 0.6}}
    assert not any("the promoted model itself" in line for line in final_lines(failed, {"baseline_led": True}))
    assert final_lines(final, {"baseline_led": False})[0].startswith("  test     leader trial_004 ")
    # a deploy-aware search that chose int8: the scores are the float weights', and the line says so
    assert final_lines(final, {"baseline_led": False}, "int8")[-1] == (
        "  test     these are the float weights' scores; best/ deploys the int8 model, which `segformer evaluate -e "
        "best/experiment.yaml` scores")


def test_the_test_line_says_when_the_compared_trainings_ran_different_epochs() -> None:
    """A multi-fidelity search can stop the baseline at its first rung and still compare its test
    score with the promoted model's full training; the summary says so (a walkthrough's bohb search
    set a 1-epoch baseline beside a 2-epoch winner without a word)."""
    from automl.finals import final_lines

    final = {"promoted": {"trials": ["trial_002"], "test_miou": [0.36], "mean": 0.36, "epochs": [2]},
             "baseline": {"trials": ["trial_000"], "test_miou": [0.35], "mean": 0.35, "epochs": [1]},
             "test_miou": {"trial_002": 0.36, "trial_000": 0.35}}
    lines = final_lines(final)
    assert lines[-1] == ("  test     NOTE: these trainings ran different numbers of epochs (trial_002 2, trial_000 1; "
                         "the shorter ones were stopped early), so a shorter training's score stands beside a "
                         "longer one's")
    even = {**final, "baseline": {**final["baseline"], "epochs": [2]}}
    assert not any("NOTE" in line for line in final_lines(even))
    legacy = {role: {k: v for k, v in group.items() if k != "epochs"} if isinstance(group, dict) and "trials" in group
              else group for role, group in final.items()}  # a ledger written before the epochs were kept
    assert not any("NOTE" in line for line in final_lines(legacy))


def test_the_rechecks_trainings_keep_to_max_concurrent(tmp_path: Path) -> None:
    """--max-concurrent 1: the search's own trials ran one at a time (the inner ConcurrencyLimiter), but
    the re-check's two trainings, proposed by the budget's searcher, ran at once on a 2-core machine."""
    from optuna.distributions import FloatDistribution
    from ray.tune.search import ConcurrencyLimiter, Searcher
    from ray.tune.search.optuna import OptunaSearch

    from automl.algorithms import _budget_plan
    from automl.budget import EpochBudget

    budget = EpochBudget(trainings=5, spec_epochs=4, trial_epochs=4, recheck=8, first_rung=4, seed=0)
    inner = OptunaSearch(space={"train.optim.lr": FloatDistribution(1e-5, 1e-2, log=True)}, metric="val_miou", mode="max", seed=0)
    opts = search_options(tmp_path, tmp_path / "spec.yaml", max_concurrent=1, budget=5)
    searcher = _budget_plan(opts, ConcurrencyLimiter(inner, max_concurrent=1), None, budget).search_alg
    searcher.searching, searcher.queue = False, [{"recheck": "leader"}, {"recheck": "baseline"}]
    assert searcher.suggest("trial_005") == {"recheck": "leader"}
    assert searcher.suggest("trial_006") is None  # one at a time
    searcher.on_trial_complete("trial_005", result={"val_miou": 0.5})
    assert searcher.suggest("trial_006") == {"recheck": "baseline"}
    searcher.on_trial_complete("trial_006", result={"val_miou": 0.5})
    assert searcher.suggest("trial_007") == Searcher.FINISHED


def test_proposed_trials_not_started_yet_hold_their_epochs(tmp_path: Path) -> None:
    """A full CI run trained 21 of a budget's 20 epochs: a trial proposed while another proposed one
    had not started yet (in no ledger) was granted the same epochs. A proposal not started counts,
    and like a running one (full trainings: nothing stops it early but the budget), with all the
    epochs of its training."""
    from optuna.distributions import FloatDistribution
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from automl.budget import EpochBudget, BudgetSearcher, committed
    from automl.callbacks import LiveSearch, bind

    budget = EpochBudget(trainings=5, spec_epochs=4, trial_epochs=4, recheck=8, first_rung=4, seed=0)  # a share of 12
    state = SearchState(results_dir=str(tmp_path), skill="segformer", algorithm="bayesian", metric="val_miou",
                        mode="max", settings={}, baseline_params={})
    for record in (_record("trial_000", 0.5, baseline=True), _record("trial_001", 0.6)):  # 8 epochs trained
        state.trials[record.trial_id] = record
    inner = OptunaSearch(space={"train.optim.lr": FloatDistribution(1e-5, 1e-2, log=True)}, metric="val_miou", mode="max", seed=0)
    searcher = BudgetSearcher(ConcurrencyLimiter(inner, max_concurrent=2), str(tmp_path), budget, None, "val_miou", "max")
    with bind(LiveSearch(state=state, tracker=None, epochs=4)):
        assert committed(state, budget) == 8
        assert isinstance(searcher.suggest("trial_002"), dict)  # 8 + its 4 fit the 12
        assert committed(state, budget, starting=1) == 12  # Ray has not started it: its training is held
        assert searcher.suggest("trial_003") is None  # 8 + 4 + 4 would overrun
        state.trials["trial_002"] = dataclasses.replace(_record("trial_002", 0.55), status="RUNNING", history=[])
        assert searcher.suggest("trial_003") is None  # still 12 committed: trial_002's training
        state.trials["trial_002"].status = FINISHED  # it ended without a report (stopped at once, failed)
        assert isinstance(searcher.suggest("trial_003"), dict)
        # A trial running when the driver was stopped (KILLED in the ledger) is restarted by `automl
        # resume`: like a new one, it trains to its first report before any check; it holds that too.
        searcher.on_trial_complete("trial_002", result={"val_miou": 0.55})  # a free slot: only the budget can refuse
        state.trials["trial_003"] = dataclasses.replace(_record("trial_003", 0.5), status=KILLED, history=[])
        assert searcher.suggest("trial_004") is None  # 8 + 4 + 4
        state.trials["trial_003"].status = "RUNNING"  # started again: its next report is counted as any running trial's
        assert searcher.suggest("trial_004") is None
        state.trials["trial_003"].status = FINISHED
        assert isinstance(searcher.suggest("trial_004"), dict)
        # The scheduler's side: a running trial's next epoch is refused when it would take the epochs
        # of a trial Ray holds pending (not started, or restarted after the resume).
        from ray.tune.experiment import Trial
        from ray.tune.schedulers import TrialScheduler

        from automl.budget import BudgetFIFO

        class Controller:  # what Ray hands a scheduler: the trials, here two of them (Ray's own objects)
            def __init__(self, *trials: Trial) -> None:
                self.trials = list(trials)

            def get_trials(self) -> list[Trial]:
                return self.trials

        scheduler = BudgetFIFO(str(tmp_path), budget)
        running = Trial("train_trial", config={}, trial_id="trial_002", stub=True)
        restarted = Trial("train_trial", config={}, trial_id="trial_003", stub=True)  # PENDING in Ray, KILLED in the ledger
        state.trials["trial_002"] = dataclasses.replace(_record("trial_002", 0.55), status="RUNNING", history=[{"epoch": 1}])
        state.trials["trial_003"].status = KILLED
        # 8 + trial_002's 2 and its last 2 + trial_003's 4 = 16: over; with none pending, 12 fits
        assert scheduler.on_trial_result(Controller(running, restarted), running, {"epoch": 2}) == TrialScheduler.STOP
        assert scheduler.on_trial_result(Controller(running), running, {"epoch": 2}) == TrialScheduler.CONTINUE
        state.trials["trial_002"].history = [{"epoch": 1}, {"epoch": 2}]
        # the baseline's own remaining epochs are reserved in full whether it runs, waits or was killed
        state.trials["trial_000"] = dataclasses.replace(state.trials["trial_000"], status=KILLED, history=[{"epoch": 2}])
        assert committed(state, budget) == (2 + 4 + 2) + 2 + 2  # trained; trial_002's last 2; the baseline's last 2


def test_more_slots_than_the_budget_can_finish_start_only_full_trainings(tmp_path: Path) -> None:
    """16 slots, a budget of 10 trainings of 10 epochs: the search's share (80 epochs) finishes 8
    trainings, so 8 start, the baseline among them, and the others wait; each training is held
    whole. Counting only each trial's next report, 12 started at once, the budget cut 11 of them at
    epoch 6 or 7 of 10 (their learning rate not yet decayed: a ranking of half-trained models), and
    Ray's trial count was used up before the re-check."""
    from optuna.distributions import FloatDistribution
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from automl.algorithms import _budget_plan
    from automl.budget import BASELINE, BudgetSearcher, EpochBudget, committed
    from automl.callbacks import LiveSearch, bind

    budget = EpochBudget(trainings=10, spec_epochs=10, trial_epochs=10, recheck=20, first_rung=10, seed=0)
    baseline = {"train.optim.lr": 1e-3}
    state = SearchState(results_dir=str(tmp_path), skill="segformer", algorithm="bayesian", metric="val_miou",
                        mode="max", settings={}, baseline_params=baseline, budget=dataclasses.asdict(budget))
    inner = OptunaSearch(space={"train.optim.lr": FloatDistribution(1e-5, 1e-2, log=True)}, metric="val_miou", mode="max",
                         seed=0, points_to_evaluate=[baseline])
    searcher = BudgetSearcher(ConcurrencyLimiter(inner, max_concurrent=16), str(tmp_path), budget, baseline, "val_miou", "max")
    with bind(LiveSearch(state=state, tracker=None, epochs=10)):
        proposals = [searcher.suggest(f"t{i}") for i in range(16)]
        started = [p for p in proposals if isinstance(p, dict)]
        assert len(started) == 8 and sum(bool(p.get(BASELINE)) for p in started) == 1
        assert committed(state, budget, starting=7) == budget.search  # 7 held whole, the baseline reserved
    opts = search_options(tmp_path / "r", tmp_path / "spec.yaml", budget=10)
    assert _budget_plan(opts, searcher, baseline, budget).num_samples >= 8 + 2 + 8  # failures cannot starve the re-check


def test_a_budget_of_one_training_trains_the_baseline(tmp_path: Path) -> None:
    """--budget 1 (or 1.5): the baseline alone. Its epochs, reserved for it already, were asked for
    again before it could start, and the search trained nothing."""
    from optuna.distributions import FloatDistribution
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from automl.budget import BASELINE, BudgetSearcher, EpochBudget
    from automl.callbacks import LiveSearch, bind

    baseline = {"train.optim.lr": 1e-3}
    for trainings in (1, 1.5):
        small = EpochBudget(trainings=trainings, spec_epochs=10, trial_epochs=10, recheck=0, first_rung=10, seed=0)
        state = SearchState(results_dir=str(tmp_path), skill="segformer", algorithm="bayesian", metric="val_miou",
                            mode="max", settings={}, baseline_params=baseline, budget=dataclasses.asdict(small))
        inner = OptunaSearch(space={"train.optim.lr": FloatDistribution(1e-5, 1e-2, log=True)}, metric="val_miou",
                             mode="max", seed=0, points_to_evaluate=[baseline])
        searcher = BudgetSearcher(ConcurrencyLimiter(inner, max_concurrent=16), str(tmp_path), small, baseline, "val_miou", "max")
        with bind(LiveSearch(state=state, tracker=None, epochs=10)):
            proposals = [searcher.suggest(f"s{i}") for i in range(3)]
        assert isinstance(proposals[0], dict) and proposals[0].get(BASELINE) and proposals[1:] == [None, None]


def test_epochs_after_a_trials_last_validation_count(tmp_path: Path) -> None:
    """train.validation_interval 3 and 7 epochs: a trial reports epochs 3 and 6 and trains the 7th
    after its last report. The ledger counted 6 per trial, so a budget of 70 epochs trained 76 (by the
    trials' status.json): a ninth training started on epochs that were already spent."""
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler

    from automl.budget import BASELINE, FULL, BudgetFIFO, EpochBudget, committed
    from automl.callbacks import LedgerCallback, LiveSearch, bind
    from automl.console import budget_text

    budget = EpochBudget(trainings=10, spec_epochs=7, trial_epochs=7, recheck=14, first_rung=7, seed=0, step=3)
    state = SearchState(results_dir=str(tmp_path), skill="segformer", algorithm="bayesian", metric="val_miou",
                        mode="max", settings={}, baseline_params={}, budget=dataclasses.asdict(budget))
    state.save()
    trials = [Trial("train_trial", config={BASELINE: True, FULL: True} if i == 0 else {}, trial_id=f"t{i}", stub=True)
              for i in range(8)]
    with bind(LiveSearch(state=state, tracker=None, epochs=7)):
        ledger = LedgerCallback(str(tmp_path))
        for i, trial in enumerate(trials):
            ledger.on_trial_start(iteration=0, trials=trials, trial=trial)
            for epoch in (3, 6):
                ledger.on_trial_result(iteration=0, trials=trials, trial=trial, result={"epoch": epoch, "val_miou": 0.5})
            if i < 7:
                ledger.on_trial_complete(iteration=0, trials=trials, trial=trial)  # after its unreported 7th epoch
        assert [t.epochs_trained for t in state.trials.values()] == [7] * 7 + [6]
        # the running one, at its last report, holds the one epoch it has left, not another 3
        assert committed(state, budget) == 7 * 7 + 6 + 1 == budget.search
        scheduler = BudgetFIFO(str(tmp_path), budget)

        class Controller:
            def get_trials(self) -> list:
                return trials

        assert scheduler.on_trial_result(Controller(), trials[7], {"epoch": 6}) == TrialScheduler.CONTINUE
        ledger.on_trial_complete(iteration=0, trials=trials, trial=trials[7])
        assert state.epochs_trained() == 56 and budget_text(state) == "56 of 70 budget epochs"
        assert SearchState.load(tmp_path).epochs_trained() == 56  # `automl status` and resume read the same


def test_a_validation_interval_longer_than_a_trial_is_refused_before_anything_runs(tmp_path: Path) -> None:
    """train.validation_interval 20 on 10 epochs: no trial would validate, so none would report the
    metric the search ranks on, and Ray stopped the search with a traceback from its result check."""
    from automl.options import SearchError
    from automl.runner import _plan
    from automl.skill import find_skill
    from segformer.data.synth import generate

    root = generate(tmp_path / "data", num_classes=3, size=32, train=4, val=2, test=2)
    opts = search_options(tmp_path / "r", root / "spec.yaml", overrides=("train.num_epochs=10", "train.validation_interval=20"))
    with pytest.raises(SearchError, match=r"train.validation_interval is 20, more than the 10 epochs a trial trains.*"
                                          r"set train.validation_interval=10 or less"):
        _plan(opts, find_skill("segformer"))
    assert not (tmp_path / "r").exists()


def test_state_keeps_the_promoted_trial(tmp_path: Path) -> None:
    state = _state(tmp_path, baseline=(0.60, 0.62), leader=(0.64, 0.61))
    assert state.best().name == "trial_001"
    state.best_trial = "trial_000"  # the re-check promoted the baseline
    assert state.best().name == "trial_000"
    assert state.epochs_trained() == 5 * 4


def test_while_promotion_runs_results_name_the_trial_promoted(tmp_path: Path) -> None:
    """The re-check turned the leader down: while the baseline is promoted and scored on the test split
    (minutes, and cut by a kill there), status and results.json name the baseline, not the leader."""
    from automl.runner import finish
    from automl.tracking import Tracker
    from segformer.data.synth import generate

    spec = generate(tmp_path / "data", num_classes=2, size=32, train=2, val=1, test=1) / "spec.yaml"
    state = _state(tmp_path, baseline=(0.60, 0.62), leader=(0.64, 0.61))
    state.spec = str(spec)
    opts = search_options(tmp_path, spec, export=False, quantize=False, trt=False)
    seen: list[str] = []

    def echo(line: str) -> None:
        if line.startswith("automl: final evaluation"):  # the promoted model's test scores (minutes): a Ctrl-C
            seen.append(json.loads((tmp_path / "results.json").read_text())["best"]["trial"])
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finish(opts, state, Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path, "t"), echo=echo)
    assert state.recheck["promoted"] == "trial_004" and seen == ["trial_004"]


@pytest.fixture(scope="module")
def budget_search(tmp_path_factory):
    import automl
    from segformer.data.synth import generate

    root = generate(tmp_path_factory.mktemp("synth") / "data", num_classes=3, size=32, train=8, val=4, test=4)
    results = tmp_path_factory.mktemp("search")
    lines: list[str] = []
    # The defaults with a budget of 5 trainings of a 4-epoch spec; a bad spec lr leaves room to win.
    opts = search_options(results, root / "spec.yaml", overrides=("dataset.segment.batch_size=4",
                          "model.decode_head.decoder_params.embed_dim=32", "train.num_epochs=4", "train.optim.lr=0.0003"),
                          budget=5, num_cpus=2, export=False, quantize=False, trt=False)
    outcome = automl.run(opts, echo=lines.append)
    return outcome, lines, results


def test_a_budgeted_search_keeps_its_budget_and_rechecks(budget_search) -> None:
    outcome, lines, results = budget_search
    state = outcome.state
    assert state.budget["trainings"] == 5 and state.budget["recheck"] == 8
    # every epoch counted from the trials' own status.json, re-checks included: within 5 x 4 epochs
    counted = sum(sum(1 for line in status.read_text().splitlines() if '"epoch"' in line)
                  for status in results.glob("trial_*/train/status.json"))
    assert counted == state.epochs_trained() <= 20
    assert any("budget 20 epochs (5 trainings of 4 epochs; 8 of the epochs for the re-check)" in line for line in lines)
    assert "automl: dataset read: 8/4/4 train/val/test image/mask pairs, no problem found" in lines  # before any trial
    said = [re.match(r"automl: budget (\d+)/20 epochs \((\d+) trained in \d+ s\); about .* left at this pace", line)
            for line in lines]
    assert any(said) and all(m[1] == m[2] for m in said if m), lines  # a fresh search: all of them this driver's
    assert not any("since the resume" in line for line in lines)  # a fresh search, not a resumed one
    baseline = state.baseline()
    assert baseline.epochs_trained == 4  # the reference always trains in full
    # a trial the budget ended early says so; one that trained its epochs has no stop reason
    assert all(t.stopped_by.startswith("budget: ") for t in state.trials.values() if t.status == "STOPPED")
    assert all(t.stopped_by is None for t in state.trials.values() if t.status == "FINISHED")
    searched = {k for t in state.trials.values() for k in t.params}
    assert searched <= {"train.optim.lr", "train.optim.weight_decay", "train.seed"}  # a small budget: the optimizer first
    rechecks = [t for t in state.trials.values() if t.recheck_of]
    leader = next(t for t in state.ranked() if not t.is_baseline)
    # the leader and the baseline train again with the next seed; when the baseline led, the runner-up
    # does (the reserve is spent either way: the spec's configuration gets its second seed)
    assert sorted(t.recheck_of for t in rechecks) == sorted([leader.name, baseline.name])
    assert all(t.params["train.seed"] == 1 and t.epochs_trained == 4 for t in rechecks)  # the synthetic spec's seed + 1
    assert state.recheck["configuration"] in (leader.name, baseline.name)
    assert state.recheck["promoted"] in [state.recheck["configuration"], *(t.name for t in rechecks)]
    assert state.best_trial == state.recheck["promoted"]
    assert "\n  re-check " in "\n".join(lines) and ", on the fresh seed " in "\n".join(lines)
    report = (results / "report" / "report.md").read_text()
    assert f"the gain is {state.recheck['recheck_gain']:+.4f}" in report and state.recheck["reason"] in report
    led = not state.better(leader.best_value, baseline.best_value)
    assert state.recheck["baseline_led"] == led and (not led or not state.recheck["confirmed"])
    # the final evaluation: the promoted model and the baseline on the untouched test split
    final = state.final_evaluation
    assert final["split"] == "test" and 0 <= final["promoted"]["mean"] <= 1 and 0 <= final["baseline"]["mean"] <= 1
    assert (results / "final_evaluation" / baseline.name / "results.json").is_file()
    assert "\n  test     " in "\n".join(lines) and "untouched test split" in "\n".join(lines)
    saved = json.loads((results / "automl_state.json").read_text())
    assert saved["final_evaluation"] == json.loads(json.dumps(final)) and saved["best_trial"] == state.best_trial


def test_mlflow_shows_the_gain_and_the_test_scores(budget_search) -> None:
    from mlflow import MlflowClient

    outcome, _, _ = budget_search
    state = outcome.state
    parent = MlflowClient(state.mlflow_tracking_uri).get_run(state.mlflow_parent_run_id)
    metrics = parent.data.metrics
    assert metrics["epochs_trained"] == state.epochs_trained()
    # the promoted model itself (best/, the champion), not its configuration's mean over two seeds
    promoted = state.final_evaluation["promoted"]
    assert promoted["trials"][0] == state.best_trial
    assert metrics["test_miou_promoted"] == pytest.approx(promoted["test_miou"][0])
    if len(promoted["test_miou"]) > 1:
        assert metrics["test_miou_promoted_mean"] == pytest.approx(promoted["mean"])
    assert ("recheck_gain" in metrics) == ("recheck_fresh_seed_gain" in metrics) == (state.recheck is not None)
    assert parent.data.tags["automl.best_trial"] == state.best_trial
    if state.recheck is not None:  # what the recheck_* metrics compare: where the trainings settled
        assert parent.data.tags["automl.recheck_basis"] == state.recheck["basis"]
        assert parent.data.tags["automl.recheck_basis"].startswith("the mean of the last")


@pytest.mark.slow  # about 2 min on 2 shared cores; CI runs it (make test)
def test_a_budgeted_search_resumes_after_sigkill(tmp_path) -> None:
    """Kill the driver mid-search, resume: the budget's searcher (and its re-check) continue where
    they were, the budget still holds, and no trial is repeated."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from segformer.data.synth import generate

    root = generate(tmp_path / "data", num_classes=3, size=32, train=8, val=4, test=4)
    results = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "automl.cli", "run", "--skill", "segformer", "-e", str(root / "spec.yaml"),
           "--results-dir", str(results), "--budget", "5", "--num-cpus", "2", "--skip-export", "--skip-quantize",
           "--skip-trt", "dataset.segment.batch_size=4", "model.decode_head.decoder_params.embed_dim=32",
           "train.num_epochs=4", "train.optim.lr=0.0003"]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)

    def look() -> tuple[int, set]:
        try:
            state = SearchState.load(results)
        except (FileNotFoundError, ValueError):
            return 0, set()
        return state.epochs_trained(), set(state.trials)

    try:
        # Killed as a trial starts (after 7 epochs; at 11 at the latest): Ray saves its experiment state
        # every 10 s or so, so the new trial is usually one Ray's saved state does not know.
        deadline, seen = time.time() + 240, set()
        while time.time() < deadline:
            epochs, ids = look()
            if epochs >= 11 or (epochs >= 7 and ids - seen):
                break
            seen = ids
            time.sleep(0.05)
        assert look()[0] >= 7, "the search did not train 7 epochs in 240 s"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    time.sleep(3)
    out = subprocess.run([sys.executable, "-m", "automl.cli", "resume", str(results)], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    state = SearchState.load(results)
    assert state.status == FINISHED and state.epochs_trained() <= 20
    names = [t.name for t in state.trials.values()]
    assert len(names) == len(set(names))
    # A trial Ray cannot continue (it started after Ray's last save) is closed when the search resumes,
    # not left RUNNING to the end (where it held back the epochs it was counted for), and the resume
    # says so; the seeded searcher proposes its configuration again, which takes its name over.
    killed = [t for t in state.trials.values() if t.status == KILLED]
    assert all(t.error.startswith("lost:") and t.name in out.stdout for t in killed)
    if "cannot continue" in out.stdout:
        assert killed or "goes on: the searcher proposed its configuration again" in out.stdout
    checks = sorted(t.recheck_of for t in state.trials.values() if t.recheck_of)
    assert checks == ([] if state.recheck is None else sorted([state.recheck["leader"], state.recheck["baseline"]]))
    assert state.final_evaluation["baseline"]["mean"] is not None
