"""SIGTERM handled like Ctrl-C while a long command runs, so both end the same way."""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

EXIT_INTERRUPTED = 130  # the shell's code for a command ended by Ctrl-C
STUCK_GRACE_S = 5.0  # how long the main thread has to take a signal before the watchdog ends the process
STUCK_DEADLINE_S = 60.0  # and, once taken, to end the block (save the state; MLflow may be a slow server)
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


_TAKEN: dict[str, bool] = {}  # {"signal": True} once a handler of the block has raised KeyboardInterrupt


def _raise_interrupt(*_: Any) -> None:
    _TAKEN["signal"] = True
    raise KeyboardInterrupt


def raise_if_swallowed() -> None:
    """Raise the KeyboardInterrupt of a signal the block took, where Python swallowed it: raised while
    a `__del__` or a weakref callback ran, it is only printed ("Exception ignored in ...") and the
    code goes on (seen in CI: Ctrl-C during the promotion's ONNX export, which then finished and
    exited 0). Code that runs normally after the handler raised is past such a place: call this
    between steps of a long block (main thread: the one signals interrupt; in another, nothing)."""
    if threading.current_thread() is threading.main_thread() and _TAKEN.pop("signal", False):
        raise KeyboardInterrupt


class _Watchdog(threading.Thread):
    """Ends the process when a SIGTERM or Ctrl-C cannot reach the main thread, or reaches it and the
    main thread then does not end the block.

    Python runs a signal handler on the main thread only, between two bytecodes. A SIGTERM to the
    whole process group stops the local Ray's GCS too, and the driver's main thread can then sit in a
    call to that GCS for a minute, after which Ray's core worker ends the process with exit code 1
    (seen in CI): the handler never ran, the ledger still said RUNNING. Python's C-level handler runs
    at once in any thread and writes the signal's number to the wakeup pipe (signal.set_wakeup_fd);
    this thread reads it. If the main thread has not taken the signal within `grace` seconds, or has
    taken it but not left the block within `deadline` seconds (stuck after it, or the interrupt was
    swallowed where Python only prints it, as in a `__del__`), this thread takes over: `stuck()`
    saves what the main thread would have (at most 20 s), then everything the process started is
    stopped and it exits 130. The claim is one `dict.setdefault` (atomic in CPython): the side that
    loses it stays out of the way (a main thread that takes a signal after the watchdog has waits)."""

    def __init__(self, stuck: Callable[[], None], grace: float, deadline: float) -> None:
        super().__init__(name="automl-signal-watchdog", daemon=True)
        self.stuck, self.grace, self.deadline = stuck, grace, deadline
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.write_fd, False)
        self.previous_fd: int | None = None  # the wakeup fd before ours, once ours is set
        self.claim: dict[str, str] = {}  # {"by": "main" | "watchdog" | "closed"}
        self.settled = threading.Event()  # the main thread took the signal, or the block ended
        self.lock = threading.Lock()  # for the two changes of a claim: main -> watchdog, main -> closed
        self.pending = False  # a signal came while the block was being closed

    def handler(self, *_: Any) -> None:
        """The Python-level handler (main thread): KeyboardInterrupt once. A second signal while the
        main thread saves the state must not cut that (the watchdog's deadline still holds)."""
        by = self.claim.setdefault("by", "main")
        if by == "watchdog":
            threading.Event().wait()  # the watchdog is ending the process
        if by == "closed":
            self.pending = True  # raised once the block's handlers are put back
            return
        if not self.settled.is_set():  # (set here only, while the claim is "main": the first signal)
            self.settled.set()
            _raise_interrupt()

    def run(self) -> None:
        taken_at = None  # when the main thread took the signal
        while True:
            timeout = None if taken_at is None else max(0.0, taken_at + self.deadline - time.monotonic())
            if not select.select([self.read_fd], [], [], timeout)[0]:  # the deadline passed
                with self.lock:
                    late = self.claim.get("by") == "main"
                    if late:
                        self.claim["by"] = "watchdog"  # later signals wait in the handler
                if late:
                    self._end(f"the search did not stop within {self.deadline:g} s of the signal")
                return
            numbers = set(os.read(self.read_fd, 64))
            if not numbers or 0 in numbers or self.claim.get("by") == "closed":  # byte 0: the block ended
                return
            if taken_at is not None or not numbers & _STOP_SIGNALS:
                continue  # a second signal (the deadline holds), or another one with a handler (Ray's SIGUSR1)
            self.settled.wait(self.grace)
            by = self.claim.setdefault("by", "watchdog")
            if by == "watchdog":
                self._end(f"the signal did not reach the main thread within {self.grace:g} s (it is blocked, likely "
                          f"in a call to Ray's stopped processes)")
            if by != "main":
                return
            taken_at = time.monotonic()

    def _end(self, why: str) -> None:
        try:
            _say(f"automl: {why}; saving the state from another thread")
            saver = threading.Thread(target=self._save, name="automl-signal-save", daemon=True)
            saver.start()
            saver.join(20)
            stop_descendants()
        finally:
            os._exit(EXIT_INTERRUPTED)

    def _save(self) -> None:
        try:
            self.stuck()
        except BaseException as err:  # noqa: BLE001 (the process ends next: say what was not saved)
            _say(f"automl: could not save the state on the way out ({err.__class__.__name__}: {err}); "
                 f"`automl resume` reads the last saved one")
        flush_streams()  # here, so that a stream's lock the main thread holds cannot hold up the exit

    def close(self) -> None:
        """The block ends (main thread): from here a signal waits for the handlers to be put back; our
        wakeup fd goes; the watchdog ends, unless it is already ending the process."""
        with self.lock:
            by = self.claim.setdefault("by", "closed")
            if by != "watchdog":
                self.claim["by"] = "closed"
        if by == "watchdog":
            threading.Event().wait()
        try:
            if self.previous_fd is not None:
                signal.set_wakeup_fd(self.previous_fd)
        finally:
            self.settled.set()
            try:
                os.write(self.write_fd, b"\0")
            except OSError:
                pass
            self.join(5)
            if not self.is_alive():  # else leave the pipe open: closing it under a reading thread could
                for fd in (self.read_fd, self.write_fd):  # hand its number to another file
                    os.close(fd)


