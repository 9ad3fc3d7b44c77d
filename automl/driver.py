"""The search controller: Optuna samples spec overrides, Ray Tune runs and stops trials.

    automl run --skill segformer --policy auto -e spec.yaml [key=value ...]

Flow: skill files -> policy (search or plain) -> search space from ``train.schema.json`` -> Ray Tune
(`Tuner`) with a searcher and a scheduler chosen by ``--algorithm`` -> every trial is the plain train
action in a Ray worker (`automl.trial`) -> the driver logs every event to MLflow and the state file
(`automl.tracking`) -> the best trial is promoted (`automl.promote`) and a report written
(`automl.report`).

Algorithms (TAO names):

=========== =================================================== ==============================
algorithm   sampler (Ray searcher)                              scheduler (early stopping)
=========== =================================================== ==============================
bayesian    Optuna TPE (`OptunaSearch`)                         none (FIFO)
random      Optuna random sampler                               none
grid        every point of the finite space (`BasicVariantGenerator`) none
asha        Optuna TPE                                          `ASHAScheduler`
hyperband   Optuna random sampler                               asynchronous HyperBand (`ASHAScheduler(brackets=n)`)
bohb        Optuna TPE                                          asynchronous HyperBand (`ASHAScheduler(brackets=n)`)
pbt         Optuna random sampler (initial population)          `PopulationBasedTraining`
=========== =================================================== ==============================

PBT: Ray's PBT refuses search algorithms, so the population (the baseline plus Optuna random draws)
is preset through the basic variant generator. Explore only mutates what a trial restored from
another trial's checkpoint can honour (lr, weight decay, momentum, augmentation; see
`PBT_MUTABLE`); structural values (freeze_backbone, optimizer type) stay those of the checkpoint.
PBT is synchronous (members wait for each other at every perturbation interval), so exploits do
not depend on timing; run the population at once (--max-concurrent >= population size).

CPU trials on one node: once every trial has started, the CPUs of slots left idle go to the trials
still running as extra torch threads (`automl.lending`), after the tail's early promotion
(`automl.promote.EarlyPromotion`) has had its share; --no-lend-cpus turns it off.

Trials a scheduler (or the time budget / failure limit) ends before their epoch budget are
recorded as STOPPED (MLflow: FINISHED with the tag ``automl.stopped_early=true``), never FAILED.

TAO's BOHB is a TPE-like model on top of HyperBand; Ray's own BOHB needs hpbandster and
ConfigSpace, so "bohb" here is TPE + HyperBand, the same combination without the extra packages.

Ranking: every trial reports ``best_<metric>`` (the best value over its epochs so far, direction
aware) next to the raw metric. Searchers, schedulers and the final ranking use it, so a trial is
judged by its best epoch, never by a worse last one. The first trial is the spec's own configuration
(the baseline), enqueued through ``points_to_evaluate``.

Multi-fidelity (asha, hyperband, bohb, pbt): each trial is configured with ``train.num_epochs =
max_epochs`` and stopped early by the scheduler; its learning-rate schedule is therefore defined over
the full budget, and a promoted trial has trained exactly as a single full run would have up to
its stopping epoch. The schedulers' time unit is the epoch (``time_attr="epoch"``, max_t =
max_epochs).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from automl.state import FAILED, FINISHED, RUNNING, STOPPED, SearchState, TrialRecord

log = logging.getLogger("automl")

ALGORITHMS = ("bayesian", "random", "grid", "asha", "hyperband", "bohb", "pbt")
RAY_DIR = "ray"
EXPERIMENT_NAME = "search"


class SearchError(ValueError):
    """A search cannot start as configured; the message says what to change."""


@dataclass
class SearchOptions:
    """Everything `automl run` decides; stored in the state file so `automl resume` can rebuild it."""

    results_dir: str  # search folder: mlflow.db, trial_XXX/, best/, report/, automl_state.json
    spec: str | None = None  # the user's spec (-e); None: the skill's train template
    overrides: list[str] = field(default_factory=list)  # key=value overrides applied to every trial
    skill: str | None = "segformer"  # --skill NAME (ours)
    skill_dir: str | None = None  # --skill-dir PATH (NVIDIA's layout)
    policy: str = "auto"  # auto | off
    algorithm: str = "bayesian"  # one of ALGORITHMS
    metric: str = "val_miou"  # the train action's per-validation metric
    mode: str = "max"  # max | min
    max_trials: int = 8  # trials in all, the baseline included
    max_epochs: int | None = None  # train.num_epochs of every trial (None: the spec's)
    time_budget_s: float | None = None  # wall-clock limit of the whole search
    max_concurrent: int = 1  # trials at the same time (bayesian is sequential unless raised)
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = 0.0  # fractions share a GPU; None: 1 when the Ray cluster has a GPU
    address: str | None = None  # Ray cluster address; None starts a local Ray
    num_cpus: int | None = None  # local Ray only: CPUs Ray may use (None: all)
    tracking_uri: str | None = None  # MLflow; None: sqlite:///<results_dir>/mlflow.db
    experiment_name: str | None = None  # MLflow experiment; None: the skill's name
    seed: int = 0  # sampler seed
    trial_retries: int = 0  # restarts of a crashed trial (Ray FailureConfig.max_failures)
    max_failed_trials: int | None = None  # stop the search after this many failed trials
    grace_period: int = 1  # asha/hyperband: epochs before a trial can be stopped
    reduction_factor: float = 3.0  # asha/hyperband: keep 1/reduction_factor per rung
    perturbation_interval: int = 1  # pbt: epochs between exploit/explore steps
    population_size: int = 4  # pbt: trials in the population (num_samples)
    only: list[str] | None = None  # searched parameters instead of the schema's defaults
    include: list[str] = field(default_factory=list)  # added to the schema's defaults
    exclude: list[str] = field(default_factory=list)  # removed from them
    param_ranges: dict[str, Any] = field(default_factory=dict)  # TAO custom_param_ranges
    override_disabled: bool = False  # TAO override_automl_disabled_params
    checkpoints_to_keep: int = 1  # per trial, by best metric (Ray also keeps the latest)
    lend_cpus: bool = True  # CPU trials on one node: idle slots' CPUs go to running trials (automl.lending)
    promote: bool = True
    skip_evaluate: bool = False
    skip_export: bool = False
    skip_quantize: bool = False
    skip_trt: bool = False
    register_model: str | None = None  # registered model name; None: "<skill>-segformer"
    register_alias: str = "champion"
    extra: dict[str, Any] = field(default_factory=dict)  # TAO settings we keep for the record

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SearchOptions":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def validate(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise SearchError(f"--algorithm must be one of {', '.join(ALGORITHMS)}, got {self.algorithm!r}")
        if self.mode not in ("max", "min"):
            raise SearchError(f"mode must be 'max' or 'min', got {self.mode!r}")
        if self.max_trials < 1:
            raise SearchError(f"--max-trials must be >= 1, got {self.max_trials}")
        if self.max_epochs is not None and self.max_epochs < 1:
            raise SearchError(f"--max-epochs must be >= 1, got {self.max_epochs}")
        if self.max_concurrent < 1:
            raise SearchError(f"--max-concurrent must be >= 1, got {self.max_concurrent}")
        if self.cpus_per_trial <= 0 or (self.gpus_per_trial is not None and self.gpus_per_trial < 0):
            raise SearchError(
                f"--cpus-per-trial must be > 0 and --gpus-per-trial >= 0, got {self.cpus_per_trial} and {self.gpus_per_trial}"
            )
        if self.algorithm in ("asha", "hyperband", "bohb") and self.grace_period < 1:
            raise SearchError(f"grace_period must be >= 1 epoch, got {self.grace_period}")
        if self.reduction_factor <= 1:
            raise SearchError(f"reduction_factor must be > 1, got {self.reduction_factor}")

    @property
    def ranking_metric(self) -> str:
        """What searchers, schedulers and the final ranking compare: the best epoch so far."""
        return f"best_{self.metric}"


@dataclass(frozen=True)
class SearchOutcome:
    results_dir: Path
    mode: str  # "search" | "plain" | "dry-run"
    state: SearchState | None = None
    best: TrialRecord | None = None
    baseline: TrialRecord | None = None
    promotion: dict[str, Any] = field(default_factory=dict)
    report: Path | None = None
    message: str = ""
    stopped_by_failures: bool = False  # the failure limit ended the search


# ------------------------------------------------------------------------------------------------
# space and config helpers
# ------------------------------------------------------------------------------------------------


def _skill(opts: SearchOptions):
    from automl.skill import load_skill

    return load_skill(skill=None if opts.skill_dir else opts.skill, skill_dir=opts.skill_dir)


def _spec_path(opts: SearchOptions, skill: Any) -> str | None:
    if opts.spec:
        path = Path(opts.spec).expanduser().resolve()
        if not path.is_file():
            raise SearchError(f"spec file -e {opts.spec} does not exist")
        return str(path)
    template = skill.template_path("train")
    return str(template) if template.is_file() else None


def _build_space(skill: Any, opts: SearchOptions, spec_values: dict[str, Any]):
    from automl.space import build_space

    return build_space(
        skill.load_schema("train"), only=opts.only, include=tuple(opts.include), exclude=tuple(opts.exclude),
        param_ranges=opts.param_ranges or None, override_disabled=opts.override_disabled, spec=spec_values,
    )


def _base_config(spec: str | None, overrides: Sequence[str], results_dir: str | Path):
    """The spec as a trial sees it; `results_dir` first so ${results_dir} in the spec resolves."""
    from segformer.config import load_config

    return load_config(spec, [f"results_dir={results_dir}", *overrides])


def _grid(space: Any) -> list[dict[str, Any]]:
    """Every point of a finite space, or an error naming the parameters that make it infinite."""
    points = space.grid()
    if points is None:
        infinite = [p.name for p in space.params if not p.derived and not p.choices and
                    (p.kind == "float" or (int(p.high) - int(p.low)) // (p.step or 1) + 1 > 32)]
        raise SearchError(
            f"grid search needs a finite space, but {', '.join(infinite)} "
            f"{'is' if len(infinite) == 1 else 'are'} continuous or has too many values; exclude "
            f"{'it' if len(infinite) == 1 else 'them'} (--exclude / automl_remove_hyperparameters), give "
            f"valid_options in custom_param_ranges, or use --algorithm bayesian/random"
        )
    return points


def options_from_settings(settings: Any, **paths: Any) -> SearchOptions:
    """`automl.settings.SearchSettings` (file + flags, validated) -> the driver's options."""
    gpus = settings.gpus_per_trial  # None: decided once Ray is up (resolve_gpus), without torch here
    return SearchOptions(
        algorithm=settings.algorithm, max_trials=settings.max_trials, max_epochs=settings.max_epochs,
        time_budget_s=settings.time_budget_s, max_concurrent=settings.max_concurrent,
        cpus_per_trial=float(settings.cpus_per_trial), gpus_per_trial=None if gpus is None else float(gpus), metric=settings.metric,
        mode=settings.mode, seed=settings.seed if settings.seed is not None else 0,
        trial_retries=settings.max_failures, grace_period=settings.grace_period,
        reduction_factor=float(settings.reduction_factor), perturbation_interval=settings.perturbation_interval,
        population_size=settings.population_size, only=list(settings.only) if settings.only else None,
        include=list(settings.include), exclude=list(settings.exclude), param_ranges=dict(settings.param_ranges),
        override_disabled=settings.override_disabled,
        checkpoints_to_keep=1 if settings.delete_intermediate_checkpoints else 1000,
        lend_cpus=settings.lend_idle_cpus,
        **paths,
    )


