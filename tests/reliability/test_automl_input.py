"""Bad input to `automl run`: one clear message, a non-zero exit, no traceback, quickly."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from relhelpers import REPO, TINY, run_inprocess, run_subprocess

SKILL = REPO / "tests/fixtures/tao_reference/tao-skill-segformer"
QUICK = ["--max-trials", "1", "--max-epochs", "1", "--no-promote", *TINY]
# In-process runs have no subprocess timeout: a hang fails the test here, not CI's hard limit.
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(autouse=True)
def _environment_kept():
    """The driver sets variables for its own process (MLflow's HTTP retries, Tune's settings, PYTHONPATH);
    after an in-process run they are put back, so that the worker's later tests do not inherit them."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def _automl(dataset, results, *args, timeout=90, capsys=None):
    """`automl run` on the dataset: in a fresh process, or with ``capsys`` in this one (about 4 s of
    imports less each; for input found bad before any trial, where nothing else differs)."""
    argv = ["run", "--policy", "auto", "-e", str(dataset / "spec.yaml"), "--results-dir", str(results), *args]
    started = time.monotonic()
    if capsys is not None:
        return run_inprocess(argv, capsys, program="automl"), time.monotonic() - started
    try:
        outcome = run_subprocess("automl", argv, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"automl run {' '.join(args[:2])} still running after {timeout} s (a hang, not a clear error)")
    return outcome, time.monotonic() - started


def _clean(outcome, expected):
    assert outcome.code != 0
    assert "Traceback" not in outcome.stderr, outcome.stderr[-3000:]
    for piece in expected:
        assert piece.lower() in outcome.stderr.lower(), outcome.stderr[-3000:]


def test_unknown_algorithm(dataset, tmp_path):
    outcome, _ = _automl(dataset, tmp_path / "r", "--skill", "segformer", "--algorithm", "nonsense", *QUICK)
    _clean(outcome, ["nonsense", "bayesian"])


def test_schema_with_minimum_above_maximum(dataset, tmp_path, capsys):
    skill = tmp_path / "tao-skill-segformer"
    shutil.copytree(SKILL, skill)
    schema = skill / "schemas/train.schema.json"
    text = schema.read_text()
    start = text.index('"lr": {')
    end = text.index("}", start)
    block = text[start:end].replace('"maximum": Infinity', '"maximum": 0.0001').replace('"minimum": 0.0', '"minimum": 0.5')
    schema.write_text(text[:start] + block + text[end:])
    outcome, _ = _automl(dataset, tmp_path / "r", "--skill-dir", str(skill), "--dry-run", *QUICK, capsys=capsys)
    _clean(outcome, ["train.optim.lr", "train.schema.json", "minimum", "maximum", "0.5"])


@pytest.mark.parametrize("address", ["127.0.0.1:1", "ray://127.0.0.1:1"])
def test_ray_address_that_does_not_answer(dataset, tmp_path, address, capsys):
    """Ray retries a dead GCS address for minutes; the driver probes it first (automl/probe.py)."""
    outcome, seconds = _automl(dataset, tmp_path / "r", "--skill", "segformer", "--address", address, *QUICK,
                               capsys=capsys)
    _clean(outcome, [address, "ray start --head", "drop --address"])
    assert seconds < 15, f"took {seconds:.0f} s to report an unreachable Ray address"
    assert not (tmp_path / "r").exists()  # nothing created before the check


@pytest.mark.parametrize("policy", ["auto", "off"])
def test_mlflow_uri_that_does_not_answer(dataset, tmp_path, policy, capsys):
    """MLflow retries a dead server with backoff for minutes; the driver probes it once first."""
    outcome, seconds = _automl(dataset, tmp_path / "r", "--skill", "segformer", "--policy", policy, "--tracking-uri",
                               "http://127.0.0.1:1", *QUICK, capsys=capsys)
    _clean(outcome, ["http://127.0.0.1:1", "mlflow server", "drop --tracking-uri"])
    assert seconds < 15, f"took {seconds:.0f} s to report an unreachable MLflow server"
    assert not (tmp_path / "r" / "mlflow.db").exists()


@pytest.mark.parametrize("content", ["[1, 2]", '{"version": 2, "trials": []}', '{"version": 2, "trials": {"t": 5}}',
                                     "\x00\x01garbage"])
