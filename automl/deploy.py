"""Deploy-aware search: structural parameters, latency measured on the target, a hard latency limit.

A deployer asks which model is the most accurate that runs in X ms on the target. So, on request:

Structure
    ``--backbones``, ``--img-sizes``, ``--embed-dims`` (spec keys ``model.backbone.type``,
    ``dataset.segment.img_size``, ``model.decode_head.decoder_params.embed_dim``) and
    ``--precisions`` (``deploy.precision``: fp32 or int8 on the CPU; not a spec key) become
    options (`SearchConfig.structure`). The precision is not sampled: it changes nothing in
    training, so each trial deploys at the most accurate allowed precision within the latency
    limit (`choose`), and the promotion quantizes when that is int8. TAO's own
    route gives the same: ``automl_hyperparameters`` + ``override_automl_disabled_params`` +
    ``custom_param_ranges`` with ``valid_options`` (``deploy.precision`` included). The schema
    disables these keys for AutoML; naming them here is the explicit request that enables them. The
    spec's own value joins the options (the baseline is the spec), and each backbone starts from
    its own weights: ``--pretrained mit_b1=/path`` (settings: ``pretrained_backbones``); a
    searched backbone with no weights while the spec names some for another backbone is an error
    before any trial (it would load the wrong weights).

Latency (`segformer.deploy.latency`)
    Measured for each distinct architecture and precision (cached in ``latency.json`` in the
    results folder; the learning rate does not change it) on the deployment runtime: ONNX Runtime
    on the CPU by default, batch 1, the median of warm runs, the thread count stated. The driver
    measures every architecture the options allow before the first trial (up to
    `PREMEASURE_LIMIT`), on a machine nothing else runs on yet, and stops with the fastest named
    when none meets the limit; others are measured by the first trial that needs them. Every trial records latency_ms, p90, model size, parameters and GFLOPs
    in the state, in its MLflow child run's metrics and in ``automl status``.

The latency limit (``--max-latency-ms``)
    A trial slower than the limit is infeasible: it reports its latency and the worst metric value
    at epoch 0 and trains nothing (no epoch of the budget), so the sampler learns that region is
    bad (TPE and BOHB rank by value; the equivalent of Optuna's constraints for every algorithm
    here), it is recorded with its latency and never ranked, re-checked nor promoted. The baseline
    (the spec's own model) trains whatever its latency: it is the reference the final evaluation
    compares with (what the limit costs); over the limit it is never promoted, and the re-check's
    reserve goes to the search (no leader is compared with a model that cannot be deployed).
    ``--max-latency-ratio R`` sets the limit to R x the spec's own model's latency at fp32. When no trial
    is feasible the summary says so and nothing is promoted. Infeasible trials spend no epochs, so
    a budgeted search ends after three times as many of them as the trainings its budget affords.
"""

from __future__ import annotations

import itertools
import statistics
import warnings
from typing import Any, Callable, Mapping

from automl.layout import Layout
from automl.options import SearchConfig, SearchError

PRECISION_KEY = "deploy.precision"
ACCURACY_ORDER = ("fp32", "fp16", "int8")  # deploy precisions, the most accurate first
BITS = {"fp32": 32, "fp16": 16, "int8": 8}  # a trial's chosen precision, as the number its results carry
PREMEASURE_LIMIT = 24  # architectures measured up front by the driver; beyond that, by the trials
LATENCY_FILE = "latency.json"
# What a trial's latency record puts in its results (and the ledger, MLflow and status show).
LATENCY_METRICS = ("latency_ms", "latency_p90_ms", "model_mb", "params_m", "gflops", "precision_bits")
INFEASIBLE = "infeasible"  # result key of a trial over the latency limit


def fold_tao_route(s: SearchConfig) -> SearchConfig:
    """TAO's route to a precision search (``deploy.precision`` in automl_hyperparameters and
    custom_param_ranges valid_options) folded into `SearchConfig.structure`, which build_space never
    sees (it is not a spec key)."""
    import dataclasses

    named = PRECISION_KEY in (s.only or ()) or PRECISION_KEY in s.include
    ranges = dict(s.param_ranges)
    custom = ranges.pop(PRECISION_KEY, None)
    if not named and custom is None:
        return s
    options = (custom or {}).get("valid_options") if isinstance(custom, Mapping) else None
    if not options:
        raise SearchError(f"{PRECISION_KEY} is searched over options: give custom_param_ranges: {{{PRECISION_KEY}: "
                          f"{{valid_options: [fp32, int8]}}}} (or --precisions fp32,int8)")
    structure = {**s.structure, PRECISION_KEY: list(options)}
    only = None if s.only is None else tuple(k for k in s.only if k != PRECISION_KEY)
    return dataclasses.replace(s, structure=structure, param_ranges=ranges, only=only,
                               include=tuple(k for k in s.include if k != PRECISION_KEY))