# ------------------------------------------------------------------------------------------------
# Ray
# ------------------------------------------------------------------------------------------------


def check_services(opts: SearchOptions, tracking_uri: str | None = None) -> None:
    """Probe --address and an http(s) tracking URI once, with a short timeout (`automl.probe`).

    Ray and MLflow would otherwise retry a dead address for minutes before failing. A Ray that
    this process already runs (a notebook, a test session) is used as is and not probed.
    """
    from automl.probe import check_ray_address, check_tracking_uri

    check_tracking_uri(tracking_uri or opts.tracking_uri)
    import ray

    if not ray.is_initialized():
        check_ray_address(opts.address)


def init_ray(opts: SearchOptions, quiet: bool = True) -> bool:
    """Start (or join, with --address) Ray with the least overhead we can.

    No dashboard; worker logs are not forwarded when quiet. A new local cluster enables token
    authentication by default and writes its token to ``~/.ray/auth_token`` (once per home
    directory). We keep that secure default and only silence the warning Ray logs about it;
    ``RAY_AUTH_MODE`` set by the user is respected. (Setting ``RAY_AUTH_MODE=token`` ourselves
    would skip the token generation and the GCS would fail to start without a token.)

    Returns True when this call connected (the search then shuts Ray down at its end); a Ray the
    caller already started (a notebook, a test session) is used as is and left running.
    """
    import ray

    # Tune reads these in the driver: set them even when Ray is already running.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")  # experiment state after every event
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no csv/json/tbx per trial
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # We snapshot on purpose after every event (resume after SIGKILL); do not warn about it.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Ray's result.json/progress.csv loggers are off (the ledger and MLflow hold the results).
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = dict(
        include_dashboard=False,
        log_to_driver=not quiet,
        logging_level=logging.WARNING,
        configure_logging=True,
    )
    # Workers import `automl` and `segformer`: make the folder this package was imported from
    # visible to them even when it is a source checkout that is not installed.
    root = str(Path(__file__).resolve().parents[1])
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if root not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([root, *[p for p in paths if p]])
    if opts.address:
        ray.init(address=opts.address, **kwargs)  # probed by check_services first (Ray retries for minutes)
    else:
        auth_log = logging.getLogger("ray._private.authentication.authentication_token_setup")
        level = auth_log.level
        auth_log.setLevel(logging.ERROR)
        try:
            # "local": a new Ray of our own. Without it ray.init joins whatever cluster `ray start`
            # last started on this machine (/tmp/ray/ray_current_cluster), someone else's included,
            # and fails there because num_cpus is set. RAY_ADDRESS set by the user is honoured.
            address = None if os.environ.get("RAY_ADDRESS") else "local"
            ray.init(address=address, num_cpus=opts.num_cpus, **kwargs)
        finally:
            auth_log.setLevel(level)
    return True


