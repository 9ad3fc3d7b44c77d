"""The final evaluation: the promoted model and the baseline on the test split, side by side.

The search ranked on the validation split (``dataset.segment.validation_split``); the test split
(``dataset.segment.test_split``) took no part in any decision, so its mIoU is the honest answer to
"how much better is the promoted model than my spec". As NVIDIA's AutoML 7.1 does, it is computed
once at the end, with the plain `segformer evaluate` action on each model's best checkpoint. Where
re-checks ran (`automl.budget`), every seed of both configurations is evaluated and the means are
reported too. When the test split is the validation split (TAO's default ``test_split: val``) or
does not exist, the final evaluation says so instead of scoring a split the search ranked on.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from automl.layout import Layout
from automl.state import SearchState, TrialRecord


def _split_folder(values: dict[str, Any], split: str) -> Path:
    root = Path(str(values["dataset"]["segment"]["root_dir"]))
    return root / "images" / split


def skip_reason(state: SearchState) -> str | None:
    """Why no final evaluation can run, or None."""
    from automl.trial import base_config
    from segformer.config import to_dict

    values = to_dict(base_config(state.spec, state.overrides, state.results_dir))
    segment = values["dataset"]["segment"]
    test, val = str(segment.get("test_split") or ""), str(segment.get("validation_split") or "")
    if not test or test == val:
        return (f"dataset.segment.test_split is the validation split ({val!r}) the search ranked on; "
                f"give a held-out split (test_split: test) for an untouched final evaluation")
    if not _split_folder(values, test).is_dir():
        return f"the test split {test!r} has no folder ({_split_folder(values, test)})"
    return None


def evaluate_trial(state: SearchState, record: TrialRecord, out_dir: Path) -> float:
    """Test-split mIoU of a trial's best checkpoint (the plain evaluate action)."""
    from automl.promote import best_checkpoint
    from automl.trial import base_config
    from segformer.actions import evaluate
    from segformer.config import apply_overrides

    checkpoint = best_checkpoint(state, record)
    if checkpoint is None:
        raise FileNotFoundError(f"no checkpoint of {record.name}")
    from automl.deploy import spec_overrides

    overrides = {**spec_overrides(state, record.params), "results_dir": str(out_dir), "evaluate.checkpoint": str(checkpoint),
                 "evaluate.results_dir": str(out_dir)}
    cfg = apply_overrides(base_config(state.spec, state.overrides, out_dir), overrides)
    return float(evaluate.run(cfg, quiet=True).miou)


