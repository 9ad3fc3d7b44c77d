"""Reading a TAO ``train.schema.json``: its fields, their AutoML status, and each searched one as a `Param`.

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

math_cond (TAO's definitions, from nvidia_tao_core's AutoML sampler)
    ``"^ N"``: an int power of N (N**1, N**2, ... inside the range), each power equally likely.
    ``"/ N"`` without ``depends_on``: an int multiple of N (sampled with step N).
    ``"/ N"`` with ``depends_on``: not sampled; derived as ``value(depends_on) // N``.
    ``"> depends_on"``, ``">= depends_on"``, ``"< depends_on"``, ``"<= depends_on"`` (the literal word
    ``depends_on``, or the parameter's name): relative to the ``depends_on`` parameter's value (see
    `automl.space`). ``"> 0"``, ``">0"``, ``">= 1"``, ``"< 1"``...: a constant bound that narrows the
    range (``>`` on floats excludes the bound itself).

Ranges: see `automl.ranges`. option_weights: see `automl.space`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from automl.params import Param, ParamKind, SpaceError
from automl.ranges import (apply_custom, check_schema_bounds, constant_bound, float_range, int_range, option_weights,
                           positive_int)
from segformer.config.tao_schema import parse_math_cond

_BOOL_TYPES = {"bool", "boolean"}
_INT_TYPES = {"int", "integer"}
_FLOAT_TYPES = {"float", "number"}
_CATEGORICAL_TYPES = {"categorical", "ordered", "string", "enum"}
_ORDERED_INT = "ordered_int"
_UNSEARCHED_TYPES = {"list", "array", "collection", "dict", "object", "subset_list", "optional_list", "list_2", "list_3"}


@dataclass(frozen=True)
class Leaf:
    name: str
    node: Mapping[str, Any]
    ancestors: tuple[str, ...]
    is_collection: bool


def walk(schema: Mapping[str, Any]) -> dict[str, Leaf]:
    """Every field of the schema by dotted name (collections included, marked as such)."""
    out: dict[str, Leaf] = {}

    def visit(node: Mapping[str, Any], prefix: str, ancestors: tuple[str, ...]) -> None:
        for key, child in (node.get("properties") or {}).items():
            if not isinstance(child, Mapping):
                continue
            name = f"{prefix}{key}"
            is_collection = "properties" in child or str(child.get("type", "")).lower() in {"collection", "object", "dict"}
            out[name] = Leaf(name, child, ancestors, is_collection)
            if "properties" in child:
                visit(child, name + ".", ancestors + (name,))

    visit(schema, "", ())
    return out



def truthy(value: Any) -> bool | None:
    """TAO writes flags as true/false or "TRUE"/"FALSE" (and NaN for unset)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().upper() in {"TRUE", "FALSE"}:
        return value.strip().upper() == "TRUE"
    return None



def all_lists(schema: Mapping[str, Any], key: str) -> set[str]:
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


def default_parameters(schema: Mapping[str, Any], leaves: Mapping[str, Leaf]) -> list[str]:
    top = schema.get("automl_default_parameters")
    if isinstance(top, list):
        return [str(n) for n in top]
    nested = sorted(all_lists(schema, "automl_default_parameters"))
    if nested:
        return nested
    return [n for n, leaf in leaves.items() if not leaf.is_collection and truthy(leaf.node.get("automl_enabled"))]



def status(leaf: Leaf, defaults: set[str], disabled: set[str]) -> str:
    flag = truthy(leaf.node.get("automl_enabled"))
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


def _parse_math_cond(name: str, cond: Any) -> tuple[str, str] | None:
    parsed = parse_math_cond(cond)
    if parsed is None and not (cond is None or cond == "" or (isinstance(cond, float) and math.isnan(cond))):
        raise SpaceError(
            f"{name}: math_cond {cond!r} is not understood; TAO's forms are '^ N' (power of N), '/ N' (multiple of N, "
            f"or depends_on // N), '> depends_on', '>= depends_on', '< depends_on', '<= depends_on', and '> 0'-style constants"
        )
    return parsed


