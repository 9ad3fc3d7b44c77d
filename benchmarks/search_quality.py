"""Search quality on real data: does the default search beat the user's own spec, at what price?

    python -m benchmarks.search_quality [--datasets hela_boundary,hela_nuclei,synth_hard]
                                        [--algorithms default,asha,random,bohb] [--seeds 3]
                                        [--budget 10] [--resume] [--no-write]

For each dataset (real ones from `benchmarks.realdata`, and the hard synthetic set of
`segformer data synth --hard`):

- plain: the spec trained as is (`segformer train`) with seeds 0..N-1, each evaluated on the test
  split (`segformer evaluate`): the mean, the spread and the best seed;
- default: `automl run -e spec.yaml --budget B` and nothing else (the defaults a user gets; the
  algorithm is bayesian, full trainings). Reported: the promoted model's test mIoU (the checkpoint
  a user gets), the re-check's verdict, and the epochs trained, counted from every trial's
  status.json. "default_decade": the default before 2026-12-03, whose ranges reached one decade
  either side of the spec's values instead of one and a half (recorded, not run again);
- asha, random, bohb (and any other --algorithms): the same budget with ``--algorithm X``.

The test split took no part in any decision of the searches (they rank on the validation split).
Plain seeds and searches train one thread per trial. Results: benchmarks/RESULTS.md ("Search
quality") and benchmarks/results/search_quality.json; --resume reuses finished runs' folders, and the plain
seeds and searches already recorded whose folders are gone (a search only at the same --budget).

`--rules` trains nothing either: it replays other rules the re-check could follow on every verdict
recorded in benchmarks/results/search_quality.json, against what the test split says (a table,
written into RESULTS by hand).

`--replay` trains nothing: it scores on the test split every training the searches on disk kept
(each trial's last-epoch checkpoint, and the promoted best/), to ask two questions of choices the
search makes: does ranking trials by their settled level (the mean of their last quarter of
validations) pick better models than ranking by their best epoch, and does promoting the best
epoch's checkpoint beat the last epoch's. It prints a table (written into RESULTS by hand).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR, ROOT, machine_line, publish
from segformer.parents import read_status

TITLE = "Search quality"
WORK = ROOT / "build" / "bench" / "search_quality"
REALDATA = ROOT / "build" / "bench" / "realdata"
# Each dataset's spec and the overrides that keep one training to a few minutes on 2 CPU cores.
DATASETS: dict[str, dict[str, Any]] = {
    "hela_boundary": {"spec": REALDATA / "hela_boundary" / "spec.yaml", "overrides": ["dataset.segment.img_size=128"]},
    "hela_nuclei": {"spec": REALDATA / "hela_nuclei" / "spec.yaml", "overrides": ["dataset.segment.img_size=128"]},
    # RGB histology, 4 classes (128 px tiles already: one training is about as long as hela's).
    "hgsc_nuclei_types": {"spec": REALDATA / "hgsc_nuclei_types" / "spec.yaml", "overrides": []},
    "hgsc_nuclei_types_tao_lr": {"spec": REALDATA / "hgsc_nuclei_types" / "spec.yaml", "overrides": ["train.optim.lr=6e-05"]},
    # The real image issue 15 names: 8 training tiles, 4 test tiles (noisy; a smoke-size real set).
    "stardist_nuclei": {"spec": REALDATA / "stardist_nuclei" / "spec.yaml", "overrides": []},
    # Added after the default's design was settled, to check it on data it was not shaped on: H&E
    # stroma, binary nuclei, outlines that miss some faint nuclei.
    "hgsc_stroma_nuclei": {"spec": REALDATA / "hgsc_stroma_nuclei" / "spec.yaml", "overrides": []},
    "hgsc_stroma_nuclei_tao_lr": {"spec": REALDATA / "hgsc_stroma_nuclei" / "spec.yaml", "overrides": ["train.optim.lr=6e-05"]},
    # Added 2026-12-04 (third session), again after the default was settled: brain MRI, grey, 3 tissue
    # classes (192 px slices at 128 px, as hela's tiles).
    "mni_brain_tissue": {"spec": REALDATA / "mni_brain_tissue" / "spec.yaml", "overrides": ["dataset.segment.img_size=128"]},
    "mni_brain_tissue_tao_lr": {"spec": REALDATA / "mni_brain_tissue" / "spec.yaml",
                                "overrides": ["dataset.segment.img_size=128", "train.optim.lr=6e-05"]},
    # Added 2026-12-07, after the default was settled: bacteria in transmitted light, binary (128 px tiles).
    "bacteria_colony": {"spec": REALDATA / "bacteria_colony" / "spec.yaml", "overrides": []},
    "bacteria_colony_tao_lr": {"spec": REALDATA / "bacteria_colony" / "spec.yaml", "overrides": ["train.optim.lr=6e-05"]},
    "synth_hard": {"spec": WORK / "data" / "synth_hard" / "spec.yaml", "overrides": []},
    # A user's spec with the optimizer values of TAO's train template (lr 6e-05, made for fine-tuning
    # pretrained weights) on the same real data: a spec that is not tuned for it.
    "hela_boundary_tao_lr": {"spec": REALDATA / "hela_boundary" / "spec.yaml",
                             "overrides": ["dataset.segment.img_size=128", "train.optim.lr=6e-05"]},
}
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg", "RAY_ADDRESS": "local"}
SEARCH_ENV = {**ENV, "SEGFORMER_STEP_TIMING": "1"}  # each epoch's completion time, for the efficiency curves


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def prepare(names: list[str]) -> None:
    """The datasets: real ones through `benchmarks.realdata`, the hard synthetic set generated."""
    real = sorted({DATASETS[n]["spec"].parent.name for n in names
                   if DATASETS[n]["spec"].is_relative_to(REALDATA) and not DATASETS[n]["spec"].is_file()})
    if real:
        subprocess.run([sys.executable, "-m", "benchmarks.realdata", "--only", *real], check=True, cwd=ROOT)
    if "synth_hard" in names and not DATASETS["synth_hard"]["spec"].is_file():
        subprocess.run([_bin("segformer"), "data", "synth", "--hard", "--out", str(DATASETS["synth_hard"]["spec"].parent),
                        "--size", "96", "--train", "96", "--val", "24", "--test", "24", "--epochs", "20"], check=True, cwd=ROOT)


def status_epochs(folder: Path) -> int:
    """Epochs trained under `folder`, counted from every train action's status.json (one line per epoch)."""
    return sum(len(read_status(status)) for status in folder.rglob("status.json"))


