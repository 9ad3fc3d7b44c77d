"""TAO AutoML settings files mapped onto our options (`automl.options`), and the command line over them.

``load_settings(path)`` reads YAML or JSON (safe_load) and returns a dict keyed by OUR option names
(`Settings`, which also keeps the key each value was written as, for messages).
It accepts TAO's keys (``automl_algorithm``, ``automl_max_recommendations``, ``automl_max_epochs``,
``automl_reduction_factor``, ``automl_max_concurrent``, ``automl_hyperparameters``,
``automl_add_hyperparameters``, ``automl_remove_hyperparameters``, ``override_automl_disabled_params``,
``automl_delete_intermediate_ckpt``, ``automl_max_trials``, ``automl_R``, ``automl_nu``,
``epoch_multiplier``, ``custom_param_ranges``, ``metric``, ``direction``, ``run_baseline``, PBT's
``automl_population_size``/``automl_eval_interval``/``automl_perturbation_factor``, tao-automl's
multi-objective ``objectives``/``multi_objective``/``latency_*``/``metric_weight``/``metric_scale``, ...), TAO's nested
``algorithm_specific_params`` and our own option names. Every accepted key has an effect; unknown
keys are an error naming the closest valid key; TAO keys that have no meaning here (LLM endpoints,
DEHB's generations, BOHB internals) are a warning that names them. ``options_from_settings(file, cli, ...)``
applies the command line over the file and returns validated `SearchOptions`.
"""

from __future__ import annotations

import difflib
import json
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

from automl.options import OPTION_SECTION, SearchError, SearchOptions

__all__ = ["SettingsError", "SettingsWarning", "load_settings", "map_tao_settings", "options_from_settings"]


class SettingsError(SearchError):
    """A settings file or flag is invalid; the message names the key, the value and the fix."""


class SettingsWarning(UserWarning):
    """A TAO setting that has no effect in this driver."""


def _param_list(value: Any) -> tuple[str, ...]:
    """TAO passes parameter lists as lists or as JSON strings like '["train.optim.lr"]'."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                try:  # a Python list as text ("['train.optim.lr']": what str(list) writes)
                    import ast

                    value = ast.literal_eval(text)
                except (ValueError, SyntaxError):
                    raise SettingsError(f"parameter list {value!r} is neither a JSON nor a Python list; write a YAML "
                                        f"list, or quote the names: [\"train.optim.lr\"]") from None
        else:
            value = [v.strip() for v in text.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise SettingsError(f"expected a list of dotted parameter names, got {value!r}")
    return tuple(value)


def _mode(value: Any) -> str:
    text = str(value).strip().lower()
    return {"maximize": "max", "minimize": "min", "max": "max", "min": "min"}.get(text, text)


def _param_ranges(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise SettingsError(f"custom_param_ranges must map parameter names to {{valid_min, valid_max, valid_options}}, "
                            f"got {value!r}")
    return {str(k): dict(v) if isinstance(v, Mapping) else v for k, v in value.items()}


# Converters of our own option names (the same as for their TAO keys).
_CONVERT: dict[str, Callable[[Any], Any]] = {"only": _param_list, "include": _param_list, "exclude": _param_list,
                                             "mode": _mode, "param_ranges": _param_ranges}

# TAO key -> our option name. None: accepted but has no effect here (a warning says so).
_TAO_KEYS: dict[str, str | None] = {
    "automl_algorithm": "algorithm",
    "automl_max_recommendations": "max_trials",
    "automl_max_trials": "max_trials",
    "automl_max_experiments": "max_trials",
    "automl_max_epochs": "max_epochs",
    "automl_R": "max_epochs",
    "automl_reduction_factor": "reduction_factor",
    "automl_nu": "reduction_factor",
    "automl_max_concurrent": "max_concurrent",
    "automl_hyperparameters": "only",
    "automl_add_hyperparameters": "include",
    "automl_remove_hyperparameters": "exclude",
    "override_automl_disabled_params": "override_disabled",
    "automl_delete_intermediate_ckpt": "delete_intermediate_checkpoints",
    "custom_param_ranges": "param_ranges",
    "direction": "mode",
    "automl_min_early_stop_epochs": "grace_period",
    "automl_early_stop_threshold": "early_stop_threshold",
    "automl_mutation_factor": "mutation_factor",
    "automl_crossover_prob": "crossover_prob",
    "automl_population_size": "population_size",
    "automl_eval_interval": "perturbation_interval",
    "automl_perturbation_factor": "perturbation_factor",
    "run_baseline": "baseline_first",
    "search_seed": "seed",
    "automl_max_failures": "max_failures",
    # TAO settings with no counterpart in this driver (Ray Tune + Optuna).
    "automl_enabled": None,
    "automl_max_generations": None,
    "automl_kde_samples": None,
    "automl_top_n_percent": None,
    "automl_min_points_in_model": None,
    "automl_min_top_configs": None,
    "automl_checkpoint_retention_strategy": None,
    "llm_endpoint": None,
    "llm_model": None,
    "llm_api_key": None,
    "llm_temperature": None,
    "llm_max_tokens": None,
    "research_program": None,
    "hybrid_enable_llm_range_narrowing": None,
    "wandb_config": None,
    "timeout_minutes": None,
}


# tao-automl 7.1's multi-objective keys (its objectives.py): `objectives` as a list of metric names or
# {metric|name, direction, weight, scale}, or the metric plus a latency objective switched on by one of
# the flags, with latency_* and metric_weight/metric_scale for its scalarisation.
_MULTI_FLAGS = ("multi_objective", "latency_objective", "include_latency")
_MULTI_KEYS = (*_MULTI_FLAGS, "latency_metric", "latency_direction", "latency_weight", "latency_scale",
               "metric_weight", "metric_scale")
# tao-automl's names for a latency (it reads the value from the user's logs) -> the latency every trial records here
_LATENCY_NAMES = {"latency", "latency_ms", "inference_latency", "inference_latency_ms", "avg_latency", "avg_latency_ms",
                  "average_latency", "average_latency_ms", "runtime", "runtime_ms", "duration", "duration_ms", "time_ms"}
# tao-automl's implicit direction: a name with one of these is minimised, any other maximised
_MINIMISED = ("loss", "latency", "runtime", "duration", "time", "cost", "flops", "params", "memory", "energy", "wer", "cer",
              "perplexity", "ppl", "error")


def _implicit_mode(name: str) -> str:
    """tao-automl's direction for a metric named without one."""
    return "min" if any(word in name.lower() for word in _MINIMISED) else "max"


