"""The search report: ``report/report.md``, the same as a self-contained ``report/report.html``, and its PNG plots.

Made from the state file (`automl.state`) and, for the overlays only, the two models' checkpoints
and the validation split. It works after a search and after a killed driver (`automl report DIR`).

The Optuna part: an in-memory Optuna study is rebuilt from the ledger (:func:`ledger_study`), one
Optuna trial per trial in the order of their names; the trials that ended with a result (finished,
stopped early by the scheduler, or cut: counted as the ranking counts them, by their best epoch) are
complete, the others failed. From that study:

- ``importance.png``: parameter importance, Optuna's fANOVA (PED-ANOVA where fANOVA cannot run;
  the report says which), skipped with the reason when fewer than :data:`MIN_IMPORTANCE_TRIALS`
  trials have a result or fewer than two parameters varied;
- ``history.png``, ``parallel.png``, ``slice.png`` and ``contour.png`` (the two most important
  parameters, from :data:`MIN_CONTOUR_TRIALS` trials): Optuna's matplotlib plots.

Our own plots, where Optuna has none:

- ``learning_curves.png``: the metric per epoch of the :data:`LEADING` best trials and the baseline;
- ``baseline_vs_best.png``: the difference between the best trial and the baseline. With a
  re-check (`automl.budget.verdict`) it is drawn as the gain with its noise (the two seeds' paired
  gains, their mean +/- its standard error, the band the gain must leave); without one, both values
  on an axis zoomed around them, and the report says that no re-check measured the noise;
- ``overlays.png``: the baseline's and the promoted model's predictions on the same
  :data:`OVERLAY_IMAGES` validation images (image | ground truth | baseline | promoted), each
  model loaded from its checkpoint and run on the CPU with the segformer package's own loading and
  preprocessing; skipped with the reason when a checkpoint or the data is missing;
- ``pareto.png``: accuracy against latency (`automl.pareto`), with --objectives.

``trials.csv`` holds the whole trial table. The report's own table holds every trial up to
:data:`REPORT_ROWS`; a bigger search's shows the running trials and the best (as `automl status`
does) and points at the CSV.

Files are written to a temporary folder and moved into place, so ``report/`` is never half written.
"""

from __future__ import annotations

import base64
import html
import math
import os
import re
import shutil
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from automl.console import error_line, gain_words, no_recheck_reason, recheck_role, trial_rows
from automl.finals import size_note, uneven_epochs, uneven_note
from automl.layout import Layout, trial_number
from automl.state import FAILED, FINISHED, KILLED, STOPPED, SearchState, TrialRecord
from segformer.fileio import atomic_write_text, staging_dir
from segformer.text import count, fmt

MIN_IMPORTANCE_TRIALS = 4  # trials with a result an importance needs
MIN_CONTOUR_TRIALS = 6  # ... and a contour plot
LEADING = 5  # learning curves of the best trials (and the baseline)
OVERLAY_IMAGES = 3  # validation images the overlays show
ENDED = (FINISHED, STOPPED, KILLED)  # trials whose result counts (`automl.state`)
MANY_POINTS = 300  # trials from which the plots' markers and lines are thinned (`_thin`)
REPORT_ROWS = 100  # trial table rows of the report; every trial is in trials.csv
FAILED_ROWS = 20  # failed trials whose error the report shows
TRIALS_CSV = "trials.csv"

# ------------------------------------------------------------------------------ the document
# The report is a list of blocks, rendered once as markdown and once as HTML.


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Para:
    text: str  # markdown inline: `code` only


@dataclass(frozen=True)
class Items:
    items: list[str]


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class Figure:
    file: str  # a PNG in the report folder
    caption: str


Block = Heading | Para | Items | Table | Figure


def to_markdown(blocks: list[Block]) -> str:
    lines: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            lines += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Para):
            lines += [b.text, ""]
        elif isinstance(b, Items):
            lines += [f"- {item}" for item in b.items] + [""]
        elif isinstance(b, Table):
            lines += ["| " + " | ".join(_cell(c) for c in b.header) + " |", "|" + "---|" * len(b.header)]
            lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in b.rows] + [""]
        else:
            lines += [f"![{b.caption}]({b.file})", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")


_CSS = """body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}h1{border-bottom:2px solid #ddd;padding-bottom:.2em}h2{margin-top:1.6em;border-bottom:1px solid #eee}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f4f4f4}tr:nth-child(even) td{background:#fafafa}code{background:#f2f2f2;padding:0 .25em;border-radius:3px}
figure{margin:1em 0}img{max-width:100%;height:auto}figcaption{color:#555;font-size:.9em}"""


def to_html(blocks: list[Block], folder: Path) -> str:
    """One self-contained page: inline CSS, every plot embedded as a data URI, nothing fetched."""
    title = next((b.text for b in blocks if isinstance(b, Heading) and b.level == 1), "AutoML report")
    body: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            body.append(f"<h{b.level}>{_inline(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            body.append(f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, Items):
            body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{_inline(c)}</th>" for c in b.header)
            rows = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in b.rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        else:
            data = base64.b64encode((folder / b.file).read_bytes()).decode("ascii")
            body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(b.caption)}">'
                        f"<figcaption>{_inline(b.caption)}</figcaption></figure>")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