def test_state_file_of_the_wrong_shape(tmp_path, content):
    """`automl status` and `automl resume` on a damaged automl_state.json: one message naming it."""
    from automl.state import STATE_VERSION

    results = tmp_path / "search"
    results.mkdir()
    (results / "automl_state.json").write_text(content.replace('"version": 2', f'"version": {STATE_VERSION}'))
    for command in ("status", "resume"):
        outcome = run_subprocess("automl", [command, str(results)], timeout=90)
        _clean(outcome, [str(results / "automl_state.json")])


@pytest.mark.parametrize("kind", ["binary", "folder", "duplicate_key", "not_a_mapping"])
def test_unreadable_settings_file(dataset, tmp_path, kind):
    """--settings that cannot be read as a mapping of settings: one message naming the file."""
    path = tmp_path / "settings.yaml"
    if kind == "binary":
        path.write_bytes(bytes(range(256)) * 4)
    elif kind == "folder":
        path.mkdir()
    elif kind == "duplicate_key":
        path.write_text("automl_algorithm: random\nautoml_max_recommendations: 3\nautoml_algorithm: bayesian\n")
    else:
        path.write_text("[1, 2]\n")
    outcome, seconds = _automl(dataset, tmp_path / "r", "--skill", "segformer", "--settings", str(path), "--dry-run", *QUICK)
    _clean(outcome, ["settings.yaml"])
    assert seconds < 60


def test_spec_folder_given_to_automl(tmp_path):
    folder = tmp_path / "spec.yaml"
    folder.mkdir()
    outcome = run_subprocess("automl", ["run", "--skill", "segformer", "-e", str(folder), "--results-dir",
                                        str(tmp_path / "r2"), "--dry-run"], timeout=90)
    _clean(outcome, ["spec.yaml", "is a folder"])


def test_urls_where_automl_needs_local_files(dataset, tmp_path):
    """--results-dir s3://... wrote the whole search into a local folder named "s3:" and exited 0; a spec
    given as a URL was said not to exist. Each is one message, and nothing is written."""
    for args, expected in ((["-e", str(dataset / "spec.yaml"), "--results-dir", "s3://bkt/runs"], "the search folder s3://bkt/runs is a URL"),
                           (["-e", "s3://bkt/spec.yaml", "--results-dir", str(tmp_path / "r")], "-e s3://bkt/spec.yaml is a URL")):
        outcome = run_subprocess("automl", ["run", "--skill", "segformer", *args, "--dry-run"], cwd=tmp_path, timeout=90)
        _clean(outcome, [expected])
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_corrupt_schema_in_a_skill_folder(dataset, tmp_path):
    """Present but not JSON: an error naming the file and where it breaks, not a plain training with exit 0."""
    skill = tmp_path / "tao-skill-segformer"
    shutil.copytree(SKILL, skill)
    schema = skill / "schemas/train.schema.json"
    schema.write_text(schema.read_text()[:500])
    outcome, _ = _automl(dataset, tmp_path / "r", "--skill-dir", str(skill), *QUICK)
    _clean(outcome, ["train.schema.json", "not valid JSON", "line"])
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("bound", [".nan", "nan"])
def test_nan_bound_in_custom_param_ranges(dataset, tmp_path, bound, capsys):
    settings = tmp_path / "settings.yaml"
    settings.write_text(f"custom_param_ranges:\n  train.optim.lr:\n    valid_min: {bound}\n    valid_max: 0.01\n")
    outcome, _ = _automl(dataset, tmp_path / "r", "--skill", "segformer", "--settings", str(settings), "--dry-run", *QUICK,
                         capsys=capsys)
    _clean(outcome, ["custom_param_ranges", "train.optim.lr", "valid_min", "not a number"])


def test_equal_bounds_in_custom_param_ranges_warn(dataset, tmp_path):
    settings = tmp_path / "settings.yaml"
    settings.write_text("custom_param_ranges:\n  train.optim.lr:\n    valid_min: 0.001\n    valid_max: 0.001\n")
    outcome, _ = _automl(dataset, tmp_path / "r", "--skill", "segformer", "--settings", str(settings), "--dry-run", *QUICK)
    assert outcome.code == 0, outcome.stderr[-3000:]
    assert "train.optim.lr is fixed at 0.001, not searched" in outcome.stderr


