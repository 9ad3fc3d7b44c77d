"""What the MLflow UI shows of a search without any configuration by the user.

Left alone, MLflow's runs page opens on the experiment with the search's parent run collapsed and
the attribute columns (Created, Dataset, Duration, Source, Models) filling the width: the trials,
their val_miou and their parameters are a click and a scroll away. So each search writes:

- child run names that carry the key parameters (``trial_004 lr=0.00147 wd=0.000231``), and a
  ``automl.trial`` tag with the bare trial name for scripts;
- a *shared view* of its trials: the MLflow UI's own "Share" mechanism, an experiment tag
  ``mlflow.sharedViewState.<key>`` holding the page's search facets and UI state as JSON, opened by
  ``#/experiments/<id>/runs?viewStateShareKey=<key>``. Ours lists the search's trials flat (filtered
  on the parent run), best first (sorted on ``best_<metric>``), with the metric, latency and the
  searched parameters as the first columns, and its chart view holds the metric against the
  learning rate (or the first searched parameter), a parallel-coordinates chart of the parameters
  and the metric's curves;
- the parent run's description (``mlflow.note.content``, rendered as markdown on the run's page):
  links to both views and, at the end, the best trial against the baseline.

`automl ui` prints the views' addresses.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any, Iterable, Sequence

if TYPE_CHECKING:
    from automl.state import SearchState, TrialRecord
    from automl.tracking import Tracker

SHARE_TAG_PREFIX = "mlflow.sharedViewState."  # MLflow UI: the experiment tag a shared view lives in
NOTE_TAG = "mlflow.note.content"  # MLflow UI: a run's description (markdown)
TRIAL_TAG = "automl.trial"  # the bare trial name (trial_004), whatever the run is named
NAME_PARAMS = 3  # parameters shown in a child run's name
_ALIASES = {"weight_decay": "wd", "batch_size": "bs", "freeze_backbone": "freeze", "num_epochs": "epochs"}


def short_name(key: str) -> str:
    """``train.optim.weight_decay`` -> ``wd``; ``model.backbone.type`` -> ``backbone``;
    ``...random_color.enable`` -> ``random_color`` (runs were named "enable=True": of what?)."""
    parts = key.split(".")
    last = parts[-1]
    if last in ("type", "enable") and len(parts) > 1:
        last = parts[-2]
    return _ALIASES.get(last, last)


def _value(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.3g}"
    return str(value)


def run_name(record: "TrialRecord") -> str:
    """The child run's name: the trial and its first searched parameters (a re-check says whose)."""
    if record.recheck_of:
        seed = record.params.get("train.seed")
        return f"{record.name} re-check of {record.recheck_of}" + (f" seed={seed}" if seed is not None else "")
    shown = [f"{short_name(k)}={_value(v)}" for k, v in record.params.items() if k != "train.seed"][:NAME_PARAMS]
    return " ".join([record.name, *(["(spec)"] if record.is_baseline else []), *shown])


def view_key(parent_run_id: str) -> str:
    return f"automl-{parent_run_id}"


def view_path(experiment_id: str, key: str, charts: bool = False) -> str:
    """The UI's address of a shared view, after the server's root (``http://host:port/``)."""
    return f"#/experiments/{experiment_id}/runs?viewStateShareKey={key}" + ("&compareRunsMode=CHART" if charts else "")


def _column(kind: str, key: str) -> str:
    return f"{kind}.`{key}`"  # the UI's canonical column key


def view_state(parent_run_id: str, params: Sequence[str], metric: str, mode: str = "max",
               extra_metrics: Iterable[str] = ()) -> dict[str, Any]:
    """The runs page's state for a search: its trials flat, best first, the columns that matter,
    and three charts (metric against the learning rate, parallel coordinates, the metric's curves)."""
    best = f"best_{metric}"
    metrics = [best, metric, *extra_metrics]
    x = "train.optim.lr" if "train.optim.lr" in params else (params[0] if params else None)
    section = "automl"
    charts: list[dict[str, Any]] = []
    common = {"metricSectionId": section, "isGenerated": False, "deleted": False}
    if x is not None:
        charts.append({"type": "SCATTER", "uuid": "automl-scatter", **common, "runsCountToCompare": 500,
                       "xaxis": {"key": x, "type": "PARAM"}, "yaxis": {"key": best, "type": "METRIC"}})
    if params:
        charts.append({"type": "PARALLEL", "uuid": "automl-parallel", **common,
                       "selectedParams": list(params)[:8], "selectedMetrics": [best]})
    charts.append({"type": "LINE", "uuid": "automl-curves", **common, "metricKey": metric,
                   "selectedMetricKeys": [metric], "xAxisKey": "step", "scaleType": "linear",
                   "lineSmoothness": 0, "runsCountToCompare": 10})
    return {
        "searchFilter": f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
        "orderByKey": _column("metrics", best),
        "orderByAsc": mode == "min",
        "selectedColumns": [*(_column("metrics", m) for m in metrics), *(_column("params", p) for p in params)],
        "compareRunCharts": charts,
        "compareRunSections": [{"uuid": section, "name": "AutoML search", "display": True, "isReordered": False}],
        "isAccordionReordered": True,
        "runListHidden": False,
    }


def write_view(tracker: "Tracker", state: "SearchState", params: Sequence[str],
               extra_metrics: Iterable[str] = ()) -> str:
    """Store the search's shared view on its experiment and describe it on the parent run."""
    parent = state.mlflow_parent_run_id
    key = view_key(parent)
    data = view_state(parent, params, state.metric, state.mode, extra_metrics)
    tracker.client.set_experiment_tag(tracker.experiment_id(), SHARE_TAG_PREFIX + key, json.dumps(data))
    tracker.set_tags(parent, {NOTE_TAG: parent_note(state)})
    return key


def _links(state: "SearchState") -> str:
    key = view_key(state.mlflow_parent_run_id)
    exp = state.mlflow_experiment_id
    return (f"[All trials, best first]({view_path(exp, key)}) · "
            f"[{state.metric} against the parameters]({view_path(exp, key, charts=True)})")


def parent_note(state: "SearchState") -> str:
    """The parent run's description: the views, and once there is one, the best trial and the baseline."""
    lines = [f"**AutoML search** ({state.algorithm}, {state.metric}, {state.mode}). " + _links(state)]
    best = (state.by_name(state.best_trial) if state.best_trial else None) or state.best()
    baseline = state.baseline()
    if best is not None and best.best_value is not None:
        params = ", ".join(f"`{k}`={_value(v)}" for k, v in best.params.items())
        line = f"**Best: {best.name}**, {state.metric} {best.best_value:.4f} at epoch {best.best_epoch}"
        if baseline is not None and baseline.best_value is not None and baseline is not best:
            line += f" (the spec's own values, {baseline.name}: {baseline.best_value:.4f})"
        lines.append(line + (f"; {params}" if params else ""))
    if state.recheck is not None:
        lines.append(f"Re-check: {state.recheck['reason']}")
    return "\n\n".join(lines)
