"""hyperband_es's learning-curve check (`automl.curves`): the extrapolation and the stop decision."""

from __future__ import annotations

from types import SimpleNamespace

import pytest


def test_a_saturating_curve_is_extrapolated_to_its_plateau() -> None:
    from automl.curves import extrapolate

    epochs = [1, 2, 3, 4, 5, 6]
    values = [0.8 - 0.5 * t ** -0.7 for t in epochs]  # a power law that ends near 0.8 - 0.5 * 20 ** -0.7
    predicted = extrapolate(epochs, values, 20)
    assert predicted == pytest.approx(0.8 - 0.5 * 20 ** -0.7, abs=0.01)
    assert predicted > values[-1]  # still rising: the fit does not stop at the last point
    assert extrapolate([1, 2], [0.3, 0.4], 20) is None  # too short to fit three parameters
    assert extrapolate([1, 2, 3], [0.5, 0.5, 0.5], 20) is None  # flat so far: nothing to extrapolate


def _scheduler(threshold: float = 0.0):
    from automl.curves import CurveASHA

    # grace_period = max_t: HyperBand's rungs never stop anyone, so every stop below is the curve's.
    return CurveASHA(3, threshold, time_attr="epoch", metric="best_val_miou", mode="max", max_t=20, grace_period=20,
                     reduction_factor=3, brackets=1)


def _feed(scheduler, trial, curve):
    decisions = []
    for epoch, value in enumerate(curve, 1):
        decisions.append(scheduler.on_trial_result(None, trial, {"epoch": epoch, "best_val_miou": value}))
    return decisions


def test_a_trial_whose_curve_cannot_reach_the_best_is_stopped_and_a_climbing_one_goes_on() -> None:
    from ray.tune.schedulers import TrialScheduler

    scheduler = _scheduler()
    leader, laggard, climber = (SimpleNamespace(trial_id=name) for name in ("leader", "laggard", "climber"))
    for trial in (leader, laggard, climber):
        scheduler.on_trial_add(None, trial)
    assert set(_feed(scheduler, leader, [0.3, 0.5, 0.6, 0.7, 0.75])) == {TrialScheduler.CONTINUE}
    # flattening out far below 0.75: stopped at its third epoch, the first the curve can be fitted at
    assert _feed(scheduler, laggard, [0.10, 0.15, 0.17]) == [TrialScheduler.CONTINUE] * 2 + [TrialScheduler.STOP]
    stop = scheduler.curve_stops["laggard"]
    assert stop["epoch"] == 3 and stop["predicted"] < 0.3 and stop["best"] == 0.75
    # the same curve in a trial the budget trains in full (the baseline, a re-check) is never cut
    from automl.budget import FULL

    full = SimpleNamespace(trial_id="recheck", config={FULL: True})
    scheduler.on_trial_add(None, full)
    assert set(_feed(scheduler, full, [0.10, 0.15, 0.17])) == {TrialScheduler.CONTINUE}
    # behind the leader now, but rising fast enough to pass it by epoch 20
    assert set(_feed(scheduler, climber, [0.35, 0.55, 0.66])) == {TrialScheduler.CONTINUE}
    assert "climber" not in scheduler.curve_stops


def test_a_nan_result_does_not_switch_the_check_off() -> None:
    from ray.tune.schedulers import TrialScheduler

    scheduler = _scheduler()
    broken, leader, laggard = (SimpleNamespace(trial_id=name) for name in ("broken", "leader", "laggard"))
    for trial in (broken, leader, laggard):
        scheduler.on_trial_add(None, trial)
    _feed(scheduler, broken, [float("nan")])  # the first result of the search
    _feed(scheduler, leader, [0.3, 0.5, 0.6, 0.7, 0.75])
    assert _feed(scheduler, laggard, [0.10, 0.15, 0.17])[-1] == TrialScheduler.STOP


def test_the_threshold_spares_a_trial_close_to_the_best() -> None:
    from ray.tune.schedulers import TrialScheduler

    for threshold, expected in ((0.0, TrialScheduler.STOP), (0.2, TrialScheduler.CONTINUE)):
        scheduler = _scheduler(threshold)
        leader, near = SimpleNamespace(trial_id="leader"), SimpleNamespace(trial_id="near")
        scheduler.on_trial_add(None, leader), scheduler.on_trial_add(None, near)
        _feed(scheduler, leader, [0.5, 0.6, 0.7])
        assert _feed(scheduler, near, [0.50, 0.55, 0.56])[-1] == expected, threshold


def test_tao_settings_choose_it_with_its_threshold() -> None:
    from automl.settings import options_from_settings

    opts = options_from_settings({"automl_algorithm": "hes", "automl_early_stop_threshold": 0.02,
                                  "automl_min_early_stop_epochs": 4}, {})
    assert (opts.search.algorithm, opts.search.early_stop_threshold, opts.search.grace_period) == ("hyperband_es", 0.02, 4)
    assert opts.search.multi_fidelity
