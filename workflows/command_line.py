"""What every command line shares: ``--input`` / ``--output`` (with the old spellings for one release) and
one-line errors."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable

__all__ = ["TARGETS", "add_input", "add_output", "add_threads", "input_of", "interruptible", "USER_ERRORS", "error_line"]

#: what a model segments (``transforms.TARGET_CHANNELS``'s keys), spelled here so ``--help`` needs no torch
TARGETS = ("liver", "tumor", "both")


def add_input(parser: argparse.ArgumentParser, help: str, positional: str | None = None) -> None:
    """``--input PATH``; ``positional`` names the old positional spelling, still accepted until release 0.3."""
    if positional is not None:
        parser.add_argument(positional, nargs="?", help=argparse.SUPPRESS)
    parser.add_argument("--input", required=positional is None, help=help)


def input_of(parser: argparse.ArgumentParser, args: argparse.Namespace, positional: str) -> str:
    """The input given as ``--input`` or, the old way, positionally; a one-line error when neither or both."""
    given = [value for value in (args.input, getattr(args, positional)) if value]
    if len(given) != 1:
        parser.error("give the input once, as --input PATH" if given else "the following arguments are required: --input")
    return given[0]


def add_threads(parser: argparse.ArgumentParser) -> None:
    """``--threads N``: torch's threads in this process (0, the default: the cores divided by the processes the
    command runs)."""
    parser.add_argument("--threads", type=_thread_count, default=0,
                        help="torch threads in this process (default 0: the cores divided by the processes it runs)")


def _thread_count(text: str) -> int:
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"a whole number >= 0 (0: the cores divided by the processes), got {text!r}")
    return int(text)


def add_output(parser: argparse.ArgumentParser, help: str, old: tuple[str, ...] = ("--out",), **kwargs) -> None:
    """``--output PATH``; ``old`` spellings (``--out``, ``--output_dir``) are accepted until release 0.3."""
    parser.add_argument("--output", *old, dest="output", help=f"{help} ({', '.join(old)}: old spelling)", **kwargs)


#: what a command line turns into one line: bad settings and data (ValueError), file trouble (OSError)
USER_ERRORS = (ValueError, OSError)


def error_line(err: BaseException) -> str:
    """``error: ...`` for a user error: the message's first line; a file operation's failure as the path, what
    happened and the way out for that cause (:func:`workflows.machine.atomic.os_error_line`)."""
    if isinstance(err, OSError):
        from workflows.machine.atomic import os_error_line

        return f"error: {os_error_line(err)}\n"
    text = str(err).strip().splitlines()
    return f"error: {text[0] if text else type(err).__name__}\n"


def interruptible(main: Callable[..., int]) -> Callable[..., int]:
    """Ctrl-C ends a command line with one line and status 130 instead of a traceback: every file is written
    atomically, so what was finished is kept and rerunning the same command carries on."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except KeyboardInterrupt:
            print("interrupted; rerun the same command to continue", file=sys.stderr)
            return 130

    return wrapper
