"""The algorithm factory: a Ray Tune searcher and scheduler for each algorithm (TAO names).

=========== =================================================== ==============================
algorithm   sampler (Ray searcher)                              scheduler (early stopping)
=========== =================================================== ==============================
bayesian    Optuna TPE (`OptunaSearch`)                         none (FIFO)
random      Optuna random sampler                               none
grid        every point of the finite space (`BasicVariantGenerator`) none
asha        Optuna TPE                                          `ASHAScheduler`
hyperband   scrambled Sobol, then Optuna random sampler         asynchronous HyperBand (`ASHAScheduler(brackets=n)`)
hyperband_es the same                                           the same, and learning-curve extrapolation (`automl.curves`)
bohb        Optuna TPE                                          asynchronous HyperBand (`ASHAScheduler(brackets=n)`)
dehb        differential evolution (`automl.dehb.DESampler`)      asynchronous HyperBand
bfbo        Optuna GP, batch-aware (`GPSampler`: qLogEI)        none (FIFO)
pbt         Optuna random sampler (initial population)          `PopulationBasedTraining` (`automl.pbt`)
=========== =================================================== ==============================

The default is bayesian (full trainings with TPE) under an epoch budget (`automl.budget`, which also
says why not asha): the budget, not a trial count, decides how many trials start, and the budget's
searcher re-checks the leader before promotion.

bfbo (TAO's batch Bayesian optimisation): Optuna's Gaussian-process sampler, which proposes for a
free slot with the configurations still training taken into account (q-batch log expected
improvement, a sequential greedy batch): with 4 slots the four proposals spread out instead of
piling onto the one optimum of the current model, and no slot waits for a result before it is
given a configuration.

TAO's BOHB is a TPE-like model on top of HyperBand; Ray's own BOHB needs hpbandster and
ConfigSpace, so "bohb" here is TPE + HyperBand, the same combination without the extra packages.

The model-based algorithms (TPE, GP, DE) start with space-filling points (`startup_points`: a scrambled Sobol sequence)
after the baseline, half the configurations the search affords, then TPE models. HyperBand (and hyperband_es),
random search under early stopping, draws every configuration the search affords from the same sequence
(`spread_count`), then at random: a quasi-random search, which covers each range evenly where independent draws
cluster by chance (benchmarks/RESULTS.md, "Search quality": on hela_boundary_tao_lr random's first five learning
rates all fell within a factor 1.7 of the spec's). `random` stays independent draws: what its name says, and the
reference the benchmarks measure the others against.

The first trial is the spec's own configuration (the baseline) unless ``baseline_first`` is off:
enqueued through ``points_to_evaluate``, or put first among the grid's or PBT's preset points.
Searchers, schedulers and the final ranking compare ``best_<metric>`` (each trial's best epoch so
far), so a trial is judged by its best epoch, never by a worse last one.

Multi-fidelity (asha, hyperband, bohb): each trial is configured for the full epoch budget and
stopped early by the scheduler, so its learning-rate schedule is the one a single full run would
have. The schedulers count epochs (``time_attr="epoch"``); ``max_epochs`` and ``grace_period`` are
in resource units of ``epoch_multiplier`` epochs (TAO), so a trial is only ever stopped at a
multiple of ``epoch_multiplier`` epochs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from automl.options import SearchError, SearchOptions

# Which Optuna sampler draws each algorithm's configurations (grid draws none).
SAMPLERS = {"bayesian": "tpe", "asha": "tpe", "bohb": "tpe", "bfbo": "gp", "dehb": "de", "random": "random",
            "hyperband": "random", "hyperband_es": "random", "pbt": "random"}
MODELLED = ("tpe", "gp", "de")  # samplers that model the results: they start after space-filling points (`startup_points`)
SPREAD = ("hyperband", "hyperband_es")  # random search under early stopping: every affordable point space-filling
SPREAD_MAX = 128  # more Sobol points than this cost seconds to draw (Optuna's QMC: 300 took 3 s) and add little


@dataclass(frozen=True)
class SearchPlan:
    """What `ray.tune.Tuner` is given for an algorithm."""

    search_alg: Any
    scheduler: Any
    num_samples: int  # trials the search starts in all
    param_space: dict[str, Any] | None  # only for preset points (grid, pbt): Ray checks them against it


def sampler(algorithm: str, seed: int, startup: int = 3, search: Any = None) -> Any:
    """The Optuna sampler of `algorithm` (see SAMPLERS). TPE and GP model once `startup` trials have
    finished (the baseline and the space-filling points, `startup_points`). A parameter that only some
    configurations have (depends_on) is drawn by the GP's independent sampler, at random."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if SAMPLERS[algorithm] == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)
    if SAMPLERS[algorithm] == "de":
        from automl.dehb import DESampler

        rates = {} if search is None else {"mutation_factor": search.mutation_factor, "crossover_prob": search.crossover_prob}
        return DESampler(seed=seed, **rates)
    if SAMPLERS[algorithm] == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup, warn_independent_sampling=False,
                                         independent_sampler=optuna.samplers.RandomSampler(seed=seed))
    return optuna.samplers.RandomSampler(seed=seed)


