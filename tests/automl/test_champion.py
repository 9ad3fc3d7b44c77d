"""The promoted champion is a real MLflow model: a trained trial on a tiny synthetic dataset (32 px,
3 classes) is promoted with the real export and quantize steps into a real sqlite MLflow store,
then loaded with ``mlflow.pyfunc.load_model("models:/segformer@champion")`` and served with
``mlflow models serve`` on 127.0.0.1; the masks must be exactly those of ``segformer inference``
running the same ONNX file."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from searchhelpers import TINY, download_folder, search_options

REPO = Path(__file__).resolve().parents[2]
OVERRIDES = (*TINY, "dataset.segment.workers=0", "train.num_epochs=1", "train.checkpoint_interval=1",
             "inference.batch_size=2")
NAME = "segformer"  # the registered model of the skill "segformer"


def _state_and_tracker(results: Path, spec: Path):
    """A search ledger with its MLflow store (the driver's conventions: sqlite in the results folder)."""
    from automl.state import SearchState
    from automl.tracking import Tracker

    uri = f"sqlite:///{results / 'mlflow.db'}"
    state = SearchState(results_dir=str(results), skill="segformer", algorithm="bayesian", metric="val_miou",
                        mode="max", settings=search_options(results, spec, OVERRIDES).to_dict(), spec=str(spec),
                        overrides=list(OVERRIDES), mlflow_tracking_uri=uri)
    return state, Tracker(uri, results, "segformer")


def _trial(state, tracker, results_dir: str | None, value: float = 0.5):
    """A FINISHED trial with its own FINISHED MLflow child run (as the search leaves it)."""
    from automl.state import FINISHED, TrialRecord

    parent = tracker.start_parent("search", {}, {})
    record = TrialRecord(trial_id="t0", name="trial_000", params={}, status=FINISHED, best_value=value,
                         best_epoch=1, results_dir=results_dir)
    record.mlflow_run_id = tracker.start_child(parent, record, {})
    tracker.end_run(record.mlflow_run_id, FINISHED)
    tracker.end_run(parent, FINISHED)
    state.trials[record.trial_id] = record
    return record


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from segformer.data.synth import generate

    root = generate(tmp_path_factory.mktemp("synth") / "data", num_classes=3, size=32, train=8, val=4, test=4)
    # One larger, non-square image: the model resizes it to 32 px and its mask back to 56x40.
    Image.open(root / "images" / "test" / "test_00000.jpg").resize((56, 40)).save(root / "images" / "test" / "big.png")
    return root


@pytest.fixture(scope="module")
def champion(dataset, tmp_path_factory):
    """One trained trial promoted (export + ONNX Runtime int8 quantize) and registered."""
    from automl.options import PromotionConfig
    from automl.promote import promote
    from automl.trial import base_config
    from segformer.actions import train

    results = tmp_path_factory.mktemp("search")
    spec = dataset / "spec.yaml"
    state, tracker = _state_and_tracker(results, spec)
    trial_dir = results / "trial_000"
    started = time.time()
    train.run(base_config(str(spec), OVERRIDES, trial_dir), quiet=True)
    record = _trial(state, tracker, str(trial_dir))
    lines: list[str] = []
    killed = results / ".automl-mlflow-model-killed" / "weights"  # a driver killed while logging the model left it
    killed.mkdir(parents=True)
    report = promote(state, record, tracker, PromotionConfig(evaluate=False, trt=False), echo=lines.append)
    assert not list(results.glob(".automl-mlflow-model-*"))  # that copy and this promotion's: gone
    print(f"train + promote: {time.time() - started:.1f} s")
    assert report["steps"]["export"]["status"] == "done", report
    assert report["steps"]["quantize"]["status"] == "done", report
    assert report["steps"]["mlflow_model"]["status"] == "done", (report, lines)
    return state, record, report


@pytest.fixture
def tracking_uri(champion):
    """The fluent API's store is the search's (as `MLFLOW_TRACKING_URI` would make it), for this test only."""
    import mlflow

    state = champion[0]
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(state.mlflow_tracking_uri)
    yield state.mlflow_tracking_uri
    mlflow.set_tracking_uri(previous)


@pytest.fixture(scope="module")
def inference_masks(champion, dataset, tmp_path_factory) -> dict[str, np.ndarray]:
    """`segformer inference` with the promoted ONNX model on the test split: name -> class ids."""
    from automl.trial import base_config
    from segformer.actions import inference
    from segformer.config import apply_overrides

    state, _, _ = champion
    best = Path(state.results_dir) / "best"
    out = tmp_path_factory.mktemp("inference")
    cfg = apply_overrides(base_config(state.spec, state.overrides, out),
                          {"inference.checkpoint": str(best / "export" / "segformer.onnx")})
    result = inference.run(cfg, quiet=True)
    return {p.stem: np.asarray(Image.open(p)) for p in sorted(result.ids_dir.glob("*.png"))}


def _batches(dataset: Path) -> list[tuple[list[str], np.ndarray]]:
    """The test images as uint8 RGB batches, one per image size."""
    from segformer.data import load_image

    small = sorted(p for p in (dataset / "images" / "test").iterdir() if p.stem != "big")
    return [([p.stem for p in small], np.stack([load_image(p) for p in small])),
            (["big"], load_image(dataset / "images" / "test" / "big.png")[None])]


@pytest.mark.slow
def test_registered_champion_is_an_mlflow_model_with_its_deploy_files(champion, tracking_uri, tmp_path):
    import mlflow
    import torch
    from mlflow import MlflowClient

    state, record, report = champion
    version = MlflowClient(tracking_uri).get_model_version_by_alias(NAME, "champion")
    assert version.run_id == record.mlflow_run_id and version.source == f"runs:/{record.mlflow_run_id}/model"
    assert report["registry"] == {"model": NAME, "version": str(version.version), "alias": "champion",
                                  "source": f"runs:/{record.mlflow_run_id}/model"}
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}@champion", dst_path=str(tmp_path)))
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    flavor = mlmodel["flavors"]["python_function"]
    assert flavor["code"] == "code" and (local / "code" / "segformer" / "deploy" / "pyfunc.py").is_file()
    assert {k: Path(v["path"]).name for k, v in flavor["artifacts"].items()} == {
        "onnx": "segformer.onnx", "spec": "experiment.yaml", "checkpoint": "model.pth",
        "quantized_onnx": "quantized_model_onnxruntime.onnx", "deepstream": "config_infer_primary_segformer.txt",
        "labels": "labels.txt"}
    artifacts = local / "artifacts"
    assert (artifacts / "labels.txt").read_text().split() == ["background", "red", "green"]
    # the weights without the optimizer state, which nothing served reads; best/ keeps the resumable file
    carried = torch.load(artifacts / "model.pth", weights_only=True)
    promoted = torch.load(Path(state.results_dir) / "best" / "model.pth", weights_only=True)
    assert "optimizer_states" in promoted and "optimizer_states" not in carried
    assert carried["state_dict"].keys() == promoted["state_dict"].keys()
    assert all(torch.equal(carried["state_dict"][k], v) for k, v in promoted["state_dict"].items())
    assert (artifacts / "model.pth").stat().st_size < 0.6 * (Path(state.results_dir) / "best" / "model.pth").stat().st_size
    deepstream = (artifacts / "config_infer_primary_segformer.txt").read_text()
    assert "onnx-file=segformer.onnx" in deepstream and "labelfile-path=labels.txt" in deepstream
    spec = yaml.safe_load((artifacts / "experiment.yaml").read_text())
    assert spec["dataset"]["segment"]["img_size"] == 32  # the resolved spec (overrides applied)
    assert spec["model"]["decode_head"]["decoder_params"]["embed_dim"] == 32
    assert json.loads(mlmodel["signature"]["inputs"]) == [
        {"type": "tensor", "tensor-spec": {"dtype": "uint8", "shape": [-1, -1, -1, 3]}}]
    assert mlmodel["metadata"]["trial"] == "trial_000"
    requirements = (local / "requirements.txt").read_text().split()
    for package in ("mlflow", "onnxruntime", "onnx", "numpy", "pillow", "torch", "torchvision", "PyYAML"):
        assert any(r.lower().startswith(package.lower() + "==") for r in requirements), (package, requirements)
    assert yaml.safe_load((local / "python_env.yaml").read_text())["python"] == ".".join(map(str, sys.version_info[:3]))
    assert "serving_input_example.json" in os.listdir(local)
    promotion = json.loads((Path(state.results_dir) / "best" / "promotion.json").read_text())
    assert promotion["steps"]["mlflow_model"]["status"] == "done"


