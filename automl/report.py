"""The search report (markdown + PNG plots) in ``report/``.

Everything here reads only the state file, so it works during a search, after it, and after a
killed driver. Plots (matplotlib, Agg backend):

- ``history.png``: optimisation history, each trial's best value and the best so far;
- ``importance.png``: parameter importance. A simple, dependency-free estimate: for each parameter,
  the share of the variance of the trials' best values explained by it (squared correlation for
  numbers, on a log scale where all values are positive and span more than a decade; between-group
  variance for categories). With few trials it is a hint, not a measurement;
- ``parallel.png``: parallel coordinates of the parameters, coloured by the best value;
- ``best_curves.png``: the best trial's and the baseline's metric per epoch;
- ``baseline_vs_best.png``: the baseline against the best trial.

Files are written to a temporary folder and moved into place, so ``report/`` is never half written.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from automl.console import trial_rows
from automl.layout import Layout, trial_number
from automl.state import SearchState
from segformer.fileio import atomic_write_text
from segformer.text import fmt

# ------------------------------------------------------------------------------ report
def _numeric(values: list[Any]) -> list[float] | None:
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return None
        out.append(float(v))
    return out


def importances(state: SearchState) -> dict[str, float]:
    """Share of the variance of the best values explained by each parameter (0..1)."""
    trials = [t for t in state.ranked()]
    if len(trials) < 3:
        return {}
    y = [t.best_value for t in trials]
    mean_y = sum(y) / len(y)
    var_y = sum((v - mean_y) ** 2 for v in y)
    if var_y == 0:
        return {}
    result: dict[str, float] = {}
    for key in sorted({k for t in trials for k in t.params}):
        values = [t.params.get(key) for t in trials]
        numbers = _numeric(values)
        if numbers is not None:
            if min(numbers) > 0 and max(numbers) / min(numbers) > 10:
                numbers = [math.log10(v) for v in numbers]
            mx = sum(numbers) / len(numbers)
            sxx = sum((v - mx) ** 2 for v in numbers)
            if sxx == 0:
                continue
            sxy = sum((a - mx) * (b - mean_y) for a, b in zip(numbers, y))
            result[key] = sxy * sxy / (sxx * var_y)
        else:
            groups: dict[str, list[float]] = {}
            for v, target in zip(values, y):
                groups.setdefault(str(v), []).append(target)
            if len(groups) < 2:
                continue
            between = sum(len(g) * (sum(g) / len(g) - mean_y) ** 2 for g in groups.values())
            result[key] = between / var_y
    return dict(sorted(result.items(), key=lambda kv: -kv[1]))


def _plots(state: SearchState, folder: Path) -> list[str]:
    """Every plot that has data, written into `folder`; returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    ordered = sorted((t for t in state.trials.values() if t.best_value is not None), key=lambda t: t.name)
    for name, draw in (("history.png", _history), ("importance.png", _importance), ("parallel.png", _parallel),
                       ("best_curves.png", _best_curves), ("baseline_vs_best.png", _baseline_vs_best),
                       ("pareto.png", _pareto)):
        fig = draw(plt, state, ordered)
        if fig is not None:
            fig.tight_layout()
            fig.savefig(folder / name, dpi=100)
            plt.close(fig)
            written.append(name)
    return written


def _history(plt: Any, state: SearchState, ordered: list[Any]) -> Any:
    """Each trial's best value and the best so far, by trial number."""
    if not ordered:
        return None
    sign = 1 if state.mode == "max" else -1
    fig, ax = plt.subplots(figsize=(6, 3.5))
    xs = [trial_number(t.name) if trial_number(t.name) is not None else i for i, t in enumerate(ordered)]
    ys = [t.best_value for t in ordered]
    running, best_so_far = [], None
    for v in ys:
        best_so_far = v if best_so_far is None or sign * v > sign * best_so_far else best_so_far
        running.append(best_so_far)
    ax.scatter(xs, ys, label=f"trial best {state.metric}")
    ax.step(xs, running, where="post", color="C1", label="best so far")
    ax.set_xlabel("trial"), ax.set_ylabel(state.metric), ax.set_title("Optimisation history"), ax.legend()
    return fig


