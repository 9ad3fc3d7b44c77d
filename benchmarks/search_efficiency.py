"""Search efficiency: best val_miou reached as a function of training epochs spent, per algorithm.

    python -m benchmarks.search_efficiency [--small] [--no-write]

Same compute budget for every algorithm (total training epochs; full: 48 = 8 trials x 6 epochs for
random and bayesian, --small: 8 = 4 x 2), 3 seeds (--small: 2), synthetic 32x32 data (16 train / 8
val images), MiT-B0 with embed_dim 64, no promotion, one trial at a time. The multi-fidelity
algorithms (asha, hyperband, bohb) get more trials than the budget can finish (each is stopped
early by its scheduler) and their curve is cut at the budget. Epochs are ordered by completion
time (the validation end stamp in each trial's timing.json); the curve is the running best.

Reported: the mean (min..max over seeds) of the best val_miou at the whole budget, and the epochs
each algorithm needs to reach the best val_miou that random search reaches with the whole budget
(per seed, against that seed's random search). Plot: benchmarks/results/search_efficiency.png.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Sequence

from automl.layout import Layout
from benchmarks.common import (ROOT, RESULTS_DIR, epoch_events, load_search, machine_line, run_search, save_json,
                               synth_data, write_section)

TITLE = "Search efficiency"
WORK = ROOT / "build" / "bench" / "search_efficiency"
ALGORITHMS = ("random", "bayesian", "asha", "hyperband", "bohb")  # the four families the issue compares
MULTI_FIDELITY = ("asha", "hyperband", "bohb")


# ------------------------------------------------------------------------------------------------
# pure helpers (tested in tests/benchmarks)
# ------------------------------------------------------------------------------------------------
def best_curve(values: Sequence[float | None], budget: int, mode: str = "max") -> list[float | None]:
    """Running best of per-epoch values (in completion order), `budget` long.

    Entry k-1 is the best value after k epochs; None before the first value. A search that used
    fewer epochs than the budget keeps its final best (it had nothing left to try).
    """
    curve: list[float | None] = []
    best: float | None = None
    for value in list(values)[:budget]:
        if value is not None and value == value and (best is None or (value > best if mode == "max" else value < best)):
            best = value
        curve.append(best)
    while len(curve) < budget:
        curve.append(best)
    return curve


def epochs_to_reach(curve: Sequence[float | None], target: float, mode: str = "max") -> int | None:
    """First number of epochs at which the curve reaches `target` (None: never within the curve)."""
    for k, value in enumerate(curve, start=1):
        if value is not None and (value >= target if mode == "max" else value <= target):
            return k
    return None


def band(curves: Sequence[Sequence[float | None]]) -> tuple[list[float | None], list[float | None], list[float | None]]:
    """Mean, min and max over curves at each epoch (None where any curve has no value yet)."""
    mean, low, high = [], [], []
    for column in zip(*curves):
        if any(v is None for v in column):
            mean.append(None), low.append(None), high.append(None)
            continue
        mean.append(sum(column) / len(column))
        low.append(min(column))
        high.append(max(column))
    return mean, low, high


# ------------------------------------------------------------------------------------------------
# benchmark
# ------------------------------------------------------------------------------------------------
def plot(curves: dict[str, list[list[float | None]]], budget: int, path: Path, targets: list[float]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for algorithm, per_seed in curves.items():
        mean, low, high = band(per_seed)
        xs = [k for k, v in enumerate(mean, start=1) if v is not None]
        if not xs:
            continue
        line, = ax.plot(xs, [mean[k - 1] for k in xs], label=f"{algorithm} (mean of {len(per_seed)})", lw=1.8)
        ax.fill_between(xs, [low[k - 1] for k in xs], [high[k - 1] for k in xs], color=line.get_color(), alpha=0.15)
    if targets:
        ax.axhline(sum(targets) / len(targets), color="grey", ls=":", lw=1, label="random: best at full budget (mean)")
    ax.axvline(budget / 3, color="grey", ls="--", lw=0.8, label="one third of the budget")
    ax.set_xlabel("training epochs spent (all trials, completion order)")
    ax.set_ylabel("best val_miou so far")
    ax.set_xlim(1, budget)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Search efficiency on synthetic 32x32 data (band: min..max over seeds)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="2 seeds, 8-epoch budget (CI smoke)")
    parser.add_argument("--seeds", type=int)
    parser.add_argument("--algorithms", default=",".join(ALGORITHMS))
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    parser.add_argument("--reanalyze", type=Path, metavar="DIR",
                        help="recompute curves, table and plot from the searches already in DIR (runs nothing)")
    args = parser.parse_args(argv)
    work = WORK / ("small" if args.small else "full")
    suffix = "_small" if args.small else ""
    seeds = args.seeds or (2 if args.small else 3)
    trials, epochs = (4, 2) if args.small else (8, 6)
    budget = trials * epochs
    data = synth_data(work / "data32", size=32, train=16, val=8) if not args.reanalyze else work
    spec = data / "spec.yaml"
    overrides = ["model.decode_head.decoder_params.embed_dim=64", "dataset.segment.batch_size=8"]
    algorithms = [a for a in args.algorithms.split(",") if a]

    curves: dict[str, list[list[float | None]]] = {a: [] for a in algorithms}
    raw: dict[str, list[dict[str, Any]]] = {a: [] for a in algorithms}
    started = time.time()
    for seed in range(seeds):
        for algorithm in algorithms:
            # Multi-fidelity: enough trials to spend the budget even if most stop after one epoch.
            max_trials = trials if algorithm not in MULTI_FIDELITY else budget // 2 + 2
            if args.reanalyze:
                if not Layout.of(args.reanalyze / f"{algorithm}_s{seed}").state_file.is_file():
                    continue
                run = load_search(args.reanalyze / f"{algorithm}_s{seed}")
            else:
                run = run_search(work / f"{algorithm}_s{seed}", spec,
                                 ["--algorithm", algorithm, "--max-trials", str(max_trials), "--max-epochs", str(epochs),
                                  "--seed", str(seed), "--no-promote", "--max-concurrent", "1"],
                                 overrides=[*overrides, f"train.seed={seed}"])
            events = epoch_events(run)
            curve = best_curve([e["value"] for e in events], budget)
            curves[algorithm].append(curve)
            raw[algorithm].append({"seed": seed, "wall_s": run.wall_s, "epochs_run": len(events),
                                   "trials": len(run.trials), "events": events, "returncode": run.returncode})
            final = curve[-1]
            print(f"seed {seed} {algorithm:9s}: {len(run.trials)} trials, {len(events)} epochs run, best within "
                  f"{budget} epochs {final if final is None else f'{final:.4f}'}, wall {run.wall_s:.0f} s", flush=True)
    elapsed = time.time() - started
    if args.reanalyze:  # the searches' own wall time, from what they recorded
        elapsed = sum(r["wall_s"] for rows in raw.values() for r in rows)
    targets = [c[-1] for c in curves.get("random", []) if c[-1] is not None]
    reach: dict[str, list[int | None]] = {}
    for algorithm, per_seed in curves.items():
        if "random" in curves and len(curves["random"]) == len(per_seed):
            reach[algorithm] = [epochs_to_reach(c, r[-1]) if r[-1] is not None else None
                                for c, r in zip(per_seed, curves["random"])]
    save_json(f"search_efficiency{suffix}.json", {"budget": budget, "seeds": seeds, "trials": trials, "epochs": epochs,
                                         "elapsed_s": elapsed, "curves": curves, "reach": reach, "raw": raw})
    png = plot(curves, budget, RESULTS_DIR / f"search_efficiency{suffix}.png", targets)
    text = render(curves, reach, budget, seeds, trials, epochs, elapsed, args.small, png) + notes(raw, budget, epochs)
    print(text)
    if not args.no_write:
        write_section(TITLE, text)
    return 0


def notes(raw: dict[str, list[dict[str, Any]]], budget: int, epochs: int) -> str:
    """Facts that qualify the table: early stopping that happened, and where random's best came from."""
    lines = [""]
    for algorithm, rows in raw.items():
        stopped, total, used = 0, 0, []
        for row in rows:
            per_trial: dict[str, int] = {}
            for event in row["events"]:
                per_trial[event["trial"]] = max(per_trial.get(event["trial"], 0), event["epoch"])
            total += len(per_trial)
            stopped += sum(1 for n in per_trial.values() if n < epochs)
            used.append(row["epochs_run"])
        lines.append(f"- {algorithm}: {stopped} of {total} trials stopped before {epochs} epochs; epochs run per "
                     f"search: {', '.join(map(str, used))}.")
    baseline_best = []
    for row in raw.get("random", []):
        cut = row["events"][:budget]
        values = [e for e in cut if e["value"] is not None]
        if values:
            best = max(values, key=lambda e: e["value"])
            baseline_best.append(best.get("baseline", best["trial"] == "trial_000"))  # older runs: by name
    if baseline_best:
        lines.append(f"- Random search's best trial within the budget is the baseline (the spec's own "
                     f"configuration, which every algorithm runs first) in {sum(baseline_best)} of "
                     f"{len(baseline_best)} seeds: there every algorithm reaches the target when the baseline "
                     f"finishes, so the per-seed epochs mostly measure the baseline, not the search.")
    lines.append("- The same comparison on real data and the harder synthetic set, at the default budget of 10 "
                 "trainings of a 20-epoch spec, is under \"Search quality\" (its \"Search efficiency\" lines); "
                 "\"Fidelity ranking\" measures how well a short training ranks configurations there.")
    return "\n".join(lines) + "\n"


