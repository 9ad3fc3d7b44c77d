"""Search ranges of numeric parameters, from a schema node and TAO's custom_param_ranges.

Where a range comes from
    A parameter's search range is ``valid_min``/``valid_max`` when the schema node has them (our
    schemas write the AutoML search range there -- TAO's names for search ranges -- and keep
    ``minimum``/``maximum`` as the validity bounds, NVIDIA's meaning); otherwise, per bound,
    ``minimum``/``maximum`` (NVIDIA's schemas). Derived bounds are clipped to the finite validity
    bounds. Each parameter's ``source`` names the keys its range came from.

Ranges and infinite bounds (never collapsed to the default, unlike TAO, whose int search uses
the default as the maximum when the maximum is infinite)
    * float on log scale (``"log": true`` or an lr-like name: ``lr``, ``learning_rate``, ``*_lr``)
      with an infinite or missing bound: that bound becomes ``default/100`` (lower) or
      ``default*100`` (upper), clipped to the finite schema bounds; ``[1e-6, 1e-1]`` when the
      default is not positive. A log-scale lower bound <= 0 becomes ``default/100``.
    * other floats: an infinite/missing upper bound becomes ``max(default*10, low+1)``; a missing
      lower bound becomes 0 (or ``default - 10*max(|default|, 1)`` for negative defaults).
    * ints: infinite/missing upper bound -> ``max(default*4, low+8)``; missing lower bound ->
      ``default // 4`` for positive defaults, else ``default - 8``.
    * log scale is used when the schema says ``"log": true``, or for lr-like names whose final range
      has ``low > 0`` and ``high/low >= 100`` (two decades or more).
    * ``custom_param_ranges`` (TAO format: ``valid_min``, ``valid_max``, ``valid_options``,
      ``option_weights``, ``value_type``, ``math_cond``, ``log``) replace the schema's search range
      and values and must stay inside the schema's finite validity bounds (``minimum``/``maximum``)
      and enum.
"""

from __future__ import annotations

import difflib
import math
import re
import warnings
from typing import Any, Mapping, Sequence

from automl.params import SpaceError, SpaceWarning
from segformer.text import fmt

_CUSTOM_KEYS = {  # custom_param_ranges key -> the schema-node key it replaces
    "valid_min": "valid_min",
    "minimum": "valid_min",
    "valid_max": "valid_max",
    "maximum": "valid_max",
    "valid_options": "enum",
    "enum": "enum",
    "option_weights": "option_weights",
    "value_type": "type",
    "math_cond": "math_cond",
    "depends_on": "depends_on",
    "log": "log",
    "default_value": "default",
}
_LR_NAME = re.compile(r"^(lr|learning_rate|base_lr|init_lr|max_lr)$|_lr$|_learning_rate$")


def _number(value: Any) -> float | None:
    """A finite bound, or None for missing/infinite/NaN/'inf'/''."""
    if value is None or isinstance(value, bool) or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _is_lr_name(name: str) -> bool:
    return bool(_LR_NAME.search(name.rsplit(".", 1)[-1]))


def _present(value: Any) -> bool:
    return value is not None and value != "" and not (isinstance(value, float) and math.isnan(value))


def _search_bounds(node: Mapping[str, Any]) -> tuple[Any, Any, str]:
    """The raw search bounds: ``valid_min``/``valid_max`` where present, else ``minimum``/``maximum``
    (per bound), and a note naming which keys they came from."""
    lo_key = "valid_min" if _present(node.get("valid_min")) else "minimum"
    hi_key = "valid_max" if _present(node.get("valid_max")) else "maximum"
    keys = f"{lo_key}/{hi_key}" if (lo_key, hi_key) in {("valid_min", "valid_max"), ("minimum", "maximum")} else f"{lo_key}, {hi_key}"
    return node.get(lo_key), node.get(hi_key), f"schema {keys} [{fmt(node.get(lo_key))}, {fmt(node.get(hi_key))}]"


def check_schema_bounds(name: str, node: Mapping[str, Any]) -> None:
    """A field whose own bounds are reversed is a broken schema: say which file, field and fix."""
    for lo_key, hi_key in (("minimum", "maximum"), ("valid_min", "valid_max")):
        lo, hi = _number(node.get(lo_key)), _number(node.get(hi_key))
        if lo is not None and hi is not None and lo > hi:
            raise SpaceError(
                f"train.schema.json: {name} has {lo_key} {fmt(lo)} above {hi_key} {fmt(hi)}, so nothing can be "
                f"sampled; fix the two bounds in the schema file (for our own skill, regenerate it with "
                f"`segformer schema generate`) or give a range with custom_param_ranges in --settings"
            )