def _importance(plt: Any, state: SearchState, ordered: list[Any]) -> Any:
    imp = importances(state)
    if not imp:
        return None
    fig, ax = plt.subplots(figsize=(6, 0.4 * len(imp) + 1.2))
    names = list(imp)[::-1]
    ax.barh(names, [imp[n] for n in names])
    ax.set_xlabel("share of variance explained"), ax.set_title("Parameter importance (simple estimate)")
    return fig


def _parallel(plt: Any, state: SearchState, ordered: list[Any]) -> Any:
    """Parallel coordinates of the parameters (log scale where they span decades), coloured by the best value."""
    keys = sorted({k for t in ordered for k in t.params})
    if not ordered or not keys:
        return None
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(keys)), 4))
    lo, hi = min(t.best_value for t in ordered), max(t.best_value for t in ordered)
    cmap = plt.get_cmap("viridis")
    columns = []
    for key in keys:
        values = [t.params.get(key) for t in ordered]
        numbers = _numeric(values)
        if numbers is None:
            cats = sorted({str(v) for v in values})
            numbers = [cats.index(str(v)) / max(1, len(cats) - 1) for v in values]
        else:
            if min(numbers) > 0 and max(numbers) / min(numbers) > 10:
                numbers = [math.log10(v) for v in numbers]
            a, b = min(numbers), max(numbers)
            numbers = [(v - a) / (b - a) if b > a else 0.5 for v in numbers]
        columns.append(numbers)
    for i, t in enumerate(ordered):
        shade = (t.best_value - lo) / (hi - lo) if hi > lo else 1.0
        ax.plot(range(len(keys)), [c[i] for c in columns], color=cmap(shade), alpha=0.8)
    ax.set_xticks(range(len(keys)), [k.split(".")[-1] for k in keys], rotation=30, ha="right")
    ax.set_yticks([]), ax.set_title(f"Parallel coordinates (colour: {state.metric})")
    return fig


def _best_curves(plt: Any, state: SearchState, ordered: list[Any]) -> Any:
    """The best trial's and the baseline's metric per epoch."""
    best, baseline = state.best(), state.baseline()
    if best is None:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for t, label in ((best, f"best ({best.name})"), (baseline, "baseline")):
        if t is None or (t is best and label == "baseline"):
            continue
        epochs = [h.get("epoch", i + 1) for i, h in enumerate(t.history) if state.metric in h]
        ax.plot(epochs, [h[state.metric] for h in t.history if state.metric in h], marker="o", label=label)
    ax.set_xlabel("epoch"), ax.set_ylabel(state.metric), ax.set_title("Best trial and baseline per epoch"), ax.legend()
    return fig


def _baseline_vs_best(plt: Any, state: SearchState, ordered: list[Any]) -> Any:
    best, baseline = state.best(), state.baseline()
    if best is None or baseline is None or baseline.best_value is None:
        return None
    fig, ax = plt.subplots(figsize=(4, 3.5))
    ax.bar(["baseline", "best"], [baseline.best_value, best.best_value], color=["C7", "C2"])
    ax.set_ylabel(state.metric), ax.set_title("Baseline vs best")
    return fig


def _pareto(plt: Any, state: SearchState, ordered: list[Any]) -> Any:
    from automl.pareto import plot

    return plot(plt, state, state.pareto, (state.settings.get("search") or {}).get("max_latency_ms"))


def _pareto_lines(state: SearchState) -> list[str]:
    p = state.pareto
    if not p:
        return []
    metric, cost = (o.split(":")[0] for o in p["objectives"])
    lines = ["## Accuracy against latency (Pareto front)", "",
             f"{len(p['front'])} of {len(p['points'])} trials are on the front; promoted `{p['chosen']}`: {p['rule']}.", "",
             f"| trial | {metric} | {cost} | |", "|---|---|---|---|"]
    for member in p["front"]:
        mark = "promoted" if member["trial"] == p["chosen"] else "baseline" if member["baseline"] else ""
        lines.append(f"| `{member['trial']}` | {member[metric]:.4f} | {member[cost]:.3f} | {mark} |")
    return [*lines, ""]


