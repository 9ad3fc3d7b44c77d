"""Loading a spec: dataclass defaults -> YAML -> dotted overrides -> interpolation -> validation.

Validation reports every problem at once (unknown keys with the closest valid key, wrong types,
out-of-bounds values, cross-field rules) as one ``ConfigError``. OmegaConf does the merging into
the structured (typed) config and the ``${...}`` interpolation; callers get real dataclass instances.
A loaded config records what it was resolved from in its declared field ``spec_source``
(:class:`~segformer.config.experiment.SpecSource`, never part of ``to_dict`` or the dumped YAML),
so that ``apply_overrides(cfg, ["results_dir=/x"])`` also moves ``${results_dir}/...`` paths.
Input paths given as URLs (``s3://...``) are fetched into a local cache and the config names the
copies (``segformer.remote``); ``dump_config`` writes the URLs. ``fetch=False`` keeps the URLs and
contacts nothing, for code that needs the settings only.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import re
import typing
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from segformer.actions import ACTIONS
from segformer.text import count

from .experiment import ExperimentConfig, QuantizeConfig, SpecSource
from .fields import ConfigError, ConfigWarning, iter_fields
from .tao_schema import (
    build_tao_schema,
    schema_problems,
    tao_to_json_schema,
    unknown_key_message,
    valid_keys,
)

__all__ = [
    "load_config",
    "apply_overrides",
    "to_dict",
    "dump_config",
    "require",
    "action_results_dir",
    "spec_problems",
    "read_spec",
    "REQUIRED_BY_ACTION",
]

# Values an action cannot run without; a tuple means "one of these". Checked by `segformer validate
# --action` and, at run time, by the actions through `require()`.
REQUIRED_BY_ACTION: dict[str, tuple[str | tuple[str, ...], ...]] = {
    "train": ("dataset.segment.root_dir",),
    "evaluate": ("dataset.segment.root_dir", ("evaluate.checkpoint", "evaluate.trt_engine")),
    "inference": ("dataset.segment.root_dir", ("inference.checkpoint", "inference.trt_engine")),
    "export": ("export.checkpoint",),
    "quantize": ("quantize.model_path",),
    "gen_trt_engine": ("gen_trt_engine.onnx_file",),
}

_UNSET = ("", "???")
_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
_INT = re.compile(r"[-+]?\d+")
_INTERPOLATION = re.compile(r"\$\{([^}]*)\}")
_STANDIN = re.compile(r"'[^']*<[\w.]+>[^']*'")  # a value holding the stand-in of an unset ${ref}


# ------------------------------------------------------------------------------------------ public
def _structure_problem(node: Any, ancestors: tuple[int, ...] = (), walked: set[int] | None = None) -> str | None:
    """What safe_load would silently accept but a spec must not hold, from the composed node tree: a
    key written twice in one mapping (safe_load keeps the last: a section written twice loses the
    first), or an alias that contains itself (a recursive structure)."""
    walked = set() if walked is None else walked
    if id(node) in ancestors:
        return f"an alias at line {node.start_mark.line + 1} refers to a node that contains it (a recursive structure)"
    if id(node) in walked:  # an alias to a node already checked
        return None
    walked.add(id(node))
    inner = (*ancestors, id(node))
    children: list[Any] = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                line = key_node.start_mark.line + 1
                if key_node.value in seen:
                    return (f"key {key_node.value!r} is written twice in the same mapping (lines {seen[key_node.value]} "
                            f"and {line}); YAML would silently keep only the second: keep one")
                seen[key_node.value] = line
            children.append(value_node)
    elif isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    for child in children:
        problem = _structure_problem(child, inner, walked)
        if problem:
            return problem
    return None


def read_yaml_file(path: str | Path, what: str) -> Any:
    """A YAML (or JSON) file's content, safely loaded; `what` names the file in messages ("spec file").

    Every way a file can be unreadable is one ConfigError naming it: missing, a folder, not text
    (binary garbage), not YAML, a key written twice in one mapping (both lines named), or a
    recursive alias. UTF-8 and,
    with a byte-order mark, UTF-16 and UTF-32 are read (PyYAML detects them from the bytes).
    """
    from segformer.remote import is_url

    if is_url(str(path)):  # (Path() made s3://b/spec.yaml "s3:/b/spec.yaml", said not to exist)
        raise ConfigError(f"{what} {str(path)!r} is a URL: it is read from a local file (the dataset, checkpoints and "
                          f"weights it names may be URLs); copy it here first")
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {str(path)!r} is a folder; give the YAML file in it")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what} {str(path)!r} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{what} {str(path)!r} cannot be read: {exc.strerror or exc}") from None
    try:
        problem = _structure_problem(yaml.compose(data, Loader=yaml.SafeLoader))  # nodes only: nothing constructed
        if problem:
            raise ConfigError(f"{what} {str(path)!r}: {problem}")
        return yaml.safe_load(data)
    except yaml.reader.ReaderError as exc:
        raise ConfigError(f"{what} {str(path)!r} is not a text file ({exc.reason} at byte {exc.position}): "
                          f"save it as UTF-8 YAML") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {str(path)!r} is not valid YAML: {exc}") from None


def read_spec(path: str | Path) -> dict:
    """The raw mapping of a YAML spec file; an empty file is an empty spec."""
    data = read_yaml_file(path, "spec file")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"spec file {str(path)!r} must hold a mapping of sections, got {type(data).__name__}")
    return data


def load_config(path: str | Path | None, overrides: Sequence[str] | Mapping[str, Any] = (), *,
                fetch: bool = True) -> ExperimentConfig:
    """Load a spec file (``None``: defaults only) with ``key=value`` overrides into a validated config.

    Input paths given as URLs are fetched into the local cache; with ``fetch=False`` they are kept
    as given and nothing is contacted (for code that reads settings only, not the data).
    Raises ConfigError listing every problem. Settings that have no effect here warn (ConfigWarning).
    """
    origin = str(path) if path is not None else "<defaults>"
    raw = read_spec(path) if path is not None else {}
    raw, problems, overridden = _with_overrides(raw, overrides)
    return _materialize(raw, origin, problems, fetch, overridden=overridden)


def apply_overrides(cfg: ExperimentConfig, overrides: Sequence[str] | Mapping[str, Any], *,
                    fetch: bool = True) -> ExperimentConfig:
    """A NEW config with dotted overrides applied and validated; ``cfg`` is left untouched.

    For a config from ``load_config`` (or ``apply_overrides``) the overrides are applied to the spec
    it was resolved from (``cfg.spec_source``) before ``${...}`` interpolation, so ``results_dir=/x``
    also moves ``${results_dir}/train/...`` paths; any other config starts from its own values.
    ``fetch`` as for :func:`load_config`.
    """
    values = to_dict(cfg)
    source = cfg.spec_source
    base = source.raw if source is not None and source.resolved == values else values
    raw, problems, overridden = _with_overrides(base, overrides)
    return _materialize(raw, "<overrides>", problems, fetch, overridden=overridden)


def to_dict(cfg: Any) -> dict:
    """A plain (YAML/JSON-able) dict of the spec keys of a config or of any of its sections."""
    return {f.name: _plain(getattr(cfg, f.name)) for f, _ in iter_fields(type(cfg))}


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return to_dict(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return copy.deepcopy(value)


def dump_config(cfg: ExperimentConfig, path: str | Path, *, movable: bool = False) -> Path:
    """Write the resolved config as YAML, atomically (a temporary file, then os.replace). Local copies
    of remote data are written as the URLs they came from (``segformer.remote``).

    ``movable``: every other value that is a path inside ``results_dir`` is written as
    ``${results_dir}/...``, so a folder moved or copied elsewhere runs again with one override
    (``results_dir=/its/new/place``) instead of one per file.
    """
    from segformer.fileio import atomic_write_text
    from segformer.remote import urls_restored

    values = urls_restored(to_dict(cfg))
    root = str(values.get("results_dir") or "").rstrip("/")
    if movable and root:
        values = {key: value if key == "results_dir" else _under(value, root) for key, value in values.items()}
    return atomic_write_text(path, yaml.safe_dump(values, sort_keys=False, default_flow_style=False))


def _under(value: Any, root: str) -> Any:
    """``value`` with paths inside the folder ``root`` written relative to ``${results_dir}``."""
    if isinstance(value, dict):
        return {key: _under(item, root) for key, item in value.items()}
    if isinstance(value, list):
        return [_under(item, root) for item in value]
    if isinstance(value, str) and (value == root or value.startswith(root + "/")):
        return "${results_dir}" + value[len(root):]
    return value


def require(cfg: ExperimentConfig, key: str, *alternatives: str) -> Any:
    """The value of ``key`` (or the first set of ``alternatives``); a ConfigError says how to set it."""
    for k in (key, *alternatives):
        value = _select(cfg, k)
        if value is not None:
            return value
    keys = " or ".join((key, *alternatives))
    raise ConfigError(
        f"{keys} is required here but is not set (null, '' or '???' in the spec). "
        f"Set it in the spec file or on the command line: {key}=/path/to/file"
    )


def action_results_dir(cfg: ExperimentConfig, action: str) -> Path:
    """``cfg.<action>.results_dir`` if set, else ``cfg.results_dir/<action>``."""
    if action not in ACTIONS:
        raise ConfigError(f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}")
    own = getattr(cfg, action).results_dir
    if own:
        return Path(own)
    if cfg.results_dir:
        return Path(cfg.results_dir) / action
    raise ConfigError(f"results_dir is not set: set results_dir (or {action}.results_dir) in the spec "
                      "or pass results_dir=/path/to/results")


def spec_problems(raw: Mapping[str, Any], action: str | None = None,
                  overrides: Sequence[str] | Mapping[str, Any] = ()) -> list[str]:
    """Every problem of a raw spec mapping with ``overrides`` applied (after defaults and
    interpolation), for ``segformer validate``: malformed or unknown overrides first.

    With ``action``, also the values that action needs (REQUIRED_BY_ACTION).
    """
    raw, problems, overridden = _with_overrides(raw, overrides)
    more, resolved = _check(raw, action)
    problems += _tag_overridden(more, overridden)
    if resolved is not None and action is not None:
        # Every action writes under results_dir (action_results_dir); TAO's templates ship it as ''.
        for need in (("results_dir", f"{action}.results_dir"), *REQUIRED_BY_ACTION[action]):
            keys = need if isinstance(need, tuple) else (need,)
            if all(_unset(_select_plain(resolved, k)) for k in keys):
                problems.append(f"{' or '.join(keys)} is required by {action} but is not set "
                                f"(set it in the spec or pass {keys[0]}=...)")
    return problems


# ----------------------------------------------------------------------------------------- helpers
def _select(obj: Any, key: str) -> Any:
    for part in key.split("."):
        if not hasattr(obj, part):
            raise ConfigError(unknown_key_message(key, valid_keys()))
        obj = getattr(obj, part)
    return obj


def _unset(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() in _UNSET)


def _put_plain(data: dict, key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for part in parents:
        data = data.setdefault(part, {})
    data[last] = value


def _select_plain(data: Mapping[str, Any], key: str) -> Any:
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _parse_value(text: str) -> Any:
    """Typed override values: YAML scalars/lists/maps; '1e-4' (YAML 1.1 reads it as text) is a float.
    A command line has no comments: a value YAML would cut at ' #' (`results_dir=/runs/a #1`) is
    taken as written."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if "#" in text and text.count("#") > str(value).count("#"):
        return text
    if isinstance(value, str) and _FLOAT.match(value.strip()) and not text.strip().startswith(("'", '"')):
        return float(value)  # unquoted 1e-4; a quoted "2024" stays the text it was quoted to be
    return value


