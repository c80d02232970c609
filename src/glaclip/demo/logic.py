"""The demo's requests, without Gradio: check the inputs, segment, write the files.

A request segments the uploaded image with ``Segmenter.segment`` and writes its files with
``glaclip.batch.write_outputs``, the writer of ``glaclip segment``: the label PNG and the JSON
offered for download are the files the command line writes for the same image and settings.
Each request takes its method and threshold through ``Segmenter.with_settings``, which shares
the models and the text-embedding cache, so classes already seen are not embedded again; the
image's class-independent features (``Segmenter.encode_image``) are kept in a
``FeatureStore``, so that new classes or another threshold on the same photo run only the text
and the final product.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from glaclip.bases import method_choices, needs_vfm
from glaclip.batch import WrittenOutputs, write_outputs
from glaclip.config import MAX_INDEXED_CLASSES, Settings, check_vocabulary_size, unlabelled_value
from glaclip.data.presets import PRESETS, preset_classes
from glaclip.demo.turns import Stopper
from glaclip.imageio import ImageReadError, WriteError, quiet_pillow, read_image
from glaclip.results import ImageFeatures, Segmentation
from glaclip.segmenter import Segmenter
from glaclip.text import (
    QueryKeys,
    check_vocabulary,
    expand_queries,
    parse_class_lines,
    parse_classes_arg,
)
from glaclip.vocabulary import MAX_NAME_CHARS, shown

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
EXAMPLES: list[tuple[str, str]] = [  # bundled photographs (see examples/LICENSE.md)
    ("chelsea.jpg", "cat, floor; carpet, wall, wooden table; furniture"),
    ("coffee.jpg", "coffee cup; mug, saucer; plate, spoon, coffee, table; wooden table"),
    ("astronaut.jpg", "person; woman; astronaut, flag, space shuttle; rocket, wall"),
]
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
TEXT_CHUNK = 8  # class names embedded per progress step
_READ_CHUNK = 1 << 20  # bytes read at a time when hashing an upload


class DemoInputError(ValueError):
    """A request the page cannot run (no image, no classes, not an image, too large)."""


class DemoServerError(RuntimeError):
    """A request that failed on the server's side (its files could not be written); the
    message names no server path and is meant for the page."""


# ------------------------------------------------------------------------------ methods
def methods() -> dict[str, dict[str, Any]]:
    """The page's method choices, label -> the flat settings it sets (each names every setting
    it controls): GLA and the per-window method of every registered base
    (``glaclip.bases.method_choices``), read from the registry when asked."""
    return method_choices()


def method_settings(choice: str) -> dict[str, Any]:
    """The flat settings of a method choice of the page (``"GLA-CLIP"``, ...).

    Raises:
        DemoInputError: ``choice`` is not one of ``methods()``.
    """
    choices = methods()
    try:
        return dict(choices[choice])
    except (KeyError, TypeError):  # TypeError: not a name at all (a list through the API)
        raise DemoInputError(
            f"unknown method {shown(str(choice))}: choose one of {', '.join(choices)}"
        ) from None


def available_methods(segmenter: Segmenter) -> list[str]:
    """The method choices the loaded models can run: without a VFM (``--base clearclip``),
    only those of bases that need none."""
    has_vfm = segmenter.vfm_tower is not None
    return [c for c, s in methods().items() if has_vfm or not needs_vfm(s["base"])]


def default_method(segmenter: Segmenter) -> str:
    """The method choice whose settings the segmenter already has (the first available one
    otherwise)."""
    current = segmenter.settings.to_dict()
    choices = available_methods(segmenter)
    settings = methods()
    for choice in choices:
        if all(current.get(k) == v for k, v in settings[choice].items()):
            return choice
    return choices[0]


# ------------------------------------------------------------------------------ inputs
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


def keep_user_names_out(segmenter: Segmenter) -> None:
    """Let the segmenter's persistent text cache receive only the names of the benchmark
    vocabularies: what users type is embedded in memory (``TextEncoder.max_names``, the most
    recently used) and never written to the disk. Applies to every ``with_settings`` copy,
    which share the text encoder."""
    names = benchmark_names()
    segmenter.text.persist = names.__contains__


def parse_page_classes(
    text: str | None,
    keys: QueryKeys | None = None,
    max_classes: int = DEFAULT_MAX_CLASSES,
    max_name_length: int = DEFAULT_MAX_NAME_LENGTH,
) -> list[str]:
    """The class box's text to class lines, in the syntax of ``glaclip segment --classes``;
    ``keys`` compares the names as the text encoder sees them (``check_vocabulary``).

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
        check_vocabulary(lines, source="the class list", keys=keys)
    except ValueError as err:
        raise DemoInputError(f"Classes: {err}") from err
    return lines


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


