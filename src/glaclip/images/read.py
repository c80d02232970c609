"""Reading images to RGB uint8 (Pillow, imported when the first image is read).

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
import functools
import os
import stat
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from glaclip.images.pngcheck import incomplete_png_message, png_rows

if TYPE_CHECKING:
    from PIL import Image as PILImage


_COMMON_EXTENSIONS = (
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif",
    ".ppm", ".pgm", ".pbm", ".pnm", ".tga"
)  # fmt: skip
# read where this Pillow was built with their decoders (AVIF, JPEG 2000)
_OPTIONAL_EXTENSIONS = (".avif", ".jp2", ".j2k", ".jpf", ".jpx", ".j2c")


@functools.cache
def image_extensions() -> tuple[str, ...]:
    """Lower-case file extensions that :func:`read_image` is expected to handle (AVIF and JPEG
    2000 where this Pillow can decode them)."""
    from PIL import Image

    formats = Image.registered_extensions()  # also loads Pillow's plugins
    extra = [e for e in _OPTIONAL_EXTENSIONS if formats.get(e) in Image.OPEN]
    return _COMMON_EXTENSIONS + tuple(extra)


@contextlib.contextmanager
def quiet_pillow() -> Iterator[None]:
    """Pillow's own warnings about a file it still reads (a large image below the refused
    size, a corrupt EXIF block, which is ignored) are not passed on: glaclip reports what
    matters itself."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", message=r".*EXIF", category=UserWarning)
        yield


_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


class ImageReadError(ValueError):
    """An image could not be read or converted to HxWx3 uint8 RGB."""


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` has one of ``image_extensions()`` (case-insensitive); no I/O."""
    return Path(path).suffix.lower() in image_extensions()


def read_image(source: str | os.PathLike[str] | PILImage.Image | np.ndarray) -> np.ndarray:
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
    if is_pil_image(source):
        return _pil_to_rgb(source, "PIL image")
    if isinstance(source, (str, os.PathLike)):
        return _read_file(Path(source))
    raise TypeError(
        f"read_image expects a path, a PIL image or a numpy array, got {type(source).__name__}"
    )


def is_rgb(obj: Any) -> bool:
    """Whether ``obj`` is already what ``read_image`` returns: an ``H x W x 3`` uint8 array
    with both sides above 0."""
    return (
        isinstance(obj, np.ndarray)
        and obj.ndim == 3
        and obj.shape[2] == 3
        and obj.dtype == np.uint8
        and min(obj.shape[:2]) > 0
    )


def is_pil_image(obj: Any) -> bool:
    """Whether ``obj`` is a ``PIL.Image.Image`` (without importing Pillow: an object can be one
    only where Pillow was imported)."""
    module = sys.modules.get("PIL.Image")
    return module is not None and isinstance(obj, module.Image)


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
    from PIL import Image, UnidentifiedImageError

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


def oriented_size(im: PILImage.Image) -> tuple[int, int]:
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


def _pil_to_rgb(im: PILImage.Image, where: str) -> np.ndarray:
    from PIL import ImageOps

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


def _rgb_in_bands(im: PILImage.Image) -> np.ndarray:
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
