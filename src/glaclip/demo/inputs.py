"""The demo's inputs, without Gradio: the vocabulary menu, the class box (with the limits a
public page needs), the uploaded image, the names of its output files.

May import: ``config``, ``images``, ``text``, ``data``.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from glaclip.data.presets import PRESETS, preset_classes
from glaclip.images.read import quiet_pillow
from glaclip.text.vocabulary import (
    MAX_NAME_CHARS,
    QueryKeys,
    Vocabulary,
    expand_queries,
    parse_class_lines,
    parse_classes_arg,
    shown,
)

DATASET_NAMES: dict[str, str] = {
    "voc21": "PASCAL VOC, with background",
    "voc20": "PASCAL VOC",
    "context60": "PASCAL Context, with background",
    "context59": "PASCAL Context",
    "coco_object": "COCO-Object",
    "coco_stuff164k": "COCO-Stuff",
    "cityscapes": "Cityscapes",
    "ade20k": "ADE20K",
}
DEFAULT_MAX_MEGAPIXELS = 16.0
# What one request may ask (``glaclip demo --max-classes``, ``--max-name-length``): every
# class name (each synonym) is embedded by the text tower the first time, about 0.65 s each
# on a 2-core CPU, and has its own score map while the request runs; and the text tower
# reads 77 tokens of a prompt, so a longer name is cut off anyway.
DEFAULT_MAX_CLASSES = 200  # class names per request, synonyms counted (COCO-Stuff has 171)
DEFAULT_MAX_NAME_LENGTH = 100  # characters per class name
MAX_STEM_CHARS = 100  # characters of an upload's name kept in its output file names
_SHOWN_CHARS = 60  # characters of an upload's name shown in a message
_READ_CHUNK = 1 << 20  # bytes read at a time when hashing an upload


class DemoInputError(ValueError):
    """A request the page cannot run (no image, no classes, not an image, too large)."""


def preset_choices() -> list[tuple[str, str]]:
    """``(label, preset name)`` pairs for the vocabulary menu: ``("Cityscapes (19)", ...)``."""
    return [
        (f"{DATASET_NAMES.get(name, name)} ({len(preset_classes(name))})", name) for name in PRESETS
    ]


def preset_text(name: str | None) -> str:
    """A preset's vocabulary in the class box's syntax (commas between classes)."""
    return ", ".join(preset_classes(name)) if name else ""


def benchmark_names() -> frozenset[str]:
    """Every query name of the benchmark vocabularies (the page's menu)."""
    lines = [line for name in PRESETS for line in preset_classes(name)]
    return frozenset(expand_queries(parse_class_lines(lines))[0])


def parse_page_classes(
    text: str | None,
    keys: QueryKeys | None = None,
    max_classes: int = DEFAULT_MAX_CLASSES,
    max_name_length: int = DEFAULT_MAX_NAME_LENGTH,
) -> Vocabulary:
    """The class box's text as a vocabulary, in the syntax of ``glaclip segment --classes``,
    checked once: ``keys`` compares the names as the text encoder sees them
    (``check_vocabulary``).

    Before any name is tokenised: at most ``max_classes`` class names (synonyms counted) of at
    most ``max_name_length`` characters each (``check_class_limits``).

    Raises:
        DemoInputError: no text, text that is no string (through the API), too many or too
            long names, or names ``check_vocabulary`` refuses.
    """
    if text is not None and not isinstance(text, str):
        raise DemoInputError(
            f"Classes: expected the class names as one text, got a {type(text).__name__}: "
            "send e.g. 'sky, tree, person; man'."
        )
    if text is None or not text.strip():
        raise DemoInputError(
            "No classes: type the classes to find, separated by commas, with ';' between "
            "synonyms of one class (e.g. 'sky, tree, person; man'), or pick a vocabulary."
        )
    check_class_limits(text, max_classes, max_name_length)
    try:
        lines = parse_classes_arg(text, source="the class list")
        return Vocabulary.of(lines, source="the class list", keys=keys)
    except ValueError as err:
        raise DemoInputError(f"Classes: {err}") from err


def check_class_limits(text: str, max_classes: int, max_name_length: int) -> None:
    """Refuse a class text with more than ``max_classes`` names (each synonym counts) or a
    name of more than ``max_name_length`` characters; the whole text is measured first, so
    that a huge text is refused without being split.

    Raises:
        DemoInputError: says which limit, why it is there, and how the operator sets it.
    """
    why_count = (
        "each new name takes the text encoder about 0.65 s (on a 2-core CPU) and every name "
        "its own score map while the request runs"
    )
    why_length = "the text encoder reads only 77 tokens of a prompt, so more is cut off"
    most = max_classes * (max_name_length + 3)  # every name at the limit, with "; " between
    if len(text) > most:
        raise DemoInputError(
            f"Classes: the class text is {len(text):,} characters long; this demo takes at "
            f"most {max_classes} class names of up to {max_name_length} characters each "
            f"({why_count}; {why_length}). Shorten the list, or run glaclip segment."
        )
    names = [n.strip() for part in text.split(",") for n in part.split(";")]
    if len(names) > max_classes:
        raise DemoInputError(
            f"Classes: {len(names)} class names (synonyms count: each is embedded); this "
            f"demo takes at most {max_classes} per request, because {why_count} (set by "
            "glaclip demo --max-classes N). Remove some, or run glaclip segment."
        )
    for name in names:
        if len(name) > max_name_length:
            raise DemoInputError(
                f"Classes: the class name {shown(name)} is {len(name):,} characters long; "
                f"this demo takes names of up to {max_name_length} characters, because "
                f"{why_length} (set by glaclip demo --max-name-length N). Name the class in "
                "a few words."
            )


def check_demo_limits(max_megapixels: float, max_classes: int, max_name_length: int) -> None:
    """Raise ValueError unless the demo's limits are usable: a finite number of megapixels
    above 0, 1 to 65,535 classes, 1 to ``MAX_NAME_CHARS`` characters per name."""
    if not math.isfinite(max_megapixels) or max_megapixels <= 0:
        raise ValueError(f"max_megapixels must be a finite number above 0, got {max_megapixels}")
    if not 1 <= max_classes <= 65535:
        raise ValueError(
            f"max_classes must be from 1 to 65535 (the default is 200), got {max_classes}"
        )
    if not 1 <= max_name_length <= MAX_NAME_CHARS:
        raise ValueError(
            f"max_name_length must be from 1 to {MAX_NAME_CHARS} characters (the default is "
            f"100), got {max_name_length}"
        )


def check_image(path: str | os.PathLike, name: str, max_pixels: int) -> tuple[int, int]:
    """``(width, height)`` of an image file, read from its header only.

    Raises:
        DemoInputError: the file is not an image Pillow can read, or has more than
            ``max_pixels`` pixels.
    """
    try:
        with quiet_pillow(), Image.open(path) as im:
            width, height = im.size
    except Image.DecompressionBombError:
        raise DemoInputError(too_large_message(name, None, max_pixels)) from None
    except (UnidentifiedImageError, OSError) as err:
        raise DemoInputError(not_an_image_message(name)) from err
    if width * height > max_pixels:
        raise DemoInputError(too_large_message(name, (width, height), max_pixels))
    return width, height


def shown_name(name: str) -> str:
    """An upload's name for a message: its first 60 characters when it is longer."""
    return (
        name if len(name) <= _SHOWN_CHARS else f"{name[:_SHOWN_CHARS]}... ({len(name)} characters)"
    )


def not_an_image_message(name: str) -> str:
    """The message for an upload that is not a readable image."""
    return (
        f"{shown_name(name)} is not an image that can be read: upload a photo "
        "(JPEG, PNG, WebP, BMP, TIFF or GIF)."
    )


def too_large_message(name: str, size: tuple[int, int] | None, max_pixels: int) -> str:
    """The message for an upload above ``max_pixels`` (``size``: its ``(width, height)``,
    None when Pillow refused to open it at all)."""
    what = f"{size[0]} x {size[1]} pixels" if size else "too large to open safely"
    return (
        f"{shown_name(name)} is {what}; this demo accepts images of up to "
        f"{max_pixels / 1e6:g} megapixels (glaclip demo --max-megapixels N). Downscale it, or "
        "segment it with glaclip segment."
    )


def safe_stem(name: str) -> str:
    """A file-name stem for the outputs: letters, digits, spaces, ``.``, ``_`` and ``-`` only,
    at most ``MAX_STEM_CHARS`` characters (an upload may be named up to the client's taste)."""
    stem = re.sub(r"[^\w .-]+", "_", Path(name).stem)[:MAX_STEM_CHARS]
    stem = stem.encode("utf-8")[: 2 * MAX_STEM_CHARS].decode("utf-8", "ignore")  # name bytes
    return stem.strip(" ._") or "image"


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, as hex: the same photo uploaded again has the same digest."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_READ_CHUNK):
            h.update(chunk)
    return h.hexdigest()