def _inline(text: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(str(text), quote=False))


# ------------------------------------------------------------------------------ the Optuna study
def _numeric(values: list[Any]) -> list[float] | None:
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return None
        out.append(float(v))
    return out


def _choice(value: Any) -> Any:
    """A value Optuna's CategoricalDistribution takes (None, bool, int, float, str)."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def _distribution(values: list[Any]) -> tuple[Any, list[Any]]:
    """The Optuna distribution of one parameter and the values as it holds them.

    Numbers are an int or float range over the values seen, on a log scale where all are positive
    and span more than a decade (lr, weight decay); anything else (bools, strings, a mix) is
    categorical. fANOVA's forest splits do not depend on the scale; the plots' axes do."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    numbers = _numeric(values)
    if numbers is None:
        converted = [_choice(v) for v in values]
        choices = sorted(set(converted), key=lambda c: (type(c).__name__, str(c)))
        return CategoricalDistribution(choices), converted
    low, high = min(numbers), max(numbers)
    log = low > 0 and high / low > 10
    if all(isinstance(v, int) for v in values):
        return IntDistribution(int(low), int(high), log=log and low >= 1), [int(n) for n in numbers]
    return FloatDistribution(low, high, log=log), numbers


@dataclass
class LedgerStudy:
    """The search as an Optuna study (:func:`ledger_study`)."""

    study: Any  # optuna.Study
    completed: int  # trials with a result
    varying: list[str]  # parameters that took two values or more among them


def _by_name(state: SearchState) -> list[TrialRecord]:
    def key(t: TrialRecord) -> tuple[int, str]:
        number = trial_number(t.name)
        return (number if number is not None else 10**9, t.name)

    return sorted(state.trials.values(), key=key)


@contextmanager
def _quiet_optuna() -> Iterator[None]:
    """No "study created" lines and no experimental warnings from Optuna while the report is made."""
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def ledger_study(state: SearchState) -> LedgerStudy:
    """An in-memory Optuna study of the ledger: trial k is the k-th trial by name; the trials that
    ended with a ranked result are complete with their best value, every other one failed (re-checks,
    trials over the latency limit, failed, running), and those after the last result are left out.
    Distributions: see :func:`_distribution`."""
    import optuna
    from optuna.trial import TrialState, create_trial

    ranked = {t.trial_id for t in state.ranked() if t.status in ENDED}
    records = _by_name(state)
    usable = [t for t in records if t.trial_id in ranked]
    if usable:  # none after the last result (the re-checks come last): the history's axis ends at its last point
        records = records[:records.index(usable[-1]) + 1]
    keys = sorted(set.intersection(*(set(t.params) for t in usable))) if usable else []
    distributions, columns = {}, {}
    for key in keys:
        distributions[key], columns[key] = _distribution([t.params[key] for t in usable])
    varying = [k for k in keys if len(set(map(str, columns[k]))) > 1]
    with _quiet_optuna():
        study = optuna.create_study(direction="maximize" if state.mode == "max" else "minimize")
        row = {t.trial_id: i for i, t in enumerate(usable)}
        for t in records:
            if t.trial_id in row:
                i = row[t.trial_id]
                study.add_trial(create_trial(value=float(t.best_value), params={k: columns[k][i] for k in keys},
                                             distributions=distributions, user_attrs={"trial": t.name}))
            else:
                study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"trial": t.name}))
    return LedgerStudy(study, len(usable), varying)


@dataclass
class Importance:
    """Parameter importance from the ledger's study, or why there is none."""

    values: dict[str, float] = field(default_factory=dict)  # normalized to sum 1, most important first
    evaluator: str = ""  # "fANOVA" or "PED-ANOVA"
    trials: int = 0
    note: str = ""  # why fANOVA was not used
    skipped: str | None = None
    evaluator_object: Any = None  # what made `values` (Optuna's plot asks it again)


def _fanova() -> Any:
    import optuna

    return optuna.importance.FanovaImportanceEvaluator(seed=0)


def _ped_anova(trials: int) -> Any:
    import optuna

    # The best 10 % of the trials, but never fewer than two of them (PED-ANOVA's smallest regime).
    return optuna.importance.PedAnovaImportanceEvaluator(target_quantile=min(0.5, max(0.1, 2 / max(trials, 1))))


