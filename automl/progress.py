"""Progress by default: what `automl run` and `automl resume` show while they work.

On a terminal the trial table (`automl.console.format_table`: trial, status, epochs, best metric,
parameters, node) is redrawn in place every second under a line with the budget spent, the time
left at the current pace and the best trial so far; the driver's own messages scroll above it.
Anywhere else (CI, a log file, `| tee`) the same block is printed every 30 seconds while trials
run, whatever else was printed, as Ray Tune does, and outside the search (Ray starting, the final evaluation, promotion) a
line says what the driver is still doing whenever it has been silent for 30 seconds. So no long
command is silent for more than 30 seconds. When the search ends, the table of its trials as they
ended (the best 20) is printed once, on a terminal and off it, above the summary.

The view reads the ledger in memory from its own thread; Tune's callbacks change it on the
controller thread. A frame that catches the ledger mid-change is skipped, not drawn wrong.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from typing import Any, Callable, TextIO

from automl.state import PENDING, RUNNING, SearchState
from segformer.text import span

Echo = Callable[[str], None]

LOG_EVERY_S = 30.0  # a status block (or a still-working line) at least this often off a terminal
TTY_REFRESH_S = 1.0


class Pace:
    """Time left at the pace of the epochs trained since this driver started (an epoch budget), or
    of the trials finished (a trial count)."""

    def __init__(self) -> None:
        self.start: tuple[float, int] | None = None

    def left(self, state: SearchState) -> float | None:
        done, total = self._progress(state)
        if total is None:
            return None
        if self.start is None:
            self.start = (time.time(), done)
            return None
        elapsed, gained = time.time() - self.start[0], done - self.start[1]
        return max(0, total - done) * elapsed / gained if gained >= 1 else None

    @staticmethod
    def _progress(state: SearchState) -> tuple[int, int | None]:
        if state.budget is not None:
            return state.epochs_trained(), state.budget_epochs()
        search = state.settings.get("search") or {}
        if state.algorithm == "pbt" and search.get("max_epochs"):  # every member trains every epoch
            epochs = int(search["max_epochs"]) * int(search.get("epoch_multiplier") or 1)
            return state.epochs_trained(), int(search.get("population_size") or 4) * epochs
        total = search.get("max_trials")
        done = sum(t.status not in (RUNNING, PENDING) for t in state.trials.values())
        return done, int(total) if total else None


def headline(state: SearchState, pace: Pace, started: float) -> str:
    """The first line of a block: when, what runs, the budget spent, the time left, the best so far."""
    from automl.console import best_text, budget_text, counts_text

    left = pace.left(state)
    parts = [f"automl {time.strftime('%H:%M:%S')} ({span(time.time() - started)} in): {counts_text(state)}",
             budget_text(state), f"about {span(left)} left" if left is not None else "", best_text(state)]
    return "; ".join(p for p in parts if p)


class Progress:
    """The live view of one driver run; use as a context manager and print through :meth:`echo`.

    `tty`: redraw in place (default: whether `stream` is a terminal). `every_s`: the period of the
    status block off a terminal. The underlying `echo` prints the driver's messages; on a terminal
    the table is erased before each message and drawn again below it.
    """

    def __init__(self, echo: Echo = print, *, stream: TextIO | None = None, tty: bool | None = None,
                 every_s: float | None = None) -> None:
        self._echo, self.stream = echo, stream or sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)()) if tty is None else tty
        self.every_s = LOG_EVERY_S if every_s is None else every_s
        self.state: SearchState | None = None
        self.pace = Pace()
        self.started = self.last_output = self.last_block = time.time()
        self.last_message = "starting"
        self._drawn = 0  # lines of the table on screen (tty)
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- driver side
    def attach(self, state: SearchState) -> None:
        """The ledger to show, once the search has one."""
        self.state = state

    def echo(self, text: str) -> None:
        """Print one of the driver's messages (above the table on a terminal)."""
        with self._lock:
            self._erase()
            self._echo(text)
            self.last_output, self.last_message = time.time(), text.strip().splitlines()[-1] if text.strip() else text
            if self.tty:
                self._draw()

    def __enter__(self) -> Progress:
        self._thread = threading.Thread(target=self._run, name="automl-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            self._erase()

    # ---------------------------------------------------------------- the view's thread
    def _run(self) -> None:
        period = TTY_REFRESH_S if self.tty else min(self.every_s, 5.0)
        while not self._stop.wait(period):
            try:
                self.tick()
            except Exception:  # noqa: BLE001 (the ledger changed under us: the next tick draws it)
                continue

    def searching(self) -> bool:
        state = self.state
        return state is not None and any(t.status in (RUNNING, PENDING) for t in list(state.trials.values()))

    def tick(self) -> None:
        """One refresh: redraw (terminal), or a block / a still-working line when one is due (log)."""
        with self._lock:
            if self.tty:
                if self.searching():
                    self._erase()
                    self._draw()
                return
            now = time.time()
            if self.searching():
                if now - self.last_block >= self.every_s:  # whatever else was printed, as Ray Tune does
                    self._echo(self.block())
                    self.last_block = self.last_output = now
            elif now - self.last_output >= self.every_s:
                self._echo(f"automl: still working ({span(now - self.started)} in); last: {self.last_message[:160]}")
                self.last_output = now

    def block(self, rows: int = 15, width: int | None = None) -> str:
        """The status block: the headline and the table (running trials first, then the best)."""
        from automl.console import format_table

        assert self.state is not None
        table = format_table(self.state, limit=rows, width=width)
        return headline(self.state, self.pace, self.started) + "\n" + "\n".join(table.splitlines()[1:])

    def _draw(self) -> None:
        if not self.searching():
            return
        size = shutil.get_terminal_size((120, 30))
        text = self.block(rows=max(3, size.lines - 8), width=size.columns - 1)
        lines = [line[: size.columns - 1] for line in text.splitlines()]
        self.stream.write("\n".join(lines) + "\n")
        self.stream.flush()
        self._drawn = len(lines)

    def _erase(self) -> None:
        if self.tty and self._drawn:
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")  # to the table's first line, clear to the end
            self.stream.flush()
            self._drawn = 0
