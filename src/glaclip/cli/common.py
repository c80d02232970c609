"""What the commands share: messages in the command line's terms (flags, not keywords), the
exit on a refusal, the output folders' locks."""

from __future__ import annotations

import contextlib
import functools
import sys
from pathlib import Path
from typing import TextIO

from glaclip.cli.parser import build_parser
from glaclip.cli.terms import Flag, parser_flags, to_flags


def locks(folders: list[tuple[Path, str]]) -> contextlib.AbstractContextManager:
    """The output folders' locks, held by the main process of a run (rank 0 under torchrun,
    where the other ranks write into the same folders)."""
    from glaclip.io.outputs import is_main_process, output_locks

    return output_locks(folders) if is_main_process() else contextlib.nullcontext()


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


def fail(message: str) -> int:
    print(f"glaclip: error: {in_flags(message)}", file=sys.stderr)
    return 2


@functools.cache
def _flags() -> dict[str, Flag]:
    return parser_flags(build_parser())


def in_flags(message: str) -> str:
    """A library message (which names Python keywords) in the terms of the command line."""
    return to_flags(message, _flags())


def show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """A warning as one line, ``glaclip: warning: ...``, without the source line."""
    print(f"glaclip: warning: {in_flags(str(message))}", file=file or sys.stderr)
