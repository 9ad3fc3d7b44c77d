"""Crash-safe file writes: a reader never sees a truncated file under the final name.

The one implementation every part of the toolkit writes results through (checkpoints, configs,
reports, images, ONNX side files): a temporary file in the target folder, fsync, ``os.replace``,
then an fsync of the folder. :func:`atomic_output` does the same for libraries that write to a
path themselves (ONNX exporters and quantizers). No torch import here, so the config package can
use it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None], *, sync: bool = True) -> Path:
    """Write through ``write(fileobj)`` into a temporary file next to ``path``, fsync, then rename.

    ``os.replace`` is atomic on POSIX within one file system, so ``path`` holds either the old
    content or the complete new one, never a half-written file, even if the process is killed.
    ``sync=False`` skips both fsyncs, for small files written often whose loss in a power cut
    costs nothing (measurements, hints): still never half-written after a process crash.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            if sync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    if sync:
        _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | Path, data: bytes, *, sync: bool = True) -> Path:
    return atomic_write(path, lambda handle: handle.write(data), sync=sync)


def atomic_write_text(path: str | Path, text: str, *, sync: bool = True) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), sync=sync)


def atomic_write_json(path: str | Path, obj: Any, *, sync: bool = True, default: Any = None) -> Path:
    """Pretty, structured JSON (never a stringified dict); NaN and infinities are written as null
    (JSON has no literal for them: strict parsers reject Python's NaN/Infinity)."""
    return atomic_write_text(path, json.dumps(_nan_to_none(obj), indent=2, default=default, allow_nan=False) + "\n",
                             sync=sync)


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {key: _nan_to_none(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(value) for value in obj]
    return obj


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """For a library that writes a file to a path itself: yield a temporary path to give it, and
    move what it wrote into place when the block ends without an error.

    The temporary path has ``path``'s own file name, inside a private folder made next to
    ``path``, so files the library writes beside it keep the names the main file refers to (an
    ONNX graph names its external weights file, ``model.onnx.data``). Every file left in the
    private folder is fsynced and moved next to ``path``, those beside it first and ``path``
    itself last, so a reader never finds the main file without its side files. Subfolders are
    scratch space (intermediate files) and are not moved. The private folder is removed in every
    case; on an error, or when the block wrote no file at the temporary path, nothing is moved.
    A folder at ``path`` is refused before the block runs, not after the library's work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir() and not path.is_symlink():  # os.replace would refuse it only at the end (a link it replaces)
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    _remove_dead_private_folders(path)
    private = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
    try:
        tmp = private / path.name
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"nothing was written to {tmp} for {path}")
        side_files = sorted(p for p in private.iterdir() if p.is_file() and p != tmp)
        for file in [*side_files, tmp]:
            _fsync_file(file)
            os.replace(file, path if file == tmp else path.parent / file.name)
        _fsync_dir(path.parent)
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _remove_dead_private_folders(path: Path) -> None:
    """The private folders of `atomic_output` calls for `path` whose process is gone (killed before
    its cleanup ran): named ``.<name>.<pid>.<random>.tmp``, so a live writer's is never touched."""
    import glob

    for folder in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = folder.name[len(path.name) + 2:].split(".", 1)[0]
        if folder.is_dir() and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def link_or_copy(source: str | Path, target: str | Path) -> Path:
    """Make ``target`` an atomic replica of the finished file ``source`` (a hard link when the file
    system allows, else a copy), without ever exposing a partial ``target``."""
    source, target = Path(source), Path(target)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)
    return target


def staging_dir(parent: str | Path, prefix: str, suffix: str = "") -> Path:
    """A new, uniquely named folder in ``parent`` to build a folder in and rename into place, with the
    permissions `mkdir` gives (``tempfile.mkdtemp`` makes it private, 0700: a report renamed into a
    shared results folder could not be opened by the team)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent))
    folder.chmod(0o777 & ~_umask())
    return folder


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not every platform allows opening a directory.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_save_png(path: str | Path, array: Any) -> Path:
    """Save a uint8 (H, W) or (H, W, 3) array as PNG, atomically."""
    import numpy as np
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(array))
    return atomic_write(path, lambda handle: image.save(handle, format="PNG"))


def mlflow_artifact_root(tracking_uri: str) -> str | None:
    """Where an MLflow experiment created in `tracking_uri` keeps its artifacts: ``mlartifacts`` next
    to the database of a sqlite store, as `mlflow server` does next to its working folder; None for a
    server, which decides itself. Beside the store, not beside the run that happened to create the
    experiment: a second run (search or training) sharing the store then does not write into the
    first one's results folder, and moving or deleting that folder breaks no other run's artifacts."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    database = Path(tracking_uri[len("sqlite:///"):].split("?", 1)[0]).resolve()
    return (database.parent / "mlartifacts").as_uri()
