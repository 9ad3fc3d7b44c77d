"""End-to-end AutoML tests with real components: local Ray, sqlite MLflow, the real train action on
a tiny synthetic dataset (32 px, 3 classes). One search is shared by the module's tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from searchhelpers import TINY, search_options

from segformer.errors import DataError

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
# Searched parameters kept small so every trial is quick and the baseline is easy to recognise.
ONLY = ["train.optim.lr", "model.backbone.freeze_backbone"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from segformer.data.synth import generate

    import yaml

    root = generate(tmp_path_factory.mktemp("synth") / "data", num_classes=3, size=32, train=8, val=4, test=4)
    spec = yaml.safe_load((root / "spec.yaml").read_text())
    for key in ("input_height", "input_width"):  # as in TAO's train template: the export size is not given
        spec["export"].pop(key)
    (root / "spec.yaml").write_text(yaml.safe_dump(spec))
    return root / "spec.yaml"


def _options(results: Path, spec: Path, **kw):
    return search_options(results, spec, **{"algorithm": "bayesian", "max_trials": 3, "max_epochs": 2, "num_cpus": 2, "max_concurrent": 1,
                                            "only": ONLY, "quantize": False, "trt": False, **kw})


PROGRESS_EVERY_S = 3.0  # the status block's period in this module's search (30 s by default)
STAMPED: list[tuple[float, str]] = []  # (when, text) of everything the search printed


@pytest.fixture(scope="module")
def search(dataset, tmp_path_factory):
    """One search for the module's tests. The user's cache folder is a fresh one: the search keeps
    nothing of its own there (libraries keep theirs: matplotlib's font list, ONNX's)."""
    import automl

    results = tmp_path_factory.mktemp("search")
    cache = tmp_path_factory.mktemp("cache")
    lines: list[str] = []
    started = time.time()

    def echo(text: str) -> None:
        lines.append(text)
        STAMPED.append((time.time(), text))

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(cache))
        patch.setattr("automl.progress.LOG_EVERY_S", PROGRESS_EVERY_S)
        outcome = automl.run(_options(results, dataset, quantize=True), echo=echo)
        STAMPED.append((time.time(), "(returned)"))
    assert not (cache / "segformer-automl").exists(), list(cache.iterdir())
    return outcome, lines, time.time() - started


def test_search_is_never_silent_and_shows_the_table_off_a_terminal(search):
    """Not a terminal (the test captures the output): a status block with the trial table while
    trials run, a still-working line outside the search, never a gap much longer than the period."""
    outcome, lines, seconds = search
    blocks = [text for _, text in STAMPED if text.startswith("automl ") and "\ntrial " in text]
    assert blocks, lines
    head, table = blocks[-1].split("\n", 1)
    assert "running" in head and "trial_0" in table and "status" in table.splitlines()[0], blocks[-1]
    stamps = [when for when, _ in STAMPED]
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert max(gaps) < 4 * PROGRESS_EVERY_S, sorted(zip(gaps, [t[:80] for _, t in STAMPED[1:]]))[-3:]
    # the trials as they ended, just before the summary (the last block was printed while they ran)
    final = lines[-2].splitlines()
    assert final[0].startswith("bayesian search (finished): 3 finished") and final[1].startswith("trial "), lines[-2]
    assert sum(line.startswith("trial_00") for line in final) == 3 and lines[-1].startswith("automl: 3 trials")


def test_search_ranks_trials_and_keeps_baseline_first(search, dataset):
    outcome, lines, seconds = search
    state = outcome.state
    assert [t.status for t in sorted(state.trials.values(), key=lambda t: t.name)] == ["FINISHED"] * 3
    baseline = state.baseline()
    assert baseline.name == "trial_000"
    assert baseline.params["train.optim.lr"] == pytest.approx(0.001)  # the synthetic spec's own lr
    for trial in state.trials.values():
        values = [h["val_miou"] for h in trial.history]
        assert trial.best_value == pytest.approx(max(values))  # best epoch, not last
        assert (Path(trial.results_dir) / "train" / "status.json").is_file()
    assert outcome.best.best_value == max(t.best_value for t in state.trials.values())
    assert any("MLflow UI  automl ui" in line for line in lines)
    print(f"3-trial search with promotion: {seconds:.1f} s")


def test_mlflow_parent_children_metrics_and_registry(search):
    from mlflow import MlflowClient

    outcome, _, _ = search
    state = outcome.state
    results = Path(state.results_dir)
    assert state.mlflow_tracking_uri == f"sqlite:///{results / 'mlflow.db'}"
    client = MlflowClient(state.mlflow_tracking_uri)
    parent = client.get_run(state.mlflow_parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.info.artifact_uri.startswith((results / "mlartifacts").as_uri())
    children = client.search_runs([state.mlflow_experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(r.data.tags["automl.trial"] for r in children) == ["trial_000", "trial_001", "trial_002"]
    for run in children:
        assert run.info.status == "FINISHED"
        assert "train.optim.lr" in run.data.params
        history = client.get_metric_history(run.info.run_id, "val_miou")
        assert sorted(m.step for m in history) == [1, 2]
    version = client.get_model_version_by_alias("segformer", "champion")
    assert version.run_id == outcome.best.mlflow_run_id


def test_promotion_and_report(search):
    outcome, _, _ = search
    results = Path(outcome.state.results_dir)
    promotion = json.loads((results / "best" / "promotion.json").read_text())
    assert (results / "best" / "model.pth").is_file()
    assert promotion["steps"]["evaluate"]["status"] == "done"
    # The synthetic spec quantizes for ONNX Runtime (needs no extra), from the ONNX model just exported.
    quantize = promotion["steps"]["quantize"]
    assert quantize["status"] == "done", quantize
    assert Path(quantize["artifact"]).name == "quantized_model_onnxruntime.onnx" and Path(quantize["artifact"]).is_file()
    float_model = json.loads(Path(quantize["report_file"]).read_text())["float_model"]
    assert Path(float_model) == results / "best" / "export" / "segformer.onnx"
    import onnx  # exported at the size the model was trained at (32), not export's default of 256

    dims = onnx.load(float_model, load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims][2:] == [32, 32]
    assert not (results / "best" / "quantize" / "float_model.onnx").exists()  # not exported a second time
    report = (results / "report" / "report.md").read_text()
    assert "trial_000" in report and "Baseline" in report
    # Optuna's plots, ours, and the two models' predictions (3 trials: too few for an importance)
    for plot in ("history.png", "parallel.png", "slice.png", "learning_curves.png", "baseline_vs_best.png", "overlays.png"):
        assert (results / "report" / plot).stat().st_size > 1000, report
    assert "Not computed: 3 search trial(s) have a result" in report and (results / "report" / "report.html").is_file()


def _tail_state(outcome, results: Path, *, running: str | None, statuses: dict[str, str] | None = None):
    """The finished search's ledger as it looked in a tail: `running` still running, best/ in `results`."""
    import copy

    from automl.state import RUNNING

    state = copy.deepcopy(outcome.state)
    search = Path(state.results_dir)
    state.results_dir = str(results)
    for name in ("ray", *(r.name for r in state.trials.values())):  # the trials' checkpoints, where the search keeps them
        if not (results / name).exists():
            (results / name).symlink_to(search / name, target_is_directory=True)
    for record in state.trials.values():
        if record.name == running:
            record.status = RUNNING
        if statuses and record.name in statuses:
            record.status = statuses[record.name]
    return state


