"""dehb's differential evolution (`automl.dehb.DESampler`): its mutants come from the configurations
that went furthest, its unit-cube mapping keeps types and scales, and TAO's settings reach it."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

SPACE = {"lr": FloatDistribution(1e-5, 1e-1, log=True), "wd": FloatDistribution(0.0, 0.1),
         "batch": IntDistribution(2, 16), "freeze": CategoricalDistribution([False, True])}


def test_values_round_trip_through_the_unit_cube() -> None:
    from automl.dehb import from_unit, to_unit

    for value, dist in ((1e-3, SPACE["lr"]), (0.05, SPACE["wd"]), (7, SPACE["batch"]), (True, SPACE["freeze"])):
        assert from_unit(to_unit(value, dist), dist) == pytest.approx(value)
    assert to_unit(1e-3, SPACE["lr"]) == pytest.approx(0.5)  # log scale: 1e-3 is the middle of 1e-5..1e-1
    assert isinstance(from_unit(0.37, SPACE["batch"]), int) and from_unit(1.7, SPACE["wd"]) == 0.1  # clipped


def _study(sampler, trials: list[tuple[dict, float, int]]) -> optuna.Study:
    """A study with finished trials (params, value, epochs reached: the fidelity HyperBand let them train)."""
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for params, value, epochs in trials:
        study.add_trial(optuna.trial.create_trial(params=params, distributions=SPACE, value=value,
                                                  intermediate_values={e: value for e in range(1, epochs + 1)}))
    return study


def test_mutants_are_bred_from_the_trials_that_reached_the_highest_fidelity() -> None:
    from automl.dehb import DESampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Four trials trained to the end, all with lr around 1e-3 and small batches; six stopped at epoch 1
    # with a better early value and lr around 1e-5 (a rung's leaders that HyperBand did not promote
    # would rank below every trial that went further).
    far = [({"lr": lr, "wd": wd, "batch": b, "freeze": False}, 0.6 + i / 100, 9)
           for i, (lr, wd, b) in enumerate([(8e-4, 0.01, 4), (1e-3, 0.02, 5), (1.2e-3, 0.03, 4), (9e-4, 0.05, 6)])]
    early = [({"lr": 1.2e-5 * (1 + i / 10), "wd": 0.09, "batch": 16, "freeze": True}, 0.9, 1) for i in range(6)]
    sampler = DESampler(seed=0, pool=4)
    study = _study(sampler, far + early)
    assert [t.value for t in sampler.parents(study)] == [0.63, 0.62, 0.61, 0.6]
    proposals = [study.ask(SPACE).params for _ in range(20)]
    for p in proposals:
        assert 3e-4 < p["lr"] < 4e-3 and p["batch"] <= 8 and p["freeze"] is False, p  # from the far pool only
    assert len({round(math.log10(p["lr"]), 4) for p in proposals}) > 10  # mutants, not copies of the parents
    again = _study(DESampler(seed=0, pool=4), far + early)
    assert [again.ask(SPACE).params for _ in range(20)] == proposals  # reproducible with its seed


def test_fewer_than_four_finished_trials_draw_at_random() -> None:
    from automl.dehb import DESampler

    sampler = DESampler(seed=1)
    study = _study(sampler, [({"lr": 1e-3, "wd": 0.01, "batch": 4, "freeze": False}, 0.5, 3)] * 3)
    assert sampler.sample_relative(study, study.ask(), {"lr": SPACE["lr"]}) == {}


def test_tao_settings_reach_the_sampler_and_are_checked() -> None:
    from automl.settings import SettingsError, options_from_settings

    opts = options_from_settings({"automl_algorithm": "dehb", "automl_mutation_factor": 0.8,
                                  "automl_crossover_prob": 0.3}, {})
    assert (opts.search.algorithm, opts.search.mutation_factor, opts.search.crossover_prob) == ("dehb", 0.8, 0.3)
    assert opts.search.multi_fidelity
    from automl.algorithms import sampler

    chosen = sampler("dehb", seed=0, search=opts.search)
    assert (chosen._f, chosen._cr) == (0.8, 0.3)
    with pytest.raises((SettingsError, ValueError), match="automl_crossover_prob"):
        options_from_settings({"automl_algorithm": "dehb", "automl_crossover_prob": 1.5}, {})
