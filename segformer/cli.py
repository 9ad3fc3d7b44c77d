"""``segformer``: run any TAO SegFormer action, plus the tool commands around them.

    segformer <action> -e spec.yaml [key=value ...]     train, evaluate, inference, export,
                                                        quantize, gen_trt_engine
    segformer validate -e spec.yaml [--action A] [key=value ...]
    segformer schema generate [--out-dir DIR]
    segformer data synth --out DIR [--num-classes K ...]
    segformer convert --from hf|nvlabs|timm SRC OUT.pth [-e spec.yaml [key=value ...]]

The command line only parses and dispatches from explicit tables (``segformer.actions.ACTIONS``
and ``COMMANDS`` below). Every action is the in-process function
``segformer.actions.<action>.run(cfg)``; nothing here imports torch, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
import traceback
from pathlib import Path
from typing import Callable, Sequence

from segformer import __version__
from segformer.actions import ACTIONS, USAGE  # action name -> one-line help; run(cfg) in segformer.actions.<name>

# tool command -> (module:function taking argv and returning an exit code, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "validate": ("segformer.config.validate:main", "check a spec against its action schema; reports every problem"),
    "schema": ("segformer.config.generate:main", "schema generate: write schemas/ and templates/ from the dataclasses"),
    "data": ("segformer.data.synth:main", "data synth: write a learnable synthetic dataset and its spec"),
    "convert": ("segformer.model.convert:main", "import HF / NVlabs / timm weights into a checkpoint every action accepts"),
}

# Actions with no progress bar of their own: a line every 30 s while they work (`segformer.heartbeat`).
QUIET_ACTIONS = ("export", "quantize", "gen_trt_engine")

EXIT_USER_ERROR = 1
# OSError numbers that mean "fix your disk or paths" (no traceback): full disk or quota, permissions,
# read-only file system, a regular file where a folder should be.
# The environment, not the code, and what to do about it (a path given where a folder or a file is in
# the way, a folder that cannot be made, a full disk, permissions).
_ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: "free disk space, or choose another results_dir",
    errno.EDQUOT: "free disk space, or choose another results_dir",
    errno.EACCES: "fix the permissions, or choose another results_dir",
    errno.EPERM: "fix the permissions, or choose another results_dir",
    errno.EROFS: "choose a results_dir on a writable disk",
    errno.ENOTDIR: "a file is in the way of a folder there: move it, or choose another path",
    errno.EEXIST: "a file is in the way of a folder there: move it, or choose another path",
    errno.EISDIR: "a folder is in the way of a file there: give a file path, or move the folder",
    errno.ENOENT: "check the path: a folder on it does not exist and cannot be made there",
}
EXIT_NOT_IMPLEMENTED = 2


def _user_error_types() -> tuple[type[BaseException], ...]:
    """Exception types whose message is the whole story for a user (no traceback)."""
    from segformer.errors import SegformerError

    types: list[type[BaseException]] = [SegformerError]
    try:
        from segformer.config import ConfigError

        types.append(ConfigError)
    except ImportError:  # the config package is missing only in a broken install
        pass
    return tuple(types)


def _top_parser() -> argparse.ArgumentParser:
    lines = ["actions (segformer <action> -e spec.yaml [key=value ...]):"]
    lines += [f"  {name:<15} {help_}" for name, help_ in ACTIONS.items()]
    lines += ["", "tools:"]
    lines += [f"  {name:<15} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Set SEGFORMER_DEBUG=1 to see tracebacks of expected errors too."]
    parser = argparse.ArgumentParser(
        prog="segformer",
        description="SegFormer semantic segmentation, compatible with NVIDIA TAO specs.",
        epilog="\n".join(lines),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("command", choices=[*ACTIONS, *COMMANDS], metavar="command", help="an action or tool, listed below")
    return parser


def add_spec_arguments(parser: argparse.ArgumentParser, *, required: bool = True,
                       example: str = "train.optim.lr=3e-4 dataset.segment.batch_size=4") -> argparse.ArgumentParser:
    """``-e spec.yaml`` and the ``key=value`` overrides (``args.spec``, ``args.overrides``): every
    command that takes a spec takes them the same way, and hands both to ``load_config``."""
    parser.add_argument("-e", "--experiment_spec_file", "--experiment-spec-file", "--experiment_spec", "--experiment-spec",
                        dest="spec", required=required, help="the experiment spec YAML (TAO format)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help=f"dotted overrides of the spec, e.g. {example}")
    return parser


def parse_with_overrides(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Like parse_args, but key=value overrides may stand on both sides of the flags (`train a=1 -e
    s.yaml b=2`), as with TAO's launcher; argparse alone takes positionals in one run, and called the
    ones after a flag "unrecognized arguments"."""
    args, extras = parser.parse_known_args(argv)
    if extras:
        stray = [e for e in extras if e.startswith("-") or "=" not in e]
        if stray or not hasattr(args, "overrides"):
            parser.error(f"unrecognized arguments: {' '.join(stray or extras)}")
        args.overrides = [*(args.overrides or []), *extras]
    return args


def action_parser(action: str) -> argparse.ArgumentParser:
    """The parser shared by every action: a spec file and dotted overrides, as TAO takes them; the
    epilog says what the action needs and writes, with an example (`segformer.actions.USAGE`)."""
    needs, writes, example = USAGE[action]
    epilog = (f"needs:   {needs}\nwrites:  {writes}\nexample: {example}\n\n"
              "A results folder works wherever a model file is asked for. `segformer validate --action "
              f"{action} -e spec.yaml` checks a spec without running it.")
    parser = argparse.ArgumentParser(prog=f"segformer {action}", description=ACTIONS[action], epilog=epilog,
                                     formatter_class=_WrappedEpilog)
    return add_spec_arguments(parser, example=example.split(" ", 4)[-1])