def importance(state: SearchState, ledger: LedgerStudy | None = None) -> Importance:
    """Optuna's fANOVA (seed 0) on the ledger's study; PED-ANOVA where fANOVA cannot run."""
    import optuna

    ledger = ledger or ledger_study(state)
    n = ledger.completed
    if n < MIN_IMPORTANCE_TRIALS:
        rechecks = sum(1 for t in state.trials.values() if t.recheck_of and t.best_value is not None)  # with a result
        left_out = f", besides {count(rechecks, 're-check')} (trained again on another seed, not ranked)" if rechecks else ""
        return Importance(trials=n, skipped=f"{n} search trial(s) have a result{left_out}; an importance needs "
                                            f"at least {MIN_IMPORTANCE_TRIALS}")
    if len(ledger.varying) < 2:
        which = f"only one parameter (`{ledger.varying[0]}`)" if ledger.varying else "no parameter"
        return Importance(trials=n, skipped=f"{which} varied among the trials with a result; an importance compares "
                                            "two or more")
    values = [t.value for t in ledger.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    if max(values) == min(values):
        return Importance(trials=n, skipped=f"every trial reached the same {state.metric} ({values[0]:.4f})")
    with _quiet_optuna():
        try:
            evaluator = _fanova()
            result = optuna.importance.get_param_importances(ledger.study, evaluator=evaluator, params=ledger.varying)
            name, note = "fANOVA", ""
        except (ImportError, RuntimeError, ValueError) as err:  # e.g. scikit-learn, which fANOVA fits with, missing
            name, note = "PED-ANOVA", f"fANOVA could not run ({type(err).__name__}: {err})"
            try:
                evaluator = _ped_anova(n)
                result = optuna.importance.get_param_importances(ledger.study, evaluator=evaluator, params=ledger.varying)
            except (ImportError, RuntimeError, ValueError) as again:
                return Importance(trials=n, skipped=f"{note[:-1]}, nor PED-ANOVA ({type(again).__name__}: {again})")
    ordered = {k: float(v) for k, v in sorted(result.items(), key=lambda kv: -kv[1])}
    return Importance(ordered, name, n, note, evaluator_object=evaluator)


# ------------------------------------------------------------------------------ plots
@contextmanager
def _pyplot() -> Iterator[Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    yield plt


def _save(fig: Any, folder: Path, name: str) -> str:
    import matplotlib.pyplot as plt

    fig.savefig(folder / name, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return name


def _thin(fig: Any, points: int) -> None:
    """Markers and lines of a plot of `points` trials made small and see-through when there are so many
    (Optuna draws every trial at one size): a search of thousands stays readable, not one blot."""
    from matplotlib.collections import LineCollection, PathCollection

    if points <= MANY_POINTS:
        return
    for ax in fig.axes:
        for artist in ax.collections:
            if type(artist) is PathCollection:
                artist.set_sizes([max(1.0, 8000.0 / points)])
                artist.set_alpha(0.5)
                artist.set_edgecolor("none")
            elif type(artist) is LineCollection:
                artist.set_alpha(max(0.05, min(0.5, 100.0 / points)))
                artist.set_linewidth(0.5)


def _optuna_plot(folder: Path, name: str, draw: Any, *args: Any, size: tuple[float, float] | None = None,
                 title: str | None = None, points: int = 0, whole_x: bool = False, lines_seen: bool = False,
                 **kwargs: Any) -> str | None:
    """One of Optuna's matplotlib plots as `name` (its style change undone afterwards; thinned for
    many `points`, see `_thin`; `lines_seen`: see `_lines_seen`); None if it cannot be drawn."""
    import matplotlib
    import numpy as np

    with _pyplot(), matplotlib.rc_context(), _quiet_optuna():
        try:
            axes = draw(*args, **kwargs)
        except (ValueError, RuntimeError, ImportError):
            return None
        first = np.asarray(axes).ravel()[0]
        fig = first.figure
        if title is not None:
            first.set_title(title)
        if size is not None:
            fig.set_size_inches(*size)
        if whole_x:  # trial numbers: no ticks at 0.5, 1.5
            from matplotlib.ticker import MaxNLocator

            first.xaxis.set_major_locator(MaxNLocator(integer=True))
        if lines_seen:
            _lines_seen(fig, first)
        _thin(fig, points)
        return _save(fig, folder, name)


def _lines_seen(fig: Any, ax: Any) -> None:
    """Optuna's parallel coordinates colour the worst trial white on white (the low end of "Blues"),
    and the best runs along the frame's top edge: with a few trials the plot looked empty. The
    colours start at a light blue, and every axis (the objective's and each parameter's twin, which
    must keep one scale) gets a margin."""
    import matplotlib
    import numpy as np
    from matplotlib.collections import LineCollection
    from matplotlib.colors import LinearSegmentedColormap

    for collection in ax.collections:
        if isinstance(collection, LineCollection) and collection.get_cmap() is not None:
            blues = matplotlib.colormaps[collection.get_cmap().name]
            low, high = (0.35, 1.0) if not collection.get_cmap().name.endswith("_r") else (0.0, 0.65)
            collection.set_cmap(LinearSegmentedColormap.from_list("blues_seen", blues(np.linspace(low, high, 256))))
    for axis in fig.axes:
        if axis.get_label() == "<colorbar>":
            continue
        lo, hi = axis.get_ylim()
        if axis.get_yscale() == "log":  # (a log-scaled parameter: the same margin on its log scale)
            lo, hi = math.log10(lo), math.log10(hi)
            pad = 0.04 * (hi - lo)
            axis.set_ylim(10 ** (lo - pad), 10 ** (hi + pad))
        else:
            pad = 0.04 * (hi - lo)
            axis.set_ylim(lo - pad, hi + pad)


def _study_plots(state: SearchState, ledger: LedgerStudy, imp: Importance, folder: Path) -> dict[str, str]:
    """Optuna's plots of the ledger's study: {"history"|"importance"|"parallel"|"slice"|"contour": file}."""
    from optuna.visualization import matplotlib as ovm

    out: dict[str, str] = {}
    if ledger.completed == 0:
        return out
    metric, n = state.metric, ledger.completed
    drawn = {"history": _optuna_plot(folder, "history.png", ovm.plot_optimization_history, ledger.study,
                                     target_name=metric, size=(7, 4), points=n, whole_x=True)}
    if imp.values:
        drawn["importance"] = _optuna_plot(folder, "importance.png", ovm.plot_param_importances, ledger.study,
                                           evaluator=imp.evaluator_object, params=list(imp.values), target_name=metric,
                                           title=f"Parameter importance ({imp.evaluator}, {imp.trials} trials)",
                                           size=(7, 0.45 * len(imp.values) + 1.6))
    if ledger.varying and ledger.completed >= 2:
        drawn["parallel"] = _optuna_plot(folder, "parallel.png", ovm.plot_parallel_coordinate, ledger.study,
                                         params=ledger.varying, target_name=metric, points=n, lines_seen=True,
                                         size=(max(7, 1.5 * len(ledger.varying) + 2), 4.5))
        drawn["slice"] = _optuna_plot(folder, "slice.png", ovm.plot_slice, ledger.study, params=ledger.varying,
                                      target_name=metric, size=(min(3.2 * len(ledger.varying) + 1.5, 18), 3.6), points=n)
    if len(imp.values) >= 2 and ledger.completed >= MIN_CONTOUR_TRIALS:
        drawn["contour"] = _optuna_plot(folder, "contour.png", ovm.plot_contour, ledger.study,
                                        params=list(imp.values)[:2], target_name=metric, size=(7, 5), points=n)
    return {k: v for k, v in drawn.items() if v}


def _learning_curves(plt: Any, state: SearchState) -> Any:
    """The metric per epoch of the best trials and the baseline."""
    chosen = state.ranked()[:LEADING]
    baseline = state.baseline()
    if baseline is not None and baseline.history and baseline.trial_id not in {t.trial_id for t in chosen}:
        chosen.append(baseline)
    chosen = [t for t in chosen if any(state.metric in h for h in t.history)]
    if not chosen:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, t in enumerate(chosen):
        points = [(h.get("epoch", k + 1), h[state.metric]) for k, h in enumerate(t.history) if state.metric in h]
        label = f"{t.name}{' (baseline)' if t.is_baseline else ''}: best {fmt(t.best_value)}"
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3,
                color="black" if t.is_baseline else f"C{i}", linestyle="--" if t.is_baseline else "-", label=label)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("epoch"), ax.set_ylabel(state.metric)
    others = sum(not t.is_baseline for t in chosen)  # the baseline among the best is one of the lines, not another
    ax.set_title(f"Learning curves: the {count(others, 'best trial') if others > 1 else 'best trial'}"
                 + (" and the baseline" if any(t.is_baseline for t in chosen) else ""))
    ax.legend(fontsize=8)
    return fig


def _compared(state: SearchState) -> tuple[TrialRecord, TrialRecord] | None:
    """(the best trial, the baseline) to compare without a re-check; the best searched trial when the
    baseline itself led."""
    best, baseline = state.best(), state.baseline()
    if best is None or baseline is None or baseline.best_value is None:
        return None
    if best.trial_id == baseline.trial_id:
        others = [t for t in state.ranked() if t.trial_id != baseline.trial_id]
        if not others:
            return None
        best = others[0]
    return best, baseline


def _baseline_vs_best(plt: Any, state: SearchState) -> Any:
    r = state.recheck
    if r is not None:
        return _gain_chart(plt, state, r)
    pair = _compared(state)
    if pair is None:
        return None
    best, baseline = pair
    values = [baseline.best_value, best.best_value]
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter([0, 1], values, s=80, color=["C7", "C2"], zorder=3)
    for x, v in zip((0, 1), values):
        ax.annotate(f"{v:.4f}", (x, v), textcoords="offset points", xytext=(12, -4))
    ax.annotate("", xy=(0.5, best.best_value), xytext=(0.5, baseline.best_value),
                arrowprops={"arrowstyle": "->", "color": "C3"})
    ax.text(0.55, (values[0] + values[1]) / 2, f"{best.best_value - baseline.best_value:+.4f}", color="C3", va="center")
    span = abs(values[1] - values[0]) or max(abs(values[0]) * 0.01, 1e-3)
    ax.set_ylim(min(values) - 0.6 * span, max(values) + 0.6 * span)  # zoomed: the axis does not start at 0
    ax.set_xlim(-0.5, 1.5)
    ax.set_xticks([0, 1], [f"baseline\n{baseline.name}", f"best\n{best.name}"])
    ax.set_ylabel(state.metric)
    ax.set_title("Baseline vs best (axis zoomed)\nno re-check: the noise of this difference is unknown", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return fig


def _gain_chart(plt: Any, state: SearchState, r: dict[str, Any]) -> Any:
    """The leader's gain over the baseline on each seed, their mean +/- its standard error, and the
    band of the gain's seed-to-seed noise (the re-check confirms a fresh-seed gain above it)."""
    sign = 1.0 if state.mode == "max" else -1.0
    gains = [sign * (c - b) for c, b in zip(r["leader_values"], r["baseline_values"])]
    noise = r.get("gain_noise")
    fig, ax = plt.subplots(figsize=(7, 3.4))
    if noise:
        ax.axvspan(-noise, noise, color="C7", alpha=0.2,
                   label=f"within the noise (+/- {noise:.4f}: the gain's noise between seeds)")
    ax.axvline(0, color="black", linewidth=1)
    ax.scatter(gains, [2, 1], color="C0", zorder=3, label="paired gain of one seed")
    ax.errorbar([r["gain"]], [0], xerr=[[r["gain_stderr"]], [r["gain_stderr"]]], fmt="o", color="C3", capsize=6,
                zorder=3, label=f"mean {r['gain']:+.4f} +/- {r['gain_stderr']:.4f} (standard error)")
    for y, g in zip((2, 1, 0), (*gains, r["gain"])):
        ax.annotate(f"{g:+.4f}", (g, y), textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8)
    reach = max([abs(g) for g in gains] + [abs(r["gain"]) + r["gain_stderr"], noise or 0.0, 1e-4])
    ax.set_xlim(-1.3 * reach, 1.3 * reach)
    ax.set_ylim(-0.8, 2.8)
    ax.set_yticks([2, 1, 0], ["search seed", "re-check seed", "both seeds"])
    better = "higher" if state.mode == "max" else "lower"
    basis = f", {r['basis']}" if r.get("basis") else ""
    role = recheck_role(r)
    ax.set_xlabel(f"gain in {state.metric}{basis}: {r['leader']} - {r['baseline']} ({better} is better; > 0: the {role} is better)")
    ax.set_title(f"{role.capitalize()} vs baseline on two seeds: {'confirmed' if r.get('confirmed') else 'not confirmed'}", fontsize=10)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=1)
    return fig


def _pareto(plt: Any, state: SearchState) -> Any:
    from automl.pareto import plot

    return plot(plt, state, state.pareto, (state.settings.get("search") or {}).get("max_latency_ms"))


def _own_plots(state: SearchState, folder: Path) -> dict[str, str]:
    out = {}
    with _pyplot() as plt:
        for key, draw in (("learning_curves", _learning_curves), ("baseline_vs_best", _baseline_vs_best),
                          ("pareto", _pareto)):
            fig = draw(plt, state)
            if fig is not None:
                out[key] = _save(fig, folder, f"{key}.png")
    return out


# ------------------------------------------------------------------------------ overlays
def _overlay_pair(state: SearchState) -> tuple[list[tuple[str, TrialRecord]], str | None]:
    """[("baseline", record), (role, record)] to show, or why not."""
    best, baseline = state.best(), state.baseline()
    if baseline is None:
        return [], "the search has no baseline trial"
    if best is None:
        return [], "no trial has a result"
    same = best.trial_id == baseline.trial_id or best.recheck_of == baseline.name
    if not same:
        return [("baseline", baseline), ("promoted", best)], None
    leader = state.by_name(state.recheck["leader"]) if state.recheck else None
    leader = leader or next((t for t in state.ranked() if t.trial_id != baseline.trial_id), None)
    if leader is None:
        return [], "the promoted model is the baseline's configuration and no other trial has a result"
    role = recheck_role(state.recheck) if state.recheck else "best other trial"
    return [("baseline (promoted)", best), (f"{role}, not promoted", leader)], None


@dataclass(frozen=True)
class Overlays:
    """The overlays' figure (`file`, None when skipped), the text above it (or why they were skipped)
    and the figure's caption."""

    file: str | None
    text: str
    caption: str = ""


def overlays(state: SearchState, folder: Path, name: str = "overlays.png") -> Overlays:
    """The baseline's and the promoted model's predictions on the same validation images."""
    from automl.promote import best_checkpoint

    models, reason = _overlay_pair(state)
    if reason:
        return Overlays(None, reason)
    checkpoints = {}
    for role, record in models:
        checkpoint = best_checkpoint(state, record)
        if checkpoint is None:
            return Overlays(None, f"no checkpoint of `{record.name}` ({role}): neither Ray's best-epoch checkpoint "
                                  "nor a checkpoint in its train/ is there")
        checkpoints[record.name] = checkpoint
    try:
        panels, decoder, names = _predict(state, models, checkpoints)
        with _pyplot() as plt:
            _draw_overlays(plt, panels, decoder, [f"{role}\n{record.name}" for role, record in models], folder / name)
    except Exception as err:  # noqa: BLE001 (a report without overlays is still a report)
        return Overlays(None, f"the predictions could not be made ({type(err).__name__}: {err})")
    text = (f"Validation images {', '.join(f'`{n}`' for n in names)}: the image, the ground truth, and the two models' "
            "predictions (each from its best checkpoint, on the CPU); colours: one fixed colour per class; the pixel "
            "accuracy of each prediction under it.")
    return Overlays(name, text, " | ".join(["image", "ground truth", *(f"{role} {r.name}" for role, r in models)]))


def _predict(state: SearchState, models: list[tuple[str, TrialRecord]],
             checkpoints: dict[str, Path]) -> tuple[list, Any, list[str]]:
    """[(image, ground truth, [prediction per model])] for the first validation images, the mask
    decoder (class colours and names) and the images' names. Each model is configured as its trial
    was (`automl.deploy.spec_overrides`) and runs as `segformer inference` runs it."""
    from automl.deploy import spec_overrides
    from automl.trial import base_config
    from segformer.config import apply_overrides
    from segformer.data import build_data, pair_samples
    from segformer.data.dataset import load_pair
    from segformer.engine.predictor import TorchPredictor, load_torch_model, segment_images

    samples, pairs, predictions, decoder = None, None, [], None
    for _, record in models:
        cfg = apply_overrides(base_config(state.spec, state.overrides, record.results_dir or state.results_dir),
                              spec_overrides(state, record.params))
        data = build_data(cfg.dataset.segment, seed=0, check_data=False)
        if samples is None:
            samples = pair_samples(data.root_dir, data.splits["val"])[0][:OVERLAY_IMAGES]
            pairs, decoder = [load_pair(s, data.decoder) for s in samples], data.decoder
        model = load_torch_model(cfg.model, data.num_classes, checkpoints[record.name])
        predictor = TorchPredictor(model, "cpu")
        predictions.append(segment_images(predictor, [image for image, _ in pairs], img_size=data.img_size,
                                          mean=data.mean, std=data.std,
                                          align_corners=bool(cfg.model.decode_head.align_corners)))
        del model, predictor
    panels = [(image, mask, [p[i] for p in predictions]) for i, (image, mask) in enumerate(pairs)]
    return panels, decoder, [s.name for s in samples]


def _draw_overlays(plt: Any, panels: list, decoder: Any, model_titles: list[str], path: Path) -> None:
    import numpy as np
    from matplotlib.patches import Patch

    from segformer.data import IGNORE_INDEX, overlay

    rows = len(panels)
    fig, axes = plt.subplots(rows, 4, figsize=(10, 2.6 * rows + 0.8), squeeze=False)
    titles = ["image", "ground truth", *model_titles]
    for r, (image, mask, predictions) in enumerate(panels):
        valid = mask != IGNORE_INDEX
        shown = [image, overlay(image, mask, decoder)] + [overlay(image, p, decoder) for p in predictions]
        notes = ["", ""] + [f"pixel acc {float((p[valid] == mask[valid]).mean()) if valid.any() else float('nan'):.3f}"
                            for p in predictions]
        for c, (picture, note) in enumerate(zip(shown, notes)):
            ax = axes[r][c]
            ax.imshow(picture, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=9)
            if note:
                ax.set_xlabel(note, fontsize=8)
    table = decoder.color_table()
    present = sorted({int(i) for image, mask, predictions in panels for ids in (mask, *predictions)
                      for i in np.unique(ids) if int(i) != IGNORE_INDEX})
    handles = [Patch(color=table[i] / 255.0, label=decoder.class_names[i] if i < len(decoder.class_names) else str(i))
               for i in present]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06 if handles else 0, 1, 1))
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)


