"""SIGTERM handled like Ctrl-C while a long command runs, so both end the same way."""

from __future__ import annotations

import os
import signal
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


def stop_descendants() -> list[int]:
    """SIGKILL every process this one started, and theirs (after an interrupt: the local Ray's GCS and
    raylet, and under the raylet its agents and trial workers; the search's state is saved by then).
    A SIGTERM sent to the driver alone used to leave Ray's dashboard and runtime-env agents running
    after it exited. No grace period: while the driver waited, Ray's core worker saw the raylet die
    and ended the process itself with exit code 1 (seen under load), so nothing is waited for.
    Returns the processes signalled."""
    pids = _descendants(os.getpid())
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return pids
