"""The epoch budget of a search, what it searches first, and the re-check that guards promotion.

A user states the budget in trainings of their own spec (``--budget 10``: ten times the spec's
``train.num_epochs``). Every epoch any trial trains counts, re-checks included, so the search never
trains more than that. Without ``--budget`` nor ``max_trials`` the budget is 10.

How the budget is spent (`plan_budget`)
    * The baseline (the spec's own values) trains its full epochs: it is the reference, never stopped
      early. By default (bayesian: Optuna's TPE) every trial is a full training of the spec's
      epochs, so a budget of 10 trainings tries 7 configurations besides the baseline.
    * With a multi-fidelity algorithm (asha, hyperband, bohb) every other trial starts with a few
      epochs (the first rung, about a ninth of the spec's epochs) and only the best third goes on at
      each rung, so a budget of 10 trainings tries some 30 configurations. It is not the default
      because its ranking after a ninth of the epochs is biased (benchmarks/RESULTS.md, "Search
      quality"): under the spec's decaying learning rate, low learning rates lead early and others
      overtake them late (on the hard synthetic set lr 1e-4 scored 0.34-0.35 val mIoU at epoch 2,
      near the top, and 0.41 at epoch 20, the bottom; lr 1.3e-3 to 1.6e-3 scored 0.29-0.32 at epoch
      2 and 0.55 at the end), so the rungs kept the wrong ones and TPE learned from them.
    * Two trainings are kept back for the re-check (below) when the budget allows it (4 or more trainings
      of a trial's epochs: of the spec's, unless --max-epochs shortens the trials).
    * A new trial starts only when the search's share of the budget can train it to its first rung
      (the whole training by default), counting what every running trial will train (`held`);
      once the share is spent, running trials are stopped at their next report (`BudgetFIFO`,
      `BudgetASHA`), so the total is a hard limit, not an estimate.

What is searched first (`prioritise`, `centre`)
    With a small budget the optimizer's parameters come first: about a dozen configurations per
    searched parameter, in the order lr, weight decay, the other optimizer and model parameters,
    then augmentation. The others are held at the spec's values (the space's notes say which, and
    how much budget would search them). Numeric ranges are centred on the spec's own value (a log
    range of one and a half decades either side, `LOG_SPAN`; a linear range of a quarter of the
    schema's span either side), inside the schema's bounds: the user's configuration is the prior.
    Why one and a half: TAO's template lr (6e-05, for fine-tuning pretrained weights) is 17x too low
    for the H&E set trained from scratch ("Search quality", hgsc_nuclei_types_tao_lr), and a decade
    either side capped the search at 6e-4 there. Ranges the user gave
    (custom_param_ranges) and an explicit selection (``--only``, automl_hyperparameters) are kept
    as given.

The re-check (`BudgetSearcher`, `verdict`)
    The search ranks trials on the validation split, and the best of many noisy trainings is better
    on that split than it will be elsewhere (the winner's curse). So when the search's share is
    spent, the leading trial and the baseline train once more with another seed (``train.seed`` + 1);
    when the baseline led, the runner-up and the baseline do (the spec's configuration gets its second
    seed, and the noise is measured, either way).
    Both train with the same two seeds (the same initial weights and batch order), so the gains are
    paired and a seed that is good or bad for both cancels out. The configurations are compared where
    their trainings settled (`settled`: the mean of the last quarter of each training's validations),
    not at their best epoch: the peak of a noisy validation curve sits above its level by more when
    the curve swings more, and it swings more at high learning rates (on the real sets of
    benchmarks/RESULTS.md the peak's excess over the last five of twenty epochs correlated 0.3-0.8
    with log lr), so both seeds of a high-lr configuration "beat" the baseline at their peaks
    without being better: a lead on every seed, which a second seed cannot expose. The leader's gain
    in the search is inflated by the selection; its gain on the fresh seed is not. The leader is
    promoted only when it beat the baseline on both seeds and its fresh-seed gain exceeds the noise
    measured (how much the paired gain moved between the two seeds, as the SD of one gain);
    otherwise the baseline is promoted, and the summary says why. The mean gain is reported with its
    standard error, and the seed-to-seed spread of one training for reference. Either way the chosen
    configuration has trained twice, and the better of its two trainings on the validation split (at
    its best epoch, the checkpoint handed over) is the model promoted. The test split, which nothing
    ranked on, then gives both models' final mIoU side by side (`automl.finals`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from automl.state import DONE, ENDED_WITH_BUDGET_LEFT, KILLED, PENDING, RUNNING, SearchState, TrialRecord
from segformer.text import count

DUPLICATE_TRIES = 20  # a sampler's repeats of trained configurations in a row that mean its space is exhausted

CONFIGS_PER_PARAM = 12  # configurations a budget must afford per searched parameter
RECHECK_MIN_BUDGET = 4  # trainings of a trial's epochs: below this the budget cannot spare two for the re-check
FIRST = ("train.optim.lr", "train.optim.weight_decay")  # searched first, whatever the budget
FULL = "_full"  # trial config flag: train every epoch, never stopped early (the baseline, re-checks)
BASELINE = "_baseline"  # trial config flag: the spec's own configuration (trains even over a latency limit)
RECHECK_OF = "_recheck_of"  # trial config: the trial this one re-checks


@dataclass(frozen=True)
class EpochBudget:
    """A search's budget in epochs."""

    trainings: float  # the budget as the user gave it, in trainings of the spec
    spec_epochs: int  # the spec's train.num_epochs
    trial_epochs: int  # a trial's full epochs (max_epochs x epoch_multiplier)
    recheck: int  # epochs kept back for the re-check (0: none)
    first_rung: int  # epochs every new trial trains before it can be stopped (multi-fidelity), else trial_epochs
    seed: int  # the spec's train.seed; the re-check trains with seed + 1
    step: int = 1  # epochs between two reports of a trial (the spec's train.validation_interval)

    @property
    def total(self) -> int:
        return int(round(self.trainings * self.spec_epochs))

    @property
    def search(self) -> int:
        """Epochs for the search itself (the baseline included)."""
        return self.total - self.recheck

    def next_epochs(self, trained: int) -> int:
        """Epochs a trial that has trained `trained` trains before it reports again, or ends: with a
        `step` that does not divide its epochs, its last ones come after its last report."""
        return max(0, min(self.step, self.trial_epochs - trained))

    def held(self, trained: int) -> int:
        """Epochs a trial that has trained `trained` will train whatever the budget then decides: up to
        its first rung (the whole training when nothing stops trials early: the default), and at
        least to its next report or its end."""
        return max(min(self.first_rung, self.trial_epochs) - trained, self.next_epochs(trained))

    def configurations(self, reduction_factor: int) -> int:
        """About how many configurations the search's share affords (the baseline included)."""
        cost = float(self.trial_epochs)
        if self.first_rung < self.trial_epochs:  # successive halving: a third goes on at each rung
            cost, rung, share = float(self.first_rung), self.first_rung, 1.0
            while rung < self.trial_epochs:
                share /= reduction_factor
                nxt = min(rung * reduction_factor, self.trial_epochs)
                cost += share * (nxt - rung)
                rung = nxt
        return 1 + max(0, int((self.search - self.trial_epochs) / cost))

    def text(self) -> str:
        recheck = f"; {self.recheck} of the epochs for the re-check" if self.recheck else "; no re-check"
        return f"budget {count(self.total, 'epoch')} ({count(self.trainings, 'training')} of {count(self.spec_epochs, 'epoch')}{recheck})"