def resolve_gpus(opts: SearchOptions) -> None:
    """`gpus_per_trial` None (the default): one GPU per trial when the Ray cluster has GPUs, else 0.

    Asked of Ray, not torch: the driver never imports torch (seconds to load and to unload), and
    Ray's view is what counts, e.g. a CPU-only head node in front of GPU workers.
    """
    if opts.gpus_per_trial is None:
        import ray

        opts.gpus_per_trial = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


@contextmanager
def seeded_global_rngs(seed: int) -> Iterator[None]:
    """Python's and NumPy's global random generators seeded for the search, restored afterwards.

    Ray draws from them in the driver: asynchronous HyperBand picks each trial's bracket with
    `np.random.choice`, PBT's explore perturbs with `random`. Unseeded, `--seed` fixed the sampled
    values but not which trials HyperBand could stop early (two runs of the efficiency benchmark
    differed). The caller's generator state is put back, so a notebook's draws are not touched.
    """
    import random

    import numpy as np

    py_state, np_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def preload_promotion(opts: SearchOptions) -> None:
    """Import what promotion runs in this process (torch, Lightning, ONNX) while the trials train.

    The driver itself needs none of it during the search; loading it after the search took ~5 s
    of the demo's wall time on 2 cores. Started once the first epoch is reported (see `_fit`). A
    daemon thread: an interrupted search does not wait for it, and a module that fails to import
    is reported by promotion itself (skipped: ...).
    """
    if not opts.promote:
        return
    names = [f"segformer.actions.{step}" for step, skip in (("evaluate", opts.skip_evaluate),
                                                         ("export", opts.skip_export),
                                                         ("quantize", opts.skip_quantize)) if not skip]
    if not opts.skip_export:
        names += ["onnxruntime", "onnxscript"]  # the exporter (dynamo) and its parity check

    def load() -> None:
        import importlib

        for name in names:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 (promotion reports it with the step it breaks)
                pass

    import threading

    threading.Thread(target=load, name="automl-preload", daemon=True).start()


def _sampler(kind: str, seed: int):
    import optuna

    if kind == "tpe":
        # Few trials: start modelling after 3 random ones (Optuna's default of 10 would be all random).
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=3)
    return optuna.samplers.RandomSampler(seed=seed)


def build_search(opts: SearchOptions, space: Any, baseline: dict[str, Any], encoded_baseline: dict[str, Any]):
    """`(search_alg, scheduler, num_samples, param_space)` for `opts.algorithm`.

    `param_space` is only set for the preset-point generators (grid, pbt): Ray checks every preset
    value against a domain of the same key and fails on keys it does not know.

    `baseline` is the spec's own values (the first trial); `encoded_baseline` is the same point
    as Optuna stores it (weighted categoricals are a uniform draw), for `points_to_evaluate`.
    """
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    metric, mode = opts.ranking_metric, opts.mode
    max_t = int(opts.max_epochs or 1)
    algorithm = opts.algorithm

    if algorithm == "grid":
        points = [baseline] + [p for p in _grid(space) if p != baseline]
        search_alg: Any = BasicVariantGenerator(points_to_evaluate=points, max_concurrent=opts.max_concurrent)
        return search_alg, FIFOScheduler(), min(opts.max_trials, len(points)), _preset_space(points)

    if algorithm == "pbt":
        # Ray's PBT refuses search algorithms: the initial population is the baseline plus
        # configurations drawn up front by Optuna's random sampler, run by the basic generator.
        mutations = pbt_mutations(space)
        if not mutations:
            raise SearchError(f"pbt needs a searched parameter it can change during training "
                              f"({', '.join(PBT_MUTABLE)} or dataset.segment.augmentation.*); add one with --settings")
        points = [baseline] + _random_points(space, opts.population_size - 1, opts.seed)
        scheduler = PopulationBasedTraining(
            time_attr="epoch", metric=metric, mode=mode, perturbation_interval=opts.perturbation_interval,
            hyperparam_mutations=mutations, quantile_fraction=0.5, resample_probability=0.25,
            # Synchronous: every member reaches the perturbation epoch before anyone exploits, so
            # which checkpoints get cloned does not depend on process timing (asynchronous PBT
            # only exploits between trials that happen to overlap, none at all on a busy machine).
            require_attrs=True, synch=True,
        )
        param_space = {**_preset_space(points), **{k: tune.choice(v) if isinstance(v, list) else v for k, v in mutations.items()}}
        return (BasicVariantGenerator(points_to_evaluate=points, max_concurrent=opts.max_concurrent), scheduler,
                len(points), param_space)

    sampler_kind = "tpe" if algorithm in ("bayesian", "asha", "bohb") else "random"
    search_alg = OptunaSearch(
        space=space.define_by_run,
        metric=metric,
        mode=mode,
        points_to_evaluate=[encoded_baseline],
        sampler=_sampler(sampler_kind, opts.seed),
        seed=opts.seed,
    )
    search_alg = ConcurrencyLimiter(search_alg, max_concurrent=opts.max_concurrent)

    if algorithm == "asha":
        scheduler: Any = ASHAScheduler(
            time_attr="epoch", metric=metric, mode=mode, max_t=max_t,
            grace_period=min(opts.grace_period, max_t), reduction_factor=opts.reduction_factor,
        )
    elif algorithm in ("hyperband", "bohb"):
        # Asynchronous HyperBand (Li et al., "A System for Massively Parallel Hyperparameter Tuning"):
        # several successive-halving brackets with different minimum budgets, promoting as results
        # arrive. Ray's synchronous HyperBandScheduler waits for a whole bracket to report before it
        # cuts anyone, so with one or two trials at a time it stopped nothing (measured in
        # benchmarks/search_efficiency: 78 of 78 trials ran their full budget).
        scheduler = ASHAScheduler(
            time_attr="epoch", metric=metric, mode=mode, max_t=max_t,
            grace_period=min(opts.grace_period, max_t), reduction_factor=opts.reduction_factor,
            brackets=hyperband_brackets(max_t, opts.grace_period, opts.reduction_factor),
        )
    else:
        scheduler = FIFOScheduler()
    return search_alg, scheduler, opts.max_trials, None


