"""A faulty disk for the tests: writes into one folder fail, or lose data without a word.

``faulty_disk(monkeypatch, folder, fault)`` replaces ``builtins.open`` (and ``os.open``) for
files opened for writing directly inside ``folder``. Everything glaclip writes, and everything
Pillow writes for it, goes through them, so the same fault hits any way of writing a file.
"""

from __future__ import annotations

import builtins
import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

JPEG_START = b"\xff\xd8"
PNG_START = b"\x89PNG"

# fault(first bytes of the file, bytes asked to be written) -> bytes to write, or raises
Fault = Callable[[bytes, bytes], bytes]


def full_disk(starts: bytes = b"") -> Fault:
    """``write`` fails with ENOSPC for files whose data starts with ``starts``."""

    def fault(first: bytes, data: bytes) -> bytes:
        if first.startswith(starts):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return data

    return fault


def silent_loss(starts: bytes, keep: int = 1000) -> Fault:
    """Files whose data starts with ``starts`` keep only their first ``keep`` bytes; the rest
    is reported as written (a file system that loses data without an error)."""
    state = {"kept": 0}

    def fault(first: bytes, data: bytes) -> bytes:
        if not first.startswith(starts):
            return data
        room = max(0, keep - state["kept"])
        state["kept"] += min(room, len(data))
        return data[:room]

    return fault


class _FaultyFile:
    def __init__(self, real: Any, fault: Fault) -> None:
        self._real = real
        self._fault = fault
        self._first = b""

    def write(self, data: Any) -> int:
        raw = data if isinstance(data, bytes) else bytes(data)
        if not self._first:
            self._first = raw[:8]
        self._real.write(self._fault(self._first, raw))
        return len(raw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def __enter__(self) -> _FaultyFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._real.close()


def _inside(path: Any, folder: Path) -> bool:
    try:
        return Path(os.fspath(path)).resolve().parent == folder.resolve()
    except TypeError:  # a file descriptor
        return False


def faulty_disk(monkeypatch: pytest.MonkeyPatch, folder: Path, fault: Fault) -> None:
    """Writes of files directly inside ``folder`` go through ``fault``."""
    real_open = builtins.open

    def fake_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = real_open(file, mode, *args, **kwargs)
        if any(c in mode for c in "wxa+") and _inside(file, folder):
            return _FaultyFile(handle, fault)
        return handle

    monkeypatch.setattr(builtins, "open", fake_open)


def read_only(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Opening a file for writing inside ``folder`` fails with EACCES (the tests run as root,
    where a chmod would not stop a write)."""
    real_open, real_os_open = builtins.open, os.open
    denied = PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    def fake_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if any(c in mode for c in "wxa+") and _inside(file, folder):
            raise denied
        return real_open(file, mode, *args, **kwargs)

    def fake_os_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        writing = flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
        if writing and _inside(path, folder):
            raise denied
        return real_os_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)
