"""The demo's requests, without Gradio: check the inputs, segment, write the files.

A request segments the uploaded image with ``Segmenter.segment`` and writes its files with
``glaclip.io.batch.write_outputs``, the writer of ``glaclip segment``: the label PNG and the JSON
offered for download are the files the command line writes for the same image and settings.
Each request takes its method and threshold through ``Segmenter.with_settings``, which shares
the models and the text-embedding cache, so classes already seen are not embedded again; the
image's class-independent features (``Segmenter.encode_image``) are kept in a
``FeatureStore``, so that new classes or another threshold on the same photo run only the text
and the final product.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from glaclip.atomic import WriteError
from glaclip.config import MAX_INDEXED_CLASSES, Settings, check_vocabulary_size, unlabelled_value
from glaclip.demo.inputs import (
    DEFAULT_MAX_CLASSES,
    DEFAULT_MAX_MEGAPIXELS,
    DEFAULT_MAX_NAME_LENGTH,
    DemoInputError,
    benchmark_names,
    check_image,
    file_digest,
    not_an_image_message,
    parse_page_classes,
    safe_stem,
)
from glaclip.demo.store import FeatureStore, feature_key
from glaclip.demo.turns import Stopper
from glaclip.images.read import ImageReadError, read_image
from glaclip.io.batch import WrittenOutputs, write_outputs
from glaclip.model.bases import method_choices
from glaclip.model.results import Segmentation
from glaclip.model.segmenter import Segmenter
from glaclip.registry import needs_vfm
from glaclip.text.vocabulary import (
    Vocabulary,
    shown,
)

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
EXAMPLES: list[tuple[str, str]] = [  # bundled photographs (see examples/LICENSE.md)
    ("chelsea.jpg", "cat, floor; carpet, wall, wooden table; furniture"),
    ("coffee.jpg", "coffee cup; mug, saucer; plate, spoon, coffee, table; wooden table"),
    ("astronaut.jpg", "person; woman; astronaut, flag, space shuttle; rocket, wall"),
]
TEXT_CHUNK = 8  # class names embedded per progress step


class DemoServerError(RuntimeError):
    """A request that failed on the server's side (its files could not be written); the
    message names no server path and is meant for the page."""


# ------------------------------------------------------------------------------ methods
def methods() -> dict[str, dict[str, Any]]:
    """The page's method choices, label -> the flat settings it sets (each names every setting
    it controls): GLA and the per-window method of every registered base
    (``glaclip.model.bases.method_choices``), read from the registry when asked."""
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


# ------------------------------------------------------------------------------ a request
def keep_user_names_out(segmenter: Segmenter) -> None:
    """Let the segmenter's persistent text cache receive only the names of the benchmark
    vocabularies: what users type is embedded in memory (``TextEncoder.max_names``, the most
    recently used) and never written to the disk. Applies to every ``with_settings`` copy,
    which share the text encoder."""
    names = benchmark_names()
    segmenter.text.persist = names.__contains__


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
    segmenter: Segmenter, vocabulary: Vocabulary, progress: Callable[[float, str], None]
) -> None:
    """Embed the query names of a vocabulary into the segmenter's text cache, in steps.

    Names already in the cache cost nothing; ``progress(fraction, message)`` reports each step
    (and may raise to stop, ``turns.RequestCancelled``).
    """
    unique = list(dict.fromkeys(vocabulary.names))
    for start in range(0, len(unique), TEXT_CHUNK):
        progress(0.3 * start / len(unique), f"Embedding class names ({start}/{len(unique)})")
        segmenter.text.encode(unique[start : start + TEXT_CHUNK])


def request_segmenter(
    segmenter: Segmenter, vocabulary: Vocabulary, method: str, threshold: Any
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
    classes = len(vocabulary.classes)
    if classes > MAX_INDEXED_CLASSES and segmenter.settings.post.background_index == 255:
        extra["background_index"] = unlabelled_value(classes)  # 16-bit label PNG
    try:
        seg = segmenter.with_settings(**method_settings(method), prob_threshold=threshold, **extra)
        check_vocabulary_size(classes, seg.settings.post.background_index)
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
    vocabulary: Vocabulary,
    store: FeatureStore,
    report: Callable[[float, str], None],
    stopper: Stopper | None = None,
) -> tuple[Segmentation, bool]:
    """Segment ``rgb`` (digest ``image``) into a vocabulary from the features ``store`` keeps of
    it, or from new ones, then kept. Returns ``(result, whether the features were reused)``;
    the result's timings are those of every stage that ran. ``stopper`` is checked at every
    step of the encoding (each window batch and block of the attention)."""
    check = (stopper or Stopper()).check
    key = feature_key(seg.settings)
    features = store.get(image, key)
    if features is not None:
        report(0.3, "Segmenting from the kept image features: the text and the labels")
        return seg.segment(features, vocabulary), True
    report(0.3, "Segmenting: windows, attention, labels")
    features = seg.encode_image(rgb, progress=lambda _stage, _done, _total: check())
    store.put(image, key, features)
    result = seg.segment(features, vocabulary)
    timings = dict(features.timings)
    for stage, seconds in result.timings.items():
        timings[stage] = timings.get(stage, 0.0) + seconds
    return replace(result, timings=timings), False


def _checked_request(
    segmenter: Segmenter,
    image_path: str | os.PathLike | None,
    name: str | None,
    class_text: str | None,
    method: str,
    threshold: float,
    max_classes: int,
    max_name_length: int,
) -> tuple[str, Vocabulary, Segmenter, float]:
    """What a request asks, checked before any work: the upload's name, the vocabulary, and
    the request's Segmenter and threshold (``request_segmenter``).

    Raises:
        DemoInputError: no image, no classes, too many or too long class names, bad settings.
    """
    if image_path is None:
        raise DemoInputError(
            "No image: upload or drop a photo (or pick an example), then press Segment."
        )
    name = name or Path(image_path).name
    vocabulary = parse_page_classes(
        class_text, segmenter.text.query_keys, max_classes, max_name_length
    )
    seg, threshold = request_segmenter(segmenter, vocabulary, method, threshold)
    return name, vocabulary, seg, threshold


def _read_request_image(
    image_path: str | os.PathLike, name: str, max_pixels: int, report: Callable[[float, str], None]
) -> tuple[np.ndarray, str]:
    """The request's image, read (``read_upload``), and the digest of its file."""
    report(0.0, "Reading the image")
    rgb = read_upload(image_path, name, max_pixels)
    return rgb, file_digest(image_path)