def make_param(leaf: Leaf, custom: Mapping[str, Any] | None) -> Param:
    """One schema field (with its custom_param_ranges entry, if any) as a searched `Param`.

    Kept whole: the math_cond and depends_on are parsed once at the top, then one case per schema
    type (bool, options, float, int) applies them; split apart, every case would take the same
    half-dozen parsed values as arguments.
    """
    name = leaf.name
    node, customized = apply_custom(name, leaf.node, custom)
    schema_type = str(node.get("type", "")).lower()
    default = node.get("default")
    log_flag = truthy(node.get("log")) if "log" in node else None
    if node.get("scale") == "log":
        log_flag = True
    source_prefix = "custom_param_ranges; " if customized else ""
    enum = node.get("enum")
    if enum is None and schema_type in _INT_TYPES | _FLOAT_TYPES | {_ORDERED_INT} and isinstance(node.get("valid_options"), list):
        enum = node["valid_options"]
    cond = _parse_math_cond(name, node.get("math_cond"))
    depends_on = node.get("depends_on") or None
    if isinstance(depends_on, float) and math.isnan(depends_on):
        depends_on = None
    parent_param = bool(truthy(node.get("parent_param")))

    if schema_type in _UNSEARCHED_TYPES or schema_type.startswith("list_1_"):
        raise SpaceError(
            f"{name}: type {schema_type!r} is not searched (no sampling rule exists for lists/collections); "
            f"remove it from the search or fix its value in the spec"
        )
    check_schema_bounds(name, node)
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
        divisor = positive_int(name, cond[1])
        notes.append(f"math_cond '/ {divisor}' with depends_on: {depends_on} // {divisor}")
        cond = None

    if schema_type in _BOOL_TYPES:
        choices: tuple[Any, ...] = (False, True)
        return Param(name, "bool", default, choices=choices, weights=option_weights(name, node, choices), parent_param=parent_param,
                     schema_type=schema_type, source=source_prefix + "bool", depends_on=depends_on, relation=relation)

    # Options given for a number (custom_param_ranges valid_options: [0.001, 0.003]) are its values: only
    # those are tried, as for ints; its range would otherwise be searched as if they were not there.
    if schema_type in _CATEGORICAL_TYPES or (schema_type == _ORDERED_INT and enum) or (enum and schema_type in _INT_TYPES | _FLOAT_TYPES):
        if not isinstance(enum, list) or not enum:
            raise SpaceError(f"{name}: type {schema_type!r} without enum/valid_options has no values to search; give valid_options in custom_param_ranges")
        if schema_type in _FLOAT_TYPES and not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in enum):
            raise SpaceError(f"{name}: valid_options {enum!r} must be numbers ({name} is a float)")
        choices = (tuple(int(v) for v in enum) if schema_type in _INT_TYPES | {_ORDERED_INT} else
                   tuple(float(v) for v in enum) if schema_type in _FLOAT_TYPES else tuple(enum))
        kind: ParamKind = "int" if schema_type in _INT_TYPES | {_ORDERED_INT} else "categorical"
        return Param(name, kind, default, choices=choices, weights=option_weights(name, node, choices), parent_param=parent_param,
                     schema_type=schema_type, depends_on=depends_on, relation=relation, divisor=divisor,
                     math_cond=node.get("math_cond"), source=source_prefix + "; ".join(["enum"] + notes))

    if schema_type in _FLOAT_TYPES:
        if cond is not None and cond[0] in {"^", "/"}:
            raise SpaceError(f"{name}: math_cond {node.get('math_cond')!r} applies to int parameters only, {name} is a float")
        lo, hi, log, how = float_range(name, node, default, log_flag)
        how = how.removeprefix("schema ") if customized else how  # the bounds are the custom range's
        if cond is not None:
            lo, hi = constant_bound(name, cond, lo, hi, integer=False)
            notes.append(f"math_cond '{node.get('math_cond')}'")
        if lo > hi:
            raise SpaceError(f"{name}: empty range [{lo}, {hi}] after applying math_cond {node.get('math_cond')!r}")
        if log and lo <= 0:
            raise SpaceError(f"{name}: log scale needs a positive lower bound, got {lo}; set valid_min > 0 in custom_param_ranges")
        return Param(name, "float", default, low=lo, high=hi, log=log, math_cond=node.get("math_cond"), depends_on=depends_on,
                     relation=relation, parent_param=parent_param, schema_type=schema_type,
                     source=source_prefix + "; ".join([how] + notes))

    if schema_type in _INT_TYPES:
        lo, hi, how = int_range(node, default)
        how = how.removeprefix("schema ") if customized else how
        choices = ()
        if cond is not None:
            op, arg = cond
            if op == "^":
                factor = positive_int(name, arg)
                if factor < 2:
                    raise SpaceError(f"{name}: math_cond '^ {arg}' needs a factor >= 2")
                choices = tuple(factor**k for k in range(1, 64) if lo <= factor**k <= hi)
                if not choices:
                    raise SpaceError(f"{name}: no power of {factor} lies in [{lo}, {hi}] (math_cond '^ {factor}'); widen the range")
                notes.append(f"math_cond '^ {factor}': powers of {factor} in [{lo}, {hi}]")
            elif op == "/":
                step = positive_int(name, arg)
                lo, hi = math.ceil(lo / step) * step, math.floor(hi / step) * step
                notes.append(f"math_cond '/ {step}': multiples of {step}")
            else:
                lo, hi = constant_bound(name, cond, lo, hi, integer=True)
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