# ------------------------------------------------------------------------------ the text
def _summary(state: SearchState) -> list[Block]:
    best, baseline = state.best(), state.baseline()
    blocks: list[Block] = [
        Heading(f"AutoML report: {state.skill}, {state.algorithm}", 1),
        Items([f"results: `{state.results_dir}`", f"metric: `{state.metric}` ({state.mode}), ranked by each trial's best epoch",
               "trials: " + (", ".join(f"{v} {k.lower()}" for k, v in sorted(state.counts().items())) or "none")
               + (f"; {state.ended}" if state.ended else "")])]
    if best is not None:
        blocks += [Heading("Best trial"),
                   Para(f"`{best.name}`: {state.metric} = {best.best_value:.4f} at epoch {best.best_epoch} of {best.epochs_trained}"),
                   Table(["parameter", "best", "baseline"],
                         [[f"`{k}`", fmt(best.params[k]), fmt(baseline.params.get(k)) if baseline else "-"]
                          for k in sorted(best.params)])]
        if baseline is not None and baseline.best_value is not None:
            blocks.append(Para(f"Baseline (`{baseline.name}`, the spec's own values): {baseline.best_value:.4f} "
                               f"({gain_words(best, baseline)})."))
    return blocks


def _comparison(state: SearchState, plots: dict[str, str]) -> list[Block]:
    """The baseline-vs-best section: the chart and what its noise is."""
    if "baseline_vs_best" not in plots:
        return []
    r = state.recheck
    if r is not None:
        noise = (f"; the gain's noise between the two seeds, {r['gain_noise']:.4f} (SD of one paired gain; grey band)"
                 if r.get("gain_noise") is not None else "")
        basis = f" ({r['basis']}, where each training settled)" if r.get("basis") else ""
        text = (f"The {recheck_role(r)} `{r['leader']}` against the baseline `{r['baseline']}`, each trained on two seeds: the paired "
                f"gain on each seed{basis} and their mean {r['gain']:+.4f} +/- {r['gain_stderr']:.4f} (standard error){noise}.")
    else:
        best, baseline = _compared(state)  # type: ignore[misc]
        led = (state.best() or best).trial_id == baseline.trial_id  # _compared then gave the best other trial
        text = (("The baseline led the search; the best other trial, " if led else "")
                + f"`{best.name}` {best.best_value:.4f} against the baseline `{baseline.name}` {baseline.best_value:.4f} "
                f"({best.best_value - baseline.best_value:+.4f}), on an axis zoomed around the two values. No re-check "
                f"measured the noise of this difference ({no_recheck_reason(state)}): a difference smaller than the "
                "seed-to-seed spread of one training is no evidence.")
    return [Heading("Baseline vs best"), Para(text), Figure(plots["baseline_vs_best"], "Baseline vs best")]