def _latency_name(name: Any) -> str:
    text = str(name).strip()
    return "latency_ms" if text.lower() in _LATENCY_NAMES else text


def _flag(key: str, value: Any, source: str) -> bool:
    text = str(value).strip().lower()
    if isinstance(value, bool) or text in {"true", "false", "yes", "no", "1", "0"}:
        return value if isinstance(value, bool) else text in {"true", "yes", "1"}
    raise SettingsError(f"{source}: {key} must be true or false, got {value!r}")


def _amount(key: str, value: Any, source: str, positive: bool) -> float | None:
    """A weight (>= 0) or a scale (> 0) as tao-automl takes them; None when not given."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 if positive else value >= 0):
        raise SettingsError(f"{source}: {key} must be a number {'> 0' if positive else '>= 0'}, got {value!r}")
    return float(value)


def _nvidia_objective(entry: Any, index: int, source: str) -> tuple[str, str, float | None, float | None]:
    """(name, max|min, weight, scale) of one entry of tao-automl's `objectives` (a name or a mapping)."""
    if isinstance(entry, str):
        name, _, direction = entry.partition(":")  # "val_miou" as tao-automl writes it, or "val_miou:max" as we do
        entry = {"metric": name, **({"direction": direction} if direction else {})}
    if not isinstance(entry, Mapping) or not (entry.get("metric") or entry.get("name")):
        raise SettingsError(f"{source}: objectives[{index}] must be a metric name or {{metric, direction, weight, scale}}, "
                            f"got {entry!r}")
    unknown = set(entry) - {"metric", "name", "direction", "weight", "scale"}
    if unknown:
        raise SettingsError(f"{source}: objectives[{index}] has unknown keys {sorted(unknown)}; allowed: metric (or name), "
                            f"direction, weight, scale")
    name = _latency_name(entry.get("metric") or entry.get("name"))
    mode = _mode(entry["direction"]) if entry.get("direction") is not None else _implicit_mode(name)
    return (name, mode, _amount(f"objectives[{index}].weight", entry.get("weight"), source, False),
            _amount(f"objectives[{index}].scale", entry.get("scale"), source, True))


