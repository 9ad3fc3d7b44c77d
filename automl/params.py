"""One searched parameter (`Param`) and the errors of the search space.

A `Param` is what the schema readers (`automl.schema_fields`, `automl.ranges`) make of one field of a
TAO ``train.schema.json``, and what `automl.space.Space` samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from segformer.text import fmt

ParamKind = Literal["bool", "int", "float", "categorical"]


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


    def range_text(self) -> str:
        if self.derived:
            return f"{self.depends_on} // {self.divisor}"
        if self.choices:
            text = ", ".join(fmt(c) for c in self.choices)
            if self.weights:
                text += " (weights " + ", ".join(fmt(w) for w in self.weights) + ")"
            return "{" + text + "}"
        text = f"[{fmt(self.low)}, {fmt(self.high)}]"
        if self.step and self.step != 1:
            text += f" step {self.step}"
        return text

    def grid_size(self, max_int_values: int) -> int | None:
        """How many values a grid takes of this parameter (None: a float, or an int range longer than
        `max_int_values`; derived values count 1)."""
        if self.derived:
            return 1
        if self.choices:
            return len(self.choices)
        if self.kind == "float":
            return None
        count = (int(self.high) - int(self.low)) // (self.step or 1) + 1
        return count if count <= max_int_values else None