def hyperband_brackets(max_t: int, grace_period: int, reduction_factor: float) -> int:
    """HyperBand's bracket count, s_max + 1 with s_max = floor(log_eta(max_t / grace_period)), at least 1.

    Bracket s starts its trials at grace_period * eta**s epochs, so the brackets trade early
    stopping (s = 0, ASHA) against giving slow starters a longer first look (larger s).
    """
    import math

    ratio = max(1.0, max_t / max(1, grace_period))
    return max(1, int(math.floor(math.log(ratio, reduction_factor) + 1e-9)) + 1) if reduction_factor > 1 else 1


def _preset_space(points: list[dict[str, Any]]) -> dict[str, Any]:
    """A Ray param_space with one categorical domain per key of the preset points."""
    from ray import tune

    values: dict[str, list[Any]] = {}
    for point in points:
        for key, value in point.items():
            if value not in values.setdefault(key, []):
                values[key].append(value)
    return {k: tune.choice(v) for k, v in values.items()}


def _random_points(space: Any, count: int, seed: int) -> list[dict[str, Any]]:
    """`count` configurations from Optuna's random sampler (relations and derived values applied)."""
    import optuna

    study = optuna.create_study(sampler=_sampler("random", seed))
    return [space.define_by_run(study.ask()) for _ in range(count)]


# What a trial restored from another trial's checkpoint (PBT exploit) can change and have honoured:
# optimizer values (pushed into the restored optimizer, `automl.tune_report.apply_hparams_to_optimizers`)
# and the data augmentation (the data pipeline is rebuilt from the new config). Model structure
# (freeze_backbone, embed_dim, ...) and the optimizer type must stay those of the checkpoint.
PBT_MUTABLE = ("train.optim.lr", "train.optim.weight_decay", "train.optim.momentum")
PBT_MUTABLE_PREFIXES = ("dataset.segment.augmentation.",)


def pbt_mutations(space: Any) -> dict[str, Any]:
    """PBT explore domains: the searched parameters a restored trial can change (see PBT_MUTABLE)."""
    from ray import tune

    mutations: dict[str, Any] = {}
    for param in space.params:
        if param.derived or param.relation is not None:
            continue  # values tied to another parameter: PBT would break the relation
        if param.name not in PBT_MUTABLE and not param.name.startswith(PBT_MUTABLE_PREFIXES):
            continue
        if param.choices:
            mutations[param.name] = list(param.choices)
        elif param.kind == "float" and param.high > param.low:
            mutations[param.name] = tune.loguniform(param.low, param.high) if param.log else tune.uniform(param.low, param.high)
        elif param.kind == "int" and param.high > param.low:
            mutations[param.name] = tune.randint(int(param.low), int(param.high) + 1)
    return mutations


class _FailureLimit:
    """A Ray Tune `Stopper` that ends the search after `limit` failed trials (None: never).

    It reads the driver's in-memory ledger through the tracking callback (Ray asks `stop_all`
    after every event, so no file is read); after `Tuner.restore` the unpickled callback loads
    the ledger from the results folder once.
    """

    def __init__(self, callback: Any, limit: int | None) -> None:
        self.callback, self.limit = callback, limit

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        if self.limit is None:
            return False
        try:
            return self.callback.state.counts().get(FAILED, 0) >= self.limit
        except (FileNotFoundError, ValueError):
            return False


def _make_stopper(callback: Any, limit: int | None):
    from ray.tune import Stopper

    class FailureLimit(_FailureLimit, Stopper):
        pass

    return FailureLimit(callback, limit)


def search_slots(opts: SearchOptions) -> int:
    """Trials that can run at once: --max-concurrent, or fewer when Ray's CPUs or GPUs do not fit them."""
    import ray

    slots = opts.max_concurrent
    resources = ray.cluster_resources() if ray.is_initialized() else {}
    for name, per_trial in (("CPU", opts.cpus_per_trial), ("GPU", opts.gpus_per_trial)):
        if per_trial and resources.get(name):
            slots = min(slots, int(resources[name] / per_trial + 1e-9))
    return max(1, slots)


def lending_applies(opts: SearchOptions) -> bool:
    """Whether idle slots' CPUs go to running trials (`automl.lending`): CPU trials on one node.

    On a cluster an idle slot may be on another machine than the trial, and with --address the
    Ray may be shared with other jobs; a GPU trial's speed does not follow its CPU threads. Not under PBT: a thread count changes a trial's floating-point
    results, and PBT's exploits are meant not to depend on timing. Needs Ray up (nodes and
    resources are read from it).
    """
    if (not opts.lend_cpus or opts.address or opts.gpus_per_trial != 0 or opts.algorithm == "pbt"
            or search_slots(opts) < 2):
        return False
    import ray

    return ray.is_initialized() and sum(1 for node in ray.nodes() if node.get("Alive")) == 1