class _WrappedEpilog(argparse.HelpFormatter):
    """Help text wrapped as usual, and the epilog's lines each wrapped on their own (not run together)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        import textwrap

        return "\n".join(textwrap.fill(line, width, initial_indent=indent, subsequent_indent=indent + " " * (
            9 if line.startswith(("needs:", "writes:", "example:")) else 0)) if line else "" for line in text.splitlines())


def run_action(action: str, argv: Sequence[str]) -> int:
    """Parse, load and validate the spec, then call ``segformer.actions.<action>.run(cfg)``."""
    args = parse_with_overrides(action_parser(action), list(argv))
    module_name = f"segformer.actions.{action}"
    from segformer.config import load_config

    # The spec first: a typo is reported in a second, before torch and Lightning are imported.
    cfg = load_config(args.spec, args.overrides)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        print(f"segformer {action}: not implemented yet", file=sys.stderr)
        return EXIT_NOT_IMPLEMENTED

    action_folder, folder = _new_folder(cfg, action)
    try:
        if action in QUIET_ACTIONS:
            from segformer.heartbeat import heartbeat

            with heartbeat(f"segformer {action}"):
                module.run(cfg)
        else:  # train, evaluate and inference show their own progress bars
            module.run(cfg)
    except BaseException:
        if folder is not None:
            _remove_empty(action_folder, folder)  # an action that failed leaves no empty folder behind
        raise
    return 0


def _new_folder(cfg: object, action: str) -> tuple[Path | None, Path | None]:
    """The action's results folder and the outermost folder this run is about to make for it
    (results_dir itself where it does not exist yet); (folder, None) where the action's folder exists
    already (or (None, None) where results_dir is unset: the action says so itself)."""
    from segformer.config import ConfigError, action_results_dir

    try:
        folder = action_results_dir(cfg, action).absolute()
    except ConfigError:
        return None, None
    if folder.exists():
        return folder, None
    outermost = folder
    while not outermost.parent.exists():
        outermost = outermost.parent
    return folder, outermost


def _remove_empty(folder: Path, outermost: Path) -> None:
    """Empty folders only, with os.rmdir (which cannot remove a folder that holds anything): the
    action's folder and its subfolders, then its parents up to `outermost`; another run's folders
    beside them stay."""
    if folder.is_dir():
        for parent, _, _ in os.walk(folder, topdown=False):
            try:
                os.rmdir(parent)
            except OSError:
                return
    while folder != outermost and outermost in folder.parents:
        folder = folder.parent
        try:
            os.rmdir(folder)
        except OSError:
            return


def _resolve(target: str) -> Callable[[list[str]], int]:
    module_name, func_name = target.split(":")
    return getattr(importlib.import_module(module_name), func_name)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _top_parser()
    if not argv:  # no command: the help, and the exit status of a usage error (a script that forgot the action fails)
        parser.print_help(sys.stderr)
        return 2
    if argv[0] in ("-h", "--help", "--version"):
        parser.parse_args(argv)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in ACTIONS and command not in COMMANDS:
        parser.parse_args([command])  # argparse prints the valid choices and exits 2
    try:
        if command in ACTIONS:
            return run_action(command, rest)
        target, _ = COMMANDS[command]
        return int(_resolve(target)(rest) or 0)
    except KeyboardInterrupt:
        print(f"segformer {command}: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:
        # Lightning ends a fit on SIGTERM with a SystemExit of no code (exit status 0): a scheduler that
        # pre-empts a job would count it as done. On Ctrl-C it catches the KeyboardInterrupt and exits 1,
        # as a failure. Both keep the last checkpoint.
        interrupted = _from_interrupt(exc)
        if type(exc).__name__ != "SIGTERMException" and not interrupted:
            raise
        return _stopped(command, "interrupted" if interrupted else "stopped by SIGTERM")
    except OSError as exc:
        # The environment, not the code: a full disk, a read-only or missing folder, a file in the way.
        if exc.errno not in _ENVIRONMENT_ERRNOS or os.environ.get("SEGFORMER_DEBUG"):
            raise
        path = exc.filename2 or exc.filename  # a rename's destination: the path the user gave, not our temporary
        where = f" {path}" if path else ""
        print(f"segformer {command}: error: cannot access{where}: {exc.strerror or exc}; {_ENVIRONMENT_ERRNOS[exc.errno]}",
              file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as exc:  # noqa: BLE001 - the one place that turns errors into exit codes
        if _from_interrupt(exc):  # Ctrl-C inside a library call (a checkpoint write) that raised its own error
            return _stopped(command, "interrupted")
        if isinstance(exc, _user_error_types()):
            if os.environ.get("SEGFORMER_DEBUG"):
                traceback.print_exc()
            print(f"segformer {command}: error: {exc}", file=sys.stderr)
            return EXIT_USER_ERROR
        raise


def _from_interrupt(exc: BaseException) -> bool:
    """Whether ``exc`` was raised while a KeyboardInterrupt was being handled (Lightning's exit after
    Ctrl-C; torch's "unexpected pos" when the interrupt cut a checkpoint write short)."""
    seen: set[int] = set()
    cause: BaseException | None = exc.__context__
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return True
        seen.add(id(cause))
        cause = cause.__context__
    return False


def _stopped(command: str, how: str) -> int:
    resume = (" (what it trained is kept: continue with train.resume_training_checkpoint_path=<its train results "
              "folder>)") if command == "train" else ""
    print(f"segformer {command}: {how}{resume}", file=sys.stderr)
    return 130  # as `automl` and an interrupt: stopped from outside, resumable


def entry() -> None:
    """Console-script entry point."""
    from segformer.errors import plain_warnings

    plain_warnings()
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    entry()