def startup_count(opts: SearchOptions, budget: Any = None) -> int:
    """How many space-filling points a TPE search starts with: half the configurations the budget
    (or max_trials) affords, at least 3. Before that TPE has nothing to model."""
    return max(3, spread_count(opts, budget) // 2)


def spread_count(opts: SearchOptions, budget: Any = None) -> int:
    """The configurations the budget (or max_trials) affords: how many space-filling points a
    quasi-random search (SPREAD) draws (`_space_filling` caps them at SPREAD_MAX; Optuna's random
    sampler draws any beyond)."""
    search = opts.search
    return budget.configurations(search.reduction_factor) if budget is not None else (search.max_trials or 0)


def _space_filling(opts: SearchOptions, budget: Any = None) -> int:
    """How many space-filling points `opts.search.algorithm` starts with after the baseline (0: none)."""
    if SAMPLERS[opts.search.algorithm] in MODELLED:
        return startup_count(opts, budget)
    return min(SPREAD_MAX, spread_count(opts, budget)) if opts.search.algorithm in SPREAD else 0


def startup_points(space: Any, count: int, seed: int) -> list[dict[str, Any]]:
    """`count` configurations spread evenly over the space: a scrambled Sobol sequence (Optuna's
    QMCSampler), so with 4 points each searched parameter gets one value in each quarter of its
    range. Random or TPE's own startup draws cluster by chance: with 7 trainings, whether a search
    found a learning rate 4x the spec's was luck (benchmarks/RESULTS.md, "Search quality"). A
    parameter that only some configurations have (depends_on) is drawn at random."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        qmc = optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=seed, warn_independent_sampling=False,
                                         warn_asynchronous_seeding=False)
    study = optuna.create_study(sampler=qmc)
    points = []
    for _ in range(count + 1):  # QMC's first trial is an independent draw that only fixes the space: dropped
        trial = study.ask()
        points.append(space.define_by_run(trial))
        study.tell(trial, 0.0)
    return points[1:]


def grid_points(space: Any) -> list[dict[str, Any]]:
    """Every point of a finite space, or an error naming the parameters that make it infinite."""
    infinite = space.infinite_params()
    if infinite:
        one = len(infinite) == 1
        raise SearchError(
            f"grid search needs a finite space, but {', '.join(infinite)} {'is' if one else 'are'} continuous or "
            f"{'has' if one else 'have'} too many values; name the parameters to search with --only, leave {'it' if one else 'them'} out with "
            f"automl_remove_hyperparameters in --settings, give valid_options in custom_param_ranges, or use "
            f"--algorithm bayesian/random"
        )
    return space.grid()


def grid_count(search: Any, budget: Any, size: int) -> int:
    """How many of a grid's `size` points train: --max-trials, else as many full trainings as the epoch
    budget holds (a grid has no re-check), else all of them."""
    count = search.max_trials or (budget.search // budget.trial_epochs if budget is not None else size)
    return max(1, min(count, size))


def first_points(opts: SearchOptions, space: Any, baseline: dict[str, Any] | None, count: int) -> list[dict[str, Any]]:
    """The configurations the search would start with after the baseline (for --dry-run): the
    distinct ones, as the search trains no configuration twice (a proposal that repeats one is
    answered with its result: `automl.budget.DistinctSearcher`)."""
    if opts.search.algorithm == "grid":
        drawn = grid_points(space)
    elif SAMPLERS[opts.search.algorithm] in MODELLED or opts.search.algorithm in SPREAD:
        drawn = startup_points(space, 10 * count, opts.search.seed)  # a prefix of what the search starts with
    else:
        drawn = _drawn_points(space, 10 * count, opts.search.algorithm, opts.search.seed)
    points: list[dict[str, Any]] = []
    for point in drawn:
        if len(points) == count:
            break
        if point != baseline and point not in points:
            points.append(point)
    return points


def _drawn_points(space: Any, count: int, algorithm: str, seed: int) -> list[dict[str, Any]]:
    import optuna

    study = optuna.create_study(sampler=sampler(algorithm, seed))
    return [space.define_by_run(study.ask()) for _ in range(count)]


def hyperband_brackets(max_t: int, grace_period: int, reduction_factor: float) -> int:
    """HyperBand's bracket count, s_max + 1 with s_max = floor(log_eta(max_t / grace_period)), at least 1.

    Bracket s starts its trials at grace_period * eta**s epochs, so the brackets trade early
    stopping (s = 0, ASHA) against giving slow starters a longer first look (larger s).
    """
    ratio = max(1.0, max_t / max(1, grace_period))
    return max(1, int(math.floor(math.log(ratio, reduction_factor) + 1e-9)) + 1) if reduction_factor > 1 else 1


def build_search(opts: SearchOptions, space: Any, baseline: dict[str, Any] | None, budget: Any = None) -> SearchPlan:
    """The searcher, scheduler and trial count of ``opts.search.algorithm``.

    `baseline` is the spec's own values of the searched parameters (the first trial), or None when
    the search runs no baseline. `budget` (`automl.budget.EpochBudget`): the epoch budget decides
    how many trials start and stops them when it is spent (`automl.budget.BudgetSearcher`).
    """
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    search, slots = opts.search, opts.resources.max_concurrent
    first = [baseline] if baseline is not None else []
    if search.algorithm == "grid":
        points = first + [p for p in grid_points(space) if p != baseline]
        # Ray runs every point given whatever num_samples says: the grid is cut to its count here.
        points = points[:grid_count(search, budget, len(points))]
        generator = BasicVariantGenerator(points_to_evaluate=points, max_concurrent=slots)
        return SearchPlan(generator, FIFOScheduler(), len(points), _preset_space(points))
    if search.algorithm == "pbt":
        return _pbt_plan(opts, space, first)

    spread = _space_filling(opts, budget)
    if spread:
        first = first + startup_points(space, spread, search.seed)
    searcher = OptunaSearch(space=space.define_by_run, metric=search.ranking_metric, mode=search.mode,
                            points_to_evaluate=[space.encode(p) for p in first],
                            sampler=sampler(search.algorithm, search.seed, startup=max(3, len(first)), search=search),
                            seed=search.seed)
    if budget is not None:
        return _budget_plan(opts, ConcurrencyLimiter(searcher, max_concurrent=slots), baseline, budget)
    scheduler: Any = FIFOScheduler()
    if search.multi_fidelity:
        scheduler = _halving(search, int(search.trial_epochs or 1), (search.grace_period or 1) * search.epoch_multiplier,
                             results_dir=str(opts.results_dir))
    from automl.budget import DistinctSearcher

    distinct = DistinctSearcher(ConcurrencyLimiter(searcher, max_concurrent=slots), str(opts.results_dir),
                                search.ranking_metric, search.mode)
    return SearchPlan(distinct, scheduler, search.max_trials, None)


def _halving(search: Any, max_t: int, grace: int, budget: Any = None, results_dir: str = "") -> Any:
    """The scheduler of a multi-fidelity algorithm; with `budget`, the one that also keeps to it.

    asha: one bracket. hyperband, bohb, dehb, hyperband_es: asynchronous HyperBand (Li et al., "A
    System for Massively Parallel Hyperparameter Tuning"): several successive-halving brackets with
    different minimum budgets, promoting as results arrive. Ray's synchronous HyperBandScheduler waits
    for a whole bracket to report before it cuts anyone, so with one or two trials at a time it stopped
    nothing (measured in benchmarks/search_efficiency: 78 of 78 trials ran their full budget).
    hyperband_es also stops trials by their extrapolated learning curves (`automl.curves`).
    """
    from automl import curves
    from automl.budget import BudgetASHA, NotedASHA

    grace = min(grace, max_t)
    brackets = 1 if search.algorithm == "asha" else hyperband_brackets(max_t, grace, search.reduction_factor)
    kwargs = dict(time_attr="epoch", metric=search.ranking_metric, mode=search.mode, max_t=max_t,
                  grace_period=grace, reduction_factor=search.reduction_factor, brackets=brackets)
    curve = (grace, search.early_stop_threshold)
    if budget is None:
        return curves.CurveASHA(*curve, results_dir, **kwargs) if search.algorithm == "hyperband_es" else NotedASHA(results_dir, **kwargs)
    if search.algorithm == "hyperband_es":
        return curves.BudgetCurveASHA(results_dir, budget, *curve, **kwargs)
    return BudgetASHA(results_dir, budget, **kwargs)


def _budget_plan(opts: SearchOptions, searcher: Any, baseline: dict[str, Any] | None, budget: Any) -> SearchPlan:
    """A search the epoch budget sizes: Tune asks until the searcher says FINISHED."""
    from automl.budget import BudgetFIFO, BudgetSearcher, infeasible_cap

    search, results_dir = opts.search, str(opts.results_dir)
    wrapped = BudgetSearcher(searcher, results_dir, budget, baseline, search.ranking_metric, search.mode,
                             max_concurrent=getattr(searcher, "max_concurrent", None))
    if search.multi_fidelity:
        scheduler: Any = _halving(search, budget.trial_epochs, budget.first_rung, budget, results_dir)
    else:
        scheduler = BudgetFIFO(results_dir, budget)
    # The budget's searcher ends the search. Ray's cap is a backstop: every trial that trains at all
    # trains its first rung (`automl.budget.EpochBudget.held`), so the budget starts at most total //
    # first_rung of them; as many again for trials that fail before they train (a configuration out of
    # GPU memory), so that they cannot use up the re-check's two; and the trials over a latency limit,
    # which train nothing (`automl.budget.infeasible_cap`).
    limited = search.max_latency_ms is not None or search.max_latency_ratio is not None
    trials = 2 * (budget.total // max(1, budget.first_rung)) + 2 + (infeasible_cap(budget) if limited else 0)
    return SearchPlan(wrapped, scheduler, trials, None)


def _pbt_plan(opts: SearchOptions, space: Any, first: list[dict[str, Any]]) -> SearchPlan:
    """PBT's preset population (the baseline and random draws) and its scheduler (`automl.pbt`)."""
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    from automl import pbt

    domains = pbt.mutations(space)
    if not domains:
        raise SearchError(f"pbt needs a searched parameter it can change during training "
                          f"({', '.join(pbt.OPTIMIZER_KEYS)} or dataset.segment.augmentation.*); add one with --settings")
    search = opts.search
    points = first + _drawn_points(space, search.population_size - len(first), "pbt", search.seed)
    param_space = {**_preset_space(points), **{k: tune.choice(v) if isinstance(v, list) else v for k, v in domains.items()}}
    # The whole population exists from the start (no max_concurrent here: the generator would create
    # a member only when one finished, and a population larger than the slots ran as separate groups
    # that never exploited each other); the scheduler runs at most `max_concurrent` of them at a time.
    generator = BasicVariantGenerator(points_to_evaluate=points)
    return SearchPlan(generator, pbt.scheduler(search, domains, space, opts.resources.max_concurrent,
                                                 baseline=first[0] if first else None), len(points), param_space)


def _preset_space(points: list[dict[str, Any]]) -> dict[str, Any]:
    """A Ray param_space with one categorical domain per key of the preset points."""
    from ray import tune

    values: dict[str, list[Any]] = {}
    for point in points:
        for key, value in point.items():
            if value not in values.setdefault(key, []):
                values[key].append(value)
    return {k: tune.choice(v) for k, v in values.items()}
