"""Datasets and checkpoints in object storage (``segformer.remote``), against a real S3 API: moto's
server on 127.0.0.1, reached through s3fs with ``AWS_ENDPOINT_URL``, as a MinIO user would."""

from __future__ import annotations

import contextlib
import http.server
import importlib.util
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from segformer.config import ConfigError, load_config

pytest.importorskip("s3fs", reason="s3fs is not installed (pip install '.[s3]' or '.[dev]')")
moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed (pip install '.[dev]')")

REPO = Path(__file__).resolve().parents[2]
BUCKET = "bucket"
TINY = ["train.num_epochs=1", "train.seed=7", "model.decode_head.decoder_params.embed_dim=32",
        "dataset.segment.batch_size=4", "dataset.segment.workers=0", "evaluate.batch_size=4"]


@pytest.fixture(scope="module")
def s3(tmp_path_factory, free_port):
    """A moto S3 server holding a tiny synthetic TAO dataset at s3://bucket/seg, the environment a
    user of an S3-compatible server sets, and a fresh cache folder. Yields (s3fs file system, spec)."""
    import fsspec

    from segformer.data.synth import generate

    data = generate(tmp_path_factory.mktemp("synth") / "seg", num_classes=3, size=32, train=8, val=4, test=4)
    home = tmp_path_factory.mktemp("home")
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log line per request
    with pytest.MonkeyPatch.context() as patch:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "SEGFORMER_REMOTE_CACHE"):
            patch.delenv(name, raising=False)
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        patch.setenv("AWS_CONFIG_FILE", str(home / "aws-config"))  # never the user's ~/.aws
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "aws-credentials"))
        patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        patch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        patch.setenv("XDG_CACHE_HOME", str(home / "cache"))
        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        fs.mkdir(BUCKET)
        fs.put(str(data), f"{BUCKET}/seg", recursive=True)
        yield fs, data / "spec.yaml"
    server.stop()


def _config(spec: Path, results: Path, *overrides: str):
    return load_config(spec, [f"results_dir={results}", *TINY, *overrides])


def _cache() -> Path:
    from segformer.remote import cache_root

    return cache_root()


def _new_process(monkeypatch) -> None:
    """Forget what this process fetched (`segformer.remote` lists each URL once per process)."""
    from segformer import remote

    monkeypatch.setattr(remote, "_FETCHED", {})


@contextlib.contextmanager
def _serving(folder: Path):
    """An http:// server on 127.0.0.1 serving ``folder`` (query strings ignored); yields its base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


def _onnx_model(folder: Path, weights: list[float], name: str = "m") -> Path:
    """A MatMul ONNX model keeping its (2, 3) weight in the external-data file ``<name>.onnx.data``."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.asarray(weights, dtype=np.float32).reshape(2, 3), name="w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], [weight])
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save_model(helper.make_model(graph), str(folder / f"{name}.onnx"), save_as_external_data=True,
                    location=f"{name}.onnx.data", size_threshold=0)
    return folder / f"{name}.onnx"


def _weights(model: Path) -> list:
    import onnx
    from onnx import numpy_helper

    return numpy_helper.to_array(onnx.load(str(model)).graph.initializer[0]).ravel().tolist()


@contextlib.contextmanager
def _log(name: str = "segformer.remote"):
    """The messages (INFO and above) of logger ``name`` while the block runs: by default those of
    `segformer.remote` (one per download); "werkzeug": each request moto's S3 server answers; "":
    every logger's."""
    logger, lines = logging.getLogger(name), []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture(scope="module")
def trained(s3, tmp_path_factory):
    """One epoch of `segformer train` on s3://bucket/seg: (config, TrainResult, fetch log lines)."""
    from segformer.actions import train

    _, spec = s3
    with _log() as lines:
        cfg = _config(spec, tmp_path_factory.mktemp("results"), f"dataset.segment.root_dir=s3://{BUCKET}/seg")
        result = train.run(cfg, quiet=True)
    return cfg, result, lines


