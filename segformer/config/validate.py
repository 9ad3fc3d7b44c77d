"""``segformer validate -e spec.yaml [--action train] [key=value ...]``: report every problem at once.

Checks the spec (after defaults, overrides and ``${...}`` interpolation) against the action's
schema translated to JSON-Schema (unknown keys, types, bounds, options), then the cross-field rules
and, with ``--action``, the values that action needs and the model files it reads (a results folder given
for one is resolved as the action resolves it; URLs are not fetched; where the dataset is not on
this machine either, a missing file is a note). Then the dataset, where the spec's
``dataset.segment.root_dir`` exists here (for no action, train, evaluate or inference): the palette
against ``num_classes`` and every file of the splits the action reads (no action: train, validation
and test; inference: the predict split's images), with their problems (unpaired files, unreadable
files, mask values outside the palette) as the action would find them; ``--no-data`` skips the
files. Exit status 0 when clean, 1 with problems.
Settings that are accepted but have no effect are printed as notes (they do not fail validation).
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Sequence

from segformer.actions import ACTIONS
from segformer.cli import add_spec_arguments, parse_with_overrides

from .fields import ConfigError, ConfigWarning
from .loader import load_config, read_spec, spec_problems

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="segformer validate", description=__doc__.splitlines()[0])
    parser.add_argument("--action", choices=list(ACTIONS), default=None,
                        help="also check the values this action needs (e.g. evaluate.checkpoint)")
    parser.add_argument("--no-data", action="store_true", help="do not read the dataset's files (the spec only)")
    add_spec_arguments(parser)  # -e as the actions take it (TAO's --experiment_spec_file too)
    args = parse_with_overrides(parser, argv)

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
                cfg = load_config(args.spec, args.overrides)
            except ConfigError as exc:  # anything the typed merge finds beyond the schema
                problems.append(str(exc))
                cfg = None
        notes = [str(w.message) for w in caught if issubclass(w.category, ConfigWarning)]
        if cfg is not None and args.action is not None:
            missing = _file_problems(cfg, args.action)
            root = cfg.dataset.segment.root_dir
            if missing and root not in (None, "", "???") and not Path(str(root)).is_dir():
                # validated away from the machine that runs it (the dataset is not here either)
                notes.extend(f"{m} here (not a problem when the action runs elsewhere)" for m in missing)
            else:
                problems.extend(missing)
        if cfg is not None and args.action == "export":  # the exporter's own rules (opset 14 and more)
            problems.extend(_export_problems(cfg.export))
        if cfg is not None and args.action == "gen_trt_engine" and not missing:  # what a build would refuse
            problems.extend(_engine_problems(cfg))
        if cfg is not None and args.action in (None, *_ACTION_SPLITS):
            problems.extend(_data_problems(cfg.dataset.segment, read_files=not args.no_data, notes=notes,
                                           keys=_ACTION_SPLITS.get(args.action)))

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


def _file_problems(cfg, action: str) -> list[str]:
    """The model files ``action`` reads exist here: each path field of the action that is set (a
    results folder resolved to its file, as the action does), and for train the weight files."""
    from segformer.errors import SegformerError
    from segformer.parents import PARENT_FIELDS, check_weight_files, resolve_parents

    try:
        if action == "train":
            check_weight_files(cfg)
        cfg = resolve_parents(cfg, action, quiet=True)
    except SegformerError as exc:
        return [str(exc)]
    problems = []
    for key in PARENT_FIELDS.get(action, ()):
        section, _, name = key.partition(".")
        value = getattr(getattr(cfg, section), name)
        if value and "://" not in str(value) and not Path(str(value)).expanduser().is_file():
            problems.append(f"{key} points to {value}, which does not exist")
    return problems


def _export_problems(export) -> list[str]:
    from segformer.deploy.onnx_export import check_export_settings
    from segformer.errors import SegformerError

    try:
        check_export_settings(int(export.batch_size), int(export.opset_version), int(export.input_channel),
                              int(export.input_height), int(export.input_width))
    except SegformerError as exc:
        return [str(exc)]
    return []


def _engine_problems(cfg) -> list[str]:
    """What gen_trt_engine would refuse that needs no TensorRT to find (`gen_trt_engine.check`)."""
    from segformer.actions.gen_trt_engine import check
    from segformer.errors import SegformerError

    if not cfg.gen_trt_engine.onnx_file:
        return []
    try:
        check(cfg)
    except SegformerError as exc:
        return [str(exc)]
    return []


# the splits an action reads (no action: all three, as AutoML reads them: it scores the winner on the test split)
_ACTION_SPLITS = {"train": ("train_split", "validation_split"), "evaluate": ("test_split",), "inference": ("predict_split",)}


def _data_problems(segment, *, read_files: bool, notes: list[str], keys: Sequence[str] | None) -> list[str]:
    """The palette against num_classes, and with `read_files` every file of the splits a training
    reads when the dataset is here (`segformer.data.segdata.check_splits`); a note when it is not."""
    from segformer.data.palette import MaskDecoder
    from segformer.data.segdata import SPLIT_KEYS, check_splits, split_counts
    from segformer.errors import DataError

    try:
        MaskDecoder(list(segment.palette), segment.label_transform, int(segment.num_classes))
        root = segment.root_dir
        if not read_files or root in (None, "", "???"):
            return []
        if not Path(root).is_dir():
            notes.append(f"the dataset was not read: dataset.segment.root_dir {root} is not a folder on this machine")
            return []
        counts = check_splits(segment, keys=keys or SPLIT_KEYS)
        what = "images" if keys == ("predict_split",) else "image/mask pairs"
        notes.append(f"dataset read: {split_counts(counts, what)} under {root}")
    except DataError as exc:
        # check_splits lists its problems under a header line: list them as validate's own
        return str(exc).split("\n  - ")[1:] or [str(exc)]
    return []


if __name__ == "__main__":
    raise SystemExit(main())