def space_arguments(s: SearchConfig, spec_values: Mapping[str, Any]) -> dict[str, Any]:
    """Extra `build_space` arguments for the structural parameters: searched (include), over their
    options with the spec's own value first (valid_options), enabled although the schema disables
    them (allow_disabled). The spec's own value also joins any other parameter's custom_param_ranges
    valid_options, with a note: the first trial trains the spec as it is (TAO, which trains no
    baseline, takes options without it)."""
    from automl.params import SpaceWarning
    from automl.space import _lookup

    keys = [k for k in s.structure if k != PRECISION_KEY]
    ranges = dict(s.param_ranges)
    for key in keys:
        found, own = _lookup(spec_values, key)
        options = list(s.structure[key])
        if found and own not in options:
            options = [own, *options]
        ranges[key] = {**ranges.get(key, {}), "valid_options": options}
    for key, custom in s.param_ranges.items():
        options = custom.get("valid_options") if isinstance(custom, Mapping) and key not in keys and s.baseline_first \
            else None
        found, own = _lookup(spec_values, key)
        # with option_weights, one per option, the refusal (`Space.encode`) says what to do
        if isinstance(options, (list, tuple)) and options and found and own not in options \
                and custom.get("option_weights") is None:
            ranges[key] = {**custom, "valid_options": [own, *options]}
            warnings.warn(f"{key}: the spec's {own!r} joins custom_param_ranges valid_options {list(options)}: the "
                          "first trial trains your spec as it is, the baseline the others are compared with",
                          SpaceWarning, stacklevel=2)
    include = tuple(s.include) + tuple(k for k in keys if k not in s.include and (s.only is None or k not in s.only))
    return {"include": include, "param_ranges": ranges or None, "allow_disabled": tuple(keys)}


def precisions(s: SearchConfig) -> list[str]:
    """The deploy precisions allowed, the most accurate first (fp32 when none is given)."""
    allowed = s.structure.get(PRECISION_KEY) or ["fp32"]
    return [p for p in ACCURACY_ORDER if p in allowed]


def choose(records: Mapping[str, Mapping[str, Any]], limit: float | None) -> tuple[str, Mapping[str, Any], bool]:
    """The deploy precision of one architecture: the most accurate of those within the limit (all,
    without one); none within it: the fastest, infeasible. So a precision slower on the target is
    never chosen over a faster one that is also more accurate."""
    ordered = [p for p in ACCURACY_ORDER if p in records]
    fitting = [p for p in ordered if limit is None or records[p]["latency_ms"] <= limit]
    if fitting:
        return fitting[0], records[fitting[0]], True
    fastest = min(ordered, key=lambda p: records[p]["latency_ms"])
    return fastest, records[fastest], False


def check_pretrained(s: SearchConfig, spec_values: Mapping[str, Any]) -> None:
    """Every searched backbone starts from its own weights, or none does."""
    from pathlib import Path

    from automl.space import _lookup

    backbones = s.structure.get("model.backbone.type")
    from segformer import remote

    for backbone, path in s.pretrained_backbones.items():
        if remote.is_url(path):  # fetched (and checked) now, so no trial starts from a wrong URL
            remote.fetch(str(path), f"pretrained weights of {backbone}", "file")
        elif not Path(path).expanduser().is_file():
            raise SearchError(f"pretrained weights of {backbone}: {path} is not a file (--pretrained / pretrained_backbones)")
    if not backbones:
        return
    _, own = _lookup(spec_values, "model.backbone.type")
    _, own_path = _lookup(spec_values, "model.backbone.pretrained_backbone_path")
    _, whole = _lookup(spec_values, "train.pretrained_model_path")
    others = [b for b in backbones if b != own]
    if whole and others:  # a whole model of the spec's backbone: every other backbone's trial would refuse it
        raise SearchError(f"the spec starts every trial from train.pretrained_model_path {whole}, a whole {own} model, "
                          f"which cannot start {', '.join(others)}: clear train.pretrained_model_path (each backbone "
                          f"then starts from --pretrained BACKBONE=PATH, or from scratch), or search {own} only")
    missing = [b for b in backbones if b not in s.pretrained_backbones and b != own]
    if missing and own_path:
        raise SearchError(f"the spec starts {own} from {own_path}, and the search would start {', '.join(missing)} from "
                          f"no weights of its own: give each with --pretrained BACKBONE=PATH (settings: pretrained_backbones), "
                          f"or clear model.backbone.pretrained_backbone_path to train every backbone from scratch")