def _clip_to_valid(node: Mapping[str, Any], lo: float, hi: float) -> tuple[float, float]:
    """Keep a search range inside the finite validity bounds ``minimum``/``maximum``."""
    vlo, vhi = _number(node.get("minimum")), _number(node.get("maximum"))
    if vlo is not None:
        lo = max(lo, vlo)
    if vhi is not None:
        hi = min(hi, vhi)
    return lo, hi


def float_range(name: str, node: Mapping[str, Any], default: Any, log_flag: bool | None) -> tuple[float, float, bool, str]:
    raw_lo, raw_hi, where = _search_bounds(node)
    lo, hi = _number(raw_lo), _number(raw_hi)
    d = _number(default)
    lr_like = _is_lr_name(name)
    notes = [where]
    log_scale = bool(log_flag) or (log_flag is None and lr_like and (lo is None or hi is None))
    if log_scale:
        if lo is None or lo <= 0 or hi is None:
            if d is not None and d > 0:
                new_lo = d / 100 if (lo is None or lo <= 0) else lo
                new_hi = d * 100 if hi is None else hi
                notes.append("log bounds from default/100 and default*100")
            else:
                new_lo = 1e-6 if (lo is None or lo <= 0) else lo
                new_hi = 1e-1 if hi is None else hi
                notes.append("log bounds [1e-6, 1e-1] (no positive default)")
            if lo is not None and lo > 0:
                new_lo = max(new_lo, lo)
            if hi is not None:
                new_hi = min(new_hi, hi)
            lo, hi = new_lo, new_hi
    else:
        if lo is None:
            lo = 0.0 if (d is None or d >= 0) else d - 10 * max(abs(d), 1.0)
            notes.append(f"missing lower bound -> {fmt(lo)}")
        if hi is None:
            hi = max(d * 10, lo + 1.0) if d is not None else lo + 1.0
            notes.append(f"infinite upper bound -> max(default*10, low+1) = {fmt(hi)}")
    lo, hi = _clip_to_valid(node, lo, hi)
    if log_flag is None and not log_scale and lr_like and lo > 0 and hi / lo >= 100:
        log_scale = True
    if log_scale:
        notes.append("log scale (" + ("schema log flag" if log_flag else "lr-like name") + ")")
    return float(lo), float(hi), log_scale, "; ".join(notes)


def int_range(node: Mapping[str, Any], default: Any) -> tuple[int, int, str]:
    raw_lo, raw_hi, where = _search_bounds(node)
    lo, hi = _number(raw_lo), _number(raw_hi)
    d = _number(default)
    notes = [where]
    if lo is None:
        if d is not None:
            lo = d // 4 if d > 0 else d - 8
        else:
            lo = (hi - 8) if hi is not None else 0
        notes.append(f"missing lower bound -> {fmt(int(lo))}")
    if hi is None:
        hi = max(d * 4, lo + 8) if d is not None else lo + 8
        notes.append(f"infinite upper bound -> max(default*4, low+8) = {fmt(int(hi))}")
    lo, hi = _clip_to_valid(node, lo, hi)
    return int(math.ceil(lo)), int(math.floor(hi)), "; ".join(notes)


