"""Everything a search is told, in one options model, and its one validator.

The sections follow Ray's split of a run's settings (TuneConfig / RunConfig):

- ``search``: what is searched and how (algorithm, budget, metric, the space's selection);
- ``resources``: where trials run (slots, CPUs/GPUs per trial, the Ray cluster, failure policy);
- ``promotion``: what happens to the best trial (evaluate, export, quantize, TensorRT, registry);
- ``tracking``: where results are recorded and what is kept (MLflow, checkpoints).

Each field's name is unique across the sections, so a flat mapping of option names (a TAO settings
file after `automl.settings`, the command line's flags, a Python caller) builds the options with
:meth:`SearchOptions.build`. The state file keeps :meth:`SearchOptions.to_dict`; `automl resume`
rebuilds the same options with :meth:`SearchOptions.from_dict`. Options are frozen: the runner
resolves what is decided at run time (the spec's epochs, GPUs per trial) into a copy
(:meth:`SearchOptions.with_values`).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = [
    "ALGORITHMS",
    "PromotionConfig",
    "ResourceConfig",
    "SearchConfig",
    "SearchError",
    "SearchOptions",
    "TrackingConfig",
]

# The algorithms this driver runs (TAO names), and TAO's short aliases.
ALGORITHMS = ("bayesian", "random", "grid", "asha", "hyperband", "hyperband_es", "bohb", "dehb", "bfbo", "pbt")
ALGORITHM_ALIASES = {"b": "bayesian", "h": "hyperband", "hes": "hyperband_es"}
# TAO algorithms this driver does not run (named as such when asked for).
TAO_ONLY_ALGORITHMS = ("llm", "hybrid", "autoresearch")
# what a training validates and reports each validated epoch (segformer.engine.module; kept here: --help stays light)
METRICS = ("val_miou", "val_macc", "val_aacc", "val_loss")
MULTI_FIDELITY = ("asha", "hyperband", "hyperband_es", "bohb", "dehb")  # trials stopped early by a HyperBand-family scheduler


class SearchError(ValueError):
    """A search cannot start as configured; the message names the option, the value and the fix."""


@dataclass(frozen=True)
class SearchConfig:
    """What is searched and how."""

    algorithm: str = "bayesian"  # one of ALGORITHMS; full trainings under the budget (why: automl.budget)
    metric: str = "val_miou"  # reported by the train action at each validation
    mode: str = "max"  # "max" or "min" (TAO direction maximize/minimize)
    budget: float = 10.0  # epochs for the whole search, re-checks included, in trainings of the spec (`automl.budget`)
    max_trials: int | None = None  # trials in all, the baseline included (TAO automl_max_recommendations); set: no budget
    recheck: bool | None = None  # re-train the leader and the baseline with another seed before promoting; None: with a budget
    max_epochs: int | None = None  # a trial's budget in resource units; None: the spec's train.num_epochs (in epochs)
    epoch_multiplier: int = 1  # epochs per resource unit (TAO): a trial trains max_epochs x this, rungs at multiples of it
    time_budget_s: float | None = None  # seconds: then running trials stop at their epoch's end (`automl.callbacks.SearchLimits`); None: no limit
    seed: int = 0  # sampler seed; also HyperBand's bracket draws and PBT's perturbations
    baseline_first: bool = True  # the first trial is the spec's own configuration (TAO run_baseline)
    grace_period: int | None = None  # asha/hyperband/bohb: units before a trial can be stopped (TAO automl_min_early_stop_epochs); None: ~1/9 of a trial's epochs with a budget, else 1
    reduction_factor: int = 3  # asha/hyperband/bohb: keep 1/reduction_factor per rung (TAO automl_reduction_factor)
    mutation_factor: float = 0.5  # dehb: DE's scale factor F (TAO automl_mutation_factor)
    crossover_prob: float = 0.5  # dehb: DE's crossover probability CR (TAO automl_crossover_prob)
    early_stop_threshold: float = 0.0  # hyperband_es: stop a trial whose extrapolated final falls short of the best by more (TAO automl_early_stop_threshold)
    population_size: int = 4  # pbt: trials in the population (TAO automl_population_size)
    perturbation_interval: int = 1  # pbt: epochs between exploit/explore steps (TAO automl_eval_interval)
    perturbation_factor: float = 1.2  # pbt: explore multiplies a value by this or by its inverse (TAO automl_perturbation_factor)
    only: tuple[str, ...] | None = None  # searched parameters instead of the schema's defaults (TAO automl_hyperparameters)
    include: tuple[str, ...] = ()  # added to the schema's defaults (TAO automl_add_hyperparameters)
    exclude: tuple[str, ...] = ()  # removed from them (TAO automl_remove_hyperparameters)
    param_ranges: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # TAO custom_param_ranges
    override_disabled: bool = False  # TAO override_automl_disabled_params
    # Deploy-aware search (`automl.deploy`): structural parameters searched over the options given
    # (spec keys of segformer.deploy.latency.STRUCTURE_KEYS, and deploy.precision), each backbone
    # starting from its own pretrained weights, and the latency measured on the deployment runtime.
    structure: Mapping[str, Any] = field(default_factory=dict)  # {key: [options]}: --backbones, --img-sizes, --embed-dims, --precisions
    pretrained_backbones: Mapping[str, str] = field(default_factory=dict)  # backbone type -> local pretrained weights
    max_latency_ms: float | None = None  # a hard limit: slower trials are recorded, never trained on nor promoted
    max_latency_ratio: float | None = None  # the limit as a share of the spec's own model's latency (resolved to max_latency_ms)
    latency: bool | None = None  # measure every trial's latency; None: when structure or max_latency_ms is given
    latency_runtime: str = "onnxruntime"  # onnxruntime (CPU) | torch | tensorrt
    latency_batch: int = 1
    latency_threads: int | None = None  # None: every core of the machine that measures
    objectives: tuple[str, ...] | None = None  # ("val_miou:max", "latency_ms:min"): a Pareto front decides the promotion (`automl.pareto`)
    objective_weights: tuple[tuple[float, float], ...] | None = None  # ((weight, scale) of the metric, of the cost): NVIDIA's scalarisation picks the front's member

    def __post_init__(self) -> None:
        for name in ("include", "exclude"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.only is not None:
            object.__setattr__(self, "only", tuple(self.only))
        object.__setattr__(self, "param_ranges", {str(k): dict(v) if isinstance(v, Mapping) else v
                                                  for k, v in dict(self.param_ranges or {}).items()})
        object.__setattr__(self, "structure", {str(k): list(v) if isinstance(v, (list, tuple)) else v
                                               for k, v in dict(self.structure or {}).items()})
        if isinstance(self.objectives, str):
            object.__setattr__(self, "objectives", tuple(o.strip() for o in self.objectives.split(",") if o.strip()))
        elif self.objectives is not None:
            object.__setattr__(self, "objectives", tuple(self.objectives))
        if isinstance(self.objective_weights, (list, tuple)):
            object.__setattr__(self, "objective_weights", tuple(tuple(w) if isinstance(w, (list, tuple)) else w
                                                                for w in self.objective_weights))
        object.__setattr__(self, "pretrained_backbones", {str(k): v for k, v in dict(self.pretrained_backbones or {}).items()})

    @property
    def measures_latency(self) -> bool:
        """Every trial's latency is measured (`automl.deploy`)."""
        return (self.latency if self.latency is not None
                else bool(self.structure) or self.max_latency_ms is not None or self.max_latency_ratio is not None
                or bool(self.objectives))

    @property
    def ranking_metric(self) -> str:
        """What searchers, schedulers and the final ranking compare: the best epoch so far."""
        return f"best_{self.metric}"

    @property
    def budgeted(self) -> bool:
        """The epoch budget decides how many trials run (no max_trials given; PBT sizes itself by its population)."""
        return self.max_trials is None and self.algorithm != "pbt"

    @property
    def rechecked(self) -> bool:
        """Leaders are re-checked against the baseline before promotion (`automl.budget`); the Optuna
        samplers only (a grid and PBT's population are preset)."""
        return self.baseline_first and self.budgeted and self.algorithm != "grid" and self.recheck is not False

    @property
    def multi_fidelity(self) -> bool:
        return self.algorithm in MULTI_FIDELITY

    @property
    def trial_epochs(self) -> int | None:
        """Epochs a trial may train: max_epochs resource units of epoch_multiplier epochs."""
        return None if self.max_epochs is None else self.max_epochs * self.epoch_multiplier