def _override_items(overrides: Sequence[str] | Mapping[str, Any], problems: list[str]) -> list[tuple[str, Any]]:
    """(dotted key, typed value) of each override; a text without ``=`` is a problem, not an item."""
    if isinstance(overrides, Mapping):
        return list(overrides.items())
    items = []
    for text in [overrides] if isinstance(overrides, str) else overrides:
        key, sep, value = str(text).partition("=")
        if not sep or not key.strip():
            problems.append(f"override {text!r} must look like key=value (e.g. train.optim.lr=3e-4)")
            continue
        items.append((key.strip(), _parse_value(value)))
    return items


def _leaf_keys(key: str, value: Any) -> list[str]:
    """The dotted keys an override sets: a section's value (`train.optim={lr: 5}`) sets its own keys
    (train.optim.lr), not the section's others."""
    if isinstance(value, Mapping) and value:
        return [leaf for name, inner in value.items() for leaf in _leaf_keys(f"{key}.{name}", inner)]
    return [key]


def _tag_overridden(problems: Sequence[str], keys: Sequence[str]) -> list[str]:
    """A problem with a value given as key=value says so: the spec file does not hold it."""
    def given(problem: str) -> bool:
        return any(problem.startswith((f"{k} ", f"unknown key '{k}'")) for k in keys)

    return [f"{p} (given as an override)" if given(p) else p for p in problems]