def recheck_fits(total_epochs: float, trial_epochs: int) -> bool:
    """Room for the re-check: from 4 trainings of a trial's epochs (4 trainings of the spec by default,
    more when --max-epochs makes trials shorter than the spec: then --budget 3 affords many trials)."""
    return total_epochs >= RECHECK_MIN_BUDGET * trial_epochs


def plan_budget(search: Any, spec_epochs: int, validation_interval: int, seed: int) -> EpochBudget:
    """The budget of `search` (`automl.options.SearchConfig`, its max_epochs resolved)."""
    trial_epochs = int(search.trial_epochs or spec_epochs)
    if search.multi_fidelity:
        grace = search.grace_period * search.epoch_multiplier if search.grace_period else max(1, round(trial_epochs / 9))
        # A rung is an epoch with a validation, at a multiple of epoch_multiplier (TAO's resource unit):
        # the later rungs, grace x reduction_factor^k, are then multiples of both too.
        unit = math.lcm(int(validation_interval), int(search.epoch_multiplier))
        grace = min(trial_epochs, math.ceil(grace / unit) * unit)
    else:
        grace = trial_epochs
    room = recheck_fits(search.budget * spec_epochs, trial_epochs)
    recheck = 2 * trial_epochs if search.rechecked and room else 0
    return EpochBudget(float(search.budget), int(spec_epochs), trial_epochs, recheck, grace, int(seed), int(validation_interval))


