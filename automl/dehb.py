"""dehb: differential evolution proposing the configurations, asynchronous HyperBand stopping them.

DEHB (Awad, Mallik and Hutter, "DEHB: Evolutionary Hyperband for Scalable, Robust and Efficient
Hyperparameter Optimization", IJCAI 2021) runs differential evolution (DE) on the configurations of
HyperBand's brackets: each new configuration is a DE mutant of the ones that reached the highest
fidelity. Here HyperBand is Ray's asynchronous one (the same scheduler as ``hyperband``,
`automl.algorithms`) and DE is an Optuna sampler (:class:`DESampler`), so the schema's types,
bounds, log scales, enums and ``depends_on`` parameters are handled like every other sampler's.

A proposal, once the space-filling start has finished (`automl.algorithms.startup_points`):

1. the parent pool: the finished trials ranked by the fidelity they reached (epochs trained; a
   trial HyperBand stopped early ranks below every trial that went further), then by their value;
   the best ``pool`` of them (at least 4);
2. DE's rand/1 mutation in the unit cube of the searched parameters (log scales and integers
   mapped as Optuna maps them; a categorical parameter by its index): ``v = x1 + F (x2 - x3)`` with
   three distinct parents, ``F`` = 0.5 (``automl_mutation_factor``), clipped to the cube;
3. binomial crossover with a target drawn from the pool (each coordinate from the mutant with
   probability ``CR`` = 0.5, ``automl_crossover_prob``, at least one of them), decoded back into values.

Fewer than four finished trials: the independent sampler (random) proposes. The sampler's draws
come from its own seeded generator, so a search is reproducible with ``--seed``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.trial import FrozenTrial, TrialState

MUTATION_F = 0.5  # DE's scale factor (DEHB's default; TAO automl_mutation_factor)
CROSSOVER = 0.5  # DE's crossover probability (DEHB's default; TAO automl_crossover_prob)


def _fidelity(trial: FrozenTrial) -> int:
    return max(trial.intermediate_values, default=0)


def to_unit(value: Any, dist: BaseDistribution) -> float:
    """A value as a coordinate in [0, 1] (log scales by their logarithm, categoricals by their index)."""
    if isinstance(dist, CategoricalDistribution):
        return (dist.choices.index(value) + 0.5) / len(dist.choices)
    low, high, value = float(dist.low), float(dist.high), float(value)
    if getattr(dist, "log", False):
        low, high, value = math.log(low), math.log(high), math.log(value)
    return 0.5 if high == low else (value - low) / (high - low)


def from_unit(x: float, dist: BaseDistribution) -> Any:
    """The value at coordinate `x` of [0, 1] (the inverse of `to_unit`, on the distribution's grid)."""
    x = min(1.0, max(0.0, float(x)))
    if isinstance(dist, CategoricalDistribution):
        return dist.choices[min(len(dist.choices) - 1, int(x * len(dist.choices)))]
    low, high = float(dist.low), float(dist.high)
    log = getattr(dist, "log", False)
    value = math.exp(math.log(low) + x * (math.log(high) - math.log(low))) if log else low + x * (high - low)
    if isinstance(dist, IntDistribution):
        step = dist.step
        return int(min(dist.high, max(dist.low, dist.low + round((value - dist.low) / step) * step)))
    if isinstance(dist, FloatDistribution) and dist.step is not None:
        value = dist.low + round((value - dist.low) / dist.step) * dist.step
    return float(min(high, max(low, value)))


class DESampler(BaseSampler):
    """Differential evolution over the finished trials of the highest fidelity (see the module)."""

    def __init__(self, seed: int | None = None, pool: int = 8, mutation_factor: float = MUTATION_F,
                 crossover_prob: float = CROSSOVER) -> None:
        self._rng = np.random.default_rng(seed)
        self._f, self._cr = float(mutation_factor), float(crossover_prob)
        self._independent = RandomSampler(seed=seed)
        self._pool = max(4, pool)

    def reseed_rng(self) -> None:
        self._rng = np.random.default_rng()
        self._independent.reseed_rng()

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        space: dict[str, BaseDistribution] = {}
        for name, dist in optuna.search_space.intersection_search_space(
                study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))).items():
            if not dist.single():
                space[name] = dist
        return space

    def parents(self, study: optuna.Study) -> list[FrozenTrial]:
        """The pool: finished trials by fidelity reached, then by value (best first)."""
        done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None
                and math.isfinite(t.value)]
        sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
        done.sort(key=lambda t: (-_fidelity(t), sign * t.value))
        return done[: self._pool]

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if not search_space:
            return {}
        pool = [t for t in self.parents(study) if all(name in t.params for name in search_space)]
        if len(pool) < 4:
            return {}
        names = sorted(search_space)
        vectors = np.array([[to_unit(t.params[n], search_space[n]) for n in names] for t in pool])
        target = self._rng.integers(len(pool))
        r1, r2, r3 = self._rng.choice([i for i in range(len(pool)) if i != target], size=3, replace=False)
        mutant = np.clip(vectors[r1] + self._f * (vectors[r2] - vectors[r3]), 0.0, 1.0)
        cross = self._rng.random(len(names)) < self._cr
        cross[self._rng.integers(len(names))] = True  # at least one coordinate from the mutant
        child = np.where(cross, mutant, vectors[target])
        return {n: from_unit(x, search_space[n]) for n, x in zip(names, child)}

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._independent.sample_independent(study, trial, param_name, param_distribution)
