"""The command-line front doors: fast help, dispatch, and clean errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from segformer import cli


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("module", ["segformer.cli", "automl.cli"])
def test_help_is_fast_and_imports_no_torch(module: str) -> None:
    code = (
        "import sys, time\n"
        "t = time.perf_counter()\n"
        f"import {module} as m\n"
        "try:\n"
        "    m.main(['--help'])\n"
        "except SystemExit as e:\n"
        "    assert e.code in (0, None), e.code\n"
        "elapsed = time.perf_counter() - t\n"
        "heavy = sorted(n for n in ('torch', 'ray', 'mlflow', 'lightning', 'optuna') if n in sys.modules)\n"
        "print('HEAVY', heavy, 'ELAPSED', round(elapsed, 3))\n"
    )
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout, proc.stdout
    assert "usage:" in proc.stdout.lower()
    # Speed itself is not asserted here (no timing in unit tests): help stays fast because it
    # imports none of the heavy libraries, which is what this test pins down.


def test_every_action_has_a_parser_with_spec_and_overrides() -> None:
    for action in cli.ACTIONS:
        args = cli.action_parser(action).parse_args(["-e", "spec.yaml", "a.b=1", "c=[1,2]"])
        assert args.spec == "spec.yaml"
        assert args.overrides == ["a.b=1", "c=[1,2]"]


def test_each_action_says_what_it_needs_writes_and_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    """Every action's --help was the same generic text (export's example: train.optim.lr=3e-4): now the
    keys it needs, where its output goes, and an example of its own, with overrides of its section."""
    for action in cli.ACTIONS:
        with pytest.raises(SystemExit):
            cli.action_parser(action).parse_args(["--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "needs: " in text and "writes: " in text and f"example: segformer {action} -e spec.yaml" in text, text
        assert f"e.g. results_dir=/r {action}." in text or f"e.g. results_dir=/r train." in text, text
    # validate takes the spec file under TAO's option name too
    assert cli.main(["validate", "--experiment_spec_file", "missing.yaml"]) == 1
    assert "missing.yaml" in capsys.readouterr().err
    # no command at all: the help, and the exit status of a usage error
    assert cli.main([]) == 2 and "actions (segformer <action>" in capsys.readouterr().err


def test_overrides_may_stand_on_both_sides_of_the_flags(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    """`segformer train a=1 -e spec.yaml b=2` called b=2 an "unrecognized argument" (argparse takes
    positionals in one run); TAO's launcher takes both. A stray flag is still refused."""
    spec = tmp_path / "s.yaml"
    spec.write_text("train:\n  num_epochs: 3\n")
    args = cli.parse_with_overrides(cli.action_parser("train"), ["results_dir=/r", "-e", str(spec), "train.num_epochs=1"])
    assert args.spec == str(spec) and args.overrides == ["results_dir=/r", "train.num_epochs=1"]
    assert cli.main(["validate", "results_dir=/r", "-e", str(spec), "train.num_epochs=0", "--no-data"]) == 1
    assert "train.num_epochs must be" in capsys.readouterr().out  # the override after the flag was read
    with pytest.raises(SystemExit):
        cli.parse_with_overrides(cli.action_parser("train"), ["-e", str(spec), "a=1", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_unknown_command_lists_the_valid_ones(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["trian"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "train" in err and "invalid choice" in err


def test_missing_spec_file_is_a_clear_error(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.yaml"
    code = cli.main(["validate", "-e", str(missing)])
    assert code != 0
    assert str(missing) in capsys.readouterr().err


def test_actions_without_a_progress_bar_say_they_are_still_working() -> None:
    """export, quantize and gen_trt_engine print a line every period while they work, and stop with the block."""
    import io
    import time

    from segformer.actions import ACTIONS
    from segformer.cli import QUIET_ACTIONS
    from segformer.heartbeat import heartbeat

    assert set(QUIET_ACTIONS) <= set(ACTIONS)
    out = io.StringIO()
    with heartbeat("segformer export", every_s=0.2, stream=out):
        time.sleep(0.75)
    lines = out.getvalue().splitlines()
    assert len(lines) >= 2 and all(line.startswith("segformer export: still working (") for line in lines), lines
    time.sleep(0.5)
    assert out.getvalue().splitlines() == lines  # nothing after the block ended


def test_loops_show_a_bar_on_a_terminal_and_lines_in_a_log() -> None:
    """evaluate, inference and the dataset check: tqdm on a terminal; in a log, plain lines."""
    import io

    from segformer.heartbeat import progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    log = io.StringIO()
    assert list(progress(range(3), "evaluate", "batch", every_s=0, stream=log)) == [0, 1, 2]
    assert log.getvalue().splitlines() == [f"evaluate: {i}/3 batch (0 s)" for i in (1, 2, 3)]
    quiet = io.StringIO()
    assert list(progress(range(3), "evaluate", "batch", stream=quiet)) == [0, 1, 2]
    assert quiet.getvalue() == ""  # a quick loop says nothing in a log
    terminal = Terminal()
    assert list(progress(range(3), "evaluate", "batch", stream=terminal)) == [0, 1, 2]
    assert "\r" in terminal.getvalue() and "3/3" in terminal.getvalue()


def test_own_warnings_print_as_one_line_and_other_libraries_keep_pythons_format(tmp_path) -> None:
    """`segformer ACTION` says `warning: ...` for the project's own warnings (no source path, no code
    line); a warning from another library is printed as Python prints it."""
    from segformer.data.synth import generate

    root = generate(tmp_path / "data", num_classes=2, size=32, train=2, val=1, test=1)
    out = subprocess.run([sys.executable, "-m", "segformer.cli", "evaluate", "-e", str(root / "spec.yaml"),
                          "wandb.enable=true", f"results_dir={tmp_path / 'r'}"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "evaluate.checkpoint points to" in out.stderr  # nothing trained there
    assert "warning: wandb.enable = True has no effect" in out.stderr + out.stdout
    assert "ConfigWarning" not in out.stderr and "loader.py" not in out.stderr
    theirs = _run("import warnings\nfrom segformer.errors import plain_warnings\nplain_warnings()\n"
                  "warnings.warn_explicit('theirs', UserWarning, '/elsewhere/lib.py', 3)")
    assert "/elsewhere/lib.py:3: UserWarning: theirs" in theirs.stderr
    # our own, warned again after filters changed (each catch_warnings block resets what Python has shown): once
    ours = _run("import os, warnings, segformer\nfrom segformer.errors import plain_warnings\nplain_warnings()\n"
                "where = os.path.join(os.path.dirname(segformer.__file__), 'x.py')\n"
                "for _ in range(3):\n    with warnings.catch_warnings():\n        pass\n"
                "    warnings.warn_explicit('ours', UserWarning, where, 3)")
    assert ours.stderr.count("warning: ours") == 1, ours.stderr


def test_ctrl_c_that_cut_a_library_call_short_is_an_interrupt(monkeypatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Ctrl-C inside torch.save: the interrupted zip writer raises its own RuntimeError ("unexpected
    pos") while the KeyboardInterrupt is handled, and Lightning re-raises that. It is the user's stop,
    exit 130 with the resume hint, not a traceback and exit 1."""
    def cut_short(action: str, argv: list[str]) -> int:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 32472960 vs 32472848")

    monkeypatch.setattr(cli, "run_action", cut_short)
    assert cli.main(["train", "-e", "spec.yaml"]) == 130
    err = capsys.readouterr().err
    assert "segformer train: interrupted" in err and "train.resume_training_checkpoint_path" in err, err
    monkeypatch.setattr(cli, "run_action", lambda action, argv: (_ for _ in ()).throw(RuntimeError("a real bug")))
    with pytest.raises(RuntimeError, match="a real bug"):  # other errors still raise
        cli.main(["train", "-e", "spec.yaml"])


def test_automl_ui_on_a_port_in_use_says_so_before_printing_links(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    """The links it printed opened the other server on that port, and it exited 0."""
    import socket

    from automl import cli as automl_cli

    (tmp_path / "mlflow.db").write_bytes(b"")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert automl_cli.main(["ui", str(tmp_path), "--port", str(port)]) == 2
    out, err = capsys.readouterr()
    assert f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err and "http://" not in out, (out, err)


def test_automl_ui_opens_the_store_a_search_was_tracked_in(tmp_path, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    """A search run with --tracking-uri (a shared sqlite file) has no mlflow.db of its own: `automl ui DIR`,
    which its summary prints, refused it ("no MLflow store"). It opens the store the search names; a
    search tracked on a server is sent there."""
    import socket

    from automl import cli as automl_cli
    from automl.state import SearchState
    from automl.tracking import absolute_store_uri

    search, store = tmp_path / "search", tmp_path / "shared" / "mlflow.db"
    store.parent.mkdir()
    store.write_bytes(b"")
    search.mkdir()
    state = SearchState(results_dir=str(search), skill="segformer", algorithm="random", metric="val_miou", mode="max",
                        settings={}, spec="", overrides=[], mlflow_tracking_uri=f"sqlite:///{store}")
    state.save()
    assert automl_cli.ui_command(search, 5000, store=state.mlflow_tracking_uri)[5] == f"sqlite:///{store}"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert automl_cli.main(["ui", str(search), "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err  # past the store: it was found
    state.mlflow_tracking_uri = "http://127.0.0.1:5000"
    state.save()
    assert automl_cli.main(["ui", str(search)]) == 2
    assert "was tracked on http://127.0.0.1:5000: open that server" in capsys.readouterr().err
    # a relative store, as --tracking-uri may be given, is kept absolute: a resume from elsewhere finds it
    monkeypatch.chdir(tmp_path)
    assert absolute_store_uri("sqlite:///rel/mlflow.db") == f"sqlite:///{tmp_path / 'rel' / 'mlflow.db'}"
    assert absolute_store_uri("./runs") == str(tmp_path / "runs")
    for kept in ("databricks", "http://127.0.0.1:5000", f"sqlite:///{store}", "sqlite:///:memory:"):
        assert absolute_store_uri(kept) == kept


def test_an_action_that_fails_leaves_no_empty_folder(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    """A failed `segformer quantize` (a checkpoint that is not one, a backend not installed) left an empty
    <results_dir>/quantize/, and results_dir with it; a folder that existed, or holds a file, stays."""
    spec, bad = tmp_path / "spec.yaml", tmp_path / "bad.pth"
    (tmp_path / "calib").mkdir()
    spec.write_text(f"quantize:\n  backend: onnxruntime\n  mode: static_ptq\ndataset:\n  segment:\n"
                    f"    quant_calibration_dataset:\n      images_dir: {tmp_path / 'calib'}\n")
    bad.write_text("not a checkpoint")
    args = ["quantize", "-e", str(spec), f"quantize.model_path={bad}"]
    assert cli.main([*args, f"results_dir={tmp_path / 'new' / 'results'}"]) == 1
    assert "cannot read checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()
    assert cli.main([*args, f"results_dir={tmp_path / 'kept'}"]) == 1
    assert (tmp_path / "kept").is_dir() and not (tmp_path / "kept" / "quantize").exists()


def test_the_cleanup_after_a_failed_action_removes_only_its_own_empty_folders(tmp_path) -> None:
    """Two runs into results folders under one new folder: the one that fails removes its own empty
    folders with rmdir, not the other run's (an rmtree of the shared new folder took them too)."""
    own, other = tmp_path / "new" / "sweep" / "a" / "quantize", tmp_path / "new" / "sweep" / "b" / "train"
    (own / "vis").mkdir(parents=True)
    other.mkdir(parents=True)
    cli._remove_empty(own, tmp_path / "new")
    assert not (tmp_path / "new" / "sweep" / "a").exists() and other.is_dir()
    (own / "vis").mkdir(parents=True)
    (own / "vis" / "kept.png").write_bytes(b"")
    cli._remove_empty(own, tmp_path / "new")
    assert (own / "vis" / "kept.png").is_file()
