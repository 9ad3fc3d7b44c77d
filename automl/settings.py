"""AutoML settings: TAO users' ``automl_settings`` files mapped onto our options, plus CLI flags.

``load_settings(path)`` reads YAML or JSON (safe_load) and returns a dict keyed by OUR option names.
It accepts TAO's keys (``automl_algorithm``, ``automl_max_recommendations``, ``automl_max_epochs``,
``automl_reduction_factor``, ``automl_max_concurrent``, ``automl_hyperparameters``,
``automl_add_hyperparameters``, ``automl_remove_hyperparameters``, ``override_automl_disabled_params``,
``automl_delete_intermediate_ckpt``, ``automl_max_trials``, ``automl_R``, ``automl_nu``,
``epoch_multiplier``, ``custom_param_ranges``, ``metric``, ``direction``, PBT's
``automl_population_size``/``automl_eval_interval``/``automl_perturbation_factor``, ...), TAO's nested
``algorithm_specific_params`` and our own names. Unknown keys are an error naming the closest
valid key; TAO keys that have no meaning here (LLM endpoints, DEHB/BOHB internals) are a warning.
``merge_settings(file, cli)`` applies the command line over the file and validates the result.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

__all__ = [
    "ALGORITHMS",
    "SearchSettings",
    "SettingsError",
    "SettingsWarning",
    "load_settings",
    "map_tao_settings",
    "merge_settings",
]

# Algorithms this driver runs (TAO names). TAO's aliases "b" and "h" are accepted.
ALGORITHMS = ("bayesian", "hyperband", "asha", "bohb", "pbt", "random", "grid")
_ALGORITHM_ALIASES = {"b": "bayesian", "h": "hyperband"}
_TAO_ONLY_ALGORITHMS = ("bfbo", "dehb", "hyperband_es", "hes", "llm", "hybrid", "autoresearch")


class SettingsError(ValueError):
    """A settings file or flag is invalid; the message names the key, the value and the fix."""


class SettingsWarning(UserWarning):
    """A TAO setting that has no effect in this driver."""


@dataclass(frozen=True)
class SearchSettings:
    """Every AutoML option with its default. Command-line flags win over the settings file."""

    algorithm: str = "bayesian"  # one of ALGORITHMS
    max_trials: int = 20  # TAO automl_max_recommendations (default 20); ASHA's automl_max_trials
    max_epochs: int | None = None  # per-trial epoch budget (max_t); None: the spec's train.num_epochs
    time_budget_s: float | None = None  # stop launching trials after this many seconds; None: no limit
    max_concurrent: int = 1  # trials at once; TAO defaults to 4, raise it when resources allow
    cpus_per_trial: float = 1.0  # Ray resources per trial
    gpus_per_trial: float | None = None  # None: 1 when a GPU is visible, else 0; fractions share a GPU
    metric: str = "val_miou"  # reported by the train action at each validation
    mode: str = "max"  # "max" or "min" (TAO: direction maximize/minimize)
    reduction_factor: int = 3  # ASHA/Hyperband/BOHB eta (TAO automl_reduction_factor, automl_nu)
    grace_period: int = 1  # epochs before a trial may be stopped early (TAO automl_min_early_stop_epochs)
    epoch_multiplier: int = 1  # TAO: epochs per Hyperband resource unit
    max_failures: int = 1  # retries of a crashed trial; a failed trial never ends the search
    seed: int | None = 0  # sampler seed; None: nondeterministic
    only: tuple[str, ...] | None = None  # replaces the schema's default parameters (TAO automl_hyperparameters)
    include: tuple[str, ...] = ()  # added parameters (TAO automl_add_hyperparameters)
    exclude: tuple[str, ...] = ()  # removed parameters (TAO automl_remove_hyperparameters)
    param_ranges: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # TAO custom_param_ranges
    override_disabled: bool = False  # TAO override_automl_disabled_params
    delete_intermediate_checkpoints: bool = True  # TAO automl_delete_intermediate_ckpt
    baseline_first: bool = True  # the first trial is the spec's own configuration
    population_size: int = 4  # PBT population (TAO automl_population_size)
    perturbation_interval: int = 1  # PBT epochs between exploits (TAO automl_eval_interval)
    perturbation_factor: float = 1.2  # PBT resample factor (TAO automl_perturbation_factor)
    lend_idle_cpus: bool = True  # CPU trials, one node: the tail's idle slots lend their CPUs (automl.lending)


_OUR_KEYS = {f.name for f in dataclasses.fields(SearchSettings)}


def _param_list(value: Any) -> tuple[str, ...]:
    """TAO passes parameter lists as lists or as JSON strings like '["train.optim.lr"]'."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                raise SettingsError(f"parameter list {value!r} is not a JSON list") from None
        else:
            value = [v.strip() for v in text.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise SettingsError(f"expected a list of dotted parameter names, got {value!r}")
    return tuple(value)


def _mode(value: Any) -> str:
    text = str(value).strip().lower()
    return {"maximize": "max", "minimize": "min", "max": "max", "min": "min"}.get(text, text)


# TAO key -> (our key, converter). None as our key: accepted but has no effect here (warning).
_TAO_KEYS: dict[str, tuple[str | None, Callable[[Any], Any] | None]] = {
    "automl_algorithm": ("algorithm", None),
    "algorithm": ("algorithm", None),
    "automl_max_recommendations": ("max_trials", None),
    "automl_max_trials": ("max_trials", None),
    "automl_max_experiments": ("max_trials", None),
    "automl_max_epochs": ("max_epochs", None),
    "automl_R": ("max_epochs", None),
    "automl_reduction_factor": ("reduction_factor", None),
    "automl_nu": ("reduction_factor", None),
    "automl_max_concurrent": ("max_concurrent", None),
    "automl_hyperparameters": ("only", _param_list),
    "automl_add_hyperparameters": ("include", _param_list),
    "automl_remove_hyperparameters": ("exclude", _param_list),
    "override_automl_disabled_params": ("override_disabled", None),
    "automl_delete_intermediate_ckpt": ("delete_intermediate_checkpoints", None),
    "epoch_multiplier": ("epoch_multiplier", None),
    "custom_param_ranges": ("param_ranges", None),
    "metric": ("metric", None),
    "direction": ("mode", _mode),
    "automl_min_early_stop_epochs": ("grace_period", None),
    "automl_population_size": ("population_size", None),
    "automl_eval_interval": ("perturbation_interval", None),
    "automl_perturbation_factor": ("perturbation_factor", None),
    "run_baseline": ("baseline_first", None),
    "search_seed": ("seed", None),
    # TAO settings with no counterpart in this driver (Ray Tune + Optuna).
    "automl_enabled": (None, None),
    "automl_max_generations": (None, None),
    "automl_mutation_factor": (None, None),
    "automl_crossover_prob": (None, None),
    "automl_early_stop_threshold": (None, None),
    "automl_kde_samples": (None, None),
    "automl_top_n_percent": (None, None),
    "automl_min_points_in_model": (None, None),
    "automl_min_top_configs": (None, None),
    "automl_checkpoint_retention_strategy": (None, None),
    "llm_endpoint": (None, None),
    "llm_model": (None, None),
    "llm_api_key": (None, None),
    "llm_temperature": (None, None),
    "llm_max_tokens": (None, None),
    "research_program": (None, None),
    "hybrid_enable_llm_range_narrowing": (None, None),
    "wandb_config": (None, None),
    "timeout_minutes": (None, None),
}


def map_tao_settings(raw: Mapping[str, Any], source: str = "settings") -> dict[str, Any]:
    """TAO (or our) setting names -> our option names. Unknown keys: error with the closest key."""
    if not isinstance(raw, Mapping):
        raise SettingsError(f"{source}: AutoML settings must be a mapping, got {type(raw).__name__}")
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if key in {"automl_settings", "algorithm_specific_params"} and isinstance(value, Mapping):
            flat.update(value)  # TAO nests settings under these keys
        else:
            flat[key] = value
    mapped: dict[str, Any] = {}
    origin: dict[str, str] = {}
    valid = sorted(_OUR_KEYS | set(_TAO_KEYS))
    for key, value in flat.items():
        if key in _TAO_KEYS:
            ours, convert = _TAO_KEYS[key]
            if ours is None:
                warnings.warn(f"{source}: {key!r} is a TAO setting with no effect in this driver; ignored",
                              SettingsWarning, stacklevel=2)
                continue
            value = convert(value) if convert and value is not None else value
        elif key in _OUR_KEYS:
            ours = key
            if key in {"only", "include", "exclude"} and value is not None:
                value = _param_list(value)
            if key == "mode" and value is not None:
                value = _mode(value)
        else:
            close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(valid)}"
            raise SettingsError(f"{source}: unknown AutoML setting {key!r}{hint}")
        if ours in mapped and mapped[ours] != value:
            raise SettingsError(
                f"{source}: {origin[ours]!r}={mapped[ours]!r} and {key!r}={value!r} both set {ours!r}; keep one"
            )
        mapped[ours] = value
        origin[ours] = key
    return mapped