def _nvidia_objectives(flat: dict[str, Any], source: str) -> None:
    """tao-automl's multi-objective keys in `flat`, rewritten in place as our options: `metric` and
    `mode` from an objectives list (a name without a direction gets tao-automl's implicit one:
    minimised when it says loss, error, time, ...), `objectives` ("name:max|min": the metric, then a deploy cost) and,
    when any weight or scale is given, `objective_weights` ((weight, scale) of the metric, then of the cost)."""
    from automl.pareto import COSTS

    given = {k: flat.pop(k) for k in _MULTI_KEYS if k in flat}
    listed = flat.get("objectives")
    nvidia_list = isinstance(listed, (list, tuple)) and any(
        isinstance(o, Mapping) or (isinstance(o, str) and ":" not in o) for o in listed)
    if not given and not nvidia_list:
        return
    if not nvidia_list and listed is not None:
        raise SettingsError(f"{source}: objectives in this driver's form ({listed!r}) and tao-automl's "
                            f"{', '.join(sorted(given))} both set the objectives; keep one")
    on = [key for key in _MULTI_FLAGS if key in given and _flag(key, given[key], source)]
    weighing = sorted(k for k in given if k not in (*_MULTI_FLAGS, "latency_metric", "latency_direction") and given[k] is not None)
    if nvidia_list:  # tao-automl: the list replaces metric, direction and their weight and scale
        entries = [_nvidia_objective(o, i, source) for i, o in enumerate(flat.pop("objectives"))]
        ignored = [k for k in ("metric_weight", "metric_scale") if k in given] + ([] if on else weighing)
        if ignored:
            warnings.warn(f"{source}: {', '.join(sorted(set(ignored)))} ha{'s' if len(set(ignored)) == 1 else 've'} no effect "
                          f"beside an objectives list (tao-automl reads weight and scale from its entries); ignored",
                          SettingsWarning, stacklevel=3)
        metrics = [e for e in entries if e[0] not in COSTS]
        if len(metrics) > 1:
            raise SettingsError(f"{source}: objectives name {len(metrics)} metrics ({', '.join(e[0] for e in metrics)}); "
                                f"give one metric and one deploy cost ({', '.join(COSTS)}; tao-automl's latency is latency_ms)")
        if metrics:
            name, mode = metrics[0][:2]
            for key, value in (("metric", name), ("direction", mode), ("mode", mode)):
                if flat.get(key) is not None and (flat[key] if key == "metric" else _mode(flat[key])) != value:
                    raise SettingsError(f"{source}: objectives makes the metric {name}:{mode}, but {key} says {flat[key]!r}; keep one")
            flat.pop("direction", None)
            flat["metric"], flat["mode"] = name, mode
        costs = [e for e in entries if e[0] in COSTS]
        entries = [metrics[0] if metrics else (None, None, None, None), *costs]  # the metric first, whatever the order
    else:
        if weighing and not on:
            raise SettingsError(f"{source}: {', '.join(weighing)} set a latency objective that is not switched on; "
                                f"add multi_objective: true (or objectives: [{{metric: val_miou}}, {{metric: latency}}])")
        entries = [(None, None, _amount("metric_weight", given.get("metric_weight"), source, False),
                    _amount("metric_scale", given.get("metric_scale"), source, True))]
    if on:
        name = _latency_name(given.get("latency_metric") or "latency")
        if name not in [e[0] for e in entries]:
            entries.append((name, _mode(given.get("latency_direction") or "minimize"),
                            _amount("latency_weight", given.get("latency_weight"), source, False),
                            _amount("latency_scale", given.get("latency_scale"), source, True)))
    if len(entries) == 1:
        return  # the metric alone (tao-automl's single objective), or every flag off
    flat["objectives"] = tuple(f"{n}:{m}" for n, m, _, _ in entries if n is not None)
    if any(w is not None or sc is not None for _, _, w, sc in entries):
        flat["objective_weights"] = tuple((1.0 if w is None else w, 1.0 if sc is None else sc) for _, _, w, sc in entries)


