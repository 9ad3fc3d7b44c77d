"""A line every 30 seconds while a long step that has no progress bar of its own works (ONNX export,
quantization, TensorRT engine building), so no `segformer` command is silent for longer."""

from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator, TextIO

HEARTBEAT_S = 30.0


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