def load_settings(path: str | Path) -> dict[str, Any]:
    """Read an AutoML settings file (YAML or JSON, safe_load) -> our option names."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as handle:
            raw = yaml.safe_load(handle)  # YAML is a superset of JSON
    except FileNotFoundError:
        raise SettingsError(f"settings file {path} does not exist") from None
    except yaml.YAMLError as err:
        raise SettingsError(f"{path}: not valid YAML/JSON: {err}") from None
    return map_tao_settings(raw or {}, source=str(path))


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise SettingsError(message)


def merge_settings(file_settings: Mapping[str, Any] | None, cli_settings: Mapping[str, Any] | None) -> SearchSettings:
    """File settings, then command-line flags over them (a flag of None means "not given")."""
    merged: dict[str, Any] = {}
    for source, settings in (("settings file", file_settings or {}), ("command line", cli_settings or {})):
        for key, value in map_tao_settings(settings, source=source).items():
            if value is not None:
                merged[key] = value
    for key in ("only", "include", "exclude"):
        if key in merged and merged[key] is not None:
            merged[key] = tuple(merged[key])
    if "param_ranges" in merged:
        _check(isinstance(merged["param_ranges"], Mapping),
               f"custom_param_ranges must map parameter names to {{valid_min, valid_max, valid_options}}, got {merged['param_ranges']!r}")
        merged["param_ranges"] = {str(k): dict(v) for k, v in merged["param_ranges"].items()}
    algorithm = str(merged.get("algorithm", SearchSettings.algorithm)).strip().lower()
    algorithm = _ALGORITHM_ALIASES.get(algorithm, algorithm)
    if algorithm not in ALGORITHMS:
        extra = " (a TAO algorithm this driver does not run)" if algorithm in _TAO_ONLY_ALGORITHMS else ""
        close = difflib.get_close_matches(algorithm, ALGORITHMS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise SettingsError(f"unknown AutoML algorithm {merged.get('algorithm')!r}{extra}; valid: {', '.join(ALGORITHMS)}{hint}")
    merged["algorithm"] = algorithm
    try:
        settings = SearchSettings(**merged)
    except TypeError as err:  # pragma: no cover - map_tao_settings already rejects unknown keys
        raise SettingsError(str(err)) from None
    _validate(settings)
    return settings


def _validate(s: SearchSettings) -> None:
    def positive_int(name: str, value: Any, minimum: int = 1) -> None:
        _check(isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
               f"{name} must be an integer >= {minimum}, got {value!r}")

    positive_int("max_trials", s.max_trials)
    if s.max_epochs is not None:
        positive_int("max_epochs", s.max_epochs)
    positive_int("max_concurrent", s.max_concurrent)
    positive_int("reduction_factor", s.reduction_factor, 2)
    positive_int("grace_period", s.grace_period)
    positive_int("epoch_multiplier", s.epoch_multiplier)
    positive_int("max_failures", s.max_failures, 0)
    positive_int("population_size", s.population_size, 2)
    positive_int("perturbation_interval", s.perturbation_interval)
    _check(s.mode in {"max", "min"}, f"mode must be 'max' or 'min' (TAO direction maximize/minimize), got {s.mode!r}")
    _check(isinstance(s.metric, str) and bool(s.metric), f"metric must be a non-empty name, got {s.metric!r}")
    _check(isinstance(s.cpus_per_trial, (int, float)) and s.cpus_per_trial > 0, f"cpus_per_trial must be > 0, got {s.cpus_per_trial!r}")
    _check(s.gpus_per_trial is None or (isinstance(s.gpus_per_trial, (int, float)) and s.gpus_per_trial >= 0),
           f"gpus_per_trial must be >= 0 (fractions share a GPU), got {s.gpus_per_trial!r}")
    _check(s.time_budget_s is None or (isinstance(s.time_budget_s, (int, float)) and s.time_budget_s > 0),
           f"time_budget_s must be > 0 seconds, got {s.time_budget_s!r}")
    _check(s.seed is None or (isinstance(s.seed, int) and not isinstance(s.seed, bool)), f"seed must be an integer, got {s.seed!r}")
    _check(isinstance(s.perturbation_factor, (int, float)) and s.perturbation_factor > 1,
           f"perturbation_factor must be > 1, got {s.perturbation_factor!r}")
    for name in ("override_disabled", "delete_intermediate_checkpoints", "baseline_first", "lend_idle_cpus"):
        _check(isinstance(getattr(s, name), bool), f"{name} must be true or false, got {getattr(s, name)!r}")
    if s.grace_period > (s.max_epochs or s.grace_period):
        raise SettingsError(f"grace_period {s.grace_period} exceeds max_epochs {s.max_epochs}; lower grace_period")
