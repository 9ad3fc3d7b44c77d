"""No `segformer` command is silent for more than 30 seconds.

- :func:`heartbeat`: a line every 30 seconds while a long step that has no progress bar of its own
  works (ONNX export, quantization, TensorRT engine building).
- :func:`progress`: a tqdm bar over a loop on a terminal; anywhere else (a log file, CI, ``| tee``)
  a plain line every 30 seconds instead of a bar's carriage returns and escape codes."""

from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterable, Iterator, TextIO, TypeVar

HEARTBEAT_S = 30.0

T = TypeVar("T")


def is_terminal(stream: TextIO) -> bool:
    return bool(getattr(stream, "isatty", lambda: False)())


@contextmanager
def heartbeat(label: str, every_s: float | None = None, stream: TextIO | None = None) -> Iterator[None]:
    """Print "<label>: still working (N s)" to `stream` (stderr) every `every_s` seconds until the block ends."""
    period = HEARTBEAT_S if every_s is None else every_s
    stop, started = threading.Event(), time.time()

    def beat() -> None:
        while not stop.wait(period):
            print(f"{label}: still working ({time.time() - started:.0f} s)", file=stream or sys.stderr, flush=True)

    thread = threading.Thread(target=beat, name="segformer-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=1)


def progress(items: Iterable[T], desc: str, unit: str, total: int | None = None, *, every_s: float | None = None,
             stream: TextIO | None = None) -> Iterable[T]:
    """`items` with progress shown on `stream` (stderr): a tqdm bar on a terminal, else
    "<desc>: 120/500 <unit> (31 s)" every `every_s` (30) seconds while the loop runs."""
    out = stream or sys.stderr
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if is_terminal(out):
        from tqdm import tqdm

        return tqdm(items, desc=desc, unit=unit, total=total, file=out)
    return _lines(items, desc, unit, total, HEARTBEAT_S if every_s is None else every_s, out)


def _lines(items: Iterable[T], desc: str, unit: str, total: int | None, every_s: float, out: TextIO) -> Iterator[T]:
    started = last = time.monotonic()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= every_s:
            last = now
            of = f"/{total}" if total else ""
            print(f"{desc}: {done}{of} {unit} ({now - started:.0f} s)", file=out, flush=True)
