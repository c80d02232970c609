"""Where the text embeddings of class names are kept: a bounded memory, and an append-only file.

``BoundedCache`` keeps the most recently used names (a process that serves many users, the
demo, does not keep every name it was ever sent). ``EmbeddingFile`` is the disk cache of one
text tower: each new name is appended as one record (the names of one call in one write), so
that a call writes what it computed and nothing else; when the file holds more than its bound,
it is rewritten once with the newest three quarters. A record is

    MAGIC, name length and embedding size (two little-endian uint32), the name (UTF-8),
    the embedding (little-endian float32), CRC-32 of the name and embedding (uint32)

and a reader that meets a damaged record (a write cut short by a crash, another process's
write interleaved) skips to the next ``MAGIC``: a damaged cache loses names, never returns a
wrong embedding, and is never fatal.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import torch

from glaclip.atomic import atomic_write, remove_stale_temporaries, write_error

MAGIC = b"\xffGLE"
_HEAD = struct.Struct("<II")  # name length in bytes, embedding size
_CRC = struct.Struct("<I")
_MAX_NAME_BYTES = 1 << 14
_MAX_DIM = 1 << 16
DEFAULT_MAX_NAMES = 50_000  # names kept in memory and on disk (100 MB at 512 floats each)


def _name_bytes(name: str) -> bytes:
    return name.encode("utf-8", "surrogatepass")


def encode_record(name: str, embedding: torch.Tensor) -> bytes:
    """One record of ``EmbeddingFile``: ``name`` and its ``E`` float32 embedding."""
    raw = _name_bytes(name)
    values = embedding.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4")
    body = raw + values.tobytes()
    return MAGIC + _HEAD.pack(len(raw), values.size) + body + _CRC.pack(zlib.crc32(body))


def decode_records(data: bytes) -> Iterator[tuple[str, torch.Tensor]]:
    """The intact records of ``data`` in order (damaged ones skipped)."""
    pos = data.find(MAGIC)
    while pos >= 0:
        start = pos + len(MAGIC)
        record = None
        if start + _HEAD.size <= len(data):
            length, dim = _HEAD.unpack_from(data, start)
            body_at = start + _HEAD.size
            end = body_at + length + 4 * dim
            if length <= _MAX_NAME_BYTES and 0 < dim <= _MAX_DIM and end + 4 <= len(data):
                body = data[body_at:end]
                if _CRC.unpack_from(data, end)[0] == zlib.crc32(body):
                    record = (body[:length], body[length:], end + 4)
        if record is None:
            pos = data.find(MAGIC, pos + 1)
            continue
        raw, values, pos = record
        try:
            name = raw.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            pos = data.find(MAGIC, pos)
            continue
        yield name, torch.from_numpy(np.frombuffer(values, dtype="<f4").astype(np.float32))
        pos = data.find(MAGIC, pos)


class BoundedCache:
    """A mapping of at most ``max_items`` entries; the least recently used goes first."""

    def __init__(self, max_items: int = DEFAULT_MAX_NAMES) -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be at least 1, got {max_items}")
        self.max_items = max_items
        self._items: OrderedDict[str, object] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def get(self, key: str) -> object | None:
        """The value of ``key`` (now the most recently used), or None."""
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: str, value: object) -> None:
        """Keep ``value`` for ``key``; the least recently used entries beyond the bound go."""
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)

    def update(self, items: Mapping[str, object]) -> None:
        for key, value in items.items():
            self.put(key, value)

    def keys(self) -> Iterable[str]:
        return self._items.keys()


class EmbeddingFile:
    """The append-only disk cache of one text tower (see the module's description).

    Args:
        path: the file (made with its folder on the first write).
        max_names: at most this many names are kept; past ``max_names`` records the file is
            rewritten with the newest ``3 * max_names // 4`` names.
    """

    def __init__(self, path: str | os.PathLike, max_names: int = DEFAULT_MAX_NAMES) -> None:
        self.path = Path(path)
        self.max_names = max_names
        self._records = 0  # records in the file (read or appended by this process)

    def load(self) -> dict[str, torch.Tensor]:
        """Every name in the file, oldest first (a name written twice: its last record).

        Raises:
            OSError: the file exists but cannot be read.
        """
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        out: dict[str, torch.Tensor] = {}
        count = 0
        for name, embedding in decode_records(data):
            out.pop(name, None)
            out[name] = embedding
            count += 1
        self._records = count
        return out

    def append(self, items: Mapping[str, torch.Tensor]) -> None:
        """Append ``items`` in one write; rewrite the file when it passes its bound.

        Raises:
            WriteError: the folder or the file cannot be written (names the file).
        """
        if not items:
            return
        data = b"".join(encode_record(n, e) for n, e in items.items())
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        except OSError as err:
            raise write_error(self.path, err) from None
        self._records += len(items)
        if self._records > self.max_names:
            self.compact()

    def compact(self) -> None:
        """Rewrite the file with its newest ``3 * max_names // 4`` names (atomically)."""
        names = self.load()
        keep = list(names.items())[-max(1, 3 * self.max_names // 4) :]
        data = b"".join(encode_record(n, e) for n, e in keep)
        remove_stale_temporaries(self.path.parent)
        atomic_write(self.path, lambda tmp: tmp.write_bytes(data))
        self._records = len(keep)
