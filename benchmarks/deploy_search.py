"""Deploy-aware search on real data: the most accurate model within half the spec's latency.

    python -m benchmarks.deploy_search [--dataset hela_boundary] [--backbones mit_b0,mit_b1,mit_b2]
                                       [--img-sizes 96,128] [--ratio 0.5] [--budget 10] [--resume] [--no-write]

Two searches of the same spec over the same structure (backbones, input sizes, fp32/int8), both
trained from scratch (no local weights of the larger backbones):

- constrained: ``--max-latency-ratio R`` (the limit: R x the ONNX Runtime latency of the spec's own
  model at fp32, measured first) with ``--objectives val_miou:max,latency_ms:min``;
- unconstrained: the same options without the limit nor the front (the most accurate the budget
  finds, re-checked as usual).

Reported: the limit, each search's promoted architecture, its latency and its test-split mIoU (the
split no decision used), the latency ratio between them, and the constrained search's Pareto plot
(benchmarks/results/deploy_search_pareto.png). Results: benchmarks/RESULTS.md ("Deploy search").
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR, ROOT, machine_line, publish
from benchmarks.search_quality import DATASETS, ENV, prepare, status_epochs

TITLE = "Deploy search"
WORK = ROOT / "build" / "bench" / "deploy_search"


def search(name: str, label: str, args: list[str], resume: bool) -> dict[str, Any]:
    spec, overrides = DATASETS[name]["spec"], DATASETS[name]["overrides"]
    out = WORK / name / label
    state_file = out / "automl_state.json"
    if not (resume and state_file.is_file() and json.loads(state_file.read_text()).get("status") == "FINISHED"):
        shutil.rmtree(out, ignore_errors=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        started = time.time()
        with (out.parent / f"{label}.log").open("w") as log:
            done = subprocess.run([str(Path(sys.executable).with_name("automl")), "run", "-e", str(spec), "--results-dir",
                                   str(out), "--skip-trt", *args, *overrides], env=ENV, stdout=log, stderr=subprocess.STDOUT)
        if done.returncode not in (0, 1):  # 1: the search ran and promoted nothing (no trial met the limit)
            raise RuntimeError(f"the {label} search failed (exit {done.returncode}); see {out.parent / f'{label}.log'}")
        (out / "wall_s.txt").write_text(f"{time.time() - started:.1f}")
        shutil.rmtree(out / "ray", ignore_errors=True)
    state = json.loads(state_file.read_text())
    best = next((t for t in state["trials"].values() if t["name"] == state.get("best_trial")), None)
    final = state.get("final_evaluation") or {}
    baseline = next((t for t in state["trials"].values() if t.get("is_baseline")), None)
    return {"label": label, "promoted": best and best["name"], "params": best and best["params"],
            "latency": best and best.get("latency"), "test_miou": (final.get("promoted") or {}).get("mean"),
            "baseline_test_miou": (final.get("baseline") or {}).get("mean"), "baseline_latency": baseline and baseline.get("latency"),
            "limit_ms": state["settings"]["search"].get("max_latency_ms"), "trials": len(state["trials"]),
            "infeasible": sum(bool(t.get("infeasible")) for t in state["trials"].values()), "epochs": status_epochs(out),
            "pareto": state.get("pareto"), "wall_s": float((out / "wall_s.txt").read_text()), "folder": str(out)}


def _arch(row: dict[str, Any]) -> str:
    params, latency = row["params"] or {}, row["latency"] or {}
    bits = {32: "fp32", 16: "fp16", 8: "int8"}.get(int(latency.get("precision_bits", 32)), "?")
    return f"{params.get('model.backbone.type', 'spec backbone')} @ {params.get('dataset.segment.img_size', 'spec size')} px, {bits}"


def render(name: str, rows: dict[str, dict[str, Any]], options: list[str]) -> str:
    c, u = rows["constrained"], rows["unconstrained"]
    lines = [f"## {TITLE}", "", f"Ran on: {machine_line().rstrip('.')}. `python -m benchmarks.deploy_search` "
             f"({time.strftime('%Y-%m-%d')}) on {name}, options `{' '.join(options)}`; test-split mIoU (no decision used it), "
             "latency on ONNX Runtime (CPU, batch 1, every core of this machine).", "",
             "| search | promoted | architecture | latency ms | test mIoU | trials (over the limit) | epochs | wall |",
             "|---|---|---|---|---|---|---|---|"]
    for row in (c, u):
        lat, miou = (row["latency"] or {}).get("latency_ms"), row["test_miou"]
        lines.append(f"| {row['label']} | {row['promoted'] or 'none (no trial met the limit)'} | "
                     f"{_arch(row) if row['promoted'] else '-'} | {'-' if lat is None else f'{lat:.2f}'} | "
                     f"{'-' if miou is None else f'{miou:.3f}'} | {row['trials']} ({row['infeasible']}) | {row['epochs']} | "
                     f"{row['wall_s'] / 60:.0f} min |")
    if c["test_miou"] is None or u["test_miou"] is None:
        return "\n".join([*lines, "", f"The limit: {c['limit_ms']} ms; no comparison (a search promoted nothing)."])
    spec = c["baseline_latency"] or {}
    bits = {32: "fp32", 16: "fp16", 8: "int8"}.get(int(spec.get("precision_bits", 32)), "?")
    lines += ["", f"The limit: {c['limit_ms']:.2f} ms (a share of the spec's own model at fp32, measured in the same "
              f"passes as the others; the spec deploys at {bits} in {spec.get('latency_ms', float('nan')):.2f} ms). "
              f"The constrained search's model runs in {(c['latency'] or {}).get('latency_ms', float('nan')) / (u['latency'] or {}).get('latency_ms', float('nan')):.2f}x "
              f"the unconstrained one's latency, at {c['test_miou'] - u['test_miou']:+.3f} test mIoU; the spec's own "
              f"configuration scored {u['baseline_test_miou']:.3f}.", "", "![Pareto front](results/deploy_search_pareto.png)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="hela_boundary")
    parser.add_argument("--backbones", default="mit_b0,mit_b1,mit_b2")
    parser.add_argument("--img-sizes", default="96,128")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--budget", type=float, default=10.0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    prepare([args.dataset])
    common = ["--budget", f"{args.budget:g}", "--backbones", args.backbones, "--img-sizes", args.img_sizes,
              "--precisions", "fp32,int8"]
    limited = [*common, "--max-latency-ratio", f"{args.ratio:g}", "--objectives", "val_miou:max,latency_ms:min"]
    rows = {"constrained": search(args.dataset, "constrained", limited, args.resume),
            "unconstrained": search(args.dataset, "unconstrained", common, args.resume)}
    plot = Path(rows["constrained"]["folder"]) / "report" / "pareto.png"
    if plot.is_file():
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        shutil.copy2(plot, RESULTS_DIR / "deploy_search_pareto.png")
    publish("deploy_search.json", rows, TITLE, render(args.dataset, rows, limited), write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