def apply_custom(name: str, node: Mapping[str, Any], custom: Mapping[str, Any] | None) -> tuple[dict[str, Any], bool]:
    merged = dict(node)
    if not custom:
        return merged, False
    for key, value in custom.items():
        if key not in _CUSTOM_KEYS:
            close = difflib.get_close_matches(key, list(_CUSTOM_KEYS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise SpaceError(f"custom_param_ranges[{name!r}]: unknown key {key!r}{hint} (valid: {sorted(_CUSTOM_KEYS)})")
        if value is None:
            continue
        target = _CUSTOM_KEYS[key]
        if target in ("valid_min", "valid_max") and _is_nan(value):
            raise SpaceError(f"custom_param_ranges[{name!r}]: {key} is {value!r}, not a number; give a finite bound "
                             f"or leave {key} out to keep the schema's")
        schema_lo, schema_hi = _number(node.get("minimum")), _number(node.get("maximum"))  # validity bounds
        if target == "valid_min" and schema_lo is not None and float(value) < schema_lo:
            raise SpaceError(f"custom_param_ranges[{name!r}]: valid_min {value} is below the schema minimum {schema_lo}; use a value >= {schema_lo}")
        if target == "valid_max" and schema_hi is not None and float(value) > schema_hi:
            raise SpaceError(f"custom_param_ranges[{name!r}]: valid_max {value} is above the schema maximum {schema_hi}; use a value <= {schema_hi}")
        if target == "enum":
            if not isinstance(value, (list, tuple)) or not value:
                raise SpaceError(f"custom_param_ranges[{name!r}]: valid_options must be a non-empty list, got {value!r}")
            allowed = node.get("enum")
            if isinstance(allowed, list):
                bad = [v for v in value if v not in allowed]
                if bad:
                    raise SpaceError(f"custom_param_ranges[{name!r}]: options {bad} are not in the schema enum {allowed}")
            # numbers within the schema's validity bounds, as valid_min/valid_max are (a trial failed on it)
            numbers = [v for v in value if isinstance(v, (int, float)) and not isinstance(v, bool)]
            bad = [v for v in numbers if (schema_lo is not None and v < schema_lo) or (schema_hi is not None and v > schema_hi)]
            if bad:
                raise SpaceError(f"custom_param_ranges[{name!r}]: options {bad} are outside the schema's bounds "
                                 f"[{fmt(schema_lo) if schema_lo is not None else '-inf'}, "
                                 f"{fmt(schema_hi) if schema_hi is not None else 'inf'}]; use values within them")
            merged.pop("option_weights", None)  # schema weights belong to the schema's options
        merged[target] = list(value) if isinstance(value, tuple) else value
    lo, hi = _number(_search_bounds(merged)[0]), _number(_search_bounds(merged)[1])
    if lo is not None and hi is not None and lo > hi:
        raise SpaceError(f"custom_param_ranges[{name!r}]: valid_min {lo} is above valid_max {hi}")
    if lo is not None and lo == hi and "enum" not in merged:
        warnings.warn(f"custom_param_ranges[{name!r}]: valid_min = valid_max = {fmt(lo)}, so {name} is fixed at "
                      f"{fmt(lo)}, not searched; widen the range, or set the value in the spec and exclude {name}",
                      SpaceWarning, stacklevel=2)
    return merged, True


def _is_nan(value: Any) -> bool:
    try:
        return not isinstance(value, bool) and math.isnan(float(value))
    except (TypeError, ValueError):
        return False


def option_weights(name: str, node: Mapping[str, Any], choices: Sequence[Any]) -> tuple[float, ...] | None:
    raw = node.get("option_weights")
    if raw is None or raw == "" or (isinstance(raw, float) and math.isnan(raw)):
        return None
    if not isinstance(raw, (list, tuple)) or len(raw) != len(choices):
        raise SpaceError(
            f"{name}: option_weights {raw!r} must be a list with one weight per option ({len(choices)} options: {list(choices)})"
        )
    weights = [float(w) for w in raw]
    if any(w < 0 or not math.isfinite(w) for w in weights) or sum(weights) <= 0:
        raise SpaceError(f"{name}: option_weights {raw!r} must be finite, >= 0 and not all 0")
    total = sum(weights)
    if len(set(weights)) == 1:
        return None  # equal weights: a plain categorical samples the same way and models better
    return tuple(w / total for w in weights)


def positive_int(name: str, text: str) -> int:
    try:
        value = int(float(text))
    except ValueError:
        raise SpaceError(f"{name}: math_cond factor {text!r} must be an integer") from None
    if value <= 0:
        raise SpaceError(f"{name}: math_cond factor must be positive, got {value}")
    return value


def constant_bound(name: str, cond: tuple[str, str], lo: float, hi: float, integer: bool) -> tuple[Any, Any]:
    op, arg = cond
    try:
        c = float(arg)
    except ValueError:
        raise SpaceError(f"{name}: math_cond '{op} {arg}': {arg!r} is neither a number nor depends_on") from None
    if op == ">":
        lo = max(lo, math.floor(c) + 1) if integer else (max(lo, math.nextafter(c, math.inf)) if lo <= c else lo)
    elif op == ">=":
        lo = max(lo, math.ceil(c) if integer else c)
    elif op == "<":
        hi = min(hi, math.ceil(c) - 1) if integer else (min(hi, math.nextafter(c, -math.inf)) if hi >= c else hi)
    elif op == "<=":
        hi = min(hi, math.floor(c) if integer else c)
    return lo, hi