# ------------------------------------------------------------------------------ kept features
def feature_key(settings: Settings) -> Hashable:
    """What makes an image's features (``Segmenter.encode_image``): every setting but the
    post-processing (``Settings.feature_parts``). Requests that differ only in
    post-processing (the threshold) share them."""
    return tuple(settings.feature_parts().items())


class FeatureStore:
    """The class-independent features of the last image a page segmented, one entry per
    ``feature_key`` (so at most one per method of the page): a new vocabulary or threshold on
    the same photo runs only the text and the final product. A new image drops the others.

    Holds ``nbytes`` of memory (``ImageFeatures.nbytes`` summed): 11.4 MB per method with a
    VFM for a 500 x 375 photo (network input 448 x 336), 4.2 MB without. One store serves one
    loaded Segmenter (features of other weights would be refused by it:
    ``ImageFeatures.weights``).
    """

    def __init__(self) -> None:
        self._image: str | None = None
        self._features: dict[Hashable, ImageFeatures] = {}
        self._lock = threading.Lock()

    def get(self, image: str, key: Hashable) -> ImageFeatures | None:
        """The features kept for ``key`` of the image whose digest is ``image``, or None."""
        with self._lock:
            return self._features.get(key) if image == self._image else None

    def put(self, image: str, key: Hashable, features: ImageFeatures) -> None:
        """Keep ``features`` for ``key`` of ``image``; another image's are dropped."""
        with self._lock:
            if image != self._image:
                self._image, self._features = image, {}
            self._features[key] = features

    @property
    def nbytes(self) -> int:
        """Memory held by the kept features, in bytes."""
        with self._lock:
            return sum(f.nbytes for f in self._features.values())


# ------------------------------------------------------------------------------ a request
@dataclass
class DemoRun:
    """One finished request: the result, its image and the files written for it."""

    result: Segmentation
    rgb: np.ndarray
    files: WrittenOutputs
    name: str
    method: str
    threshold: float
    seconds: float  # the whole request
    embedded: int  # class names embedded by the network (the others came from the cache)
    embed_seconds: float
    features_reused: bool = False  # the image's features came from the FeatureStore
    features_kept: int = 0  # bytes the FeatureStore holds after the request


def embed_classes(
    segmenter: Segmenter, lines: Sequence[str], progress: Callable[[float, str], None]
) -> None:
    """Embed the query names of ``lines`` into the segmenter's text cache, in steps.

    Names already in the cache cost nothing; ``progress(fraction, message)`` reports each step
    (and may raise to stop, ``turns.RequestCancelled``).
    """
    names, _ = expand_queries(parse_class_lines(lines, source="class list"))
    unique = list(dict.fromkeys(names))
    for start in range(0, len(unique), TEXT_CHUNK):
        progress(0.3 * start / len(unique), f"Embedding class names ({start}/{len(unique)})")
        segmenter.text.encode(unique[start : start + TEXT_CHUNK])


def request_segmenter(
    segmenter: Segmenter, lines: Sequence[str], method: str, threshold: Any
) -> tuple[Segmenter, float]:
    """The Segmenter of a request (``with_settings``: the method's settings, the threshold,
    and a 16-bit label PNG's unlabelled value for more than 255 classes) and the threshold as
    a number.

    Raises:
        DemoInputError: a threshold that is no number in [0, 1], an unknown method, settings
            the Segmenter refuses.
    """
    try:
        threshold = float(threshold)
    except (TypeError, ValueError):
        threshold = float("nan")
    if not 0.0 <= threshold <= 1.0:
        raise DemoInputError(f"probability threshold must be a number in [0, 1], got {threshold}")
    extra: dict[str, Any] = {}
    if len(lines) > MAX_INDEXED_CLASSES and segmenter.settings.post.background_index == 255:
        extra["background_index"] = unlabelled_value(len(lines))  # 16-bit label PNG
    try:
        seg = segmenter.with_settings(**method_settings(method), prob_threshold=threshold, **extra)
        check_vocabulary_size(len(lines), seg.settings.post.background_index)
    except ValueError as err:
        raise DemoInputError(str(err)) from err
    return seg, threshold


def read_upload(path: str | os.PathLike, name: str, max_pixels: int) -> np.ndarray:
    """An uploaded image as ``H x W x 3`` uint8 RGB (``read_image``, as ``glaclip segment``).

    Raises:
        DemoInputError: not an image, or more than ``max_pixels`` pixels.
    """
    check_image(path, name, max_pixels)
    try:
        return read_image(path)
    except ImageReadError as err:
        raise DemoInputError(not_an_image_message(name)) from err