def trial_overrides(params: Mapping[str, Any], s: SearchConfig) -> dict[str, Any]:
    """A trial's sampled values as spec overrides: the precision left out; with a searched backbone,
    its own weights and the decoder inputs it provides (the spec's in_channels are its own
    backbone's; SegFormer's decoder reads all four stages)."""
    out = {k: v for k, v in params.items() if k != PRECISION_KEY}
    if "dataset.segment.img_size" in out:  # a searched input size is the size the model deploys (and is timed) at
        out["export.input_height"] = out["export.input_width"] = int(out["dataset.segment.img_size"])
    backbone = out.get("model.backbone.type")
    if backbone is not None and backbone in s.pretrained_backbones:
        out["model.backbone.pretrained_backbone_path"] = s.pretrained_backbones[backbone]
    if backbone is not None:
        from segformer.model import decoder_inputs

        out.update({f"model.decode_head.{key}": value for key, value in decoder_inputs(backbone).items()})
    return out


def spec_overrides(state: Any, params: Mapping[str, Any]) -> dict[str, Any]:
    """`trial_overrides` for a trial of a saved search (`automl.state.SearchState`): promotion and
    the final evaluation configure the spec exactly as the trial did."""
    from automl.options import SearchOptions

    try:
        search = SearchOptions.from_dict(state.settings).search
    except (TypeError, ValueError):
        search = SearchConfig()
    return trial_overrides(params, search)


def target(s: SearchConfig) -> Any:
    from segformer.deploy.latency import Target

    return Target(runtime=s.latency_runtime, batch=s.latency_batch, threads=s.latency_threads)


def cache(results_dir: str, s: SearchConfig) -> Any:
    from segformer.deploy.latency import LatencyCache

    return LatencyCache(Layout.of(results_dir).root / LATENCY_FILE, target(s))


def trial_latency(cfg: Any, results_dir: str, s: SearchConfig) -> tuple[dict[str, float], bool]:
    """A trial's latency metrics (its architecture, `cfg`, at the precision `choose` picks;
    measured if new) and whether it meets the limit."""
    measured = cache(results_dir, s)
    precision, record, feasible = choose({p: measured.lookup(cfg, p) for p in precisions(s)}, s.max_latency_ms)
    return {**{k: float(record[k]) for k in LATENCY_METRICS if k in record}, "precision_bits": float(BITS[precision])}, feasible


def precision_of(latency: Mapping[str, Any] | None) -> str | None:
    """The deploy precision a trial's latency record was measured at."""
    bits = (latency or {}).get("precision_bits")
    return next((p for p, b in BITS.items() if b == bits), None)


def worst_value(mode: str) -> float:
    """What an infeasible trial reports: below (above) anything a trained one reports. Samplers rank
    by value (TPE's split, BOHB's densities), so its size does not matter, only its place."""
    return -1e9 if mode == "max" else 1e9


