"""``segformer validate -e spec.yaml [--action train] [key=value ...]``: report every problem at once.

Checks the spec (after defaults, overrides and ``${...}`` interpolation) against the action's
schema translated to JSON-Schema (unknown keys, types, bounds, options), then the cross-field rules
and, with ``--action``, the values that action needs. Exit status 0 when clean, 1 with problems.
Settings that are accepted but have no effect are printed as notes (they do not fail validation).
"""
from __future__ import annotations

import argparse
import sys
import warnings
from typing import Sequence

from segformer.actions import ACTIONS

from .fields import ConfigError, ConfigWarning
from .loader import load_config, read_spec, spec_problems

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="segformer validate", description=__doc__.splitlines()[0])
    parser.add_argument("-e", "--experiment_spec", "--experiment-spec", dest="spec", required=True,
                        help="spec YAML file")
    parser.add_argument("--action", choices=list(ACTIONS), default=None,
                        help="also check the values this action needs (e.g. evaluate.checkpoint)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, as for actions")
    args = parser.parse_args(argv)

    try:
        raw = read_spec(args.spec)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    problems = spec_problems(raw, args.action, args.overrides)
    notes: list[str] = []
    if not problems:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConfigWarning)
            try:
                load_config(args.spec, args.overrides)
            except ConfigError as exc:  # anything the typed merge finds beyond the schema
                problems.append(str(exc))
        notes = [str(w.message) for w in caught if issubclass(w.category, ConfigWarning)]

    where = f"{args.spec}" + (f" (action {args.action})" if args.action else "")
    for note in notes:
        print(f"note: {note}")
    if problems:
        print(f"{where}: {len(problems)} problem{'s' if len(problems) > 1 else ''}:")
        for problem in problems:
            print(f"  - {problem}")
        return 1
    print(f"{where}: OK")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
