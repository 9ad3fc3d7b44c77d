"""Faults of the real components: a full disk, and the train process killed (SIGKILL) again and
again while it writes checkpoints. No monkeypatching: real processes, real files."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from relhelpers import REPO, TINY, assert_clean_failure, leftovers, run_inprocess


def test_full_disk_during_training(dataset, tiny_tmpfs, capsys):
    results = tiny_tmpfs / "results"
    outcome = run_inprocess(["train", "-e", str(dataset / "spec.yaml"), f"results_dir={results}", *TINY], capsys)
    assert_clean_failure(outcome, 1, ["no space left on device", "free disk space", str(results / "train")], results)
    assert not [p for p in results.rglob("*.tmp")], "temporary checkpoint files left on the full disk"


def _train_cmd(dataset: Path, results: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "segformer.cli", "train", "-e", str(dataset / "spec.yaml"), f"results_dir={results}",
            *TINY, *extra]


def _loads(path: Path) -> bool:
    try:
        torch.load(path, map_location="cpu", weights_only=True)
        return True
    except Exception:  # noqa: BLE001 - any failure is what we look for
        return False


@pytest.mark.slow
@pytest.mark.parametrize("sig, said", [(signal.SIGTERM, "stopped by SIGTERM"), (signal.SIGINT, "interrupted")])
def test_stopped_training_is_not_a_success(dataset, tmp_path, sig, said):
    """A scheduler that pre-empts `segformer train` with SIGTERM: Lightning stops the fit with a
    SystemExit of no code, which exited 0, so the job read as done. Ctrl-C: Lightning catches the
    KeyboardInterrupt and exits 1, as a failure, after its own "Detected KeyboardInterrupt" line. Both
    now exit 130 (as `automl`), one line that says so and how to continue, and what the run trained is
    kept."""
    results = tmp_path / "results"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(_train_cmd(dataset, results, "train.num_epochs=200"), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            # Python turns SIGINT into KeyboardInterrupt only where it was not ignored
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        latest = results / "train" / "segformer_model_latest.pth"  # the first epoch's, before the signal
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and not latest.is_file():
            time.sleep(0.1)
        assert proc.poll() is None, "training ended before the signal"
        os.kill(proc.pid, sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130, err[-3000:]
    assert f"segformer train: {said}" in err and "train.resume_training_checkpoint_path" in err, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert _loads(results / "train" / "segformer_model_latest.pth")


def test_sigkill_while_writing_checkpoints_leaves_only_loadable_files(dataset, tmp_path, capsys):
    """Checkpoints every optimizer step; the process is killed at random moments, twice."""
    results = tmp_path / "results"
    train_dir = results / "train"
    rng = random.Random(0)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = _train_cmd(dataset, results, "train.num_epochs=200", "train.checkpoint_interval=1",
                     "train.checkpoint_interval_unit=step", "dataset.segment.batch_size=2")
    kills = 0
    for _ in range(2):
        # the latest file, or the newest numbered one when the kill came between writing it and linking
        # the latest to it (a new training does not go into a folder that holds one)
        held = sorted(train_dir.glob("model_epoch_*.pth")) if train_dir.exists() else []
        resume = train_dir / "segformer_model_latest.pth"
        resume = resume if resume.exists() else (held[-1] if held else None)
        extra = [f"train.resume_training_checkpoint_path={resume}"] if resume is not None else []
        proc = subprocess.Popen(cmd + extra, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            before = len(list(train_dir.glob("model_epoch_*.pth"))) if train_dir.exists() else 0
            deadline = time.monotonic() + 120
            # wait until this run writes checkpoints, then kill at a random moment among the writes
            while time.monotonic() < deadline and proc.poll() is None:
                if train_dir.exists() and len(list(train_dir.glob("model_epoch_*.pth"))) >= before + 2:
                    break
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 1.0))
            assert proc.poll() is None, "training ended before it could be killed"
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        finally:
            proc.kill()
            proc.wait()
        finals = sorted(train_dir.glob("*.pth"))
        assert finals, "no checkpoint written before the kill"
        bad = [p.name for p in finals if not _loads(p)]
        assert bad == [], f"checkpoints that do not load with weights_only=True after SIGKILL: {bad}"
    assert kills == 2
    # Resume from the latest checkpoint and finish one more epoch: the run completes.
    latest = torch.load(train_dir / "segformer_model_latest.pth", map_location="cpu", weights_only=True)
    epochs = int(latest["epoch"]) + 2
    outcome = run_inprocess(["train", "-e", str(dataset / "spec.yaml"), f"results_dir={results}", *TINY,
                             f"train.num_epochs={epochs}", "train.checkpoint_interval=1000",
                             "train.checkpoint_interval_unit=step",
                             f"train.resume_training_checkpoint_path={train_dir / 'segformer_model_latest.pth'}"],
                            capsys)
    assert outcome.code == 0, outcome.stderr[-2000:]
    status = (train_dir / "status.json").read_text().splitlines()
    assert len(status) == epochs
    assert all(_loads(p) for p in train_dir.glob("*.pth"))
    assert leftovers(train_dir)  # results exist after the successful resume
