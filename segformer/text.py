"""Small text helpers shared by the toolkit's messages and tables (no heavy imports)."""

from __future__ import annotations

import unicodedata
from typing import Any

__all__ = ["count", "fmt", "pad", "span", "width"]


def fmt(value: Any, digits: int = 4) -> str:
    """A value for a message or table: None -> "-", a float with ``digits`` significant digits
    (``f"{value:.{digits}g}"``: 0.000123 -> "0.000123", 1234567.0 -> "1.235e+06"), anything else
    ``str(value)``."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def count(n: float, noun: str) -> str:
    """``n`` and a noun that takes an "s" unless there is one: "1 epoch", "20 epochs", "0 trials"."""
    return f"{n:g} {noun}" if n == 1 else f"{n:g} {noun}s"


def span(seconds: float) -> str:
    """Seconds as people read them: "45 s", "12 min", "2.5 h"."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def width(text: str) -> int:
    """Columns ``text`` takes on a terminal: a wide character (CJK, East Asian width W or F) takes
    two, a combining mark none. ``len`` counts characters, which misaligns a table of class names
    such as 道路 or 建物."""
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def pad(text: str, columns: int) -> str:
    """``text`` left-aligned in ``columns`` terminal columns (``str.ljust`` by `width`)."""
    return text + " " * max(0, columns - width(text))
