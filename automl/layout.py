"""The results folder of a search, named in one place.

::

    RESULTS_DIR/
      automl_state.json    the driver's ledger (`automl.state`)
      automl_state.journal its trial events since the ledger was last written whole
      mlflow.db            the embedded MLflow store, unless --tracking-uri names another
      mlartifacts/         its artifacts (beside the sqlite store: `segformer.fileio.mlflow_artifact_root`)
      search/space.txt     the search space as searched (also an artifact of the parent run)
      trial_000/ ...       one folder per trial: the train action's usual results (train/...)
      best/                the promoted model (`automl.promote`)
      report/              report.md and its plots (`automl.report`)
      ray/search/          Ray Tune's experiment state and checkpoints (`Tuner.restore` reads it)

Every module that reads or writes one of these asks a :class:`Layout` for its path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

STATE_FILE = "automl_state.json"
JOURNAL_FILE = "automl_state.journal"  # JSON lines: trial records newer than STATE_FILE (`automl.state`)
DB_FILE = "mlflow.db"
SPACE_FILE = "search/space.txt"
SETTINGS_FILE = "search/settings.json"  # every setting the search started with (also the MLflow parent run's artifact)
BEST_DIR = "best"
REPORT_DIR = "report"
RAY_DIR = "ray"
EXPERIMENT_NAME = "search"  # Ray Tune's experiment folder under ray/
RAY_BACKUP = ".state_backup.tar"  # the last complete, consistent set of Ray's state files, in the experiment folder
CHECKPOINT_FILE = "checkpoint.ckpt"  # the Lightning checkpoint inside a Ray checkpoint folder
PLAIN_TRAIN_DIR = "train"  # policy off: the one training's train action folder (a search's trials have their own)
_TRIAL = re.compile(r"trial_(\d+)")


def trial_name(number: int) -> str:
    """trial_000, trial_001, ...: the trial's name and its folder's."""
    return f"trial_{number:03d}"


def trial_number(name: str) -> int | None:
    """The number in a trial name (None for anything else)."""
    match = _TRIAL.fullmatch(name)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class Layout:
    """Paths inside one search's results folder."""

    root: Path

    @classmethod
    def of(cls, results_dir: str | Path) -> "Layout":
        return cls(Path(results_dir).expanduser().resolve())

    @property
    def state_file(self) -> Path:
        return self.root / STATE_FILE

    @property
    def journal_file(self) -> Path:
        return self.root / JOURNAL_FILE

    @property
    def db_file(self) -> Path:
        return self.root / DB_FILE

    @property
    def default_tracking_uri(self) -> str:
        """The embedded MLflow store: sqlite in the results folder."""
        return f"sqlite:///{self.db_file}"

    @property
    def space_file(self) -> Path:
        return self.root / SPACE_FILE

    @property
    def settings_file(self) -> Path:
        return self.root / SETTINGS_FILE

    def trial_dir(self, name: str) -> Path:
        return self.root / name

    @property
    def plain_train_dir(self) -> Path:
        return self.root / PLAIN_TRAIN_DIR

    @property
    def best_dir(self) -> Path:
        return self.root / BEST_DIR

    @property
    def report_dir(self) -> Path:
        return self.root / REPORT_DIR

    @property
    def ray_storage(self) -> Path:
        """Ray Tune's `storage_path`."""
        return self.root / RAY_DIR

    @property
    def ray_experiment(self) -> Path:
        """Ray Tune's experiment folder (what `Tuner.restore` takes)."""
        return self.ray_storage / EXPERIMENT_NAME

    @property
    def ray_backup(self) -> Path:
        return self.ray_experiment / RAY_BACKUP

    def trial_names_on_disk(self) -> list[str]:
        """Names of the trial folders here and in Ray's experiment (used to number new trials)."""
        found = [p.name for p in self.root.glob("trial_*")] + [p.name for p in self.ray_experiment.glob("trial_*")]
        return [name for name in found if trial_number(name) is not None]
