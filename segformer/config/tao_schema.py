"""TAO skill schemas: read NVIDIA's files, build ours from the dataclasses, translate to JSON-Schema.

The TAO skill-schema format (NVIDIA's ``schemas/<action>.schema.json``): every node has a TAO
``type`` (``collection``, ``int``, ``float``, ``bool``, ``string``, ``categorical``,
``ordered_int``, ``list``) and a ``default``; leaves may carry ``minimum``/``maximum``/``enum``/
``option_weights``/``math_cond``/``depends_on``/``parent_param``/``popular``/``automl_enabled``;
collections list their children's AutoML flags in ``automl_default_parameters`` and
``automl_disabled_parameters``.

What ours adds (additive, NVIDIA's readers ignore unknown keys):
- ``log: true`` on parameters AutoML should sample on a log scale (the learning rate);
- ``valid_min``/``valid_max``: the AutoML search range, where it is narrower than what a spec may
  hold. These are the names TAO's AutoML uses for search ranges (``custom_param_ranges``). As in
  NVIDIA's files, ``minimum``/``maximum`` are always the field's validity bounds (validation reads
  only them), so NVIDIA's tooling accepts every value our loader accepts (weight_decay 0, lr 0.02);
- ``items`` on lists: the element type (and for the palette, the entry's fields).
Unbounded ranges simply omit ``maximum`` (NVIDIA writes the non-JSON literal ``Infinity``; our
files are strict JSON).
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import typing
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from segformer.actions import ACTIONS
from segformer.text import fmt

from .experiment import ExperimentConfig
from .fields import FieldSpec, iter_fields

__all__ = [
    "ACTION_SECTIONS",
    "SPEC_SHORTHAND_KEYS",
    "read_tao_schema",
    "build_tao_schema",
    "parse_math_cond",
    "tao_to_json_schema",
    "schema_problems",
    "suggest_key",
    "valid_keys",
]

_COMMON = ("model_name", "encryption_key", "results_dir", "wandb", "model", "dataset", "train")
# Which sections each action's schema holds: NVIDIA's choice (every schema has the train and
# quantize sections, plus the action's own). gen_trt_engine is ours (NVIDIA publishes none).
ACTION_SECTIONS: dict[str, tuple[str, ...]] = {
    "train": _COMMON + ("quantize",),
    "evaluate": _COMMON + ("evaluate", "quantize"),
    "inference": _COMMON + ("inference", "quantize"),
    "export": _COMMON + ("export", "quantize"),
    "quantize": _COMMON + ("quantize",),
    "gen_trt_engine": ("model_name", "encryption_key", "results_dir", "model", "dataset", "gen_trt_engine"),
}

# Short names users and agents use for common keys (union of NVIDIA's train and deploy skill files).
SPEC_SHORTHAND_KEYS: dict[str, str] = {
    "num_epochs": "train.num_epochs",
    "num_gpus": "train.num_gpus",
    "batch_size": "dataset.segment.batch_size",
    "learning_rate": "train.optim.lr",
    "num_classes": "dataset.segment.num_classes",
    "img_size": "dataset.segment.img_size",
    "num_workers": "dataset.segment.workers",
    "root_dir": "dataset.segment.root_dir",
    "calibration_images": "dataset.segment.quant_calibration_dataset.images_dir",
    "pretrained_backbone": "model.backbone.pretrained_backbone_path",
    "pretrained_model": "train.pretrained_model_path",
    "resume_checkpoint": "train.resume_training_checkpoint_path",
    "checkpoint": "evaluate.checkpoint",
    "quantize_model": "quantize.model_path",
    "input_width": "export.input_width",
    "input_height": "export.input_height",
    "export_onnx": "export.onnx_file",
    "trt_data_type": "gen_trt_engine.tensorrt.data_type",
    "trt_engine": "gen_trt_engine.trt_engine",
    "trt_min_batch_size": "gen_trt_engine.tensorrt.min_batch_size",
    "trt_opt_batch_size": "gen_trt_engine.tensorrt.opt_batch_size",
    "trt_max_batch_size": "gen_trt_engine.tensorrt.max_batch_size",
}


# ------------------------------------------------------------------------------------------ reading
def read_tao_schema(path: str | Path) -> dict:
    """Read a TAO skill schema (or manifest), accepting NVIDIA's non-JSON ``Infinity``/``NaN`` literals.

    ``Infinity`` becomes ``math.inf``: treat a non-finite bound as "no bound".
    """
    text = Path(path).read_text(encoding="utf-8")
    constants = {"Infinity": math.inf, "-Infinity": -math.inf, "NaN": math.nan}
    return json.loads(text, parse_constant=constants.__getitem__)


# ----------------------------------------------------------------------------------------- building
def _unwrap_optional(hint: Any) -> Any:
    if typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _scalar_type(hint: Any, spec: FieldSpec | None) -> str | None:
    has_options = spec is not None and spec.options is not None
    if hint is bool:
        return "bool"
    if hint is int:
        return "ordered_int" if has_options else "int"
    if hint is float:
        return "float"
    if hint is str:
        return "categorical" if has_options else "string"
    return None


def _plain(value: Any, spec: FieldSpec | None = None) -> Any:
    """A default as the schema/template shows it: TAO's "" (or "???") for unset, dicts for dataclasses."""
    if value is None:
        if spec is not None and spec.options is not None and "None" in spec.options:
            return "None"
        return spec.placeholder if spec is not None and spec.placeholder else ""
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name), s) for f, s in iter_fields(type(value))}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _leaf_node(hint: Any, spec: FieldSpec, default: Any, has_default: bool) -> dict:
    hint = _unwrap_optional(hint)
    node: dict[str, Any] = {"description": spec.description}
    origin = typing.get_origin(hint)
    if origin in (list, typing.List):
        node["type"] = "list"
        (item_hint,) = typing.get_args(hint) or (Any,)
        if dataclasses.is_dataclass(item_hint):
            node["items"] = _item_collection(item_hint)
        elif _scalar_type(item_hint, None) is not None:
            node["items"] = {"type": _scalar_type(item_hint, None)}
    elif origin in (dict, typing.Dict):
        node["type"] = "collection"
    else:
        node["type"] = _scalar_type(hint, spec)
    if has_default:
        node["default"] = _plain(default, spec)
    if spec.title:
        node["title"] = spec.title
    if spec.automl is not None:
        node["automl_enabled"] = spec.automl
    # minimum/maximum: validity bounds (NVIDIA's meaning; an infinite bound is omitted: strict JSON).
    # valid_min/valid_max: the AutoML search range (TAO's custom_param_ranges names).
    if spec.minimum is not None and math.isfinite(spec.minimum):
        node["minimum"] = spec.minimum
    if spec.maximum is not None and math.isfinite(spec.maximum):
        node["maximum"] = spec.maximum
    if spec.automl_range is not None:
        node["valid_min"], node["valid_max"] = spec.automl_range
    if spec.log:
        node["log"] = True
    if spec.math_cond:
        node["math_cond"] = spec.math_cond
    if spec.options is not None:
        node["enum"] = list(spec.options)
    if spec.option_weights is not None:
        node["option_weights"] = list(spec.option_weights)
    if spec.depends_on:
        node["depends_on"] = spec.depends_on
    if spec.parent_param:
        node["parent_param"] = spec.parent_param
    if spec.popular:
        node["popular"] = True
    if spec.pattern:
        node["pattern"] = spec.pattern
    return node


