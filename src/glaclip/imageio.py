"""Image input/output: reading to RGB uint8, the protocol resize, CLIP tensors, image files.

Images and label maps are written atomically (``glaclip.atomicio``, whose names are also
importable from here).

Reading rules (SPEC 1.1), applied to files, PIL images and numpy arrays alike:

- EXIF orientation is applied (files and PIL images; a corrupt EXIF block is ignored).
- Alpha is dropped, never composited: RGBA -> RGB, LA -> L, PA -> RGB.
- Greyscale becomes 3 equal channels.
- 16-bit values (modes ``I;16*`` and ``I``, numpy ``uint16``) become 8-bit as ``v >> 8``
  (so 65535 -> 255, 256 -> 1, 255 -> 0); mode ``I`` is first clipped to [0, 65535].
- Floats (mode ``F``, numpy float arrays) must lie in [0, 1] and become ``round(v * 255)``;
  anything else (NaN, values above 1) is rejected with :class:`ImageReadError`.
- Palette, CMYK, YCbCr and other modes Pillow can convert are converted to RGB.
- Multi-frame files (GIF, TIFF) use their first frame.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from glaclip.atomicio import (
    STOP_ERRNOS,
    WriteError,
    atomic_write,
    atomic_write_bytes,
    encode_json,
    save_json,
    temporary_name,
    write_error,
)
from glaclip.constants import CLIP_MEAN, CLIP_STD
from glaclip.palette import make_palette
from glaclip.pngcheck import incomplete_png_message, png_rows

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "IMAGE_EXTENSIONS",
    "STOP_ERRNOS",
    "ImageReadError",
    "WriteError",
    "atomic_write",
    "atomic_write_bytes",
    "encode_json",
    "encode_label_png",
    "encode_rgb",
    "is_image_file",
    "missing_file_reason",
    "oriented_size",
    "quiet_pillow",
    "protocol_size",
    "read_image",
    "resize_image",
    "save_json",
    "save_label_png",
    "save_rgb",
    "temporary_name",
    "to_tensor",
    "write_error",
]

_COMMON_EXTENSIONS = (
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif",
    ".ppm", ".pgm", ".pbm", ".pnm", ".tga"
)  # fmt: skip
# read where this Pillow was built with their decoders (AVIF, JPEG 2000)
_OPTIONAL_EXTENSIONS = (".avif", ".jp2", ".j2k", ".jpf", ".jpx", ".j2c")


def _readable_extensions() -> tuple[str, ...]:
    formats = Image.registered_extensions()  # also loads Pillow's plugins
    extra = [e for e in _OPTIONAL_EXTENSIONS if formats.get(e) in Image.OPEN]
    return _COMMON_EXTENSIONS + tuple(extra)


#: Lower-case file extensions that :func:`read_image` is expected to handle (AVIF and JPEG
#: 2000 where Pillow can decode them).
IMAGE_EXTENSIONS: tuple[str, ...] = _readable_extensions()


@contextlib.contextmanager
def quiet_pillow() -> Iterator[None]:
    """Pillow's own warnings about a file it still reads (a large image below the refused
    size, a corrupt EXIF block, which is ignored) are not passed on: glaclip reports what
    matters itself."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", message=r".*EXIF", category=UserWarning)
        yield


_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


