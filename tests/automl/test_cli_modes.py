"""The `automl run` command line for real: policy off, AutoML enabled but the skill's files missing,
a TAO settings file with flags over it, and a search on a two-node Ray cluster with token
authentication (two `ray start` nodes on 127.0.0.1, one CPU each) placing trials on both nodes."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import pytest

REPO = Path(__file__).resolve().parents[2]
TAO_SKILL = REPO / "tests" / "fixtures" / "tao_reference" / "tao-skill-segformer"


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> Path:
    from segformer.data.synth import generate

    root = generate(tmp_path_factory.mktemp("synth") / "data", num_classes=3, size=32, train=8, val=4, test=4)
    return root / "spec.yaml"


def _automl(*args: str, timeout: float = 300, env: dict[str, str | None] | None = None) -> subprocess.CompletedProcess:
    """`automl ARGS` in a subprocess; `env` changes its environment (None: unset the variable)."""
    full = {**os.environ, "PYTHONPATH": str(REPO)}
    for key, value in (env or {}).items():
        if value is None:
            full.pop(key, None)
        else:
            full[key] = value
    return subprocess.run([sys.executable, "-m", "automl.cli", *args], capture_output=True, text=True, env=full,
                          cwd=REPO, timeout=timeout)


def _runs(results: Path) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    return [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


def _check_plain(out: subprocess.CompletedProcess, results: Path) -> None:
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "automl: trained once: best val_miou=" in out.stdout
    # epochs counted from 1 as in a search's summary, status.json's own number beside it, and which
    # checkpoint holds what (the latest is the last epoch's, not the best's)
    assert "at epoch 1 (status.json's epoch 0); last checkpoint " in out.stdout
    assert f"evaluate.checkpoint={results / 'train'} takes the best checkpoint" in out.stdout
    assert "INFO mlflow" not in out.stdout + out.stderr  # creating the MLflow store says nothing
    assert (results / "train" / "segformer_model_latest.pth").is_file()
    assert not (results / "automl_state.json").exists()  # no search
    # ... which `automl status` says, instead of doubting that `automl run` made the folder
    from automl.state import SearchState

    with pytest.raises(FileNotFoundError) as refused:  # `automl status` prints it (exit 2)
        SearchState.load(results)
    assert str(refused.value).startswith(f"{results} holds a plain training (automl run --policy off), not a search: its "
                                         f"epochs are in {results / 'train' / 'status.json'}"), str(refused.value)
    runs = _runs(results)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert "best_val_miou" in runs[0].data.metrics and "val_miou" in runs[0].data.metrics
    assert runs[0].data.tags["automl.results_dir"] == str(results)  # as a search's run says where it is
    from mlflow import MlflowClient

    steps = [m.step for m in MlflowClient(f"sqlite:///{results / 'mlflow.db'}").get_metric_history(runs[0].info.run_id, "val_miou")]
    assert steps and steps[0] == 1  # epochs from 1, as a search's trial runs


def test_policy_off_trains_once_and_tracks_one_run(spec, tmp_path):
    results = tmp_path / "off"  # named as every segformer action takes it: a results_dir= override
    out = _automl("run", "--skill", "segformer", "--policy", "off", "-e", str(spec), f"results_dir={results}",
                  "--max-epochs", "1", "dataset.segment.batch_size=4", "model.decode_head.decoder_params.embed_dim=32")
    assert "AutoML policy is off" in out.stdout
    _check_plain(out, results)


def test_policy_off_without_validation_or_anything_to_train(spec, tmp_path, capsys):
    """Policy off ended in a traceback when no epoch was validated (train.validation_interval beyond
    the epochs), and a resume that trained nothing named a checkpoint in the new folder that was never
    written."""
    from automl.cli import main

    def policy_off(*args: str) -> subprocess.CompletedProcess:  # in this process: two fewer interpreters to start
        code = main(["run", "--skill", "segformer", "--policy", "off", "-e", str(spec), *args])
        said = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, said.out, said.err)

    small = ("--max-epochs", "1", "dataset.segment.batch_size=4", "model.decode_head.decoder_params.embed_dim=32")
    first = tmp_path / "unvalidated"
    out = policy_off(f"results_dir={first}", "train.validation_interval=2", *small)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stdout[-2000:] + out.stderr[-2000:]
    latest = first / "train" / "segformer_model_latest.pth"
    assert (f"automl: trained once: no validation ran (train.validation_interval=2, 1 epochs), so no val_miou; last "
            f"checkpoint {latest}; evaluate.checkpoint={first / 'train'} takes its last checkpoint") in out.stdout
    (run,) = _runs(first)
    assert run.info.status == "FINISHED" and "best_val_miou" not in run.data.metrics
    again = tmp_path / "again"
    out = policy_off(f"results_dir={again}", f"train.resume_training_checkpoint_path={latest}", *small)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert f"automl: nothing trained; the checkpoint is still {latest} (no validation ran" in out.stdout
    assert "trained once" not in out.stdout and not list(again.rglob("*.pth"))


def test_enabled_but_schema_missing_trains_plainly(spec, tmp_path):
    skill = tmp_path / "skill"
    shutil.copytree(TAO_SKILL, skill)
    (skill / "schemas" / "train.schema.json").unlink()
    results = tmp_path / "missing"  # the spec's own results_dir names the folder
    own = tmp_path / "own_spec.yaml"
    own.write_text(spec.read_text() + f"\nresults_dir: {results}\n")
    out = _automl("run", "--skill-dir", str(skill), "--policy", "auto", "-e", str(own),
                  "--max-epochs", "1", "dataset.segment.batch_size=4", "model.decode_head.decoder_params.embed_dim=32")
    assert "not runnable until the schemas are generated" in out.stdout and "train.schema.json" in out.stdout
    _check_plain(out, results)


def test_search_folder_is_the_flag_else_the_override_else_the_spec(tmp_path, capsys):
    from automl.cli import search_folder

    spec = tmp_path / "spec.yaml"
    spec.write_text("results_dir: from_spec\ntrain:\n  num_epochs: 2\n")
    kept = ("train.num_epochs=3",)
    assert search_folder("flag", str(spec), ["results_dir=over", *kept]) == ("flag", kept)
    assert "results_dir=over is overridden by --results-dir flag" in capsys.readouterr().out
    assert search_folder(None, str(spec), ["results_dir=over", *kept]) == ("over", kept)
    assert search_folder(None, str(spec), kept) == ("from_spec", kept)
    assert "the spec's results_dir" in capsys.readouterr().out
    spec.write_text("results_dir: ''\n")
    assert search_folder(None, str(spec), []) == ("automl_results", ())
    assert search_folder(None, None, []) == ("automl_results", ())


def test_a_search_in_a_folder_of_segformer_results_says_it_writes_beside_them(tmp_path):
    """The spec's results_dir is the default search folder, and `segformer train -e spec.yaml` writes
    there too: the search says it writes beside those results (a walkthrough found them mixed in silence)."""
    from automl.layout import Layout
    from automl.runner import _note_action_outputs

    said: list[str] = []
    _note_action_outputs(Layout.of(tmp_path), said.append)
    assert said == []  # a new folder: nothing to say
    (tmp_path / "train").mkdir()
    (tmp_path / "export").mkdir()
    (tmp_path / "trial_000").mkdir()
    _note_action_outputs(Layout.of(tmp_path), said.append)
    assert said == [f"automl: note: {tmp_path} also holds results of segformer actions (train/, export/); the search "
                    "writes beside them (trial_*, best/, mlflow.db) and leaves them as they are; --results-dir gives "
                    "it a folder of its own"]


def test_tao_settings_file_and_flags_win(spec, tmp_path, capsys):
    from automl.cli import main

    settings = tmp_path / "settings.yaml"
    settings.write_text(
        "automl_algorithm: hyperband\n"
        "automl_max_recommendations: 7\n"
        "automl_max_epochs: 5\n"
        "automl_max_concurrent: 2\n"
        "automl_hyperparameters: [train.optim.lr, train.optim.weight_decay]\n"
        "custom_param_ranges:\n  train.optim.lr: {valid_min: 0.0001, valid_max: 0.005}\n"
    )
    code = main(["run", "--skill", "segformer", "-e", str(spec), "--results-dir", str(tmp_path / "r"),
                 "--settings", str(settings), "--algorithm", "asha", "--max-epochs", "3", "--dry-run"])
    out = capsys.readouterr()
    assert code == 0, out.err[-2000:]
    text = out.out
    # flags win (asha, 3 epochs); the file gives the rest (7 trials, 2 at a time, two parameters, the lr range)
    assert "automl: asha search, up to 7 trials x 3 epochs, 2 at a time" in text
    assert "train.optim.lr" in text and "train.optim.weight_decay" in text and "[0.0001, 0.005]" in text
    assert "train.optim.momentum" not in text and "searched parameters (about" not in text  # the user chose them
    assert "first 4 trials (asha)" in text and "trial_000 (baseline): train.optim.lr=0.001" in text
    assert not (tmp_path / "r").exists()

    bad = tmp_path / "bad.yaml"
    bad.write_text("automl_max_recomendations: 3\n")
    code = main(["run", "--skill", "segformer", "-e", str(spec), "--settings", str(bad), "--dry-run"])
    assert code == 2 and "did you mean 'automl_max_recommendations'" in capsys.readouterr().err


def test_freeze_backbone_is_not_searched_without_pretrained_weights(spec, tmp_path, capsys):
    """The schema searches model.backbone.freeze_backbone by default. With no pretrained weights
    anywhere, a frozen backbone keeps random weights, so the trials that draw it are wasted: it is
    held at the spec's value with a note, unless the user names it or a weight file is given."""
    from automl.cli import main

    def dry_run(*extra: str) -> str:
        code = main(["run", "--skill", "segformer", "-e", str(spec), "--results-dir", str(tmp_path / "r"),
                     "--max-trials", "16", "--dry-run", *extra])
        out = capsys.readouterr()
        assert code == 0, out.err[-2000:]
        return out.out

    text = dry_run()
    rows = [line.split()[0] for line in text.splitlines() if line.startswith(("dataset.", "model.", "train."))]
    assert "train.optim.lr" in rows and "model.backbone.freeze_backbone" not in rows
    assert "note: model.backbone.freeze_backbone held at the spec's false: no trial starts from pretrained weights" in text
    # TAO's route searches every default parameter: 16 trials are too few for them, and the dry run says so
    assert f"note: 16 trials for {len(rows)} searched parameters (about 12 configurations per parameter" in text
    settings = tmp_path / "settings.yaml"
    settings.write_text("automl_add_hyperparameters: [model.backbone.freeze_backbone]\n")
    named = dry_run("--settings", str(settings))
    assert any(line.startswith("model.backbone.freeze_backbone ") for line in named.splitlines())
    frozen = dry_run("model.backbone.freeze_backbone=true")  # the spec freezes: unfreezing may pay, searched
    assert any(line.startswith("model.backbone.freeze_backbone ") for line in frozen.splitlines())
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"")  # only its existence is checked before a trial
    given = dry_run(f"model.backbone.pretrained_backbone_path={weights}")
    assert any(line.startswith("model.backbone.freeze_backbone ") for line in given.splitlines())
    assert "held at the spec's false" not in given