def final_evaluation(state: SearchState, promoted: TrialRecord, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Both models (and their re-check seeds) on the test split; the answer is kept in the state."""
    size = deployed_size(state, promoted)
    reason = skip_reason(state)
    baseline = state.baseline()
    if baseline is not None and baseline.best_value is None and baseline.infeasible:
        reason = "the baseline (the spec's own model) is over the latency limit and trained nothing"
    if reason is not None:
        out = {"skipped": reason, **size}
        echo(f"automl: final evaluation skipped: {out['skipped']}")
        return out
    started = time.time()
    folder = Layout.of(state.results_dir).root / "final_evaluation"
    # run_baseline off: the promoted model is still scored, with nothing beside it
    groups: dict[str, list[TrialRecord]] = {"promoted": [promoted], **({"baseline": [baseline]} if baseline else {})}
    verdict = state.recheck or {}
    if verdict:
        for role, name, names in (("leader", verdict["leader"], verdict["leader_rechecks"]),
                                  ("baseline", verdict["baseline"], verdict["baseline_rechecks"])):
            records = [state.by_name(name), *[state.by_name(n) for n in names]]
            groups[role] = [r for r in records if r is not None]
        # The promoted model is one of its configuration's two trainings: show that one first.
        for role in ("leader", "baseline"):
            if promoted.name in [r.name for r in groups[role]]:
                groups["promoted"] = sorted(groups[role], key=lambda r: r.name != promoted.name)
    scores: dict[str, float] = {}
    out: dict[str, Any] = {"split": "test", "metric": "miou", **size}  # the summary and the report say it
    for role, records in groups.items():
        values = []
        for record in records:
            if record.name not in scores:
                try:
                    scores[record.name] = evaluate_trial(state, record, folder / record.name)
                except Exception as err:  # noqa: BLE001 (one model that cannot be scored must not lose the others)
                    echo(f"automl: final evaluation of {record.name} failed: {type(err).__name__}: {err}")
                    continue
            values.append(scores[record.name])
        out[role] = {"trials": [r.name for r in records], "test_miou": values,
                     "mean": sum(values) / len(values) if values else None,
                     "epochs": [r.epochs_trained for r in records]}
    out["test_miou"] = {name: round(value, 6) for name, value in scores.items()}
    out["seconds"] = round(time.time() - started, 1)
    return out


def uneven_note(uneven: str) -> str:
    return (f"these trainings ran different numbers of epochs ({uneven}; the shorter ones were stopped early), "
            "so a shorter training's score stands beside a longer one's")


def uneven_epochs(*groups: dict[str, Any]) -> str:
    """'trial_000 1, trial_003 6' when the compared trainings ran different numbers of epochs (a
    multi-fidelity scheduler stopped some at a rung), else ''. Ledgers before the epochs were kept: ''."""
    epochs: dict[str, int] = {}
    for group in groups:
        for name, count in zip(group.get("trials") or [], group.get("epochs") or []):
            epochs[name] = int(count)
    if len(set(epochs.values())) < 2:
        return ""
    return ", ".join(f"{name} {count}" for name, count in epochs.items())


def deployed_size(state: SearchState, record: TrialRecord) -> dict[str, Any]:
    """``{"deployed_input": [h, w], "scored_at": n}`` when `record`'s model deploys (export.input_height/
    width, chosen by the user) at another size than it trains and is scored at; else empty."""
    from automl.deploy import spec_overrides
    from automl.trial import base_config
    from segformer.config import apply_overrides

    try:
        root = Layout.of(state.results_dir).root
        cfg = apply_overrides(base_config(state.spec, state.overrides, root), spec_overrides(state, record.params))
    except (OSError, ValueError, RuntimeError):  # the spec moved since: nothing to compare
        return {}
    scored, deployed = int(cfg.dataset.segment.img_size), [int(cfg.export.input_height), int(cfg.export.input_width)]
    return {} if deployed == [scored, scored] else {"deployed_input": deployed, "scored_at": scored}


def size_note(final: dict[str, Any]) -> str | None:
    """What the test mIoU does not say when the deployed model takes another size than the one scored."""
    if "deployed_input" not in final:
        return None
    (h, w), n = final["deployed_input"], final["scored_at"]
    return (f"the exported model (ONNX, engine, the registered champion) takes {h}x{w} pixels (export.input_height/width "
            f"in the spec) but was trained, ranked and scored at {n}x{n} (dataset.segment.img_size): its accuracy at "
            f"{h}x{w} was not measured, and its masks differ from `segformer inference`'s; leave the export size out of "
            f"the spec to deploy the size that was scored")


def own_score(final: dict[str, Any], role: str) -> float | None:
    """The test score of a group's own model, its first training ("promoted": best/; "baseline": the
    spec's own), by name: a training whose scoring failed is missing from the group's list of scores."""
    return (final.get("test_miou") or {}).get(((final.get(role) or {}).get("trials") or [None])[0])


def final_lines(final: dict[str, Any], recheck: dict[str, Any] | None = None, precision: str | None = None) -> list[str]:
    """The summary's lines: test mIoU of the promoted model and the baseline, side by side (when the
    baseline's configuration won, the re-checked trial's against it, named as `recheck` says). With
    `precision` int8 (the deploy-aware search chose it), a line says that these are the float weights'."""
    if not final:
        return []
    note = [f"  deploy   NOTE: {size_note(final)}"] if size_note(final) else []
    if "skipped" in final:
        return [f"  test     skipped: {final['skipped']}", *note]
    p, b = final.get("promoted", {}), final.get("baseline", {})
    if "baseline" not in final and p.get("mean") is not None:
        return [f"  test     promoted {p['trials'][0]} mIoU {p['mean']:.4f} on the untouched test split (no baseline "
                "trial to compare with: run_baseline is off)", *note]
    if p.get("mean") is None or b.get("mean") is None:
        return ["  test     could not score both models (see the lines above)", *note]
    lead = final.get("leader", {})
    if sorted(p["trials"]) == sorted(b["trials"]) and lead.get("mean") is not None:  # the baseline's configuration won
        from automl.console import recheck_role

        p, role = lead, recheck_role(recheck or {})
    else:
        role = "promoted"
    seeds = f" (means of {len(p['test_miou'])} and {len(b['test_miou'])} seeds)" if len(p["test_miou"]) > 1 or len(b["test_miou"]) > 1 else ""
    lines = [f"  test     {role} {p['trials'][0]} mIoU {p['mean']:.4f} vs baseline {b['trials'][0]} {b['mean']:.4f} "
             f"({p['mean'] - b['mean']:+.4f}) on the untouched test split{seeds}"]
    own = final.get("promoted", {})
    score = own_score(final, "promoted")
    if seeds and score is not None:  # a mean is not the model the user gets: name that one's own score
        lines.append(f"  test     the promoted model itself, {own['trials'][0]} (best/): mIoU {score:.4f}")
    uneven = uneven_epochs(p, b)
    if uneven:
        lines.append(f"  test     NOTE: {uneven_note(uneven)}")
    if precision == "int8":
        lines.append("  test     these are the float weights' scores; best/ deploys the int8 model, which "
                     "`segformer evaluate -e best/experiment.yaml` scores")
    return lines + note