def _with_overrides(raw: Mapping[str, Any], overrides: Sequence[str] | Mapping[str, Any]) -> tuple[dict, list[str], list[str]]:
    """A deep copy of ``raw`` with dotted overrides set; problems (bad syntax, unknown keys) collected;
    the dotted keys the overrides set (`_leaf_keys`), so that a problem of theirs is told as given as
    an override (`_tag_overridden`)."""
    out = copy.deepcopy(dict(raw))
    problems: list[str] = []
    items = _override_items(overrides, problems)
    overridden = [leaf for key, value in items for leaf in _leaf_keys(key, value)]
    known = set(valid_keys())
    sections = {k.rsplit(".", 1)[0] for k in known if "." in k}
    for key, value in items:
        if key not in known:
            problems.append(f"override {key}=...: " + unknown_key_message(key, known))
            continue
        if key in sections and not isinstance(value, dict):
            # `train=null` or `train.optim=` would reset every key of the section to its default.
            problems.append(f"override {key}={'' if value is None else value} would replace the whole section {key!r} "
                            f"(every key in it back to its default); set its keys instead, e.g. "
                            f"{next(k for k in sorted(known) if k.startswith(key + '.'))}=...")
            continue
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        if key in sections and isinstance(node.get(leaf), dict):
            # A section's value merges into it, as Hydra merges TAO's overrides (`train.optim={lr: 1e-3}`
            # sets lr and keeps the spec's other optimizer keys).
            node[leaf] = _deep_merge(node[leaf], copy.deepcopy(value))
        else:
            node[leaf] = copy.deepcopy(value)
    return out, problems, overridden