def _item_collection(cls: type) -> dict:
    """Schema of a list element dataclass (the palette entry): fields without defaults are required."""
    hints = typing.get_type_hints(cls)
    props, required = {}, []
    for f, spec in iter_fields(cls):
        has_default = f.default is not dataclasses.MISSING
        props[f.name] = _leaf_node(hints[f.name], spec, f.default, has_default)
        if not has_default:
            required.append(f.name)
    return {"type": "collection", "properties": props, "required": required}


def _collection_node(instance: Any, path: str, spec: FieldSpec | None) -> dict:
    cls = type(instance)
    hints = typing.get_type_hints(cls)
    props: dict[str, dict] = {}
    enabled, disabled, popular, required = [], [], [], []
    for f, fspec in iter_fields(cls):
        key = f"{path}.{f.name}" if path else f.name
        value = getattr(instance, f.name)
        if dataclasses.is_dataclass(value):
            child = _collection_node(value, key, fspec)
        else:
            child = _leaf_node(hints[f.name], fspec, value, True)
            if fspec.popular:
                popular.append(f.name)
            if fspec.placeholder == "???":
                required.append(f.name)
        if child.get("automl_enabled") is True:
            enabled.append(key)
        elif child.get("automl_enabled") is False:
            disabled.append(key)
        if child.get("required"):
            required.append(f.name)
        props[f.name] = child
    node: dict[str, Any] = {"type": "collection", "default": _plain(instance), "properties": props,
                            "automl_enabled": False}
    if spec is not None:
        node["description"] = spec.description
        if spec.title:
            node["title"] = spec.title
    if enabled:
        node["automl_default_parameters"] = enabled
    if disabled:
        node["automl_disabled_parameters"] = disabled
    if popular:
        node["popular"] = popular
    if required:
        node["required"] = required
    return node