def test_early_promotion_waits_for_the_tail_then_reuses_its_steps(search, tmp_path):
    from automl.options import PromotionConfig
    from automl.promote import EarlyPromotion, promote
    from automl.state import PENDING

    outcome, _, _ = search
    best = outcome.best
    other = next(r.name for r in outcome.state.trials.values() if r.name != best.name)
    options = PromotionConfig(quantize=False, trt=False)
    early = EarlyPromotion(options, expected_trials=3, slots=2)
    # Not yet: a trial may still start (fewer than 3 recorded, or one pending), every slot busy,
    # or the best trial itself still running.
    state = _tail_state(outcome, tmp_path, running=other)
    assert not EarlyPromotion(options, expected_trials=4, slots=2).consider(state)
    assert not EarlyPromotion(options, expected_trials=3, slots=1).consider(state)
    assert not early.consider(_tail_state(outcome, tmp_path, running=best.name))
    assert not early.consider(_tail_state(outcome, tmp_path, running=other, statuses={best.name: PENDING}))
    assert not early.started

    assert early.consider(state) and early.trial_name == best.name and not early.consider(state)  # once
    prepared = early.take(state.by_name(best.name))
    assert prepared is not None and prepared["timing"]["early"] is True
    assert prepared["steps"]["evaluate"]["status"] == "done" and prepared["steps"]["export"]["status"] == "done"
    assert not (tmp_path / "best" / "promotion.json").exists()  # nothing published before the search ends
    report = promote(state, state.by_name(best.name), None, options, echo=lambda _: None, prepared=prepared)
    written = json.loads((tmp_path / "best" / "promotion.json").read_text())
    assert written["trial"] == best.name and written["timing"]["early"] is True and "_onnx" not in written
    assert report["steps"]["export"]["status"] == "done" and (tmp_path / "best" / "export" / "segformer.onnx").is_file()


