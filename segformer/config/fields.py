"""Typed field metadata: the single place where a spec field's description, bounds, options and
AutoML flags live.

Every field of every config dataclass is declared with :func:`field_` (or :func:`section` for a
nested dataclass). The loader validates against this metadata, and the schema generator writes it
out in NVIDIA's TAO skill-schema format, so defaults, bounds and AutoML flags cannot drift apart.
The one field that is not a spec key, the loader's record of where a config came from, is declared
with :func:`loader_field` and skipped by :func:`iter_fields`.
"""
from __future__ import annotations

from segformer.errors import SegformerError

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

__all__ = ["ConfigError", "ConfigWarning", "FieldSpec", "field_", "section", "loader_field", "spec_of"]

_META_KEY = "segformer"
_LOADER_KEY = "segformer.loader"


class ConfigError(SegformerError, ValueError):
    """A spec problem a user can fix: the message names the key, the value and the rule.

    A ``SegformerError`` (the CLI prints it without a traceback) and a ``ValueError``.
    """


class ConfigWarning(UserWarning):
    """A spec setting that is accepted for TAO compatibility but has no effect here."""


@dataclass(frozen=True)
class FieldSpec:
    """Metadata of one spec field (see :func:`field_` for the meaning of each attribute)."""

    description: str
    title: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    math_cond: str | None = None
    options: tuple[Any, ...] | None = None
    option_weights: tuple[float, ...] | None = None
    automl: bool | None = None
    automl_range: tuple[float, float] | None = None
    log: bool = False
    depends_on: str | None = None
    parent_param: str | None = None
    popular: bool = False
    placeholder: str | None = None
    unused: str | None = None
    pattern: str | None = None


def field_(
    default: Any = dataclasses.MISSING,
    *,
    description: str,
    title: str | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    math_cond: str | None = None,
    options: Sequence[Any] | None = None,
    option_weights: Sequence[float] | None = None,
    automl: bool | None = None,
    automl_range: tuple[float, float] | None = None,
    log: bool = False,
    depends_on: str | None = None,
    parent_param: str | None = None,
    popular: bool = False,
    placeholder: str | None = None,
    unused: str | None = None,
    pattern: str | None = None,
) -> Any:
    """Declare a spec field with its metadata.

    Args:
        default: the default; lists and dicts are copied per instance (no shared mutable defaults).
        description: what the field does, including any choice we made where TAO's documents
            disagree. Written to the schema.
        minimum, maximum: hard validity bounds (inclusive). ``math_cond`` (TAO's name) adds a
            strict comparison such as ``">0"``, so ``minimum=0, maximum=1, math_cond=">0"`` reads
            "must be in (0, 1]".
        options: the allowed values (TAO ``enum``); ``option_weights`` their AutoML sampling weights.
        automl: True: searched by default (TAO ``automl_default_parameters``); False: never
            searched (``automl_disabled_parameters``); None: not searched unless a user asks.
        automl_range: the AutoML search range, narrower than the validity bounds. Written as
            ``valid_min``/``valid_max`` -- the names TAO's AutoML uses for search ranges in
            ``custom_param_ranges`` -- while ``minimum``/``maximum`` stay the validity bounds, as in
            NVIDIA's schemas (so NVIDIA's tooling accepts every value our loader accepts).
        log: sample on a log scale (written as ``"log": true``; NVIDIA's schema lacks this flag).
        depends_on: dotted key of a bool that must be true for this field to matter (AutoML only
            samples it then).
        parent_param: TAO's parent parameter for AutoML (a field whose value bounds this one).
        popular: marked popular in the schema (shown first by TAO front ends).
        placeholder: the schema/template default for an unset value an action needs (``"???"``);
            the Python default stays None and ``require()`` names the key when it is missing.
        unused: why the field has no effect here; setting it to a non-default value warns.
        pattern: a regular expression the string value must match.
    """
    if unused is not None and automl:
        raise TypeError(f"a field with no effect cannot be AutoML-enabled ({description!r})")
    spec = FieldSpec(
        description=description,
        title=title,
        minimum=minimum,
        maximum=maximum,
        math_cond=math_cond,
        options=tuple(options) if options is not None else None,
        option_weights=tuple(option_weights) if option_weights is not None else None,
        automl=automl,
        automl_range=automl_range,
        log=log,
        depends_on=depends_on,
        parent_param=parent_param,
        popular=popular,
        placeholder=placeholder,
        unused=unused,
        pattern=pattern,
    )
    metadata = {_META_KEY: spec}
    if isinstance(default, (list, dict)):
        frozen = copy.deepcopy(default)
        return dataclasses.field(default_factory=lambda: copy.deepcopy(frozen), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def section(factory: Callable[[], Any], description: str, *, title: str | None = None) -> Any:
    """Declare a nested config section (a dataclass); sections are never AutoML-enabled themselves."""
    spec = FieldSpec(description=description, title=title, automl=False)
    return dataclasses.field(default_factory=factory, metadata={_META_KEY: spec})


def loader_field(description: str) -> Any:
    """Declare a field that is not a spec key but the loader's record (default None).

    It is in no schema or template, not in ``to_dict``/``dump_config``, not compared by ``==`` and
    not shown by ``repr``; :func:`iter_fields` skips it.
    """
    return dataclasses.field(default=None, compare=False, repr=False, metadata={_LOADER_KEY: description})


def spec_of(f: dataclasses.Field) -> FieldSpec:
    """The metadata of a dataclass field declared with :func:`field_` or :func:`section`."""
    try:
        return f.metadata[_META_KEY]
    except KeyError:
        raise TypeError(f"field {f.name!r} was not declared with field_()/section()") from None


def iter_fields(cls: type) -> Iterator[tuple[dataclasses.Field, FieldSpec]]:
    """(field, metadata) pairs of the spec keys of a config dataclass, in declaration order
    (fields declared with :func:`loader_field` are not spec keys and are skipped)."""
    for f in dataclasses.fields(cls):
        if _LOADER_KEY not in f.metadata:
            yield f, spec_of(f)
