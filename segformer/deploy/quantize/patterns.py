"""TAO Quant's ``layers`` and ``skip_names``: which modules (or ONNX nodes) get quantized.

``layers`` is a list of ``{module_name: <pattern>, weights: {dtype: ...}, activations: {dtype: ...}}``;
an empty list means "every supported module, int8". ``skip_names`` lists patterns to exclude.
Patterns use fnmatch wildcards and are tried against the qualified name first
(``backbone.stages.0.blocks.1.attn.q``), then against the class name (``Linear``, ``Conv2d``),
as TAO Quant documents. ONNX patterns match node names and op types, and also the module path
recovered from the node's weight initializer (``head.linear_fuse.weight`` -> ``head.linear_fuse``),
so one module-name pattern works for the PyTorch and ONNX backends alike.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from segformer.errors import SegformerError, SpecError

__all__ = ["LayerRule", "parse_layer_rules", "matches", "select_names", "nothing_to_quantize", "SUPPORTED_DTYPES"]

SUPPORTED_DTYPES = ("int8", "native")  # "native": leave this part in floating point


@dataclass(frozen=True)
class LayerRule:
    module_name: str
    weights_dtype: str = "int8"
    activations_dtype: str | None = "int8"


def _dtype(entry: Mapping[str, Any], key: str, default: str | None, index: int) -> str | None:
    value = entry.get(key)
    if value is None:
        return default
    dtype = value.get("dtype") if isinstance(value, Mapping) else value
    dtype = str(dtype).lower() if dtype is not None else default
    if dtype is not None and dtype not in SUPPORTED_DTYPES:
        raise SpecError(
            f"quantize.layers[{index}].{key}.dtype is {dtype!r}; this implementation supports "
            f"{SUPPORTED_DTYPES} (fp8/int4 need a GPU-only backend)"
        )
    return dtype


def parse_layer_rules(layers: Sequence[Any] | None) -> list[LayerRule]:
    """Validate ``quantize.layers`` entries (dicts or objects with the same attributes)."""
    rules = []
    for index, entry in enumerate(layers or ()):
        if not isinstance(entry, Mapping):
            entry = {k: getattr(entry, k) for k in ("module_name", "weights", "activations") if hasattr(entry, k)}
        name = entry.get("module_name")
        if not name or not isinstance(name, str):
            raise SpecError(f"quantize.layers[{index}] needs a module_name pattern (e.g. 'backbone.*'), got {entry!r}")
        unknown = set(entry) - {"module_name", "weights", "activations"}
        if unknown:
            raise SpecError(f"quantize.layers[{index}] has unknown keys {sorted(unknown)}; allowed: module_name, weights, activations")
        rules.append(
            LayerRule(name, _dtype(entry, "weights", "int8", index), _dtype(entry, "activations", "int8", index))
        )
    return rules


def matches(pattern: str, *names: str | None) -> bool:
    """fnmatch against each non-empty name in order (qualified name, then class/op type)."""
    return any(name and fnmatch.fnmatchcase(name, pattern) for name in names)


def select_names(
    candidates: Iterable[tuple[str, str]],
    rules: Sequence[LayerRule],
    skip_names: Sequence[str],
    *,
    aliases: Mapping[str, Sequence[str]] | None = None,
) -> list[str]:
    """Names of the ``(name, kind)`` candidates to quantize, in input order.

    A candidate is kept when no rule is given or a rule with a non-"native" weights dtype matches
    it (the first matching rule wins), and no ``skip_names`` pattern matches. ``aliases`` adds
    further names per candidate to match against (the module path of an ONNX node).
    """
    chosen = []
    aliases = aliases or {}
    for name, kind in candidates:
        names = (name, *aliases.get(name, ()), kind)
        if any(matches(p, *names) for p in skip_names):
            continue
        if rules:
            rule = next((r for r in rules if matches(r.module_name, *names)), None)
            if rule is None or rule.weights_dtype == "native":
                continue
        chosen.append(name)
    return chosen


def nothing_to_quantize(rules: Sequence[LayerRule], skip_names: Sequence[str], kinds: str, detail: str = "") -> SegformerError:
    """The error for a selection that chose no ``kinds``: the spec's layers/skip_names when they are
    set (a SpecError), else the model itself has none (not a spec problem)."""
    if rules or skip_names:
        return SpecError(f"quantize.layers/skip_names exclude every {kinds}; nothing to quantize{detail}")
    return SegformerError(f"the model has no {kinds} to quantize{detail}; quantize a SegFormer checkpoint of "
                          "segformer train, or the ONNX model segformer export wrote from one")
