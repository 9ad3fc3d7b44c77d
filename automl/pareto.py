"""Accuracy against latency: the Pareto front of a deploy-aware search, and which member is promoted.

``--objectives val_miou:max,latency_ms:min`` (settings: ``objectives``) names two objectives: the
search's metric and one of the deploy costs every trial records (`automl.deploy.LATENCY_METRICS`:
latency_ms, model_mb, params_m, gflops). The sampler still ranks by the metric (the structural
options span the cost axis); the front is taken over every ranked trial (feasible, not a
re-check) once the search ends:

- a trial is on the front when no other is at least as good on both objectives and better on one
  (trials over the latency limit are plotted, the baseline among them when it is, but are never
  on the front);
- the member promoted: with NVIDIA's weights (``objective_weights``, from the settings keys
  ``objectives`` with weight/scale, ``metric_weight``/``metric_scale``, ``latency_weight``/
  ``latency_scale``), the member with the best weighted score, tao-automl's scalarisation
  ``sum(+-weight * value / scale)`` (+ for the metric maximised, - for the cost); else with
  ``--max-latency-ms``, the most accurate (every ranked trial is under the limit); else the knee of
  the front, the member farthest from the straight line between the front's two ends once both
  objectives are scaled to [0, 1] (where a little more cost stops buying much accuracy); a front
  of one or two members: the most accurate. The best weighted score is always a front member;
- ``pareto.json`` in the results folder holds the objectives, every point, the front, the chosen
  member and the rule; the report plots it (accuracy against cost, the front drawn, the baseline
  and the chosen member marked) and the MLflow parent run keeps both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from automl.layout import Layout
from automl.state import SearchState

PARETO_FILE = "pareto.json"
COSTS = ("latency_ms", "model_mb", "params_m", "gflops")


def parse(objectives: Sequence[str] | str, metric: str, mode: str) -> list[tuple[str, str]]:
    """``["val_miou:max", "latency_ms:min"]`` (or one comma-separated string) as (name, direction)
    pairs; a cost alone (``latency_ms:min``) is paired with the search's metric. Raises ValueError
    naming what to write instead."""
    items = [str(o).strip() for o in (objectives.split(",") if isinstance(objectives, str) else objectives) if str(o).strip()]
    pairs = []
    for item in items:
        name, _, direction = item.partition(":")
        pairs.append((name.strip(), (direction.strip() or "?").lower()))
    example = f"{metric}:{mode},latency_ms:min"
    if len(pairs) == 1 and pairs[0][0] in COSTS:
        pairs.insert(0, (metric, mode))
    if len(pairs) != 2:
        raise ValueError(f"objectives: give two, the metric and a deploy cost, e.g. {example}; got {list(items)}")
    (first, first_dir), (cost, cost_dir) = pairs
    if first != metric or first_dir != mode:
        raise ValueError(f"objectives: the first is the search's metric, {metric}:{mode}; got {first}:{first_dir} (e.g. {example})")
    if cost not in COSTS or cost_dir != "min":
        raise ValueError(f"objectives: the second is a deploy cost to minimise, one of {', '.join(c + ':min' for c in COSTS)}; "
                         f"got {cost}:{cost_dir}")
    return pairs


def _dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """a is at least as good as b on both (accuracy up, cost down) and better on one."""
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


def front(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The non-dominated points (keys ``accuracy`` and ``cost``; accuracy to maximise), by cost."""
    pairs = [(p["accuracy"], p["cost"]) for p in points]
    members = [p for p, own in zip(points, pairs) if not any(_dominates(other, own) for other in pairs)]
    return sorted(members, key=lambda p: (p["cost"], -p["accuracy"]))


def knee(members: list[dict[str, Any]]) -> dict[str, Any]:
    """The member farthest from the line between the front's ends, both axes scaled to [0, 1]; the
    most accurate for fronts of one or two."""
    best = max(members, key=lambda p: p["accuracy"])
    if len(members) < 3:
        return best
    lo_c, hi_c = members[0]["cost"], members[-1]["cost"]
    accs = [p["accuracy"] for p in members]
    lo_a, hi_a = min(accs), max(accs)
    if hi_c <= lo_c or hi_a <= lo_a:
        return best

    def scaled(p: dict[str, Any]) -> tuple[float, float]:
        return (p["cost"] - lo_c) / (hi_c - lo_c), (p["accuracy"] - lo_a) / (hi_a - lo_a)

    (x0, y0), (x1, y1) = scaled(members[0]), scaled(members[-1])

    def distance(p: dict[str, Any]) -> float:  # above the chord: more accuracy than a straight trade-off
        x, y = scaled(p)
        return ((x1 - x0) * (y - y0) - (y1 - y0) * (x - x0)) / ((x1 - x0) ** 2 + (y1 - y0) ** 2) ** 0.5

    return max(members, key=distance)


