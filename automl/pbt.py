"""Population Based Training: what a trial may change mid-training, the scheduler, and the optimizer update.

Ray's PBT refuses search algorithms, so the population (the baseline plus Optuna random draws) is
preset through Ray's basic variant generator (`automl.algorithms`). At every perturbation interval
but the last epoch (nothing trains after it) the worse half of the population continues from a
better member's checkpoint (exploit) with that member's values perturbed (explore); the baseline
never does, so that it stays the spec the search is compared with. Explore only
mutates what a trial restored from another trial's checkpoint can honour:

- optimizer values (``train.optim.lr``, ``weight_decay``, ``momentum``): a training resumed from a
  checkpoint takes its spec's values over the restored optimizer's (``segformer.engine.optim.follow_spec``),
  and a trial's spec holds its explored values;
- the data augmentation (``dataset.segment.augmentation.*``): the data pipeline is rebuilt from
  the new config.

Model structure (freeze_backbone, embed_dim, ...) and the optimizer type stay those of the
checkpoint. PBT is synchronous here (every member reaches the perturbation epoch before anyone
exploits), so exploits do not depend on process timing. A population larger than the trials that
can run at once takes turns: a member that reaches the perturbation epoch pauses (Ray saves its
checkpoint) and frees its slot for one that has not, as Ray's PBT time-multiplexes. A numeric value
is perturbed by ``perturbation_factor`` or its inverse (TAO's ``automl_perturbation_factor``; Ray's
``perturbation_factors``).

Imported by the driver: no torch, Lightning or Ray import at module level.
"""

from __future__ import annotations

from typing import Any

LR_KEY = "train.optim.lr"
WD_KEY = "train.optim.weight_decay"
MOMENTUM_KEY = "train.optim.momentum"  # SGD momentum; beta1 for adam/adamw (TAO's meaning)
OPTIMIZER_KEYS = (LR_KEY, WD_KEY, MOMENTUM_KEY)  # what the restored optimizer is told
MUTABLE_PREFIXES = ("dataset.segment.augmentation.",)  # rebuilt from the config when a trial restarts


def mutations(space: Any) -> dict[str, Any]:
    """PBT's explore domains: the searched parameters a restored trial can change (see the module doc)."""
    from ray import tune

    out: dict[str, Any] = {}
    for param in space.params:
        if param.derived or param.relation is not None:
            continue  # values tied to another parameter: PBT would break the relation
        if param.name not in OPTIMIZER_KEYS and not param.name.startswith(MUTABLE_PREFIXES):
            continue
        if param.choices:
            out[param.name] = list(param.choices)
        elif param.kind == "float" and param.high > param.low:
            out[param.name] = tune.loguniform(param.low, param.high) if param.log else tune.uniform(param.low, param.high)
        elif param.kind == "int" and param.high > param.low:
            out[param.name] = tune.randint(int(param.low), int(param.high) + 1)
    return out


class KeepInRange:
    """PBT's custom explore step: a perturbed number back inside its searched range (Ray's explore
    multiplies without bounds: momentum 0.9 x 1.2 would be 1.08, which the spec refuses)."""

    def __init__(self, space: Any, names: Any) -> None:
        self.bounds = {p.name: (p.low, p.high, p.kind) for p in space.params if p.name in names and not p.choices}

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        for name, (low, high, kind) in self.bounds.items():
            if name in config:
                value = min(max(config[name], low), high)
                config[name] = int(round(value)) if kind == "int" else float(value)
        return config


