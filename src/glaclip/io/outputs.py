"""Output folders: a run replaces only files glaclip wrote there, and one run writes at a time.

Every folder glaclip writes into (``segment --out``, ``eval --out`` and
``--save-predictions``) keeps a manifest, ``.glaclip-outputs``: the names of the files glaclip
wrote there, one JSON string per line, appended before each file is written. A file at an
output path that the manifest does not name was not made by glaclip (a labelme annotation
``img1.json``, an unrelated photo ``a.png``, the ground truth of a dataset): a run refuses to
replace it, before any model loads, unless it is told to (``--overwrite``).

While a run writes into a folder it holds an advisory lock on ``.glaclip-lock`` there
(``fcntl.flock``; ``msvcrt.locking`` on Windows), which names its process; a second run into
the same folder is refused with that name. The lock file is removed when the run ends, and the
operating system releases the lock of a run that was killed.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path

from glaclip.atomic import WriteError, write_error

MANIFEST_NAME = ".glaclip-outputs"
LOCK_NAME = ".glaclip-lock"
_HEADER = "# glaclip: the files glaclip wrote in this folder (one JSON string per line)"
_SHOWN = 3  # foreign files named in a refusal


class OutputFolder:
    """A folder glaclip writes into, and its manifest of the files glaclip wrote there."""

    def __init__(self, path: str | os.PathLike[str], flag: str = "--out") -> None:
        """
        Args:
            path: the folder (it need not exist yet).
            flag: how the folder was given, for messages (``--out``, ``--save-predictions``).
        """
        self.path = Path(path)
        self.flag = flag
        self._owned: set[str] | None = None

    @property
    def manifest(self) -> Path:
        return self.path / MANIFEST_NAME

    def owned(self) -> set[str]:
        """The names of the files glaclip wrote in this folder (read once, then kept)."""
        if self._owned is None:
            self._owned = read_manifest(self.path)
        return self._owned

    def check(self, names: Iterable[str], overwrite: bool = False) -> None:
        """Refuse output names that would replace a folder, or a file glaclip did not write.

        Args:
            names: the file names a run will write in this folder.
            overwrite: allow replacing files glaclip did not write (folders never are).

        Raises:
            ValueError: names the first such paths and says what to do.
        """
        if not self.path.is_dir():
            return
        present = set(os.listdir(self.path))
        clashes = sorted(name for name in set(names) if name in present)
        folders = [n for n in clashes if (self.path / n).is_dir()]
        if folders:
            raise ValueError(
                f"{self.flag} {self.path} holds a folder named like an output file: "
                f"{self.path / folders[0]}; rename or move it, or choose another {self.flag}"
            )
        if overwrite:
            return
        owned = self.owned()
        foreign = [n for n in clashes if n not in owned]
        if foreign:
            shown = ", ".join(str(self.path / n) for n in foreign[:_SHOWN])
            more = f" and {len(foreign) - _SHOWN} more" if len(foreign) > _SHOWN else ""
            raise ValueError(
                f"{self.flag} {self.path} already holds {shown}{more}, which glaclip did not "
                "write there: a run replaces only files it wrote itself. Choose another "
                f"{self.flag}, move those files away, or pass --overwrite to replace them"
            )

    def claim(self, names: Iterable[str]) -> None:
        """Record ``names`` in the manifest (before they are written), flushed to the disk.

        Raises:
            WriteError: the manifest cannot be written.
        """
        owned = self.owned()
        new = [n for n in dict.fromkeys(names) if n not in owned]
        if not new:
            return
        text = "".join(json.dumps(n, ensure_ascii=False) + "\n" for n in new)
        data = text.encode("utf-8", "backslashreplace")  # a name that is no UTF-8: \udcNN
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.manifest, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                if os.fstat(fd).st_size == 0:
                    data = (_HEADER + "\n").encode("utf-8") + data
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as err:
            raise write_error(self.manifest, err) from None
        owned.update(new)


def make_folder(folder: Path) -> None:
    """Create ``folder`` and its parents if missing.

    Raises:
        WriteError: it cannot be made (a read-only parent, a file in the way).
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise write_error(folder, err) from None


