"""What a search prints: the settings line, the live trial table, `automl status` and the closing summary.

Everything here reads only the ledger (`automl.state`) and the options, so `automl status` works
during a search, after it, and after a killed driver.
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable

from automl.layout import Layout, trial_name
from automl.options import SearchOptions
from automl.state import FAILED, KILLED, PENDING, RUNNING, STOP_KINDS, STOPPED, SearchState, observed, starting
from segformer.text import count, fmt


PAUSED = "PAUSED"  # shown for a RUNNING trial that Ray has paused (TrialRecord.paused)
STATUS_ROWS = 40  # `automl status` rows of a bigger search (the running trials and the best; --all: every one)
ERROR_ROWS = 10  # errors shown under a summarised table

def settings_line(opts: SearchOptions, budget: Any = None) -> str:
    """One line with the budget a search runs under (printed by run and --dry-run)."""
    s, r = opts.search, opts.resources
    epochs = s.trial_epochs or "spec"
    per_trial = count(epochs, "epoch") if isinstance(epochs, int) else f"{epochs} epochs"
    if budget is not None:
        trials = f"{budget.text()}, trials of up to {per_trial}"
    else:
        if s.algorithm == "pbt":  # every member trains every epoch: the total is known
            total = f" ({count(s.population_size * epochs, 'epoch')} in all)" if isinstance(epochs, int) else ""
            trials = f"population {s.population_size} x {per_trial}{total}"
        else:
            trials = f"up to {count(s.max_trials, 'trial')} x {per_trial}"
        if s.algorithm == "pbt" and r.max_concurrent is not None and s.population_size > r.max_concurrent:
            trials += " taking turns (a member waits at each perturbation epoch for the others)"
    time_budget = f", time budget {s.time_budget_s:g} s" if s.time_budget_s else ""
    gpus = "auto" if r.gpus_per_trial is None else f"{r.gpus_per_trial:g}"
    slots = "every slot" if r.max_concurrent is None else f"{r.max_concurrent}"
    return (f"automl: {s.algorithm} search, {trials}, {slots} at a time "
            f"({'auto' if r.cpus_per_trial is None else format(r.cpus_per_trial, 'g')} CPU, {gpus} GPU each)"
            f"{time_budget}; metric {s.metric} ({s.mode})")


def recommendations(opts: SearchOptions, baseline: dict[str, Any] | None, points: list[dict[str, Any]]) -> str:
    """The first trials of a search (--dry-run): the baseline, then the sampler's first picks."""
    shown = len(points) + (baseline is not None)
    lines = [f"{'first ' + count(shown, 'trial') if shown > 1 else 'first trial'} ({opts.search.algorithm}):"]
    if baseline is not None:
        lines.append(f"  {trial_name(0)} (baseline): " + _values(baseline))
    first = 1 if baseline is not None else 0
    lines += [f"  {trial_name(i)}: {_values(point)}" for i, point in enumerate(points, first)]
    return "\n".join(lines)


def _values(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={fmt(v)}" for k, v in values.items())


def node_labels(trials: list[Any]) -> dict[str, str]:
    """How the table names each trial's node: its IP, and the start of its Ray node id where several
    nodes shared an IP at the same time (two `ray start` on one machine, containers behind one
    address). A resumed search's new local Ray is a new node id on the same machine, after the old
    one: that is still the one machine, named once."""
    spans: dict[str, dict[str, list[float]]] = {}  # ip -> node id -> [first start, last end]
    for t in trials:
        if t.node_ip:
            began = t.run_started_at or t.started_at  # on this node: a resumed trial restarts on the new one
            start = began if began is not None else float("-inf")
            end = t.ended_at if t.ended_at is not None and began is not None else float("inf")
            span = spans.setdefault(t.node_ip, {}).setdefault(t.node_id or "", [start, end])
            span[0], span[1] = min(span[0], start), max(span[1], end)
    shared = {ip for ip, ids in spans.items() if _overlap(list(ids.values()))}
    return {t.trial_id: "-" if not t.node_ip else
            f"{t.node_ip} ({(t.node_id or '?')[:8]})" if t.node_ip in shared else t.node_ip for t in trials}


def _overlap(spans: list[list[float]]) -> bool:
    """Whether any two of these [start, end] spans overlap in time."""
    spans = sorted(spans)
    return any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:]))


