"""SIGTERM handled like Ctrl-C while a long command runs, so both end the same way."""

from __future__ import annotations

import signal
from contextlib import contextmanager
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
