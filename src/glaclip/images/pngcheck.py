"""Whether a PNG file holds every row its header announces.

Pillow decodes a PNG whose compressed image data ends cleanly before the last row (a file cut
and closed with a valid end, or written by a broken encoder) without an error, and fills the
missing rows with zeros: a 4000 x 3000 photo that holds 10 rows reads as a black image.
``png_rows`` inflates the image data again, counting bytes without keeping them, and compares
them with what the header's size, bit depth, colour type and interlacing require (the filter
byte of every row included; Adam7's seven passes for an interlaced file).
"""

from __future__ import annotations

import os
import struct
import zlib
from typing import BinaryIO, NamedTuple

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
          (0, 1, 1, 2))  # fmt: skip
_PIECE = 1 << 20  # bytes inflated at a time


class PngRows(NamedTuple):
    """``held`` of the ``height`` rows of a ``width`` x ``height`` PNG are in its data
    (for an interlaced file: the share of the data present, in rows)."""

    width: int
    height: int
    held: int

    @property
    def complete(self) -> bool:
        return self.held >= self.height


def _row_bytes(width: int, bits: int) -> int:
    return (width * bits + 7) // 8


def expected_bytes(width: int, height: int, bit_depth: int, colour: int, interlace: int) -> int:
    """Bytes of decompressed image data a PNG of this header holds, filter bytes included."""
    bits = bit_depth * _CHANNELS[colour]
    if not interlace:
        return height * (1 + _row_bytes(width, bits))
    total = 0
    for x0, y0, dx, dy in _ADAM7:
        w = (width - x0 + dx - 1) // dx if width > x0 else 0
        h = (height - y0 + dy - 1) // dy if height > y0 else 0
        if w and h:
            total += h * (1 + _row_bytes(w, bits))
    return total


def _chunks(f: BinaryIO):
    """``(type, length)`` of each chunk, the file positioned at its data; stops at IEND or
    at the end of the file."""
    while True:
        head = f.read(8)
        if len(head) < 8:
            return
        length, kind = struct.unpack(">I4s", head)
        start = f.tell()
        yield kind, length
        if kind == b"IEND":
            return
        f.seek(start + length + 4)  # past the data and the CRC


def png_rows(path: str | os.PathLike) -> PngRows | None:
    """How many of its rows a PNG file holds; None when it is no PNG or its header is not
    one this check reads (Pillow reports those itself)."""
    with open(path, "rb") as f:
        if f.read(8) != SIGNATURE:
            return None
        header = None
        inflater = zlib.decompressobj()
        got = 0
        need = None
        for kind, length in _chunks(f):
            if kind == b"IHDR" and length >= 13:
                width, height, depth, colour, _, _, interlace = struct.unpack(
                    ">IIBBBBB", f.read(13)
                )
                if colour not in _CHANNELS:
                    return None
                header = (width, height)
                need = expected_bytes(width, height, depth, colour, interlace)
            elif kind == b"IDAT" and need is not None:
                left = length
                while left > 0 and got < need:
                    data = f.read(min(left, _PIECE))
                    if not data:
                        break
                    left -= len(data)
                    try:
                        while data and got < need:
                            got += len(inflater.decompress(data, _PIECE))
                            data = inflater.unconsumed_tail
                    except zlib.error:
                        return None  # corrupt data: Pillow reports it
            if need is not None and got >= need:
                break
    if header is None or need is None:
        return None
    width, height = header
    held = height if got >= need else (got * height) // max(1, need)
    return PngRows(width, height, held)


def incomplete_png_message(rows: PngRows) -> str:
    """What to say about a PNG that ends early."""
    return (
        f"the file ends early: it holds {rows.held} of the {rows.height} rows its header "
        f"announces ({rows.width} x {rows.height}), the rest would read as black; replace it "
        "with a complete copy"
    )
