"""Encoding images and label maps as files: label PNGs (indexed with a palette, or 16-bit) and
RGB images, written atomically (``glaclip.atomic``)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from glaclip.atomic import atomic_write_bytes
from glaclip.io.palette import make_palette


def encode_label_png(
    labels: np.ndarray,
    palette: np.ndarray | None = None,
    sixteen_bit: bool | None = None,
) -> bytes:
    """A label map as the bytes of a PNG file.

    Args:
        labels: HxW integer array with values in [0, 65535].
        palette: Kx3 uint8 colours (K <= 256) for an indexed PNG; None uses
            ``make_palette(256)``; indices beyond K get ``make_palette(256)`` colours.
        sixteen_bit: write a 16-bit greyscale (mode I;16) PNG without a palette; None
            decides by the values (above 255: 16-bit). A vocabulary of more than 255 classes
            should pass True, so that every image of a run has the same format.

    Otherwise the PNG is indexed (mode P) and carries the palette.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise ValueError(f"labels must be an HxW integer array, got {labels.shape} {labels.dtype}")
    lo, hi = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
    if lo < 0 or hi > 65535:
        raise ValueError(f"labels must lie in [0, 65535] for PNG, got [{lo}, {hi}]")
    h, w = labels.shape
    if sixteen_bit is None:
        sixteen_bit = hi > 255
    if not sixteen_bit and hi > 255:
        raise ValueError(f"an indexed PNG holds labels up to 255, got {hi}")
    if not sixteen_bit:
        full = make_palette(256)
        if palette is not None:
            pal = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
            if len(pal) > 256:
                raise ValueError(f"an indexed PNG holds at most 256 colours, got {len(pal)}")
            full[: len(pal)] = pal
        im = Image.frombytes("P", (w, h), np.ascontiguousarray(labels, dtype=np.uint8).tobytes())
        im.putpalette(full.reshape(-1).tolist())
    else:
        im = Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint16))
    return _encode(im, "PNG")


def _encode(im: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def save_label_png(
    path: str | os.PathLike[str],
    labels: np.ndarray,
    palette: np.ndarray | None = None,
    sixteen_bit: bool | None = None,
) -> Path:
    """Save a label map as PNG (``encode_label_png``), atomically (``atomic_write_bytes``)."""
    return atomic_write_bytes(path, encode_label_png(labels, palette, sixteen_bit))


def encode_rgb(rgb: np.ndarray, extension: str, jpeg_quality: int = 95) -> bytes:
    """An HxWx3 uint8 RGB image as the bytes of an image file; the format follows
    ``extension``: ``.png`` -> PNG, ``.jpg``/``.jpeg`` -> JPEG at ``jpeg_quality``; any other
    extension Pillow can write is accepted too."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 array, got shape {rgb.shape} {rgb.dtype}")
    ext = extension.lower()
    fmt = Image.registered_extensions().get(ext)
    if fmt is None or fmt not in Image.SAVE:
        raise ValueError(f"cannot tell the image format from extension {ext!r}; use .png or .jpg")
    kwargs: dict[str, Any] = {"quality": jpeg_quality} if fmt == "JPEG" else {}
    return _encode(Image.fromarray(np.ascontiguousarray(rgb)), fmt, **kwargs)
