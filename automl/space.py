"""The AutoML search space, read from a TAO ``train.schema.json``.

Rules (each parameter's ``source`` records which ones shaped its range; ``Space.describe()`` shows them):

Selection
    The default set is the schema's ``automl_default_parameters``. ``only=`` replaces it, ``include=``
    adds to it, ``exclude=`` removes from it. Unknown names are an error that names the closest one.

Disabled parameters (NVIDIA's semantics, read from their files)
    ``automl_disabled_parameters`` lists both *collections* (``train``, ``train.optim``) and *leaves*
    (``train.gpu_ids``, ``dataset.segment.augmentation.mean``). NVIDIA lists ``train.optim`` as
    disabled yet ``train.optim.lr`` as a default parameter, so a disabled collection only means the
    collection itself is not a search value. Its fields stay searchable when they are explicitly
    enabled (``automl_enabled: true`` or listed in ``automl_default_parameters``); its other fields
    inherit the disable. A leaf that is disabled itself (``automl_enabled: false`` or listed by
    name) is never searched. Both kinds can be searched only with ``override_disabled=True``
    (TAO's ``override_automl_disabled_params``).

Types
    ``bool``, ``int``, ``float``, ``categorical``/``ordered`` (``enum``) and ``ordered_int``
    (``valid_options``/``enum`` of ints). ``list``, ``collection``, ``string`` without enum and TAO's
    list helpers (``list_1_*``, ``list_2``, ``list_3``, ``subset_list``, ``optional_list``) have no
    sampling rule here and are not searched; asking for one is an error that says so.

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

math_cond (TAO's definitions, from nvidia_tao_core's AutoML sampler)
    ``"^ N"``: an int power of N (N**1, N**2, ... inside the range), each power equally likely.
    ``"/ N"`` without ``depends_on``: an int multiple of N (sampled with step N).
    ``"/ N"`` with ``depends_on``: not sampled; derived as ``value(depends_on) // N``.
    ``"> depends_on"``, ``">= depends_on"``, ``"< depends_on"``, ``"<= depends_on"`` (the literal word
    ``depends_on``, or the parameter's name): relative to the ``depends_on`` parameter's value. The
    range is narrowed per trial (Optuna allows dynamic int/float ranges); categorical choices are
    clamped to the nearest allowed choice; when no value of the range satisfies it the nearest
    bound is used and a ``SpaceWarning`` says so.
    ``"> 0"``, ``">0"``, ``">= 1"``, ``"< 1"``...: a constant bound that narrows the range (``>`` on
    floats excludes the bound itself).

Order
    Parameters are sampled in topological order of ``depends_on`` (parents first; ``parent_param``
    parameters first among equals; otherwise schema order). A cycle is an error. A ``depends_on``
    parameter that is not searched takes its value from ``spec`` (when given) or its schema default.

option_weights
    Categorical sampling weights. Optuna has no weighted categorical, so a weighted parameter is
    sampled as ``u = trial.suggest_float(name, 0, 1)`` mapped through the cumulative weights; the
    trial stores ``u``, the returned config holds the option. ``points_to_evaluate`` encodes the
    baseline option as the middle of its interval.
"""

from __future__ import annotations

import difflib
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Literal, Mapping, Sequence

if TYPE_CHECKING:  # optuna is imported lazily: building and describing a space needs no optuna
    import optuna

__all__ = ["Param", "Space", "SpaceError", "SpaceWarning", "build_space", "parameter_status"]

ParamKind = Literal["bool", "int", "float", "categorical"]

_BOOL_TYPES = {"bool", "boolean"}
_INT_TYPES = {"int", "integer"}
_FLOAT_TYPES = {"float", "number"}
_CATEGORICAL_TYPES = {"categorical", "ordered", "string", "enum"}
_ORDERED_INT = "ordered_int"
_UNSEARCHED_TYPES = {"list", "array", "collection", "dict", "object", "subset_list", "optional_list", "list_2", "list_3"}

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

_MATH_COND = re.compile(r"^\s*(\^|/|>=|<=|>|<)\s*(\S+)\s*$")
_LR_NAME = re.compile(r"^(lr|learning_rate|base_lr|init_lr|max_lr)$|_lr$|_learning_rate$")


class SpaceError(ValueError):
    """The search space cannot be built as asked; the message names the parameter, rule and fix."""