def _cpu_lending(opts: SearchOptions, expected_trials: int | None, early: Any):
    """The driver side of CPU lending for a search where it applies (`lending_applies`)."""
    from automl.lending import CpuLending

    if expected_trials is None and opts.algorithm != "grid":  # resumed: sized by the settings (a grid sizes itself)
        expected_trials = opts.max_trials
    lending = CpuLending(opts.results_dir, expected_trials=expected_trials, slots=search_slots(opts),
                         cpus_per_trial=opts.cpus_per_trial,
                         promotion_threads=early.threads_in_use if early is not None else None)
    if early is not None:
        early.on_done = lending.refresh  # its threads go to the trials still running
    return lending


def _trainable(opts: SearchOptions, spec: str | None, lend_threads: bool = False):
    from ray import tune

    from automl.trial import TrialContext, train_trial

    ctx = TrialContext(
        results_dir=opts.results_dir,
        spec=spec,
        overrides=tuple(opts.overrides),
        metric=opts.metric,
        mode=opts.mode,
        max_epochs=opts.max_epochs,
        apply_restored_hparams=opts.algorithm == "pbt",
        checkpoint_every_report=opts.algorithm == "pbt",
        lend_threads=lend_threads,
    )
    resources = {"cpu": opts.cpus_per_trial, "gpu": opts.gpus_per_trial}
    return tune.with_resources(tune.with_parameters(train_trial, ctx=ctx), resources)


def _run_config(opts: SearchOptions, callbacks: list):
    from ray.tune import CheckpointConfig, FailureConfig, RunConfig

    return RunConfig(
        name=EXPERIMENT_NAME,
        storage_path=str(Path(opts.results_dir) / RAY_DIR),
        failure_config=FailureConfig(max_failures=opts.trial_retries, fail_fast=False),
        checkpoint_config=CheckpointConfig(
            # PBT clones the checkpoint a trial had at its last perturbation, which may be neither
            # its best nor its latest by the time another trial exploits it: keep them all.
            num_to_keep=None if opts.algorithm == "pbt" else max(1, opts.checkpoints_to_keep),
            checkpoint_score_attribute=opts.ranking_metric,
            checkpoint_score_order=opts.mode,
        ),
        stop=_make_stopper(callbacks[0], opts.max_failed_trials),
        callbacks=callbacks,
        verbose=0,
        log_to_file=True,
    )


# ------------------------------------------------------------------------------------------------
# public entry points
# ------------------------------------------------------------------------------------------------


def run(opts: SearchOptions, *, echo: Callable[[str], None] = print, dry_run: bool = False, live: bool = False) -> SearchOutcome:
    """`automl run`: decide the policy, then search (or train once), promote and report."""
    opts.validate()
    opts.results_dir = str(Path(opts.results_dir).expanduser().resolve())
    skill = _skill(opts)
    from automl.skill import resolve_policy

    decision = resolve_policy(skill, opts.policy)
    spec = _spec_path(opts, skill)
    if decision.mode == "plain":
        echo(f"automl: {decision.reason}")
        if dry_run:
            return SearchOutcome(Path(opts.results_dir), "dry-run", message=decision.reason)
        from automl.probe import check_tracking_uri

        check_tracking_uri(opts.tracking_uri)  # seconds, not minutes of MLflow retries
        return run_plain(opts, spec, skill.name, echo=echo)

    from segformer.config import to_dict

    spec_values = to_dict(_base_config(spec, opts.overrides, opts.results_dir))  # validates the spec and overrides up front
    if opts.max_epochs is None:
        # The epoch budget of every trial and the schedulers' max_t: the spec's own num_epochs.
        opts.max_epochs = int(spec_values["train"]["num_epochs"])
    if opts.algorithm == "pbt" and opts.max_concurrent < 2:
        echo("automl: note: pbt exploits only between trials running at the same time; with --max-concurrent 1 "
             "it behaves like random search (use --max-concurrent >= 2)")
    space = _build_space(skill, opts, spec_values)
    if len(space) == 0:
        raise SearchError("the search space is empty: check --only/--exclude or the schema's automl_default_parameters")
    baseline = space.baseline(spec_values)
    encoded_baseline = space.encode(baseline)
    if opts.algorithm == "grid":
        _grid(space)  # raises naming the infinite parameters
    if dry_run:
        echo(settings_line(opts))
        echo(space.describe())
        echo("")
        echo(_first_recommendations(opts, space, baseline))
        return SearchOutcome(Path(opts.results_dir), "dry-run", message=decision.reason)

    echo(f"automl: {decision.reason}")
    results = Path(opts.results_dir)
    if (results / "automl_state.json").exists():
        raise SearchError(
            f"{results} already holds a search; continue it with `automl resume {results}` or pick another --results-dir"
        )
    check_services(opts)  # before any file or run exists: a wrong address leaves nothing behind
    results.mkdir(parents=True, exist_ok=True)
    from automl.tracking import default_tracking_uri

    opts.tracking_uri = opts.tracking_uri or default_tracking_uri(results)
    opts.experiment_name = opts.experiment_name or skill.name
    state = SearchState(
        results_dir=str(results), skill=skill.name, algorithm=opts.algorithm, metric=opts.metric, mode=opts.mode,
        settings=asdict(opts), spec=spec, overrides=list(opts.overrides), mlflow_tracking_uri=opts.tracking_uri,
        driver_pid=os.getpid(),
    )
    state.settings["spec"] = spec
    # The MLflow store (a new sqlite file: schema migrations, ~2 s) is created in a thread while Ray
    # starts here (~3 s). (Warming Ray's idle workers does not help: Ray starts a fresh worker
    # process for each trial actor, which imports torch and Lightning itself; later trials reuse
    # the actor and start in well under a second.)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="automl-mlflow") as pool:
        tracking = pool.submit(_start_tracking, opts, state, skill.name, space, spec)
        try:
            owns_ray = init_ray(opts)
            resolve_gpus(opts)
        except BaseException:
            try:
                tracker = tracking.result()
                tracker.set_tags(state.mlflow_parent_run_id, {"automl.error": "Ray did not start"})
                tracker.end_run(state.mlflow_parent_run_id, "FAILED")
            except Exception:  # noqa: BLE001 (the Ray error is the one to show)
                pass
            raise
        try:
            tracker = tracking.result()
        except BaseException:
            if owns_ray:
                import ray

                ray.shutdown()  # no search without its MLflow store: leave no Ray running either
            raise
    state.settings["gpus_per_trial"] = opts.gpus_per_trial
    tracker.log_params(state.mlflow_parent_run_id, {"automl.gpus_per_trial": opts.gpus_per_trial})
    state.save()
    echo(settings_line(opts) + f" -> {results}")
    return _fit(opts, state, tracker, spec, space=space, baseline=(baseline, encoded_baseline), restore=False,
                echo=echo, live=live, owns_ray=owns_ray)


