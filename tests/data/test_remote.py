"""Datasets and checkpoints in object storage (``segformer.remote``), against a real S3 API: moto's
server on 127.0.0.1, reached through s3fs with ``AWS_ENDPOINT_URL``, as a MinIO user would."""

from __future__ import annotations

import contextlib
import http.server
import importlib.util
import json
import logging
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from segformer.config import ConfigError, load_config

pytest.importorskip("s3fs", reason="s3fs is not installed (pip install '.[s3]' or '.[dev]')")
moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed (pip install '.[dev]')")

REPO = Path(__file__).resolve().parents[2]
BUCKET = "bucket"
TINY = ["train.num_epochs=1", "train.seed=7", "model.decode_head.decoder_params.embed_dim=32",
        "dataset.segment.batch_size=4", "dataset.segment.workers=0", "evaluate.batch_size=4"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server holding a tiny synthetic TAO dataset at s3://bucket/seg, the environment a
    user of an S3-compatible server sets, and a fresh cache folder. Yields (s3fs file system, spec)."""
    import fsspec

    from segformer.data.synth import generate

    data = generate(tmp_path_factory.mktemp("synth") / "seg", num_classes=3, size=32, train=8, val=4, test=4)
    home = tmp_path_factory.mktemp("home")
    port = _free_port()
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


@contextlib.contextmanager
def _fetch_log():
    """The lines `segformer.remote` logs (one per download) while the block runs."""
    logger, lines = logging.getLogger("segformer.remote"), []
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
    with _fetch_log() as lines:
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
    with _fetch_log() as lines:
        again = _config(spec, tmp_path, f"dataset.segment.root_dir=s3://{BUCKET}/seg")
    assert again.dataset.segment.root_dir == str(root) and lines == []  # nothing downloaded
    assert (image.stat().st_ino, image.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_a_changed_object_fetches_a_new_version(s3, tmp_path):
    fs, spec = s3
    fs.put(str(spec), f"{BUCKET}/versioned/images/train/a.png")
    first = Path(_config(spec, tmp_path, f"dataset.segment.root_dir=s3://{BUCKET}/versioned").dataset.segment.root_dir)
    assert first == Path(_config(spec, tmp_path, f"dataset.segment.root_dir=s3://{BUCKET}/versioned").dataset.segment.root_dir)
    fs.pipe(f"{BUCKET}/versioned/images/train/a.png", b"other content")
    second = Path(_config(spec, tmp_path, f"dataset.segment.root_dir=s3://{BUCKET}/versioned").dataset.segment.root_dir)
    assert second != first and (second / "images/train/a.png").read_bytes() == b"other content"
    assert not list(second.parent.parent.glob(".*.tmp"))  # no download folder left behind


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


def test_an_onnx_model_comes_with_its_external_data(s3, tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    fs, spec = s3
    weight = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), name="w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], [weight])
    folder = tmp_path / "model"
    folder.mkdir()
    onnx.save_model(helper.make_model(graph), str(folder / "m.onnx"), save_as_external_data=True,
                    location="m.onnx.data", size_threshold=0)
    fs.put(str(folder), f"{BUCKET}/onnx", recursive=True)
    cfg = _config(spec, tmp_path, f"gen_trt_engine.onnx_file=s3://{BUCKET}/onnx/m.onnx")
    local = Path(cfg.gen_trt_engine.onnx_file)
    assert (local.parent / "m.onnx.data").is_file()
    loaded = onnx.load(str(local))  # external data found next to the copy
    assert numpy_helper.to_array(loaded.graph.initializer[0]).tolist() == [[0, 1, 2], [3, 4, 5]]


def test_missing_credentials_are_one_line(s3, tmp_path, monkeypatch):
    _, spec = s3
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ConfigError) as caught:
        _config(spec, tmp_path, f"dataset.segment.root_dir=s3://{BUCKET}/seg")
    message = str(caught.value)
    assert message.startswith(f"dataset.segment.root_dir=s3://{BUCKET}/seg: no credentials or access refused")
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

    with pytest.raises(ConfigError, match=rf"evaluate.checkpoint points to s3://{BUCKET}/models/run2/model.pth, "
                                          "which does not exist"):
        _config(spec, tmp_path, f"evaluate.checkpoint=s3://{BUCKET}/models/run2/model.pth")
    with pytest.raises(ConfigError, match="is a folder in object storage; give the URL of the file in it"):
        _config(spec, tmp_path, f"evaluate.checkpoint=s3://{BUCKET}/models/run1")


def test_a_checkpoint_over_http(trained, tmp_path):
    """fsspec's other file systems work the same way: a single file over http://."""
    _, result, _ = trained
    served = tmp_path / "served"
    served.mkdir()
    (served / "weights.pth").write_bytes(result.last_checkpoint.read_bytes())

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/weights.pth"
        cfg = load_config(None, [f"results_dir={tmp_path}", f"train.pretrained_model_path={url}"])
        assert Path(cfg.train.pretrained_model_path).read_bytes() == result.last_checkpoint.read_bytes()
        with pytest.raises(ConfigError, match="http:// can name single files only"):
            load_config(None, [f"results_dir={tmp_path}", f"dataset.segment.root_dir=http://127.0.0.1:{server.server_port}/"])
    finally:
        server.shutdown()


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