def _descendants(node: dict, path: str = "") -> Iterable[tuple[str, dict]]:
    for name, child in node.get("properties", {}).items():
        if not isinstance(child, dict):
            continue
        key = f"{path}.{name}" if path else name
        yield key, child
        if child.get("type") == "collection":
            yield from _descendants(child, key)


def _popular_values(node: dict) -> dict:
    out: dict[str, Any] = {}
    for name, child in node.get("properties", {}).items():
        if not isinstance(child, dict):
            continue
        if child.get("type") == "collection" and "properties" in child:
            sub = _popular_values(child)
            if sub:
                out[name] = sub
        elif child.get("popular"):
            out[name] = child.get("default")
    return out


@lru_cache(maxsize=None)
def _full_schema() -> dict:
    return _collection_node(ExperimentConfig(), "", None)


def build_tao_schema(action: str | None = None) -> dict:
    """The TAO skill schema of one action (``None``: every section), built from the dataclasses.

    As in NVIDIA's files, the top-level ``automl_*`` lists and ``popular`` cover the whole
    experiment config, while ``properties`` and ``default`` hold only the action's sections.
    """
    if action is not None and action not in ACTION_SECTIONS:
        raise ValueError(f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}")
    full = json.loads(json.dumps(_full_schema()))  # a private deep copy
    sections = ACTION_SECTIONS[action] if action else tuple(full["properties"])
    properties = {name: full["properties"][name] for name in sections}
    collections = [name for name, node in full["properties"].items() if node["type"] == "collection"]
    # NVIDIA's quirk, kept for compatibility: the top-level sections listed under properties too.
    properties["automl_disabled_parameters"] = collections
    everything = list(_descendants(full))
    return {
        "automl_default_parameters": sorted(k for k, n in everything if n.get("automl_enabled") is True),
        "automl_disabled_parameters": sorted(k for k, n in everything if n.get("automl_enabled") is False),
        "default": {name: full["default"][name] for name in sections},
        "popular": _popular_values(full),
        "properties": properties,
        "required": [name for name in sections if full["properties"][name].get("required")],
        "type": "object",
        "x_tao_schema": {
            "action": action or "all",
            "core_module": "segformer",
            "model": "segformer",
            "network_arch": "segformer",
            "schema_action": action or "all",
            "schema_version": 1,
            "source": "segformer.config dataclasses",
        },
    }


# ------------------------------------------------------------------------------------- JSON-Schema
_JSON_TYPES = {"int": "integer", "ordered_int": "integer", "float": "number", "bool": "boolean",
               "string": ["string", "null"], "list": "array"}
_MATH_COND = re.compile(r"^\s*(\^|/|>=|<=|>|<)\s*(\S+)\s*$")
# math_cond comparisons that are JSON-Schema bounds (with a numeric argument)
_BOUND_OF = {">": "exclusiveMinimum", ">=": "minimum", "<": "exclusiveMaximum", "<=": "maximum"}