def scheduler(search: Any, domains: dict[str, Any], space: Any, slots: int | None = None,
              baseline: dict[str, Any] | None = None) -> Any:
    """Ray's `PopulationBasedTraining` for `search` (an `automl.options.SearchConfig`) over `domains`
    (`mutations(space)`): synchronous, with no perturbation at a trial's last epoch (`search.trial_epochs`),
    running at most `slots` members at a time (None: as many as Ray's resources fit). The member
    with the `baseline` values (the spec's own) never exploits nor explores: it stays the spec, the
    reference the search's gain is measured against; it can still be a donor."""
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler

    last = search.trial_epochs

    def _running(tune_controller: Any) -> int:
        return sum(t.status == Trial.RUNNING for t in tune_controller.get_trials())

    class SynchronousPBT(PopulationBasedTraining):
        """Ray's synchronous PBT with four fixes, and the baseline kept out of the worse half.

        - No perturbation at the last epoch: Ray's paused every member there, restarted each from a
          checkpoint to train nothing, and gave the worse half a config that no epoch trained (the
          ledger then showed values the model never saw).
        - A member's report of an epoch the scheduler already has for it (a member restarted from its
          own checkpoint re-sends that epoch's report) changes nothing: after a resume an exploit
          had copied the point one member was at into the other, the re-sent reports met the
          synchronisation point again as if new, and both members were paused and restarted from the
          same files, in turn, for ever.
        - The next synchronisation point stays ahead of the members: after a perturbation Ray sets
          it to max(previous + interval, the members' latest epoch). A resumed search starts from a
          fresh scheduler (its point at the first interval) with members at epoch 4, say: the point
          became 4, every member waited paused for the ones behind it, none was, and the search hung.
        - A member paused at the synchronisation point is let go when no live member can still
          reach it: after a resume one member restored a checkpoint an epoch older than the other's,
          trained to the point and paused while the other, at its last epoch (which reports nothing
          to the scheduler), finished; nobody was left to trigger the perturbation, so Ray never
          chose the paused member again and the search hung.
        """

        baseline_id: str | None = None

        def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
            super().on_trial_add(tune_controller, trial)
            if baseline is not None and self.baseline_id is None and all(trial.config.get(k) == v for k, v in baseline.items()):
                self.baseline_id = trial.trial_id  # the first member with the spec's values (the generator's first point)

        def _quantiles(self) -> tuple[list, list]:
            lower, upper = super()._quantiles()
            return [t for t in lower if t.trial_id != self.baseline_id], upper  # the baseline stays the spec

        def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
            epoch = result.get(self._time_attr, 0)
            if last is not None and epoch >= last:
                return TrialScheduler.CONTINUE
            state = self._trial_state.get(trial)
            if state is not None and epoch <= state.last_train_time:
                return TrialScheduler.CONTINUE  # a restarted member's re-sent report: seen already
            decision = super().on_trial_result(tune_controller, trial, result)
            if decision == TrialScheduler.CONTINUE and slots and _running(tune_controller) > slots:
                # Ray starts every pending member its resources fit, beyond --max-concurrent: the
                # extra ones take their turn from here (choose_trial_to_run holds the limit after)
                decision = TrialScheduler.PAUSE
            times = [self._trial_state[t].last_train_time for t in tune_controller.get_live_trials()
                     if t in self._trial_state]
            if times and min(times) >= self._next_perturbation_sync:
                self._next_perturbation_sync = min(times) + self._perturbation_interval
            return decision

        def choose_trial_to_run(self, tune_controller: Any) -> Any:
            if slots and _running(tune_controller) >= slots:
                return None  # --max-concurrent (the population exists whole: the generator does not limit it)
            trial = super().choose_trial_to_run(tune_controller)
            if trial is not None:
                return trial
            live = tune_controller.get_live_trials()
            if live and all(t.status != Trial.RUNNING for t in live):
                # Nothing trains and every live member waits at the point: none can bring the
                # perturbation, nobody is left to synchronise with, so the next point follows them.
                waiting_at = min(self._trial_state[t].last_train_time for t in live)
                self._next_perturbation_sync = waiting_at + self._perturbation_interval
                trial = super().choose_trial_to_run(tune_controller)
            return trial

    factor = float(search.perturbation_factor)
    return SynchronousPBT(
        time_attr="epoch", metric=search.ranking_metric, mode=search.mode,
        perturbation_interval=search.perturbation_interval, hyperparam_mutations=domains,
        custom_explore_fn=KeepInRange(space, domains),
        quantile_fraction=0.5, resample_probability=0.25, perturbation_factors=(factor, 1.0 / factor),
        # Synchronous: every member reaches the perturbation epoch before anyone exploits, so which
        # checkpoints get cloned does not depend on process timing (asynchronous PBT only exploits
        # between trials that happen to overlap, none at all on a busy machine).
        require_attrs=True, synch=True,
    )