@pytest.mark.parametrize("flag, value, unit", [("--cpus-per-trial", "64", "CPUs"), ("--gpus-per-trial", "1", "GPUs")])
def test_more_per_trial_than_the_machine_has(dataset, tmp_path, flag, value, unit):
    """Ray would keep every trial pending for ever: an error before any trial, and no folder left."""
    if unit == "GPUs":
        import torch

        if torch.cuda.is_available():
            value = str(torch.cuda.device_count() + 1)
    outcome, seconds = _automl(dataset, tmp_path / "r", "--skill", "segformer", flag, value, *QUICK)  # starts a Ray
    _clean(outcome, [flag, "no trial could ever start", unit])
    assert seconds < 60 and not (tmp_path / "r").exists()
    if unit == "GPUs":  # the dry run says it too (it checked CPUs only), and without a GPU it does not advise "0 or less"
        outcome, _ = _automl(dataset, tmp_path / "d", "--skill", "segformer", flag, value, "--dry-run", *QUICK)
        _clean(outcome, [flag, "no trial could ever start", unit])
        assert "0 or less" not in outcome.stderr


def test_time_budget_too_short_for_one_trial(dataset, tmp_path):
    outcome, _ = _automl(dataset, tmp_path / "r", "--skill", "segformer", "--time-budget", "1", *QUICK)
    assert outcome.code == 1 and "Traceback" not in outcome.stderr, outcome.stderr[-3000:]
    text = outcome.stdout + outcome.stderr
    assert "time budget of 1 s" in text and "before any trial reported an epoch" in text, text[-3000:]
    assert "for the errors" not in text  # nothing failed: no pointer to errors that do not exist


def test_a_time_budget_stops_trials_at_an_epochs_end(dataset, tmp_path, sizing=("--budget", "4")):
    """The time budget runs out while trials train (200 short epochs each): Ray's own budget stopped
    every trial at once, and an epoch that had finished but was not yet reported was missing from the
    ledger and MLflow though status.json held it. Each trial now stops at its epoch's end, that
    epoch recorded, and the search ends."""
    import json

    results = tmp_path / "r"
    outcome, _ = _automl(dataset, results, "--skill", "segformer", "--time-budget", "15", *sizing, "--no-promote", *TINY,
                         "train.num_epochs=200", timeout=240)
    assert outcome.code == 0 and "Traceback" not in outcome.stderr, outcome.stderr[-3000:]
    trials = json.loads((results / "automl_state.json").read_text())["trials"].values()
    trained = [t for t in trials if t["history"]]
    assert trained, outcome.stdout[-3000:]
    for t in trained:
        lines = (results / t["name"] / "train" / "status.json").read_text().splitlines()
        assert len(t["history"]) == len(lines) < 200, (t["name"], t["history"], lines)  # nothing trained is lost
        assert t["status"] == "STOPPED" and t["stopped_by"].startswith("time: the time budget of 15 s ran out"), t
    assert "the time budget of 15 s ran out: the trials then running stopped at the end of their epoch" in outcome.stdout, \
        outcome.stdout[-3000:]
    if "--budget" in sizing and "best     trial_000" not in outcome.stdout:  # the re-check it had planned
        assert "re-check none: the time budget (--time-budget) ran out before it" in outcome.stdout, outcome.stdout[-3000:]
        cut = sorted(t["name"] for t in trials if t["recheck_of"])  # "before it" said nothing of re-checks cut short
        assert (f"ran out before it ended ({', '.join(cut)} cut short)" if cut else "ran out before it;") in outcome.stdout \
            or "ran out before it\n" in outcome.stdout, outcome.stdout[-3000:]


@pytest.fixture(scope="module")
def relative_search(dataset, tmp_path_factory):
    """One finished search, run as `automl run ... --results-dir r dataset.segment.root_dir=data` from
    the folder that holds `data/` (a copy of the dataset): (that folder, the command's outcome). Two
    tests read it; the second damages its MLflow store, so the first keeps the outcome, not the files."""
    where = tmp_path_factory.mktemp("relative_search")
    shutil.copytree(dataset, where / "data")
    outcome = run_subprocess("automl", ["run", "--policy", "auto", "-e", str(dataset / "spec.yaml"), "--results-dir", "r",
                                        "dataset.segment.root_dir=data", *QUICK], timeout=240, cwd=where)
    return where, outcome


def test_relative_input_paths_resolve_where_the_command_runs(relative_search):
    """`root_dir: data` in a spec, run from the folder that holds `data/`: `segformer train` takes it
    from there; a search's trials run in folders of their own (Ray's), where it named nothing and every
    trial failed, though the driver's dataset check had passed."""
    _, outcome = relative_search
    assert outcome.code == 0, outcome.stdout[-3000:] + outcome.stderr[-3000:]
    assert "1 trials (1 finished)" in outcome.stdout or "1 trial (1 finished)" in outcome.stdout, outcome.stdout[-3000:]