def render(curves: dict[str, list[list[float | None]]], reach: dict[str, list[int | None]], budget: int, seeds: int,
           trials: int, epochs: int, elapsed: float, small: bool, png: Path) -> str:
    cmd = "python -m benchmarks.search_efficiency" + (" --small" if small else "")
    lines = [f"## {TITLE}", "",
             f"`{cmd}` — budget {budget} training epochs per search ({trials} trials x {epochs} epochs for random and "
             f"bayesian; asha/hyperband/bohb: up to {budget // 2 + 2} trials of at most {epochs} epochs, curve cut at "
             f"{budget} epochs), {seeds} seeds (sampler seed and train.seed), synthetic 32x32 data (16 train / 8 val), "
             f"MiT-B0 embed_dim 64, one trial at a time, no promotion; {time.strftime('%Y-%m-%d %H:%M')}, "
             f"{elapsed / 60:.0f} min in all.",
             f"Machine: {machine_line()}", "",
             f"![best val_miou vs epochs spent](results/{png.name})", "",
             f"| algorithm | best val_miou at {budget} epochs: mean (min..max) | at {budget // 3} epochs (1/3) | "
             "epochs to reach random's full-budget best, per seed | within 1/3 of the budget |",
             "|---|---|---|---|---|"]
    third = budget // 3
    for algorithm, per_seed in curves.items():
        finals = [c[-1] for c in per_seed if c[-1] is not None]
        thirds = [c[third - 1] for c in per_seed if c[third - 1] is not None]
        fmt = (lambda xs: f"{sum(xs) / len(xs):.4f} ({min(xs):.4f}..{max(xs):.4f})" if xs else "-")
        needed = reach.get(algorithm, [])
        shown = ", ".join("not reached" if n is None else str(n) for n in needed) or "-"
        ok = sum(1 for n in needed if n is not None and n <= third)
        lines.append(f"| {algorithm} | {fmt(finals)} | {fmt(thirds)} | {shown} | {ok} of {len(needed)} seeds |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