def parse_math_cond(text: Any) -> tuple[str, str] | None:
    """TAO's ``math_cond`` as (operator, argument), or None when ``text`` is not one.

    Operators: ``^`` (a power of the argument), ``/`` (a multiple of it), ``>``, ``>=``, ``<``,
    ``<=``; the argument is one word: a number, or a parameter name (relative to ``depends_on``).
    ``"> 0"`` -> (">", "0"); ``"/ 8"`` -> ("/", "8"); None, "", NaN (an empty cell) -> None.
    """
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return None
    match = _MATH_COND.match(str(text))
    return (match.group(1), match.group(2)) if match else None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _numeric_bound(math_cond: Any) -> tuple[str, float] | None:
    """(JSON-Schema keyword, value) of a math_cond comparison with a finite number, else None."""
    parsed = parse_math_cond(math_cond)
    if parsed is None or parsed[0] not in _BOUND_OF:
        return None
    try:
        value = float(parsed[1])
    except ValueError:
        return None  # relative to another parameter: not a fixed bound
    return (_BOUND_OF[parsed[0]], value) if math.isfinite(value) else None


def tao_to_json_schema(node: dict) -> dict:
    """Translate a TAO skill schema (ours or NVIDIA's) into a JSON-Schema for ``jsonschema``.

    Collections with declared properties reject unknown keys; TAO's collection-level
    ``required`` is not translated (TAO fills defaults; actions check what they need with
    ``require()``), except inside list items (a palette entry needs its fields). String fields
    accept null (TAO's "" means unset). ``minimum``/``maximum`` are the validity bounds
    (``valid_min``/``valid_max`` are an AutoML search range and are not validated); non-finite
    bounds are dropped; ``math_cond`` comparisons with a number become bounds (``> 0``: exclusive)
    and the other forms (``^ 2``, ``/ 8``, ``> depends_on``) are left to AutoML.
    """
    tao_type = node.get("type")
    props = node.get("properties")
    if tao_type in ("object", "collection") or props is not None:
        out: dict[str, Any] = {"type": "object"}
        if props:
            out["properties"] = {k: tao_to_json_schema(v) for k, v in props.items() if isinstance(v, dict)}
            out["additionalProperties"] = False
        return out
    out = {}
    if tao_type in _JSON_TYPES:
        out["type"] = _JSON_TYPES[tao_type]
    if "enum" in node:
        enum = list(node["enum"])
        out["enum"] = enum + [None] if "None" in enum else enum
    low, high = node.get("minimum"), node.get("maximum")
    if _finite(low):
        out["minimum"] = low
    if _finite(high):
        out["maximum"] = high
    bound = _numeric_bound(node.get("math_cond"))
    if bound is not None:
        key, value = bound
        if key == "exclusiveMinimum" and out.get("minimum", -math.inf) > value:
            pass  # an inclusive minimum above the condition already implies it
        elif key == "exclusiveMaximum" and out.get("maximum", math.inf) < value:
            pass
        else:
            out[key] = value
            if key == "exclusiveMinimum":
                out.pop("minimum", None)
            if key == "exclusiveMaximum":
                out.pop("maximum", None)
    if "pattern" in node:
        out["pattern"] = node["pattern"]
    items = node.get("items")
    if isinstance(items, dict):
        item_schema = tao_to_json_schema(items)
        if items.get("required"):
            item_schema["required"] = list(items["required"])
        out["items"] = item_schema
    return out


# ------------------------------------------------------------------------------------ checking
def valid_keys(schema: dict | None = None) -> list[str]:
    """Every dotted key (sections and fields) of a TAO schema; default: all our sections."""
    return [key for key, _ in _descendants(schema or _full_schema())]