def test_resume_with_a_damaged_mlflow_store(relative_search):
    """A search whose mlflow.db was overwritten: resume stops with one message naming the store, and
    leaves the ledger as it was (not a run that 'succeeds' against a broken store)."""
    import json

    where, outcome = relative_search
    results = where / "r"
    assert outcome.code == 0, outcome.stdout[-3000:] + outcome.stderr[-3000:]
    state_file = results / "automl_state.json"
    state = json.loads(state_file.read_text())
    state["status"] = "INTERRUPTED"
    state_file.write_text(json.dumps(state))
    store = results / "mlflow.db"
    with store.open("r+b") as handle:
        handle.write(os.urandom(4096))  # the sqlite header and first page
    before = state_file.read_text()
    outcome = run_subprocess("automl", ["resume", str(results)], timeout=120)
    _clean(outcome, [str(store), "damaged", "restore it from a copy"])
    assert state_file.read_text() == before


def test_search_into_a_full_disk(dataset, tiny_tmpfs):
    """A results folder on a full disk: one message saying the disk is full and what to do."""
    outcome, _ = _automl(dataset, tiny_tmpfs / "search", "--skill", "segformer", *QUICK)
    _clean(outcome, ["full", "free disk space", str(tiny_tmpfs / "search")])


def test_bad_data_is_one_message_before_any_trial(data_copy, tmp_path, capsys):
    """Every data problem was found by every trial (12 failed trials, 140 s, the same error cut in a
    table); the driver reads the splits once first: all problems in one message, in seconds, no search."""
    import numpy as np
    from PIL import Image

    mask = data_copy / "masks/train/train_00001.png"
    pixels = np.array(Image.open(mask).convert("RGB"))
    pixels[0, 0] = (1, 2, 3)  # a colour the palette does not list
    Image.fromarray(pixels).save(mask)
    (data_copy / "masks/val/val_00000.png").unlink()  # an image without its mask
    shutil.rmtree(data_copy / "images/test")  # the split the winner is scored on
    shutil.rmtree(data_copy / "masks/test")
    outcome, seconds = _automl(data_copy, tmp_path / "r", "--skill", "segformer", f"dataset.segment.root_dir={data_copy}",
                               *QUICK, capsys=capsys)
    _clean(outcome, ["3 problem(s)", "train_00001.png", "rgb (1, 2, 3)", "val_00000", "dataset.segment.test_split 'test'",
                     "images/test does not exist", "set dataset.segment.test_split=val and the final evaluation is skipped"])
    assert outcome.stderr.count("automl run: error") == 1
    assert not (tmp_path / "r" / "trials").exists()  # no trial started
    assert seconds < 30, f"took {seconds:.0f} s"


def test_missing_backbone_weights_are_found_before_any_trial(dataset, tmp_path, capsys):
    """Every trial loaded model.backbone.pretrained_backbone_path and failed with a traceback, one after another."""
    outcome, _ = _automl(dataset, tmp_path / "r", "--skill", "segformer",
                         f"model.backbone.pretrained_backbone_path={tmp_path / 'nope' / 'mit_b0.pth'}", *QUICK, capsys=capsys)
    _clean(outcome, ["model.backbone.pretrained_backbone_path", "nope/mit_b0.pth", "does not exist"])
    assert not (tmp_path / "r" / "trials").exists()


def test_palette_that_does_not_match_num_classes_is_found_before_any_trial(dataset, tmp_path, capsys):
    outcome, _ = _automl(dataset, tmp_path / "r", "--skill", "segformer", "dataset.segment.num_classes=5", *QUICK,
                         capsys=capsys)
    _clean(outcome, ["num_classes"])
    assert not (tmp_path / "r" / "trials").exists()


@pytest.mark.parametrize("flag, value", [("--max-trials", "0"), ("--budget", "0"), ("--max-concurrent", "0"),
                                         ("--time-budget", "-5")])
def test_a_bad_flag_is_named_as_typed(dataset, tmp_path, flag, value):
    """The message named our option (max_trials) where the user typed --max-trials."""
    outcome, _ = _automl(dataset, tmp_path / "r", "--skill", "segformer", "--dry-run", "--no-promote", *TINY, flag, value)
    _clean(outcome, [f"error: {flag} must", value])
