"""The search report (`automl.report`) from hand-made ledgers: Optuna's importance and plots, the
baseline-vs-best chart with and without a re-check, the overlays, the self-contained HTML page."""

from __future__ import annotations

import math
import random
import os
import re
from pathlib import Path

import pytest

from automl.state import FAILED, FINISHED, SearchState, TrialRecord

LR, MOMENTUM, FREEZE = "train.optim.lr", "train.optim.momentum", "model.backbone.freeze_backbone"


def _add(state: SearchState, number: int, params: dict, final: float, *, baseline: bool = False,
         status: str = FINISHED, recheck_of: str | None = None, epochs: int = 3) -> TrialRecord:
    record = TrialRecord(trial_id=f"id{number}", name=f"trial_{number:03d}", params=dict(params), status=status,
                         is_baseline=baseline, recheck_of=recheck_of)
    for epoch in range(1, epochs + 1):  # rising to `final` at the last epoch
        state.record_result(record, {"epoch": epoch, state.metric: final - 0.02 * (epochs - epoch)})
    state.trials[record.trial_id] = record
    return record


def _ledger(folder: Path, trials: int = 8) -> SearchState:
    """`trials` trials of which the first is the baseline: the learning rate (log-spaced over three
    decades) drives the metric, the momentum and freeze_backbone are noise."""
    state = SearchState(results_dir=str(folder), skill="segformer", algorithm="bayesian", metric="val_miou", mode="max",
                        settings={})
    rng = random.Random(3)
    for i in range(trials):
        lr = 1e-4 if i == 0 else 10 ** (-5 + 3 * rng.random())
        params = {LR: lr, MOMENTUM: rng.uniform(0.8, 0.99), FREEZE: rng.random() < 0.5}
        _add(state, i, params, 0.35 + 0.1 * (math.log10(lr) + 5) + rng.uniform(-0.005, 0.005), baseline=i == 0)
    return state


def test_fanova_ranks_the_parameter_that_drives_the_metric_first(tmp_path: Path) -> None:
    from automl.report import importance

    imp = importance(_ledger(tmp_path))
    assert imp.skipped is None and imp.evaluator == "fANOVA" and imp.trials == 8
    assert list(imp.values)[0] == LR, imp.values
    assert imp.values[LR] > 2 * max(imp.values[MOMENTUM], imp.values[FREEZE])
    assert sum(imp.values.values()) == pytest.approx(1.0)


def test_ped_anova_where_fanova_cannot_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from automl import report

    def no_fanova():
        raise ImportError("No module named 'sklearn'")  # what Optuna's fANOVA raises without scikit-learn

    monkeypatch.setattr(report, "_fanova", no_fanova)
    state = _ledger(tmp_path)
    imp = report.importance(state)
    assert imp.evaluator == "PED-ANOVA" and "fANOVA could not run (ImportError" in imp.note
    assert list(imp.values)[0] == LR, imp.values
    text = report.to_markdown(report._importance_blocks(state, imp, {}))
    assert "Evaluator: PED-ANOVA" in text and "fANOVA could not run" in text


def test_the_study_follows_the_ledger(tmp_path: Path) -> None:
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from optuna.trial import TrialState

    from automl.report import ledger_study

    state = _ledger(tmp_path)
    failed = _add(state, 8, {LR: 1e-3, MOMENTUM: 0.9, FREEZE: True}, 0.1, status=FAILED)
    _add(state, 9, {LR: 2e-3, MOMENTUM: 0.9, FREEZE: True}, 0.4)
    _add(state, 10, state.by_name("trial_003").params, 0.5, recheck_of="trial_003")  # a re-check: not ranked
    ledger = ledger_study(state)
    trials = ledger.study.get_trials()
    # numbers follow the names; the re-check after the last result is left out (the history plot's axis ran
    # on past its last point)
    assert [t.user_attrs["trial"] for t in trials] == [f"trial_{i:03d}" for i in range(10)]
    assert [t.state for t in trials[8:]] == [TrialState.FAIL, TrialState.COMPLETE] and failed.best_value is not None
    assert ledger.completed == 9 and sorted(ledger.varying) == sorted([LR, MOMENTUM, FREEZE])
    first = trials[0]
    assert first.value == pytest.approx(state.by_name("trial_000").best_value) and first.params[LR] == pytest.approx(1e-4)
    lr = first.distributions[LR]
    # lr spans three decades: a log scale over the values seen; momentum less than one: linear
    values = [t.params[LR] for t in trials if t.state == TrialState.COMPLETE]
    assert isinstance(lr, FloatDistribution) and lr.log and lr.low == min(values) and lr.high == max(values)
    assert not first.distributions[MOMENTUM].log
    assert isinstance(first.distributions[FREEZE], CategoricalDistribution)
    assert ledger.study.direction.name == "MAXIMIZE"