def weighted_rule(weights: Sequence[Sequence[float]], metric: str, mode: str, cost: str) -> str:
    """The weighted score in words, as tao-automl scalarises: + for a maximised objective, - else."""
    (w_metric, s_metric), (w_cost, s_cost) = weights
    return (f"the best weighted score, {'' if mode == 'max' else '-'}{w_metric:g} * {metric} / {s_metric:g} "
            f"- {w_cost:g} * {cost} / {s_cost:g} (NVIDIA's weights)")


def decide(state: SearchState, objectives: Sequence[str] | str, max_latency_ms: float | None,
           weights: Sequence[Sequence[float]] | None = None) -> dict[str, Any] | None:
    """The front of `state`'s ranked trials and the member promoted (None: no trial has both values);
    `weights`: (weight, scale) of the metric and of the cost, NVIDIA's scalarisation."""
    (metric, mode), (cost, _) = parse(objectives, state.metric, state.mode)
    sign = 1.0 if mode == "max" else -1.0
    ranked = {t.name for t in state.ranked()}
    points = [{"trial": t.name, "accuracy": sign * t.best_value, metric: t.best_value, "cost": t.latency[cost], cost: t.latency[cost],
               "baseline": t.is_baseline, "feasible": t.name in ranked, "params": t.params}
              for t in sorted(state.trials.values(), key=lambda r: r.name)
              if t.best_value is not None and not t.recheck_of and t.latency and cost in t.latency]
    feasible = [p for p in points if p["feasible"]]
    if not feasible:
        return None
    members = front(feasible)
    if weights:
        (w_metric, s_metric), (w_cost, s_cost) = weights
        chosen = max(members, key=lambda p: w_metric * p["accuracy"] / s_metric - w_cost * p["cost"] / s_cost)
        rule = weighted_rule(weights, metric, mode, cost) + ("" if max_latency_ms is None else f", under the latency limit ({max_latency_ms:g} ms)")
    elif max_latency_ms is not None:
        chosen, rule = max(members, key=lambda p: p["accuracy"]), f"the most accurate under the latency limit ({max_latency_ms:g} ms)"
    else:
        chosen = knee(members)
        rule = ("the knee of the front (farthest from the line between its ends, both objectives scaled)" if len(members) > 2
                else "the most accurate member (a front of fewer than three has no knee)")
    strip = [{k: v for k, v in p.items() if k not in ("accuracy", "cost")} for p in points]
    on_front = {p["trial"] for p in members}
    return {"objectives": [f"{metric}:{mode}", f"{cost}:min"], "points": strip,
            "front": [p for p in strip if p["trial"] in on_front], "chosen": chosen["trial"], "rule": rule}


def write(state: SearchState, pareto: dict[str, Any]) -> Path:
    from segformer.fileio import atomic_write_text

    path = Layout.of(state.results_dir).root / PARETO_FILE
    atomic_write_text(path, json.dumps(pareto, indent=1, default=str))
    return path


def plot(plt: Any, state: SearchState, pareto: dict[str, Any] | None, limit: float | None) -> Any:
    """Accuracy against cost: every trial, the front drawn, the baseline and the promoted member marked."""
    if not pareto:
        return None
    metric, cost = pareto["objectives"][0].split(":")[0], pareto["objectives"][1].split(":")[0]
    fig, ax = plt.subplots(figsize=(6, 4))
    points, members = pareto["points"], sorted(pareto["front"], key=lambda p: p[cost])
    ax.scatter([p[cost] for p in points], [p[metric] for p in points], color="C7", label="trials", zorder=2)
    ax.step([p[cost] for p in members], [p[metric] for p in members], where="post", color="C0", label="Pareto front", zorder=3)
    ax.scatter([p[cost] for p in members], [p[metric] for p in members], color="C0", zorder=4)
    for p in points:
        if p["baseline"]:
            ax.scatter([p[cost]], [p[metric]], marker="s", s=90, facecolors="none", edgecolors="C3", label="baseline (spec)", zorder=5)
        if p["trial"] == pareto["chosen"]:
            ax.scatter([p[cost]], [p[metric]], marker="*", s=200, color="C2", label=f"promoted ({p['trial']})", zorder=6)
    if limit is not None and cost == "latency_ms":
        ax.axvline(limit, color="C3", linestyle="--", label=f"limit {limit:g} ms")
    ax.set_xlabel(cost), ax.set_ylabel(metric), ax.set_title(f"{metric} against {cost}")
    ax.legend(fontsize=8)
    return fig
