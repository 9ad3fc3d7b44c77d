"""The `automl run` command line for real: policy off, AutoML enabled but the skill's files missing,
a TAO settings file with flags over it, and a search on a two-node Ray cluster (two raylets on
127.0.0.1, one CPU each) placing trials on both nodes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TAO_SKILL = REPO / "tests" / "fixtures" / "tao_reference" / "tao-skill-segformer"


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> Path:
    from segformer.data.synth import generate

    root = generate(tmp_path_factory.mktemp("synth") / "data", num_classes=3, size=32, train=8, val=4, test=4)
    return root / "spec.yaml"


def _automl(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # read now: a test may set Ray's auth mode
    return subprocess.run([sys.executable, "-m", "automl.cli", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=timeout)


def _runs(results: Path) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    return [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


def _check_plain(out: subprocess.CompletedProcess, results: Path) -> None:
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "automl: trained once: best val_miou=" in out.stdout
    assert (results / "train" / "segformer_model_latest.pth").is_file()
    assert not (results / "automl_state.json").exists()  # no search
    runs = _runs(results)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert "best_val_miou" in runs[0].data.metrics and "val_miou" in runs[0].data.metrics


def test_policy_off_trains_once_and_tracks_one_run(spec, tmp_path):
    results = tmp_path / "off"
    out = _automl("run", "--skill", "segformer", "--policy", "off", "-e", str(spec), "--results-dir", str(results),
                  "--max-epochs", "1", "dataset.segment.batch_size=4", "model.decode_head.decoder_params.embed_dim=32")
    assert "AutoML policy is off" in out.stdout
    _check_plain(out, results)


def test_enabled_but_schema_missing_trains_plainly(spec, tmp_path):
    skill = tmp_path / "skill"
    shutil.copytree(TAO_SKILL, skill)
    (skill / "schemas" / "train.schema.json").unlink()
    results = tmp_path / "missing"
    out = _automl("run", "--skill-dir", str(skill), "--policy", "auto", "-e", str(spec), "--results-dir", str(results),
                  "--max-epochs", "1", "dataset.segment.batch_size=4", "model.decode_head.decoder_params.embed_dim=32")
    assert "not runnable until the schemas are generated" in out.stdout and "train.schema.json" in out.stdout
    _check_plain(out, results)


def test_tao_settings_file_and_flags_win(spec, tmp_path):
    settings = tmp_path / "settings.yaml"
    settings.write_text(
        "automl_algorithm: hyperband\n"
        "automl_max_recommendations: 7\n"
        "automl_max_epochs: 5\n"
        "automl_max_concurrent: 2\n"
        "automl_hyperparameters: [train.optim.lr, train.optim.weight_decay]\n"
        "custom_param_ranges:\n  train.optim.lr: {valid_min: 0.0001, valid_max: 0.005}\n"
    )
    out = _automl("run", "--skill", "segformer", "-e", str(spec), "--results-dir", str(tmp_path / "r"),
                  "--settings", str(settings), "--algorithm", "asha", "--max-epochs", "3", "--dry-run", timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    # flags win (asha, 3 epochs); the file gives the rest (7 trials, 2 at a time, two parameters, the lr range)
    assert "automl: asha search, up to 7 trials x 3 epochs, 2 at a time" in text
    assert "train.optim.lr" in text and "train.optim.weight_decay" in text and "[0.0001, 0.005]" in text
    assert "train.optim.momentum" not in text
    assert "first 4 trials (asha)" in text and "trial_000 (baseline): train.optim.lr=0.001" in text
    assert not (tmp_path / "r").exists()

    bad = tmp_path / "bad.yaml"
    bad.write_text("automl_max_recomendations: 3\n")
    out = _automl("run", "--skill", "segformer", "-e", str(spec), "--settings", str(bad), "--dry-run", timeout=120)
    assert out.returncode == 2 and "did you mean 'automl_max_recommendations'" in out.stderr


def test_two_node_cluster_places_trials_on_both_nodes(spec, tmp_path, monkeypatch):
    """A head and a second node (separate raylets, one CPU each) on 127.0.0.1; two trials at a time
    with one CPU each must land on different nodes. The cluster is shut down even on failure."""
    from ray.cluster_utils import Cluster

    # Token auth reads ~/.ray/auth_token, which any other Ray started in the same home directory
    # (a parallel test run) rewrites; this loopback-only test cluster and its driver go without.
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        results = tmp_path / "cluster"
        out = _automl("run", "--skill", "segformer", "-e", str(spec), "--results-dir", str(results),
                      "--address", cluster.address, "--algorithm", "random", "--max-trials", "2", "--max-epochs", "1",
                      "--max-concurrent", "2", "--cpus-per-trial", "1", "--only", "train.optim.lr", "--no-promote",
                      "dataset.segment.batch_size=4", "model.decode_head.decoder_params.embed_dim=32")
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        trials = json.loads((results / "automl_state.json").read_text())["trials"].values()
        assert [t["status"] for t in trials] == ["FINISHED", "FINISHED"]
        node_ids = {t["node_id"] for t in trials}
        assert len(node_ids) == 2 and None not in node_ids, node_ids
        assert node_ids == {n.node_id for n in [cluster.head_node, *cluster.worker_nodes]}
        # both nodes are 127.0.0.1: `automl status` tells them apart by node id
        status = _automl("status", str(results), timeout=120)
        assert status.returncode == 0 and all(f"({n[:8]})" in status.stdout for n in node_ids), status.stdout
    finally:
        cluster.shutdown()