def _markdown(state: SearchState, plots: list[str]) -> str:
    best, baseline = state.best(), state.baseline()
    header, rows = trial_rows(state)
    lines = [f"# AutoML report: {state.skill}, {state.algorithm}", "",
             f"- results: `{state.results_dir}`", f"- metric: `{state.metric}` ({state.mode}), ranked by each trial's best epoch",
             "- trials: " + (", ".join(f"{v} {k.lower()}" for k, v in sorted(state.counts().items())) or "none"), ""]
    if best is not None:
        lines += ["## Best trial", "", f"`{best.name}`: {state.metric} = {best.best_value:.4f} at epoch {best.best_epoch}", ""]
        lines += ["| parameter | best | baseline |", "|---|---|---|"]
        for key in sorted(best.params):
            lines.append(f"| `{key}` | {fmt(best.params[key])} | {fmt(baseline.params.get(key)) if baseline else '-'} |")
        if baseline is not None and baseline.best_value is not None:
            lines += ["", f"Baseline (`{baseline.name}`, the spec's own values): {baseline.best_value:.4f}; "
                          f"improvement {best.best_value - baseline.best_value:+.4f}."]
        lines.append("")
    lines += _recheck_lines(state)
    lines += _pareto_lines(state)
    if state.promotion:
        lines += ["## Promotion", ""]
        for name, outcome in state.promotion.get("steps", {}).items():
            status = outcome if isinstance(outcome, str) else outcome.get("status", "done")
            lines.append(f"- {name}: {status}")
        if isinstance(state.promotion.get("registry"), dict):
            reg = state.promotion["registry"]
            lines.append(f"- registry: `{reg['model']}` version {reg['version']} alias `@{reg['alias']}`")
        lines.append("")
    lines += ["## Trials", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    imp = importances(state)
    if imp:
        lines += ["", "## Parameter importance (simple estimate)", ""]
        lines += [f"- `{k}`: {v:.2f}" for k, v in imp.items()]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def _fresh_gain(r: dict) -> str:
    """The re-check seed's gain against the noise it must exceed (verdicts written before that rule have neither)."""
    if r.get("recheck_gain") is None or r.get("gain_noise") is None:
        return ""
    return (f" On the re-check seed alone (untouched by the search's selection) the gain is {r['recheck_gain']:+.4f}; "
            f"the gain moved by {r['gain_noise']:.4f} (SD of one paired gain) between the two seeds.")


def _recheck_lines(state: SearchState) -> list[str]:
    """The budget spent, the re-check's verdict (gain +/- its standard error) and the test split's scores."""
    lines: list[str] = []
    if state.budget is not None:
        total = state.budget_epochs()
        lines += ["## Budget", "", f"{state.epochs_trained()} of {total} epochs trained ({state.budget['trainings']:g} "
                                   f"trainings of the spec's {state.budget['spec_epochs']} epochs, re-checks included).", ""]
    r = state.recheck
    if r is not None:
        lines += ["## Re-check (another seed) before promotion", "",
                  "| | the search's seed | the re-check's seed (+1) |", "|---|---|---|",
                  f"| leader `{r['leader']}` | {r['leader_values'][0]:.4f} | {r['leader_values'][1]:.4f} |",
                  f"| baseline `{r['baseline']}` | {r['baseline_values'][0]:.4f} | {r['baseline_values'][1]:.4f} |", "",
                  f"Gain {r['gain']:+.4f} +/- {r['gain_stderr']:.4f} (mean and standard error of the paired gains; seed-to-seed spread of one training "
                  f"{r['seed_noise']:.4f}).{_fresh_gain(r)} {r['reason']}", ""]
    final = state.final_evaluation or {}
    if "skipped" in final:
        lines += ["## Final evaluation (test split)", "", f"Skipped: {final['skipped']}.", ""]
    elif final:
        lines += ["## Final evaluation (test split, untouched by the search)", "", "| model | trials | test mIoU | mean |",
                  "|---|---|---|---|"]
        for role in ("promoted", "baseline", "leader"):
            row = final.get(role)
            if row and row.get("mean") is not None:
                lines.append(f"| {role} | {', '.join(row['trials'])} | {', '.join(f'{v:.4f}' for v in row['test_miou'])} | "
                             f"{row['mean']:.4f} |")
        lines.append("")
    return lines


def write_report(state: SearchState) -> Path:
    """Write RESULTS_DIR/report/{report.md, *.png} atomically; returns the markdown path."""
    layout = Layout.of(state.results_dir)
    results, final = layout.root, layout.report_dir
    tmp = Path(tempfile.mkdtemp(prefix=".report.", dir=results))
    try:
        plots = _plots(state, tmp)
        atomic_write_text(tmp / "report.md", _markdown(state, plots))
        old = results / f".report.old.{os.getpid()}"
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final / "report.md"