def _normalize(data: Any, cls: type) -> Any:
    """TAO's conventions to ours, by field type: "" / "???" -> None for optional strings,
    label_transform "None" -> None, "1e-4" -> 1e-4 for floats, 2.0 and "2" -> 2 for integers, "true" -> True, an empty section -> {}, an option in
    another case -> the option (FP32 -> fp32), and a palette entry without mapping_class maps to itself. Unknown keys are left for validation to report."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        return data
    hints = typing.get_type_hints(cls)
    out = dict(data)
    for f, spec in iter_fields(cls):
        if f.name not in out:
            continue
        value, hint = out[f.name], hints[f.name]
        if spec.options and isinstance(value, str) and value not in spec.options:
            # NVIDIA's published specs write some options in another case (data_type: FP32); TAO
            # compares them case-insensitively, so do we when that names exactly one option.
            same = [o for o in spec.options if isinstance(o, str) and o.lower() == value.strip().lower()]
            if len(same) == 1:
                out[f.name] = value = same[0]
        if cls is QuantizeConfig and f.name == "backend" and isinstance(value, str) and value.strip().lower() == "modelopt":
            out[f.name] = value = "modelopt.pytorch"  # TAO's doc example writes "modelopt" for the PyTorch backend
        optional = typing.get_origin(hint) is typing.Union and type(None) in typing.get_args(hint)
        base = typing.get_args(hint)[0] if optional else hint
        if isinstance(value, str) and "${" in value:
            continue
        if dataclasses.is_dataclass(base):
            out[f.name] = _normalize(value, base)
        elif optional and base is str and isinstance(value, str) and value.strip() in _UNSET:
            out[f.name] = None
        elif base is str and isinstance(value, int) and not isinstance(value, bool):
            out[f.name] = str(value)  # a folder named 2024 (YAML reads a number), as OmegaConf's str fields take it
        elif f.name == "label_transform" and isinstance(value, str) and value.strip().lower() == "none":
            out[f.name] = None
        elif base is float and isinstance(value, str) and _FLOAT.match(value.strip()):
            out[f.name] = float(value)
        elif base is int and isinstance(value, float) and value.is_integer():
            out[f.name] = int(value)  # num_epochs=2.0 (a float written for a whole number) is 2
        elif base is int and isinstance(value, str) and _INT.fullmatch(value.strip()):
            out[f.name] = int(value)  # img_size: "64", which TAO (OmegaConf) reads as 64
        elif base is bool and isinstance(value, str) and value.strip().lower() in ("true", "false"):
            out[f.name] = value.strip().lower() == "true"
        elif typing.get_origin(base) is list and isinstance(value, list):
            (item,) = typing.get_args(base)
            if dataclasses.is_dataclass(item):
                out[f.name] = [_palette_entry(v) for v in value]
            elif item is float:
                out[f.name] = [float(v) if isinstance(v, str) and _FLOAT.match(v.strip()) else v for v in value]
            elif item is int:
                out[f.name] = [int(v) if isinstance(v, float) and v.is_integer() or isinstance(v, str) and _INT.fullmatch(v.strip())
                               else v for v in value]
    return out


def _palette_entry(entry: Any) -> Any:
    if isinstance(entry, dict) and "seg_class" in entry and entry.get("mapping_class") in (None, ""):
        return {**entry, "mapping_class": entry["seg_class"]}
    return entry


def _deep_merge(base: dict, extra: Mapping[str, Any]) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _walk_strings(data: Any, prefix: str = ""):
    if isinstance(data, dict):
        for k, v in data.items():
            yield from _walk_strings(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _walk_strings(v, f"{prefix}[{i}]")
    elif isinstance(data, str):
        yield prefix, data


def _resolve(raw: dict) -> tuple[dict | None, list[str]]:
    """Defaults + raw, with every ${...} resolved by OmegaConf; problems name the key and the reference."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    merged = _deep_merge(to_dict(ExperimentConfig()), _normalize(raw, ExperimentConfig))
    try:
        conf = OmegaConf.create(merged)
    except OmegaConfBaseException as exc:
        return None, [f"the spec cannot be read: {_omega_message(exc)}"]
    problems = []
    known = valid_keys()
    unset: dict[str, list[str]] = {}  # a reference that is not set -> the keys that use it
    for key, text in _walk_strings(merged):
        for ref in _INTERPOLATION.findall(text):
            ref = ref.strip()
            if ":" in ref or ref.startswith("."):
                continue  # resolvers (${oc.env:X}) and relative references: OmegaConf checks them below
            if ref not in known:
                problems.append(f"{key} = {text!r} refers to ${{{ref}}}: " + unknown_key_message(ref, known))
            elif _unset(_select_plain(merged, ref)):
                unset.setdefault(ref, []).append(key)
    if problems:
        return None, problems
    for ref, keys in unset.items():  # one line each (a template's results_dir is used by five keys)
        shown = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
        pathlike = ref.endswith(("dir", "path", "file", "checkpoint"))
        problems.append(f"{ref} is not set, and {count(len(keys), 'key')} refer{'s' if len(keys) == 1 else ''} to it "
                        f"({shown}); set {ref} ({ref}={'/path' if pathlike else '...'}) or write "
                        f"{'the paths' if pathlike else 'the values'} out")
        # a stand-in, so that the rest of the spec is still checked: every problem at once
        _put_plain(merged, ref, f"<{ref}>")
    if unset:
        conf = OmegaConf.create(merged)
    try:
        resolved = OmegaConf.to_container(conf, resolve=True)
    except OmegaConfBaseException as exc:
        return None, [*problems, f"interpolation failed: {_omega_message(exc)}"]
    return _normalize(resolved, ExperimentConfig), problems