def read_manifest(folder: str | os.PathLike[str]) -> set[str]:
    """The file names in ``folder``'s manifest (empty without one). Lines that are not JSON
    strings (the header, a line cut short by a crash) are skipped."""
    try:
        data = (Path(folder) / MANIFEST_NAME).read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return set()
    except OSError as err:
        raise ValueError(f"cannot read {Path(folder) / MANIFEST_NAME}: {err}") from None
    names: set[str] = set()
    for line in data.decode("utf-8", "replace").splitlines():
        try:
            name = json.loads(line)
        except ValueError:
            continue
        if isinstance(name, str):
            names.add(name)
    return names


# -------------------------------------------------------------------------------- the lock
class OutputBusyError(ValueError):
    """Another run holds the folder's lock."""


def _try_lock(fd: int) -> bool:
    """Take an exclusive lock on ``fd`` without waiting; False when another holds it."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        text = ""
    return text or "a process that has not written its name yet"


def _acquire(path: Path, flag: str) -> int:
    """The descriptor of ``path``, locked; retried when the file was replaced meanwhile (the
    holder removes it when it ends)."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            cause = err.strerror or str(err)
            raise WriteError(
                err.errno, f"cannot write into {flag} {path.parent}: {cause}"
            ) from None
        if not _try_lock(fd):
            os.close(fd)
            raise OutputBusyError(
                f"{flag} {path.parent} is in use by another glaclip run ({_holder(path)}): "
                f"wait for it to finish, or choose another {flag}; two runs writing into one "
                "folder would mix their files"
            )
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike[str], flag: str = "--out") -> Iterator[Path]:
    """Hold the lock of ``folder`` (made if missing) for the duration of the block. A folder
    it made is removed again when the run leaves it empty (a run that failed before writing).

    Raises:
        OutputBusyError: another run holds it (the message names that run's process).
        WriteError: the folder or its lock file cannot be made (a read-only folder).
    """
    folder = Path(folder)
    made = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    make_folder(folder)
    path = folder / LOCK_NAME
    fd = _acquire(path, flag)
    try:
        started = datetime.datetime.now().isoformat(timespec="seconds")
        note = f"process {os.getpid()} on {socket.gethostname()}, started {started}\n"
        try:
            os.ftruncate(fd, 0)
            os.write(fd, note.encode("utf-8"))
        except OSError as err:
            raise write_error(path, err) from None
        yield folder
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)
        for empty in made:  # rmdir removes only an empty folder
            with contextlib.suppress(OSError):
                empty.rmdir()


@contextlib.contextmanager
def output_locks(folders: Iterable[tuple[str | os.PathLike[str], str]]) -> Iterator[None]:
    """Hold the locks of several ``(folder, flag)`` at once (a folder named twice is locked
    once)."""
    with contextlib.ExitStack() as stack:
        seen: set[str] = set()
        for folder, flag in folders:
            key = os.path.realpath(folder)
            if key not in seen:
                seen.add(key)
                stack.enter_context(output_lock(folder, flag))
        yield


def is_main_process() -> bool:
    """Whether this process is rank 0 of a torchrun job, or not under torchrun: the one that
    holds the output locks of a run."""
    return os.environ.get("RANK", "0") == "0"


def check_outside(
    folder: str | os.PathLike[str],
    protected: Iterable[tuple[str | os.PathLike[str], str]],
    flag: str,
) -> None:
    """Refuse an output ``folder`` that is, or lies inside, one of the ``protected`` folders
    (``(folder, what it is)``, e.g. a dataset's root or label folder); links are resolved.

    Raises:
        ValueError: names both folders.
    """
    mine = Path(os.path.realpath(folder))
    for other, what in protected:
        theirs = Path(os.path.realpath(other))
        if mine == theirs or theirs in mine.parents:
            where = "is" if mine == theirs else "lies inside"
            raise ValueError(
                f"{flag} {folder} {where} {what} {other}: files written there could replace "
                f"the dataset's own; choose a {flag} folder outside it"
            )
