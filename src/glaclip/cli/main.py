"""``glaclip``: parse the command line, run the command, choose the exit status (2 for a
refusal, 1 for a failure, 130 after Ctrl-C, 143 after SIGTERM)."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import warnings
from collections.abc import Sequence
from typing import Any

from glaclip.cli import demo, evaluate, prepare, segment, tiny
from glaclip.cli.common import fail, is_terminal, show_warning
from glaclip.cli.parser import build_parser


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: the run stops as after Ctrl-C (outputs of the image being written
    removed, locks released), with status 143."""


def _terminate(_signum: int, _frame: Any) -> None:
    raise Terminated


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Any:
    """SIGTERM stops the command the way Ctrl-C does, for the duration of the block (from
    the main thread only, where Python runs signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (130 after Ctrl-C, 143 after SIGTERM)."""
    with warnings.catch_warnings(), _sigterm_as_interrupt():
        warnings.showwarning = show_warning
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "no_progress", True) is False and not is_terminal(sys.stderr):
        args.no_progress = True  # progress bars only on a terminal, not in logs and pipes
    from glaclip.atomic import WriteError
    from glaclip.model.towers import ModelLoadError

    try:
        if args.command == "segment":
            return segment.run_segment(args)
        if args.command == "eval":
            return evaluate.run_eval_command(args)
        if args.command == "demo":
            return demo.run_demo(args)
        if args.command == "prepare":
            return prepare.run_prepare(args)
        if args.command == "tiny-models":
            return tiny.run_tiny(args)
    except WriteError as err:  # before FileNotFoundError: a folder vanished while writing
        print(f"glaclip: error: {err}", file=sys.stderr)
        return 1
    except (ModelLoadError, ValueError, FileNotFoundError) as err:
        return fail(str(err))
    except OSError as err:  # the file system failed; one line, not a traceback
        where = f"{err.filename}: " if err.filename and str(err.filename) not in str(err) else ""
        print(f"glaclip: error: {where}{err.strerror or err}", file=sys.stderr)
        return 1
    except Terminated:
        print("glaclip: terminated", file=sys.stderr)
        return 143  # 128 + SIGTERM, as shells report it
    except KeyboardInterrupt:
        print("glaclip: interrupted", file=sys.stderr)
        return 130  # 128 + SIGINT, as shells report it
    return fail(f"unknown command {args.command!r}")
