"""SIGTERM handled like Ctrl-C while a long command runs, so both end the same way."""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

EXIT_INTERRUPTED = 130  # the shell's code for a command ended by Ctrl-C
STUCK_GRACE_S = 5.0  # how long the main thread has to take a signal before the watchdog ends the process


def _raise_interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


class _Watchdog(threading.Thread):
    """Ends the process when a SIGTERM or Ctrl-C cannot reach the main thread.

    Python runs a signal handler on the main thread only, between two bytecodes. A SIGTERM to the
    whole process group stops the local Ray's GCS too, and the driver's main thread can then sit in a
    call to that GCS for a minute, after which Ray's core worker ends the process with exit code 1
    (seen in CI): the handler never ran, the ledger still said RUNNING. Python's C-level handler runs
    at once in any thread and writes the signal's number to the wakeup pipe (signal.set_wakeup_fd);
    this thread reads it. If the main thread has not taken the signal within `grace` seconds, this
    thread claims it: `stuck()` saves what the main thread would have (at most 20 s), then everything
    the process started is stopped and it exits 130. Whichever side claims the signal first handles
    it; the other stays out of the way."""

    def __init__(self, stuck: Callable[[], None], grace: float) -> None:
        super().__init__(name="automl-signal-watchdog", daemon=True)
        self.stuck, self.grace = stuck, grace
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.write_fd, False)
        self.claim: dict[str, str] = {}  # {"by": "main" | "watchdog"}: setdefault is atomic in CPython
        self.taken = threading.Event()

    def handler(self, *_: Any) -> None:
        """The Python-level handler (main thread)."""
        if self.claim.setdefault("by", "main") == "main":
            self.taken.set()
            raise KeyboardInterrupt
        threading.Event().wait()  # the watchdog is ending the process

    def run(self) -> None:
        while True:
            try:
                data = os.read(self.read_fd, 64)
            except OSError:
                return
            if not data or 0 in data:  # the block ended (byte 0: no signal has that number)
                return
            if self.taken.wait(self.grace) or self.claim.setdefault("by", "watchdog") != "watchdog":
                return
            self._end()

    def _end(self) -> None:
        print(f"automl: the signal did not reach the main thread within {self.grace:g} s (it is blocked, "
              f"likely in a call to Ray's stopped processes); saving the state from another thread", file=sys.stderr,
              flush=True)
        saver = threading.Thread(target=self._save, name="automl-signal-save", daemon=True)
        saver.start()
        saver.join(20)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        stop_descendants()
        os._exit(EXIT_INTERRUPTED)

    def _save(self) -> None:
        try:
            self.stuck()
        except BaseException as err:  # noqa: BLE001 (the process ends next: say what was not saved)
            print(f"automl: could not save the state on the way out ({err.__class__.__name__}: {err}); "
                  f"`automl resume` reads the last saved one", file=sys.stderr, flush=True)

    def close(self) -> None:
        try:
            os.write(self.write_fd, b"\0")
        except OSError:
            pass
        self.join(1)
        for fd in (self.read_fd, self.write_fd):
            os.close(fd)


@contextmanager
def interrupt_on_sigterm(stuck: Callable[[], None] | None = None, grace: float = STUCK_GRACE_S) -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt and so does Ctrl-C (Python's own SIGINT
    handler, in case a library replaced it); both handlers are put back afterwards.

    With `stuck`: where the main thread does not take the signal within `grace` seconds (blocked in
    C code), a watchdog thread calls `stuck()` to save the state, stops the processes this one
    started, and ends the process with exit code 130 (`_Watchdog`)."""
    dog = _Watchdog(stuck, grace) if stuck is not None else None
    handler = dog.handler if dog is not None else _raise_interrupt
    previous_term = signal.signal(signal.SIGTERM, handler)
    previous_int = signal.signal(signal.SIGINT, handler if dog is not None else signal.default_int_handler)
    previous_fd = None
    if dog is not None:
        dog.start()
        previous_fd = signal.set_wakeup_fd(dog.write_fd, warn_on_full_buffer=False)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        signal.signal(signal.SIGINT, previous_int)
        if dog is not None:
            signal.set_wakeup_fd(previous_fd)
            dog.close()


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
