"""Which low fidelity ranks configurations like their full training? A measurement behind the
default search's design (benchmarks/RESULTS.md, "Fidelity ranking").

    python -m benchmarks.fidelity_rank [--datasets synth_hard,hela_boundary] [--configs 10]
                                       [--short 2,6] [--resume] [--no-write]

Multi-fidelity search (ASHA, HyperBand, BOHB) ranks configurations after a few epochs. Two ways
to get "a few epochs" of a configuration:

- prefix: the first k epochs of its full training (what Ray's schedulers do: a trial is paused or
  stopped mid-schedule, with its learning rate still near the top of the spec's decaying schedule);
- short: a training of k epochs with the whole schedule squeezed into them (what the original
  HyperBand/BOHB workers do: a budget is a training of that length, restarted from scratch).

For each dataset, `--configs` configurations (the spec's own first, then a scrambled Sobol sequence
over lr, a decade either side of the spec's, and weight decay, 0 to 0.1) each train in full with
seed 0 and seed 1 (the seed-to-seed ranking is the ceiling any fidelity can reach) and for each k in
`--short`. The table gives the Spearman correlation of each fidelity's ranking with the full
trainings' (seed 0), whether its top third holds the configuration that is best in full, and the
regret of taking its first (the full val mIoU lost against the best). Scores are the best val mIoU
of a training, what the search ranks on. Search datasets are search_quality's (prepared the same way).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, machine_line, publish
from benchmarks.search_quality import DATASETS, ENV, _bin, prepare
from segformer.parents import read_status

TITLE = "Fidelity ranking"
WORK = ROOT / "build" / "bench" / "fidelity_rank"


def configurations(spec: Path, count: int, seed: int = 0) -> list[dict[str, float]]:
    """The spec's lr and weight decay, then `count - 1` scrambled Sobol points around them."""
    import yaml
    from scipy.stats import qmc

    optim = yaml.safe_load(spec.read_text())["train"]["optim"]
    lr = float(optim["lr"])
    out = [{"lr": lr, "weight_decay": float(optim.get("weight_decay", 0.01))}]
    points = qmc.Sobol(2, scramble=True, seed=seed).random_base2(max(1, math.ceil(math.log2(max(2, count)))))
    for u, v in points[: count - 1]:
        out.append({"lr": float(lr * 10 ** (2 * u - 1)), "weight_decay": float(0.1 * v)})
    return out


def train(name: str, index: int, config: dict[str, float], epochs: int | None, seed: int, resume: bool) -> list[float]:
    """One training's val mIoU per epoch (`epochs` None: the spec's own), indexed by epoch (NaN where
    the spec's validation_interval skipped one)."""
    spec, overrides = DATASETS[name]["spec"], DATASETS[name]["overrides"]
    tag = f"c{index}_{'full' if epochs is None else f'e{epochs}'}_s{seed}"
    out = WORK / name / tag
    status = out / "train" / "status.json"
    done = out / "done"
    if not (resume and done.is_file()):
        shutil.rmtree(out / "train", ignore_errors=True)  # train again from scratch (train refuses a used folder)
        args = [f"results_dir={out}", f"train.seed={seed}", f"train.optim.lr={config['lr']!r}",
                f"train.optim.weight_decay={config['weight_decay']!r}", *overrides]
        if epochs is not None:
            args += [f"train.num_epochs={epochs}", f"train.checkpoint_interval={epochs}"]
        subprocess.run([_bin("segformer"), "train", "-e", str(spec), *args], check=True,
                       env={**ENV, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        done.write_text("ok")
    scores = {row["epoch"]: row["val_miou"] for row in read_status(status) if row["val_miou"] is not None}
    return [scores.get(e, math.nan) for e in range(max(scores) + 1)] if scores else []


def best(curve: list[float]) -> float:
    """The best validated score of a curve (what the search ranks on)."""
    return max(v for v in curve if v == v)


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman's rank correlation; None when one side is constant (undefined)."""
    from scipy.stats import spearmanr

    value = float(spearmanr(a, b).statistic)
    return value if value == value else None


def measure(name: str, count: int, shorts: list[int], resume: bool, workers: int) -> dict[str, Any]:
    spec = DATASETS[name]["spec"]
    configs = configurations(spec, count)
    jobs = [(i, c, None, 0) for i, c in enumerate(configs)] + [(i, c, None, 1) for i, c in enumerate(configs)]
    jobs += [(i, c, k, 0) for k in shorts for i, c in enumerate(configs)]
    with ThreadPoolExecutor(workers) as pool:
        curves = list(pool.map(lambda job: train(name, job[0], job[1], job[2], job[3], resume), jobs))
    results = {(job[0], job[2], job[3]): curve for job, curve in zip(jobs, curves)}
    full = [best(results[(i, None, 0)]) for i in range(count)]
    fidelities: dict[str, list[float]] = {"full, seed 1 (the ceiling)": [best(results[(i, None, 1)]) for i in range(count)]}
    for k in shorts:
        fidelities[f"prefix: epoch {k} of the full training"] = [best(results[(i, None, 0)][:k]) for i in range(count)]
        fidelities[f"short: a {k}-epoch training"] = [best(results[(i, k, 0)]) for i in range(count)]
    top = max(range(count), key=lambda i: full[i])
    third = max(1, math.ceil(count / 3))
    rows = []
    for label, scores in fidelities.items():
        order = sorted(range(count), key=lambda i: -scores[i])
        rows.append({"fidelity": label, "spearman": spearman(scores, full), "best_in_top_third": top in order[:third],
                     "regret": full[top] - full[order[0]], "scores": scores})
    return {"configs": configs, "full": full, "rows": rows, "epochs_per_config": sum(len(c) for c in curves) / count}


def render(results: dict[str, Any]) -> str:
    lines = [f"## {TITLE}", "", f"Ran on: {machine_line()} `python -m benchmarks.fidelity_rank` ({time.strftime('%Y-%m-%d')}).", ""]
    for name, data in results.items():
        count = len(data["configs"])
        lines += [f"**{name}**: {count} configurations (the spec's first), best full val mIoU "
                  f"{max(data['full']):.4f}, worst {min(data['full']):.4f}; {data['epochs_per_config']:.0f} epochs per configuration.", "",
                  "| fidelity | Spearman vs full (seed 0) | full best in its top third | regret of its first |",
                  "|---|---|---|---|"]
        for row in data["rows"]:
            rho = "n/a" if row["spearman"] is None else f"{row['spearman']:+.2f}"
            lines.append(f"| {row['fidelity']} | {rho} | {'yes' if row['best_in_top_third'] else 'no'} "
                         f"| {row['regret']:.4f} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="synth_hard,hela_boundary")
    parser.add_argument("--configs", type=int, default=10)
    parser.add_argument("--short", default="2,6", help="epochs of the low fidelities (comma-separated)")
    parser.add_argument("--workers", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    parser.add_argument("--resume", action="store_true", help="reuse finished trainings")
    parser.add_argument("--no-write", action="store_true", help="do not rewrite benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    shorts = [int(k) for k in args.short.split(",") if k.strip()]
    prepare(names)
    results = {name: measure(name, args.configs, shorts, args.resume, args.workers) for name in names}
    publish("fidelity_rank.json", results, TITLE, render(results), write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