def _embed_counted(
    seg: Segmenter, vocabulary: Vocabulary, report: Callable[[float, str], None]
) -> tuple[int, float]:
    """``embed_classes``, and how many names the network embedded (the others came from the
    cache) in how many seconds."""
    before, t0 = seg.text.encoded_count, time.perf_counter()
    embed_classes(seg, vocabulary, report)
    return seg.text.encoded_count - before, time.perf_counter() - t0


def _reporter(
    stopper: Stopper, progress: Callable[[float, str], None] | None
) -> Callable[[float, str], None]:
    """``progress`` that first stops a cancelled request (``turns.RequestCancelled``)."""
    tell = progress or (lambda _fraction, _message: None)

    def report(fraction: float, message: str) -> None:
        stopper.check()
        tell(fraction, message)

    return report


def _write_request_files(
    result: Segmentation,
    rgb: np.ndarray,
    out_dir: Path,
    name: str,
    settings: Settings,
    models: dict[str, Any],
) -> WrittenOutputs:
    """The files ``glaclip segment`` writes for this request.

    Raises:
        DemoServerError: they could not be written (the message names no path).
    """
    try:
        return write_outputs(result, rgb, out_dir, safe_stem(name), Path(name), settings, models)
    except WriteError as err:  # its message names the server's folder: not for the page
        cause = os.strerror(err.errno) if err.errno else type(err).__name__
        raise DemoServerError(
            f"The result files could not be written on the server ({cause}): try again "
            "later, or tell the operator of this demo."
        ) from err


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
        models: the backbones' names, recorded in the JSON.
        class_text: classes in the ``--classes`` syntax (``"sky, person; man"``).
        method: a key of ``methods()``.
        out_dir: existing folder for ``<stem>.png``, ``<stem>_overlay.jpg`` and ``<stem>.json``.
        name: the file's name as uploaded (default: the name of ``image_path``).
        store: the image features kept by earlier requests (the page's); None keeps none.
        stop: set when the request is cancelled: it stops at its next step.

    Raises:
        DemoInputError: no image, no classes, not an image, too many pixels, too many or too
            long class names (``max_classes``, ``max_name_length``), bad settings.
        DemoServerError: the files could not be written (the message names no path).
        RequestCancelled: ``stop`` was set.
    """
    stopper = Stopper(stop)
    report = _reporter(stopper, progress)
    store = store if store is not None else FeatureStore()
    start = time.perf_counter()
    name, vocabulary, seg, threshold = _checked_request(
        segmenter, image_path, name, class_text, method, threshold, max_classes, max_name_length
    )
    rgb, image = _read_request_image(image_path, name, max_pixels, report)
    embedded, embed_seconds = _embed_counted(seg, vocabulary, report)
    result, reused = segment_upload(seg, rgb, image, vocabulary, store, report, stopper)
    report(0.9, "Writing the label PNG, the overlay and the JSON")
    files = _write_request_files(result, rgb, out_dir, name, seg.settings, models)
    seconds = time.perf_counter() - start
    return DemoRun(
        result, rgb, files, name, method, threshold, seconds, embedded, embed_seconds,
        features_reused=reused, features_kept=store.nbytes,
    )  # fmt: skip
