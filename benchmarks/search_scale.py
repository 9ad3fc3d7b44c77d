"""Search bookkeeping at scale: the driver's cost per trial event at 100, 1,000 and 5,000 trials.

    python -m benchmarks.search_scale [--sizes 100 1000 5000] [--ray-trials 300] [--small] [--no-write]

Every trial event (a start, an epoch's result, an end) runs the search's Ray Tune callbacks in the
driver (`automl.callbacks.search_callbacks`: the ledger, MLflow, Ray's state backup, the early
promotion, the console). Their cost must not grow with the search, or the driver, not the cluster,
sets the pace of a big search.

Synthetic events: a search folder (ledger, embedded sqlite MLflow store, Ray experiment state
files) is filled with N-k finished trials of 20 epochs each (their MLflow runs included), then k
more trials run through the callbacks exactly as Ray calls them (start, 20 results, complete, and
Ray's on_step_end after each), timed per callback. Ray's own experiment state (one entry per
trial) is rewritten every 10 s, as Ray does, outside the timing. Two variants in the same run:

- before: every event rewrites the whole ledger (`SearchState.save`, what the driver did before
  the journal) and logs its metrics to MLflow synchronously;
- after: the journal (`SearchState.save_trial`) and MLflow's metrics written in batches every few seconds
  (`automl.tracking.Tracker.log_metrics`).

Plus the status block (`automl.progress.Progress.block`) at each size, and a real Ray search of
very short trials (a function that reports 20 epochs at once) with the search's callbacks bound,
timed the same way: events per second of the whole search and the driver's time in the callbacks.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

from benchmarks.common import ROOT, machine_line, save_json, write_section

TITLE = "Search bookkeeping at scale"
WORK = ROOT / "build" / "bench" / "search_scale"
EPOCHS = 20
RAY_SAVE_PERIOD_S = 10.0  # Ray's experiment state period (TUNE_GLOBAL_CHECKPOINT_S "auto": at least 10 s)


# --------------------------------------------------------------------------------------- timing
class Timer:
    """Seconds spent per callback class (and per event) while installed on the callbacks' methods."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.events = 0

    def wrap(self, callback: Any) -> Any:
        name = type(callback).__name__
        for hook in ("on_trial_start", "on_trial_result", "on_trial_complete", "on_trial_error", "on_checkpoint",
                     "on_step_end"):
            method = getattr(callback, hook, None)
            if method is None:
                continue

            def timed(*args: Any, _method: Any = method, _hook: str = hook, **kwargs: Any) -> Any:
                start = time.perf_counter()
                try:
                    return _method(*args, **kwargs)
                finally:
                    self.seconds[name] += time.perf_counter() - start
                    if _hook in ("on_trial_start", "on_trial_result", "on_trial_complete", "on_trial_error"):
                        self.events += 1 if name == "LedgerCallback" else 0

            setattr(callback, hook, timed)
        return callback


# ------------------------------------------------------------------------------ synthetic search
def _config(i: int) -> dict[str, Any]:
    """Two parameters that vary (as in a real search: the report's importance and contour need two)."""
    return {"train.optim.lr": 1e-4 * (1 + i % 7), "train.optim.weight_decay": 1e-3 * (1 + (i * 5) % 11)}


def _trial(i: int, config: dict[str, Any]) -> Any:
    """What the callbacks read of a Ray `Trial`."""
    from automl.layout import trial_name

    return SimpleNamespace(trial_id=f"{i:08x}", config=config, checkpoint=None, custom_trial_name=trial_name(i),
                           error_file=None, get_error=lambda: None)


def _metrics(epoch: int, i: int) -> dict[str, float]:
    return {"epoch": epoch, "val_miou": 0.3 + 0.01 * epoch + 1e-5 * i + 0.002 * (i % 7) - 0.001 * ((i * 5) % 11), "val_loss": 1.0 / epoch, "train_loss": 1.1 / epoch,
            "val_acc": 0.8, "lr": 1e-4, "time_this_iter_s": 1.0, "training_iteration": epoch}