def test_early_promotion_of_a_trial_overtaken_later_is_not_used(search, tmp_path):
    from automl.options import PromotionConfig
    from automl.promote import EarlyPromotion

    outcome, _, _ = search
    best = outcome.best
    other = next(r for r in outcome.state.trials.values() if r.name != best.name)
    state = _tail_state(outcome, tmp_path, running=other.name)
    early = EarlyPromotion(PromotionConfig(export=False, quantize=False, trt=False), expected_trials=3, slots=2)
    assert early.consider(state)
    assert early.take(other) is None  # the running trial ended up best: promotion runs again for it
    assert any(f"{other.name} overtook {best.name}" in line for line in early.lines)


def test_early_promotion_applies_only_where_the_tail_is_known():
    from automl import SearchOptions
    from automl.promote import EarlyPromotion

    def early(expected=5, slots=2, **kw):
        return EarlyPromotion.for_search(SearchOptions.build(kw), expected, slots)

    assert early().expected_trials == 5 and early().slots == 2
    assert early(slots=1) is None  # no slot is ever idle while a trial runs
    assert early(promote=False) is None
    assert early(expected=None) is None  # a resumed grid sizes itself
    assert early(algorithm="pbt") is None


def test_status_command(search):
    outcome, _, _ = search
    out = subprocess.run([sys.executable, "-m", "automl.cli", "status", outcome.state.results_dir],
                         capture_output=True, text=True, env=ENV, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "trial_000 * (baseline)" in out.stdout or "trial_000 (baseline)" in out.stdout
    assert out.stdout.count("FINISHED") == 3


def test_results_json_has_the_tao_runner_contract(search):
    """results.json (and `automl status --json`): the keys and types of TAO 7.1's AutoMLRunner result."""
    outcome, _, _ = search
    state = outcome.state
    written = json.loads((Path(state.results_dir) / "results.json").read_text())
    out = subprocess.run([sys.executable, "-m", "automl.cli", "status", state.results_dir, "--json"],
                         capture_output=True, text=True, env=ENV, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == written  # the file follows the ledger to the end
    assert set(written) == {"best", "progress", "baseline", "final_evaluation", "history", "pareto_front"}
    best, promoted = written["best"], state.best()
    assert best["rec_id"] == int(promoted.name.split("_")[1]) and best["specs"] == promoted.params
    assert best["metric_value"] == pytest.approx(promoted.best_value) == best["objective_values"]["val_miou"]
    progress = written["progress"]
    assert (progress["completed"], progress["total"], progress["best_rec_id"], progress["algorithm"]) == (3, 3, best["rec_id"], "bayesian")
    assert progress["best_metric"] == best["metric_value"] and progress["status"] == "finished"
    assert written["baseline"]["rec_id"] == 0 and written["baseline"]["specs"] == state.baseline().params
    assert [h["rec_id"] for h in written["history"]] == [0, 1, 2]
    assert {h["status"] for h in written["history"]} == {"success"} and all(isinstance(h["metric"], float) for h in written["history"])
    assert written["final_evaluation"]["status"] in ("done", "skipped") and written["pareto_front"] == []


# Every test of the module's `search` comes before the tests that start searches of their own:
# pytest-xdist's worksteal hands the end of a module to the idle worker, which would build `search`
# again (about 40 s) for one of its tests there.


def _browser() -> str | None:
    import shutil

    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


_CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                   "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage",
                   # the charts are drawn once laid out: every compositor stage before the DOM is read
                   "--virtual-time-budget=30000", "--run-all-compositor-stages-before-draw", "--window-size=1600,1000"]


def _page_dom(browser: str, url: str, tmp_path: Path, screenshot: Path | None = None) -> str:
    """The rendered page (the MLflow UI is a React app: the DOM after its scripts ran)."""
    profile = tmp_path / "chromium-profile"
    flags = [*_CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
    if screenshot is not None:
        subprocess.run([browser, *flags, f"--screenshot={screenshot}", url], capture_output=True, timeout=120)
    return subprocess.run([browser, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout


def _text(dom: str) -> str:
    import re

    text = re.sub(r"<style.*?</style>|<script.*?</script>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text))


def _table_rows(dom: str) -> list[str]:
    """The run names of the runs table, top to bottom (the grid's pinned name column comes first)."""
    import re

    names: list[str] = []
    for row in re.finditer(r'role="row"[^>]*row-index="(\d+)"', dom):
        if int(row.group(1)) != len(names):
            break  # the next column block starts again at row 0
        name = re.search(r">\s*(trial_\d{3}[^<]*)<", dom[row.end():row.end() + 4000])
        names.append(name.group(1).strip() if name else "")
    return names


@pytest.mark.skipif(_browser() is None, reason="headless Chromium is not installed (apt-get install -y chromium); CI installs it")
def test_mlflow_ui_answers_which_trial_is_best_in_a_real_browser(search, tmp_path, free_port):
    """`automl ui` on 127.0.0.1, rendered by headless Chromium. The view it prints lists the trials
    flat and best first, named with their parameters, with best_val_miou and the searched parameters
    as columns; its chart view plots best_val_miou against the learning rate; the parent run's page
    names the best trial and links both views; a trial's page shows its val_miou and parent. The
    server stops with `automl ui`."""
    import re
    import threading
    import urllib.request

    browser = _browser()
    outcome, _, _ = search
    state = outcome.state
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "automl.cli", "ui", state.results_dir, "--port", str(port)],
                          env=ENV, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        printed = [ui.stdout.readline() for _ in range(3)]
        threading.Thread(target=ui.stdout.read, daemon=True).start()  # the server's own output, if any
        table_url = next(line.split(": ", 1)[1].strip() for line in printed if "trials, best first:" in line)
        charts_url = next(line.split(": ", 1)[1].strip() for line in printed if "against the parameters:" in line)
        assert table_url.startswith(f"http://127.0.0.1:{port}/#/experiments/{state.mlflow_experiment_id}/runs?")

        def ready() -> bool:
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200
            except OSError:
                return False

        _wait_for(ready, 90, "the MLflow UI")
        # 1. the trials, flat and best first, named with their parameters, the metric and parameters as columns
        shot = tmp_path / "trials.png"
        dom = _page_dom(browser, table_url, tmp_path, screenshot=shot)
        assert shot.stat().st_size > 10_000
        rows = _table_rows(dom)
        by_name = {t.name: t for t in state.trials.values()}
        assert sorted(r.split()[0] for r in rows) == sorted(by_name), rows
        values = [by_name[r.split()[0]].best_value for r in rows]
        assert values == sorted(values, reverse=True), list(zip(rows, values))
        assert all("lr=" in r for r in rows), rows
        headers = _text(dom)
        for column in ("best_val_miou", "val_miou", *ONLY):
            assert column in headers, column
        # 2. its chart view: the metric against the learning rate
        dom = _page_dom(browser, charts_url, tmp_path)
        assert re.search(r'class="xtitle"[^>]*>train\.optim\.lr<', dom), _text(dom)[:3000]
        assert re.search(r'class="ytitle"[^>]*>best_val_miou<', dom)
        # 3. the parent run's description: the best trial, and the views
        base = f"http://127.0.0.1:{port}/#/experiments/{state.mlflow_experiment_id}/runs"
        parent = _text(_page_dom(browser, f"{base}/{state.mlflow_parent_run_id}", tmp_path))
        assert f"Best: {state.best_trial}" in parent and "All trials, best first" in parent, parent[:3000]
        assert "Child runs" in parent
        parent_name = next(w for w in parent.split() if w.startswith("search-"))
        # 4. a trial's page: its val_miou and its parent
        trial = by_name[rows[0].split()[0]]
        page = _text(_page_dom(browser, f"{base}/{trial.mlflow_run_id}", tmp_path))
        last = trial.history[-1]["val_miou"]
        assert f"val_miou {last!r}" in page or f"val_miou {last:.4f}" in page, page[:3000]
        assert f"Parent run {parent_name}" in page
    finally:
        ui.terminate()  # SIGTERM: `automl ui` stops its server's whole process group
        ui.wait(timeout=30)
    assert not ready(), "the MLflow server outlived `automl ui`"


def test_promoted_checkpoint_is_the_best_epoch_and_resumes_without_callback_warnings(search, tmp_path):
    """One checkpoint per epoch: the promoted model is the train action's own checkpoint of the best
    epoch (Ray got a link of it); the report callback's state sits under its own key, so resuming it
    with the plain train action asks for no missing callback."""
    import subprocess
    import sys

    import torch

    outcome, _, _ = search
    best = outcome.best
    ckpt = torch.load(Path(outcome.state.results_dir) / "best" / "model.pth", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == best.best_epoch - 1  # Lightning's 0-based epoch of the best validated epoch
    assert ckpt["automl_tune_report"]["best"] == pytest.approx(best.best_value)
    assert not any("TuneReport" in key or "automl" in key for key in ckpt.get("callbacks", {}))
    spec = Path(outcome.state.spec)
    out = subprocess.run(
        [sys.executable, "-m", "segformer.cli", "train", "-e", str(spec), f"results_dir={tmp_path}",
         "dataset.segment.batch_size=4", "model.decode_head.decoder_params.embed_dim=32",
         f"train.num_epochs={best.best_epoch + 1}", *[f"{k}={v}" for k, v in best.params.items()],
         f"train.resume_training_checkpoint_path={Path(outcome.state.results_dir) / 'best' / 'model.pth'}"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Please add the following callbacks" not in out.stdout + out.stderr


def test_best_spec_runs_export_as_written_and_a_trial_folder_is_a_parent_model(search, tmp_path, capsys):
    """`segformer export -e best/experiment.yaml` with no override exports the promoted checkpoint; a
    trial folder given as export.checkpoint gives Ray's copy of that trial's best epoch (resolved as
    every action resolves it; tests/actions/test_parents.py runs the actions on results folders)."""
    from segformer.cli import main
    from segformer.config import load_config
    from segformer.parents import resolve_parents

    outcome, _, _ = search
    best = outcome.best
    spec = Path(outcome.state.results_dir) / "best" / "experiment.yaml"
    assert main(["export", "-e", str(spec)]) == 0, capsys.readouterr().err[-3000:]
    capsys.readouterr()
    trial_dir = Path(outcome.state.results_dir) / best.name
    cfg = resolve_parents(load_config(str(spec), [f"results_dir={tmp_path}", f"export.checkpoint={trial_dir}"]), "export")
    assert cfg.export.checkpoint == str(Path(best.checkpoint) / "checkpoint.ckpt")
    assert (f"export.checkpoint: {trial_dir} is an AutoML trial folder; using {Path(best.checkpoint) / 'checkpoint.ckpt'}"
            in capsys.readouterr().out)


def test_help_does_not_import_heavy_modules():
    code = ("import sys; from automl.cli import _parser; _parser().format_help(); "
            "heavy = [m for m in ('torch', 'ray', 'mlflow', 'lightning') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, env=ENV, cwd=REPO, timeout=60)
    started = time.time()
    subprocess.run([sys.executable, "-m", "automl.cli", "--help"], check=True, env=ENV, cwd=REPO,
                   capture_output=True, timeout=60)
    assert time.time() - started < 5


def test_dry_run_and_grid_needs_finite_space(dataset, tmp_path):
    import automl

    lines: list[str] = []
    outcome = automl.run(_options(tmp_path / "dry", dataset), echo=lines.append, dry_run=True)
    text = "\n".join(lines)
    assert outcome.mode == "dry-run" and "train.optim.lr" in text and "trial_000 (baseline): train.optim.lr=0.001" in text
    assert "first 3 trials" in text and "trial_002: " in text and "trial_003" not in text, text  # max_trials 3: no more
    assert not (tmp_path / "dry").exists()
    assert "automl: dataset read: " in text  # README: a dry run checks that the data is there
    # a local dataset that is not there is said, as the run says it (the dry run printed its plan)
    with pytest.raises(DataError, match=r"dataset.segment.root_dir .*none is not a folder"):
        automl.run(_options(tmp_path / "dry", dataset, overrides=(*TINY, f"dataset.segment.root_dir={tmp_path / 'none'}")),
                   echo=lines.append, dry_run=True)
    # the run would refuse more CPUs per trial than this machine has: so does the dry run
    with pytest.raises(automl.SearchError, match=r"--cpus-per-trial 64 is more than this machine has \(2 CPUs\)"):
        automl.run(_options(tmp_path / "dry", dataset, cpus_per_trial=64, num_cpus=2), echo=lines.append, dry_run=True)
    # a folder that holds a search is refused before the data is read (here a dataset that is not there)
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "automl_state.json").write_text("{}")
    with pytest.raises(automl.SearchError, match="already holds a search"):
        automl.run(search_options(tmp_path / "used", dataset, overrides=(f"dataset.segment.root_dir={tmp_path / 'none'}",),
                                  max_trials=2), echo=lines.append)
    # the spec's own value outside the range searched: said once, in our words (Optuna's own warning left out)
    with pytest.warns(UserWarning) as caught:
        automl.run(_options(tmp_path / "dry", dataset, param_ranges={"train.optim.lr": {"valid_min": 0.5, "valid_max": 1.0}}),
                   echo=lines.append, dry_run=True)
    said = [str(w.message) for w in caught]
    assert any(m.startswith("train.optim.lr: the spec's 0.001 lies outside the range searched [0.5, 1] (custom_param_ranges; "
                            "valid_min/valid_max [0.5, 1]") for m in said), said
    assert not any("Fixed parameter" in m for m in said), said
    # a finished one is not sent to `automl resume`, which has nothing to continue
    from automl.state import FINISHED, SearchState

    SearchState(results_dir=str(tmp_path / "done"), skill="segformer", algorithm="random", metric="val_miou", mode="max",
                settings={}, status=FINISHED).save()
    with pytest.raises(automl.SearchError, match="already holds a finished search .*pick another --results-dir") as refused:
        automl.run(search_options(tmp_path / "done", dataset, max_trials=2), echo=lines.append)
    assert "automl resume" not in str(refused.value)
    with pytest.raises(automl.SearchError, match="train.optim.lr"):
        automl.run(_options(tmp_path / "grid", dataset, algorithm="grid"), echo=lines.append, dry_run=True)
    # TAO's run_baseline: false: no trial runs the spec's own values
    lines.clear()
    automl.run(_options(tmp_path / "dry", dataset, baseline_first=False), echo=lines.append, dry_run=True)
    text = "\n".join(lines)
    assert "baseline" not in text and "first 3 trials (bayesian)" in text and "trial_000: " in text
    # a budget of 4 trainings of the trials' epochs: the baseline, one other, then the re-check (it listed
    # four search trials, of which two would have been the re-check)
    lines.clear()
    automl.run(_options(tmp_path / "dry", dataset, max_trials=None, budget=4, max_epochs=None), echo=lines.append,
               dry_run=True)
    text = "\n".join(lines)
    assert "first 2 trials (bayesian)" in text and "trial_001: " in text and "trial_002" not in text, text
    assert "then the re-check (" in text and "train.seed=" in text


def test_dry_run_says_the_slots_the_run_settles_on(dataset, tmp_path):
    """--dry-run's header gives this machine's slots and CPUs per trial, as the run's header does once Ray
    is up (it said "every slot at a time (auto CPU, auto GPU each)")."""
    import automl
    from automl.ray_session import local_gpus

    assert local_gpus() is not None  # Ray's accelerator count (not public API) is still there to ask
    if local_gpus() != 0:
        pytest.skip("a GPU here: trials would take one GPU each")
    lines: list[str] = []
    # 4 CPUs and a budget of 4 trainings (2 of them the re-check): the search's 2 trainings share the CPUs
    automl.run(_options(tmp_path / "dry", dataset, max_trials=None, budget=4, max_epochs=None, num_cpus=4,
                        max_concurrent=None), echo=lines.append, dry_run=True)
    assert any(", 2 at a time (2 CPU, 0 GPU each); metric" in line for line in lines), lines
    lines.clear()
    automl.run(_options(tmp_path / "dry", dataset, num_cpus=4, max_concurrent=3), echo=lines.append, dry_run=True)
    assert any(", 3 at a time (1 CPU, 0 GPU each); metric" in line for line in lines), lines
    assert not any("(auto" in line or "every slot" in line for line in lines), lines
    # one trial (--max-trials 1) on 2 CPUs: it takes both, not one of two slots (a core sat idle)
    lines.clear()
    automl.run(_options(tmp_path / "dry", dataset, max_trials=1, max_concurrent=None), echo=lines.append, dry_run=True)
    assert any(", 1 at a time (2 CPU, 0 GPU each); metric" in line for line in lines), lines


def test_a_budget_that_sizes_nothing_is_said(dataset, tmp_path, capsys):
    """--budget with --max-trials (or TAO's automl_max_recommendations, which override it) or with PBT
    sizes nothing: the driver says so instead of ignoring the flag without a word."""
    from automl.cli import main

    args = ["run", "-e", str(dataset), "--results-dir", str(tmp_path / "a"), "--budget", "5", "--dry-run"]
    assert main([*args, "--max-trials", "2"]) == 0
    assert "automl: --budget 5 is not used: max_trials=2 (--max-trials, or automl_max_recommendations" in capsys.readouterr().out
    assert main([*args, "--algorithm", "pbt", "--only", "train.optim.lr"]) == 0
    assert "automl: --budget 5 is not used: PBT trains its population" in capsys.readouterr().out
    assert main(args) == 0
    assert "is not used" not in capsys.readouterr().out


def _wait_for(predicate, timeout: float, what: str, every: float = 0.5) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _trials(results: Path) -> dict:
    """The ledger's trials as a running search has them (its journal included), as dicts."""
    from dataclasses import asdict

    from automl.state import SearchState

    try:
        return {tid: asdict(t) for tid, t in SearchState.load(results).trials.items()}
    except (FileNotFoundError, ValueError):
        return {}


@pytest.mark.slow  # 60-125 s on 2 shared cores; CI runs it (make test)
def test_resume_after_sigkill(dataset, tmp_path):
    """Kill the driver with SIGKILL mid-search, resume: no trial repeated or lost, no duplicate runs.
    Before the kill, a second `automl run` or `automl resume` on the folder stops at once, naming the
    folder and the driver holding it; the lock goes with the killed driver, so the resume runs."""
    from mlflow import MlflowClient

    from automl.layout import Layout

    results = tmp_path / "killed"
    cmd = [sys.executable, "-m", "automl.cli", "run", "--skill", "segformer", "-e", str(dataset),
           "--results-dir", str(results), "--algorithm", "bayesian", "--max-trials", "3", "--max-epochs", "8", "--num-cpus", "2",
           # one trial at a time: one trial process to start, not two (test_budget.py's kill and resume
           # keeps the default, two at a time); no promotion, which nothing here asserts on
           "--max-concurrent", "1", "--no-promote", "dataset.segment.batch_size=4", "model.decode_head.decoder_params.embed_dim=32"]
    settings = tmp_path / "settings.yaml"
    settings.write_text("automl_hyperparameters: [train.optim.lr]\n")
    cmd += ["--settings", str(settings)]
    proc = subprocess.Popen(cmd, env=ENV, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        # ... and one complete copy of Ray's state kept: a kill before that first copy is refused with
        # its own message (test_callbacks.py), a race this test would otherwise lose now and then.
        # Warm, an epoch of this data takes about 0.2 s (2026-12-04): with 3 epochs a trial the window
        # was shorter than the polling, and 2 runs of 3 saw the search finish first; 8 leave ~1.5 s.
        _wait_for(lambda: sum(t["status"] == "FINISHED" for t in _trials(results).values()) >= 1
                  and any(t["status"] == "RUNNING" and t["history"] for t in _trials(results).values())
                  and Layout.of(results).ray_backup.is_file(),
                  240, "one finished trial, one running trial with a reported epoch and a saved Ray state", every=0.1)
        # Frozen (SIGSTOP), the driver still holds the folder and the moment of the kill stays where it
        # is (a trial blocks at its next report until the driver takes it) while two more drivers try.
        os.kill(proc.pid, signal.SIGSTOP)
        for argv in (["run", *cmd[cmd.index("--skill"):]], ["resume", str(results)]):
            started = time.monotonic()
            second = subprocess.run([sys.executable, "-m", "automl.cli", *argv], env=ENV, cwd=REPO,
                                    capture_output=True, text=True, timeout=120)
            text = second.stdout + second.stderr
            assert second.returncode != 0 and "Traceback" not in text, text[-3000:]
            assert str(results) in text and f"pid {proc.pid}" in text and "in use" in text, text[-3000:]
            assert time.monotonic() - started < 60, f"automl {argv[0]} took {time.monotonic() - started:.0f} s to refuse"
        assert proc.poll() is None, "the first search was disturbed by the second driver"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    before = _trials(results)
    finished_before = {t["name"]: t["mlflow_run_id"] for t in before.values() if t["status"] == "FINISHED"}
    # Ray's processes share the driver's fate; give them a moment to go.
    time.sleep(3)
    # The worst case of a kill: Ray keeps a trial's best and latest checkpoints only, so the one its
    # last saved state restores from may be gone (deleted after that save). Resume must not fail it.
    import shutil

    for t in before.values():
        if t["status"] != "FINISHED":
            for folder in (results / "ray" / "search" / t["name"]).glob("checkpoint_*"):
                shutil.rmtree(folder)

    out = subprocess.run([sys.executable, "-m", "automl.cli", "resume", str(results)], env=ENV, cwd=REPO,
                         capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    after = _trials(results)
    names = sorted(t["name"] for t in after.values())
    assert names == ["trial_000", "trial_001", "trial_002"], names
    assert all(t["status"] == "FINISHED" for t in after.values()), (
        {t["name"]: (t["status"], t.get("error")) for t in after.values()}, out.stdout[-3000:], out.stderr[-3000:])
    for t in after.values():  # finished trials kept their run; epochs never recorded twice
        if t["name"] in finished_before:
            assert t["mlflow_run_id"] == finished_before[t["name"]]
        epochs = [h["epoch"] for h in t["history"]]
        assert epochs == sorted(set(epochs)) and epochs[-1] == 8
    state = json.loads((results / "automl_state.json").read_text())
    client = MlflowClient(state["mlflow_tracking_uri"])
    children = client.search_runs([state["mlflow_experiment_id"]],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{state['mlflow_parent_run_id']}'")
    assert sorted(r.data.tags["automl.trial"] for r in children) == names  # no duplicates, no orphans
    assert {r.info.status for r in children} == {"FINISHED"}
    assert not (results / ".automl.lock.owner").exists()  # who held the folder is cleared at the end

    # Ray's own restore failing, on state files that are whole but not ones it can continue (here: no
    # trials), ends the resume with one message naming Ray's reason. Ray would start the experiment
    # over with an empty search space (automl.runner._restore_or_stop): a traceback under PBT, a
    # shortened search reported FINISHED under TPE.
    state["status"] = "INTERRUPTED"
    (results / "automl_state.json").write_text(json.dumps(state))
    for experiment in (results / "ray" / "search").glob("experiment_state-*.json"):  # the run's and the resume's
        experiment.write_text(json.dumps({**json.loads(experiment.read_text()), "trial_data": []}))
    refused = subprocess.run([sys.executable, "-m", "automl.cli", "resume", str(results)], env=ENV, cwd=REPO,
                             capture_output=True, text=True, timeout=300)
    said = refused.stdout + refused.stderr
    assert refused.returncode == 2 and "Traceback" not in said, said[-3000:]
    assert f"Ray could not restore its experiment state in {results / 'ray' / 'search'} (IndexError" in said, said[-3000:]
    assert {t["name"]: t["status"] for t in _trials(results).values()} == {name: "FINISHED" for name in names}


@pytest.mark.slow  # about 40 s on 2 shared cores; CI runs it (make test)
def test_a_pbt_search_resumes_after_sigkill(dataset, tmp_path):
    """PBT killed with SIGKILL after its members have trained and perturbed, resumed: it finishes. Ray
    restores a fresh synchronous PBT scheduler, whose next synchronisation point then caught up with
    the members' epoch instead of passing it, so every member waited paused for the others and the
    resumed search hung (automl.pbt)."""
    from automl.layout import Layout

    results = tmp_path / "pbt"
    settings = tmp_path / "settings.yaml"
    settings.write_text("automl_hyperparameters: [train.optim.lr]\nautoml_population_size: 2\n")
    cmd = [sys.executable, "-m", "automl.cli", "run", "--skill", "segformer", "-e", str(dataset), "--results-dir", str(results),
           "--algorithm", "pbt", "--settings", str(settings), "--max-concurrent", "2", "--max-epochs", "6", "--num-cpus", "2",
           "--no-promote", "dataset.segment.batch_size=4", "model.decode_head.decoder_params.embed_dim=32"]
    proc = subprocess.Popen(cmd, env=ENV, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        _wait_for(lambda: len(_trials(results)) == 2 and all(len(t["history"]) >= 2 for t in _trials(results).values())
                  and Layout.of(results).ray_backup.is_file(), 240, "two members with two epochs each and a saved Ray state")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    time.sleep(3)  # Ray's processes share the driver's fate; give them a moment to go
    try:  # 40-65 s on 2 cores beside a busy one; a hang shows its last table (who waits at which epoch)
        out = subprocess.run([sys.executable, "-m", "automl.cli", "resume", str(results)], env=ENV, cwd=REPO,
                             capture_output=True, text=True, timeout=420)
    except subprocess.TimeoutExpired as hung:
        said = hung.output.decode() if isinstance(hung.output, bytes) else hung.output or ""  # bytes, text=True or not
        pytest.fail(f"the resumed PBT search did not finish in {hung.timeout} s:\n{said[-2500:]}")
    if out.returncode != 0 and "cut by the kill from their last complete copy" in out.stdout + out.stderr:
        # Seen once in CI (2026-12-01): the kill cut Ray's state files, the resume restored their last
        # complete copy, and Ray's BasicVariantGenerator then failed on the preset points (KeyError:
        # 'train.optim.lr'). That KeyError was Ray starting over after its own restore had failed, for
        # a reason its quieted log hid; the resume now ends with that reason instead. What made the
        # restore fail is open: the warning carries it into CI's summary. Not the hang this test is about.
        import warnings

        warnings.warn(f"PBT resume from the backup of Ray's state failed: {(out.stdout + out.stderr)[-1500:]}")
        pytest.xfail("PBT resume from the backup of Ray's state: Ray's restore failed (known, open; see the warning)")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    after = _trials(results)
    assert {t["status"] for t in after.values()} == {"FINISHED"}, {t["name"]: t["status"] for t in after.values()}
    assert all(t["history"][-1]["epoch"] == 6 for t in after.values())
    for t in after.values():  # what the kill left is cleared: a report's hand-over folder; old PBT checkpoints
        assert not list((results / t["name"] / "train").glob("automl_ckpt_*")), t["name"]
        kept = sorted(p.name for p in (results / "ray" / "search" / t["name"]).glob("checkpoint_*"))
        assert len(kept) <= 3 and Path(t["checkpoint"]).name in kept, (t["name"], kept, t["checkpoint"])  # latest two, best


def test_mlflow_store_failure_stops_the_ray_it_started(dataset, tmp_path):
    """When the MLflow store fails, the error is the store's and no Ray is left running in this process."""
    import ray

    import automl

    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the store's folder should be")
    opts = _options(tmp_path / "search", dataset, tracking_uri=f"sqlite:///{blocker / 'mlflow.db'}")
    with pytest.raises(ValueError, match="cannot open the MLflow store sqlite:///.*not_a_folder.*--tracking-uri"):
        automl.run(opts, echo=lambda _: None)
    assert not ray.is_initialized()
