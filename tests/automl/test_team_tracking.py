"""Team tracking: a search against an MLflow tracking server backed by PostgreSQL, both started here on
127.0.0.1 (Debian's postgresql package; `make test` installs it where it can). The driver is killed
mid-search and resumed; the runs, the model registry and the champion are read back from the server.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from automl.state import FINISHED, SearchState
from searchhelpers import download_folder

REPO = Path(__file__).resolve().parents[2]
NAME = "segformer"  # the registered model of the skill "segformer"


def _postgres_bin() -> Path | None:
    """The folder of PostgreSQL's server programs (initdb, postgres), or None."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(versions[-1]).parent if versions else None


def _as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run it as the package's own user."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="module")
def postgres(free_port):
    """A PostgreSQL server on 127.0.0.1 with an empty database `mlflow`; yields its SQLAlchemy URI."""
    pg = _postgres_bin()
    if pg is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql; `make test` does it as root)")
    psycopg2 = pytest.importorskip("psycopg2", reason="psycopg2-binary (the dev extra) runs MLflow on PostgreSQL")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: PostgreSQL cannot be started as another user")
    # Outside pytest's tmp folders (private to this user): the postgres user must reach its data folder.
    root = Path(tempfile.mkdtemp(prefix="automl-pg-"))
    root.chmod(0o755)
    data = root / "data"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
        shutil.chown(root, "postgres", "postgres")
    subprocess.run(_as_postgres([str(pg / "initdb"), "-D", str(data), "-A", "trust", "-U", "automl", "-E", "UTF8",
                                 "--no-sync"]), check=True, capture_output=True, timeout=120)
    port = free_port()
    server = subprocess.Popen(_as_postgres([str(pg / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port),
                                            "-k", str(root), "-c", "fsync=off"]),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while True:
            try:
                conn = psycopg2.connect(host="127.0.0.1", port=port, user="automl", dbname="postgres")
                break
            except psycopg2.OperationalError:
                if time.time() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.3)
        conn.autocommit = True
        conn.cursor().execute("CREATE DATABASE mlflow")
        conn.close()
        yield f"postgresql+psycopg2://automl@127.0.0.1:{port}/mlflow"
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def tracking_server(postgres, tmp_path_factory, free_port):
    """`mlflow server` on 127.0.0.1 with the PostgreSQL store and proxied artifacts; yields its URL."""
    port = free_port()
    artifacts = tmp_path_factory.mktemp("server-artifacts")
    log = open(tmp_path_factory.mktemp("server-log") / "mlflow-server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", postgres,
                               "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port),
                               "--workers", "1"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180  # the first start creates MLflow's tables in PostgreSQL
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.time() > deadline:
                log.flush()
                pytest.fail(f"mlflow server did not start: {Path(log.name).read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()


@pytest.mark.slow
def test_a_search_tracked_on_a_postgresql_server_resumes_and_registers_its_champion(tracking_server, tmp_path):
    from mlflow import MlflowClient

    from segformer.data.synth import generate

    root = generate(tmp_path / "data", num_classes=3, size=32, train=8, val=4, test=4)
    results = tmp_path / "search"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "automl.cli", "run", "--skill", "segformer", "-e", str(root / "spec.yaml"),
           "--results-dir", str(results), "--tracking-uri", tracking_server, "--max-trials", "2",
           "--max-concurrent", "1", "--skip-quantize", "--skip-trt", "--no-progress", "dataset.segment.batch_size=4",
           "model.decode_head.decoder_params.embed_dim=32", "train.num_epochs=2"]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                if any(t.status == FINISHED for t in SearchState.load(results).trials.values()):
                    break
            except (FileNotFoundError, ValueError):
                pass
            time.sleep(0.3)
        else:
            pytest.fail("no trial finished in 300 s")
        os.kill(proc.pid, signal.SIGKILL)  # the driver only, mid-search
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    out = subprocess.run([sys.executable, "-m", "automl.cli", "resume", str(results), "--no-progress"], env=env,
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    state = SearchState.load(results)
    assert state.status == FINISHED and state.mlflow_tracking_uri == tracking_server
    assert not (results / "mlflow.db").exists()  # everything went to the server
    client = MlflowClient(tracking_uri=tracking_server)
    runs = client.search_runs([state.mlflow_experiment_id], max_results=100)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == state.mlflow_parent_run_id]
    parents = [r for r in runs if r.info.run_id == state.mlflow_parent_run_id]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    # One child run per trial of the ledger (the killed one reopened, not duplicated), none left RUNNING.
    assert sorted(r.info.run_id for r in children) == sorted(t.mlflow_run_id for t in state.trials.values())
    assert all(r.info.status in ("FINISHED", "KILLED") for r in children)
    for trial in state.trials.values():
        if trial.status == FINISHED:
            history = client.get_metric_history(trial.mlflow_run_id, "val_miou")
            assert sorted(m.step for m in history) == [int(h["epoch"]) for h in trial.history]
    # The registry on the server: the champion is the promoted trial's model, and it predicts masks.
    version = client.get_model_version_by_alias(NAME, "champion")
    assert version.run_id == state.best().mlflow_run_id
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_server)
    try:
        model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion", dst_path=download_folder(tmp_path / "champion"))
    finally:
        mlflow.set_tracking_uri(previous)
    from segformer.data import load_image

    images = np.stack([load_image(p) for p in sorted((root / "images" / "test").iterdir())])
    masks = model.predict(images)
    assert masks.shape == images.shape[:3] and set(np.unique(masks)) <= {0, 1, 2}
