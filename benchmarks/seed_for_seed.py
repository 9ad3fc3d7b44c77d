"""The default search against the spec, seed for seed: is its hand-over better than the user's own training?

    python -m benchmarks.seed_for_seed [--datasets hgsc_nuclei_types,stardist_nuclei] [--seeds 4]
                                       [--budget 10] [--resume] [--no-write] [--label NAME]

`benchmarks.search_quality` scores each search against the best of the spec's plain seeds, but all its
searches of one dataset start from the spec's own train.seed (0): their baseline is the same training
as plain seed 0, so repeating a search with another sampler seed does not draw the spec's luck again.
Here, for each seed s in 0..N-1, the spec is trained as is with train.seed=s (the plain training a
user gets, scored on the test split at its last epoch) and the default search runs with the spec's
train.seed set to s (`automl run -e spec.yaml --budget B train.seed=s`: its baseline is that same
training; its re-check trains seed s+1). Each pair shares its seed, so the difference (search minus
plain) is paired; its mean over the seeds, with the standard error, says whether the search beats
the spec by more than the seed noise, and each search is also ranked among all N plain trainings.
The test split took no part in any decision. Folders, datasets and overrides are search_quality's
(build/bench/search_quality/<dataset>/plain_seed<s>, search_default_spec<s>). Results:
benchmarks/RESULTS.md ("Search against the spec, seed for seed"), benchmarks/results/seed_for_seed.json.
With --label NAME (say tao_lr, for the specs with TAO's template lr) the run keeps its own section
("Search against the spec, seed for seed: NAME"), seed_for_seed_NAME.json and .png, so that another
set of datasets does not replace the first's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR, machine_line, publish
from benchmarks.search_quality import DATASETS, _outcome, plain, prepare, search

TITLE = "Search against the spec, seed for seed"
TIE = 5e-5  # a search within this of its plain training scored the same (the tables print 4 decimals)


def summarise(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """The paired differences (search minus plain, the same seed), their mean and standard error, and
    each search's rank among all the plain trainings (1: above every one of them)."""
    plains = [p["plain"] for p in pairs]
    diffs = [p["search"] - p["plain"] for p in pairs]
    sd = statistics.stdev(diffs) if len(diffs) > 1 else float("nan")
    return {"mean_diff": statistics.fmean(diffs), "se": sd / len(diffs) ** 0.5, "wins": sum(d > TIE for d in diffs),
            "ranks": [1 + sum(v > p["search"] for v in plains) for p in pairs],
            "plain_mean": statistics.fmean(plains), "plain_min": min(plains), "plain_max": max(plains),
            "search_mean": statistics.fmean(p["search"] for p in pairs)}


def plot(results: dict[str, Any], path: Path) -> Path:
    """One panel per dataset: each seed's plain training and its search, joined by a line (up: the
    search handed over a better model than the spec's training of the same seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["datasets"])
    fig, axes = plt.subplots(1, len(names), figsize=(2.4 * len(names) + 0.6, 3.4), dpi=110, squeeze=False)
    for ax, name in zip(axes[0], names):
        labels: dict[float, list[str]] = {}  # seeds whose searches landed on the same value share a label
        for p in results["datasets"][name]:
            diff = p["search"] - p["plain"]
            colour = "tab:grey" if abs(diff) <= TIE else "tab:green" if diff > 0 else "tab:red"
            ax.plot([0, 1], [p["plain"], p["search"]], color=colour, marker="o", lw=1.2, alpha=0.8)
            labels.setdefault(round(p["search"], 4), []).append(f"s{p['seed']}")
        for value, seeds in labels.items():
            ax.annotate(",".join(seeds), (1, value), xytext=(4, 0), textcoords="offset points", fontsize=7, va="center")
        ax.set_xticks([0, 1], ["plain", "search"])
        ax.set_xlim(-0.3, 1.4)
        ax.set_title(name, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test mIoU")
    fig.suptitle("The spec's training and the default search, seed for seed\n(green: the search's model is better on test, "
                 "red: worse, grey: the same)", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def render(results: dict[str, Any], title: str = TITLE, picture: str = "seed_for_seed.png") -> str:
    lines = [f"## {title}", "", f"Ran on: {results['machine'].rstrip('.')}. `python -m benchmarks.seed_for_seed "
             f"{results['args']}` ({results['date']}); every number is a test-split mIoU (the split no search ranked on).", "",
             f"![each seed's plain training and its search](results/{picture})", "",
             "| dataset | seed | plain (the spec) | default search (promoted) | search - plain | re-check | epochs |",
             "|---|---|---|---|---|---|---|"]
    summary = ["", "| dataset | seeds | plain: mean (min..max) | search: mean | search - plain: mean +/- SE | "
               "search > its plain | each search's rank among the plain trainings |", "|---|---|---|---|---|---|---|"]
    for name, pairs in results["datasets"].items():
        for p in pairs:
            lines.append(f"| {name} | {p['seed']} | {p['plain']:.4f} | {p['search']:.4f} ({p['promoted']}) | "
                         f"{p['search'] - p['plain']:+.4f} | {p['outcome']} | {p['epochs']} ({p['budget_epochs']}) |")
        s = summarise(pairs)
        summary.append(f"| {name} | {len(pairs)} | {s['plain_mean']:.4f} ({s['plain_min']:.4f}..{s['plain_max']:.4f}) | "
                       f"{s['search_mean']:.4f} | {s['mean_diff']:+.4f} +/- {s['se']:.4f} | {s['wins']} of {len(pairs)} | "
                       f"{', '.join(f'{r} of {len(pairs) + 1}' for r in s['ranks'])} |")
    return "\n".join(lines + summary)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="hgsc_nuclei_types,stardist_nuclei")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--budget", type=float, default=10.0)
    parser.add_argument("--resume", action="store_true", help="reuse finished plain trainings and searches")
    parser.add_argument("--no-write", action="store_true", help="do not rewrite benchmarks/RESULTS.md")
    parser.add_argument("--label", default="", help="a section, json and picture of this run's own (seed_for_seed_LABEL)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        parser.error(f"unknown dataset(s) {unknown}; choose from {sorted(DATASETS)}")
    prepare(names)
    stem, title = ("seed_for_seed", TITLE) if not args.label else (f"seed_for_seed_{args.label}", f"{TITLE}: {args.label}")
    label = f" --label {args.label}" if args.label else ""
    results: dict[str, Any] = {"args": f"--datasets {','.join(names)} --seeds {args.seeds} --budget {args.budget:g}{label}",
                               "machine": machine_line(), "date": time.strftime("%Y-%m-%d"), "datasets": {}}
    for name in names:
        pairs = results["datasets"][name] = []
        for seed in range(args.seeds):
            base = plain(name, seed, args.resume)
            row = search(name, "default", args.budget, args.resume, spec_seed=seed)
            outcome = _outcome(row["recheck"]) if row["recheck"] else "-"
            pairs.append({"seed": seed, "plain": base["test_miou"], "search": row["test_miou"], "promoted": row["promoted"],
                          "outcome": outcome, "epochs": row["epochs"], "budget_epochs": row["budget_epochs"],
                          "wall_s": row["wall_s"]})
            print(f"{name} seed {seed}: plain {base['test_miou']:.4f}, search {row['test_miou']:.4f} ({row['promoted']})",
                  flush=True)
    plot(results, RESULTS_DIR / f"{stem}.png")
    publish(f"{stem}.json", results, title, render(results, title, f"{stem}.png"), write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