@dataclass(frozen=True)
class ResourceConfig:
    """Where trials run."""

    max_concurrent: int | None = None  # trials at the same time (TAO automl_max_concurrent); None: every CPU or GPU busy
    cpus_per_trial: float | None = None  # Ray resources per trial; None: 1, more when a budget leaves CPUs idle (`automl.ray_session`)
    gpus_per_trial: float | None = None  # None: 1 when the Ray cluster has a GPU, else 0; fractions share a GPU
    address: str | None = None  # Ray cluster address; None starts a local Ray
    num_cpus: int | None = None  # local Ray only: CPUs Ray may use (None: all)
    max_failures: int = 1  # restarts of a crashed trial (Ray FailureConfig.max_failures); a failed trial never ends the search
    max_failed_trials: int | None = None  # stop the search after this many failed trials (None: never)


@dataclass(frozen=True)
class PromotionConfig:
    """What happens to the best trial (`automl.promote`)."""

    promote: bool = True  # run the promotion chain at all
    evaluate: bool = True
    export: bool = True  # ONNX
    quantize: bool = True
    trt: bool = True  # TensorRT engine (skipped with the reason where TensorRT or a GPU is missing)
    register_model: str | None = None  # MLflow registered model name; None: "segformer" (or "<skill>-segformer")
    alias: str = "champion"  # registry alias of the promoted version


