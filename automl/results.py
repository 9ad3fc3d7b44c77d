"""``results.json``: the search in the shape of NVIDIA's tao-automl results (TAO 7.1's AutoMLRunner).

Scripts written against TAO's runner read its result dict; the same keys and types are written
to ``<results_dir>/results.json`` (atomically; not fsynced, the ledger it is made from is) whenever
the ledger is written whole: on every change to the search and at least every few seconds while it
runs (`automl.state`). ``automl status DIR --json`` prints it, made afresh from the ledger.

- ``best``: ``rec_id`` (the trial's number: trial_007 is 7), ``specs`` (its searched values, dotted
  spec keys), ``metric_value`` (its best epoch's metric, in the metric's own direction) and
  ``objective_values`` (metric and, with --objectives, the cost objectives); the promoted trial once
  promotion decided, the ranking's first before; null before any result;
- ``progress``: ``completed``, ``total`` (trials in all: max_trials, or the trials the budget has
  started so far while it runs), ``best_metric``, ``best_rec_id``, ``algorithm``, and ours:
  ``status``, ``epochs_trained``, ``budget_epochs``;
- ``baseline``: the spec's own configuration (``rec_id``, ``specs``, ``metric_value``), null without;
- ``final_evaluation``: ``status`` (done, skipped, pending), ``reason``, ``metric_value`` (the
  promoted model, best/, on the test split), ``baseline_metric_value`` (the spec's own training),
  ``metric_value_mean`` and ``baseline_metric_value_mean`` (over each one's trainings: with a
  re-check, its two seeds), ``trials``, ``baseline_trials``, ``split``, ``record_path``;
- ``history``: one entry per trial in order: ``rec_id``, ``metric`` (best value, null without one),
  ``status`` (success, failure, running, pending, killed; infeasible: over the latency limit,
  trained nothing), ``specs``, ``epochs``, and ours:
  ``trial``, ``stopped_early``, ``stopped_by`` (why: "rung: ...", "curve: ...", "budget: ...", "time: ..."), ``recheck_of``;
- ``pareto_front``: with --objectives, the members of the front (``rec_id``, ``objective_values``);
  else an empty list.

While a new search starts (its driver checks the data and starts Ray before it writes the ledger)
``automl status --json`` prints the same keys with ``progress.status`` "starting" (`starting_results`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from automl.layout import Layout, trial_number

if TYPE_CHECKING:
    from automl.state import SearchState, TrialRecord

RESULTS_FILE = "results.json"
_STATUS = {"FINISHED": "success", "STOPPED": "success", "FAILED": "failure", "RUNNING": "running", "PENDING": "pending",
           "KILLED": "killed"}


def _rec_id(record: "TrialRecord") -> int | None:
    return trial_number(record.name)


def _objectives(state: "SearchState") -> list[str]:
    """The objectives' names: the metric, and with --objectives the cost it is traded against."""
    named = [o.split(":")[0] for o in (state.pareto or {}).get("objectives", [])]
    return [state.metric] + [n for n in named if n != state.metric]


def _entry(state: "SearchState", record: "TrialRecord | None") -> dict[str, Any] | None:
    if record is None:
        return None
    objectives = {name: record.best_value if name == state.metric else (record.latency or {}).get(name)
                  for name in _objectives(state)}
    return {"rec_id": _rec_id(record), "trial": record.name, "specs": dict(record.params),
            "metric_value": record.best_value, "objective_values": objectives}


