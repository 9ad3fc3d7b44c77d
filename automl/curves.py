"""hyperband_es: asynchronous HyperBand whose early stopping also extrapolates each learning curve.

HyperBand's rungs compare trials with each other at a few fixed epochs. hyperband_es (TAO's name)
adds a look at each trial's own curve at every epoch from ``min_epochs`` on (and its third report): the curve of its best
value so far is fitted with two saturating models of the epoch t,

- a power law, ``y = a - b * t**(-c)``, and
- an exponential, ``y = a - b * exp(-c * t)``,

and extrapolated to the trial's last epoch. When even the more optimistic of the two fits ends short
of the best value any trial has reached by more than ``threshold`` (TAO's
``automl_early_stop_threshold``, in the metric's units), the trial is stopped: it cannot beat the
current best. A curve too short, flat so far or too ragged to fit is left alone, and so are the best trial itself
and the trainings an epoch budget runs in full (the baseline, the re-check's).

The fits see only a trial's past, so they share HyperBand's blind spot under a decaying learning
rate (a late climb the curve does not yet show, `automl.budget`): the optimistic model and the
threshold are what keeps a slow starter alive.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

from ray.tune.schedulers import TrialScheduler

from automl.budget import FULL, BudgetASHA, NotedASHA, note_stop

MIN_POINTS = 3  # epochs a fit needs (three parameters)


def _power(t: Any, a: float, b: float, c: float) -> Any:
    return a - b * t ** (-c)


def _exponential(t: Any, a: float, b: float, c: float) -> Any:
    import numpy as np

    return a - b * np.exp(-c * t)


def extrapolate(epochs: list[float], values: list[float], to: float) -> float | None:
    """The more optimistic of the power-law and exponential fits of a rising curve at epoch `to`;
    None when neither fits (too few points, or the fit does not converge)."""
    import numpy as np
    from scipy.optimize import curve_fit

    if len(epochs) < MIN_POINTS:
        return None
    t, y = np.asarray(epochs, dtype=float), np.asarray(values, dtype=float)
    span = float(y.max() - y.min())
    if span <= 0:  # flat so far (a warm-up, a plateau): nothing to extrapolate from, never a reason to stop
        return None
    predictions = []
    for model, start in ((_power, (y[-1] + span, span, 0.5)), (_exponential, (y[-1] + span, span, 0.1))):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                params, _ = curve_fit(model, t, y, p0=start, bounds=([-np.inf, 0.0, 1e-4], [np.inf, np.inf, 10.0]),
                                      maxfev=2000)
        except (RuntimeError, ValueError):
            continue
        value = float(model(np.float64(to), *params))
        if math.isfinite(value):
            predictions.append(value)
    return max(predictions) if predictions else None


class _CurveStops:
    """The curve check, on top of a HyperBand-family scheduler's own decision."""

    def _setup_curves(self, min_epochs: int, threshold: float) -> None:
        self.curve_min_epochs, self.curve_threshold = max(MIN_POINTS, int(min_epochs)), float(threshold)
        self._curves: dict[str, list[tuple[float, float]]] = {}
        self._best: float | None = None  # the best value any trial reached, as a maximum
        self.curve_stops: dict[str, dict[str, float]] = {}  # trial id -> {epoch, predicted, best}: what stopped it

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)  # type: ignore[misc]
        sign = 1.0 if self._mode == "max" else -1.0  # type: ignore[attr-defined]
        value, epoch = result.get(self._metric), result.get(self._time_attr)  # type: ignore[attr-defined]
        if value is None or epoch is None or not math.isfinite(float(value)):
            return decision  # a NaN must not become the best every curve is measured against
        value = sign * float(value)
        curve = self._curves.setdefault(trial.trial_id, [])
        curve.append((float(epoch), value))
        leader = self._best is None or value >= self._best
        self._best = value if leader else self._best
        if (decision != TrialScheduler.CONTINUE or leader or epoch < self.curve_min_epochs or len(curve) < MIN_POINTS
                or getattr(trial, "config", {}).get(FULL)):
            return decision  # the baseline and the re-check trainings train in full (`automl.budget`)
        predicted = extrapolate([e for e, _ in curve], [v for _, v in curve], float(self._max_t))  # type: ignore[attr-defined]
        if predicted is not None and predicted + self.curve_threshold < self._best:
            stop = self.curve_stops[trial.trial_id] = {"epoch": float(epoch), "predicted": sign * predicted, "best": sign * self._best}
            if getattr(self, "results_dir", ""):  # a scheduler pickled before it had one (automl resume)
                note_stop(self.results_dir, trial.trial_id,  # type: ignore[attr-defined]
                          f"curve: extrapolated to {stop['predicted']:.4f} at epoch {self._max_t}, short of the best "  # type: ignore[attr-defined]
                          f"{stop['best']:.4f}" + (f" by more than {self.curve_threshold:g}" if self.curve_threshold else ""))
            return TrialScheduler.STOP
        return decision

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self._curves.pop(trial.trial_id, None)
        super().on_trial_remove(tune_controller, trial)  # type: ignore[misc]


class CurveASHA(_CurveStops, NotedASHA):
    """Asynchronous HyperBand with learning-curve stopping (`max_trials` searches)."""

    def __init__(self, min_epochs: int, threshold: float, results_dir: str = "", **kwargs: Any) -> None:
        super().__init__(results_dir, **kwargs)  # results_dir: where the ledger records why a trial stopped ("": nowhere)
        self._setup_curves(min_epochs, threshold)


class BudgetCurveASHA(_CurveStops, BudgetASHA):
    """The same under an epoch budget (`automl.budget`)."""

    def __init__(self, results_dir: str, budget: Any, min_epochs: int, threshold: float, **kwargs: Any) -> None:
        super().__init__(results_dir, budget, **kwargs)
        self._setup_curves(min_epochs, threshold)
