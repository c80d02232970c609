"""Files written completely or not at all: atomic replacement, checked sizes, JSON.

A file is written under a temporary name beside its final one, flushed to the disk and only
then renamed over it (``atomic_write``): a reader sees the old file or the new one, never half
of one; a failure leaves no temporary file behind and reports the final name and its cause
(``WriteError``). A process killed while it writes (``kill -9``, a power cut) cannot remove its
temporary file; the name tells the machine and the process that wrote it, and
``remove_stale_temporaries`` removes those whose process is gone (a rerun calls it on the
folders it writes into).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "STOP_ERRNOS",
    "WriteError",
    "atomic_write",
    "atomic_write_bytes",
    "encode_json",
    "remove_stale_temporaries",
    "save_json",
    "temporary_name",
    "write_error",
]

# write errors after which no other file can be written either (a full disk or quota, a
# read-only file system): a batch stops instead of trying every image
STOP_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, getattr(errno, "EDQUOT", errno.ENOSPC)})


class WriteError(OSError):
    """A file could not be written; the message names the file and the cause, and ``errno``
    is the cause's (``errno.ENOSPC`` for a full disk)."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def write_error(path: str | os.PathLike[str], err: OSError) -> WriteError:
    """``err`` as a ``WriteError`` naming ``path`` (the final name, not a temporary one)."""
    if isinstance(err, WriteError):
        return err
    cause = err.strerror or str(err) or type(err).__name__
    return WriteError(err.errno, f"cannot write {path}: {cause}")


def _remove_quietly(path: Path) -> None:
    """Remove ``path`` if it is there; a failure to remove it is not reported (the error that
    made it necessary is the one that matters)."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_TEMPORARY = re.compile(r"\.glaclip-([0-9a-f]{4})([0-9a-f]{6})[0-9a-f]{6}\.tmp")
STALE_SECONDS = 3600  # a temporary file this old is stale whoever wrote it (writes take seconds)


def _host_tag() -> str:
    """4 hex digits of this machine's name: which machine wrote a temporary file."""
    return hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:4]


def temporary_name(path: Path) -> Path:
    """A temporary name beside ``path``: ``.glaclip-<16 hex digits>.tmp``, 26 characters
    whatever the length of ``path``'s name, so that any name the file system accepts can be
    written. The digits are the machine (4, from its name), the process id (6) and 6 random
    ones."""
    return path.with_name(
        f".glaclip-{_host_tag()}{os.getpid() & 0xFFFFFF:06x}{secrets.token_hex(3)}.tmp"
    )


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (unknown on Windows: True)."""
    if os.name == "nt":  # os.kill would end the process there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> int:
    """Remove the temporary files (``temporary_name``) left in ``folder`` by writes that never
    finished: those written on this machine by a process that is gone, and any older than
    ``STALE_SECONDS``. Another live process's files are left alone. Returns how many were
    removed; a folder that cannot be read removes none."""
    removed = 0
    host, now = _host_tag(), time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        match = _TEMPORARY.fullmatch(entry.name)
        if match is None:
            continue
        try:
            old = now - entry.stat(follow_symlinks=False).st_mtime > STALE_SECONDS
        except OSError:
            continue
        pid = int(match.group(2), 16)
        dead = match.group(1) == host and pid != os.getpid() & 0xFFFFFF and not _alive(pid)
        if old or dead:
            try:
                os.unlink(entry.path)
                removed += 1
            except OSError:
                pass
    return removed


def atomic_write(
    path: str | os.PathLike[str], write_fn: Callable[[Path], Any], fsync: bool = True
) -> Path:
    """Write a file atomically: ``write_fn(tmp)`` writes a temporary file, then it is renamed.

    The temporary file lives in the same directory (``temporary_name``) so that ``os.replace``
    is atomic; ``write_fn`` must not rely on its extension to pick a format. Missing parent
    directories are created. The temporary file is flushed to the disk (``fsync``) before the
    rename, unless ``fsync`` is False (``write_fn`` did it). On any exception (including
    KeyboardInterrupt) the temporary file is removed and ``path`` is left as it was.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        WriteError: an ``OSError`` while writing, naming ``path`` and the cause (a full disk,
            no permission, a folder at ``path``, a name too long for the file system).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise write_error(path, err) from None
    tmp = temporary_name(path)
    try:
        write_fn(tmp)
        if fsync:
            _fsync_file(tmp)
        os.replace(tmp, path)
    except OSError as err:
        _remove_quietly(tmp)
        raise write_error(path, err) from None
    except BaseException:
        _remove_quietly(tmp)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (``atomic_write``), flushed to the disk and
    checked: a file that holds fewer bytes than were written (a file system that loses data
    without an error) is removed and reported.

    Raises:
        WriteError: as ``atomic_write``; ``errno.EIO`` when the written size is short.
    """

    def write(tmp: Path) -> None:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            size = os.fstat(f.fileno()).st_size
        if size != len(data):
            raise OSError(
                errno.EIO,
                f"only {size} of its {len(data)} bytes reached the disk (is it full?)",
            )

    return atomic_write(path, write, fsync=False)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serializable")


def encode_json(obj: Any, what: str = "JSON") -> bytes:
    """``obj`` as UTF-8 JSON text (non-ASCII kept, indent 2, trailing newline); numpy
    scalars/arrays and paths are converted.

    Raises:
        ValueError: ``obj`` holds NaN or an infinity, which strict JSON readers refuse
            (``what`` names the file in the message).
    """
    try:
        text = json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default, allow_nan=False)
    except ValueError as err:
        raise ValueError(f"{what} would hold NaN or Infinity, which JSON cannot ({err})") from None
    return (text + "\n").encode("utf-8")


def save_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Save ``obj`` as JSON (``encode_json``) atomically; the text is made before anything is
    written, and a value that JSON cannot hold (NaN, Infinity) is refused with ValueError."""
    return atomic_write_bytes(path, encode_json(obj, str(path)))