def test_integer_parameters_stay_integers(tmp_path: Path) -> None:
    from optuna.distributions import IntDistribution

    from automl.report import ledger_study

    state = _ledger(tmp_path)
    for i, record in enumerate(sorted(state.trials.values(), key=lambda t: t.name)):
        record.params["dataset.segment.batch_size"] = 2 + i % 3
    distributions = ledger_study(state).study.get_trials()[0].distributions
    assert isinstance(distributions["dataset.segment.batch_size"], IntDistribution)


@pytest.fixture(scope="module")
def plain_report(tmp_path_factory) -> Path:
    """The report of an 8-trial ledger without a re-check or checkpoints (written once: the plots take seconds)."""
    from automl.report import write_report

    return write_report(_ledger(tmp_path_factory.mktemp("search")))


def test_report_md_and_self_contained_html(plain_report: Path) -> None:
    path = plain_report
    folder = path.parent
    # readable by the team, as mkdir makes folders (it was built in a private 0700 folder, renamed into place)
    umask = os.umask(0)
    os.umask(umask)
    assert folder.stat().st_mode & 0o777 == 0o777 & ~umask
    for plot in ("history.png", "importance.png", "parallel.png", "slice.png", "contour.png", "learning_curves.png",
                 "baseline_vs_best.png"):
        assert (folder / plot).stat().st_size > 1000, plot
        assert f"]({plot})" in path.read_text()
    report = path.read_text()
    assert "Evaluator: fANOVA" in report and "simple estimate" not in report and "share of variance" not in report
    assert report.index(f"`{LR}`: ") < report.index(f"`{MOMENTUM}`: ")  # listed most important first
    assert "Skipped: no checkpoint of `trial_000` (baseline)" in report  # the overlays need the models
    page = (folder / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    images = re.findall(r'<img src="([^"]+)"', page)
    assert len(images) == report.count("![") and all(src.startswith("data:image/png;base64,") for src in images)
    assert not re.search(r"(src|href)=\"(?!data:)", page) and "http://" not in page and "https://" not in page
    assert "<code>trial_000</code>" in page and "<table>" in page
    assert not list(folder.parent.glob(".report*"))  # no temporary folder left
    rows = (folder / "trials.csv").read_text().splitlines()
    assert rows[0].startswith("trial,status,epoch,val_miou") and len(rows) == 1 + 8


def test_a_big_search_reports_its_best_trials_and_lists_every_one_in_the_csv(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import csv

    from automl import report

    monkeypatch.setattr(report, "REPORT_ROWS", 3)
    state = _ledger(tmp_path)
    text = report.write_report(state).read_text()
    section = text.split("## Trials", 1)[1].split("\n## ", 1)[0]
    assert "The 3 running or best of 8 trials, by name; every trial is in `trials.csv`" in section
    shown = re.findall(r"^\| (trial_\d+)", section, flags=re.M)
    best = [t.name for t in state.ranked()[:3]]
    assert sorted(shown) == sorted(best)
    with open(tmp_path / "report" / "trials.csv", newline="") as f:
        listed = [row[0].split(" ")[0] for row in list(csv.reader(f))[1:]]
    assert listed == [f"trial_{i:03d}" for i in range(8)]


def test_baseline_vs_best_without_a_recheck_says_the_noise_is_unknown(plain_report: Path) -> None:
    report = plain_report.read_text()
    section = report.split("## Baseline vs best", 1)[1].split("\n## ", 1)[0]
    assert "No re-check measured the noise" in section and "![Baseline vs best](baseline_vs_best.png)" in section
    assert (plain_report.parent / "baseline_vs_best.png").stat().st_size > 1000


def test_baseline_vs_best_with_a_recheck_shows_the_gain_and_its_noise(tmp_path: Path) -> None:
    from automl.budget import leading, verdict
    from automl.report import write_report

    state = _ledger(tmp_path)
    leader, baseline = leading(state), state.baseline()
    _add(state, 8, leader.params, leader.best_value - 0.01, recheck_of=leader.name)
    _add(state, 9, baseline.params, baseline.best_value + 0.005, recheck_of=baseline.name)
    state.recheck = verdict(state)
    state.best_trial = state.recheck["promoted"]
    report = write_report(state).read_text()
    section = report.split("## Baseline vs best", 1)[1].split("\n## ", 1)[0]
    r = state.recheck
    assert f"mean {r['gain']:+.4f} +/- {r['gain_stderr']:.4f}" in section and f"{r['gain_noise']:.4f}" in section
    assert "No re-check" not in section and (tmp_path / "report" / "baseline_vs_best.png").stat().st_size > 1000
    assert f"the gain is {r['recheck_gain']:+.4f}" in report and r["reason"] in report


@pytest.mark.parametrize("trials, reason", [(3, "3 search trial(s) have a result, besides 1 re-check (trained again on "
                                                "another seed, not ranked); an importance needs at least 4"),
                                            (6, "only one parameter (`train.optim.lr`) varied")])
def test_importance_is_skipped_with_its_reason(tmp_path: Path, trials: int, reason: str) -> None:
    """... and says why where the top of the report counts more trials finished (the re-checks)."""
    from automl.report import write_report

    state = _ledger(tmp_path, trials)
    if trials == 3:
        _add(state, 3, state.trials["id1"].params, 0.4, recheck_of="trial_001")
    if trials == 6:  # only the learning rate varies
        for record in state.trials.values():
            record.params[MOMENTUM], record.params[FREEZE] = 0.9, False
    report = write_report(state).read_text()
    assert f"Not computed: {reason}" in report and not (tmp_path / "report" / "importance.png").exists()
    assert not (tmp_path / "report" / "contour.png").exists() and (tmp_path / "report" / "history.png").exists()


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """A search folder with a baseline and a promoted trial, each with a random-weight checkpoint of
    the tiny synthetic spec (what the train action writes), and the synthetic dataset."""
    import torch

    from segformer.config import load_config
    from segformer.data.synth import generate
    from segformer.model import build_segformer, save_model_checkpoint

    data = generate(tmp_path_factory.mktemp("synth"), num_classes=3, size=32, train=2, val=4, test=1, seed=0)
    results = tmp_path_factory.mktemp("search")
    overrides = [f"dataset.segment.root_dir={data}", "model.decode_head.decoder_params.embed_dim=32"]
    cfg = load_config(data / "spec.yaml", [f"results_dir={results}", *overrides])
    state = _ledger(results, 4)
    state.spec, state.overrides = str(data / "spec.yaml"), overrides
    state.best_trial = next(t.name for t in state.ranked() if not t.is_baseline)  # promoted
    for seed, record in enumerate((state.baseline(), state.best())):
        torch.manual_seed(seed)
        model = build_segformer(cfg.model, 3, load_pretrained=False)
        record.results_dir = str(results / record.name)
        save_model_checkpoint(Path(record.results_dir) / "train" / "segformer_model_latest.pth", model,
                              {"backbone": cfg.model.backbone.type, "num_classes": 3})
    return state


@pytest.mark.slow
def test_overlays_show_both_models_on_the_same_validation_images(two_models) -> None:
    from automl.report import OVERLAY_IMAGES, write_report

    state = two_models
    report = write_report(state).read_text()
    section = report.split("## Predictions on validation images", 1)[1].split("\n## ", 1)[0]
    names = re.findall(r"`(\w+)`", section.split(":", 1)[0])
    baseline, best = state.baseline().name, state.best().name
    assert len(names) == OVERLAY_IMAGES
    assert f"![image | ground truth | baseline {baseline} | promoted {best}](overlays.png)" in section
    overlay = Path(state.results_dir) / "report" / "overlays.png"
    assert overlay.stat().st_size > 5000
    from PIL import Image

    with Image.open(overlay) as image:  # four columns, one row per image: wider than tall for 3 images
        assert image.width > image.height


@pytest.mark.slow
def test_overlays_skip_a_missing_checkpoint_with_the_reason(two_models, tmp_path: Path) -> None:
    import copy
    import os
    import shutil

    from automl.report import overlays

    state = copy.deepcopy(two_models)  # in a search folder that holds only the baseline's trial folder
    name = state.baseline().name
    shutil.copytree(Path(two_models.results_dir) / name, tmp_path / "search" / name, copy_function=os.link)
    state.results_dir = str(tmp_path / "search")
    skipped = overlays(state, tmp_path)
    assert skipped.file is None and f"no checkpoint of `{state.best().name}` (promoted)" in skipped.text


def test_when_the_baseline_led_the_report_calls_the_other_trial_the_runner_up(tmp_path: Path) -> None:
    """The search's leader was the baseline: the trial compared with it is the runner-up, in the
    comparison's text, the test-split table, the gain chart and the overlays' labels (they said "leader")."""
    from automl.budget import verdict
    from automl.report import _overlay_pair, write_report

    state = SearchState(results_dir=str(tmp_path), skill="segformer", algorithm="bayesian", metric="val_miou", mode="max",
                        settings={})
    baseline = _add(state, 0, {LR: 1e-4}, 0.60, baseline=True)
    runner_up = _add(state, 1, {LR: 1e-3}, 0.55)
    _add(state, 2, {LR: 1e-2}, 0.50)
    report = write_report(state).read_text()  # no re-check (a budget under 4 trainings)
    section = report.split("## Baseline vs best", 1)[1].split("\n## ", 1)[0]
    assert "The baseline led the search; the best other trial, `trial_001` 0.5500 against the baseline `trial_000`" in section

    _add(state, 3, runner_up.params, 0.54, recheck_of=runner_up.name)
    _add(state, 4, baseline.params, 0.61, recheck_of=baseline.name)
    state.recheck = verdict(state)
    assert state.recheck["baseline_led"] and state.recheck["leader"] == "trial_001"
    state.best_trial = state.recheck["promoted"]
    state.final_evaluation = {"split": "test", "metric": "miou",
                              "promoted": {"trials": ["trial_004", "trial_000"], "test_miou": [0.6, 0.59], "mean": 0.595},
                              "baseline": {"trials": ["trial_000", "trial_004"], "test_miou": [0.59, 0.6], "mean": 0.595},
                              "leader": {"trials": ["trial_001", "trial_003"], "test_miou": [0.5, 0.52], "mean": 0.51}}
    report = write_report(state).read_text()
    assert "| runner-up | trial_001, trial_003 |" in report and "| leader |" not in report
    assert [role for role, _ in _overlay_pair(state)[0]] == ["baseline (promoted)", "runner-up, not promoted"]
    # a promoted leader is one row, not a promoted row and a leader row with the same trials
    state.final_evaluation["promoted"] = state.final_evaluation["leader"]
    state.recheck["baseline_led"] = False
    table = write_report(state).read_text().split("## Final evaluation", 1)[1]
    assert table.count("trial_001, trial_003") == 1, table
    assert "different numbers of epochs" not in table  # ledgers without the epochs: nothing to say
    # a scheduler stopped one of them early: the report says so, as the console does
    state.final_evaluation["baseline"]["epochs"] = [1, 3]
    state.final_evaluation["leader"]["epochs"] = [3, 3]
    table = write_report(state).read_text().split("## Final evaluation", 1)[1]
    assert ("Note: these trainings ran different numbers of epochs (trial_001 3, trial_003 3, trial_000 1, trial_004 3; "
            "the shorter ones were stopped early)") in table, table


def test_the_report_of_failed_trials_says_what_ended_them(tmp_path: Path) -> None:
    """A search whose trials all failed had a report of FAILED rows and no word of why (the console and
    `automl status` said it)."""
    from automl.report import write_report

    state = SearchState(results_dir=str(tmp_path), skill="segformer", algorithm="bayesian", metric="val_miou", mode="max",
                        settings={})
    for i in range(3):
        record = _add(state, i, {LR: 10.0 ** -(i + 3)}, 0.0, baseline=i == 0, status=FAILED, epochs=0)
        record.error = f"Traceback (most recent call last):\n  ...\nOSError: cannot identify image file 'val_{i}.jpg'\n"
    report = write_report(state).read_text()
    section = report.split("## Failed trials", 1)[1].split("\n## ", 1)[0]
    assert "| trial_002 | OSError: cannot identify image file 'val_2.jpg' |" in section, section


def test_every_trial_shows_in_the_parallel_coordinates(tmp_path: Path) -> None:
    """Optuna drew the worst trial white on white and the best along the frame's top edge: with 2 or 3
    trials the plot looked empty."""
    import numpy as np
    from matplotlib.collections import LineCollection
    from optuna.visualization.matplotlib import plot_parallel_coordinate

    from automl.report import _lines_seen, _pyplot, ledger_study

    ledger = ledger_study(_ledger(tmp_path, 3))
    with _pyplot() as plt:
        ax = plot_parallel_coordinate(ledger.study, params=ledger.varying)
        plt.close(ax.figure)  # (drawn into and read all the same)
        _lines_seen(ax.figure, ax)
        lines = next(c for c in ax.collections if isinstance(c, LineCollection))
        colours = lines.get_cmap()(lines.norm(np.asarray(lines.get_array())))
        assert colours[:, :3].sum(axis=1).max() < 2.6  # none near white (3.0)
        low, high = ax.get_ylim()
        ys = np.concatenate([segment[:, 1] for segment in lines.get_segments()])
        assert low < ys.min() and ys.max() < high  # none on the frame