@pytest.mark.slow
def test_champion_predicts_the_masks_of_segformer_inference(champion, dataset, inference_masks, tracking_uri, tmp_path):
    import mlflow

    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion", dst_path=download_folder(tmp_path / "fp32"))
    assert len(inference_masks) == 5
    for names, images in _batches(dataset):
        masks = model.predict(images)
        assert masks.dtype == np.uint8 and masks.shape == images.shape[:3]
        for name, mask in zip(names, masks):
            np.testing.assert_array_equal(mask, inference_masks[name], err_msg=name)
    assert set(np.unique(np.concatenate([m.ravel() for m in inference_masks.values()]))) <= {0, 1, 2}
    # The int8 model rides along: the same interface, chosen at load time.
    assert model.unwrap_python_model().predictor.path.name == "segformer.onnx"  # fp32 by default
    int8 = mlflow.pyfunc.load_model(f"models:/{NAME}@champion", model_config={"precision": "int8"},
                                    dst_path=download_folder(tmp_path / "int8"))
    assert int8.unwrap_python_model().predictor.path.name == "quantized_model_onnxruntime.onnx"
    names, images = _batches(dataset)[0]
    masks = int8.predict(images)
    assert masks.shape == images.shape[:3] and masks.dtype == np.uint8
    assert np.mean(masks == np.stack([inference_masks[n] for n in names])) > 0.5
    with pytest.raises(Exception, match="N, H, W, 3|uint8|shape"):
        model.predict(images[..., 0])  # not an RGB batch


