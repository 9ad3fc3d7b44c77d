"""Search scaling: trials per hour with 1 and 2 concurrent trials, on one node and on two.

    python -m benchmarks.search_scaling [--small] [--no-write] [--skip-cluster]

Workload: random search (no early stopping, so every trial does the same work), synthetic 64x64
data (32 train / 8 val), MiT-B0 embed_dim 64, full: 6 trials x 4 epochs, --small: 4 trials x 1
epoch, no promotion, 1 CPU per trial. Trials must last longer than a new Ray actor takes to start
(2-7 s on this loaded machine): with shorter trials Tune hands every trial to the one warm
(reused) actor and the second slot never fills. Configurations:

- local, 1 concurrent trial; local, 2 concurrent trials (this machine's Ray, all its cores);
- a two-node Ray cluster on this machine (`ray.cluster_utils.Cluster`: head + one worker node, 1 CPU
  each), 2 concurrent trials, `automl run --address <cluster>`;
- on a machine with a GPU only: 2 concurrent trials sharing one GPU (`--gpus-per-trial 0.5`).

Rate = trials / trial phase (first Ray trial start -> last trial end) in trials per hour; the
whole-process rate is shown too. Ratio to ideal = rate / (1-trial rate x concurrency), against the
1-trial rate of the same repeat (the load of a shared machine drifts between repeats).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from benchmarks.common import ROOT, SearchRun, machine_line, run_search, save_json, synth_data, write_section

TITLE = "Search scaling"
WORK = ROOT / "build" / "bench" / "search_scaling"


def rates(run: SearchRun) -> dict[str, Any]:
    trials = [t for t in run.trials if t.get("started_at") and t.get("ended_at")]
    done = [t for t in trials if t.get("status") in ("FINISHED", "STOPPED")]
    if not trials:
        return {"trials": 0, "phase_s": None, "per_hour": None, "per_hour_wall": None, "nodes": 0}
    phase = max(t["ended_at"] for t in trials) - min(t["started_at"] for t in trials)
    return {
        "trials": len(done),
        "failed": len(trials) - len(done),
        "phase_s": phase,
        "wall_s": run.wall_s,
        "per_hour": 3600 * len(done) / phase if phase > 0 else None,
        "per_hour_wall": 3600 * len(done) / run.wall_s if run.wall_s else None,
        "nodes": len({t.get("node_id") for t in trials if t.get("node_id")}),
        # Trials actually running at once, on average over the trial phase (1.0: one after another).
        "mean_running": sum(t["ended_at"] - t["started_at"] for t in trials) / phase if phase > 0 else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="4 trials x 1 epoch per configuration (CI smoke)")
    parser.add_argument("--skip-cluster", action="store_true", help="no two-node cluster measurement")
    parser.add_argument("--repeats", type=int, default=1, help="measure each configuration this many times")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)
    work = WORK / ("small" if args.small else "full")
    suffix = "_small" if args.small else ""
    trials, epochs = (4, 1) if args.small else (6, 4)
    data = synth_data(work / "data64", size=64, train=32, val=8)
    spec = data / "spec.yaml"
    overrides = ["model.decode_head.decoder_params.embed_dim=64", "dataset.segment.batch_size=8"]
    base = ["--algorithm", "random", "--max-trials", str(trials), "--max-epochs", str(epochs), "--seed", "0",
            "--no-promote", "--cpus-per-trial", "1"]

    configs: list[tuple[str, int, list[str], Any]] = [
        ("local, 1 node", 1, ["--max-concurrent", "1"], None),
        ("local, 1 node", 2, ["--max-concurrent", "2"], None),
    ]
    if not args.skip_cluster:
        configs.append(("2-node Ray cluster on this machine (head + worker, 1 CPU each)", 2, ["--max-concurrent", "2"], "cluster"))
    gpu_note = _gpu_available()
    if gpu_note:
        configs.append((f"1 GPU shared ({gpu_note}), 0.5 GPU per trial", 2,
                        ["--max-concurrent", "2", "--gpus-per-trial", "0.5"], None))

    rows: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        for label, concurrency, extra, kind in configs:
            tag = f"{label.split(',')[0].split(' ')[0]}_c{concurrency}_r{repeat}".replace(" ", "_")
            if kind == "cluster":
                row = _on_cluster(work / tag, spec, [*base, *extra], overrides)
            else:
                row = rates(run_search(work / tag, spec, [*base, *extra], overrides=overrides))
            row.update(label=label, concurrency=concurrency, repeat=repeat)
            rows.append(row)
            print(f"{label}, {concurrency} concurrent (repeat {repeat}): {row}", flush=True)
    save_json(f"search_scaling{suffix}.json", {"rows": rows, "small": args.small, "trials": trials, "epochs": epochs})
    text = render(rows, trials, epochs, args.small, gpu_note)
    print(text)
    if not args.no_write:
        write_section(TITLE, text)
    return 0


def _gpu_available() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def _on_cluster(results, spec, args, overrides) -> dict[str, Any]:
    """A head and one worker node on this machine (1 CPU each); the search joins with --address."""
    import os

    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "1")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        # Cluster() records its address in /tmp/ray/ray_current_cluster for `ray.init()` to find: any
        # other process on this machine calling ray.init() without an address would join this cluster.
        # The search below gets the address explicitly, so take that file away at once.
        try:
            from ray._common.utils import reset_ray_address

            reset_ray_address()
        except ImportError:  # older Ray: the same helper lived in ray._private.utils
            from ray._private.utils import reset_ray_address

            reset_ray_address()
        row = rates(run_search(results, spec, [*args, "--address", cluster.address], overrides=overrides))
        row["address"] = cluster.address
        return row
    finally:
        cluster.shutdown()


def render(rows: list[dict[str, Any]], trials: int, epochs: int, small: bool, gpu: str | None) -> str:
    cmd = "python -m benchmarks.search_scaling" + (" --small" if small else "")
    # Each repeat against its own 1-trial rate: the load of this shared machine changes between repeats.
    base_of = {r["repeat"]: r["per_hour"] for r in rows if r["concurrency"] == 1 and r["per_hour"]}
    lines = [f"## {TITLE}", "",
             f"`{cmd}` — random search, {trials} trials x {epochs} epochs each, synthetic 64x64 data (32 train), MiT-B0 "
             f"embed_dim 64, 1 CPU per trial, no promotion; {time.strftime('%Y-%m-%d %H:%M')}.",
             f"Machine: {machine_line()}", "",
             "Ratio to ideal: against the 1-trial rate of the same repeat (rows in order of measurement).", "",
             "| configuration | concurrent trials | trials/hour (trial phase) | trials/hour (whole process) | "
             "ratio to ideal | trials running at once (mean) | nodes used | trial phase (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = base_of.get(r["repeat"])
        ratio = (r["per_hour"] / (base * r["concurrency"])) if base and r["per_hour"] else None
        cell = (lambda v, f: "-" if v is None else format(v, f))
        lines.append(f"| {r['label']} | {r['concurrency']} | {cell(r['per_hour'], '.0f')} | "
                     f"{cell(r.get('per_hour_wall'), '.0f')} | **{cell(ratio, '.2f')}** | "
                     f"{cell(r.get('mean_running'), '.2f')} | {r.get('nodes', '-')} | "
                     f"{cell(r.get('phase_s'), '.1f')} |")
    if not gpu:
        lines += ["", "Fractional GPUs (`--gpus-per-trial 0.5`, 2 trials on one GPU): code path in this benchmark, "
                      "not run here (no GPU on this machine)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