def flush_streams() -> None:
    """stdout and stderr flushed before an os._exit; a closed or broken one is skipped."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken pipe: nothing more can be written
            pass


def _say(text: str) -> None:
    """A line on stderr straight to the fd: no buffer, no lock the blocked main thread could hold,
    and a closed stderr (a pipe whose reader the signal ended) is no error."""
    try:
        os.write(2, (text + "\n").encode("utf-8", "replace"))
    except OSError:
        pass


@contextmanager
def interrupt_on_sigterm(stuck: Callable[[], None] | None = None, grace: float = STUCK_GRACE_S,
                         deadline: float = STUCK_DEADLINE_S) -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt and so does Ctrl-C (Python's own SIGINT
    handler, in case a library replaced it); both handlers are put back afterwards.

    With `stuck`: where the main thread does not take the signal within `grace` seconds (blocked in
    C code), or does not leave the block within `deadline` seconds after taking it, a watchdog thread
    calls `stuck()` to save the state, stops the processes this one started, and ends the process
    with exit code 130 (`_Watchdog`). Only the first signal raises; one that comes while the block
    is being closed is raised once the previous handlers are back."""
    previous_term, previous_int = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    previous_hook = sys.unraisablehook
    dog, lost = None, False
    _TAKEN.clear()  # (a KeyboardInterrupt that ended an earlier block was not swallowed)

    def unraisable(info: Any) -> None:
        # Our interrupt raised in a weakref callback or a `__del__` (SQLAlchemy's, during promotion):
        # Python printed "Exception ignored in ..." with a traceback above the interrupted message;
        # `raise_if_swallowed` raises it where the code goes on, so it is not printed.
        if not (issubclass(info.exc_type, KeyboardInterrupt) and _TAKEN.get("signal")):
            previous_hook(info)

    sys.unraisablehook = unraisable
    try:
        if stuck is not None:
            dog = _Watchdog(stuck, grace, deadline)
            dog.start()
        signal.signal(signal.SIGTERM, dog.handler if dog else _raise_interrupt)
        signal.signal(signal.SIGINT, dog.handler if dog else _raise_interrupt)
        if dog is not None:
            dog.previous_fd = signal.set_wakeup_fd(dog.write_fd, warn_on_full_buffer=False)
        yield
        # The block ended normally, yet a handler raised: its interrupt was swallowed (a finalizer) and no
        # `raise_if_swallowed` came after it. Raised here, once the handlers are back: the stop is never lost.
        lost = bool(_TAKEN.get("signal"))
    finally:
        try:
            if dog is not None:
                dog.close()
        finally:
            signal.signal(signal.SIGTERM, previous_term)
            signal.signal(signal.SIGINT, previous_int)
            sys.unraisablehook = previous_hook
            _TAKEN.clear()
        if dog is not None and dog.pending:
            raise KeyboardInterrupt
    if lost:
        raise KeyboardInterrupt


def proc_stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/<pid>/stat after "pid (comm)": state, ppid, pgrp, session, ...; None where
    the process is gone (the command name may hold spaces and parentheses: split after the last ")")."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields if len(fields) > 3 else None


def _descendants(pid: int) -> list[int]:
    """The processes under `pid` (children, theirs, ...), from /proc; [] where there is none."""
    children: dict[int, list[int]] = {}
    try:
        entries = [e.name for e in Path("/proc").iterdir() if e.name.isdigit()]
    except OSError:
        return []
    for entry in entries:
        fields = proc_stat(entry)
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
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