def _ray_state(experiment: Path, n: int) -> None:
    """Ray's experiment state files of a search of `n` trials (sizes as Ray writes them: about 1.5 KB a trial)."""
    from segformer.fileio import atomic_write_bytes

    entry = json.dumps({"trial_id": "x" * 8, "config": {"train.optim.lr": 1e-4}, "pad": "p" * 1300})
    data = json.dumps({"trial_data": [[entry, "{}"]] * n, "runner_data": {}}).encode()
    atomic_write_bytes(experiment / "experiment_state-2026-01-01_00-00-00.json", data, sync=False)
    atomic_write_bytes(experiment / "searcher-state-2026-01-01_00-00-00.pkl", b"\x80\x04" + b"s" * (200 * n) + b".",
                       sync=False)


def _search_folder(root: Path) -> tuple[Any, Any, Any]:
    """An empty search folder: its layout, ledger and MLflow tracker (with the parent run)."""
    from automl.layout import Layout
    from automl.state import SearchState
    from automl.tracking import Tracker

    shutil.rmtree(root, ignore_errors=True)
    layout = Layout.of(root)
    layout.root.mkdir(parents=True)
    state = SearchState(results_dir=str(layout.root), skill="segformer", algorithm="random", metric="val_miou",
                        mode="max", settings={})
    tracker = Tracker(layout.default_tracking_uri, layout.root, "scale")
    state.mlflow_parent_run_id = tracker.start_parent(f"scale-{root.name}", {}, {})
    return layout, state, tracker


def _fill(state: Any, tracker: Any, n: int, mlflow_runs: bool) -> None:
    """`n` finished trials of EPOCHS epochs (and their MLflow runs) in the ledger, written once."""
    from automl.state import FINISHED, TrialRecord

    parent = state.mlflow_parent_run_id
    for i in range(n):
        trial = _trial(i, _config(i))
        record = TrialRecord(trial_id=trial.trial_id, name=trial.custom_trial_name, params=dict(trial.config),
                             status=FINISHED, results_dir=str(Path(state.results_dir) / trial.custom_trial_name))
        for epoch in range(1, EPOCHS + 1):
            state.record_result(record, _metrics(epoch, i))
        state.trials[record.trial_id] = record
        if mlflow_runs:
            from mlflow.entities import Metric

            record.mlflow_run_id = tracker.start_child(parent, record, {"automl.baseline": "false"})
            tracker.client.log_batch(record.mlflow_run_id, metrics=[
                Metric(k, v, 0, int(h["epoch"])) for h in record.history for k, v in h.items() if k != "epoch"])
            tracker.end_run(record.mlflow_run_id, FINISHED)
    state.save()


@contextmanager
def _variant(name: str) -> Iterator[None]:
    """'before': every trial event rewrites the whole ledger, as the driver did before the journal."""
    from automl.state import SearchState

    saved = SearchState.save_trial
    if name == "before":
        SearchState.save_trial = lambda self, record: self.save()  # type: ignore[method-assign]
    try:
        yield
    finally:
        SearchState.save_trial = saved  # type: ignore[method-assign]


def filled(size: int, timed_trials: int, mlflow_runs: bool, work: Path) -> tuple[Path, float]:
    """A search folder of `size - timed_trials` finished trials (made once per size; the variants copy it)."""
    root = work / f"filled_{size}"
    layout, state, tracker = _search_folder(root)
    layout.ray_experiment.mkdir(parents=True)
    started = time.perf_counter()
    _fill(state, tracker, size - timed_trials, mlflow_runs)
    _ray_state(layout.ray_experiment, size - timed_trials)
    return root, time.perf_counter() - started


