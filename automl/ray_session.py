"""The Ray a search runs on: start or attach, resources, shutdown; and Ray's experiment state on disk.

`RaySession` is a context manager. Entering it starts a local Ray of our own (no dashboard, worker
logs not forwarded) or, with ``--address``, connects to a cluster after probing that something
answers there (`automl.probe`: Ray itself retries a dead address for minutes) and, when the cluster
uses token authentication, that it accepts the token found here. A Ray this process
already runs (a notebook, a test session) is used as is and left running; one the session started
is shut down when it exits (local Ray: stopped; --address: this driver disconnects).

Tune's experiment state (``ray/search/experiment_state-*.json``, the searcher's state, ...) is saved
after every event so that a killed driver resumes (`automl resume`). Ray copies those files into the
results folder in the background, one after the other, so a SIGKILL during a copy can leave one cut:
:func:`backup_ray_state` keeps the last complete set, as one archive (`automl.callbacks.RayStateBackup`
takes it from Ray's driver staging folder, where the set is whole at the end of each step), and
:func:`repair_ray_state` puts the whole set back before `Tuner.restore`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from automl.options import SearchError, SearchOptions

_RAY_STATE_FILES = ("experiment_state-*.json", "search_gen_state-*.json", "searcher-state-*.pkl", "basic-variant-state-*.json",
                    "tuner.pkl")


def unfit(name: str, per_trial: float, largest: float, local: bool) -> str:
    """The message for a trial asking more CPUs or GPUs (`name`) than the largest node has."""
    flag = f"--{name.lower()}s-per-trial"
    where = "this machine" if local else "any node of the Ray cluster"
    hint = " (or --num-cpus to give the local Ray more)" if name == "CPU" and local else ""
    instead = f"use {flag} {largest:g} or less" if largest else f"leave {flag} out, or run on a machine with {name}s"
    return f"{flag} {per_trial:g} is more than {where} has ({largest:g} {name}s): no trial could ever start; {instead}{hint}"


class RaySession:
    """Start or attach to Ray for one search; ``gpus_per_trial`` and ``slots`` as Ray sees them."""

    def __init__(self, opts: SearchOptions) -> None:
        self.opts = opts
        self.owns = False  # True when this session connected (and so disconnects at exit)
        self.gpus_per_trial = 0.0
        self.cpus_per_trial = float(opts.resources.cpus_per_trial or 1.0)

    def __enter__(self) -> "RaySession":
        import ray

        from automl.probe import check_ray_address

        _tune_settings()
        if not ray.is_initialized():
            address = self.opts.resources.address
            check_ray_address(address)
            if address and address.startswith("ray://"):
                raise SearchError(
                    f"--address {address} is a Ray Client address: Tune would run the search's controller on the "
                    f"cluster, away from this search's ledger and MLflow store. Run `automl run` on a node of the "
                    f"cluster (the head) with its GCS address, --address HOST:6379 (`ray status` there prints it)")
            _init(self.opts)
            self.owns = True
        try:
            self.gpus_per_trial = self._gpus()
            self._check_a_trial_fits()
        except BaseException as err:
            self.__exit__(type(err))
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

        return gpus_per_trial(self.opts.resources, float(ray.cluster_resources().get("GPU", 0)))

    def _check_a_trial_fits(self) -> None:
        """A trial runs on one node: asking more CPUs or GPUs per trial than the largest node has would
        leave every trial pending for ever (Ray waits for resources without a word)."""
        import ray

        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        for name, per_trial in (("CPU", self.cpus_per_trial), ("GPU", self.gpus_per_trial)):
            largest = max((float(n.get(name, 0)) for n in nodes), default=0.0)
            if per_trial and per_trial > largest + 1e-9:
                raise SearchError(unfit(name, per_trial, largest, local=self.owns and not self.opts.resources.address))

    def share_cpus(self, trainings: int) -> float:
        """CPUs per trial when only `trainings` can run at once (what an epoch budget can finish); see
        :func:`plan_resources`."""
        import ray

        nodes = [float(n.get("Resources", {}).get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
        cluster = ray.cluster_resources()
        self.cpus_per_trial = plan_resources(self.opts.resources, cpus=float(cluster.get("CPU", 0)),
                                             largest_cpus=max(nodes, default=1.0), gpus=float(cluster.get("GPU", 0)),
                                             trainings=trainings)[0]
        return self.cpus_per_trial

    def slots(self) -> int:
        """Trials that can run at once: as many as Ray's CPUs and GPUs fit (every core or GPU busy), or
        --max-concurrent when that is fewer."""
        import ray

        available = ray.cluster_resources()
        return fitting_slots(self.opts.resources.max_concurrent, (
            (float(available.get("CPU", 0)), self.cpus_per_trial), (float(available.get("GPU", 0)), self.gpus_per_trial)))


def plan_resources(resources: Any, *, cpus: float, largest_cpus: float, gpus: float,
                   trainings: int | None = None) -> tuple[float, float, int]:
    """CPUs and GPUs per trial and the trials that run at once, for a Ray of `cpus` CPUs (the largest
    node `largest_cpus`) and `gpus` GPUs; what `RaySession` settles once Ray is up and what --dry-run
    says for this machine.

    GPUs: --gpus-per-trial, else one per trial when there is a GPU. CPUs: --cpus-per-trial, else 1,
    or, without GPUs and with only `trainings` able to run at once (what an epoch budget can finish),
    the CPUs shared out among them, as many as the largest node has at most (a training on 2 threads
    took 49 s where 1 took 76 s, 256 px images). So 16 cores and a budget of 10 trainings (8 at once,
    the re-check's 2 kept back) train with 2 threads each instead of leaving 8 cores idle."""
    r = resources
    gpus_each = gpus_per_trial(r, gpus)
    cpus_each = float(r.cpus_per_trial or 1.0)
    if r.cpus_per_trial is None and not gpus_each and trainings and trainings >= 1:
        cpus_each = float(max(1, min(int(cpus // trainings), int(largest_cpus or 1))))
    return cpus_each, gpus_each, fitting_slots(r.max_concurrent, ((cpus, cpus_each), (gpus, gpus_each)))


def gpus_per_trial(resources: Any, gpus: float) -> float:
    """--gpus-per-trial, else one GPU per trial when Ray has `gpus` > 0, else none."""
    return float(resources.gpus_per_trial) if resources.gpus_per_trial is not None else (1.0 if gpus > 0 else 0.0)


def fitting_slots(max_concurrent: int | None, pools: Any) -> int:
    """Trials at once: as many as each (available, per trial) pool fits, or `max_concurrent` when fewer."""
    fits: list[int] = [] if max_concurrent is None else [max_concurrent]
    for available, per_trial in pools:
        if per_trial and available:
            fits.append(int(available / per_trial + 1e-9))
    return max(1, min(fits, default=1))


def local_cpus() -> int:
    """The CPUs a local Ray would count here (its own count: cgroup quotas too), else this process's."""
    try:
        from ray._private.utils import get_num_cpus

        return int(get_num_cpus())
    except Exception:  # noqa: BLE001 - Ray's helper is not public API
        return len(os.sched_getaffinity(0))


def local_gpus() -> int | None:
    """The GPUs a local Ray would find here (its own detection, CUDA_VISIBLE_DEVICES first), or None
    when that cannot be asked (Ray's accelerator managers are not public API)."""
    try:
        from ray._private.accelerators import get_accelerator_manager_for_resource

        manager = get_accelerator_manager_for_resource("GPU")
        visible = manager.get_current_process_visible_accelerator_ids()
        return len(visible) if visible is not None else int(manager.get_current_node_num_accelerators())
    except Exception:  # noqa: BLE001 - an unknown count only keeps --dry-run's "auto"
        return None


def _tune_settings() -> None:
    """Tune reads these in the driver: set them even when Ray is already running (the user's values win)."""
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")  # experiment state after every event (resume after SIGKILL)
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")  # ...on purpose: no warning
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no csv/json/tbx per trial: the ledger and MLflow hold results
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # Read in the trial actors (local ones inherit the driver's environment): a reused actor waits this
    # long for its last trial's training thread to end (Lightning's teardown after a stop) before the
    # next trial starts in it. Ray's 2 s, missed under load, would mark that trial ERROR without telling
    # the searcher or the callbacks (tune_controller._on_trial_reset); never seen, so this is insurance.
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", "30")
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    syncer_log = logging.getLogger(SYNCER_LOGGER)
    if not any(isinstance(f, VanishedTempFile) for f in syncer_log.filters):
        syncer_log.addFilter(VanishedTempFile())


SYNCER_LOGGER = "ray.train._internal.syncer"


class VanishedTempFile(logging.Filter):
    """Drops one warning of Ray's syncer: the copy of the driver's experiment folder into the results
    folder listed a searcher's state file while it was being replaced (Ray's `_atomic_save` writes
    ``.<uuid>-tmp-<name>`` then renames it), found it gone, and logged the whole traceback. The next
    copy, after the next event, carries the file, and the last one is waited for; seen on the console
    of PBT and grid searches. Any other failed copy (remote storage) is still shown."""

    _TEMP = re.compile(r"FileNotFoundError: .*/\.[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}-tmp-[^/']*'")

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not (text.startswith("Last sync command failed") and self._TEMP.search(text))


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
        _connect(ray, opts.resources.address, kwargs)
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


def _connect(ray: Any, address: str, kwargs: dict[str, Any]) -> None:
    """`ray.init(address=...)`, with the cluster's token when it uses token authentication.

    Ray sends no token to an explicit address unless RAY_AUTH_MODE=token, so a cluster started by
    `ray start --head` with a token (Ray's default once ~/.ray/auth_token exists) would refuse this
    driver for 20 s and then fail. `automl.probe.ray_auth_token` asks the cluster first and finds
    the token where Ray does (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token); with one,
    token mode is switched on for this process before Ray connects. A wrong or missing token is
    one line naming what to set (`automl.probe.RayAuthError`).
    """
    from automl.probe import RAY_TOKEN_HINT, ray_auth_token

    token = ray_auth_token(address)
    if token is not None:
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN"] = token  # exactly the token the cluster accepted just now
        _reload_ray_auth_config()
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as err:  # Ray's own retries ran out: one line, never its traceback
        raise SearchError(f"cannot connect to the Ray cluster at --address {address} ({err}); check that it is "
                          f"running (`ray status` on the head); if it uses token authentication, "
                          f"{RAY_TOKEN_HINT}") from None


def _reload_ray_auth_config() -> None:
    """Make an imported Ray see RAY_AUTH_MODE/RAY_AUTH_TOKEN set after its import, as Ray's own
    `ray start` does when it turns token mode on (its config and token cache are read once)."""
    try:
        from ray._raylet import AuthenticationTokenLoader, Config
    except ImportError:  # another Ray version: the environment alone must do
        return
    Config.initialize("")
    reset = getattr(AuthenticationTokenLoader.instance(), "reset_cache", None)
    if reset is not None:
        reset()


def _whole(data: bytes) -> bool:
    """A Ray state file's bytes that are whole: non-empty; a pickle (Ray names some of them .json)
    that ends with pickle's STOP opcode, which a cut one lacks; otherwise JSON that parses."""
    if not data:
        return False
    if data[:1] == b"\x80":  # pickle protocol >= 2
        return data[-1:] == b"."
    try:
        json.loads(data)
    except ValueError:
        return False
    return True


def _complete(path: Path) -> bool:
    try:
        return _whole(path.read_bytes())
    except OSError:
        return False


def state_files(experiment_dir: Path) -> list[Path]:
    """Ray's experiment state files in `experiment_dir`."""
    return sorted(p for pattern in _RAY_STATE_FILES for p in experiment_dir.glob(pattern))


def read_ray_state(experiment_dir: Path) -> dict[str, bytes] | None:
    """Ray's state files (name -> bytes), each read once; None unless every one is whole and none
    changed while it was read (a file being rewritten is neither taken cut nor mixed in)."""
    files = state_files(experiment_dir)
    before = [_stat(p) for p in files]
    try:
        contents = [p.read_bytes() for p in files]
    except OSError:
        return None
    if not files or before != [_stat(p) for p in files] or not all(_whole(c) for c in contents):
        return None
    return {path.name: data for path, data in zip(files, contents)}


def state_fingerprint(contents: dict[str, bytes]) -> str:
    """What a set of state files says, without what Ray rewrites on every step of its loop (the
    experiment file's loop counters and clocks): equal fingerprints, the same trials and searcher."""
    import hashlib

    digest = hashlib.sha1()
    for name, data in sorted(contents.items()):
        if name.startswith("experiment_state") and data[:1] != b"\x80":
            data = json.dumps(_decoded(json.loads(data).get("trial_data")), sort_keys=True).encode()
        digest.update(name.encode() + b"\0" + data + b"\0")
    return digest.hexdigest()


def _decoded(value: Any) -> Any:
    """`value` with the JSON documents nested in its strings parsed (Ray keeps each trial's state as a
    JSON string whose text changed between writes while what it says did not: measured)."""
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return _decoded(json.loads(value))
        except ValueError:
            return value
    if isinstance(value, dict):
        return {k: _decoded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decoded(v) for v in value]
    return value


def backup_ray_state(experiment_dir: Path, backup: Path, contents: dict[str, bytes] | None = None) -> bool:
    """Keep the state files as one set, in one archive written atomically, when every one is complete.

    Ray writes them in a staging folder and copies them here in the background, one file after the
    other, so a driver killed during a copy can leave one cut, or the set mixed from two moments; a
    set restored file by file can be inconsistent (a searcher that waits for a trial the experiment
    does not know). `contents` is a set `read_ray_state` read (RayStateBackup reads it in Ray's
    driver staging folder, where it is of one moment); without it the files are read now. Returns
    whether a backup was written.
    """
    import io
    import tarfile

    from segformer.fileio import atomic_write

    contents = contents if contents is not None else read_ray_state(experiment_dir)
    if not contents:
        return False
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in sorted(contents.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), int(time.time())
            archive.addfile(info, io.BytesIO(data))
    atomic_write(backup, lambda out: out.write(buffer.getvalue()), sync=False)
    return True


def _stat(path: Path) -> tuple | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


def repair_ray_state(experiment_dir: Path, backup: Path) -> list[str]:
    """Before `Tuner.restore`: when a state file is cut or missing, put back the whole last backed-up
    set (never one file of it: see `backup_ray_state`). Returns the names of the files restored."""
    import tarfile

    from segformer.fileio import atomic_write_bytes

    if not backup.is_file():
        return []
    with tarfile.open(backup) as archive:
        names = archive.getnames()
        if all((experiment_dir / name).is_file() and _complete(experiment_dir / name) for name in names) and \
                all(_complete(p) for p in state_files(experiment_dir)):
            return []
        for path in state_files(experiment_dir):
            path.unlink()  # a newer file of the set that is not in the backup would mix two moments
        for member in archive.getmembers():
            if member.isfile() and "/" not in member.name and not member.name.startswith(".."):
                source = archive.extractfile(member)
                assert source is not None
                atomic_write_bytes(experiment_dir / member.name, source.read())
    return sorted(names)


def incomplete_state(experiment_dir: Path) -> list[str]:
    """Ray's state files that are cut or empty (after `repair_ray_state`: no complete copy to put back)."""
    return [p.name for p in state_files(experiment_dir) if not _complete(p)]


def saved_trials(experiment_dir: Path) -> list[Any]:
    """The trials of Ray's newest saved experiment state (stubs: id, config, checkpoint), as
    `Tuner.restore` will see them; [] when there is none or it is cut (`incomplete_state` names it)."""
    from ray.tune.experiment.trial import Trial

    states = sorted(experiment_dir.glob("experiment_state-*.json"))
    try:
        trial_data = json.loads(states[-1].read_text())["trial_data"] if states else []
    except (OSError, ValueError, KeyError, TypeError):
        return []
    trials = []
    for json_state, run_metadata in trial_data:
        trial = Trial.from_json_state(json_state, stub=True)
        trial.restore_run_metadata(run_metadata)
        trials.append(trial)
    return trials


def relink_missing_checkpoints(experiment_dir: Path, own_latest: Any) -> list[str]:
    """Before `Tuner.restore`: make every checkpoint folder the saved experiment state restores from exist.

    Ray restores an unfinished trial from the latest checkpoint its saved state names, and fails the
    trial (on every retry: "does not exist on storage anymore") when that folder is gone. It can be:
    Ray keeps a trial's best and latest checkpoints only, and the state file a killed driver left (or
    the backed-up set put back by `repair_ray_state`) can be older than the deletion. The trial's
    newest checkpoint folder that Ray kept stands in (linked, not copied), else `own_latest(trial
    folder name)`, the trial's own latest Lightning checkpoint (`automl.trial` resumes from that file
    anyway). Returns the folders made, as trial/checkpoint_NNNNNN.
    """
    from automl.layout import CHECKPOINT_FILE
    from segformer.fileio import link_or_copy

    made = []
    for trial in saved_trials(experiment_dir):
        checkpoint = trial.checkpoint
        if checkpoint is None or checkpoint.filesystem.type_name != "local" or Path(checkpoint.path).exists():
            continue
        missing = Path(checkpoint.path)
        kept = sorted(p for p in missing.parent.glob("checkpoint_*") if (p / CHECKPOINT_FILE).is_file())
        source = kept[-1] / CHECKPOINT_FILE if kept else own_latest(missing.parent.name)
        if source is None or not Path(source).is_file():
            continue  # nothing to stand in: Ray fails the trial, and says why
        scratch = missing.with_name(f".{missing.name}.tmp")
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        link_or_copy(source, scratch / CHECKPOINT_FILE)
        os.replace(scratch, missing)
        made.append(f"{missing.parent.name}/{missing.name}")
    return made
