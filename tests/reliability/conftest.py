"""Fixtures of the reliability tests (helpers live in relhelpers.py)."""

from relhelpers import checkpoint, data_copy, dataset, tiny_tmpfs  # noqa: F401 - fixtures