def map_tao_settings(raw: Mapping[str, Any], source: str = "settings", origin: dict[str, str] | None = None) -> dict[str, Any]:
    """TAO (or our) setting names -> our option names. Unknown keys: error with the closest key.
    `origin`, when given, receives the key each option was given as."""
    if not isinstance(raw, Mapping):
        raise SettingsError(f"{source}: AutoML settings must be a mapping, got {type(raw).__name__}")
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if key in {"automl_settings", "algorithm_specific_params"} and isinstance(value, Mapping):
            flat.update(value)  # TAO nests settings under these keys
        else:
            flat[key] = value
    _nvidia_objectives(flat, source)
    if flat.get("metric") is not None and flat.get("direction") is None and flat.get("mode") is None:
        flat["mode"] = _implicit_mode(str(flat["metric"]))  # as tao-automl does: val_loss is minimised
    mapped: dict[str, Any] = {}
    origin = {} if origin is None else origin
    valid = sorted(set(OPTION_SECTION) | set(_TAO_KEYS) | set(_MULTI_KEYS))
    for key, value in flat.items():
        if key in _TAO_KEYS:
            ours = _TAO_KEYS[key]
            if ours is None:
                warnings.warn(f"{source}: {key!r} is a TAO setting with no effect in this driver; ignored",
                              SettingsWarning, stacklevel=2)
                continue
        elif key in OPTION_SECTION:
            ours = key
        else:
            close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(valid)}"
            raise SettingsError(f"{source}: unknown AutoML setting {key!r}{hint}")
        if value is not None and ours in _CONVERT:
            value = _CONVERT[ours](value)
        if ours in mapped and mapped[ours] != value:
            raise SettingsError(
                f"{source}: {origin[ours]!r}={mapped[ours]!r} and {key!r}={value!r} both set {ours!r}; keep one"
            )
        mapped[ours] = value
        origin[ours] = key
    return mapped


def load_settings(path: str | Path) -> dict[str, Any]:
    """Read an AutoML settings file (YAML or JSON, safe_load) -> our option names."""
    from segformer.config.fields import ConfigError
    from segformer.config.loader import read_yaml_file

    try:
        raw = read_yaml_file(path, "settings file")  # YAML is a superset of JSON
    except ConfigError as err:
        raise SettingsError(str(err)) from None
    given_as: dict[str, str] = {}
    return Settings(map_tao_settings(raw or {}, source=str(path), origin=given_as), given_as)


class Settings(dict):
    """A settings file's values keyed by our option names; `given_as`: the key each was written as
    (automl_perturbation_factor for perturbation_factor), for messages in the user's words."""

    def __init__(self, values: Mapping[str, Any], given_as: Mapping[str, str]) -> None:
        super().__init__(values)
        self.given_as = dict(given_as)


def options_from_settings(file_settings: Mapping[str, Any] | None, cli_settings: Mapping[str, Any] | None = None,
                          flags: Mapping[str, str] | None = None, **top: Any) -> SearchOptions:
    """Validated options: the settings file, then command-line flags over it (a flag of None means
    "not given"), plus the top-level fields (results_dir, spec, overrides, skill, ...). ``flags``: the
    command-line flag of each option (max_trials: --max-trials), to name a bad value as it was typed."""
    merged: dict[str, Any] = {}
    # option -> how the user wrote it: the TAO key of the settings file, or the flag given over it
    given = {o for o, v in (cli_settings or {}).items() if v is not None}
    file_keys = getattr(file_settings, "given_as", {})
    written = {o: f"{k} (settings file)" for o, k in file_keys.items() if o not in given}
    written.update({o: flag for o, flag in (flags or {}).items() if o in given})
    for source, settings in (("settings file", file_settings or {}), ("command line", cli_settings or {})):
        mapped = {k: v for k, v in map_tao_settings(settings, source=source).items() if v is not None}
        if "objectives" in mapped and "objective_weights" not in mapped:
            merged.pop("objective_weights", None)  # weights belong to the objectives they were given with
        if "budget" in mapped and "max_trials" not in mapped and merged.pop("max_trials", None) is not None:
            # --budget sizes the search: the file's trial count gives way to it
            warnings.warn(f"settings file: {file_keys.get('max_trials', 'max_trials')} is not used: "
                          f"--budget sizes the search", SettingsWarning, stacklevel=2)
        for option in ("only", "include", "exclude"):  # a flag's list replaces the file's, it is not added to it
            if merged.get(option) and mapped.get(option) and merged[option] != mapped[option]:
                warnings.warn(f"settings file: {file_keys.get(option, option)} ({', '.join(merged[option])}) is replaced "
                              f"by the command line's ({', '.join(mapped[option])})", SettingsWarning, stacklevel=2)
        merged.update(mapped)
    try:
        opts = SearchOptions.build(merged, **top)
    except SearchError as err:
        message = str(err)
        for option, key in written.items():  # "perturbation_factor must be > 1": the key the user wrote
            if message.startswith(f"{option} "):
                message = f"{key}{message[len(option):]}"
        raise SettingsError(message) from None
    s = opts.search
    if s.mode == "max" and "loss" in s.metric:
        warnings.warn(f"the search maximises {s.metric} (mode max): a loss is minimised; set --mode min (settings "
                      f"direction: minimize) unless this is meant", SettingsWarning, stacklevel=2)
    return opts