def _recheck(state: SearchState) -> list[Block]:
    """The budget spent, the re-check's verdict (gain +/- its standard error) and the test split's scores."""
    blocks: list[Block] = []
    if state.budget is not None:
        total = state.budget_epochs()
        rechecks = ", re-checks included" if any(t.recheck_of for t in state.trials.values()) else ""
        blocks += [Heading("Budget"), Para(f"{state.epochs_trained()} of {total} epochs trained{rechecks} (a budget of "
                                           f"{state.budget['trainings']:g} trainings of the spec's "
                                           f"{count(state.budget['spec_epochs'], 'epoch')}).")]
    r = state.recheck
    if r is not None:
        blocks += [Heading("Re-check (another seed) before promotion"),
                   *([Para(f"Each training's {state.metric} where it settled: {r['basis']} (a peak epoch of a noisy curve "
                           "overstates a configuration that swings more).")] if r.get("basis") else []),
                   Table(["", "the search's seed", "the re-check's seed (+1)"],
                         [[f"{recheck_role(r)} `{r['leader']}`", f"{r['leader_values'][0]:.4f}", f"{r['leader_values'][1]:.4f}"],
                          [f"baseline `{r['baseline']}`", f"{r['baseline_values'][0]:.4f}", f"{r['baseline_values'][1]:.4f}"]]),
                   Para(f"Gain {r['gain']:+.4f} +/- {r['gain_stderr']:.4f} (mean and standard error of the paired gains; "
                        f"seed-to-seed spread of one training {r['seed_noise']:.4f}).{_fresh_gain(r)} Verdict: {r['reason']}")]
    final = state.final_evaluation or {}
    if "skipped" in final:
        blocks += [Heading("Final evaluation (test split)"), Para(f"Skipped: {final['skipped']}.")]
    elif final:
        promoted = (final.get("promoted") or {}).get("trials")
        rows = [[recheck_role(r or {}) if role == "leader" else role, ", ".join(row["trials"]),
                 ", ".join(f"{v:.4f}" for v in row["test_miou"]), f"{row['mean']:.4f}"]
                for role in ("promoted", "baseline", "leader")
                if (row := final.get(role)) and row.get("mean") is not None
                and not (role == "leader" and row.get("trials") == promoted)]  # a promoted leader: one row
        blocks += [Heading("Final evaluation (test split, untouched by the search)"),
                   Table(["model", "trials", "test mIoU", "mean"], rows)]
    uneven = uneven_epochs(*(final.get(role) or {} for role in ("promoted", "baseline", "leader")))
    if uneven:
        blocks.append(Para(f"Note: {uneven_note(uneven)}."))
    if size_note(final):
        blocks.append(Para(f"Note: {size_note(final)}."))
    return blocks