def plain(name: str, seed: int, resume: bool) -> dict[str, Any]:
    """The spec trained with `seed`, scored on the test split."""
    spec, overrides = DATASETS[name]["spec"], DATASETS[name]["overrides"]
    out = WORK / name / f"plain_seed{seed}"
    result = out / "evaluate" / "results.json"
    if not (resume and result.is_file()):
        shutil.rmtree(out / "train", ignore_errors=True)  # train again from scratch (train refuses a used folder)
        started = time.time()
        common = [f"results_dir={out}", f"train.seed={seed}", *overrides]
        subprocess.run([_bin("segformer"), "train", "-e", str(spec), *common], check=True, env={**ENV, "OMP_NUM_THREADS": "1"},
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run([_bin("segformer"), "evaluate", "-e", str(spec), *common,
                        f"evaluate.checkpoint={out}/train/segformer_model_latest.pth"], check=True, env=ENV,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        (out / "wall_s.txt").write_text(f"{time.time() - started:.1f}")
    val = [row["val_miou"] for row in read_status(out / "train" / "status.json") if row["val_miou"] is not None]
    return {"seed": seed, "test_miou": json.loads(result.read_text())["miou"], "best_val_miou": max(val),
            "epochs": status_epochs(out), "wall_s": float((out / "wall_s.txt").read_text())}


def search_key(algorithm: str, seed: int) -> str:
    """The results' key of a search: the algorithm, with ``@seed`` for search seeds other than 0."""
    return algorithm if seed == 0 else f"{algorithm}@{seed}"


def search_dir(name: str, key: str) -> Path:
    return WORK / name / f"search_{key.replace('@', '_s')}"


def search(name: str, algorithm: str, budget: float, resume: bool, seed: int = 0, spec_seed: int = 0) -> dict[str, Any]:
    """`automl run` with the defaults (algorithm "default") or --algorithm X, at `budget`; `seed` is
    the search's own seed (``automl run --seed``: the sampler's draws), not the trainings'.
    `spec_seed` other than 0: the spec's own train.seed set to it (`benchmarks.seed_for_seed`), so
    the search's baseline is the plain training of that seed."""
    spec, overrides = DATASETS[name]["spec"], DATASETS[name]["overrides"]
    key = search_key(algorithm, seed)
    out = search_dir(name, key)
    if spec_seed:
        overrides = [*overrides, f"train.seed={spec_seed}"]
        out = out.with_name(f"{out.name}_spec{spec_seed}")
    state_file = out / "automl_state.json"
    recorded = json.loads(state_file.read_text()) if state_file.is_file() else {}
    finished = recorded.get("status") == "FINISHED" and recorded["budget"]["trainings"] == budget
    wall = None
    if not (resume and finished):
        import shutil

        shutil.rmtree(out, ignore_errors=True)
        args = ["--budget", f"{budget:g}", "--skip-export", "--skip-quantize", "--skip-trt"]
        if algorithm != "default":
            args += ["--algorithm", algorithm]
        if seed:
            args += ["--seed", str(seed)]
        started = time.time()
        log = out.parent / f"{out.name}.log"
        out.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as handle:
            subprocess.run([_bin("automl"), "run", "-e", str(spec), "--results-dir", str(out), *args, *overrides],
                           env=SEARCH_ENV, stdout=handle, stderr=subprocess.STDOUT, check=True)
        wall = time.time() - started
        (out / "wall_s.txt").write_text(f"{wall:.1f}")
        shutil.rmtree(out / "ray", ignore_errors=True)  # checkpoints Ray keeps: read by nothing here
    state = json.loads(state_file.read_text())
    final = state.get("final_evaluation") or {}
    scores = final.get("test_miou", {})
    # The re-check's verdict from the ledger as this checkout decides it (the final evaluation scored
    # every training the verdict can pick, so a search run by an earlier commit reads the same way).
    from automl.budget import verdict as decide
    from automl.state import SearchState

    verdict = decide(SearchState.load(out)) or {}
    promoted = verdict.get("promoted") or state.get("best_trial")
    return {"algorithm": algorithm, "search_seed": seed, "promoted": promoted, "test_miou": scores.get(promoted), "curve": curve(out),
            "baseline_test_miou": scores.get(next((t["name"] for t in state["trials"].values() if t.get("is_baseline")), "")),
            "final": final, "recheck": verdict, "trials": len(state["trials"]),
            "epochs": status_epochs(out), "budget_epochs": round(budget * state["budget"]["spec_epochs"]),
            "wall_s": float((out / "wall_s.txt").read_text())}


def curve(out: Path) -> list[float | None]:
    """The search's running best val_miou after each epoch it trained (re-checks left out), in the
    order epochs completed."""
    from benchmarks.common import epoch_events, load_search
    from benchmarks.search_efficiency import best_curve

    run = load_search(out)
    rechecks = {t["name"] for t in run.trials if t.get("recheck_of")}
    values = [e["value"] for e in epoch_events(run) if e["trial"] not in rechecks]
    return best_curve(values, len(values))


def reach(results: dict[str, Any]) -> list[str]:
    """Search efficiency: epochs each algorithm needed to reach random search's final best val_miou,
    and to come within the spread of the plain seeds' best val_miou of it (the noise of one training:
    a search that gets there has found what random found, up to the seed)."""
    from benchmarks.search_efficiency import epochs_to_reach

    lines = []
    for name, data in results.items():
        searches = data["searches"]
        random_curve = [v for v in (searches.get("random") or {}).get("curve") or [] if v is not None]
        if not random_curve:
            continue
        target = random_curve[-1]
        vals = [p["best_val_miou"] for p in data["plain"]]
        noise = max(vals) - min(vals) if len(vals) > 1 else 0.0
        exact, near = [], []
        for algorithm, row in searches.items():
            if row.get("curve"):
                for cells, goal in ((exact, target), (near, target - noise)):
                    needed = epochs_to_reach(row["curve"], goal)
                    cells.append(f"{algorithm} {needed if needed is not None else 'never'}")
        spent = len(searches["random"]["curve"])
        lines.append(f"- {name}: random's final best val_miou {target:.4f} after {spent} search epochs "
                     f"(a third: {spent // 3}); epochs to reach it: " + ", ".join(exact) +
                     f"; to within the plain seeds' spread ({noise:.4f}) of it: " + ", ".join(near))
    return lines


def repeated(results: dict[str, Any]) -> list[str]:
    """One row per dataset and algorithm searched with several search seeds."""
    rows = []
    for name, data in results.items():
        seeds = [p["test_miou"] for p in data["plain"]]
        by_algorithm: dict[str, list[float]] = {}
        for key, row in data["searches"].items():
            if row.get("test_miou") is not None:
                by_algorithm.setdefault(key.split("@")[0], []).append(row["test_miou"])
        for algorithm, values in by_algorithm.items():
            if len(values) > 1 and seeds:
                mean = statistics.mean(values)
                rows.append(f"| {name} | {algorithm} | {len(values)} | {mean:.3f} ({min(values):.3f}..{max(values):.3f}) | "
                            f"{mean - max(seeds):+.3f} |")
    return rows


def recheck_value(results: dict[str, Any]) -> list[str]:
    """What the re-check bought, per dataset, over every recorded search (any algorithm): the promoted
    model against the search's own baseline training, next to what promoting the search's best trial
    without a re-check would have handed over (the baseline itself when it led), all on the test split."""
    rows = []
    for name, data in results.items():
        promoted, unchecked = [], []
        for row in data["searches"].values():
            verdict, scores = row.get("recheck"), (row.get("final") or {}).get("test_miou", {})
            if not verdict or row.get("test_miou") is None or not {verdict["leader"], verdict["baseline"]} <= set(scores):
                continue
            base = scores[verdict["baseline"]]
            # the baseline led otherwise (verdicts before "baseline_led" compared the values they hold)
            led = not verdict["baseline_led"] if "baseline_led" in verdict else verdict["leader_values"][0] > verdict["baseline_values"][0]
            promoted.append(row["test_miou"] - base)
            unchecked.append((scores[verdict["leader"]] if led else base) - base)
        if promoted:
            rows.append(f"| {name} | {len(promoted)} | {statistics.mean(promoted):+.4f} ({min(promoted):+.4f}) | "
                        f"{statistics.mean(unchecked):+.4f} ({min(unchecked):+.4f}) |")
    return rows


# Other rules the re-check could follow, replayed on each recorded verdict (its settled values on the two
# seeds; g0: the search's seed, inflated by the selection, g1: the re-check seed). Every rule also needs
# the leader ahead on both seeds, as the product's does.
RULES = {
    "the product's: g1 > abs(g0 - g1) / sqrt 2": lambda g0, g1, b: g1 > abs(g0 - g1) / 2 ** 0.5,
    "g1 > 0": lambda g0, g1, b: g1 > 0,
    "g1 > the baseline's seed-to-seed change abs(b0 - b1)": lambda g0, g1, b: g1 > abs(b[0] - b[1]),
    "mean gain > 2 standard errors": lambda g0, g1, b: (g0 + g1) / 2 > abs(g0 - g1),
}


def rule_replay(results: dict[str, Any], big: float = 0.005) -> list[str]:
    """`--rules`: each rule of RULES replayed on every recorded search whose leader led and whose two
    configurations were scored on the test split (means of their two trainings): how many leaders it
    promotes, the test gain those promotions realise in all, how many of them lost on test, and how
    many leaders it declined that gained more than `big` on test. The oracle promotes exactly the
    leaders that gained on test."""
    cases = []
    for data in results.values():
        for row in data["searches"].values():
            verdict, final = row.get("recheck"), row.get("final") or {}
            if not verdict or verdict.get("baseline_led") or "leader" not in final or "baseline" not in final:
                continue
            (c0, c1), (b0, b1) = verdict["leader_values"], verdict["baseline_values"]
            cases.append((c0 - b0, c1 - b1, (b0, b1), final["leader"]["mean"] - final["baseline"]["mean"]))
    rows = []
    for name, rule in RULES.items():
        decided = [(min(g0, g1) > 0 and rule(g0, g1, b), test) for g0, g1, b, test in cases]
        taken = [test for promoted, test in decided if promoted]
        declined = [test for promoted, test in decided if not promoted]
        rows.append(f"| {name} | {len(taken)} of {len(cases)} | {sum(taken):+.3f} | {sum(t < 0 for t in taken)} | "
                    f"{sum(t > big for t in declined)} |")
    rows.append(f"| oracle (the test split decides) | {sum(t > 0 for *_, t in cases)} of {len(cases)} | "
                f"{sum(max(0.0, t) for *_, t in cases):+.3f} | 0 | 0 |")
    return rows


def seed_pick(results: dict[str, Any]) -> list[str]:
    """`--rules`, second table: the plain seeds of each set, the one with the best validation mIoU (its
    best epoch) against the best and the mean on the test split (last epoch). Does a seed's luck carry
    from the validation split to the test split, so that handing over the better of a configuration's
    trainings by validation is worth something?"""
    rows, hits = [], 0
    for name, data in results.items():
        plain = [p for p in data["plain"] if p.get("best_val_miou") is not None]
        if len(plain) < 2:
            continue
        picked = max(plain, key=lambda p: p["best_val_miou"])
        tests = sorted((p["test_miou"] for p in plain), reverse=True)
        hits += picked["test_miou"] == tests[0]
        rows.append(f"| {name} | {len(plain)} | seed {picked['seed']}: {picked['test_miou']:.4f} | {tests[0]:.4f} | "
                    f"{statistics.mean(tests):.4f} | {tests.index(picked['test_miou']) + 1} |")
    return [*rows, f"| picked the best test seed | {hits} of {len(rows)} | | | | |"] if rows else []


SEED_PICK_HEADER = ["| dataset | plain seeds | picked by validation: test | best seed: test | mean: test | its rank on test |",
                    "|---|---|---|---|---|---|"]


RULES_HEADER = ["| rule (promote the leader when ...) | leaders promoted | test gain realised, in all | promoted, lost on test "
                "| declined, gained > 0.005 on test |", "|---|---|---|---|---|"]


def per_image_confusion(spec: Path, overrides: list[str], checkpoint: Path) -> Any:
    """(images, K, K) confusion matrices of `checkpoint` on the spec's test split, one per image,
    predicted as `segformer evaluate` does (the spec's size, the same resize and argmax)."""
    import numpy as np
    import torch

    from segformer.config.loader import load_config
    from segformer.data import build_data
    from segformer.engine.metrics import ConfusionMatrix
    from segformer.engine.predictor import load_predictor, resize_logits, run_predictor

    cfg = load_config(spec, [*overrides, f"evaluate.checkpoint={checkpoint}", f"results_dir={checkpoint.parent}"])
    data = build_data(cfg.dataset.segment, seed=0, eval_batch_size=8)
    data.setup("test")
    predictor, align = load_predictor(cfg, "evaluate"), bool(cfg.model.decode_head.align_corners)
    matrices = []
    with torch.no_grad():
        for batch in data.test_dataloader():
            predictions = resize_logits(run_predictor(predictor, batch["image"]), batch["mask"].shape[-2:], align).argmax(1)
            for prediction, mask in zip(predictions, batch["mask"]):
                one = ConfusionMatrix(data.num_classes)
                one.update(prediction, mask)
                matrices.append(one.matrix.numpy())
    return np.stack(matrices)


def _miou(matrices: Any) -> float:
    """mIoU of per-image confusion matrices summed (how `segformer evaluate` scores a split)."""
    import torch

    from segformer.engine.metrics import scores_from_confusion

    return float(scores_from_confusion(torch.from_numpy(matrices.sum(0))).miou)


def paired_bootstrap_sd(a: Any, b: Any, draws: int = 2000, seed: int = 0) -> float:
    """SD of mIoU(a) - mIoU(b) over the test images drawn with replacement (the same draw for both
    models: the noise of the split's sample of images, for one pair of models)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    picks = (rng.integers(0, len(a), len(a)) for _ in range(draws))
    return float(np.std([_miou(a[i]) - _miou(b[i]) for i in picks]))


def test_resolution(name: str) -> dict[str, Any] | None:
    """How finely the test split resolves the target's comparison: the default search's promoted
    model (its best/ checkpoint) against the spec's plain seed-0 training (or, where that folder is
    gone, the search's own baseline training at its last epoch), bootstrapped over the test images.
    None when neither pair of checkpoints is on disk, or best/ holds a model an earlier rule promoted."""
    from automl.budget import verdict as decide
    from automl.state import SearchState
    from segformer.engine.checkpoint_files import LATEST_NAME

    for key in sorted((k for k in (p.name.removeprefix("search_") for p in (WORK / name).glob("search_default*"))
                       if (WORK / name / f"search_{k}" / "best" / "model.pth").is_file()), key=len):
        out = WORK / name / f"search_{key}"
        plain_ckpt = WORK / name / "plain_seed0" / "train" / LATEST_NAME
        state = json.loads((out / "automl_state.json").read_text())
        replayed = (decide(SearchState.load(out)) or {}).get("promoted", state.get("best_trial"))
        if replayed != state.get("best_trial"):
            continue  # best/ holds what an earlier rule promoted, not the row's model: not the target's pair
        base = next(t["name"] for t in state["trials"].values() if t.get("is_baseline"))
        other, label = ((plain_ckpt, "plain seed 0") if plain_ckpt.is_file()
                        else (out / base / "train" / LATEST_NAME, f"the search's baseline {base}, last epoch"))
        if not other.is_file():
            continue
        promoted = per_image_confusion(out / "best" / "experiment.yaml", [], out / "best" / "model.pth")
        reference = per_image_confusion(DATASETS[name]["spec"], DATASETS[name]["overrides"], other)
        return {"search": key.replace("default_s", "default@"), "against": label, "images": len(promoted),
                "gain": _miou(promoted) - _miou(reference), "sd": paired_bootstrap_sd(promoted, reference)}
    return None


def replay(names: list[str]) -> str:
    """Markdown table for `--replay` over the default searches of `names` whose folders are on disk."""
    from scipy.stats import spearmanr

    from automl.budget import settled
    from automl.state import SearchState
    from segformer.engine.checkpoint_files import LATEST_NAME

    lines = ["| search | trainings | rank vs test: best epoch / settled | top by best epoch: test | top by settled: test "
             "| promoted: best epoch / last epoch (test) |", "|---|---|---|---|---|---|"]
    for name in names:
        for out in sorted((WORK / name).glob("search_default*")):
            if not (out / "automl_state.json").is_file():
                continue
            state = SearchState.load(out)
            scored = []
            for trial in state.trials.values():
                checkpoint = out / trial.name / "train" / LATEST_NAME
                values = [h["val_miou"] for h in trial.history if h.get("val_miou") is not None]
                if checkpoint.is_file() and values:
                    test = _miou(per_image_confusion(checkpoint.parent / "experiment.yaml", [], checkpoint))
                    scored.append((trial, len(values), max(values), settled(trial, "val_miou"), test))
            full = [row for row in scored if row[1] == max(r[1] for r in scored)]
            ranked = [row for row in full if not row[0].recheck_of]  # what the search ranked (re-checks came after)
            if len(ranked) < 3 or state.best_trial not in {row[0].name for row in scored}:
                continue
            rho = [spearmanr([row[k] for row in full], [row[4] for row in full])[0] for k in (2, 3)]
            by_peak, by_settled = (max(ranked, key=lambda row, k=k: row[k]) for k in (2, 3))
            promoted = next(row for row in scored if row[0].name == state.best_trial)
            best = _miou(per_image_confusion(out / "best" / "experiment.yaml", [], out / "best" / "model.pth"))
            lines.append(f"| {name} {out.name.removeprefix('search_')} | {len(full)} | {rho[0]:.2f} / {rho[1]:.2f} "
                         f"| {by_peak[0].name} {by_peak[4]:.4f} | {by_settled[0].name} {by_settled[4]:.4f} "
                         f"| {best:.4f} / {promoted[4]:.4f} ({best - promoted[4]:+.4f}) |")
    return "\n".join(lines)


def _outcome(verdict: dict[str, Any]) -> str:
    return "confirmed" if verdict.get("confirmed") else "baseline led" if verdict.get("baseline_led") else "not confirmed"


def render(results: dict[str, Any]) -> str:
    lines = [f"## {TITLE}", "", f"Ran on: {machine_line().rstrip('.')}. `python -m benchmarks.search_quality` "
             f"({time.strftime('%Y-%m-%d')}); every number is a test-split mIoU (the split no search ranked on).", ""]
    lines += ["| dataset | plain seeds: mean (min..max) | best plain | default search (promoted) | re-check | epochs (budget) | wall |",
              "|---|---|---|---|---|---|---|"]
    for name, data in results.items():
        seeds = [p["test_miou"] for p in data["plain"]]
        if not seeds:
            continue
        best_plain = max(seeds)
        row, label = data["searches"].get("default"), name
        if row is None and "default_decade" in data["searches"]:  # not yet searched with today's default ranges
            row, label = data["searches"]["default_decade"], f"{name} (default_decade)"
        if row is None:
            continue
        verdict = row["recheck"]
        check = (f"{_outcome(verdict)}, gain {verdict['gain']:+.3f} ± {verdict['gain_stderr']:.3f}" if verdict
                 else "none (the baseline led)")
        win = row["test_miou"] - best_plain if row["test_miou"] is not None else None
        lines.append(f"| {label} | {statistics.mean(seeds):.3f} ({min(seeds):.3f}..{max(seeds):.3f}) | {best_plain:.3f} | "
                     f"{row['test_miou']:.3f} ({row['promoted']}; {win:+.3f} vs best plain) | {check} | "
                     f"{row['epochs']} ({row['budget_epochs']}) | {row['wall_s'] / 60:.0f} min |")
    lines += ["", "Same budget, other algorithms (`--algorithm X`):", "",
              "| dataset | algorithm | promoted test mIoU | vs best plain | trials | epochs | re-check |", "|---|---|---|---|---|---|---|"]
    for name, data in results.items():
        seeds = [p["test_miou"] for p in data["plain"]]
        for algorithm, row in data["searches"].items():
            if row.get("test_miou") is None or not seeds:
                continue
            verdict = row["recheck"]
            check = _outcome(verdict) if verdict else "baseline led"
            lines.append(f"| {name} | {algorithm} | {row['test_miou']:.3f} | {row['test_miou'] - max(seeds):+.3f} | "
                         f"{row['trials']} | {row['epochs']} | {check} |")
    spread = repeated(results)
    if spread:
        lines += ["", "Repeated searches (`--search-seeds`: the same data, spec and budget, another sampler seed; "
                  "promoted test mIoU):", "", "| dataset | algorithm | searches | mean (min..max) | vs best plain (mean) |",
                  "|---|---|---|---|---|", *spread]
    value = recheck_value(results)
    if value:
        lines += ["", "What the re-check bought (every recorded search with a re-check; test mIoU minus the search's own "
                  "baseline training, mean and worst):", "",
                  "| dataset | searches | promoted (re-checked) | best trial, no re-check |", "|---|---|---|---|", *value]
    rules = rule_replay(results)
    if len(rules) > 1:
        lines += ["", "Re-check rules replayed on every recorded verdict where the leader led (`--rules`; test gain: "
                  "the leader's mean over its two trainings minus the baseline's):", "", *RULES_HEADER, *rules]
    resolution = [f"| {name} | {r['images']} | {r['search']} | {r['against']} | {r['gain']:+.4f} | {r['sd']:.4f} |"
                  for name, data in results.items() if (r := data.get("test_resolution"))]
    if resolution:
        lines += ["", "How finely the test splits resolve a gain (the promoted model against a training of the spec, "
                  "both scored per test image; the SD of their mIoU difference over 2000 draws of the images "
                  "with replacement):", "",
                  "| dataset | test images | search | against | gain | bootstrap SD |", "|---|---|---|---|---|---|", *resolution]
    efficiency = reach(results)
    if efficiency:
        lines += ["", "Search efficiency (one search each; epochs in the order they completed, re-checks left out):", "",
                  *efficiency]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="hela_boundary,hela_nuclei,synth_hard")
    parser.add_argument("--algorithms", default="default,asha,random,bohb")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--search-seeds", type=int, default=1, help="searches per algorithm (automl run --seed 0..N-1)")
    parser.add_argument("--budget", type=float, default=10.0)
    parser.add_argument("--resume", action="store_true", help="reuse finished runs")
    parser.add_argument("--no-write", action="store_true", help="do not rewrite benchmarks/RESULTS.md")
    parser.add_argument("--replay", action="store_true", help="train nothing: score the kept trainings (see above)")
    parser.add_argument("--rules", action="store_true",
                        help="train nothing: replay re-check rules on the verdicts in benchmarks/results/search_quality.json")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    if args.replay:
        print(replay(names))
        return 0
    if args.rules:
        recorded = json.loads((RESULTS_DIR / "search_quality.json").read_text())
        print("\n".join([*RULES_HEADER, *rule_replay(recorded), "", *SEED_PICK_HEADER, *seed_pick(recorded)]))
        return 0
    prepare(names)
    results: dict[str, Any] = {}
    raw = WORK / "results.json"
    if args.resume and raw.is_file():
        results = json.loads(raw.read_text())
    for name in names:
        data = results.setdefault(name, {"plain": [], "searches": {}})
        # --resume keeps the plain seeds already recorded (their folders may be gone): training them
        # again would move the "best plain" bar by CPU run-to-run noise under the searches it scores.
        recorded = {p["seed"]: p for p in data["plain"]} if args.resume else {}
        data["plain"] = [recorded.get(seed) or plain(name, seed, args.resume) for seed in range(args.seeds)]
        print(f"{name}: plain test mIoU {[round(p['test_miou'], 4) for p in data['plain']]}", flush=True)
        raw.parent.mkdir(parents=True, exist_ok=True)
        raw.write_text(json.dumps(results, indent=1))
        for algorithm, seed in [(a.strip(), k) for k in range(args.search_seeds) for a in args.algorithms.split(",") if a.strip()]:
            key = search_key(algorithm, seed)
            kept = data["searches"].get(key) if args.resume and not search_dir(name, key).is_dir() else None
            if kept and kept["budget_epochs"] == round(args.budget * data["plain"][0]["epochs"]):
                continue  # recorded by an earlier run whose folder is gone: kept as recorded
            if kept:
                print(f"{name} {key}: recorded at {kept['budget_epochs']} budget epochs, not --budget {args.budget:g}: "
                      "searching again", flush=True)
            data["searches"][key] = row = search(name, algorithm, args.budget, args.resume, seed)
            print(f"{name} {key}: promoted {row['promoted']} test mIoU {row['test_miou']}, "
                  f"{row['epochs']} epochs", flush=True)
            raw.write_text(json.dumps(results, indent=1))
        resolution = test_resolution(name)  # needs the checkpoints on disk; kept as recorded otherwise
        if resolution is not None:
            data["test_resolution"] = resolution
            raw.write_text(json.dumps(results, indent=1))
    publish("search_quality.json", results, TITLE, render(results), write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