def _session_pids(sid: int) -> list[int]:
    """Every process in session `sid` (a `ray start` started with start_new_session and all it spawned)."""
    from automl.signals import proc_stat

    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        fields = proc_stat(entry.name)
        if fields is not None and int(fields[3]) == sid and fields[0] != "Z":  # state ppid pgrp session
            pids.append(int(entry.name))
    return pids


def _stop_node(proc: subprocess.Popen) -> None:
    """Stop one `ray start --block` and everything it started: SIGTERM to its session, then SIGKILL
    to what is left of it after 20 s. Never `ray stop`, which stops every Ray on the machine."""
    for sig, wait in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
        for pid in _session_pids(proc.pid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while _session_pids(proc.pid) and time.monotonic() < deadline:
            proc.poll()  # reap the leader
            time.sleep(0.5)
    proc.wait(timeout=10)


@contextmanager
def _token_cluster(tmp: Path, token: str, free_port: Callable[[], int]):
    """A head and a second node from two real `ray start --block` processes (one CPU each, separate
    temp dirs) with token authentication on: the shape of a two-machine cluster, on 127.0.0.1.
    Yields (address, node ids); every process they started is stopped on the way out."""
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    ray_cli = str(Path(sys.executable).with_name("ray"))
    port = free_port()
    address = f"127.0.0.1:{port}"
    common = ["--block", "--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
    nodes: list[subprocess.Popen] = []
    # short temp dirs: Ray's unix socket paths must stay under 108 characters
    temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    try:
        for name, args in (("head", ["--head", "--port", str(port), "--include-dashboard", "false",
                                     "--ray-client-server-port", str(free_port())]),
                           ("worker", ["--address", address])):
            log = (tmp / f"ray_{name}.log").open("w")
            nodes.append(subprocess.Popen([ray_cli, "start", *args, *common, "--temp-dir", str(temp / name)],
                                          env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
            if name == "head":  # the second node joins a GCS that answers
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline and nodes[0].poll() is None:
                    with socket.socket() as sock:
                        if sock.connect_ex(("127.0.0.1", port)) == 0:
                            break
                    time.sleep(0.5)
        wait = ("import json, sys, time, ray\n"
                "ray.init(address=sys.argv[1], log_to_driver=False)\n"
                "deadline = time.time() + 120\n"
                "while len([n for n in ray.nodes() if n['Alive']]) < 2 and time.time() < deadline: time.sleep(0.5)\n"
                "print(json.dumps(sorted(n['NodeID'] for n in ray.nodes() if n['Alive'])))\n")
        out = subprocess.run([sys.executable, "-c", wait, address], env=env, capture_output=True, text=True,
                             timeout=240)
        logs = "".join((tmp / f"ray_{n}.log").read_text()[-2000:] for n in ("head", "worker"))
        assert out.returncode == 0, out.stderr[-3000:] + logs
        node_ids = json.loads(out.stdout.strip().splitlines()[-1])
        assert len(node_ids) == 2, logs
        yield address, set(node_ids)
    finally:
        for proc in reversed(nodes):
            _stop_node(proc)
        shutil.rmtree(temp, ignore_errors=True)


def test_two_node_cluster_with_token_auth(spec, tmp_path, free_port):
    """A head and a second node from `ray start` (separate raylets, one CPU each) on 127.0.0.1 with
    token authentication on, as `ray start --head` does once a token exists. Without the token, or
    with a wrong one, `automl run --address` fails at once with one line that says what to set; with
    RAY_AUTH_TOKEN it runs two trials at a time, one CPU each, which must land on different nodes.
    The cluster is stopped even on failure."""
    token = secrets.token_hex(16)
    args = ("run", "--skill", "segformer", "-e", str(spec), "--algorithm", "random", "--max-trials", "2",
            "--max-epochs", "1", "--max-concurrent", "2", "--cpus-per-trial", "1", "--only", "train.optim.lr",
            "--no-promote", "dataset.segment.batch_size=4", "model.decode_head.decoder_params.embed_dim=32")
    home = tmp_path / "home"  # no ~/.ray/auth_token there: the driver has no token at all
    home.mkdir()
    no_token = {"RAY_AUTH_TOKEN": None, "RAY_AUTH_TOKEN_PATH": None, "RAY_AUTH_MODE": None, "HOME": str(home)}
    with _token_cluster(tmp_path, token, free_port) as (address, cluster_nodes):
        for case, env, expected in (
                ("missing", no_token, f"the Ray cluster at --address {address} requires token authentication and no "
                                      f"token was found here (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token)"),
                ("wrong", {**no_token, "RAY_AUTH_TOKEN": "not-the-token"},
                 f"the Ray cluster at --address {address} rejected the token from RAY_AUTH_TOKEN")):
            started = time.monotonic()
            out = _automl(*args, "--results-dir", str(tmp_path / case), "--address", address, env=env, timeout=120)
            assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
            errors = [line for line in out.stderr.splitlines() if "error" in line.lower()]
            assert errors == [f"automl run: error: {expected}: set RAY_AUTH_TOKEN to the cluster's token "
                              f"(`ray get-auth-token` on the head node prints it) or RAY_AUTH_TOKEN_PATH to a file "
                              f"that holds it"], out.stderr[-3000:]
            assert "Traceback" not in out.stderr and "Failed to get cluster ID" not in out.stderr
            assert time.monotonic() - started < 60  # no 20 s of Ray retrying a refused token
            assert not (tmp_path / case).exists()  # refused before anything was created

        results = tmp_path / "cluster"
        out = _automl(*args, "--results-dir", str(results), "--address", address,
                      env={"RAY_AUTH_TOKEN": token, "RAY_AUTH_MODE": None, "RAY_AUTH_TOKEN_PATH": None})
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        trials = json.loads((results / "automl_state.json").read_text())["trials"].values()
        assert [t["status"] for t in trials] == ["FINISHED", "FINISHED"]
        node_ids = {t["node_id"] for t in trials}
        assert node_ids == cluster_nodes, node_ids
        # both nodes are 127.0.0.1: `automl status` tells them apart by node id
        status = _automl("status", str(results), timeout=120)
        assert status.returncode == 0 and all(f"({n[:8]})" in status.stdout for n in node_ids), status.stdout


def test_ray_token_is_found_where_ray_looks(tmp_path, monkeypatch):
    """RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH names, else ~/.ray/auth_token; a named file
    that cannot be read is one line naming the variable (Ray itself would abort the process)."""
    from automl.probe import RayAuthError, local_ray_token

    for key in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert local_ray_token() == (None, None)
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-home\n")
    assert local_ray_token() == ("~/.ray/auth_token", "from-home")
    named = tmp_path / "token.txt"
    named.write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(named))
    assert local_ray_token() == (f"RAY_AUTH_TOKEN_PATH={named}", "from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert local_ray_token() == ("RAY_AUTH_TOKEN", "from-env")
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    with pytest.raises(RayAuthError, match=r"RAY_AUTH_TOKEN_PATH=.*missing cannot be read .*set RAY_AUTH_TOKEN"):
        local_ray_token()


def test_status_of_a_search_that_is_starting_says_so(tmp_path, capsys):
    """The driver takes the folder's lock at once and writes the state after the data check and Ray's
    start (seconds): `automl status` then said the folder was not made by `automl run`, and --watch
    gave up; it now says the search is starting, and --watch waits for it. With --json it was an
    error (rc 2) for a script polling a search it had just launched: now the results' shape, status
    "starting"."""
    import threading

    from automl.cli import main
    from automl.console import print_status
    from automl.layout import Layout
    from automl.runner import one_driver
    from automl.state import FINISHED, SearchState

    results = tmp_path / "search"
    with one_driver(results):
        with pytest.raises(FileNotFoundError, match="is starting: its driver checks the data and starts Ray"):
            SearchState.load(results)
        assert main(["status", str(results), "--json"]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert shown["progress"]["status"] == "starting" and shown["best"] is None and shown["history"] == []
        SearchState(results_dir=str(results), skill="segformer", algorithm="random", metric="val_miou", mode="max",
                    settings={}).save()
        assert main(["status", str(results), "--json"]) == 0
        written = json.loads(capsys.readouterr().out)
        assert written["progress"]["status"] == "running" and set(written) == set(shown)
        assert set(written["progress"]) == set(shown["progress"])
        assert set(written["final_evaluation"]) == set(shown["final_evaluation"])
        Layout.of(results).state_file.unlink()
        lines: list[str] = []
        later = threading.Timer(0.5, lambda: SearchState(results_dir=str(results), skill="segformer", algorithm="random",
                                                          metric="val_miou", mode="max", settings={}, status=FINISHED).save())
        later.start()
        assert print_status(results, watch=0.05, echo=lines.append) == 0
        later.join()
    assert lines[0] == f"automl: the search in {results} is starting (its driver checks the data and starts Ray)"
    assert any("(finished)" in line for line in lines), lines
    with pytest.raises(FileNotFoundError, match="was this folder made by `automl run`"):
        SearchState.load(tmp_path)


def test_status_of_a_plain_training_under_way_is_not_a_starting_search(tmp_path, capsys):
    """A plain training (policy off) holds the folder's lock for its whole run and writes no search
    state: status said "starting" until it ended. Once its train/ exists, status says what it is."""
    from automl.cli import main
    from automl.runner import one_driver
    from automl.state import starting

    results = tmp_path / "plain"
    with one_driver(results):
        assert starting(results)
        (results / "train").mkdir()
        assert not starting(results)
        assert main(["status", str(results), "--json"]) == 2
        assert "holds a plain training (automl run --policy off), not a search" in capsys.readouterr().err


def test_status_of_a_search_whose_driver_was_killed_says_so_and_the_watch_ends(tmp_path):
    """The state file of a SIGKILLed driver still says RUNNING: `automl status` tells by the driver's
    lock (the kernel drops a dead holder's) that nothing runs it, says how to continue, and --watch
    ends instead of refreshing forever."""
    import signal

    from automl.console import print_status
    from automl.runner import one_driver
    from automl.state import SearchState

    results = tmp_path / "search"
    with one_driver(results):  # a driver made the folder: its lock file is there
        SearchState(results_dir=str(results), skill="segformer", algorithm="random", metric="val_miou", mode="max",
                    settings={}).save()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from filelock import FileLock; "
                               f"lock = FileLock({str(results / '.automl.lock')!r}); lock.acquire(); print('held', flush=True); time.sleep(600)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        lines: list[str] = []
        assert print_status(results, echo=lines.append) == 0
        assert "(running)" in lines[0] and not any("no driver" in line for line in lines)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lines = []
    assert print_status(results, watch=0.01, echo=lines.append) == 1  # returns (nothing will change the file), not 0
    assert "(interrupted)" in lines[1]
    assert lines[-1] == f"automl: no driver is running this search (it was killed, or its machine stopped); continue it with: automl resume {results}"
    out = _automl("status", str(results), "--json", timeout=120)
    assert out.returncode == 0 and json.loads(out.stdout)["progress"]["status"] == "interrupted", out.stdout[-2000:]
    assert SearchState.load(results).status == "RUNNING"  # looking changes nothing


def test_status_of_a_stopped_search_says_how_to_go_on_and_a_resume_under_way_is_running(tmp_path):
    """After a Ctrl-C the table alone gave no hint how to continue; while `automl resume` started Ray
    (seconds) the search still said interrupted, and `--watch` ended with 1 beside a resume that went on.
    A search being started: said, not an error (rc 2)."""
    from automl.console import print_status
    from automl.runner import one_driver
    from automl.state import SearchState

    results = tmp_path / "search"
    with one_driver(results):
        lines: list[str] = []
        assert print_status(results, echo=lines.append) == 0
        assert lines == [f"automl: the search in {results} is starting (its driver checks the data and starts Ray)"]
        stopped = SearchState(results_dir=str(results), skill="segformer", algorithm="random", metric="val_miou",
                              mode="max", settings={}, status="INTERRUPTED", driver_pid=os.getpid())
        stopped.save()
        lines = []
        assert print_status(results, echo=lines.append) == 0  # the stopped driver itself, still closing Ray and MLflow
        assert "(interrupted)" in lines[0] and "continue it with" in lines[-1], lines
        stopped.driver_pid = os.getpid() + 1  # the one a resume replaces, until it writes the ledger
        stopped.save()
        lines = []
        assert print_status(results, echo=lines.append) == 0  # the resume holds the folder
        assert "(running)" in lines[0] and lines[-1].startswith("automl: a driver is resuming this search"), lines
    lines = []
    assert print_status(results, watch=0.01, echo=lines.append) == 1
    assert "(interrupted)" in lines[1]
    assert lines[-1] == f"automl: the search was stopped (Ctrl-C or SIGTERM); continue it with: automl resume {results}"


def test_the_report_of_a_search_that_did_not_end_is_made_on_demand(tmp_path, capsys):
    """A killed or interrupted search had no report, and no command made one."""
    from automl.cli import main
    from automl.runner import one_driver
    from automl.state import FINISHED, SearchState, TrialRecord

    results = tmp_path / "search"
    with one_driver(results):
        state = SearchState(results_dir=str(results), skill="segformer", algorithm="random", metric="val_miou", mode="max",
                            settings={}, status="INTERRUPTED")
        for i, value in enumerate((0.5, 0.6)):
            record = TrialRecord(trial_id=f"t{i}", name=f"trial_{i:03d}", params={"train.optim.lr": 10.0 ** -(i + 3)},
                                 status=FINISHED, is_baseline=i == 0)
            state.record_result(record, {"epoch": 1, "val_miou": value})
            state.trials[record.trial_id] = record
        state.save()
        assert main(["report", str(results)]) == 2  # its driver may still write one
        assert "a driver is running the search" in capsys.readouterr().err
    assert main(["report", str(results)]) == 0
    assert f"automl: report of the search as it stands: {results / 'report' / 'report.md'}" in capsys.readouterr().out
    text = (results / "report" / "report.md").read_text()
    assert "trial_001" in text and (results / "report" / "report.html").is_file()


def test_a_status_read_by_a_reader_that_stops_early_ends_quietly(tmp_path):
    """`automl status DIR --all | head -1`: the reader closes the pipe; that is no folder problem (it
    was reported as one, with advice about permissions): the command ends with the shell's 141, silent."""
    from automl.state import FINISHED, SearchState, TrialRecord

    state = SearchState(results_dir=str(tmp_path), skill="segformer", algorithm="random", metric="val_miou", mode="max",
                        settings={}, status=FINISHED)
    for i in range(3000):  # far more than a pipe's buffer holds
        state.trials[str(i)] = TrialRecord(trial_id=str(i), name=f"trial_{i:04d}", params={"train.optim.lr": 1e-3 * i},
                                           status=FINISHED, best_value=0.5)
    state.save()
    proc = subprocess.Popen([sys.executable, "-m", "automl.cli", "status", str(tmp_path), "--all"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().startswith("random search (finished)")
    proc.stdout.close()
    assert proc.wait(timeout=120) == 141
    assert proc.stderr.read() == ""