def _fresh_gain(r: dict) -> str:
    """The re-check seed's gain against the noise it must exceed (verdicts written before that rule have neither)."""
    if r.get("recheck_gain") is None or r.get("gain_noise") is None:
        return ""
    return (f" On the re-check seed alone (untouched by the search's selection) the gain is {r['recheck_gain']:+.4f}; "
            f"the gain's noise between the two seeds is {r['gain_noise']:.4f} (SD of one paired gain: their difference / sqrt 2).")


def _pareto_blocks(state: SearchState, plots: dict[str, str]) -> list[Block]:
    p = state.pareto
    if not p:
        return []
    metric, cost = (o.split(":")[0] for o in p["objectives"])
    rows = [[f"`{m['trial']}`", f"{m[metric]:.4f}", f"{m[cost]:.3f}",
             "promoted" if m["trial"] == p["chosen"] else "baseline" if m["baseline"] else ""] for m in p["front"]]
    blocks: list[Block] = [Heading("Accuracy against latency (Pareto front)"),
                           Para(f"{len(p['front'])} of {len(p['points'])} trials are on the front; "
                                f"promoted `{p['chosen']}`: {p['rule']}."),
                           Table(["trial", metric, cost, ""], rows)]
    if "pareto" in plots:
        blocks.append(Figure(plots["pareto"], f"{metric} against {cost}"))
    return blocks