@pytest.mark.slow
def test_mlflow_models_serve_answers_a_rest_request(champion, dataset, inference_masks, tmp_path, free_port):
    state, _, _ = champion
    port = free_port()
    # As from an activated virtual environment: mlflow starts `uvicorn` from PATH.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "MLFLOW_TRACKING_URI": state.mlflow_tracking_uri, "PATH": path,
           "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
           "TMPDIR": download_folder(tmp_path / "serve_tmp")}  # where the server downloads the model
    env.pop("PYTHONPATH", None)  # the model brings its own code (code/segformer)
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{NAME}@champion", "--env-manager",
             "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240
        while True:
            assert server.poll() is None, log.read_text()[-4000:]
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=5) as reply:
                    if reply.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert time.time() < deadline, "the server did not answer /ping in time:\n" + log.read_text()[-4000:]
            time.sleep(1)
        for names, images in _batches(dataset):
            body = json.dumps({"inputs": images.tolist()}).encode()  # the documented REST input
            request = urllib.request.Request(f"{base}/invocations", data=body,
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=120) as reply:
                predictions = np.asarray(json.loads(reply.read())["predictions"])
            assert predictions.shape == images.shape[:3]
            for name, mask in zip(names, predictions):
                np.testing.assert_array_equal(mask, inference_masks[name], err_msg=name)
        bad = urllib.request.Request(f"{base}/invocations", data=json.dumps({"inputs": [[1, 2, 3]]}).encode(),
                                     headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(bad, timeout=60)
        assert err.value.code == 400
    finally:
        _stop(server)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{base}/ping", timeout=2)


def _stop(server: subprocess.Popen) -> None:
    """SIGTERM the server's process group (the mlflow CLI and its uvicorn) and wait until all of it
    has exited; SIGKILL what is left after 30 s."""
    try:
        os.killpg(server.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    started = time.time()
    while time.time() < started + 60:
        server.poll()  # reap the CLI: a zombie still counts as a member of the group
        try:
            os.killpg(server.pid, signal.SIGKILL if time.time() > started + 30 else 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    server.wait(timeout=10)


def test_without_an_onnx_model_the_checkpoint_is_still_registered(dataset, tmp_path):
    """Export off: no flavour to build; the checkpoint and spec are logged and registered as before."""
    from automl.promote import promote

    state, tracker = _state_and_tracker(tmp_path, dataset / "spec.yaml")
    record = _trial(state, tracker, None)
    best = tmp_path / "best"
    best.mkdir()
    (best / "model.pth").write_bytes(b"weights")
    shutil.copy(dataset / "spec.yaml", best / "experiment.yaml")
    prepared = {"checkpoint": str(best / "model.pth"), "steps": {"export": "skipped: disabled by flag"}}
    report = promote(state, record, tracker, echo=lambda _: None, prepared=prepared)
    assert report["steps"]["mlflow_model"].startswith("skipped: no ONNX model")
    assert report["registry"]["version"] == "1" and report["registry"]["alias"] == "champion"
    names = {a.path for a in tracker.client.list_artifacts(record.mlflow_run_id, "model")}
    assert names == {"model/model.pth", "model/experiment.yaml"}


@pytest.mark.slow
def test_a_champion_chosen_at_int8_serves_the_int8_model_by_default(champion, tmp_path):
    """A deploy-aware search that met its latency limit only at int8 registered a model that served the
    fp32 ONNX, the one it had timed over the limit, unless the user knew to ask for int8."""
    import mlflow

    from automl.promote import _log_model, champion_artifacts
    from segformer.deploy import pyfunc

    state, record, report = champion
    best = Path(state.results_dir) / "best"
    own, tracker = _state_and_tracker(tmp_path, Path(state.spec))
    chosen = _trial(own, tracker, record.results_dir)
    chosen.latency = {"latency_ms": 0.68, "precision_bits": 8.0}  # as `automl.deploy` records the choice
    logged = {"steps": dict(report["steps"])}
    _log_model(tracker, chosen, best, logged, {}, echo=lambda _: None)
    assert logged["steps"]["mlflow_model"]["precision"] == "int8", logged["steps"]["mlflow_model"]
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(own.mlflow_tracking_uri)
    try:
        model = mlflow.pyfunc.load_model(f"runs:/{chosen.mlflow_run_id}/model", dst_path=download_folder(tmp_path / "int8"))
        assert model.unwrap_python_model().predictor.path.name == "quantized_model_onnxruntime.onnx"
        fp32 = mlflow.pyfunc.load_model(f"runs:/{chosen.mlflow_run_id}/model", model_config={"precision": "fp32"},
                                        dst_path=download_folder(tmp_path / "fp32"))
        assert fp32.unwrap_python_model().predictor.path.name == "segformer.onnx"  # still there on request
    finally:
        mlflow.set_tracking_uri(previous)
    without = {k: v for k, v in champion_artifacts(best, report).items() if k != pyfunc.QUANTIZED_ONNX}
    with pytest.raises(ValueError, match="precision int8 needs"):
        pyfunc.save_model(tmp_path / "m", without, precision="int8")


def test_moving_the_champion_names_the_version_it_left_and_warns_across_specs(dataset, tmp_path):
    """A second search on another dataset against the same registry moved @champion without a word."""
    from automl.promote import promote

    state, tracker = _state_and_tracker(tmp_path, dataset / "spec.yaml")
    best = tmp_path / "best"
    best.mkdir()
    (best / "model.pth").write_bytes(b"weights")
    shutil.copy(dataset / "spec.yaml", best / "experiment.yaml")
    prepared = {"checkpoint": str(best / "model.pth"), "steps": {"export": "skipped: disabled by flag"}}
    said: list[str] = []
    for spec in (dataset / "spec.yaml", dataset / "spec.yaml", tmp_path / "other.yaml"):
        state.spec = str(spec)
        promote(state, _trial(state, tracker, None), tracker, echo=said.append, prepared=dict(prepared))
    moved = [line for line in said if line.startswith("automl: registered")]
    assert moved[0] == "automl: registered segformer version 1 as @champion", moved
    assert moved[1] == f"automl: registered segformer version 2 as @champion, which was version 1 (search {tmp_path})"
    assert moved[2].startswith("automl: registered segformer version 3 as @champion, which was version 2") and \
        f"trained from another spec ({dataset / 'spec.yaml'})" in moved[2] and "--register-model NAME" in moved[2], moved


def test_a_failing_mlflow_model_is_recorded_and_the_registry_still_gets_the_champion(dataset, tmp_path, monkeypatch):
    from automl.promote import promote
    from segformer.deploy import pyfunc

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(pyfunc, "save_model", broken)
    state, tracker = _state_and_tracker(tmp_path, dataset / "spec.yaml")
    record = _trial(state, tracker, None)
    best = tmp_path / "best"
    (best / "export").mkdir(parents=True)
    (best / "model.pth").write_bytes(b"weights")
    (best / "export" / "segformer.onnx").write_bytes(b"onnx")
    shutil.copy(dataset / "spec.yaml", best / "experiment.yaml")
    report = promote(state, record, tracker, echo=lambda _: None,
                     prepared={"checkpoint": str(best / "model.pth"), "steps": {}})
    assert report["steps"]["mlflow_model"] == "failed: RuntimeError: disk full"
    assert "disk full" in (best / "mlflow_model_error.txt").read_text()
    assert report["registry"]["model"] == NAME
    names = {a.path for a in tracker.client.list_artifacts(record.mlflow_run_id, "model")}
    assert names == {"model/model.pth", "model/experiment.yaml", "model/segformer.onnx"}
    assert json.loads((best / "promotion.json").read_text())["registry"]["version"] == "1"