# --------------------------------------------------------------------------------------- the space


def _rank(name: str) -> tuple[int, int]:
    if name in FIRST:
        return 0, FIRST.index(name)
    return (1, 0) if name.startswith(("train.", "model.")) else (2, 0)


def prioritise(space: Any, configurations: int, keep: Any = ()) -> Any:
    """The space with the parameters a budget of `configurations` can search (the rest at the spec's
    values); the names in `keep` (the user added them) are searched whatever the budget."""
    keep_count = max(len([p for p in space if p.name in FIRST]) or 1, configurations // CONFIGS_PER_PARAM)
    ordered = sorted(space.params, key=lambda p: (p.name not in keep, _rank(p.name)))
    keep = {p.name for p in ordered[:keep_count]} | set(keep)
    for p in ordered:  # a kept parameter's depends_on parent stays too
        if p.name in keep and p.depends_on and p.depends_on in space:
            keep.add(p.depends_on)
    held = [p.name for p in space.params if p.name not in keep]
    if not held:
        return space
    need = math.ceil(CONFIGS_PER_PARAM * len(space) / max(1, configurations) * 10) / 10
    note = (f"held at the spec's values (a budget affording ~{count(configurations, 'configuration')} searches "
            f"~{CONFIGS_PER_PARAM} per parameter; about {need:g}x this budget searches them all, or name them with --only): "
            + ", ".join(held))
    params = tuple(p for p in space.params if p.name in keep)  # parents kept with their children: order holds
    return dataclasses.replace(space, params=params, notes=(*space.notes, note))


LOG_SPAN = 10**1.5  # a log range reaches this factor either side of the spec's value (about 31.6)


def centre(space: Any, spec_values: Mapping[str, Any], custom: Mapping[str, Any]) -> Any:
    """The space with numeric ranges centred on the spec's own values (not those in `custom`)."""
    from automl.space import _lookup
    from segformer.text import fmt

    params = []
    for p in space.params:
        found, value = _lookup(spec_values, p.name)
        numeric = p.kind in ("int", "float") and not p.choices and not p.derived and p.relation is None
        if not numeric or p.name in custom or not found or isinstance(value, bool) or not isinstance(value, (int, float)):
            params.append(p)
            continue
        if p.log and value > 0:
            lo, hi = value / LOG_SPAN, value * LOG_SPAN
            how = f"centred on the spec's {fmt(value)} (x/{LOG_SPAN:.3g} .. x{LOG_SPAN:.3g})"
        else:
            quarter = (p.high - p.low) / 4
            lo, hi = value - quarter, value + quarter
            how = f"centred on the spec's {fmt(value)} (+/- a quarter of the schema's span)"
        lo, hi = max(lo, p.low), min(hi, p.high)
        if p.kind == "int":
            lo, hi = math.floor(lo), math.ceil(hi)
        if not lo < hi:
            params.append(p)
            continue
        params.append(dataclasses.replace(p, low=lo, high=hi, source=f"{p.source}; {how}"))
    return dataclasses.replace(space, params=tuple(params))


# --------------------------------------------------------------------------------------- accounting


def _live_state(results_dir: str) -> SearchState | None:
    from automl.callbacks import bound_search

    live = bound_search(results_dir)
    return live.state if live is not None else None


def rung_reason(reduction_factor: float, epoch: int) -> str:
    """Why successive halving stopped a trial at `epoch` (`note_stop`)."""
    return f"rung: not in the best 1/{reduction_factor:g} at epoch {epoch}"


class NotedASHA(ASHAScheduler):
    """Ray's asynchronous HyperBand that leaves why it stops a trial early (`note_stop`)."""

    def __init__(self, results_dir: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.results_dir = results_dir

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        epoch = int(result.get(self._time_attr, 0))
        if decision == TrialScheduler.STOP and epoch < self._max_t and self.results_dir:
            note_stop(self.results_dir, trial.trial_id, rung_reason(self._reduction_factor, epoch))
        return decision


def note_stop(results_dir: str, trial_id: str, why: str) -> None:
    """Leave why a scheduler stops a trial early ("rung: ...", "curve: ...", "budget: ..."): the
    ledger takes it only when it records the trial as stopped before its last epoch (a decision
    overruled later, or made at the last epoch, is never a trial's reason); `automl status` and
    MLflow show it."""
    from automl.callbacks import bound_search

    live = bound_search(results_dir)
    if live is not None:
        live.stop_reasons[trial_id] = why


def unstarted(record: TrialRecord | None) -> bool:
    """A trial that will train before any budget check sees it running: proposed but not started
    (in no ledger yet), or running when the driver was stopped (KILLED), which `automl resume`
    restarts. Its first report's epochs come before anything can stop it."""
    return record is None or record.status == PENDING or (record.status == KILLED and not record.lost)


def _reserved(state: SearchState, budget: EpochBudget) -> int:
    """Epochs the baseline still has to train (it always trains its full epochs)."""
    baseline = state.baseline()
    if state.baseline_params is None or (baseline is not None and baseline.status != RUNNING and not unstarted(baseline)):
        return 0
    return budget.trial_epochs - (baseline.epochs_trained if baseline is not None else 0)


def committed(state: SearchState, budget: EpochBudget, reporting: Any = None, epoch: int = 0, starting: int = 0) -> int:
    """Epochs the search's share cannot get back: trained so far (`reporting`'s result at `epoch`
    counted: the scheduler decides before the ledger records it), what the baseline still trains,
    and what every other trial running and the `starting` ones (proposed, not started yet) will train
    whatever the budget decides (`EpochBudget.held`). By default that is the rest of each training:
    a trial is started only when the budget can finish it. Counting only each trial's next report, a
    search with 16 slots and a budget of 10 trainings started 12 at once and cut 11 of them at epoch
    6 or 7 of 10, and had no trial left for the re-check."""
    total = starting * budget.held(0)
    for t in state.trials.values():
        if t.recheck_of:
            continue
        trained = max(t.epochs_trained, epoch) if reporting is not None and t.trial_id == reporting else t.epochs_trained
        total += trained
        if t.status == "RUNNING" and not t.is_baseline and t.trial_id != reporting:
            total += budget.held(trained)
    return total + _reserved(state, budget)


def infeasible_cap(budget: EpochBudget) -> int:
    """Trials over a latency limit a search may draw: three times the trainings its budget affords."""
    return int(3 * budget.total / budget.trial_epochs)


def search_share(state: SearchState, budget: EpochBudget) -> int:
    """Epochs the search itself may train: the re-check's reserve too when there will be no re-check
    (the baseline is over a latency limit: no leader is compared with it)."""
    baseline = state.baseline()
    return budget.total if baseline is not None and baseline.infeasible else budget.search


def exhausted_note(configurations: int) -> str:
    return (f"the space is exhausted: the sampler's last {DUPLICATE_TRIES} proposals all repeated one of the "
            f"{configurations} configurations already tried")


class DistinctSearcher(Searcher):
    """A search sized by a trial count (--max-trials, TAO's automl_max_recommendations) that never
    trains a configuration twice, as `BudgetSearcher` does for an epoch budget: TPE repeats itself in
    a small categorical space, and a repeat trained the same configuration with the same seed again.
    A repeated proposal is answered without training (`_fresh`); an exhausted space ends the search
    early, and says so."""

    ENDED = "the search ended before its trial count"  # what an exhausted space cut short

    def __init__(self, inner: Searcher, results_dir: str, metric: str, mode: str) -> None:
        super().__init__(metric=metric, mode=mode)
        self.searcher = inner  # the name Ray's save and restore walk wrappers by
        self.results_dir = results_dir
        self.trained: dict[str, str] = {}  # a proposed configuration (`_same`) -> the trial that trains it
        self.results: dict[str, dict] = {}  # a trial's last result, once complete (a repeat's answer)
        self.inner_ids: dict[str, str] = {}  # Ray's trial id -> the inner searcher's, where they differ
        self.running: set[str] = set()  # trials of the inner searcher not complete yet

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        config = self._fresh(trial_id)
        if isinstance(config, dict):
            self._took(trial_id, config)
        return config

    def _took(self, trial_id: str, config: Mapping[str, Any]) -> None:
        """`config`, proposed by the inner searcher, is trained by Ray's trial `trial_id`."""
        self.trained[_same(config)] = trial_id
        self.running.add(trial_id)

    def _fresh(self, trial_id: str) -> dict[str, Any] | str | None:
        """The inner searcher's next configuration that no trial has trained yet (None: wait).

        A proposal equal to an earlier one is answered with that trial's result, or failed while it
        runs, and the sampler asked again under a derived id (`inner_ids` maps Ray's id to it); after
        `DUPLICATE_TRIES` repeats in a row the space is exhausted: `_exhausted`, once nothing runs."""
        for attempt in range(DUPLICATE_TRIES):
            inner_id = trial_id if attempt == 0 else f"{trial_id}~repeat{attempt}"
            config = self.searcher.suggest(inner_id)
            if config is None or config == Searcher.FINISHED:
                return config
            earlier = self.trained.get(_same(config))
            if earlier is None:
                if inner_id != trial_id:
                    self.inner_ids[trial_id] = inner_id
                return config
            if earlier in self.results:  # what the same training gave: the sampler learns without a second one
                self.searcher.on_trial_complete(inner_id, result=self.results[earlier])
            else:
                self.searcher.on_trial_complete(inner_id, error=True)
        # Every proposal repeated a trained configuration: the space is exhausted once nothing runs.
        if self.running:
            return None
        self._exhausted()
        return Searcher.FINISHED

    def _exhausted(self) -> None:
        """Say, in the state (the summary, report and MLflow show it) and on the console, why the search
        ends before its trial count."""
        from automl.callbacks import bound_search

        live = bound_search(self.results_dir)
        if live is None:
            return
        live.state.ended = f"{exhausted_note(len(self.trained))}; {self.ENDED}"
        live.state.save()
        if live.echo is not None:
            live.echo(f"automl: {live.state.ended}")

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.searcher.on_trial_result(self.inner_ids.get(trial_id, trial_id), result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.running.discard(trial_id)
        if result is not None and not error:
            self.results[trial_id] = {k: v for k, v in result.items() if isinstance(v, (int, float, str, bool))}
        self.searcher.on_trial_complete(self.inner_ids.get(trial_id, trial_id), result=result, error=error)

    # Ray saves a searcher wrapper by its `searcher` attribute and get_state/set_state (ConcurrencyLimiter's
    # pattern), the base searcher (Optuna's) by its own save: both come back with `automl resume`.
    def get_state(self) -> dict[str, Any]:
        import copy

        return copy.deepcopy({k: v for k, v in self.__dict__.items() if k != "searcher"})

    def set_state(self, state: dict[str, Any]) -> None:
        # Ray restores a searcher through set_state, whatever its pickle held: a state saved before an
        # attribute existed gets its empty value
        self.__dict__.update({"trained": {}, "results": {}, "inner_ids": {}, "running": set(), **state})


class BudgetSearcher(DistinctSearcher):
    """Wraps the algorithm's searcher: new trials while the search's share of the budget lasts, then
    the re-check of the leader and the baseline (`verdict` reads it), then FINISHED.

    Also marks the baseline's config with ``_full`` (the scheduler never stops it early), and, as
    `DistinctSearcher`, never trains a configuration twice (TPE repeats itself in a small categorical
    space, such as a search over a few backbones and input sizes). The searcher is pickled into Ray's
    experiment checkpoint, so `automl resume` continues it.
    """

    ENDED = ENDED_WITH_BUDGET_LEFT

    def __init__(self, inner: Searcher, results_dir: str, budget: EpochBudget, baseline: Mapping[str, Any] | None,
                 metric: str, mode: str, max_concurrent: int | None = None) -> None:
        super().__init__(inner, results_dir, metric, mode)
        # --max-concurrent: the inner searcher's ConcurrencyLimiter holds the search's own trials to it;
        # the re-check's, proposed here, are held to it too (both started at once on a free machine)
        self.max_concurrent = max_concurrent
        self.rechecking: set[str] = set()  # trial ids of the re-check's trainings not complete yet
        self.budget = budget
        self.baseline = dict(baseline) if baseline is not None else None
        self.own: set[str] = set()  # trial ids of the inner searcher's trials
        self.searching = True
        self.queue: list[dict[str, Any]] | None = None  # the re-check configs, once decided
        self.baseline_id: str | None = None  # the trial whose config was marked the baseline (its epochs are reserved: `_reserved`)

    def _can_start(self) -> bool:
        state = _live_state(self.results_dir)
        if state is None:
            return True
        # Trials over a latency limit train nothing (`automl.deploy`), so they spend no budget: a cap
        # (three times the trainings the budget affords) ends a search whose sampler keeps finding them.
        if sum(t.infeasible for t in state.trials.values()) >= infeasible_cap(self.budget):
            return False
        # Proposed trials Ray has not started yet are in no ledger; without them, two proposals in a
        # row could each be granted the same epochs (a full CI run trained 21 of 20).
        starting = sum(1 for tid in self.running if tid != self.baseline_id and unstarted(state.trials.get(tid)))
        # The baseline is the first proposal, and its epochs are reserved already (`committed`): asked
        # for again, a budget of 1 training (or 1.5) had no room for it and trained nothing.
        baseline_next = self.baseline is not None and self.baseline_id is None and state.baseline() is None
        need = 0 if baseline_next else self.budget.first_rung
        return committed(state, self.budget, starting=starting) + need <= search_share(state, self.budget)

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        from automl.callbacks import bound_search

        live = bound_search(self.results_dir)
        if live is not None and live.out_of_time():
            return None  # no trial starts past the time budget; the search ends when its trials have (`SearchLimits`)
        if self.searching and self._can_start():
            config = self._fresh(trial_id)
            if config == Searcher.FINISHED:
                self.searching = False
            elif config is not None:
                self.own.add(trial_id)
                self._took(trial_id, config)
                if self.baseline is not None and self.baseline_id is None and config == self.baseline:
                    config, self.baseline_id = {**config, FULL: True, BASELINE: True}, trial_id
                return config
            else:
                return None
        elif self.searching and self.running:
            # The share looks spent, but the running trials may still give some back: one that ends
            # early frees the epochs it was counted for, a baseline found over a latency limit frees
            # the re-check's reserve (`search_share`). Decide once they have ended.
            return None
        else:
            self.searching = False
        if self.running:
            return None  # the re-check waits for the search's last trials
        if self.queue is None:
            self.queue = self._rechecks()
        if not self.queue:
            return Searcher.FINISHED
        if self.max_concurrent is not None and len(self.rechecking) >= self.max_concurrent:
            return None
        self.rechecking.add(trial_id)
        return self.queue.pop(0)

    def _rechecks(self) -> list[dict[str, Any]]:
        state = _live_state(self.results_dir)
        if not self.budget.recheck or state is None:
            return []
        baseline, leader = state.baseline(), leading(state)
        # Also when the baseline led: the reserve then trains the spec's configuration on a second seed
        # (the better of its two trainings is promoted, as for any chosen configuration) and measures
        # the noise that the runner-up's deficit is read against, instead of going unspent.
        if baseline is None or leader is None or baseline.status not in DONE or baseline.infeasible:
            return []
        seed = self.budget.seed + 1
        return [{**record.params, "train.seed": seed, FULL: True, RECHECK_OF: record.name} for record in (leader, baseline)]

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.own:  # not the re-check's, which this searcher proposed itself
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.rechecking.discard(trial_id)
        if trial_id in self.own:
            super().on_trial_complete(trial_id, result, error)

    def set_state(self, state: dict[str, Any]) -> None:
        # Saved before baseline_id replaced the `flagged` mark: no id (the baseline's config, trained
        # already, is never proposed again: `_fresh`).
        # Saved before max_concurrent and rechecking: no limit known, none running (Ray restores a searcher
        # through set_state, whatever its pickle held).
        super().set_state({"baseline_id": None, "max_concurrent": None, "rechecking": set(), **state})
        self.__dict__.pop("flagged", None)


def _same(config: Mapping[str, Any]) -> str:
    """A configuration's identity: its values, without the driver's own flags."""
    import json

    return json.dumps({k: v for k, v in config.items() if not k.startswith("_")}, sort_keys=True, default=str)


def leading(state: SearchState) -> TrialRecord | None:
    """The best trial of the search itself (not the baseline, not a re-check)."""
    return next((t for t in state.ranked() if not t.is_baseline), None)


class _BudgetStops:
    """Scheduler mix-in: never stop a ``_full`` trial early; stop the others once the search's share is spent."""

    results_dir: str
    budget: EpochBudget

    def _decide(self, tune_controller: Any, trial: Any, result: dict, decision: str) -> str:
        epoch = int(result.get("epoch", 0))
        if trial.config.get(FULL):
            return TrialScheduler.CONTINUE if epoch < self.budget.trial_epochs else decision
        state = _live_state(self.results_dir)
        if decision == TrialScheduler.CONTINUE and state is not None:
            share = search_share(state, self.budget)
            # Trials Ray has made but not started: their first epochs come before any check.
            starting = sum(1 for t in tune_controller.get_trials()
                           if t.status == PENDING and not t.config.get(FULL) and unstarted(state.trials.get(t.trial_id)))
            if committed(state, self.budget, trial.trial_id, epoch, starting) + self.budget.held(epoch) > share:
                note_stop(self.results_dir, trial.trial_id, f"budget: its next epochs would overrun the search's {share} epochs")
                return TrialScheduler.STOP
        return decision


class BudgetASHA(_BudgetStops, NotedASHA):
    def __init__(self, results_dir: str, budget: EpochBudget, **kwargs: Any) -> None:
        super().__init__(results_dir, **kwargs)
        self.budget = budget

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        return self._decide(tune_controller, trial, result, super().on_trial_result(tune_controller, trial, result))


class BudgetFIFO(_BudgetStops, FIFOScheduler):
    def __init__(self, results_dir: str, budget: EpochBudget) -> None:
        super().__init__()
        self.results_dir, self.budget = results_dir, budget

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        return self._decide(tune_controller, trial, result, super().on_trial_result(tune_controller, trial, result))


# --------------------------------------------------------------------------------------- the verdict


def settled(record: TrialRecord, metric: str, until: int | None = None) -> float | None:
    """Where a training settled: the mean of `metric` over the last quarter of its validations (at
    least the last one; Ray Tune's "last-5-avg" scope on 20 epochs), counting only epochs up to
    `until` when given. None when it has no value there."""
    values = _values(record, metric, until)
    if not values:
        return None
    last = _last_quarter(len(values))
    return sum(values[-last:]) / last


def _last_quarter(count: int) -> int:
    """How many of `count` validations the settled level averages (what `_basis` says, too)."""
    return math.ceil(count / 4)


def _values(record: TrialRecord, metric: str, until: int | None = None) -> list[float]:
    return [float(h[metric]) for h in record.history
            if h.get(metric) is not None and (until is None or int(h.get("epoch", 0)) <= until)]


def _settled_pair(a: TrialRecord, b: TrialRecord, metric: str) -> tuple[float | None, float | None, int]:
    """Both trainings where they settled, over the epochs both reached (a trial the budget cut short
    is compared with the same stretch of the other's curve, not with its finished end); and how
    many validations that stretch holds."""
    until = min((int(t.history[-1].get("epoch", 0)) if t.history else 0) for t in (a, b))
    return settled(a, metric, until), settled(b, metric, until), len(_values(b, metric, until))


def _basis(counts: tuple[int, int]) -> str:
    text = (f"the mean of the last {_last_quarter(counts[0])} of {counts[0]} validations" if counts[0] > 1
            else "one validation")
    if counts[1] != counts[0]:
        text += f" on the search's seed, the last {_last_quarter(counts[1])} of {counts[1]} on the re-check seed"
    return text


def verdict(state: SearchState) -> dict[str, Any] | None:
    """The re-check's answer: which trial to promote, the gain over the baseline and its uncertainty.

    None when no re-check ran (no budget for it, or no trial besides the baseline has a result).
    """
    checks = {t.recheck_of: t for t in state.trials.values() if t.recheck_of and t.status in DONE and t.best_value is not None}
    baseline, leader = state.baseline(), leading(state)
    if baseline is None or leader is None or leader.name not in checks or baseline.name not in checks:
        return None
    c0, b0, n0 = _settled_pair(leader, baseline, state.metric)
    c1, b1, n1 = _settled_pair(checks[leader.name], checks[baseline.name], state.metric)
    if c0 is None or c1 is None or b0 is None or b1 is None:
        return None
    sign = 1.0 if state.mode == "max" else -1.0
    gains = [sign * (c0 - b0), sign * (c1 - b1)]  # paired: both configurations trained with the same two seeds
    gain = (gains[0] + gains[1]) / 2
    stderr = abs(gains[0] - gains[1]) / 2  # standard error of the mean of two paired differences
    noise = math.sqrt(((c0 - c1) ** 2 + (b0 - b1) ** 2) / 4)  # seed-to-seed SD of one training (pooled), for reference
    # The leader led the search, so its first gain is inflated by the selection; the re-check seed is
    # a fresh draw, and its gain the one estimate the selection did not touch. The noise of a paired
    # gain is measured by how much it moved between the two seeds (SD of one paired gain, estimated
    # from the two: |g0 - g1| / sqrt 2; the selection's inflation counts as noise, which errs towards
    # the baseline). Promote when the leader beat the baseline on both seeds and its fresh-seed gain
    # exceeds that noise: a lead that moves more between seeds than it measures is no evidence.
    fresh = gains[1]
    gain_noise = abs(gains[0] - gains[1]) / math.sqrt(2)
    led = state.better(leader.best_value, baseline.best_value)  # else the baseline led and `leader` is the runner-up
    confirmed = led and min(gains) > 0 and fresh > gain_noise  # when the baseline led, its configuration is kept
    basis = _basis((n0, n1))
    if confirmed:
        why = (f"{leader.name} beat the baseline on the re-check seed by {fresh:+.4f}, more than the gain's noise "
               f"between seeds ({gain_noise:.4f}, the SD of one paired gain); {leader.name} is promoted")
        if fresh < noise:
            # The pairing (same seeds) resolves a gain finer than one training varies: say how small it
            # is, since a gain noise measured from two seeds can be near 0 by chance.
            why += (f"; its gain is smaller than one training's seed-to-seed SD ({noise:.4f}): the two "
                    f"configurations are about as good as each other")
    elif not led:
        why = (f"the baseline led the search: {leader.name}, the best other trial, scored {gains[0]:+.4f} against it where "
               f"the trainings settled ({basis}), and {fresh:+.4f} on the re-check seed (the gain's noise between seeds: "
               f"{gain_noise:.4f}); the baseline is promoted")
    elif gains[0] <= 0:
        why = (f"{leader.name} led the search at its best epoch, but where its training settled ({basis}) it scored "
               f"{gains[0]:+.4f} against the baseline, and {fresh:+.4f} on the re-check seed: its lead was a peak of a "
               f"noisy curve; the baseline is promoted")
    elif fresh > 0:
        why = (f"{leader.name} beat the baseline on the re-check seed by only {fresh:+.4f}, less than the gain's noise "
               f"between seeds ({gain_noise:.4f}, the SD of one paired gain): its lead in the search ({gains[0]:+.4f}) is within the noise; "
               f"the baseline is promoted")
    else:
        why = (f"{leader.name} did not beat the baseline on the re-check seed ({fresh:+.4f}): its lead in the "
               f"search ({gains[0]:+.4f}) did not hold; the baseline is promoted")
    # The chosen configuration trained twice: hand over its better training on the validation split (by
    # its best epoch, whose checkpoint is the one handed over).
    pair = (leader, checks[leader.name]) if confirmed else (baseline, checks[baseline.name])
    promoted = pair[1] if state.better(pair[1].best_value, pair[0].best_value) else pair[0]
    if promoted is pair[1]:
        why += f" (its re-check training {promoted.name}, the better of its two on the validation split)"
    return {"leader": leader.name, "baseline": baseline.name, "leader_rechecks": [checks[leader.name].name],
            "baseline_rechecks": [checks[baseline.name].name], "seeds": 2, "leader_values": [c0, c1],
            "baseline_values": [b0, b1], "gain": gain, "gain_stderr": stderr, "seed_noise": noise,
            "recheck_gain": fresh, "gain_noise": gain_noise, "confirmed": confirmed, "baseline_led": not led, "promoted": promoted.name,
            "configuration": pair[0].name, "basis": basis, "reason": why}