def synthetic(size: int, base: Path, fill_s: float, timed_trials: int, variant: str, work: Path) -> dict[str, Any]:
    """Per-event cost of the callbacks at `size` trials: `timed_trials` more trials run through them
    on a copy of the filled folder `base`."""
    from automl.callbacks import LiveSearch, bind, search_callbacks
    from automl.layout import Layout
    from automl.progress import Progress
    from automl.state import SearchState
    from automl.tracking import Tracker

    root = work / f"{variant}_{size}"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(base, root)
    layout = Layout.of(root)
    state = SearchState.load(root)
    tracker = Tracker(layout.default_tracking_uri, layout.root, "scale")
    tracker.batched = variant != "before"
    first = len(state.trials)
    timer = Timer()
    callbacks = [timer.wrap(c) for c in search_callbacks(layout.root)]
    live = LiveSearch(state, tracker, epochs=EPOCHS, prune=False)
    last_ray_save = time.monotonic()
    wall = time.perf_counter()
    with _variant(variant), bind(live):
        for k in range(timed_trials):
            i = first + k
            trial = _trial(i, _config(i))
            events = [("on_trial_start", {})] + [("on_trial_result", {"result": _metrics(e, i)}) for e in
                                                 range(1, EPOCHS + 1)] + [("on_trial_complete", {})]
            for hook, extra in events:
                for callback in callbacks:
                    method = getattr(callback, hook, None)
                    if method is not None:
                        method(iteration=0, trials=[], trial=trial, **extra)
                for callback in callbacks:
                    callback.on_step_end(iteration=0, trials=[])
                if time.monotonic() - last_ray_save >= RAY_SAVE_PERIOD_S:
                    _ray_state(layout.ray_experiment, i + 1)
                    last_ray_save = time.monotonic()
        tracker.flush()
    wall = time.perf_counter() - wall
    view = Progress(print, tty=False)
    view.attach(state)
    block_s = _median_s(view.block, repeat=5)
    loaded_s = _median_s(lambda: SearchState.load(layout.root), repeat=3)
    events = timer.events
    callbacks_s = sum(timer.seconds.values())
    result = {
        "variant": variant, "size": size, "timed_trials": timed_trials, "events": events, "fill_s": round(fill_s, 1),
        "per_event_ms": 1000 * callbacks_s / max(1, events), "events_per_s": events / max(1e-9, callbacks_s),
        "wall_per_event_ms": 1000 * wall / max(1, events),
        "by_callback_ms": {k: round(1000 * v / max(1, events), 3) for k, v in sorted(timer.seconds.items())},
        "status_block_ms": 1000 * block_s, "load_ms": 1000 * loaded_s,
        "state_bytes": layout.state_file.stat().st_size,
        **(_views(state) if variant == "after" else {}),
    }
    print(f"  {variant:6s} {size:5d} trials: {result['per_event_ms']:.2f} ms/event ({result['events_per_s']:.0f} events/s) "
          f"{ {k: v for k, v in result['by_callback_ms'].items()} } status block {result['status_block_ms']:.0f} ms, "
          f"load {result['load_ms']:.0f} ms", flush=True)
    return result


def _views(state: Any) -> dict[str, float]:
    """What a user opens on a big search: `automl status` (its table, paged) and the report (plots included)."""
    from automl.console import STATUS_ROWS, format_table
    from automl.report import write_report

    limit = None if len(state.trials) <= STATUS_ROWS else STATUS_ROWS
    status_s = _median_s(lambda: format_table(state, limit=limit, show_errors=True), repeat=3)
    started = time.perf_counter()
    path = write_report(state)
    report_s = time.perf_counter() - started
    print(f"  views at {len(state.trials)} trials: automl status table {1000 * status_s:.0f} ms, report {report_s:.1f} s "
          f"({path.parent})", flush=True)
    return {"status_table_ms": 1000 * status_s, "report_s": report_s}