def _start_tracking(opts: SearchOptions, state: SearchState, skill_name: str, space: Any, spec: str | None):
    """The MLflow side of a new search: store, experiment, parent run and the space artifact."""
    from automl.tracking import Tracker

    results = Path(state.results_dir)
    tracker = Tracker(opts.tracking_uri, results, opts.experiment_name)
    params = {f"automl.{k}": v for k, v in asdict(opts).items() if v not in (None, [], {}) and k != "extra"}
    params.update({f"automl.tao.{k}": v for k, v in opts.extra.items()})
    state.mlflow_parent_run_id = tracker.start_parent(
        f"search-{opts.algorithm}-{time.strftime('%Y%m%d-%H%M%S')}", params,
        {"automl.results_dir": str(results), "automl.skill": skill_name, "automl.algorithm": opts.algorithm},
    )
    state.mlflow_experiment_id = tracker.experiment_id()
    _write_space_artifact(tracker, state, space, spec)
    return tracker


def resume(results_dir: str | Path, *, echo: Callable[[str], None] = print, live: bool = False,
           address: str | None = None) -> SearchOutcome:
    """`automl resume`: continue an interrupted search from Ray's experiment checkpoint.

    Finished trials stay finished (their MLflow runs untouched); trials that were running resume
    from their latest checkpoint in the same MLflow child run; trials Ray never registered are
    marked KILLED in MLflow. Nothing runs twice from scratch.
    """
    results = Path(results_dir).expanduser().resolve()
    state = SearchState.load(results)
    opts = SearchOptions.from_dict(state.settings)
    opts.results_dir = str(results)
    if address is not None:
        opts.address = address
    if state.status == FINISHED:
        echo(f"automl: the search in {results} already finished; see `automl status {results}`")
        return SearchOutcome(results, "search", state=state, best=state.best(), baseline=state.baseline())
    check_services(opts, state.mlflow_tracking_uri)
    from automl.tracking import Tracker

    tracker = Tracker(state.mlflow_tracking_uri or opts.tracking_uri or "", results, opts.experiment_name or state.skill)
    if state.mlflow_parent_run_id:
        tracker.reopen_run(state.mlflow_parent_run_id)
    state.status, state.driver_pid = RUNNING, os.getpid()
    state.save()
    echo(f"automl: resuming {opts.algorithm} search in {results} ({len(state.trials)} trials recorded)")
    return _fit(opts, state, tracker, state.spec, space=None, baseline=None, restore=True, echo=echo, live=live)


def _fit(opts: SearchOptions, state: SearchState, tracker: Any, spec: str | None, *, space: Any, baseline: Any,
         restore: bool, echo: Callable[[str], None], live: bool, owns_ray: bool | None = None) -> SearchOutcome:
    import ray
    from ray import tune

    from automl.tracking import TrackingCallback, reconcile_interrupted

    if owns_ray is None:
        owns_ray = init_ray(opts)
        resolve_gpus(opts)
    callback = TrackingCallback(opts.results_dir, tracker.tracking_uri, tracker.experiment_name)
    callback.attach(state, tracker)
    live_table = None
    if live:
        from automl.report import LiveTable

        live_table = LiveTable(echo)
    preloading: list[bool] = []
    # Resumed: sized from the settings; a new search: once it is built (below).
    early = _early_promotion(opts, state.skill, None) if restore else None
    lend = lending_applies(opts)  # asks Ray about its nodes: once per search
    lending = _cpu_lending(opts, None, early) if restore and lend else None
    if lend:
        from automl.lending import clear

        clear(opts.results_dir)  # a resumed search starts with nothing lent

    def on_change(current: SearchState) -> None:
        if live_table is not None:
            live_table(current)
        # Once the first epoch is reported the first workers have loaded torch: loading it in the
        # driver earlier would compete with them for the CPU.
        if not preloading and any(t.history for t in current.trials.values()):
            preloading.append(True)
            preload_promotion(opts)
        if early is not None:
            early.consider(current)
        if lending is not None:
            lending.update(current)  # after the promotion took its threads

    callback.on_change = on_change
    experiment_dir = Path(opts.results_dir) / RAY_DIR / EXPERIMENT_NAME
    trainable = _trainable(opts, spec, lend)
    interrupted = False
    # Ctrl-C (SIGINT) and SIGTERM both raise KeyboardInterrupt here. Ray Tune's own SIGINT handler
    # would instead end `fit()` normally, and the search would then be ranked, promoted and closed
    # as FINISHED although trials were cut: `automl resume` could not continue it. Ray's
    # experiment state is written after every event (TUNE_GLOBAL_CHECKPOINT_S=0), so the
    # interrupted search resumes like one whose driver was killed.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    previous = signal.getsignal(signal.SIGTERM)
    previous_int = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if restore:
            from automl.tracking import repair_ray_state

            repaired = repair_ray_state(experiment_dir)
            if repaired:
                echo(f"automl: restored Ray state files cut by the kill from their last complete copy: {', '.join(repaired)}")
            if not tune.Tuner.can_restore(str(experiment_dir)):
                raise SearchError(f"no Ray experiment checkpoint in {experiment_dir}; cannot resume this search")
            tuner = tune.Tuner.restore(str(experiment_dir), trainable=trainable, resume_unfinished=True,
                                       resume_errored=False, restart_errored=False)
            # Tuner.restore unpickles the original RunConfig callbacks; share this process's ledger.
            restored_config = tuner._local_tuner.get_run_config()  # noqa: SLF001 (no public accessor)
            for cb in restored_config.callbacks or []:
                if isinstance(cb, TrackingCallback):
                    cb.attach(state, tracker)
                    cb.on_change = callback.on_change
                    if isinstance(restored_config.stop, _FailureLimit):
                        restored_config.stop.callback = cb  # count failures in the live ledger
        else:
            from automl.trial import TrialNamer

            namer = TrialNamer(opts.results_dir)
            search_alg, scheduler, num_samples, param_space = build_search(opts, space, *baseline)
            early = _early_promotion(opts, state.skill, num_samples)
            lending = _cpu_lending(opts, num_samples, early) if lend else None
            tuner = tune.Tuner(
                trainable,
                param_space=param_space,
                tune_config=tune.TuneConfig(
                    search_alg=search_alg, scheduler=scheduler, num_samples=num_samples,
                    time_budget_s=opts.time_budget_s,  # concurrency: set on the search algorithm itself
                    reuse_actors=opts.algorithm != "pbt", trial_name_creator=namer, trial_dirname_creator=namer,
                ),
                run_config=_run_config(opts, [callback]),
            )
        started = time.time()
        # Ray logs every failed trial's whole traceback at ERROR; the driver records it in the state
        # file and MLflow instead and prints one line per failed trial in the summary.
        tune_log = logging.getLogger("ray.tune")
        tune_level = tune_log.level
        tune_log.setLevel(logging.CRITICAL)
        try:
            with seeded_global_rngs(opts.seed):
                tuner.fit()
        finally:
            tune_log.setLevel(tune_level)
        echo(f"automl: search done in {time.time() - started:.1f} s")
        if lending is not None and lending.lent_to:
            echo(f"automl: the search's tail lent idle CPUs to {', '.join(sorted(lending.lent_to))} "
                 f"(extra torch threads; --no-lend-cpus keeps each trial at its own)")
    except KeyboardInterrupt:
        interrupted = True
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the bookkeeping below
        # Trials cut here are KILLED in the ledger and MLflow (not left RUNNING); `automl resume`
        # continues them from their last checkpoint in the same child run (reopened as RUNNING).
        killed = reconcile_interrupted(state, tracker, reason="interrupted: the search was stopped (Ctrl-C/SIGTERM) "
                                       "while this trial ran; `automl resume` continues it")
        state.status = "INTERRUPTED"
        state.save()
        if state.mlflow_parent_run_id:
            tracker.set_tags(state.mlflow_parent_run_id, {"automl.interrupted": "true"})
            tracker.end_run(state.mlflow_parent_run_id, "KILLED")
        shown = f" (trials cut: {', '.join(killed)})" if killed else ""
        echo(f"automl: interrupted{shown}; state saved; continue with `automl resume {opts.results_dir}`")
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
        shutdown = None
        if not interrupted and owns_ray:
            # local Ray: stops it; --address: disconnects this driver only. It takes a second or
            # more (processes to stop); ranking, promotion and the report need no Ray, so they go
            # on meanwhile and the search ends when both are done.
            import threading

            shutdown = threading.Thread(target=ray.shutdown, name="automl-ray-shutdown")
            shutdown.start()

    stop_reason = ""
    failed = state.counts().get(FAILED, 0)
    if opts.max_failed_trials is not None and failed >= opts.max_failed_trials:
        stop_reason = (f"the search stopped after {failed} failed trials (limit --max-failed-trials "
                       f"{opts.max_failed_trials}); see the errors with `automl status {opts.results_dir}`")
        echo(f"automl: {stop_reason}")
    killed = reconcile_interrupted(state, tracker, reason=f"stopped: {stop_reason}" if stop_reason else
                                   "interrupted: the driver stopped while this trial ran")
    if killed:
        echo(f"automl: marked trials that did not end KILLED: {', '.join(killed)}")
    try:
        return finish(opts, state, tracker, echo=echo, stop_reason=stop_reason, early=early)
    finally:
        if shutdown is not None:
            shutdown.join()