def segment_upload(
    seg: Segmenter,
    rgb: np.ndarray,
    image: str,
    lines: Sequence[str],
    store: FeatureStore,
    report: Callable[[float, str], None],
    stopper: Stopper | None = None,
) -> tuple[Segmentation, bool]:
    """Segment ``rgb`` (digest ``image``) into ``lines`` from the features ``store`` keeps of
    it, or from new ones, then kept. Returns ``(result, whether the features were reused)``;
    the result's timings are those of every stage that ran. ``stopper`` is checked at every
    step of the encoding (each window batch and block of the attention)."""
    check = (stopper or Stopper()).check
    key = feature_key(seg.settings)
    features = store.get(image, key)
    if features is not None:
        report(0.3, "Segmenting from the kept image features: the text and the labels")
        return seg.segment(features, lines), True
    report(0.3, "Segmenting: windows, attention, labels")
    features = seg.encode_image(rgb, progress=lambda _stage, _done, _total: check())
    store.put(image, key, features)
    result = seg.segment(features, lines)
    timings = dict(features.timings)
    for stage, seconds in result.timings.items():
        timings[stage] = timings.get(stage, 0.0) + seconds
    return replace(result, timings=timings), False


def run_request(
    segmenter: Segmenter,
    models: dict[str, Any],
    image_path: str | os.PathLike | None,
    class_text: str | None,
    method: str,
    threshold: float,
    out_dir: Path,
    max_pixels: int = int(DEFAULT_MAX_MEGAPIXELS * 1e6),
    name: str | None = None,
    progress: Callable[[float, str], None] | None = None,
    store: FeatureStore | None = None,
    max_classes: int = DEFAULT_MAX_CLASSES,
    max_name_length: int = DEFAULT_MAX_NAME_LENGTH,
    stop: threading.Event | None = None,
) -> DemoRun:
    """Segment one uploaded image and write its files as ``glaclip segment`` does.

    Args:
        segmenter: the loaded Segmenter (its settings are the defaults of the page).
        models: the backbones' names, recorded in the JSON.
        image_path: the uploaded file.
        class_text: classes in the ``--classes`` syntax (``"sky, person; man"``).
        method: a key of ``methods()``.
        threshold: probability threshold in [0, 1].
        out_dir: existing folder that receives ``<stem>.png``, ``<stem>_overlay.jpg`` and
            ``<stem>.json``.
        max_pixels: larger images are refused.
        name: the file's name as uploaded (default: the name of ``image_path``).
        progress: ``progress(fraction, message)`` callback.
        store: the image features kept by earlier requests (the page's); None keeps none.
        max_classes, max_name_length: larger class lists, longer names are refused before
            any work (``check_class_limits``).
        stop: set when the request is cancelled: it stops at its next step
            (``turns.RequestCancelled``).

    Raises:
        DemoInputError: no image, no classes, not an image, too many pixels, too many or too
            long class names, bad settings.
        DemoServerError: the files could not be written (the message names no path).
        RequestCancelled: ``stop`` was set.
    """
    stopper = Stopper(stop)
    tell = progress or (lambda _fraction, _message: None)

    def report(fraction: float, message: str) -> None:
        stopper.check()
        tell(fraction, message)

    store = store if store is not None else FeatureStore()
    start = time.perf_counter()
    if image_path is None:
        raise DemoInputError(
            "No image: upload or drop a photo (or pick an example), then press Segment."
        )
    name = name or Path(image_path).name
    lines = parse_page_classes(class_text, segmenter.text.query_keys, max_classes, max_name_length)
    seg, threshold = request_segmenter(segmenter, lines, method, threshold)
    report(0.0, "Reading the image")
    rgb = read_upload(image_path, name, max_pixels)
    image = file_digest(image_path)
    before, t0 = seg.text.encoded_count, time.perf_counter()
    embed_classes(seg, lines, report)
    embedded, embed_seconds = seg.text.encoded_count - before, time.perf_counter() - t0
    result, reused = segment_upload(seg, rgb, image, lines, store, report, stopper)
    report(0.9, "Writing the label PNG, the overlay and the JSON")
    try:
        stem = safe_stem(name)
        files = write_outputs(result, rgb, out_dir, stem, Path(name), seg.settings, models)
    except WriteError as err:  # its message names the server's folder: not for the page
        cause = os.strerror(err.errno) if err.errno else type(err).__name__
        raise DemoServerError(
            f"The result files could not be written on the server ({cause}): try again "
            "later, or tell the operator of this demo."
        ) from err
    seconds = time.perf_counter() - start
    return DemoRun(
        result, rgb, files, name, method, threshold, seconds, embedded, embed_seconds,
        features_reused=reused, features_kept=store.nbytes,
    )  # fmt: skip
