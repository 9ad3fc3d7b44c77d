"""Small text helpers shared by the toolkit's messages and tables (no heavy imports)."""

from __future__ import annotations

from typing import Any

__all__ = ["count", "fmt", "span"]


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
