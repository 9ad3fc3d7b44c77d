"""The one base class for errors a user can fix.

An error derived from :class:`SegformerError` is expected: its message names the file, key or value
that is wrong and says how to fix it, so the command-line tools print it without a traceback and
exit non-zero. Anything else is a bug and keeps its traceback.
"""


class SegformerError(Exception):
    """A problem with the user's input or environment, explained in the message.

    A message that names the local copy of remote data (``segformer.remote``) names the URL the
    user gave instead, so data read from s3:// is reported exactly as a local folder would be.
    """

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str):
            from segformer.remote import as_given

            args = (as_given(self._unwrapped(args[0])),)
        super().__init__(*args)

    def _unwrapped(self, message: str) -> str:
        """A DataLoader worker's error is raised again in the main process as the same type, with the
        worker's whole traceback as its message ("Caught DataError in DataLoader worker process 0.
        Original Traceback ..."): what a user reads is the original message, as with workers=0."""
        if not message.startswith("Caught ") or "\nOriginal Traceback (most recent call last):" not in message:
            return message
        marker = f"\n{type(self).__module__}.{type(self).__qualname__}: "
        at = message.rfind(marker)
        return message[at + len(marker):].rstrip("\n") if at >= 0 else message


class SpecError(SegformerError, ValueError):
    """A spec value refused where it is used (a model, data or deploy builder's own check) rather than
    when the spec loads. Also a ``ValueError``, as those checks raised before."""


class DataError(SegformerError):
    """The dataset on disk does not match the spec (missing folders, bad masks, palette problems)."""


class DataWarning(UserWarning):
    """Something in the dataset that is read, but maybe not as the user meant (files passed over)."""


class CheckpointError(SegformerError):
    """A checkpoint cannot be read, is of another model, or is refused by safe loading."""


class MissingDependencyError(SegformerError):
    """An optional package is needed for this action; the message names the extra to install."""


class TrainingDivergedError(SegformerError, FloatingPointError):
    """The training loss became NaN or infinite. Also a ``FloatingPointError``, so code that
    catches the numeric error (an AutoML trial marking itself failed) keeps working."""


def plain_warnings(*packages: str) -> None:
    """A command-line tool's warnings from this project's own code (``segformer`` and `packages`)
    print as one ``warning: message`` line on stderr, not Python's ``path:line: UserWarning:`` plus
    the source line; other libraries' warnings keep Python's format. Console entry points only, so
    that code which records warnings in-process (tests, notebooks) is not affected."""
    import importlib.util
    import os
    import sys
    import warnings

    if getattr(warnings.showwarning, "plain", False):
        return
    roots = tuple(os.path.join(location, "") for name in ("segformer", *packages)
                  for location in (importlib.util.find_spec(name).submodule_search_locations or []))
    python_format = warnings.showwarning
    shown: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001 (warnings' signature)
        if not str(filename).startswith(roots):
            return python_format(message, category, filename, lineno, file, line)
        # Once per process: Python's "default" action forgets what it showed whenever a filter changes
        # (any `catch_warnings` block), so a search's promotion said the same note five times in a row.
        if str(message) in shown:
            return None
        shown.add(str(message))
        try:
            (file or sys.stderr).write(f"warning: {message}\n")
        except (OSError, ValueError):  # a closed stream: as Python's own showwarning, say nothing
            pass
        return None

    show.plain = True  # type: ignore[attr-defined]
    warnings.showwarning = show