def _median_s(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ------------------------------------------------------------------------------------- real Ray
def _short_trial(config: dict[str, Any]) -> None:
    from ray import tune

    for epoch in range(1, EPOCHS + 1):
        tune.report({"epoch": epoch, "val_miou": 0.3 + 0.01 * epoch * config["train.optim.lr"] * 1e3})


def real_ray(trials: int, work: Path) -> dict[str, Any]:
    """A Ray Tune search of `trials` short trials with the search's callbacks bound and timed."""
    import ray
    from ray import tune
    from ray.tune import RunConfig

    from automl.callbacks import LiveSearch, bind, search_callbacks
    from automl.layout import EXPERIMENT_NAME
    from automl.runner import _quiet_tune_errors
    from automl.trial import TrialNamer

    layout, state, tracker = _search_folder(work / "ray")
    state.save()
    timer = Timer()
    callbacks = [timer.wrap(c) for c in search_callbacks(layout.root)]
    namer = TrialNamer(str(layout.root))
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"  # as `automl.ray_session` sets it
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        tuner = tune.Tuner(
            tune.with_resources(_short_trial, {"cpu": 0.5}),
            param_space={"train.optim.lr": tune.loguniform(1e-5, 1e-2)},
            tune_config=tune.TuneConfig(num_samples=trials, metric="val_miou", mode="max", reuse_actors=True,
                                        trial_name_creator=namer, trial_dirname_creator=namer),
            run_config=RunConfig(name=EXPERIMENT_NAME, storage_path=str(layout.ray_storage), verbose=0,
                                 callbacks=callbacks),
        )
        started = time.perf_counter()
        with bind(LiveSearch(state, tracker, epochs=EPOCHS, prune=False)), _quiet_tune_errors():
            tuner.fit()
            tracker.flush()
        wall = time.perf_counter() - started
    finally:
        ray.shutdown()
    state.save()
    events = timer.events
    callbacks_s = sum(timer.seconds.values())
    result = {"trials": len(state.trials), "events": events, "wall_s": round(wall, 1), "events_per_s_wall": events / wall,
              "callbacks_s": round(callbacks_s, 2), "callbacks_share": callbacks_s / wall,
              "per_event_ms": 1000 * callbacks_s / max(1, events),
              "by_callback_ms": {k: round(1000 * v / max(1, events), 3) for k, v in sorted(timer.seconds.items())}}
    print(f"  real Ray: {result['trials']} trials, {events} events in {wall:.0f} s ({result['events_per_s_wall']:.0f} "
          f"events/s); callbacks {result['per_event_ms']:.2f} ms/event, {100 * result['callbacks_share']:.1f}% of the wall",
          flush=True)
    return result


# ---------------------------------------------------------------------------------------- report
def _cell(row: dict[str, Any], key: str, spec: str) -> str:
    return "-" if row.get(key) is None else format(row[key], spec)


def render(rows: list[dict[str, Any]], ray_row: dict[str, Any] | None, args: argparse.Namespace) -> str:
    lines = [f"## {TITLE}", "",
             f"`python -m benchmarks.search_scale --sizes {' '.join(map(str, args.sizes))} --ray-trials {args.ray_trials}`"
             f"{' --small' if args.small else ''}: the search's Ray Tune callbacks (ledger, MLflow, Ray state backup, "
             f"early promotion, console) driven with synthetic trial events of {EPOCHS} epochs each on a ledger of N "
             f"trials; the last trials timed; {time.strftime('%Y-%m-%d %H:%M')}.", f"Machine: {machine_line()}", "",
             "| variant | trials | events timed | per event (ms) | events/s | ledger | MLflow | Ray backup | "
             "status block (ms) | `SearchState.load` (ms) | ledger file (MB) | `automl status` table (ms) | report (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        by = r["by_callback_ms"]
        lines.append(f"| {r['variant']} | {r['size']} | {r['events']} | {r['per_event_ms']:.2f} | {r['events_per_s']:.0f} | "
                     f"{by.get('LedgerCallback', 0):.2f} | {by.get('MlflowCallback', 0):.2f} | "
                     f"{by.get('RayStateBackup', 0):.3f} | {r['status_block_ms']:.0f} | {r['load_ms']:.0f} | "
                     f"{r['state_bytes'] / 1e6:.1f} | {_cell(r, 'status_table_ms', '.0f')} | {_cell(r, 'report_s', '.1f')} |")
    after = {r["size"]: r for r in rows if r["variant"] == "after"}
    before = {r["size"]: r for r in rows if r["variant"] == "before"}
    if after:
        small, big = min(after), max(after)
        ratio = after[big]["per_event_ms"] / after[small]["per_event_ms"]
        lines += ["", f"After: per-event cost at {big} trials is {ratio:.2f}x the cost at {small} (target: within 2x); "
                      f"{after[big]['events_per_s']:.0f} events/s at {big} trials (target: at least 200)."]
        common = sorted(set(after) & set(before))
        if common:
            lines.append("Before / after per event: " + ", ".join(
                f"{n} trials {before[n]['per_event_ms']:.1f} / {after[n]['per_event_ms']:.2f} ms "
                f"({before[n]['per_event_ms'] / after[n]['per_event_ms']:.0f}x)" for n in common) + ".")
    if ray_row:
        lines += ["", f"Real Ray search ({ray_row['trials']} trials of {EPOCHS} reports, 4 at a time on 2 CPUs, reused "
                      f"actors): {ray_row['events']} events in {ray_row['wall_s']} s, {ray_row['events_per_s_wall']:.0f} "
                      f"events/s; the callbacks took {ray_row['per_event_ms']:.2f} ms per event, "
                      f"{100 * ray_row['callbacks_share']:.1f}% of the wall time (by callback, ms/event: "
                      + ", ".join(f"{k} {v}" for k, v in ray_row["by_callback_ms"].items()) + "). "
                      f"The callbacks alone would sustain {1000 / ray_row['per_event_ms']:.0f} events/s; with no callbacks "
                      f"at all the search would have run at most "
                      f"{ray_row['events'] / max(1e-9, ray_row['wall_s'] - ray_row['callbacks_s']):.0f} events/s (its wall "
                      f"less the callbacks' time): the rest is Ray's own work per report (its controller in the driver, "
                      f"the trials' processes), on the same {os.cpu_count()} cores."]
    from automl.console import STATUS_ROWS
    from automl.report import MANY_POINTS, REPORT_ROWS

    lines += ["", f"`automl status` prints the running and best trials of a search over {STATUS_ROWS} (all with --all); "
                  f"the report shows at most {REPORT_ROWS} of them and writes every trial to `report/trials.csv`, and "
                  f"its plots thin their markers and lines from {MANY_POINTS} trials on."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--timed", type=int, default=100, help="trials timed at each size (after)")
    parser.add_argument("--before-events", type=int, default=2000,
                        help="about how many events the 'before' variant times at the smallest size (fewer where slower)")
    parser.add_argument("--ray-trials", type=int, default=300, help="trials of the real Ray search (0: skip it)")
    parser.add_argument("--no-mlflow-fill", action="store_true", help="fill the ledger only, not the MLflow store")
    parser.add_argument("--small", action="store_true", help="a quick check: sizes 20 and 60, 10 trials timed, 20 Ray trials")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)
    if args.small:
        args.sizes, args.timed, args.ray_trials, args.before_events = [20, 60], 10, min(args.ray_trials, 20), 220
    WORK.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in args.sizes:
        timed = min(args.timed, size)
        base, fill_s = filled(size, timed, not args.no_mlflow_fill, WORK)
        rows.append(synthetic(size, base, fill_s, timed, "after", WORK))
        # The old way costs a whole rewrite per event: fewer events at the larger sizes (at least one trial's).
        before = max(1, min(timed, args.before_events * min(args.sizes) // size // (EPOCHS + 2)))
        rows.append(synthetic(size, base, fill_s, before, "before", WORK))
        save_json("search_scale.json", {"rows": rows, "ray": None})  # kept if a later part is cut
    ray_row = real_ray(args.ray_trials, WORK) if args.ray_trials else None
    save_json("search_scale.json", {"rows": rows, "ray": ray_row})
    text = render(rows, ray_row, args)
    print(text)
    if not args.no_write:
        write_section(TITLE, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