def _promotion(state: SearchState) -> list[Block]:
    if not state.promotion:
        return []
    items = [f"{name}: {outcome if isinstance(outcome, str) else outcome.get('status', 'done')}"
             for name, outcome in state.promotion.get("steps", {}).items()]
    if isinstance(state.promotion.get("registry"), dict):
        reg = state.promotion["registry"]
        items.append(f"registry: `{reg['model']}` version {reg['version']} alias `@{reg['alias']}`")
    return [Heading("Promotion"), Items(items)] if items else [Heading("Promotion")]


def _overlay_blocks(overlay: Overlays) -> list[Block]:
    blocks: list[Block] = [Heading("Predictions on validation images")]
    if overlay.file is None:
        return blocks + [Para(f"Skipped: {overlay.text}.")]
    return blocks + [Para(overlay.text), Figure(overlay.file, overlay.caption)]


def _importance_blocks(state: SearchState, imp: Importance, plots: dict[str, str]) -> list[Block]:
    blocks: list[Block] = [Heading("Parameter importance")]
    if imp.skipped:
        return blocks + [Para(f"Not computed: {imp.skipped}.")]
    how = {"fANOVA": "Optuna's fANOVA (a random forest fitted to the trials' best values; each parameter's share of "
                     "the variance it explains; seed 0)",
           "PED-ANOVA": "Optuna's PED-ANOVA (how differently each parameter is distributed among the best trials "
                        "than among all)"}[imp.evaluator]
    note = f" {imp.note}." if imp.note else ""
    caveat = " With so few trials it is a hint, not a measurement." if imp.trials < 20 else ""
    blocks += [Para(f"Evaluator: {imp.evaluator}: {how}, from {imp.trials} trials with a result (trials stopped early "
                    f"count with the best value they reached, as in the ranking).{note}{caveat}"),
               Items([f"`{k}`: {v:.3f}" for k, v in imp.values.items()])]
    if "importance" in plots:
        blocks.append(Figure(plots["importance"], f"Parameter importance ({imp.evaluator})"))
    return blocks