def _final(state: "SearchState") -> dict[str, Any]:
    final = state.final_evaluation
    if not final:
        if state.status == "FAILED":  # ended with no trial to promote: nothing will be scored
            return {"status": "skipped", "reason": "no trial has a result to promote", "metric_value": None}
        if state.status == "FINISHED":
            return {"status": "skipped", "reason": "not asked for (--skip-evaluate or --no-promote)", "metric_value": None}
        return {"status": "pending", "reason": "the search has not reached its final evaluation", "metric_value": None}
    if "skipped" in final:
        return {"status": "skipped", "reason": str(final["skipped"]), "metric_value": None}
    from automl.finals import own_score

    promoted, baseline = final.get("promoted") or {}, final.get("baseline") or {}
    return {"status": "done", "reason": f"the promoted model (best/) and the baseline (the spec's own training) on the "
                                        f"untouched {final.get('split', 'test')} split; the means are over each one's "
                                        "trainings (the re-check's seeds)",
            "metric_value": own_score(final, "promoted"), "baseline_metric_value": own_score(final, "baseline"),
            "metric_value_mean": promoted.get("mean"), "baseline_metric_value_mean": baseline.get("mean"),
            "split": final.get("split"), "trials": promoted.get("trials"), "baseline_trials": baseline.get("trials"),
            "record_path": str(Layout.of(state.results_dir).root / "final_evaluation")}


def tao_results(state: "SearchState") -> dict[str, Any]:
    """The search as TAO's AutoMLRunner returns its results (see the module's docstring)."""
    records = sorted(state.trials.values(), key=lambda t: (trial_number(t.name) or 0, t.name))
    best = state.best()
    # A killed trial is done once the search is (a time budget or the failure limit ended it); while the
    # search can resume it is not, and one lost to a kill is taken over by a new trial (counted then).
    finished = state.status in ("FINISHED", "FAILED")  # ended; FAILED: with nothing to promote
    done = [t for t in records if t.status in ("FINISHED", "STOPPED", "FAILED") or (t.status == "KILLED" and finished and not t.lost)]
    options = (state.settings or {}).get("search") or {}
    total = (options.get("population_size") if state.algorithm == "pbt" else options.get("max_trials")) or len(records)
    history = [{"rec_id": _rec_id(t), "trial": t.name, "metric": t.best_value,
                "status": "infeasible" if t.infeasible else _STATUS.get(t.status, t.status.lower()),
                "specs": dict(t.params), "epochs": t.epochs_trained, "stopped_early": t.status == "STOPPED",
                "stopped_by": t.stopped_by if t.status == "STOPPED" else None, "recheck_of": t.recheck_of} for t in records]
    front = []
    if state.pareto:
        by_name = {t.name: t for t in records}
        front = [{"rec_id": trial_number(m["trial"]), "trial": m["trial"],
                  "objective_values": {k: m.get(k) for k in _objectives(state)}}
                 for m in state.pareto.get("front", []) if m["trial"] in by_name]
    return {
        "best": _entry(state, best),
        "progress": {"completed": len(done), "total": int(total), "best_metric": best.best_value if best else None,
                     "best_rec_id": _rec_id(best) if best else None, "algorithm": state.algorithm,
                     "status": state.status.lower(), "epochs_trained": state.epochs_trained(),
                     "budget_epochs": state.budget_epochs()},
        "baseline": _entry(state, state.baseline()),
        "final_evaluation": _final(state),
        "history": history,
        "pareto_front": front,
    }


def starting_results() -> dict[str, Any]:
    """`tao_results`' shape for a search whose driver has not written its state yet (`automl.state.starting`):
    status "starting", nothing to report, so that a script polling ``automl status --json`` reads one
    shape from the moment the driver holds the folder (it takes its lock within a second of its start,
    before the data check and Ray's start)."""
    return {
        "best": None,
        "progress": {"completed": 0, "total": 0, "best_metric": None, "best_rec_id": None, "algorithm": None,
                     "status": "starting", "epochs_trained": 0, "budget_epochs": None},
        "baseline": None,
        "final_evaluation": {"status": "pending", "reason": "the search is starting: its driver checks the data and "
                                                            "starts Ray before its first trial", "metric_value": None},
        "history": [],
        "pareto_front": [],
    }


def write_results(state: "SearchState") -> Path:
    """`tao_results` to <results_dir>/results.json, atomically (NaN and infinities as null)."""
    from segformer.fileio import atomic_write_json

    path = Layout.of(state.results_dir).root / RESULTS_FILE
    atomic_write_json(path, tao_results(state), sync=False, default=str)  # not fsynced: rebuilt from the ledger
    return path
