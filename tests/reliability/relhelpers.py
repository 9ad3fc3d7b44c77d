"""Helpers of the reliability tests: one tiny dataset, one tiny trained checkpoint, and
helpers that run the real command lines and check how they fail."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from segformer.data.synth import generate

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TINY = [
    "train.num_epochs=1",
    "train.seed=3",
    "model.decode_head.decoder_params.embed_dim=32",
    "dataset.segment.batch_size=4",
    "dataset.segment.workers=0",
    "evaluate.batch_size=4",
    "inference.batch_size=4",
]
# What a failed run must not leave behind: checkpoints, scores, predictions, exported models.
RESULT_PATTERNS = ("*.pth", "results.json", "status.json", "experiment.yaml", "*.onnx", "*.png", "*.engine")


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    """3 classes, 32x32, 8 train / 4 val / 4 test; never modified (tests break copies)."""
    return generate(tmp_path_factory.mktemp("rel_synth"), num_classes=3, size=32, train=8, val=4, test=4, seed=0)


@pytest.fixture
def data_copy(dataset, tmp_path) -> Path:
    target = tmp_path / "data"
    shutil.copytree(dataset, target, symlinks=True)
    return target


@pytest.fixture(scope="session")
def checkpoint(dataset, tmp_path_factory) -> Path:
    """A 1-epoch mit_b0 checkpoint (written by the real train action)."""
    from segformer.actions import train
    from segformer.config import load_config

    results = tmp_path_factory.mktemp("rel_trained")
    cfg = load_config(dataset / "spec.yaml", [f"results_dir={results}", *TINY])
    return train.run(cfg, quiet=True).last_checkpoint


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str


def run_inprocess(argv: list[str], capsys, program: str = "segformer") -> Outcome:
    """``segformer.cli.main(argv)`` (or ``automl.cli.main``) as the console script runs it (SystemExit
    -> its code), in this process: no interpreter to start and no library to import again."""
    if program == "automl":
        from automl.cli import main
    else:
        from segformer.cli import main
    # (a library's log handler left on an earlier test's closed capture stream: tests/conftest.py
    # points it back after every test)
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return Outcome(code, captured.out, captured.err)


def run_subprocess(program: str, argv: list[str], timeout: float = 120, cwd: Path | None = None,
                   env: dict | None = None) -> Outcome:
    """The installed console script (``segformer`` / ``automl``) in a fresh process."""
    proc = subprocess.run([str(BIN / program), *argv], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


def leftovers(folder: Path) -> list[str]:
    """Result files under ``folder`` (empty when it does not exist)."""
    if not folder.exists():
        return []
    found = set()
    for pattern in RESULT_PATTERNS:
        found.update(str(p.relative_to(folder)) for p in folder.rglob(pattern))
    return sorted(found)


def assert_clean_failure(outcome: Outcome, code: int, expected: list[str], results: Path | None) -> None:
    """Non-zero exit, one clear message with every expected piece, no traceback, nothing left behind."""
    text = outcome.stderr
    assert outcome.code == code, f"exit {outcome.code} != {code}\nstderr:\n{text[-3000:]}"
    assert "Traceback" not in text, f"traceback on stderr:\n{text[-3000:]}"
    for piece in expected:
        assert piece.lower() in text.lower(), f"{piece!r} missing from the message:\n{text[-3000:]}"
    if results is not None:
        assert leftovers(results) == [], f"partial output left in {results}: {leftovers(results)}"


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 64 KiB tmpfs: room for experiment.yaml, not for a checkpoint (needs root and mount)."""
    mount_point = tmp_path / "full_disk"
    mount_point.mkdir()
    if not is_root():
        pytest.skip("simulating a full disk needs root to mount a tiny tmpfs")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}); full-disk case not simulated")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)