def _omega_message(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    key = getattr(exc, "full_key", None)
    return f"{key}: {text}" if key else text


def _reconcile_gpus(d: dict, warn: bool) -> None:
    """num_gpus and gpu_ids that disagree are settled as TAO's launcher settles them (NVIDIA's skill
    sets train.num_gpus alone): max(num_gpus, len(gpu_ids)) GPUs, numbered from 0 unless gpu_ids
    lists that many; said in one warning."""
    for name in ("train", "evaluate", "inference"):
        sec = d.get(name) or {}
        ids, n = sec.get("gpu_ids"), sec.get("num_gpus")
        if isinstance(ids, list) and isinstance(n, int) and not isinstance(n, bool) and n >= 1 and len(ids) != n:
            sec["num_gpus"], sec["gpu_ids"] = settle_gpus(n, ids)
            if warn:  # once, where the config is built (not again where only its problems are listed)
                warnings.warn(f"{name}.num_gpus={n} and {name}.gpu_ids={ids} disagree: using GPUs {sec['gpu_ids']} "
                              f"({sec['num_gpus']} in all), as TAO's launcher does", ConfigWarning)


def settle_gpus(num_gpus: int, gpu_ids: Sequence[int]) -> tuple[int, list[int]]:
    """TAO's launcher's rule: max(num_gpus, len(gpu_ids)) GPUs, numbered from 0 unless gpu_ids lists that many."""
    count = max(int(num_gpus), len(gpu_ids))
    return count, [int(i) for i in gpu_ids] if len(gpu_ids) == count else list(range(count))


def _cross_field_problems(d: dict) -> list[str]:
    """Rules that span fields (the schema checks single values)."""
    problems = []
    seg = (d.get("dataset") or {}).get("segment") or {}
    aug = seg.get("augmentation") or {}
    mean, std = aug.get("mean"), aug.get("std")
    if isinstance(mean, list) and isinstance(std, list):
        if len(mean) not in (1, 3) or len(mean) != len(std):
            problems.append(f"dataset.segment.augmentation.mean and std must both have 3 values (1 for grey), got {mean} and {std}")
        if any(isinstance(s, (int, float)) and s <= 0 for s in std):
            problems.append(f"dataset.segment.augmentation.std values must be > 0, got {std}")
    scale = (aug.get("with_scale_random_crop") or {}).get("scale_range")
    if isinstance(scale, list) and not (len(scale) == 2 and all(isinstance(s, (int, float)) for s in scale) and 0 < scale[0] <= scale[1]):
        problems.append(f"dataset.segment.augmentation.with_scale_random_crop.scale_range must be [low, high] with 0 < low <= high, got {scale}")
    palette = seg.get("palette")
    if isinstance(palette, list):
        if not palette:
            problems.append("dataset.segment.palette must list at least one class")
        norm = seg.get("label_transform") == "norm"
        for i, entry in enumerate(palette):
            if isinstance(entry, dict) and isinstance(entry.get("rgb"), list):
                problem = _rgb_problem(entry["rgb"], norm)
                if problem:
                    problems.append(f"dataset.segment.palette[{i}].rgb {problem}")
        # label_id vs num_classes is not checked here: entries sharing a mapping_class merge into
        # one training id, which segformer.data.MaskDecoder checks against num_classes.
    trt = (d.get("gen_trt_engine") or {}).get("tensorrt") or {}
    sizes = [trt.get(k) for k in ("min_batch_size", "opt_batch_size", "max_batch_size")]
    if all(isinstance(s, int) for s in sizes) and not sizes[0] <= sizes[1] <= sizes[2]:
        problems.append(f"gen_trt_engine.tensorrt batch sizes must satisfy min <= opt <= max, got {sizes}")
    rotate = aug.get("random_rotate") or {}
    if rotate.get("angle_list") == [] and rotate.get("enable", True) and rotate.get("rotate_probability", 0.5):
        problems.append("dataset.segment.augmentation.random_rotate.angle_list is empty; list angles in degrees, e.g. "
                        "[90, 180, 270], or set random_rotate.enable=false")
    in_index = ((d.get("model") or {}).get("decode_head") or {}).get("in_index")
    if isinstance(in_index, list) and (not in_index or len(set(map(str, in_index))) != len(in_index)
                                       or any(not isinstance(i, int) or isinstance(i, bool) or not 0 <= i <= 3 for i in in_index)):
        problems.append(f"model.decode_head.in_index must list distinct backbone levels in 0..3, got {in_index} "
                        f"(TAO's default: [0, 1, 2, 3])")
    steps = ((d.get("train") or {}).get("optim") or {}).get("lr_steps")
    if isinstance(steps, list) and (any(not isinstance(s, int) or s < 1 for s in steps) or steps != sorted(set(steps))):
        problems.append(f"train.optim.lr_steps must be increasing epoch numbers >= 1, got {steps}")
    return problems


def _rgb_problem(rgb: list, norm: bool) -> str | None:
    """Why a palette rgb is invalid, or None; the same rules as segformer.data.palette.MaskDecoder."""
    if len(rgb) not in (1, 3):
        return f"must have 3 values (a colour) or 1 (a grey level / class id), got {rgb}"
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in rgb):
        return f"must hold numbers, got {rgb}"
    if norm:
        if not all(0 <= v <= 1 for v in rgb):
            return (f"must be in 0..1 with label_transform norm (mask value / 255), got {rgb}; divide by 255 "
                    "or set label_transform: None to give 0..255 values")
        return None
    limit = 65535 if len(set(rgb)) == 1 else 255  # a grey level may index a 16-bit mask
    if not all(float(v).is_integer() and 0 <= v <= limit for v in rgb):
        return (f"must be integers in 0..255 (a grey level up to 65535) with label_transform None, got {rgb}; "
                "use label_transform: norm for values given in 0..1")
    return None