@dataclass(frozen=True)
class TrackingConfig:
    """Where results are recorded and what is kept."""

    tracking_uri: str | None = None  # MLflow; None: sqlite in the results folder
    experiment_name: str | None = None  # MLflow experiment; None: the skill's name
    delete_intermediate_checkpoints: bool = True  # keep only each trial's best and latest (TAO automl_delete_intermediate_ckpt)


SECTIONS: dict[str, type] = {"search": SearchConfig, "resources": ResourceConfig, "promotion": PromotionConfig,
                             "tracking": TrackingConfig}
# option name -> its section (names are unique across sections)
OPTION_SECTION: dict[str, str] = {f.name: section for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
TOP_LEVEL = ("results_dir", "spec", "overrides", "skill", "skill_dir", "policy")


@dataclass(frozen=True)
class SearchOptions:
    """A search: its inputs (spec, overrides, skill, policy), where it writes, and the four sections."""

    results_dir: str = "automl_results"  # the search folder (`automl.layout`)
    spec: str | None = None  # the user's spec (-e); None: the skill's train template
    overrides: tuple[str, ...] = ()  # key=value overrides applied to every trial
    skill: str | None = "segformer"  # --skill NAME (ours)
    skill_dir: str | None = None  # --skill-dir PATH (NVIDIA's layout)
    policy: str = "auto"  # auto | on | off
    search: SearchConfig = field(default_factory=SearchConfig)
    resources: ResourceConfig = field(default_factory=ResourceConfig)
    promotion: PromotionConfig = field(default_factory=PromotionConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "overrides", tuple(self.overrides))

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, values: Mapping[str, Any] | None = None, **top: Any) -> "SearchOptions":
        """Options from flat option names (``max_trials``, ``cpus_per_trial``, ...) plus the top-level
        fields; a value of None means "not given" (the default stays). Validated."""
        return cls(**top).with_values(**{k: v for k, v in (values or {}).items() if v is not None})

    def with_values(self, **values: Any) -> "SearchOptions":
        """A validated copy with flat option names (or top-level fields) replaced."""
        sections: dict[str, dict[str, Any]] = {}
        top: dict[str, Any] = {}
        for name, value in values.items():
            if name in TOP_LEVEL:
                top[name] = value
            elif name in OPTION_SECTION:
                sections.setdefault(OPTION_SECTION[name], {})[name] = value
            else:
                close = difflib.get_close_matches(name, [*OPTION_SECTION, *TOP_LEVEL], n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise SearchError(f"unknown AutoML option {name!r}{hint}")
        if "algorithm" in sections.get("search", {}):
            sections["search"]["algorithm"] = _algorithm(sections["search"]["algorithm"])
        replaced = dataclasses.replace(self, **top, **{s: dataclasses.replace(getattr(self, s), **v) for s, v in sections.items()})
        replaced.validate()
        return replaced

    def flat(self) -> dict[str, Any]:
        """Every option by its flat name (the sections merged), top-level fields included."""
        out: dict[str, Any] = {name: getattr(self, name) for name in TOP_LEVEL}
        for section in SECTIONS:
            out.update(dataclasses.asdict(getattr(self, section)))
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain nested data for the state file (JSON)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SearchOptions":
        """The inverse of :meth:`to_dict`."""
        sections = {name: kind(**data.get(name, {})) for name, kind in SECTIONS.items()}
        return cls(**{k: data[k] for k in TOP_LEVEL if k in data}, **sections)

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Every rule on every option; the first broken one is raised as a `SearchError`."""
        s, r = self.search, self.resources
        if s.algorithm not in ALGORITHMS:
            extra = " (a TAO algorithm this driver does not run)" if s.algorithm in TAO_ONLY_ALGORITHMS else ""
            close = difflib.get_close_matches(str(s.algorithm), ALGORITHMS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise SearchError(f"unknown AutoML algorithm {s.algorithm!r}{extra}; valid: {', '.join(ALGORITHMS)}{hint}")
        _check(s.mode in ("max", "min"), f"mode must be 'max' or 'min' (TAO direction maximize/minimize), got {s.mode!r}")
        if s.metric not in METRICS:  # else every trial's first report failed Ray's check, the search with it
            close = difflib.get_close_matches(str(s.metric), METRICS, n=1)
            raise SearchError(f"metric {s.metric!r} is not one a training reports; valid: {', '.join(METRICS)}"
                              + (f"; did you mean {close[0]!r}?" if close else ""))
        for name, value, minimum in (("epoch_multiplier", s.epoch_multiplier, 1),
                                     ("reduction_factor", s.reduction_factor, 2),
                                     ("population_size", s.population_size, 2),
                                     ("perturbation_interval", s.perturbation_interval, 1), ("seed", s.seed, 0),
                                     ("max_failures", r.max_failures, 0)):
            _integer(name, value, minimum)
        for name, value in (("max_trials", s.max_trials), ("max_epochs", s.max_epochs), ("num_cpus", r.num_cpus),
                            ("max_failed_trials", r.max_failed_trials), ("max_concurrent", r.max_concurrent),
                            ("grace_period", s.grace_period)):
            if value is not None:  # None: not set (the budget, the spec's epochs, all CPUs, no limit, every slot)
                _integer(name, value, 1)
        _check(r.cpus_per_trial is None or (_number(r.cpus_per_trial) and r.cpus_per_trial > 0),
               f"cpus_per_trial must be > 0, got {r.cpus_per_trial!r}")
        _check(r.gpus_per_trial is None or (_number(r.gpus_per_trial) and r.gpus_per_trial >= 0),
               f"gpus_per_trial must be >= 0 (fractions share a GPU), got {r.gpus_per_trial!r}")
        _check(s.time_budget_s is None or (_number(s.time_budget_s) and s.time_budget_s > 0),
               f"time_budget_s must be > 0 seconds, got {s.time_budget_s!r}")
        _check(_number(s.budget) and s.budget >= 1,
               f"budget must be at least 1 (trainings of the spec: the baseline alone is one), got {s.budget!r}")
        _check(s.recheck is None or isinstance(s.recheck, bool), f"recheck must be true or false, got {s.recheck!r}")
        _check(not (s.recheck and s.max_trials is not None),
               f"recheck runs inside the epoch budget, and max_trials={s.max_trials} replaces the budget; drop max_trials "
               f"(automl_max_recommendations) and size the search with --budget")
        _check(not (s.recheck and s.algorithm in ("pbt", "grid")),
               f"recheck needs a sampled search inside an epoch budget; {s.algorithm} is sized by its "
               f"{'population' if s.algorithm == 'pbt' else 'grid'}: drop --recheck or choose another algorithm")
        _check(_number(s.perturbation_factor) and s.perturbation_factor > 1,
               f"perturbation_factor must be > 1, got {s.perturbation_factor!r}")
        _check(_number(s.mutation_factor) and 0 < s.mutation_factor <= 2,
               f"mutation_factor (automl_mutation_factor) must be in (0, 2], got {s.mutation_factor!r}")
        _check(_number(s.crossover_prob) and 0 <= s.crossover_prob <= 1,
               f"crossover_prob (automl_crossover_prob) must be in [0, 1], got {s.crossover_prob!r}")
        _check(_number(s.early_stop_threshold) and s.early_stop_threshold >= 0,
               f"early_stop_threshold (automl_early_stop_threshold) must be >= 0 in the metric's units, "
               f"got {s.early_stop_threshold!r}")
        for section in (s, self.promotion, self.tracking):
            for f in dataclasses.fields(section):
                if f.type == "bool":
                    value = getattr(section, f.name)
                    _check(isinstance(value, bool), f"{f.name} must be true or false, got {value!r}")
        for name in ("only", "include", "exclude"):
            value = getattr(s, name)
            _check(value is None or all(isinstance(v, str) and v for v in value),
                   f"{name} must be a list of dotted parameter names, got {value!r}")
        _check(self.policy in ("auto", "on", "off"), f"policy must be auto, on or off, got {self.policy!r}")
        _check_deploy(s)
        if s.multi_fidelity and s.max_epochs is not None and s.grace_period is not None and s.grace_period > s.max_epochs:
            raise SearchError(f"grace_period {s.grace_period} exceeds max_epochs {s.max_epochs} (in units of "
                              f"epoch_multiplier={s.epoch_multiplier} epochs); lower grace_period")


def _check_deploy(s: SearchConfig) -> None:
    """The deploy-aware options (`automl.deploy`)."""
    from segformer.deploy.latency import PRECISION_KEY, PRECISIONS, RUNTIMES, STRUCTURE_KEYS

    known = (*STRUCTURE_KEYS, PRECISION_KEY)
    for key, options in s.structure.items():
        _check(key in known, f"structure parameter {key!r} is not one of {', '.join(known)}")
        _check(isinstance(options, list) and len(options) > 0 and len({str(o) for o in options}) == len(options),
               f"{key}: give a list of distinct options to search, got {options!r}")
        if key == PRECISION_KEY:
            bad = [o for o in options if o not in PRECISIONS]
            _check(not bad, f"{key} options {bad} are not precisions; use {', '.join(PRECISIONS)}")
            _check("fp16" not in options or s.latency_runtime == "tensorrt",
                   f"{key} fp16 is a GPU precision, timed on TensorRT: add --latency-runtime tensorrt "
                   f"(latency_runtime), or search fp32 and int8 on {s.latency_runtime}")
        elif key != "model.backbone.type":
            _check(all(isinstance(o, int) and not isinstance(o, bool) and o >= 32 for o in options),
                   f"{key} options must be integers >= 32, got {options!r}")
    for backbone, path in s.pretrained_backbones.items():
        _check(isinstance(path, str) and bool(path), f"pretrained_backbones: {backbone!r} needs a local file path, got {path!r}")
    _check(s.latency_runtime in RUNTIMES, f"latency_runtime must be one of {', '.join(RUNTIMES)}, got {s.latency_runtime!r}")
    _integer("latency_batch", s.latency_batch, 1)
    if s.latency_threads is not None:
        _integer("latency_threads", s.latency_threads, 1)
    _check(s.max_latency_ms is None or (_number(s.max_latency_ms) and s.max_latency_ms > 0),
           f"max_latency_ms must be a number of milliseconds > 0, got {s.max_latency_ms!r}")
    _check(s.latency is None or isinstance(s.latency, bool), f"latency must be true or false, got {s.latency!r}")
    _check(s.max_latency_ratio is None or (_number(s.max_latency_ratio) and s.max_latency_ratio > 0),
           f"max_latency_ratio must be a number > 0 (0.5: half the spec's own latency), got {s.max_latency_ratio!r}")
    _check(s.max_latency_ratio is None or s.max_latency_ms is None,
           "give max_latency_ms or max_latency_ratio, not both")
    _check(not (s.latency is False and (s.max_latency_ms is not None or s.max_latency_ratio is not None or s.objectives)),
           "max_latency_ms and objectives need the latency measured; drop --no-latency (latency: false)")
    if s.objectives is not None:
        from automl.pareto import parse

        try:
            parse(s.objectives, s.metric, s.mode)
        except ValueError as err:
            raise SearchError(str(err)) from None
    if s.objective_weights is not None:
        pairs = s.objective_weights
        _check(s.objectives is not None, "objective_weights weigh the objectives: give objectives too "
                                         "(e.g. objectives: [val_miou:max, latency_ms:min])")
        _check(isinstance(pairs, tuple) and len(pairs) == 2 and all(isinstance(p, tuple) and len(p) == 2 and all(map(_number, p))
                                                                    for p in pairs),
               f"objective_weights must be two [weight, scale] pairs, the metric's then the cost's "
               f"(e.g. [[1, 1], [1, 100]]), got {pairs!r}")
        _check(all(w >= 0 and scale > 0 for w, scale in pairs),
               f"objective_weights: each weight must be >= 0 and each scale > 0, got {pairs!r}")
        _check(any(w > 0 for w, _ in pairs), f"objective_weights: every objective weighs 0, so every model would score the "
                                             f"same; give one a weight > 0, got {pairs!r}")


def _algorithm(value: Any) -> Any:
    text = str(value).strip().lower()
    return ALGORITHM_ALIASES.get(text, text)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise SearchError(message)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(name: str, value: Any, minimum: int | None) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and (minimum is None or value >= minimum)
    _check(ok, f"{name} must be an integer{f' >= {minimum}' if minimum is not None else ''}, got {value!r}")
