"""The AutoML search space, read from a TAO ``train.schema.json``: which parameters, and how they are sampled.

Each parameter's ``source`` records the rules that shaped its range; ``Space.describe()`` shows them.
How one schema field becomes a `Param` (types, disabled parameters, math_cond) is
`automl.schema_fields`; where its range comes from is `automl.ranges`.

Selection
    The default set is the schema's ``automl_default_parameters``. ``only=`` replaces it, ``include=``
    adds to it, ``exclude=`` removes from it. Unknown names are an error that names the closest one.
    A disabled parameter is searched only with ``override_disabled`` (`automl.schema_fields`).

Relations (math_cond ``> depends_on`` and the like)
    The range is narrowed per trial (Optuna allows dynamic int/float ranges); categorical choices are
    clamped to the nearest allowed choice; when no value of the range satisfies the relation the
    nearest bound is used and a ``SpaceWarning`` says so. ``/ N`` with ``depends_on`` is derived,
    never sampled.

Order
    Parameters are sampled in topological order of ``depends_on`` (parents first; ``parent_param``
    parameters first among equals; otherwise schema order). A cycle is an error. A ``depends_on``
    parameter that is not searched takes its value from ``spec`` (when given) or its schema default.

option_weights
    Categorical sampling weights. Optuna has no weighted categorical, so a weighted parameter is
    sampled as ``u = trial.suggest_float(name, 0, 1)`` mapped through the cumulative weights; the
    trial stores ``u``, the returned config holds the option. ``encode`` turns the baseline option
    into the middle of its interval (for ``points_to_evaluate``).
"""

from __future__ import annotations

import difflib
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

from automl import schema_fields
from automl.params import Param, SpaceError, SpaceWarning
from segformer.text import fmt

if TYPE_CHECKING:  # optuna is imported lazily: building and describing a space needs no optuna
    import optuna

__all__ = ["Param", "Space", "SpaceError", "SpaceWarning", "build_space"]

GRID_MAX_INT_VALUES = 32  # an int range with more values than this is not enumerated by grid search


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
        default where the spec lacks a key. The first trial runs this configuration, exactly as
        `sample` returns it for the enqueued point (`encode`): derived values computed from their
        parent, options clamped to what a relation allows."""
        values: dict[str, Any] = {}
        for p in self.params:
            found, value = _lookup(spec_defaults, p.name)
            value = value if found else p.default
            if p.derived:
                value = self._derived_value(p, values)
            elif p.choices:
                value = self._clamp_choice(p, value, values)
            values[p.name] = value
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

    def infinite_params(self, max_int_values: int = GRID_MAX_INT_VALUES) -> list[str]:
        """The parameters a grid cannot enumerate: floats, and int ranges of more than `max_int_values`."""
        return [p.name for p in self.params if p.grid_size(max_int_values) is None]

    def grid(self, max_points: int = 10_000, max_int_values: int = GRID_MAX_INT_VALUES) -> list[dict[str, Any]] | None:
        """Every combination, or None when the space is infinite (see `infinite_params`). Relations
        filter combinations; derived values are computed. More than ``max_points`` combinations is an
        error that names the count."""
        if self.infinite_params(max_int_values):
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
                    f"(--only, or automl_remove_hyperparameters in --settings) or use a sampling algorithm instead of grid"
                )
            points = grown
        return points

    # -- text --------------------------------------------------------------------------------
    def describe(self, baseline: Mapping[str, Any] | None = None) -> str:
        """A text table for ``--dry-run``: name, type, range/options, scale, the baseline's value (the
        spec's own, what the first trial trains) or else the schema default, source."""
        header = ("name", "type", "range/options", "scale", "baseline" if baseline else "default", "source")
        rows = [
            (p.name, p.kind if p.kind != "int" or not p.choices else "int (options)", p.range_text(),
             "log" if p.log else ("weighted" if p.weights else "linear" if p.kind in {"int", "float"} else "-"),
             fmt(baseline[p.name] if baseline and p.name in baseline else p.default), p.source)
            for p in self.params
        ]
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header) - 1)]
        lines = []
        for row in [header, *rows]:
            cells = [str(c).ljust(w) for c, w in zip(row, widths)] + [str(row[-1])]
            lines.append("  ".join(cells).rstrip())
        lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * 6)
        for name, value in self.fixed.items():
            lines.append(f"(fixed, not searched) {name} = {fmt(value)}")
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
    allow_disabled: Sequence[str] = (),
) -> Space:
    """Build the search space from a train schema (dict or path; NVIDIA's Infinity accepted).

    ``only`` replaces ``automl_default_parameters``; ``include`` adds and ``exclude`` removes names;
    ``param_ranges`` are TAO ``custom_param_ranges``; ``override_disabled`` is TAO's
    ``override_automl_disabled_params`` (``allow_disabled``: the same for the names given, the
    deploy-aware search's structural keys); ``spec`` supplies values of not-searched ``depends_on``
    parents (else their schema defaults). Kept whole: the selection rules (defaults, only, include,
    exclude, custom ranges, disabled parameters) apply in this order, and each error they raise
    names its rule, so they read best in sequence.
    """
    if not isinstance(schema, Mapping):
        from automl.skill import read_schema

        schema = read_schema(schema)
    leaves = schema_fields.walk(schema)
    defaults = schema_fields.default_parameters(schema, leaves)
    disabled = schema_fields.all_lists(schema, "automl_disabled_parameters")
    searchable_names = [n for n, leaf in leaves.items() if not ("properties" in leaf.node)]

    def check_known(name: str, role: str) -> schema_fields.Leaf:
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
            off = (" and, as the schema disables it, override_automl_disabled_params: true"
                   if name in disabled and not override_disabled else "")
            raise SpaceError(
                f"custom_param_ranges has {name!r}, which is not searched; add it with automl_add_hyperparameters "
                f"(or --only){off}, or drop its range"
            )

    params: list[Param] = []
    notes: list[str] = []
    for name in chosen:
        leaf = check_known(name, "searched")
        status = schema_fields.status(leaf, set(defaults), disabled)
        if status.startswith("disabled") and not (override_disabled or name in allow_disabled):
            if status == "disabled":
                why = f"{name} is disabled for AutoML by the schema (automl_enabled: false or listed in automl_disabled_parameters)"
            else:
                why = (f"{name} is {status} (automl_disabled_parameters lists {status[len('disabled by '):]!r} "
                       f"and {name} is not explicitly enabled)")
            raise SpaceError(f"{why}; it cannot be added unless override_disabled is set (TAO: override_automl_disabled_params: true)")
        if status.startswith("disabled"):
            why = "override_disabled" if override_disabled else "a structure searched on request"
            notes.append(f"{name} searched although {status} ({why})")
        params.append(schema_fields.make_param(leaf, (param_ranges or {}).get(name)))

    searched = {p.name for p in params}
    fixed: dict[str, Any] = {}
    for p in params:
        if p.depends_on and p.depends_on not in searched:
            if p.depends_on not in leaves:
                raise SpaceError(f"{p.name}: depends_on {p.depends_on!r} is not in the schema{_closest(p.depends_on, searchable_names)}")
            found, value = _lookup(spec, p.depends_on)
            fixed[p.depends_on] = value if found else leaves[p.depends_on].node.get("default")
    return Space(params=tuple(_order(params)), fixed=fixed, notes=tuple(notes))