def _json_schema(action: str | None) -> dict:
    """The action's JSON-Schema; sections the action's schema does not hold are checked against ours
    too (a train spec may carry evaluate/export sections, as TAO's doc example does)."""
    tao = build_tao_schema(action)
    if action is not None:
        full = build_tao_schema(None)
        for name, node in full["properties"].items():
            tao["properties"].setdefault(name, node)
    return tao_to_json_schema(tao)


# The older TAO SegFormer spec (TAO 4/5, built on mmsegmentation) -> this layout. None: no equivalent.
_OLD_LAYOUT = {
    "dataset.data_root": "dataset.segment.root_dir (a folder holding images/<split> and masks/<split>)",
    "dataset.train_dataset.img_dir": "dataset.segment.root_dir/images/<dataset.segment.train_split>",
    "dataset.train_dataset.ann_dir": "dataset.segment.root_dir/masks/<dataset.segment.train_split>",
    "dataset.val_dataset.img_dir": "dataset.segment.root_dir/images/<dataset.segment.validation_split>",
    "dataset.val_dataset.ann_dir": "dataset.segment.root_dir/masks/<dataset.segment.validation_split>",
    "dataset.test_dataset.img_dir": "dataset.segment.root_dir/images/<dataset.segment.test_split>",
    "dataset.test_dataset.ann_dir": "dataset.segment.root_dir/masks/<dataset.segment.test_split>",
    "dataset.train_dataset.pipeline.augmentation_config.random_flip.prob":
        "dataset.segment.augmentation.random_flip.hflip_probability",
    "dataset.train_dataset.pipeline.augmentation_config.resize.ratio_range":
        "dataset.segment.augmentation.with_scale_random_crop.scale_range",
    "dataset.img_norm_cfg.mean": "dataset.segment.augmentation.mean (on a 0..1 scale: divide by 255)",
    "dataset.img_norm_cfg.std": "dataset.segment.augmentation.std (on a 0..1 scale: divide by 255)",
    "dataset.palette": "dataset.segment.palette (same entries)",
    "dataset.batch_size": "dataset.segment.batch_size",
    "dataset.samples_per_gpu": "dataset.segment.batch_size",
    "dataset.workers_per_gpu": "dataset.segment.workers",
    "dataset.input_type": None,
    "dataset.repeat_data_times": None,
    "model.input_height": "dataset.segment.img_size (square)",
    "model.input_width": "dataset.segment.img_size (square)",
    "model.pretrained_model_path": "train.pretrained_model_path, or model.backbone.pretrained_backbone_path",
    "model.decode_head.decoder_params.embed_dims": "model.decode_head.decoder_params.embed_dim",
    "train.max_iters": "train.num_epochs (epochs, not iterations)",
    "train.exp_config.manual_seed": "train.seed",
    "train.trainer.sf_optim.lr": "train.optim.lr",
    "train.logging_interval": None,
}
_OLD_SECTIONS = ("dataset.train_dataset", "dataset.val_dataset", "dataset.test_dataset", "dataset.img_norm_cfg",
                 "dataset.data_root", "model.input_height", "model.input_width", "train.max_iters", "train.exp_config",
                 "train.trainer")