class SpaceWarning(UserWarning):
    """A constraint could not be met exactly while sampling (the value used is stated)."""


@dataclass(frozen=True)
class Param:
    """One searched parameter. ``name`` is the dotted spec key (e.g. ``train.optim.lr``)."""

    name: str
    kind: ParamKind
    default: Any
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: int | None = None
    choices: tuple[Any, ...] = ()  # bool/categorical options, or the allowed ints ("^ N", ordered_int)
    weights: tuple[float, ...] | None = None  # normalized option_weights
    math_cond: str | None = None
    depends_on: str | None = None
    relation: str | None = None  # ">", ">=", "<", "<=" relative to depends_on
    divisor: int | None = None  # "/ N" with depends_on: value = depends_on // N (not sampled)
    parent_param: bool = False
    schema_type: str = ""
    source: str = ""  # how the range/options were derived (shown by describe())

    @property
    def derived(self) -> bool:
        """True when the value is computed from ``depends_on`` rather than sampled."""
        return self.divisor is not None

    @property
    def finite(self) -> bool:
        return self.kind != "float"

    @property
    def description(self) -> str:
        return self.source

    def range_text(self) -> str:
        if self.derived:
            return f"{self.depends_on} // {self.divisor}"
        if self.choices:
            text = ", ".join(_fmt(c) for c in self.choices)
            if self.weights:
                text += " (weights " + ", ".join(_fmt(w) for w in self.weights) + ")"
            return "{" + text + "}"
        text = f"[{_fmt(self.low)}, {_fmt(self.high)}]"
        if self.step and self.step != 1:
            text += f" step {self.step}"
        return text


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# --------------------------------------------------------------------------------------------
# Reading the schema
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Leaf:
    name: str
    node: Mapping[str, Any]
    ancestors: tuple[str, ...]
    is_collection: bool


def _walk(schema: Mapping[str, Any]) -> dict[str, _Leaf]:
    """Every field of the schema by dotted name (collections included, marked as such)."""
    out: dict[str, _Leaf] = {}

    def visit(node: Mapping[str, Any], prefix: str, ancestors: tuple[str, ...]) -> None:
        for key, child in (node.get("properties") or {}).items():
            if not isinstance(child, Mapping):
                continue
            name = f"{prefix}{key}"
            is_collection = "properties" in child or str(child.get("type", "")).lower() in {"collection", "object", "dict"}
            out[name] = _Leaf(name, child, ancestors, is_collection)
            if "properties" in child:
                visit(child, name + ".", ancestors + (name,))

    visit(schema, "", ())
    return out