def test_train_reads_an_s3_dataset_from_the_cache_and_fetches_it_once(s3, trained, tmp_path):
    _, spec = s3
    cfg, result, fetched = trained
    root = Path(cfg.dataset.segment.root_dir)
    assert _cache() in root.parents and (root / "images" / "train").is_dir() and (root / "masks" / "val").is_dir()
    assert len(fetched) == 1 and f"s3://{BUCKET}/seg" in fetched[0]
    assert result.best_miou is not None and result.last_checkpoint.is_file()
    # The saved spec names the URL the user gave, not the machine's cache.
    assert f"root_dir: s3://{BUCKET}/seg\n" in (result.results_dir / "experiment.yaml").read_text()

    image = next((root / "images" / "train").iterdir())
    before = image.stat()
    with _log() as lines:
        again = _config(spec, tmp_path, f"dataset.segment.root_dir=s3://{BUCKET}/seg")
    assert again.dataset.segment.root_dir == str(root) and lines == []  # nothing downloaded
    assert (image.stat().st_ino, image.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_a_changed_object_fetches_a_new_version(s3, tmp_path, monkeypatch):
    """A process keeps the version it listed first; the next process fetches the changed one."""
    fs, spec = s3
    fs.put(str(spec), f"{BUCKET}/versioned/images/train/a.png")
    first = Path(_config(spec, tmp_path, f"dataset.segment.root_dir=s3://{BUCKET}/versioned").dataset.segment.root_dir)
    fs.pipe(f"{BUCKET}/versioned/images/train/a.png", b"other content")
    assert first == Path(_config(spec, tmp_path, f"dataset.segment.root_dir=s3://{BUCKET}/versioned").dataset.segment.root_dir)
    _new_process(monkeypatch)
    second = Path(_config(spec, tmp_path, f"dataset.segment.root_dir=s3://{BUCKET}/versioned").dataset.segment.root_dir)
    assert second != first and (second / "images/train/a.png").read_bytes() == b"other content"
    assert not list(second.parent.parent.glob(".*.tmp"))  # no download folder left behind
    # the same bytes uploaded again (a re-sync): a new modification time, the same ETag, the same copy
    time.sleep(1.1)  # (S3's times are in whole seconds)
    fs.pipe(f"{BUCKET}/versioned/images/train/a.png", b"other content")
    _new_process(monkeypatch)
    assert Path(_config(spec, tmp_path, f"dataset.segment.root_dir=s3://{BUCKET}/versioned").dataset.segment.root_dir) == second


def test_two_processes_fetching_the_same_data_share_one_download(s3, tmp_path):
    """Two trials starting together on one machine: one downloads under the lock, the other waits
    and uses the finished copy."""
    fs, spec = s3
    for name in ("a", "b", "c"):
        fs.pipe(f"{BUCKET}/together/images/train/{name}.png", name.encode() * 1000)
    script = ("import sys, logging; logging.basicConfig(level=logging.INFO, stream=sys.stdout, format='%(message)s')\n"
              "from segformer.remote import fetch\n"
              f"print('LOCAL', fetch('s3://{BUCKET}/together', 'dataset.segment.root_dir', 'dataset'))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=env) for _ in range(2)]
    outputs = [proc.communicate(timeout=120)[0] for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), outputs
    locals_ = {line.split(" ", 1)[1] for out in outputs for line in out.splitlines() if line.startswith("LOCAL ")}
    assert len(locals_) == 1 and sum(out.count("fetching s3://") for out in outputs) == 1, outputs
    local = Path(locals_.pop())
    assert sorted(p.name for p in (local / "images/train").iterdir()) == ["a.png", "b.png", "c.png"]
    assert not list(local.parent.parent.glob(".*.tmp"))


def test_an_onnx_model_comes_with_its_external_data(s3, tmp_path, monkeypatch):
    fs, spec = s3
    fs.put(str(_onnx_model(tmp_path / "v1", [0, 1, 2, 3, 4, 5]).parent), f"{BUCKET}/onnx", recursive=True)
    url = f"s3://{BUCKET}/onnx/m.onnx"
    local = Path(_config(spec, tmp_path, f"gen_trt_engine.onnx_file={url}").gen_trt_engine.onnx_file)
    assert (local.parent / "m.onnx.data").is_file()
    assert _weights(local) == [0, 1, 2, 3, 4, 5]  # external data found next to the copy

    # New weights, same graph: the .onnx file is the same version, its external data is fetched again;
    # a side-file download killed half-way leaves nothing behind.
    stale = local.parent / ".m.onnx.data.99999.tmp"
    stale.write_bytes(b"half")
    fs.put(str(_onnx_model(tmp_path / "v2", [5, 4, 3, 2, 1, 0]).with_suffix(".onnx.data")), f"{BUCKET}/onnx/m.onnx.data")
    _new_process(monkeypatch)
    again = Path(_config(spec, tmp_path, f"gen_trt_engine.onnx_file={url}").gen_trt_engine.onnx_file)
    assert again == local and _weights(again) == [5, 4, 3, 2, 1, 0] and not stale.exists()


def test_onnx_external_data_outside_the_model_folder_is_refused(s3, tmp_path):
    import onnx

    fs, spec = s3
    model = onnx.load(str(_onnx_model(tmp_path / "m", [0, 1, 2, 3, 4, 5])), load_external_data=False)
    for item in model.graph.initializer[0].external_data:
        if item.key == "location":
            item.value = "../../../escaped.data"
    onnx.save(model, str(tmp_path / "evil.onnx"))
    fs.put(str(tmp_path / "evil.onnx"), f"{BUCKET}/deep/a/b/evil.onnx")
    fs.put(str(tmp_path / "m" / "m.onnx.data"), f"{BUCKET}/escaped.data")
    url = f"s3://{BUCKET}/deep/a/b/evil.onnx"
    with pytest.raises(ConfigError) as caught:
        _config(spec, tmp_path, f"gen_trt_engine.onnx_file={url}")
    assert str(caught.value).startswith(f"gen_trt_engine.onnx_file={url}: the model keeps its weights in "
                                        "'../../../escaped.data', outside its own folder")
    assert not list(_cache().rglob("escaped.data")) and not list(_cache().parent.rglob("escaped.data"))


def test_a_second_load_lists_nothing_and_offline_the_cached_copy_is_used(s3, tmp_path, monkeypatch, free_port):
    """One listing per URL and process (apply_overrides, promotion steps); offline (here: the
    endpoint is a dead port), the newest complete cached copy, with one warning naming the URL."""
    from segformer.config import apply_overrides

    fs, spec = s3
    for name in ("a", "b"):
        fs.pipe(f"{BUCKET}/memo/images/train/{name}.png", name.encode() * 100)
    url = f"s3://{BUCKET}/memo"
    with _log("werkzeug") as first:
        cfg = _config(spec, tmp_path, f"dataset.segment.root_dir={url}")
    assert any("list-type=2" in line for line in first)  # listed and fetched
    with _log("werkzeug") as later:
        again = apply_overrides(_config(spec, tmp_path, f"dataset.segment.root_dir={url}"), ["train.seed=8"])
    assert later == [] and again.dataset.segment.root_dir == cfg.dataset.segment.root_dir

    _new_process(monkeypatch)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with _log() as lines:
        offline = _config(spec, tmp_path, f"dataset.segment.root_dir={url}")
    assert offline.dataset.segment.root_dir == cfg.dataset.segment.root_dir
    assert len(lines) == 1 and lines[0].startswith(f"dataset.segment.root_dir={url}: cannot reach the storage ("), lines
    assert "using the copy fetched on " in lines[0] and "\n" not in lines[0]
    with pytest.raises(ConfigError, match=f"root_dir=s3://{BUCKET}/never-fetched: cannot read it"):
        _config(spec, tmp_path, f"dataset.segment.root_dir=s3://{BUCKET}/never-fetched")  # nothing cached: the error


def test_fetch_false_keeps_the_urls_and_contacts_nothing(tmp_path, monkeypatch, free_port):
    """Settings only (the MLflow model reading best/experiment.yaml): URLs stay as given, nothing is
    fetched, even where the storage is unreachable."""
    import yaml

    from segformer import remote
    from segformer.config import apply_overrides
    from segformer.deploy import pyfunc

    def contacted(*args, **kwargs):
        raise AssertionError(f"the storage was contacted: {args}")

    monkeypatch.setattr(remote, "_filesystem", contacted)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    root, weights = "s3://unreachable-bucket/seg", "https://example.invalid/w.pth?X-Amz-Signature=abc"
    spec = tmp_path / "experiment.yaml"
    spec.write_text(yaml.safe_dump({"results_dir": str(tmp_path), "dataset": {"segment": {"root_dir": root}},
                                    "train": {"pretrained_model_path": weights}}))
    cfg = load_config(spec, fetch=False)
    assert (cfg.dataset.segment.root_dir, cfg.train.pretrained_model_path) == (root, weights)
    assert apply_overrides(cfg, ["train.seed=3"], fetch=False).dataset.segment.root_dir == root
    with pytest.raises(AssertionError, match="the storage was contacted"):
        load_config(spec)  # the default (an action's) fetches

    class Context:
        artifacts = {pyfunc.SPEC: str(spec), pyfunc.ONNX: str(tmp_path / "model.onnx")}
        model_config = {"on_cpu": True}

    monkeypatch.setattr("segformer.deploy.runtime.OnnxPredictor", lambda path, providers: path)
    model = pyfunc.SegformerMasks()
    model.load_context(Context())
    assert model.predictor == Context.artifacts[pyfunc.ONNX] and model.settings["img_size"] == cfg.dataset.segment.img_size


def test_a_presigned_https_url_names_its_file_by_its_path_and_never_shows_its_query(tmp_path, monkeypatch):
    """A query string is no part of the local file name (nor of the cache folder's), and it is a
    credential: no message or log line shows it; the dumped spec keeps the URL as given."""
    from segformer.config import dump_config

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # not the user's
    monkeypatch.delenv("SEGFORMER_REMOTE_CACHE", raising=False)

    secret = "X-Amz-Credential=AKIA%2F20240101&X-Amz-Signature=" + "5ec7e7" * 60  # over 255 characters
    model = _onnx_model(tmp_path / "served", [0, 1, 2, 3, 4, 5])
    with _log("") as lines, _serving(model.parent) as base:
        url = f"{base}/m.onnx?{secret}"
        cfg = load_config(None, [f"results_dir={tmp_path}", f"gen_trt_engine.onnx_file={url}"])
        local = Path(cfg.gen_trt_engine.onnx_file)
        assert local.name == "m.onnx" and _weights(local) == [0, 1, 2, 3, 4, 5]
        assert "5ec7e7" not in str(local) and _cache() in local.parents
        dumped = dump_config(cfg, tmp_path / "spec.yaml").read_text()
        again = url.replace("20240101", "20240102").replace("5ec7e7", "0ddba1")  # a new signing of the same object
        resigned = Path(load_config(None, [f"results_dir={tmp_path}", f"gen_trt_engine.onnx_file={again}"]).gen_trt_engine.onnx_file)
        with pytest.raises(ConfigError) as caught:
            load_config(None, [f"results_dir={tmp_path}", f"gen_trt_engine.onnx_file={base}/gone.onnx?{secret}"])
    assert str(caught.value).startswith(f"gen_trt_engine.onnx_file points to {base}/gone.onnx, which does not exist")
    assert "5ec7e7" not in str(caught.value) and "X-Amz" not in str(caught.value)
    assert any(f"fetching {base}/m.onnx " in line for line in lines), lines
    assert not [line for line in lines if "X-Amz" in line]
    assert f"onnx_file: {url}\n" in dumped
    assert resigned == local  # signed again: the same object's copy, not a download into a folder of its own
    from segformer.remote import _identity

    assert _identity(f"{base}/m.onnx?versionId=3&X-Amz-Date=1") == f"{base}/m.onnx?versionId=3"  # it may choose the content
    assert _identity("https://a.blob.core.windows.net/c/m.onnx?sv=2022&se=2025&sp=r&sig=abc") == \
        "https://a.blob.core.windows.net/c/m.onnx"


def test_missing_credentials_are_one_line(s3, tmp_path, monkeypatch):
    """... even for data in the cache: a copy stands in for storage that cannot be reached, not for
    credentials it refused (a train ran on an old copy, rc 0). A folder input said the folder did not
    exist (s3fs's find answered them with nothing)."""
    fs, spec = s3
    fs.pipe(f"{BUCKET}/cal/only/a.png", b"a")
    url = f"s3://{BUCKET}/cached"
    fs.pipe(f"{url}/images/train/a.png", b"a")
    _config(spec, tmp_path, f"dataset.segment.root_dir={url}")  # fetched: a copy is in the cache
    _new_process(monkeypatch)
    with pytest.raises(ConfigError, match=f"s3://{BUCKET}/cal: folder s3://{BUCKET}/cal holds folders only \\(only\\)"):
        _config(spec, tmp_path, f"dataset.segment.quant_calibration_dataset.images_dir=s3://{BUCKET}/cal")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    for key, where in (("dataset.segment.root_dir", url), ("dataset.segment.quant_calibration_dataset.images_dir",
                                                           f"s3://{BUCKET}/cal/only")):
        _new_process(monkeypatch)
        with pytest.raises(ConfigError) as caught:
            _config(spec, tmp_path, f"{key}={where}")
        message = str(caught.value)
        assert message.startswith(f"{key}={where}: no credentials or access refused"), message
        assert "AWS_ACCESS_KEY_ID" in message and "\n" not in message


def test_a_missing_prefix_is_the_local_message_naming_the_url(s3, tmp_path, capsys):
    from segformer.cli import main
    from segformer.data.files import missing_folder_message

    _, spec = s3
    url = f"s3://{BUCKET}/nothing-here"
    with pytest.raises(ConfigError) as caught:
        _config(spec, tmp_path, f"dataset.segment.root_dir={url}")
    assert str(caught.value) == f"dataset.segment.root_dir={url}: " + missing_folder_message(f"{url}/images")

    code = main(["train", "-e", str(spec), f"results_dir={tmp_path / 'r'}", f"dataset.segment.root_dir={url}"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err and f"{url}/images does not exist" in err
    assert not (tmp_path / "r").exists()


def test_a_missing_split_is_reported_under_the_url(s3, tmp_path):
    """The folder is checked exactly like a local one; the message names s3://, not the cache."""
    from segformer.actions import train
    from segformer.errors import DataError

    _, spec = s3
    cfg = _config(spec, tmp_path, f"dataset.segment.root_dir=s3://{BUCKET}/seg", "dataset.segment.train_split=nosplit")
    with pytest.raises(DataError, match=rf"folder s3://{BUCKET}/seg/images/nosplit does not exist; the dataset must"):
        train.run(cfg, quiet=True)
    assert str(_cache()) not in str(DataError(f"x {cfg.dataset.segment.root_dir}/images"))


def test_checkpoints_in_s3(s3, trained, tmp_path):
    """An s3:// checkpoint (evaluate.checkpoint) and pretrained weights (train.pretrained_model_path)."""
    from segformer.actions import evaluate
    from segformer.model import load_model_weights

    fs, spec = s3
    _, result, _ = trained
    fs.put(str(result.last_checkpoint), f"{BUCKET}/models/run1/model.pth")
    url = f"s3://{BUCKET}/models/run1/model.pth"
    cfg = _config(spec, tmp_path, f"dataset.segment.root_dir=s3://{BUCKET}/seg", f"evaluate.checkpoint={url}",
                  f"train.pretrained_model_path={url}")
    local = Path(cfg.evaluate.checkpoint)
    assert local.name == "model.pth" and _cache() in local.parents and cfg.train.pretrained_model_path == str(local)
    assert local.read_bytes() == result.last_checkpoint.read_bytes()
    load_model_weights(cfg.train.pretrained_model_path)
    scores = evaluate.run(cfg)
    assert 0.0 <= scores.miou <= 1.0
    assert json.loads((tmp_path / "evaluate" / "results.json").read_text())["model"] == url  # not the cache's copy

    with pytest.raises(ConfigError, match=rf"evaluate.checkpoint points to s3://{BUCKET}/models/run2/model.pth, "
                                          "which does not exist"):
        _config(spec, tmp_path, f"evaluate.checkpoint=s3://{BUCKET}/models/run2/model.pth")
    with pytest.raises(ConfigError, match="is a folder in object storage; give the URL of the file in it"):
        _config(spec, tmp_path, f"evaluate.checkpoint=s3://{BUCKET}/models/run1")


def test_a_checkpoint_over_http(trained, tmp_path, monkeypatch):
    """fsspec's other file systems work the same way: a single file over http://."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # not the user's
    monkeypatch.delenv("SEGFORMER_REMOTE_CACHE", raising=False)
    _, result, _ = trained
    served = tmp_path / "served"
    served.mkdir()
    (served / "weights.pth").write_bytes(result.last_checkpoint.read_bytes())
    with _serving(served) as base:
        cfg = load_config(None, [f"results_dir={tmp_path}", f"train.pretrained_model_path={base}/weights.pth"])
        assert Path(cfg.train.pretrained_model_path).read_bytes() == result.last_checkpoint.read_bytes()
        with pytest.raises(ConfigError, match="http:// can name single files only"):
            load_config(None, [f"results_dir={tmp_path}", f"dataset.segment.root_dir={base}/"])


@pytest.mark.parametrize("override, expected", [
    ("results_dir=s3://b/results", "results_dir=s3://b/results: outputs are written to local folders only; give a local path"),
    ("dataset.segment.root_dir=nosuch://b/seg", "dataset.segment.root_dir=nosuch://b/seg: nosuch:// is not a storage "
                                                "protocol fsspec knows"),
    pytest.param("dataset.segment.root_dir=gs://b/seg", "dataset.segment.root_dir=gs://b/seg: reading gs:// needs gcsfs: "
                 "pip install gcsfs", marks=pytest.mark.skipif(importlib.util.find_spec("gcsfs") is not None,
                                                               reason="gcsfs is installed here")),
])
def test_outputs_and_unknown_protocols_are_one_line(tmp_path, override, expected):
    with pytest.raises(ConfigError) as caught:
        load_config(None, [f"results_dir={tmp_path}", override])
    assert str(caught.value).startswith(expected) and "\n" not in str(caught.value)


# A process where s3fs is not installed: `import s3fs` fails as it does without the package.
_WITHOUT_S3FS = """
import contextlib, io, json, sys
sys.modules["s3fs"] = None
from segformer.cli import main as segformer
from automl.cli import main as automl
out = {}
for name, call in (("segformer", lambda: segformer(["train", "-e", sys.argv[1], "results_dir=" + sys.argv[2] + "/t",
                                                     "dataset.segment.root_dir=s3://bucket/seg"])),
                   ("automl", lambda: automl(["run", "--skill", "segformer", "-e", sys.argv[1], "--results-dir",
                                              sys.argv[2] + "/a", "--max-trials", "1", "--no-progress",
                                              "dataset.segment.root_dir=s3://bucket/seg"]))):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = call()
    out[name] = [code, err.getvalue()]
print(json.dumps(out))
"""


def test_without_s3fs_one_line_says_what_to_install(s3, tmp_path):
    _, spec = s3
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", _WITHOUT_S3FS, str(spec), str(tmp_path)], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    line = "dataset.segment.root_dir=s3://bucket/seg: reading s3:// needs s3fs: pip install 'segformer-automl[s3]'"
    for name, (code, err) in out.items():
        assert code != 0 and line in err and err.strip().count("\n") == 0 and "Traceback" not in err, (name, err)
    assert not (tmp_path / "a").exists() and not (tmp_path / "t").exists()


def test_automl_stops_on_a_bad_prefix_before_any_trial(s3, tmp_path, capsys):
    from automl.cli import main

    _, spec = s3
    url = f"s3://{BUCKET}/no-such-dataset"
    code = main(["run", "--skill", "segformer", "-e", str(spec), "--results-dir", str(tmp_path / "bad"), "--max-trials",
                 "2", "--no-progress", *TINY, f"dataset.segment.root_dir={url}"])
    err = capsys.readouterr().err
    assert code != 0 and err.strip().count("\n") == 0 and "Traceback" not in err, err
    assert f"automl run: error: dataset.segment.root_dir={url}: folder {url}/images does not exist" in err
    assert not (tmp_path / "bad").exists() or not list((tmp_path / "bad").glob("trial_*"))


@pytest.mark.slow
def test_automl_search_on_s3(s3, tmp_path):
    """The driver fetches the dataset before the search; the trial (a Ray worker) reads the same copy."""
    import automl
    from automl import SearchOptions

    _, spec = s3
    overrides = (*TINY, f"dataset.segment.root_dir=s3://{BUCKET}/seg")
    options = {"algorithm": "random", "max_trials": 1, "max_epochs": 1, "num_cpus": 2, "max_concurrent": 1,
               "only": ["train.optim.lr"], "promote": False}
    opts = SearchOptions.build(options, results_dir=str(tmp_path / "search"), spec=str(spec), skill="segformer",
                               overrides=overrides)
    outcome = automl.run(opts, echo=lambda _: None, progress=False)
    assert outcome.best is not None and outcome.best.status == "FINISHED"
    trial_spec = Path(outcome.best.results_dir) / "train" / "experiment.yaml"
    assert f"root_dir: s3://{BUCKET}/seg\n" in trial_spec.read_text()
    assert len(list((_cache() / "s3").glob("*-seg/*/data"))) == 1  # one copy, fetched by the driver


def test_refusals_of_each_backend_are_told_from_storage_that_cannot_be_reached():
    """Only storage that cannot be reached falls back to a cached copy: gcsfs says 403 as an OSError
    "Forbidden" or an HttpError with a code, Azure as an HttpResponseError with a status_code."""
    from segformer.remote import _refused

    class HttpError(Exception):
        def __init__(self, code: int) -> None:
            self.code = code

    class HttpResponseError(Exception):
        status_code = 403

    refused = [PermissionError("denied"), OSError("Forbidden: https://storage.googleapis.com/b/o"), HttpError(401),
               HttpResponseError("AuthorizationPermissionMismatch")]
    unreachable = [OSError("Connection refused"), TimeoutError(), HttpError(503), ConnectionError("no route")]
    assert [_refused(e) for e in refused] == [True] * 4 and [_refused(e) for e in unreachable] == [False] * 4