def _old_layout_problem(raw: Mapping[str, Any]) -> str | None:
    """One message for a spec in the older TAO SegFormer layout, mapping the keys it uses, instead of
    an "unknown key" line (with a misleading suggestion) for each."""
    if not any(_select_plain(raw, key) is not None for key in _OLD_SECTIONS):
        return None
    lines = []
    for old, new in _OLD_LAYOUT.items():
        if _select_plain(raw, old) is not None:
            lines.append(f"    {old} -> {new or 'no equivalent here: remove it'}")
    return ("this spec is in the older TAO SegFormer layout (TAO 4/5, mmsegmentation-based); this tool reads the "
            "current one (dataset.segment, train.optim, train.num_epochs; templates/segformer/spec_template_train.yaml is one to start from). "
            "Its keys map as:\n" + "\n".join(lines or ["    (none of the common keys found)"]))


def _check(raw: dict, action: str | None, *, warn: bool = False) -> tuple[list[str], dict | None]:
    old_layout = _old_layout_problem(raw)
    if old_layout:
        return [old_layout], None
    resolved, unset = _resolve(raw)
    if resolved is None:
        return unset, None
    # a value that is only a stand-in for an unset reference (`_resolve`) is said once, in `unset`
    schema = [p for p in schema_problems(resolved, _json_schema(action)) if not _STANDIN.search(p)]
    problems = unset + _number_problems(resolved) + schema
    if not problems:
        _reconcile_gpus(resolved, warn)
        problems = _cross_field_problems(resolved)
    return problems, resolved


