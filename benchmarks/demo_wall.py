"""The pre-budget `make demo` search: wall time of this checkout against an earlier commit, interleaved.

    python -m benchmarks.demo_wall --before REV [--repeats 3] [--resume] [--no-write]

Each variant is `automl run` as `make demo` ran it before issue 15 (experiments/demo/automl.yaml: bohb, 16
trials of up to 8 epochs, 2 at a time, promotion; synthetic 128x128 data, 256 train / 32 val) in a
subprocess; wall = process start to exit, and the share of the compute (2 slots x wall) that went into
training and validation steps (`benchmarks.search_overhead.breakdown`):

- after: this checkout;
- before: REV, checked out in a git worktree under build/bench/demo_wall, run through its own entry
  point (its console script's exit included);
- before, normal exit: REV again with SEGFORMER_NORMAL_EXIT=1, which turned off the quick process
  exit of that code, so the two 'before' rows differ by the quick exit alone.

Each round runs the variants one after another, so a change of load hits them all alike. Run by
hand, not by `make bench`: it compares against a chosen commit. The synthetic data is generated
once (not timed; `make demo` generates it in about a second). The runs done so far are kept in
results/demo_wall.partial.json after each one; --resume goes on from there (a full set takes hours on
a slow machine).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, RESULTS_DIR, machine_line, median, run_search, save_json, synth_data, write_section
from benchmarks.search_overhead import breakdown

TITLE = "Demo wall time"
WORK = ROOT / "build" / "bench" / "demo_wall"
DEMO_ARGS = ["--settings", str(ROOT / "experiments" / "demo" / "automl.yaml")]


def _worktree(rev: str) -> tuple[Path, str]:
    """A worktree of `rev` (made once) and its short commit id."""
    commit = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    path = WORK / f"before_{commit}"
    if not (path / "automl").is_dir():
        subprocess.run(["git", "worktree", "add", "--detach", str(path), commit], cwd=ROOT, check=True,
                       capture_output=True)
    return path, commit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the earlier commit (e.g. the one before a change)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of all variants (default 3)")
    parser.add_argument("--resume", action="store_true", help="go on from the runs kept in demo_wall.partial.json")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md and the JSON alone")
    args = parser.parse_args(argv)
    before, commit = _worktree(args.before)
    spec = synth_data(WORK / "data128_256", size=128, train=256, val=32) / "spec.yaml"
    variants: list[tuple[str, Path, dict[str, str]]] = [
        ("after (this checkout)", ROOT, {}),
        (f"before ({commit})", before, {}),
        (f"before ({commit}), normal exit", before, {"SEGFORMER_NORMAL_EXIT": "1"}),
    ]
    walls: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    shares: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    failed: dict[str, int] = {name: 0 for name, _, _ in variants}
    partial = RESULTS_DIR / "demo_wall.partial.json"
    if args.resume and partial.is_file():
        kept = json.loads(partial.read_text())
        if kept.get("before") == commit:
            walls, shares, failed = kept["walls"], kept["shares"], kept["failed"]
    for round_ in range(args.repeats):
        for i, (name, source, env) in enumerate(variants):
            if len(walls[name]) > round_:
                continue
            run = run_search(WORK / f"search_{i}", spec, DEMO_ARGS, env=env, source=source)
            walls[name].append(run.wall_s)
            shares[name].append(breakdown(run, slots=2)["share"])  # 2 trials at a time
            failed[name] += run.returncode != 0
            print(f"round {round_ + 1}: {name}: {run.wall_s:.1f} s, {100 * shares[name][-1]:.1f}% of the compute in "
                  f"steps (exit {run.returncode})", flush=True)
            save_json(partial.name, {"walls": walls, "shares": shares, "failed": failed, "before": commit})
    result = {"walls": walls, "shares": shares, "failed": failed, "before": commit,
              "written_at": time.strftime("%Y-%m-%d %H:%M"), "machine": machine_line()}
    text = render(result)
    print(text)
    if not args.no_write:
        save_json("demo_wall.json", result)
        write_section(TITLE, text)
    return 0 if not any(failed.values()) else 1


def render(result: dict[str, Any]) -> str:
    walls, commit = result["walls"], result["before"]
    names = list(walls)
    after = median(walls[names[0]])
    lines = [f"## {TITLE}", "",
             f"`python -m benchmarks.demo_wall --before {commit}` (run by hand): the `automl run` `make demo` ran before "
             f"the epoch budget (bohb, 16 trials of up to 8 epochs, 2 at a time, with promotion; today's `make demo` "
             f"is a row of 'Search overhead'), process start to exit, the variants "
             f"interleaved in {len(walls[names[0]])} rounds; {result['written_at']}.",
             f"Machine: {result['machine']}", "",
             "| variant | runs (s) | median (s) | median / after's | compute in train+val steps |", "|---|---|---|---|---|"]
    for name in names:
        m = median(walls[name])
        share = ", ".join(f"{100 * x:.1f}%" for x in result["shares"][name])
        lines.append(f"| {name} | {', '.join(f'{w:.1f}' for w in walls[name])} | {m:.1f} | {m / after:.3f} | {share} |")
    quick, normal = median(walls[names[1]]), median(walls[names[2]])
    saved = normal - quick
    spread = max(max(w) - min(w) for w in walls.values())
    verdict = ("at least 5%: worth keeping" if saved >= 0.05 * normal else
               "under the 5% needed to keep it")
    lines += ["", f"The quick process exit alone (median of 'before, normal exit' minus median of 'before'): "
              f"{saved:+.1f} s, {100 * saved / normal:+.1f}% of the demo's wall time, {verdict}. "
              f"For scale, one variant's runs spread over up to {spread:.1f} s ({100 * spread / after:.1f}% of after's "
              f"median) between rounds."]
    if any(result["failed"].values()):
        lines.append(f"Runs that exited non-zero: {result['failed']}.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