def promote_options(opts: SearchOptions, skill: str):
    from automl.promote import PromoteOptions

    return PromoteOptions(
        evaluate=not opts.skip_evaluate, export=not opts.skip_export, quantize=not opts.skip_quantize,
        trt=not opts.skip_trt, model_name=opts.register_model or f"{skill}-segformer".replace("segformer-segformer", "segformer"),
        alias=opts.register_alias,
    )


def _early_promotion(opts: SearchOptions, skill: str, expected_trials: int | None):
    """The search tail's promotion (`automl.promote.EarlyPromotion`), or None when it cannot apply.

    `expected_trials`: how many trials the search starts in all, as built; None for a resumed
    search, which counts `max_trials`, except a resumed grid search (it sizes itself), which
    promotes after the search. PBT always does: its trials exploit each other's checkpoints
    until the end, and a thread competing for the CPU would change which ones they exploit.
    """
    if not opts.promote or opts.max_concurrent < 2 or opts.algorithm == "pbt":
        return None
    if expected_trials is None:
        if opts.algorithm == "grid":
            return None
        expected_trials = opts.max_trials
    from automl.promote import EarlyPromotion

    return EarlyPromotion(promote_options(opts, skill), expected_trials=expected_trials, slots=search_slots(opts),
                          cpus_per_trial=opts.cpus_per_trial)


def finish(opts: SearchOptions, state: SearchState, tracker: Any, *, echo: Callable[[str], None] = print,
           stop_reason: str = "", early: Any = None) -> SearchOutcome:
    """Rank, promote the best trial, write the report, close the parent run."""
    best, baseline = state.best(), state.baseline()
    state.best_trial = best.name if best else None
    promotion: dict[str, Any] = {}
    prepared = early.take(best) if early is not None and best is not None else None
    if early is not None and early.started:
        echo(f"automl: promotion of {early.trial_name} started while the last trials ran")
        for line in early.lines:
            echo(line)
    if best is not None and opts.promote:
        from automl.promote import promote

        promotion = promote(state, best, tracker, promote_options(opts, state.skill), echo=echo, prepared=prepared)
    state.promotion = promotion
    from automl.report import write_report

    report = write_report(state)
    parent = state.mlflow_parent_run_id
    if parent:
        metrics: dict[str, float] = {"trials_finished": state.counts().get(FINISHED, 0),
                                     "trials_stopped_early": state.counts().get(STOPPED, 0),
                                     "trials_failed": state.counts().get(FAILED, 0)}
        startup = startup_latencies(state)
        if startup:
            metrics["trial_startup_median_s"] = _median(startup)
        if best is not None and best.best_value is not None:
            metrics[f"best_{opts.metric}"] = best.best_value
        if baseline is not None and baseline.best_value is not None:
            metrics[f"baseline_{opts.metric}"] = baseline.best_value
        tracker.log_metrics(parent, metrics, step=0)
        tags = {"automl.best_trial": best.name if best else "none"}
        if stop_reason:
            tags["automl.stop_reason"] = stop_reason
        if best is not None:
            tags["automl.best_params"] = best.params
        tracker.set_tags(parent, tags)
        tracker.log_artifacts(parent, [report.parent], "report")
    state.status = FINISHED
    state.save()
    if parent:
        tracker.end_run(parent, FINISHED)
    echo(summary(state))
    return SearchOutcome(Path(opts.results_dir), "search", state=state, best=best, baseline=baseline,
                         promotion=promotion, report=report, message=stop_reason, stopped_by_failures=bool(stop_reason))