_CAPTIONS = {
    "history": ("Optimisation history (Optuna): each search trial's best value and the best so far, by trial (in the "
                "order of their names; the re-checks, trained again on another seed and not ranked, are not in it)"),
    "parallel": "Parallel coordinates (Optuna): the varying parameters, coloured by the best value",
    "slice": "Slice plot (Optuna): the best value against each varying parameter",
    "contour": "Contour plot (Optuna) of the two most important parameters",
    "learning_curves": f"Learning curves: the metric per epoch of the best trials (up to {LEADING}) and the baseline "
                       "(dashed)",
}


def _search_plots(plots: dict[str, str]) -> list[Block]:
    figures = [Figure(plots[k], _CAPTIONS[k]) for k in ("history", "parallel", "slice", "contour", "learning_curves")
               if k in plots]
    return [Heading("Search plots"), *figures] if figures else []


def _trial_blocks(state: SearchState) -> list[Block]:
    if len(state.trials) <= REPORT_ROWS:
        header, rows = trial_rows(state)
        return [Heading("Trials"), Table(header, rows), Para(f"The same table as CSV: `{TRIALS_CSV}` next to this report.")]
    header, rows = trial_rows(state, REPORT_ROWS)
    return [Heading("Trials"), Para(f"The {len(rows)} running or best of {len(state.trials)} trials, by name; every trial "
                                    f"is in `{TRIALS_CSV}` next to this report."), Table(header, rows)]


def _failure_blocks(state: SearchState) -> list[Block]:
    """Why trials failed (each error's last line; `automl status` and the ledger keep the tracebacks)."""
    failed = [t for t in _by_name(state) if t.status == FAILED]
    if not failed:
        return []
    shown = failed[:FAILED_ROWS]
    more = f" The first {len(shown)} of {len(failed)} are listed." if len(failed) > len(shown) else ""
    return [Heading("Failed trials"),
            Para(f"What ended each one (the last line of its error; the whole traceback is the trial's `error` in "
                 f"`automl_state.json`).{more}"),
            Table(["trial", "error"], [[t.name, error_line(t.error)] for t in shown])]


def document(state: SearchState, plots: dict[str, str], imp: Importance, overlay: Overlays) -> list[Block]:
    return [*_summary(state), *_comparison(state, plots), *_recheck(state), *_pareto_blocks(state, plots),
            *_promotion(state), *_overlay_blocks(overlay), *_trial_blocks(state), *_failure_blocks(state),
            *_importance_blocks(state, imp, plots), *_search_plots(plots)]


def _write_csv(state: SearchState, path: Path) -> None:
    import csv
    import io

    header, rows = trial_rows(state)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, out.getvalue())


# ------------------------------------------------------------------------------ writing
def _contents(state: SearchState, folder: Path) -> list[Block]:
    """Every plot into `folder`, and the document that shows them."""
    ledger = ledger_study(state)
    imp = importance(state, ledger)
    plots = {**_study_plots(state, ledger, imp, folder), **_own_plots(state, folder)}
    return document(state, plots, imp, overlays(state, folder))


def write_report(state: SearchState) -> Path:
    """Write RESULTS_DIR/report/{report.md, report.html, *.png} atomically; returns the markdown path."""
    layout = Layout.of(state.results_dir)
    results, final = layout.root, layout.report_dir
    tmp = staging_dir(results, ".report.")
    try:
        blocks = _contents(state, tmp)
        _write_csv(state, tmp / TRIALS_CSV)
        atomic_write_text(tmp / "report.md", to_markdown(blocks))
        atomic_write_text(tmp / "report.html", to_html(blocks, tmp))
        old = results / f".report.old.{os.getpid()}"
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final / "report.md"