class ImageReadError(ValueError):
    """An image could not be read or converted to HxWx3 uint8 RGB."""


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` has one of :data:`IMAGE_EXTENSIONS` (case-insensitive); no I/O."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def read_image(source: str | os.PathLike[str] | Image.Image | np.ndarray) -> np.ndarray:
    """Read an image as RGB.

    Args:
        source: a file path, a ``PIL.Image.Image`` (not closed or modified), or a numpy array
            of shape HxW, HxWx1, HxWx3 or HxWx4 with dtype uint8, uint16 or float in [0, 1].

    Returns:
        HxWx3 uint8 array in [0, 255], C-contiguous (a new array, never a view of the input).

    Raises:
        ImageReadError: missing file, a directory, a file that is not a decodable image, or an
            array/mode that cannot be interpreted; the message names the path or the problem.
    """
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source, "array")
    if isinstance(source, Image.Image):
        return _pil_to_rgb(source, "PIL image")
    if isinstance(source, (str, os.PathLike)):
        return _read_file(Path(source))
    raise TypeError(
        f"read_image expects a path, a PIL image or a numpy array, got {type(source).__name__}"
    )


def missing_file_reason(path: Path) -> str | None:
    """Why ``path`` cannot be opened as a file (``no such file``, a broken or looping
    symbolic link, a directory), or None when it is a file."""
    try:
        st = os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "is a symbolic link loop (its chain of links leads back to itself)"
        if os.path.islink(path):
            return f"is a broken symbolic link (to {os.readlink(path)}, which does not exist)"
        if isinstance(err, FileNotFoundError):
            return "no such file"
        return f"cannot be opened ({err.strerror or err})"
    if stat.S_ISDIR(st.st_mode):
        return "is a directory, not an image file"
    return None


def _read_file(path: Path) -> np.ndarray:
    reason = missing_file_reason(path)
    if reason is not None:
        raise ImageReadError(f"{path}: {reason}")
    try:
        with quiet_pillow(), Image.open(path) as im:
            im.load()
            if im.format == "PNG":  # Pillow fills rows missing from a PNG with black
                rows = png_rows(path)
                if rows is not None and not rows.complete:
                    raise ImageReadError(f"{path}: {incomplete_png_message(rows)}")
            return _pil_to_rgb(im, str(path))
    except UnidentifiedImageError as e:
        raise ImageReadError(f"{path}: not an image file (Pillow cannot identify it)") from e
    except Image.DecompressionBombError as e:
        raise ImageReadError(
            f"{path}: image too large to decode safely ({e}); downscale it first"
        ) from e
    except PermissionError as e:
        raise ImageReadError(f"{path}: permission denied") from e
    except OSError as e:
        raise ImageReadError(f"{path}: cannot decode image, truncated or corrupt ({e})") from e


_EXIF_ORIENTATION = 0x0112


def oriented_size(im: Image.Image) -> tuple[int, int]:
    """``(width, height)`` of an opened image as ``read_image`` returns it: with its EXIF
    orientation applied (5 to 8 swap the sides), read from the header only."""
    width, height = im.size
    try:
        with quiet_pillow():
            orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block is ignored, as read_image does
        orientation = 1
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


_BAND_PIXELS = 1 << 22  # pixels per band when copying a large RGB image out of Pillow


def _pil_to_rgb(im: Image.Image, where: str) -> np.ndarray:
    try:
        with quiet_pillow():
            if im.getexif().get(_EXIF_ORIENTATION, 1) != 1:  # exif_transpose copies if not
                im = ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not make the image unreadable
        pass
    mode = im.mode
    if mode == "RGB":
        return _rgb_in_bands(im)
    if mode in ("L", "RGBA") or mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        return _array_to_rgb(np.array(im), where, pil_mode=mode)
    if mode == "LA":
        return _array_to_rgb(np.array(im)[..., 0], where)
    if mode in ("PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info):
        return _array_to_rgb(np.array(im.convert("RGBA"))[..., :3], where)
    try:
        return np.array(im.convert("RGB"), dtype=np.uint8)
    except (ValueError, OSError) as e:
        raise ImageReadError(f"{where}: cannot convert image mode {mode!r} to RGB ({e})") from e


def _rgb_in_bands(im: Image.Image) -> np.ndarray:
    """``H x W x 3`` uint8 copy of an RGB image, taken in bands of rows: converting it whole
    goes through a temporary ``bytes`` copy, a third image-sized buffer for a large photo."""
    w, h = im.size
    band = max(1, _BAND_PIXELS // max(1, w))
    if h <= band:
        return np.array(im, dtype=np.uint8)
    out = np.empty((h, w, 3), dtype=np.uint8)
    for y in range(0, h, band):
        out[y : y + band] = np.asarray(im.crop((0, y, w, min(h, y + band))))
    return out


def _array_to_rgb(arr: np.ndarray, where: str, pil_mode: str | None = None) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[2] in (1, 3, 4):
        arr = arr[..., :3] if arr.shape[2] >= 3 else arr[..., 0]
    elif arr.ndim != 2:
        raise ImageReadError(
            f"{where}: expected an HxW, HxWx1, HxWx3 or HxWx4 array, got shape {arr.shape}"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageReadError(f"{where}: image is empty (shape {arr.shape})")
    if arr.dtype == np.uint8:
        out = arr
    elif arr.dtype.kind == "u" and arr.dtype.itemsize == 2:  # uint16 of either byte order
        out = (arr >> 8).astype(np.uint8)
    elif pil_mode == "I" and np.issubdtype(arr.dtype, np.integer):
        out = (np.clip(arr, 0, 65535) >> 8).astype(np.uint8)
    elif arr.dtype == np.bool_:
        out = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all() or arr.min() < 0.0 or arr.max() > 1.0:
            raise ImageReadError(
                f"{where}: float images must hold values in [0, 1], got range "
                f"[{np.nanmin(arr):g}, {np.nanmax(arr):g}]; pass uint8 or scale to [0, 1]"
            )
        out = np.rint(arr.astype(np.float64) * 255.0).astype(np.uint8)
    else:
        raise ImageReadError(
            f"{where}: unsupported dtype {arr.dtype}; expected uint8, uint16 or float in [0, 1]"
        )
    if out.ndim == 2:
        out = np.repeat(out[:, :, None], 3, axis=2)
    return np.array(out, dtype=np.uint8, order="C", copy=True)


def protocol_size(
    h0: int, w0: int, short_side: int = 336, max_long_side: int = 2048
) -> tuple[int, int]:
    """The benchmark resize target (SPEC 1.2), keeping the aspect ratio.

    ``s = min(max_long_side / max(h0, w0), short_side / min(h0, w0))``; returns
    ``(int(h0*s + 0.5), int(w0*s + 0.5))`` as ``(h, w)``, each at least 1.
    """
    if h0 <= 0 or w0 <= 0:
        raise ValueError(f"image size must be positive, got {h0}x{w0}")
    if short_side <= 0 or max_long_side <= 0:
        raise ValueError(
            f"short_side and max_long_side must be positive, got {short_side}, {max_long_side}"
        )
    s = min(max_long_side / max(h0, w0), short_side / min(h0, w0))
    return max(1, int(h0 * s + 0.5)), max(1, int(w0 * s + 0.5))


def resize_image(rgb: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize without antialiasing, as mmcv does (``cv2.INTER_LINEAR``).

    Args:
        rgb: HxWxC (or HxW) uint8 array.
        size_hw: target ``(h, w)``, both >= 1.

    Returns:
        h x w x C uint8 array; ``rgb`` itself (no copy) when the size is already ``(h, w)``.
    """
    h, w = int(size_hw[0]), int(size_hw[1])
    if h < 1 or w < 1:
        raise ValueError(f"target size must be at least 1x1, got {h}x{w}")
    if rgb.shape[:2] == (h, w):
        return rgb
    return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR)


def to_tensor(
    rgb: np.ndarray,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> torch.Tensor:
    """Normalise an image for the network: ``(rgb / 255 - mean) / std`` in float32.

    Args:
        rgb: HxWx3 uint8 array in [0, 255].
        mean, std: per-channel (R, G, B) statistics in [0, 1] units.

    Returns:
        1x3xHxW float32 CPU tensor.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 array, got shape {rgb.shape} {rgb.dtype}")
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).unsqueeze(0)
    x = x.to(torch.float32)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x / 255.0 - m) / s).contiguous()


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


def save_rgb(path: str | os.PathLike[str], rgb: np.ndarray, jpeg_quality: int = 95) -> Path:
    """Save an HxWx3 uint8 RGB image atomically; the format follows the extension
    (``encode_rgb``)."""
    try:
        data = encode_rgb(rgb, Path(path).suffix, jpeg_quality)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    return atomic_write_bytes(path, data)