def _error_line(error: str | None) -> str:
    """The line of a recorded traceback that says what went wrong (its last non-empty line)."""
    lines = [line.strip() for line in (error or "").splitlines() if line.strip()]
    return (lines[-1] if lines else "no error recorded")[:300]


def summary(state: SearchState) -> str:
    """Best trial against the baseline, where things are, how to open the UI."""
    best, baseline = state.best(), state.baseline()
    lines = [f"automl: {len(state.trials)} trials ({', '.join(f'{v} {k.lower()}' for k, v in sorted(state.counts().items()))})"]
    for record in state.trials.values():
        if record.status == "FAILED":
            lines.append(f"  failed   {record.name}: {_error_line(record.error)}")
    if best is None:
        lines.append("automl: no trial produced a result; see `automl status` for the errors")
    else:
        changed = {k: v for k, v in best.params.items() if baseline is None or baseline.params.get(k) != v}
        shown = ", ".join(f"{k}={_short(v)}" for k, v in changed.items()) or "the baseline itself"
        lines.append(f"  best     {best.name}: {state.metric}={best.best_value:.4f} (epoch {best.best_epoch}); {shown}")
        if baseline is not None and baseline.best_value is not None:
            delta = best.best_value - baseline.best_value
            lines.append(f"  baseline {baseline.name}: {state.metric}={baseline.best_value:.4f}  (best {delta:+.4f})")
    startup = startup_latencies(state)
    if startup:
        lines.append(f"  trial start-up (Ray start -> first training step): median {_median(startup):.2f} s "
                     f"over {len(startup)} starts")
    results = Path(state.results_dir)
    lines += [
        f"  artifacts  {results / 'best'}",
        f"  report     {results / 'report' / 'report.md'}",
        f"  MLflow UI  automl ui {results}",
    ]
    return "\n".join(lines)


def run_plain(opts: SearchOptions, spec: str | None, skill_name: str, *, echo: Callable[[str], None] = print) -> SearchOutcome:
    """Policy off (or AutoML not runnable): the spec trained once, still tracked as one MLflow run."""
    from segformer.actions import train as train_action
    from segformer.config import apply_overrides

    from automl.tracking import Tracker, default_tracking_uri

    results = Path(opts.results_dir).expanduser().resolve()
    results.mkdir(parents=True, exist_ok=True)
    overrides: dict[str, Any] = {"results_dir": str(results), "train.results_dir": str(results / "train")}
    if opts.max_epochs:
        overrides["train.num_epochs"] = opts.max_epochs
    cfg = apply_overrides(_base_config(spec, opts.overrides, results), overrides)
    tracker = Tracker(opts.tracking_uri or default_tracking_uri(results), results, opts.experiment_name or skill_name)
    run_id = tracker.start_parent("train", {"spec": spec or "", "overrides": opts.overrides}, {"automl.policy": "off"})
    try:
        result = train_action.run(cfg)
    except BaseException as err:
        tracker.set_tags(run_id, {"automl.error": repr(err)[:500]})
        tracker.end_run(run_id, FAILED if isinstance(err, Exception) else "KILLED")
        raise
    for record in result.history:
        step = int(record.get("epoch", 0))
        tracker.log_metrics(run_id, {k: v for k, v in record.items() if k != "epoch"}, step=step)
    tracker.log_metrics(run_id, {f"best_{opts.metric}": float(result.best_miou)}, step=int(result.best_epoch))
    tracker.end_run(run_id, FINISHED)
    echo(f"automl: trained once: best {opts.metric}={result.best_miou:.4f} at epoch {result.best_epoch}; "
         f"checkpoint {result.last_checkpoint}")
    return SearchOutcome(results, "plain", message=f"best {opts.metric}={result.best_miou:.4f}")


def _first_recommendations(opts: SearchOptions, space: Any, baseline: dict[str, Any], count: int = 3) -> str:
    """What the first trials would be: the baseline, then the sampler's first picks."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    lines = [f"first {count + 1} trials ({opts.algorithm}):", "  trial_000 (baseline): " + ", ".join(f"{k}={_short(v)}" for k, v in baseline.items())]
    if opts.algorithm == "grid":
        for i, point in enumerate([p for p in _grid(space) if p != baseline][:count], 1):
            lines.append(f"  trial_{i:03d}: {point}")
        return "\n".join(lines)
    kind = "tpe" if opts.algorithm in ("bayesian", "asha", "bohb") else "random"
    study = optuna.create_study(direction="maximize" if opts.mode == "max" else "minimize",
                                sampler=_sampler(kind, opts.seed))
    for i in range(1, count + 1):
        trial = study.ask()
        values = space.define_by_run(trial)
        lines.append(f"  trial_{i:03d}: " + ", ".join(f"{k}={_short(v)}" for k, v in values.items()))
    return "\n".join(lines)


def startup_latencies(state: SearchState) -> list[float]:
    """Seconds from each Ray trial (re)start to its first training step, over all trials."""
    return [s for t in state.trials.values() for s in t.startup_s]


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def settings_line(opts: SearchOptions) -> str:
    """One line with the budget a search runs under (printed by run and --dry-run)."""
    trials = f"population {opts.population_size}" if opts.algorithm == "pbt" else f"up to {opts.max_trials} trials"
    budget = f", time budget {opts.time_budget_s:g} s" if opts.time_budget_s else ""
    return (f"automl: {opts.algorithm} search, {trials} x {opts.max_epochs or 'spec'} epochs, {opts.max_concurrent} at a time "
            f"({opts.cpus_per_trial:g} CPU, {_gpus_text(opts.gpus_per_trial)} GPU each){budget}; metric {opts.metric} ({opts.mode})")


def _gpus_text(gpus: float | None) -> str:
    return "auto" if gpus is None else f"{gpus:g}"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _write_space_artifact(tracker: Any, state: SearchState, space: Any, spec: str | None) -> None:
    from segformer.fileio import atomic_write_text

    folder = Path(state.results_dir) / "search"
    atomic_write_text(folder / "space.txt", space.describe())
    files = [folder / "space.txt"]
    if spec:
        files.append(Path(spec))
    tracker.log_artifacts(state.mlflow_parent_run_id, files, "search")