def _truthy(value: Any) -> bool | None:
    """TAO writes flags as true/false or "TRUE"/"FALSE" (and NaN for unset)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().upper() in {"TRUE", "FALSE"}:
        return value.strip().upper() == "TRUE"
    return None


def _all_lists(schema: Mapping[str, Any], key: str) -> set[str]:
    found: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, Mapping):
            values = node.get(key)
            if isinstance(values, list):
                found.update(str(v) for v in values)
            for child in (node.get("properties") or {}).values():
                visit(child)

    visit(schema)
    return found


def _default_parameters(schema: Mapping[str, Any], leaves: Mapping[str, _Leaf]) -> list[str]:
    top = schema.get("automl_default_parameters")
    if isinstance(top, list):
        return [str(n) for n in top]
    nested = sorted(_all_lists(schema, "automl_default_parameters"))
    if nested:
        return nested
    return [n for n, leaf in leaves.items() if not leaf.is_collection and _truthy(leaf.node.get("automl_enabled"))]


def parameter_status(schema: Mapping[str, Any]) -> dict[str, str]:
    """Each schema leaf's AutoML status: ``default``, ``enabled`` (may be included),
    ``available`` (no flags, may be included), ``disabled`` (the leaf itself) or
    ``disabled by <collection>`` (inherited); useful for a ``--list-params`` view."""
    leaves = _walk(schema)
    defaults = set(_default_parameters(schema, leaves))
    disabled = _all_lists(schema, "automl_disabled_parameters")
    status: dict[str, str] = {}
    for name, leaf in leaves.items():
        if leaf.is_collection and "properties" in leaf.node:
            continue
        status[name] = _status(leaf, defaults, disabled)
    return status


def _status(leaf: _Leaf, defaults: set[str], disabled: set[str]) -> str:
    flag = _truthy(leaf.node.get("automl_enabled"))
    if leaf.name in defaults:
        return "default"
    if flag is False or leaf.name in disabled:
        return "disabled"
    if flag is True:
        return "enabled"
    for ancestor in reversed(leaf.ancestors):
        if ancestor in disabled:
            return f"disabled by {ancestor}"
    return "available"


# --------------------------------------------------------------------------------------------
# Ranges
# --------------------------------------------------------------------------------------------


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
    return node.get(lo_key), node.get(hi_key), f"schema {keys} [{_fmt(node.get(lo_key))}, {_fmt(node.get(hi_key))}]"


def _check_schema_bounds(name: str, node: Mapping[str, Any]) -> None:
    """A field whose own bounds are reversed is a broken schema: say which file, field and fix."""
    for lo_key, hi_key in (("minimum", "maximum"), ("valid_min", "valid_max")):
        lo, hi = _number(node.get(lo_key)), _number(node.get(hi_key))
        if lo is not None and hi is not None and lo > hi:
            raise SpaceError(
                f"train.schema.json: {name} has {lo_key} {_fmt(lo)} above {hi_key} {_fmt(hi)}, so nothing can be "
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


def _float_range(name: str, node: Mapping[str, Any], default: Any, log_flag: bool | None) -> tuple[float, float, bool, str]:
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
            notes.append(f"missing lower bound -> {_fmt(lo)}")
        if hi is None:
            hi = max(d * 10, lo + 1.0) if d is not None else lo + 1.0
            notes.append(f"infinite upper bound -> max(default*10, low+1) = {_fmt(hi)}")
    lo, hi = _clip_to_valid(node, lo, hi)
    if log_flag is None and not log_scale and lr_like and lo > 0 and hi / lo >= 100:
        log_scale = True
    if log_scale:
        notes.append("log scale (" + ("schema log flag" if log_flag else "lr-like name") + ")")
    return float(lo), float(hi), log_scale, "; ".join(notes)


def _int_range(node: Mapping[str, Any], default: Any) -> tuple[int, int, str]:
    raw_lo, raw_hi, where = _search_bounds(node)
    lo, hi = _number(raw_lo), _number(raw_hi)
    d = _number(default)
    notes = [where]
    if lo is None:
        if d is not None:
            lo = d // 4 if d > 0 else d - 8
        else:
            lo = (hi - 8) if hi is not None else 0
        notes.append(f"missing lower bound -> {_fmt(int(lo))}")
    if hi is None:
        hi = max(d * 4, lo + 8) if d is not None else lo + 8
        notes.append(f"infinite upper bound -> max(default*4, low+8) = {_fmt(int(hi))}")
    lo, hi = _clip_to_valid(node, lo, hi)
    return int(math.ceil(lo)), int(math.floor(hi)), "; ".join(notes)


# --------------------------------------------------------------------------------------------
# Building a Param from a schema node
# --------------------------------------------------------------------------------------------


def _apply_custom(name: str, node: Mapping[str, Any], custom: Mapping[str, Any] | None) -> tuple[dict[str, Any], bool]:
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
            merged.pop("option_weights", None)  # schema weights belong to the schema's options
        merged[target] = list(value) if isinstance(value, tuple) else value
    lo, hi = _number(_search_bounds(merged)[0]), _number(_search_bounds(merged)[1])
    if lo is not None and hi is not None and lo > hi:
        raise SpaceError(f"custom_param_ranges[{name!r}]: valid_min {lo} is above valid_max {hi}")
    return merged, True


def _weights(name: str, node: Mapping[str, Any], choices: Sequence[Any]) -> tuple[float, ...] | None:
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


def _parse_math_cond(name: str, cond: Any) -> tuple[str, str] | None:
    if cond is None or cond == "" or (isinstance(cond, float) and math.isnan(cond)):
        return None
    match = _MATH_COND.match(str(cond))
    if not match:
        raise SpaceError(
            f"{name}: math_cond {cond!r} is not understood; TAO's forms are '^ N' (power of N), '/ N' (multiple of N, "
            f"or depends_on // N), '> depends_on', '>= depends_on', '< depends_on', '<= depends_on', and '> 0'-style constants"
        )
    return match.group(1), match.group(2)


def _make_param(leaf: _Leaf, custom: Mapping[str, Any] | None) -> Param:
    name = leaf.name
    node, customized = _apply_custom(name, leaf.node, custom)
    schema_type = str(node.get("type", "")).lower()
    default = node.get("default")
    log_flag = _truthy(node.get("log")) if "log" in node else None
    if node.get("scale") == "log":
        log_flag = True
    source_prefix = "custom_param_ranges; " if customized else ""
    enum = node.get("enum")
    if enum is None and schema_type in _INT_TYPES | {_ORDERED_INT} and isinstance(node.get("valid_options"), list):
        enum = node["valid_options"]
    cond = _parse_math_cond(name, node.get("math_cond"))
    depends_on = node.get("depends_on") or None
    if isinstance(depends_on, float) and math.isnan(depends_on):
        depends_on = None
    parent_param = bool(_truthy(node.get("parent_param")))

    if schema_type in _UNSEARCHED_TYPES or schema_type.startswith("list_1_"):
        raise SpaceError(
            f"{name}: type {schema_type!r} is not searched (no sampling rule exists for lists/collections); "
            f"remove it from the search or fix its value in the spec"
        )
    _check_schema_bounds(name, node)
    relation: str | None = None
    divisor: int | None = None
    step: int | None = None
    notes: list[str] = []

    if cond is not None and (cond[1] == "depends_on" or (depends_on and cond[1] == depends_on)):
        if cond[0] not in {">", ">=", "<", "<="}:
            raise SpaceError(f"{name}: math_cond {node.get('math_cond')!r}: only >, >=, <, <= can be relative to depends_on")
        if not depends_on:
            raise SpaceError(f"{name}: math_cond {node.get('math_cond')!r} needs a depends_on parameter; add depends_on to the schema field")
        relation = cond[0]
        notes.append(f"math_cond: value {relation} {depends_on}")
        cond = None
    elif cond is not None and cond[0] == "/" and depends_on:
        divisor = _positive_int(name, cond[1])
        notes.append(f"math_cond '/ {divisor}' with depends_on: {depends_on} // {divisor}")
        cond = None

    if schema_type in _BOOL_TYPES:
        choices: tuple[Any, ...] = (False, True)
        return Param(name, "bool", default, choices=choices, weights=_weights(name, node, choices), parent_param=parent_param,
                     schema_type=schema_type, source=source_prefix + "bool", depends_on=depends_on, relation=relation)

    if schema_type in _CATEGORICAL_TYPES or (schema_type == _ORDERED_INT and enum) or (enum and schema_type in _INT_TYPES):
        if not isinstance(enum, list) or not enum:
            raise SpaceError(f"{name}: type {schema_type!r} without enum/valid_options has no values to search; give valid_options in custom_param_ranges")
        choices = tuple(int(v) for v in enum) if schema_type in _INT_TYPES | {_ORDERED_INT} else tuple(enum)
        kind: ParamKind = "int" if schema_type in _INT_TYPES | {_ORDERED_INT} else "categorical"
        return Param(name, kind, default, choices=choices, weights=_weights(name, node, choices), parent_param=parent_param,
                     schema_type=schema_type, depends_on=depends_on, relation=relation, divisor=divisor,
                     math_cond=node.get("math_cond"), source=source_prefix + "; ".join(["enum"] + notes))

    if schema_type in _FLOAT_TYPES:
        if cond is not None and cond[0] in {"^", "/"}:
            raise SpaceError(f"{name}: math_cond {node.get('math_cond')!r} applies to int parameters only, {name} is a float")
        lo, hi, log, how = _float_range(name, node, default, log_flag)
        if cond is not None:
            lo, hi = _constant_bound(name, cond, lo, hi, integer=False)
            notes.append(f"math_cond '{node.get('math_cond')}'")
        if lo > hi:
            raise SpaceError(f"{name}: empty range [{lo}, {hi}] after applying math_cond {node.get('math_cond')!r}")
        if log and lo <= 0:
            raise SpaceError(f"{name}: log scale needs a positive lower bound, got {lo}; set valid_min > 0 in custom_param_ranges")
        return Param(name, "float", default, low=lo, high=hi, log=log, math_cond=node.get("math_cond"), depends_on=depends_on,
                     relation=relation, parent_param=parent_param, schema_type=schema_type,
                     source=source_prefix + "; ".join([how] + notes))

    if schema_type in _INT_TYPES:
        lo, hi, how = _int_range(node, default)
        choices = ()
        if cond is not None:
            op, arg = cond
            if op == "^":
                factor = _positive_int(name, arg)
                if factor < 2:
                    raise SpaceError(f"{name}: math_cond '^ {arg}' needs a factor >= 2")
                choices = tuple(factor**k for k in range(1, 64) if lo <= factor**k <= hi)
                if not choices:
                    raise SpaceError(f"{name}: no power of {factor} lies in [{lo}, {hi}] (math_cond '^ {factor}'); widen the range")
                notes.append(f"math_cond '^ {factor}': powers of {factor} in [{lo}, {hi}]")
            elif op == "/":
                step = _positive_int(name, arg)
                lo, hi = math.ceil(lo / step) * step, math.floor(hi / step) * step
                notes.append(f"math_cond '/ {step}': multiples of {step}")
            else:
                lo, hi = _constant_bound(name, cond, lo, hi, integer=True)
                notes.append(f"math_cond '{node.get('math_cond')}'")
        if not choices and lo > hi:
            raise SpaceError(f"{name}: empty int range [{lo}, {hi}] (math_cond {node.get('math_cond')!r}); widen the range")
        log = bool(log_flag)
        if log and (lo < 1 or (step or 1) != 1):
            raise SpaceError(f"{name}: int log scale needs low >= 1 and no step, got [{lo}, {hi}] step {step}")
        return Param(name, "int", default, low=lo, high=hi, log=log, step=step, choices=choices,
                     math_cond=node.get("math_cond"), depends_on=depends_on, relation=relation, divisor=divisor,
                     parent_param=parent_param, schema_type=schema_type, source=source_prefix + "; ".join([how] + notes))

    raise SpaceError(f"{name}: type {schema_type or '(missing)'!r} has no sampling rule (searchable: bool, int, float, categorical, ordered_int)")


def _positive_int(name: str, text: str) -> int:
    try:
        value = int(float(text))
    except ValueError:
        raise SpaceError(f"{name}: math_cond factor {text!r} must be an integer") from None
    if value <= 0:
        raise SpaceError(f"{name}: math_cond factor must be positive, got {value}")
    return value


def _constant_bound(name: str, cond: tuple[str, str], lo: float, hi: float, integer: bool) -> tuple[Any, Any]:
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


# --------------------------------------------------------------------------------------------
# Space
# --------------------------------------------------------------------------------------------


def _lookup(spec: Mapping[str, Any] | None, dotted: str) -> tuple[bool, Any]:
    """Value of ``dotted`` in a nested or flat spec dict."""
    if not spec:
        return False, None
    if dotted in spec:
        return True, spec[dotted]
    node: Any = spec
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


@dataclass(frozen=True)
class Space:
    """An ordered set of ``Param`` (parents before children) plus the fixed values of
    not-searched ``depends_on`` parents."""

    params: tuple[Param, ...]
    fixed: Mapping[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    # -- container ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.params)

    def __iter__(self) -> Iterator[Param]:
        return iter(self.params)

    def __contains__(self, name: object) -> bool:
        return any(p.name == name for p in self.params)

    def __getitem__(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    # -- sampling ----------------------------------------------------------------------------
    def _parent_value(self, p: Param, values: Mapping[str, Any]) -> Any:
        assert p.depends_on is not None
        return values[p.depends_on] if p.depends_on in values else self.fixed.get(p.depends_on)

    def _derived_value(self, p: Param, values: Mapping[str, Any]) -> Any:
        """A derived parameter (math_cond '/ N' with depends_on): its parent's value // N."""
        ref = self._parent_value(p, values)
        return int(ref // p.divisor) if ref is not None else p.default

    def _dynamic_bounds(self, p: Param, values: Mapping[str, Any]) -> tuple[Any, Any]:
        """The range of ``p`` given its parent's value (relations narrow it)."""
        lo, hi = p.low, p.high
        if p.relation is None:
            return lo, hi
        ref = self._parent_value(p, values)
        if ref is None:
            return lo, hi
        integer = p.kind == "int"
        if p.relation == ">":
            lo = max(lo, math.floor(ref) + 1 if integer else math.nextafter(ref, math.inf))
        elif p.relation == ">=":
            lo = max(lo, math.ceil(ref) if integer else ref)
        elif p.relation == "<":
            hi = min(hi, math.ceil(ref) - 1 if integer else math.nextafter(ref, -math.inf))
        else:
            hi = min(hi, math.floor(ref) if integer else ref)
        if p.step:
            lo, hi = math.ceil(lo / p.step) * p.step, math.floor(hi / p.step) * p.step
        if lo > hi:  # unsatisfiable inside the schema range: nearest bound, said aloud
            bound = p.high if p.relation in {">", ">="} else p.low
            warnings.warn(
                f"{p.name}: no value in [{p.low}, {p.high}] is {p.relation} {p.depends_on}={ref}; using {bound}",
                SpaceWarning, stacklevel=3,
            )
            return bound, bound
        return lo, hi

    def _satisfies(self, p: Param, value: Any, values: Mapping[str, Any]) -> bool:
        if p.relation is None:
            return True
        ref = self._parent_value(p, values)
        if ref is None:
            return True
        return {">": value > ref, ">=": value >= ref, "<": value < ref, "<=": value <= ref}[p.relation]

    def _clamp_choice(self, p: Param, value: Any, values: Mapping[str, Any]) -> Any:
        if self._satisfies(p, value, values):
            return value
        allowed = [c for c in p.choices if self._satisfies(p, c, values)]
        if not allowed:
            warnings.warn(f"{p.name}: no option of {list(p.choices)} is {p.relation} {p.depends_on}; using {value}",
                          SpaceWarning, stacklevel=3)
            return value
        try:
            return min(allowed, key=lambda c: abs(c - value))
        except TypeError:
            return allowed[0]

    @staticmethod
    def _pick(p: Param, u: float) -> Any:
        assert p.weights is not None
        cumulative = 0.0
        for choice, weight in zip(p.choices, p.weights):
            cumulative += weight
            if u < cumulative:
                return choice
        return next(c for c, w in zip(reversed(p.choices), reversed(p.weights)) if w > 0)

    def sample(self, trial: "optuna.Trial") -> dict[str, Any]:
        """Sample one configuration ``{dotted name: value}`` into ``trial`` (parents first)."""
        values: dict[str, Any] = {}
        for p in self.params:
            if p.derived:
                values[p.name] = self._derived_value(p, values)
                continue
            if p.choices:
                if p.weights:
                    value = self._pick(p, trial.suggest_float(p.name, 0.0, 1.0))
                else:
                    value = trial.suggest_categorical(p.name, list(p.choices))
                values[p.name] = self._clamp_choice(p, value, values)
            elif p.kind == "int":
                lo, hi = self._dynamic_bounds(p, values)
                values[p.name] = trial.suggest_int(p.name, int(lo), int(hi), step=p.step or 1, log=p.log)
            else:
                lo, hi = self._dynamic_bounds(p, values)
                values[p.name] = trial.suggest_float(p.name, float(lo), float(hi), log=p.log)
        return values

    def define_by_run(self, trial: "optuna.Trial") -> dict[str, Any]:
        """For Ray Tune's ``OptunaSearch(space=space.define_by_run)``.

        Returns the sampled values rather than None: Ray merges the returned dict over the values
        it captured from ``trial.suggest_*`` (``{**captured, **returned}``), which is what turns a
        weighted categorical's uniform draw back into its option and adds derived (``/ N`` with
        depends_on) values that are never suggested. Keys are dotted spec keys; Ray unflattens on
        ``/`` only, so they arrive unchanged.
        """
        return self.sample(trial)

    def baseline(self, spec_defaults: Mapping[str, Any] | None) -> dict[str, Any]:
        """The spec's own values for the searched keys (nested or flat dotted dict); the schema
        default where the spec lacks a key. The first trial runs this configuration."""
        values: dict[str, Any] = {}
        for p in self.params:
            found, value = _lookup(spec_defaults, p.name)
            values[p.name] = value if found else p.default
        return values

    def encode(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Values -> the parameters Optuna stores for them (for ``study.enqueue_trial``)."""
        raw: dict[str, Any] = {}
        for p in self.params:
            if p.derived or p.name not in values:
                continue
            value = values[p.name]
            if p.choices and value not in p.choices:
                raise SpaceError(
                    f"{p.name}: value {value!r} is not among the searched options {list(p.choices)}; "
                    f"add it with custom_param_ranges valid_options or exclude {p.name} from the search"
                )
            if p.weights:
                index = p.choices.index(value)
                width = p.weights[index]
                if width <= 0:
                    raise SpaceError(f"{p.name}: option {value!r} has weight 0 and can never be sampled; give it a weight > 0")
                raw[p.name] = sum(p.weights[:index]) + width / 2
            else:
                raw[p.name] = value
        return raw

    def points_to_evaluate(self, spec_defaults: Mapping[str, Any] | None) -> list[dict[str, Any]]:
        """``[baseline]`` encoded for ``OptunaSearch(points_to_evaluate=...)``/``enqueue_trial``."""
        return [self.encode(self.baseline(spec_defaults))]

    def to_optuna_distributions(self) -> dict[str, Any]:
        """Static Optuna distributions (for ``OptunaSearch(space=dict)`` or ``study.ask``).

        Relations are not expressible statically: their params get the full schema range and
        ``decode`` enforces relations and derived values afterwards. Prefer ``define_by_run``.
        """
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        out: dict[str, Any] = {}
        for p in self.params:
            if p.derived:
                continue
            if p.weights:
                out[p.name] = FloatDistribution(0.0, 1.0)
            elif p.choices:
                out[p.name] = CategoricalDistribution(list(p.choices))
            elif p.kind == "int":
                out[p.name] = IntDistribution(int(p.low), int(p.high), log=p.log, step=p.step or 1)
            else:
                out[p.name] = FloatDistribution(float(p.low), float(p.high), log=p.log)
        return out

    def decode(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """Parameters sampled from ``to_optuna_distributions`` -> values (weights, relations, derived)."""
        values: dict[str, Any] = {}
        for p in self.params:
            if p.derived:
                values[p.name] = self._derived_value(p, values)
                continue
            value = raw[p.name]
            if p.weights:
                value = self._pick(p, float(value))
            if p.choices:
                value = self._clamp_choice(p, value, values)
            elif p.relation is not None:
                lo, hi = self._dynamic_bounds(p, values)
                value = min(max(value, lo), hi)
            values[p.name] = value
        return values

    # -- grid --------------------------------------------------------------------------------
    def _grid_values(self, p: Param, values: Mapping[str, Any], max_int_values: int) -> list[Any] | None:
        if p.choices:
            return [c for c in p.choices if self._satisfies(p, c, values)]
        if p.kind != "int":
            return None
        lo, hi = self._dynamic_bounds(p, values)
        count = (int(hi) - int(lo)) // (p.step or 1) + 1
        if count > max_int_values:
            return None
        return list(range(int(lo), int(hi) + 1, p.step or 1))

    def is_finite(self, max_int_values: int = 32) -> bool:
        """True when ``grid()`` can enumerate the space (no floats, small int ranges)."""
        for p in self.params:
            if p.derived or p.choices:
                continue
            if p.kind == "float" or (int(p.high) - int(p.low)) // (p.step or 1) + 1 > max_int_values:
                return False
        return True

    def grid(self, max_points: int = 10_000, max_int_values: int = 32) -> list[dict[str, Any]] | None:
        """Every combination, or None when the space is infinite (a float, or an int range with
        more than ``max_int_values`` values). Relations filter combinations; derived values are
        computed. More than ``max_points`` combinations is an error that names the count."""
        if not self.is_finite(max_int_values):
            return None
        points: list[dict[str, Any]] = [{}]
        for p in self.params:
            grown: list[dict[str, Any]] = []
            for point in points:
                if p.derived:
                    grown.append({**point, p.name: self._derived_value(p, point)})
                    continue
                options = self._grid_values(p, point, max_int_values) or []
                grown.extend({**point, p.name: v} for v in options)
            if len(grown) > max_points:
                raise SpaceError(
                    f"the grid has more than {max_points} points (after {p.name}); search fewer parameters "
                    f"(--exclude) or use a sampling algorithm instead of grid"
                )
            points = grown
        return points

    # -- text --------------------------------------------------------------------------------
    def describe(self) -> str:
        """A text table for ``--dry-run``: name, type, range/options, scale, default, source."""
        header = ("name", "type", "range/options", "scale", "default", "source")
        rows = [
            (p.name, p.kind if p.kind != "int" or not p.choices else "int (options)", p.range_text(),
             "log" if p.log else ("weighted" if p.weights else "linear" if p.kind in {"int", "float"} else "-"),
             _fmt(p.default), p.source)
            for p in self.params
        ]
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header) - 1)]
        lines = []
        for row in [header, *rows]:
            cells = [str(c).ljust(w) for c, w in zip(row, widths)] + [str(row[-1])]
            lines.append("  ".join(cells).rstrip())
        lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * 6)
        for name, value in self.fixed.items():
            lines.append(f"(fixed, not searched) {name} = {_fmt(value)}")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def _closest(name: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def _order(params: list[Param]) -> list[Param]:
    """Topological order by depends_on (searched parents first); cycles are an error."""
    by_name = {p.name: p for p in params}
    deps = {p.name: ({p.depends_on} & by_name.keys()) if p.depends_on else set() for p in params}
    ordered: list[Param] = []
    done: set[str] = set()
    while len(ordered) < len(params):
        ready = [p for p in params if p.name not in done and deps[p.name] <= done]
        if not ready:
            stuck = sorted(n for n in by_name if n not in done)
            raise SpaceError(f"depends_on forms a cycle among {stuck}; remove one depends_on link")
        ready.sort(key=lambda p: not p.parent_param)  # stable: parent_param first, then schema order
        ordered.append(ready[0])
        done.add(ready[0].name)
    return ordered


def build_space(
    schema: Mapping[str, Any] | str | Path,
    *,
    only: Sequence[str] | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    param_ranges: Mapping[str, Mapping[str, Any]] | None = None,
    override_disabled: bool = False,
    spec: Mapping[str, Any] | None = None,
) -> Space:
    """Build the search space from a train schema (dict or path; NVIDIA's Infinity accepted).

    ``only`` replaces ``automl_default_parameters``; ``include`` adds and ``exclude`` removes names;
    ``param_ranges`` are TAO ``custom_param_ranges``; ``override_disabled`` is TAO's
    ``override_automl_disabled_params``; ``spec`` supplies values of not-searched ``depends_on``
    parents (else their schema defaults).
    """
    if not isinstance(schema, Mapping):
        from automl.skill import read_schema

        schema = read_schema(schema)
    leaves = _walk(schema)
    defaults = _default_parameters(schema, leaves)
    disabled = _all_lists(schema, "automl_disabled_parameters")
    searchable_names = [n for n, leaf in leaves.items() if not ("properties" in leaf.node)]

    def check_known(name: str, role: str) -> _Leaf:
        leaf = leaves.get(name)
        if leaf is None:
            raise SpaceError(f"{role} parameter {name!r} is not in the train schema{_closest(name, searchable_names)}")
        if "properties" in leaf.node:
            fields = [n for n in searchable_names if n.startswith(name + ".")][:6]
            raise SpaceError(f"{role} {name!r} is a collection, not a parameter; name its fields, e.g. {fields}")
        return leaf

    for name in exclude:
        check_known(name, "excluded")
    chosen: list[str] = []
    for name in [*(sorted(defaults) if only is None else only), *include]:
        if name not in chosen and name not in exclude:
            chosen.append(name)
    for name in param_ranges or {}:
        check_known(name, "custom_param_ranges")
        if name not in chosen:
            raise SpaceError(
                f"custom_param_ranges has {name!r}, which is not searched; add it with include (automl_hyperparameters) "
                f"or drop its range"
            )

    params: list[Param] = []
    notes: list[str] = []
    for name in chosen:
        leaf = check_known(name, "searched")
        status = _status(leaf, set(defaults), disabled)
        if status.startswith("disabled") and not override_disabled:
            if status == "disabled":
                why = f"{name} is disabled for AutoML by the schema (automl_enabled: false or listed in automl_disabled_parameters)"
            else:
                why = (f"{name} is {status} (automl_disabled_parameters lists {status[len('disabled by '):]!r} "
                       f"and {name} is not explicitly enabled)")
            raise SpaceError(f"{why}; it cannot be added unless override_disabled is set (TAO: override_automl_disabled_params: true)")
        if status.startswith("disabled"):
            notes.append(f"{name} searched although {status} (override_disabled)")
        params.append(_make_param(leaf, (param_ranges or {}).get(name)))

    searched = {p.name for p in params}
    fixed: dict[str, Any] = {}
    for p in params:
        if p.depends_on and p.depends_on not in searched:
            if p.depends_on not in leaves:
                raise SpaceError(f"{p.name}: depends_on {p.depends_on!r} is not in the schema{_closest(p.depends_on, searchable_names)}")
            found, value = _lookup(spec, p.depends_on)
            fixed[p.depends_on] = value if found else leaves[p.depends_on].node.get("default")
    return Space(params=tuple(_order(params)), fixed=fixed, notes=tuple(notes))