def premeasure(opts: Any, space: Any, baseline: Mapping[str, Any] | None, echo: Callable[[str], None]) -> Any:
    """Measure every architecture the structural options allow (up to `PREMEASURE_LIMIT`) before
    any trial runs, and print the table. Returns the options with a relative limit
    (``--max-latency-ratio``) resolved into milliseconds: that share of the spec's own model's
    latency at fp32."""
    from automl.trial import base_config
    from segformer.config import apply_overrides
    from segformer.deploy.latency import STRUCTURE_KEYS

    s = opts.search
    measured = cache(opts.results_dir, s)
    root = Layout.of(opts.results_dir).root

    def config(values: Mapping[str, Any], precision: str) -> Any:
        try:
            return apply_overrides(base_config(opts.spec, opts.overrides, root), trial_overrides(values, s))
        except (ValueError, RuntimeError) as err:
            raise SearchError(f"latency of {dict(values) or 'the spec'} at {precision} cannot be measured: {err}") from None

    keys = [p.name for p in space.params if p.name in STRUCTURE_KEYS]
    options = [space[k].choices or (space[k].default,) for k in keys]
    combos = [dict(zip(keys, values)) for values in itertools.product(*options)] if keys else [{}]
    combos = [{**combo, PRECISION_KEY: precision} for combo in combos for precision in precisions(s)]
    complete = len(combos) <= PREMEASURE_LIMIT
    if not complete:
        echo(f"automl: latency: {len(combos)} architectures; the trials measure each when they first need it")
        combos = [{**(baseline or {}), PRECISION_KEY: precision} for precision in precisions(s)]
    wanted = [({**(baseline or {}), **combo}, combo[PRECISION_KEY]) for combo in combos]
    if s.max_latency_ratio is not None:
        wanted.append((dict(baseline or {}), "fp32"))  # the spec's own model, which the limit is a share of
    try:  # measured together, their passes alternating (`measure_many`): they compare fairly
        records = measured.lookup_many([(config(values, precision), precision) for values, precision in wanted])
    except (ValueError, RuntimeError) as err:
        raise SearchError(f"latency cannot be measured: {err}") from None
    reference = records.pop() if s.max_latency_ratio is not None else None
    if reference is not None:
        own, ratio = reference["latency_ms"], s.max_latency_ratio
        opts = opts.with_values(max_latency_ms=round(ratio * own, 3), max_latency_ratio=None)
        s = opts.search
        echo(f"automl: latency limit {s.max_latency_ms:g} ms: {ratio:g} x the spec's own model ({own:.2f} ms at fp32)")
    if s.max_latency_ms is None and len(precisions(s)) > 1:
        echo(f"automl: latency: --precisions {','.join(precisions(s))} without a limit: every model deploys at "
             f"{precisions(s)[0]}, the most accurate; a lower precision is chosen only for a model over --max-latency-ms "
             f"or --max-latency-ratio")
    echo(f"automl: latency on {target(s).describe()}{f', limit {s.max_latency_ms:g} ms' if s.max_latency_ms else ''}:")
    for record in records:
        echo("  " + describe(record, s.max_latency_ms))
    warning = noisy_timing(records, reference)
    if warning:
        echo(f"automl: latency: {warning}")
    if complete and s.max_latency_ms is not None and all(r["latency_ms"] > s.max_latency_ms for r in records):
        fastest = min(records, key=lambda r: r["latency_ms"])
        raise SearchError(f"no architecture the search may try meets --max-latency-ms {s.max_latency_ms:g}: the fastest, "
                          f"{describe(fastest)}; raise the limit, or offer smaller structures (--backbones, --img-sizes, "
                          f"--embed-dims, --precisions int8)")
    return opts


NOISY = 1.5  # an architecture whose median pass is this much slower than its fastest was timed on a busy machine


def noisy_timing(records: list[Mapping[str, Any]], reference: Mapping[str, Any] | None = None) -> str | None:
    """A warning when some architecture was slow in most of its passes (its median pass more than
    `NOISY` times its fastest, which is its latency): something else ran on the machine meanwhile,
    and its fastest pass may have been disturbed too. Seen on a shared 2-core VM: the spec's own
    model at 11.3, 5.8 and 10.7 ms, where a quiet minute timed it at 5.0. None when the passes agree."""
    def spread(record: Mapping[str, Any]) -> float:
        passes = [p for p in record.get("passes_ms") or [] if p > 0]
        return statistics.median(passes) / min(passes) if len(passes) > 1 else 1.0

    noisy = [r for r in records if spread(r) > NOISY]
    if reference is not None and spread(reference) > NOISY:
        passes = ", ".join(f"{p:.2f}" for p in reference["passes_ms"])
        return (f"the spec's own model, which the limit is a share of, took {passes} ms in its passes: something else "
                f"ran on this machine while it was timed, so the limit is uncertain ({len(noisy)} of {len(records)} "
                "architectures were timed as unevenly); time on a quiet machine, or give --max-latency-ms")
    if not noisy:
        return None
    worst = max(noisy, key=spread)
    return (f"{len(noisy)} of {len(records)} architectures were slow in most of their passes (up to {spread(worst):.1f}x "
            f"their fastest: {_label(worst)}): something else ran on this machine while they were timed, "
            "so their latencies are uncertain; time on a quiet machine")


def plan_line(s: SearchConfig) -> str:
    """What --dry-run says about latency."""
    limit = (f"limit {s.max_latency_ms:g} ms" if s.max_latency_ms is not None else
             f"limit {s.max_latency_ratio:g} x the spec's own latency" if s.max_latency_ratio is not None else "no limit")
    return (f"latency: measured on {target(s).describe()}; {limit}; deploy precision per architecture: the most accurate "
            f"of {', '.join(precisions(s))} within the limit")


def _label(rec: Mapping[str, Any]) -> str:
    arch = rec["architecture"]
    return f"{arch['backbone']} {arch['input'][1]}x{arch['input'][2]} embed {arch['embed_dim']} {arch['precision']}"


def describe(rec: Mapping[str, Any], limit: float | None = None) -> str:
    over = "" if limit is None else ("  over the limit" if rec["latency_ms"] > limit else "  ok")
    return (f"{_label(rec)}: "
            f"{rec['latency_ms']:.2f} ms (p90 {rec['latency_p90_ms']:.2f}), {rec['params_m']:.2f} M params, "
            f"{rec['gflops']:.2f} GFLOPs, {rec['model_mb']:.1f} MB{over}")
