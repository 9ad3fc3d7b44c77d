"""Lend the CPUs of a search's idle slots to the trials still running (CPU trials, one node).

A search reserves ``slots x cpus_per_trial`` CPUs. In its tail (every trial started, fewer running
than there are slots) the slots of ended trials sit idle while the last trials train on their own
CPUs: with two slots, one CPU does nothing for as long as the longest trial outlasts the others.
:class:`CpuLending` (in the driver) hands those CPUs to the running trials as torch threads. The
promotion that runs in the tail (:class:`automl.promote.EarlyPromotion`) keeps the threads it was
given; what is left is shared evenly. A crashed trial that Ray retries stays RUNNING in the ledger
(Ray reports a recovery, not an error), so its slot is never lent away; a trial that failed for
good frees its slot like any ended trial.

The driver writes each running trial's thread count into ``<trial folder>/lent_threads.json``
(``{"threads": n}``, written only when it changes, atomically); :class:`automl.tune_report.LentThreads`
in the trial reads it at every epoch start and at most once a second between, and calls
``torch.set_num_threads`` on the training thread. A trial without the file keeps the threads Ray
gave it (``cpus_per_trial``).

Only for trials on CPU on a single-node Ray this driver started or was started in (not
``--address``, which may be a cluster shared with other jobs): on a cluster the idle slot may be on
another machine, and a GPU trial's speed does not follow its CPU threads. Nodes that join later are
not noticed. A trial's floating-point results depend
slightly on its thread count (summation order), so a search that must be bitwise reproducible
turns lending off (``--no-lend-cpus``, ``lend_idle_cpus: false``).
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

LENT_THREADS_FILE = "lent_threads.json"


def write_threads(path: str | Path, threads: int) -> None:
    """Atomic, unsynced write of the thread count (a hint: a crash loses nothing that matters)."""
    from segformer.fileio import atomic_write_text

    try:
        atomic_write_text(path, json.dumps({"threads": int(threads)}), sync=False)
    except OSError:
        pass  # a hint not written costs speed, never the search


def read_threads(path: str | Path) -> int | None:
    """The thread count in a lending file, or None (no file, unreadable, not a positive integer)."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8")).get("threads")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def clear(results_dir: str | Path) -> None:
    """Remove lending files a previous driver left (a resumed search starts with none lent)."""
    for path in Path(results_dir).glob(f"trial_*/{LENT_THREADS_FILE}"):
        path.unlink(missing_ok=True)


class CpuLending:
    """Decides how many torch threads each running trial gets and writes it for the trial.

    `update(state)` is called on every ledger change (trial started, reported, ended) and when the
    tail's promotion ends; it is cheap and writes only the files whose count changed.
    `promotion_threads` returns the CPUs the tail's promotion holds now (0 when none runs).
    """

    def __init__(self, results_dir: str | Path, *, expected_trials: int | None, slots: int,
                 cpus_per_trial: float = 1.0, promotion_threads: Callable[[], int] | None = None) -> None:
        self.results_dir = Path(results_dir)
        self.expected_trials = expected_trials
        self.slots = slots
        self.cpus_per_trial = cpus_per_trial
        self.promotion_threads = promotion_threads or (lambda: 0)
        self.base = max(1, int(cpus_per_trial))  # the threads Ray gives a trial (OMP_NUM_THREADS)
        self.written: dict[str, int] = {}  # trial name -> threads last written
        self.lent_to: set[str] = set()  # trials that were given more threads than their own
        self._running: list[str] = []
        self._tail = False
        self._lock = threading.Lock()

    def plan(self, state: Any) -> dict[str, int]:
        """Threads per running trial (trial name -> count) for this state; remembers it for `refresh`."""
        from automl.state import PENDING, RUNNING

        running = sorted(t.name for t in state.trials.values() if t.status == RUNNING)
        statuses = [t.status for t in state.trials.values()]
        tail = (self.expected_trials is not None and len(state.trials) >= self.expected_trials
                and PENDING not in statuses)
        self._running, self._tail = running, tail
        return self._share()

    def _share(self) -> dict[str, int]:
        running = self._running
        if not running:
            return {}
        free = 0.0
        if self._tail and len(running) < self.slots:
            # The search's CPUs minus the threads already in use: each running trial has at least
            # one (a trial of 0.5 CPU still runs one thread), the promotion its own.
            free = self.slots * self.cpus_per_trial - len(running) * self.base - self.promotion_threads()
        extra = max(0, math.floor(free + 1e-9))
        each, rest = divmod(extra, len(running))
        return {name: self.base + each + (1 if i < rest else 0) for i, name in enumerate(running)}

    def update(self, state: Any) -> None:
        """Plan from the ledger and write what changed."""
        with self._lock:
            self._apply(self.plan(state))

    def refresh(self) -> None:
        """Plan again from the last state seen (the tail's promotion ended and freed its threads)."""
        with self._lock:
            self._apply(self._share())

    def _apply(self, plan: dict[str, int]) -> None:
        for name, threads in plan.items():
            if self.written.get(name, self.base) != threads:
                write_threads(self.results_dir / name / LENT_THREADS_FILE, threads)
                self.written[name] = threads
                if threads > self.base:
                    self.lent_to.add(name)
        for name in [n for n in self.written if n not in plan]:
            # Ended. Its file goes too: Ray retries a crashed trial under the same name, and the
            # retry must not start with threads lent to the trial that crashed.
            (self.results_dir / name / LENT_THREADS_FILE).unlink(missing_ok=True)
            del self.written[name]

    @property
    def lending(self) -> bool:
        """Whether some running trial has more threads than its own now."""
        return any(n > self.base for n in self.written.values())