def suggest_key(key: str, candidates: Iterable[str]) -> str | None:
    """The closest valid key to a mistyped one (difflib), or a shorthand's full key: a near spelling
    in the same section first, then the key of that very name in another section, then anything near."""
    candidates = list(candidates)
    leaf = key.rsplit(".", 1)[-1]
    if leaf in SPEC_SHORTHAND_KEYS and SPEC_SHORTHAND_KEYS[leaf] in candidates:
        return SPEC_SHORTHAND_KEYS[leaf]
    section = key.rsplit(".", 1)[0] if "." in key else ""
    siblings = {c.rsplit(".", 1)[-1]: c for c in candidates if (c.rsplit(".", 1)[0] if "." in c else "") == section}
    close = difflib.get_close_matches(leaf, list(siblings), n=1, cutoff=0.6)
    if close:
        return siblings[close[0]]  # a typo in the right section
    # The right name in the wrong section (dataset.segment.mean): the closest key of that very name.
    same_leaf = [c for c in candidates if c.rsplit(".", 1)[-1] == leaf and c != key]
    if same_leaf:
        return (difflib.get_close_matches(key, same_leaf, n=1, cutoff=0.0) or same_leaf)[0]
    # A section that holds the key is no answer (dataset.segment.mean -> dataset.segment).
    close = difflib.get_close_matches(key, [c for c in candidates if not key.startswith(c + ".")], n=1, cutoff=0.6)
    if close:
        return close[0]
    by_leaf: dict[str, str] = {}
    for c in candidates:
        by_leaf.setdefault(c.rsplit(".", 1)[-1], c)
    close = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.6)
    return by_leaf[close[0]] if close else None


def unknown_key_message(key: str, candidates: Iterable[str]) -> str:
    hint = suggest_key(key, candidates)
    return f"unknown key {key!r}" + (f"; did you mean {hint!r}?" if hint else "")


def describe_rule(js: dict) -> str:
    """A bound rule in words: "in (0, 1]", ">= 1", "< 1"."""
    low_open, high_open = "exclusiveMinimum" in js, "exclusiveMaximum" in js
    low = js.get("exclusiveMinimum", js.get("minimum"))
    high = js.get("exclusiveMaximum", js.get("maximum"))
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{fmt(low, 6)}, {fmt(high, 6)}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {fmt(low, 6)}"
    return f"{'<' if high_open else '<='} {fmt(high, 6)}"


_TYPE_WORDS = {"integer": "an integer", "number": "a number", "boolean": "true or false",
               "array": "a list", "object": "a mapping", "string": "a string"}


def _path(parts: Iterable[Any]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def schema_problems(spec: dict, json_schema: dict, keys: Iterable[str] | None = None) -> list[str]:
    """Every problem of a (resolved, plain) spec against a JSON-Schema, one readable line each."""
    import jsonschema  # light, but only needed here

    candidates = list(keys) if keys is not None else valid_keys()
    validator = jsonschema.Draft202012Validator(json_schema)
    problems = []
    for error in sorted(validator.iter_errors(spec), key=lambda e: (_path(e.absolute_path), e.validator)):
        key, value, kind, js = _path(error.absolute_path), error.instance, error.validator, error.schema
        if kind == "additionalProperties":
            for extra in sorted(set(value) - set(js.get("properties", {}))):
                problems.append(unknown_key_message(f"{key}.{extra}" if key else extra, candidates))
        elif kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            problems.append(f"{key} must be {describe_rule(js)}, got {value!r}")
        elif kind == "type":
            wanted = js["type"] if isinstance(js["type"], list) else [js["type"]]
            words = " or ".join(_TYPE_WORDS.get(t, t) for t in wanted if t != "null")
            problems.append(f"{key} must be {words}, got {value!r}")
        elif kind == "enum":
            options = [o for o in js["enum"] if o is not None]
            hint = difflib.get_close_matches(str(value), [str(o) for o in options], n=1, cutoff=0.6)
            problems.append(f"{key} must be one of {options}, got {value!r}"
                            + (f"; did you mean {hint[0]!r}?" if hint else ""))
        elif kind == "required":
            problems.append(f"{key}: {error.message}")
        elif kind == "pattern":
            problems.append(f"{key} must match {js['pattern']}, got {value!r}")
        else:
            problems.append(f"{key or '<spec>'}: {error.message}")
    return problems