_INT_LIMIT = 2**63 - 1  # what torch, NumPy and the data loaders can hold


def _number_problems(data: Any, prefix: str = "") -> list[str]:
    """NaN and infinity in any number (bounds cannot catch NaN: every comparison with it is false),
    and integers beyond 64 bits, in every field, list item included."""
    problems: list[str] = []
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for name, value in items:
        key = f"{prefix}.{name}" if prefix and isinstance(name, str) else f"{prefix}[{name}]" if prefix else str(name)
        if isinstance(value, (dict, list)):
            problems += _number_problems(value, key)
        elif isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{key} = {value} is not a finite number; give a real value (YAML .nan/.inf, or a number "
                            f"too large for a float, read as {value})")
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > _INT_LIMIT:
            problems.append(f"{key} = {value} is larger than any value this tool can use (64-bit integers, at most "
                            f"{_INT_LIMIT}); give a realistic value")
    return problems


def _materialize(raw: dict, origin: str, problems: list[str], fetch: bool = True,
                 overridden: Sequence[str] = ()) -> ExperimentConfig:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    more, resolved = _check(raw, None, warn=True)
    problems = problems + _tag_overridden(more, overridden)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(f"invalid spec {origin} ({len(problems)} problem{'s' if len(problems) > 1 else ''}):\n{lines}")
    try:
        typed = OmegaConf.merge(OmegaConf.structured(ExperimentConfig), resolved)
        cfg = OmegaConf.to_object(typed)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"invalid spec {origin}: {_omega_message(exc)}") from None
    _warn_unused(cfg)
    from segformer.remote import localize

    cfg = localize(cfg, fetch)  # s3:// (and other URL) inputs -> local copies, fetched now unless cached
    return dataclasses.replace(cfg, spec_source=SpecSource(raw=copy.deepcopy(raw), resolved=to_dict(cfg)))


def _warn_unused(cfg: ExperimentConfig) -> None:
    """Warn (once per message) about settings accepted for TAO compatibility that have no effect."""

    def walk(obj: Any, default: Any, prefix: str) -> None:
        for f, spec in iter_fields(type(obj)):
            key = f"{prefix}{f.name}"
            value, dflt = getattr(obj, f.name), getattr(default, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, dflt, key + ".")
            elif spec.unused and value != dflt:
                warnings.warn(f"{key} = {value!r} has no effect: {spec.unused}", ConfigWarning)

    walk(cfg, ExperimentConfig(), "")
    if cfg.export.format != "onnx":
        warnings.warn(f"export.format = {cfg.export.format!r} is not supported; export writes ONNX",
                      ConfigWarning)
