"""`automl run --policy off` (or AutoML enabled but not runnable): the spec trained once, tracked in MLflow."""

from __future__ import annotations

from typing import Any

from automl.layout import Layout
from automl.options import SearchOptions
from automl.runner import Echo, SearchOutcome
from automl.state import FAILED, FINISHED
from automl.trial import base_config


def run_plain(opts: SearchOptions, skill_name: str, *, echo: Echo = print) -> SearchOutcome:
    """Policy off (or AutoML not runnable): the spec trained once, still tracked as one MLflow run."""
    from automl.tracking import Tracker
    from segformer.actions import train as train_action
    from segformer.config import apply_overrides

    layout = Layout.of(opts.results_dir)
    layout.root.mkdir(parents=True, exist_ok=True)
    overrides: dict[str, Any] = {"results_dir": str(layout.root), "train.results_dir": str(layout.plain_train_dir)}
    if opts.search.trial_epochs:
        overrides["train.num_epochs"] = opts.search.trial_epochs
    cfg = apply_overrides(base_config(opts.spec, opts.overrides, layout.root), overrides)
    tracker = Tracker(opts.tracking.tracking_uri or layout.default_tracking_uri, layout.root,
                      opts.tracking.experiment_name or skill_name)
    run_id = tracker.start_parent("train", {"spec": opts.spec or "", "overrides": list(opts.overrides)},
                                  {"automl.policy": "off", "automl.results_dir": str(layout.root)})
    try:
        result = train_action.run(cfg)
    except BaseException as err:
        tracker.set_tags(run_id, {"automl.error": repr(err)[:500]})
        tracker.end_run(run_id, FAILED if isinstance(err, Exception) else "KILLED")
        raise
    metric = opts.search.metric
    for record in result.history:
        # not TAO's fields of the same line (max_epoch is a number, but no metric; the others are text and dicts);
        # steps are epochs counted from 1, as a search's trial runs log them (status.json counts from 0)
        tracker.log_metrics(run_id, {k: v for k, v in record.items() if k not in ("epoch", "max_epoch")},
                            step=int(record.get("epoch", 0)) + 1)
    validated = result.best_miou is not None
    if validated:
        tracker.log_metrics(run_id, {f"best_{metric}": float(result.best_miou)}, step=int(result.best_epoch) + 1)
    tracker.end_run(run_id, FINISHED)
    # Epochs counted from 1, as the search's summary does; status.json and checkpoint names count from 0.
    best = (f"best {metric}={result.best_miou:.4f} at epoch {result.best_epoch + 1} (status.json's epoch "
            f"{result.best_epoch})" if validated else
            f"no validation ran (train.validation_interval={cfg.train.validation_interval}, "
            f"{cfg.train.num_epochs} epochs), so no {metric}")
    if not result.trained:  # train said why, and how to train on
        echo(f"automl: nothing trained; the checkpoint is still {result.last_checkpoint} ({best})")
        return SearchOutcome(layout.root, "plain", message="nothing trained")
    last = next((r.get("val_miou") for r in reversed(result.history) if r.get("val_miou") is not None), None)
    last_text = f", {metric}={last:.4f} at its last validation" if last is not None else ""
    kept = "the best checkpoint the training kept" if validated else "its last checkpoint"
    echo(f"automl: trained once: {best}; last checkpoint {result.last_checkpoint}{last_text}; evaluate.checkpoint="
         f"{result.results_dir} takes {kept}")
    return SearchOutcome(layout.root, "plain", message=f"best {metric}={result.best_miou:.4f}" if validated else "trained")
