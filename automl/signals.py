"""SIGTERM handled like Ctrl-C while a long command runs, so both end the same way."""

from __future__ import annotations

import os
import signal
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

EXIT_INTERRUPTED = 130  # the shell's code for a command ended by Ctrl-C


def _raise_interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


@contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt and so does Ctrl-C (Python's own SIGINT
    handler, in case a library replaced it); both handlers are put back afterwards."""
    previous_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        signal.signal(signal.SIGINT, previous_int)


def _descendants(pid: int) -> list[int]:
    """The processes under `pid` (children, theirs, ...), from /proc; [] where there is none."""
    children: dict[int, list[int]] = {}
    try:
        entries = [e for e in Path("/proc").iterdir() if e.name.isdigit()]
    except OSError:
        return []
    for entry in entries:
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _gone(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)  # a child of ours that ended is reaped here, not left a zombie
    except ChildProcessError:
        pass
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


def stop_descendants(grace_s: float = 5.0) -> list[int]:
    """End every process this one started, and theirs (after an interrupt: the local Ray's GCS and
    raylet, and under the raylet its agents and trial workers): SIGTERM, then SIGKILL what is left
    after `grace_s`. A SIGTERM sent to the driver alone used to leave Ray's dashboard and runtime-env
    agents running after it exited. Returns the processes signalled."""
    pids = _descendants(os.getpid())
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 1.0)):
        alive = [pid for pid in pids if not _gone(pid)]
        for pid in alive:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + wait
        while alive and time.monotonic() < deadline:
            time.sleep(0.1)
            alive = [pid for pid in alive if not _gone(pid)]
    return pids
