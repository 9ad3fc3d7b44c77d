"""The Ray a search runs on: start or attach, resources, shutdown; and Ray's experiment state on disk.

`RaySession` is a context manager. Entering it starts a local Ray of our own (no dashboard, worker
logs not forwarded) or, with ``--address``, connects to a cluster after probing that something
answers there (`automl.probe`: Ray itself retries a dead address for minutes). A Ray this process
already runs (a notebook, a test session) is used as is and left running; one the session started
is shut down when it exits (local Ray: stopped; --address: this driver disconnects).

Tune's experiment state (``ray/search/experiment_state-*.json`` ...) is written after every event
so that a killed driver resumes (`automl resume`). Ray writes those files in place, so a SIGKILL in
the middle of a write leaves one cut: :func:`backup_ray_state` keeps the last complete copy and
:func:`repair_ray_state` puts it back before `Tuner.restore`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from automl.options import SearchOptions

_RAY_STATE_FILES = ("experiment_state-*.json", "search_gen_state-*.json", "searcher-state-*.pkl", "tuner.pkl")


class RaySession:
    """Start or attach to Ray for one search; ``gpus_per_trial`` and ``slots`` as Ray sees them."""

    def __init__(self, opts: SearchOptions) -> None:
        self.opts = opts
        self.owns = False  # True when this session connected (and so disconnects at exit)
        self.gpus_per_trial = 0.0

    def __enter__(self) -> "RaySession":
        import ray

        from automl.probe import check_ray_address

        _tune_settings()
        if not ray.is_initialized():
            check_ray_address(self.opts.resources.address)
            _init(self.opts)
            self.owns = True
        try:
            self.gpus_per_trial = self._gpus()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, exc_type: Any = None, *exc: Any) -> None:
        # Not after Ctrl-C / SIGTERM: a SIGTERM to the process group has stopped Ray's own processes
        # too, and ray.shutdown() would wait for them without a limit (`automl.cli.entry` then ends
        # the process without Ray's exit handler, which would wait the same way).
        if self.owns and not (exc_type is not None and issubclass(exc_type, KeyboardInterrupt)):
            import ray

            ray.shutdown()
            self.owns = False

    def _gpus(self) -> float:
        """`gpus_per_trial` None (the default): one GPU per trial when the Ray cluster has GPUs, else 0.

        Asked of Ray, not torch: the driver never imports torch, and Ray's view is what counts, e.g.
        a CPU-only head node in front of GPU workers.
        """
        import ray

        gpus = self.opts.resources.gpus_per_trial
        return float(gpus) if gpus is not None else (1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0)

    def slots(self) -> int:
        """Trials that can run at once: --max-concurrent, or fewer when Ray's CPUs or GPUs do not fit them."""
        import ray

        resources = self.opts.resources
        slots = resources.max_concurrent
        available = ray.cluster_resources()
        for name, per_trial in (("CPU", resources.cpus_per_trial), ("GPU", self.gpus_per_trial)):
            if per_trial and available.get(name):
                slots = min(slots, int(available[name] / per_trial + 1e-9))
        return max(1, slots)


def _tune_settings() -> None:
    """Tune reads these in the driver: set them even when Ray is already running (the user's values win)."""
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")  # experiment state after every event (resume after SIGKILL)
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")  # ...on purpose: no warning
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no csv/json/tbx per trial: the ledger and MLflow hold results
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)


def _init(opts: SearchOptions) -> None:
    """`ray.init` for a search: a new local Ray of our own, or the cluster at --address.

    A new local cluster enables token authentication by default and writes its token to
    ``~/.ray/auth_token`` (once per home directory). We keep that secure default and only silence
    the warning Ray logs about it; ``RAY_AUTH_MODE`` set by the user is respected.
    """
    import ray

    kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                                  configure_logging=True)
    # Workers import `automl` and `segformer`: make the folder this package was imported from
    # visible to them even when it is a source checkout that is not installed.
    root = str(Path(__file__).resolve().parents[1])
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if root not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([root, *[p for p in paths if p]])
    if opts.resources.address:
        ray.init(address=opts.resources.address, **kwargs)
        return
    auth_log = logging.getLogger("ray._private.authentication.authentication_token_setup")
    level = auth_log.level
    auth_log.setLevel(logging.ERROR)
    try:
        # "local": a new Ray of our own. Without it ray.init joins whatever cluster `ray start`
        # last started on this machine (/tmp/ray/ray_current_cluster), someone else's included,
        # and fails there because num_cpus is set. RAY_ADDRESS set by the user is honoured.
        address = None if os.environ.get("RAY_ADDRESS") else "local"
        ray.init(address=address, num_cpus=opts.resources.num_cpus, **kwargs)
    finally:
        auth_log.setLevel(level)


def _complete(path: Path) -> bool:
    """A Ray state file that is whole: non-empty, and parseable when it is JSON."""
    try:
        if path.stat().st_size == 0:
            return False
        if path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def state_files(experiment_dir: Path) -> list[Path]:
    """Ray's experiment state files in `experiment_dir`."""
    return sorted(p for pattern in _RAY_STATE_FILES for p in experiment_dir.glob(pattern))


def backup_ray_state(experiment_dir: Path, backup: Path) -> None:
    """Copy each complete Ray state file atomically into `backup` (the last complete copy)."""
    from segformer.fileio import atomic_write

    for path in state_files(experiment_dir):
        if _complete(path):
            with path.open("rb") as source:  # a real copy (never a link): Ray rewrites the original in place
                atomic_write(backup / path.name, lambda out: shutil.copyfileobj(source, out), sync=False)


def repair_ray_state(experiment_dir: Path, backup: Path) -> list[str]:
    """Before `Tuner.restore`: replace cut or empty Ray state files by their last complete copy."""
    repaired = []
    for saved in sorted(backup.glob("*")) if backup.is_dir() else []:
        if saved.name.startswith("."):
            continue
        target = experiment_dir / saved.name
        if not target.exists() or not _complete(target):
            shutil.copyfile(saved, target)
            repaired.append(saved.name)
    return repaired