def _short_name(key: str, keys: list[str]) -> str:
    """The fewest trailing parts of a dotted key that no other key ends with: "lr", and
    "random_flip.enable" beside "random_color.enable" (not the whole key, which widened the table)."""
    parts = key.split(".")
    for n in range(1, len(parts)):
        tail = ".".join(parts[-n:])
        if n == 1 and tail in _SAYS_NOTHING:  # "enable" alone: of what?
            continue
        if not any(other != key and (other == tail or other.endswith("." + tail)) for other in keys):
            return tail
    return key


_SAYS_NOTHING = ("enable", "enabled", "type", "value", "p", "prob")  # names that need their section


def trial_rows(state: SearchState, limit: int | None = None) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the trial table: all trials in creation order, or with `limit` the running
    ones first, then the best, at most `limit` rows (the live view)."""
    trials = sorted(state.trials.values(), key=lambda r: r.name)
    if limit is not None and len(trials) > limit:
        rank = {t.trial_id: i for i, t in enumerate(state.ranked())}
        trials = sorted(trials, key=lambda t: (t.status not in (RUNNING, PENDING), rank.get(t.trial_id, len(rank)), t.name))
        trials = sorted(trials[:limit], key=lambda r: r.name)
    keys = sorted({k for t in state.trials.values() for k in t.params})
    short = [_short_name(k, keys) for k in keys]
    timed = any(t.latency for t in state.trials.values())
    header = ["trial", "status", "epoch", state.metric, "best", "best at", *(["latency ms", "MB", "GFLOPs"] if timed else []),
              "node", *short]
    best, nodes = state.best(), node_labels(list(state.trials.values()))
    rows = []
    for t in trials:
        name = (t.name + (" *" if best is not None and t.trial_id == best.trial_id else "") + (" (baseline)" if t.is_baseline else "")
                + (f" (re-check of {t.recheck_of})" if t.recheck_of else ""))
        lat = t.latency or {}
        speed = [fmt(lat.get("latency_ms")), fmt(lat.get("model_mb")), fmt(lat.get("gflops"))] if timed else []
        last = next((h[state.metric] for h in reversed(t.history) if state.metric in h), None)
        status = "OVER LATENCY" if t.infeasible else PAUSED if t.status == RUNNING and t.paused else t.status
        kind = (t.stopped_by or "").split(":")[0]
        if t.status == STOPPED and kind in STOP_KINDS and not t.infeasible:
            status += f" ({kind})"  # the whole reason: the ledger and the run's MLflow tag automl.stopped_by
        rows.append([name, status, str(t.epochs_trained), fmt(last), fmt(t.best_value),
                     fmt(t.best_epoch), *speed, nodes[t.trial_id], *[fmt(t.params.get(k)) for k in keys]])
    return header, rows


def counts_text(state: SearchState) -> str:
    """'6 finished, 2 running' (a paused trial counted as paused, not running), or 'no trials yet'."""
    counts = state.counts()
    paused = sum(t.status == RUNNING and t.paused for t in state.trials.values())
    if paused:
        counts[PAUSED], counts[RUNNING] = paused, counts[RUNNING] - paused
    return ", ".join(f"{v} {k.lower()}" for k, v in sorted(counts.items()) if v) or "no trials yet"


def format_table(state: SearchState, limit: int | None = None, width: int | None = None, show_errors: bool = False) -> str:
    """Plain-text trial table (what `automl status` prints; the live view passes the rows and the
    terminal width it has room for). With `limit`, the errors only when `show_errors`, the last few."""
    header, rows = trial_rows(state, limit)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)] if rows else [len(h) for h in header]

    def line(cells: list[str]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))

    out = [f"{state.algorithm} search ({state.status.lower()}): {counts_text(state)}; metric {state.metric} ({state.mode})"
           + "".join(f"; {part}" for part in (budget_text(state), best_text(state), phase_text(state)) if part),
           line(header), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    if len(rows) < len(state.trials):
        out.append(f"... and {len(state.trials) - len(rows)} more trials (all of them: automl status {state.results_dir} --all)")
    # A trial cut by Ctrl-C or SIGTERM (KILLED, `automl resume` continues it) did not fail: not an error.
    errors = [f"  {t.name}: {error_line(t.error)}" for t in state.trials.values() if t.error and t.status != KILLED]
    cut = [f"  {t.name}: {error_line(t.error)}" for t in state.trials.values() if t.error and t.status == KILLED]
    if errors and limit is None:
        out += ["errors:", *errors]
    elif errors and show_errors:  # the latest few: a big search's table is summarised, not its failures hidden
        out += [f"errors (the last {min(len(errors), ERROR_ROWS)} of {len(errors)}):", *errors[-ERROR_ROWS:]]
    if cut and (limit is None or show_errors):
        out += ["cut (not failed):", *cut[-ERROR_ROWS:]]
    return "\n".join(o[:width] if width else o for o in out)


def budget_text(state: SearchState) -> str:
    """The epoch budget spent, '' without one."""
    if state.budget is None:
        return ""
    return f"{state.epochs_trained()} of {state.budget_epochs()} budget epochs"


def best_text(state: SearchState) -> str:
    """The best trial so far against the baseline, '' before any result."""
    best, baseline = state.best(), state.baseline()
    if best is None:
        return ""
    text = f"best {best.name} {fmt(best.best_value)}"
    if baseline is not None and baseline.best_value is not None and baseline is not best:
        text += f" (baseline {fmt(baseline.best_value)})"
    return text


def phase_text(state: SearchState) -> str:
    """What a running search does once its trials have ended: the promotion of the trial the ranking
    and the re-check chose (`best_trial` is set then), which takes minutes, or with --no-promote the
    report; '' otherwise."""
    if state.status != RUNNING or not state.best_trial or not state.trials:
        return ""
    if any(t.status in (RUNNING, PENDING) for t in state.trials.values()):
        return ""
    if not (state.settings.get("promotion") or {}).get("promote", True):
        return "trials done; writing the report"
    return f"trials done; promoting {state.best_trial}"


def print_status(results_dir: str | Path, watch: float | None = None, echo: Callable[[str], None] = print,
                 everything: bool = False) -> int:
    """`automl status`: the table once, or refreshed every `watch` seconds until the search ends.
    Over STATUS_ROWS trials: the running ones and the best, unless `everything` (--all)."""
    while True:
        if starting(results_dir):
            echo(f"automl: the search in {results_dir} is starting (its driver checks the data and starts Ray)")
            if not watch:
                return 0
            time.sleep(watch)
            continue
        state = SearchState.load(results_dir)
        recorded = state.status
        observed(state)
        if watch:  # clear the terminal between refreshes; into a file or a pipe, a time stamp between them
            echo(("\x1b[2J\x1b[H" if sys.stdout.isatty() else "") + time.strftime("%H:%M:%S"))
        limit = None if everything or len(state.trials) <= STATUS_ROWS else STATUS_ROWS
        echo(format_table(state, limit=limit, show_errors=True))
        if state.status == "INTERRUPTED":
            why = ("no driver is running this search (it was killed, or its machine stopped)" if recorded == RUNNING
                   else "the search was stopped (Ctrl-C or SIGTERM)")
            echo(f"automl: {why}; continue it with: automl resume {shlex.quote(str(results_dir))}")
        elif recorded != state.status:
            echo("automl: a driver is resuming this search (its table is rewritten once Ray has started)")
        if not watch:
            return 0
        if state.status != "RUNNING":  # --watch tells a script how the search ended
            return 0 if state.status == "FINISHED" else 1
        time.sleep(watch)


class LiveTable:
    """`automl run --live`: one line per trial event, besides the live view (`automl.progress`)."""

    def __init__(self, echo: Callable[[str], None] = print) -> None:
        self.echo = echo
        self.seen: dict[str, tuple] = {}

    def __call__(self, state: SearchState) -> None:
        for t in state.trials.values():
            key = (t.status, len(t.history))
            if self.seen.get(t.trial_id) == key:
                continue
            self.seen[t.trial_id] = key
            last = t.history[-1].get(state.metric) if t.history else None
            self.echo(f"  {t.name:10s} {t.status:9s} epoch {len(t.history):3d}  {state.metric} {fmt(last)}  "
                      f"best {fmt(t.best_value)}")


def error_line(error: str | None) -> str:
    """The line of a recorded traceback that says what went wrong (its last non-empty line)."""
    lines = [line.strip() for line in (error or "").splitlines() if line.strip()]
    # (of a message of several items, "- the last one" without its bullet)
    return (lines[-1].removeprefix("- ") if lines else "no error recorded")[:300]


def summary(state: SearchState) -> str:
    """Best trial against the baseline, where things are, how to open the UI."""
    best, baseline = state.best(), state.baseline()
    lines = [f"automl: {count(len(state.trials), 'trial')} ({counts_text(state)})"
             + (f"; {state.ended}" if state.ended else "")]
    over = [t for t in state.trials.values() if t.infeasible]
    limit = (state.settings.get("search") or {}).get("max_latency_ms")
    if over:
        fastest = min(over, key=lambda t: (t.latency or {}).get("latency_ms", float("inf")))
        reference = " (the baseline trained as the reference, the others trained nothing)" if any(t.is_baseline for t in over) \
            else ", trained nothing"
        lines.append(f"  over the latency limit ({limit:g} ms): {len(over)} trial(s){reference}; the fastest of them, "
                     f"{fastest.name}, runs in {(fastest.latency or {}).get('latency_ms', float('nan')):.2f} ms")
    if best is None and over and not state.ranked():
        lines.append(f"automl: no trial meets the latency limit ({limit:g} ms): nothing is promoted; raise the limit, or search "
                     f"smaller structures (--backbones, --img-sizes, --embed-dims, --precisions int8)")
    elif best is None:
        failed = any(t.status == FAILED for t in state.trials.values())
        lines.append("automl: no trial produced a result; " + (f"the errors are above the summary (every one: automl "
                                                               f"status {shlex.quote(str(state.results_dir))} --all)" if failed else
                                                               "none failed: the search ended before any reported an epoch"))
    else:
        changed = {k: v for k, v in best.params.items() if baseline is None or baseline.params.get(k) != v}
        again = baseline is not None and best.recheck_of == baseline.name  # the spec's configuration, its second seed
        shown = ("the baseline's configuration, trained on the re-check seed" if again else
                 _values(changed) if changed else "the baseline itself")
        if best.latency:
            from automl.deploy import precision_of

            at = precision_of(best.latency)
            speed = f"; {best.latency['latency_ms']:.2f} ms on the deploy target" + (f" at {at}" if at else "")
        else:
            speed = ""
        label = "best feasible " if limit is not None else "best     "
        lines.append(f"  {label}{best.name}: {state.metric}={best.best_value:.4f} (epoch {best.best_epoch} of {best.epochs_trained}); {shown}{speed}")
        if baseline is not None and baseline.best_value is not None:
            lines.append(f"  baseline {baseline.name}: {state.metric}={baseline.best_value:.4f}  ({gain_words(best, baseline)})")
        if state.recheck is not None:
            r = state.recheck
            fresh = (f", on the fresh seed {r['recheck_gain']:+.4f} vs noise {r['gain_noise']:.4f}"
                     if r.get("recheck_gain") is not None and r.get("gain_noise") is not None else "")
            outcome = "confirmed" if r["confirmed"] else "the baseline led" if r.get("baseline_led") else "not confirmed"
            basis = f" ({r['basis']})" if r.get("basis") else ""
            lines.append(f"  re-check {recheck_role(r)} {r['leader']} vs baseline over {r['seeds']} seeds{basis}: gain {r['gain']:+.4f} "
                         f"+/- {r['gain_stderr']:.4f}{fresh} -> {outcome}; promoted {r['promoted']}")
        elif baseline is not None and best.name != baseline.name:
            lead = (f"; {best.name}'s lead over the baseline comes from one training of each and was not confirmed "
                    f"with another seed" if state.better(best.best_value, baseline.best_value) else "")
            lines.append(f"  re-check none: {no_recheck_reason(state)}{lead}")
        elif baseline is None:
            lines.append(f"  re-check none: no baseline trial (run_baseline is off), so nothing to re-check {best.name} "
                         "against; its score comes from one training")
    if state.pareto is not None:
        lines.append(f"  front    {len(state.pareto['front'])} of {len(state.pareto['points'])} trials on the "
                     f"{' / '.join(state.pareto['objectives'])} front; promoted {state.pareto['chosen']}: {state.pareto['rule']}")
    if state.budget is not None:
        total = state.budget_epochs()
        lines.append(f"  budget   {state.epochs_trained()} of {total} epochs trained (a budget of "
                     f"{count(state.budget['trainings'], 'training')} of {count(state.budget['spec_epochs'], 'epoch')})")
    layout = Layout.of(state.results_dir)
    if layout.best_dir.is_dir():
        lines.append(f"  artifacts  {layout.best_dir}")
    lines += [
        f"  report     {layout.report_dir / 'report.md'}",
        f"  MLflow UI  {_ui_address(state) or 'automl ui ' + shlex.quote(str(layout.root))}",  # quoted: a command to paste
    ]
    return "\n".join(lines)


def _ui_address(state: SearchState) -> str:
    """The search's parent run on the MLflow server it was tracked on ('' for its own store, which
    `automl ui` opens)."""
    uri = state.mlflow_tracking_uri or ""
    if not uri.startswith(("http://", "https://")):
        return ""
    run = f"/runs/{state.mlflow_parent_run_id}" if state.mlflow_parent_run_id else ""
    return f"{uri.rstrip('/')}/#/experiments/{state.mlflow_experiment_id}{run}" if state.mlflow_experiment_id else uri


def no_recheck_reason(state: SearchState) -> str:
    """Why no re-check compared the search's best with the baseline."""
    baseline, b = state.baseline(), state.budget
    if baseline is not None and baseline.infeasible:
        return ("the baseline (the spec's own model) is over the latency limit, so no leader is compared with it; "
                "the re-check's epochs went to the search")
    if b is None:
        if state.algorithm == "pbt":
            return "PBT runs none (its population is sized by automl_population_size, not by --budget)"
        return "a search without an epoch budget (--max-trials, automl_max_recommendations) runs none; --budget does"
    from automl.budget import RECHECK_MIN_BUDGET, recheck_fits  # here: automl.budget imports Ray

    if not recheck_fits(b["trainings"] * b["spec_epochs"], b["trial_epochs"]):
        need = RECHECK_MIN_BUDGET * b["trial_epochs"]
        return (f"a budget of {count(state.budget_epochs(), 'epoch')} has no room for one (it needs {count(need, 'epoch')}: "
                f"{RECHECK_MIN_BUDGET} trainings of a trial's {count(b['trial_epochs'], 'epoch')}, two of them to re-check "
                "the leader)")
    if b.get("recheck"):  # planned, but the search ended first
        started = [t.name for t in state.trials.values() if t.recheck_of]
        when = f"before it ended ({', '.join(started)} cut short)" if started else "before it"
        if any((t.stopped_by or "").startswith("time:") for t in state.trials.values()):
            return f"the time budget (--time-budget) ran out {when}"
        return f"the search ended {when}"
    return "not run in this search (--no-recheck, or a grid)"


def gain_words(best: Any, baseline: Any) -> str:
    """The best trial's lead over the baseline, in words: a re-check training of the baseline's own
    configuration is seed noise, not a gain."""
    delta = best.best_value - baseline.best_value
    if best.recheck_of == baseline.name:
        return f"{best.name} {delta:+.4f}: the same configuration on another seed, seed noise, not a gain"
    return f"best {delta:+.4f}"


def recheck_role(recheck: dict) -> str:
    """What the re-checked trial was in the search: its leader, or the runner-up when the baseline led."""
    return "runner-up" if recheck.get("baseline_led") else "leader"
