"""The browser demo (``glaclip demo``): a Gradio page over one loaded Segmenter.

A request segments the uploaded image with ``Segmenter.segment`` and writes its files with
``glaclip.batch.write_outputs``, the writer of ``glaclip segment``: the label PNG and the JSON
offered for download are the files the command line writes for the same image and settings.
The models load once; each request takes its method and threshold through
``Segmenter.with_settings``, which shares the models and the text-embedding cache, so classes
already seen are not embedded again. Needs the ``demo`` extra: ``pip install "glaclip[demo]"``.
"""

from __future__ import annotations

import html
import math
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no network calls from the page

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, UnidentifiedImageError  # noqa: E402

from glaclip.bases import needs_vfm  # noqa: E402
from glaclip.batch import WrittenOutputs, write_outputs  # noqa: E402
from glaclip.config import (  # noqa: E402
    MAX_INDEXED_CLASSES,
    check_vocabulary_size,
    unlabelled_value,
)
from glaclip.data.presets import PRESETS, preset_classes  # noqa: E402
from glaclip.imageio import ImageReadError, quiet_pillow, read_image  # noqa: E402
from glaclip.segmenter import Segmentation, Segmenter  # noqa: E402
from glaclip.text import (  # noqa: E402
    QueryKeys,
    check_vocabulary,
    expand_queries,
    parse_class_lines,
    parse_classes_arg,
)
from glaclip.viz import class_palette  # noqa: E402

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
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
# page choice -> the settings it sets (each names every setting it controls)
METHODS: dict[str, dict[str, Any]] = {
    "GLA-CLIP": {"base": "proxyclip", "kv_extension": True},
    "ProxyCLIP per window": {"base": "proxyclip", "kv_extension": False},
    "GLA-CLIP on ClearCLIP (no VFM)": {"base": "clearclip", "kv_extension": True},
    "ClearCLIP per window (no VFM)": {"base": "clearclip", "kv_extension": False},
}
DEFAULT_MAX_MEGAPIXELS = 16.0
ANNOTATION_SIDE = 1024  # long side of the annotated view (display only; downloads are full size)
KEEP_REQUESTS = 32  # request folders kept on disk (older ones are deleted)
TEXT_CHUNK = 8  # class names embedded per progress step


class DemoInputError(ValueError):
    """A request the page cannot run (no image, no classes, not an image, too large)."""


def method_settings(choice: str) -> dict[str, Any]:
    """The flat settings of a method choice of the page (``"GLA-CLIP"``, ...).

    Raises:
        DemoInputError: ``choice`` is not one of ``METHODS``.
    """
    try:
        return dict(METHODS[choice])
    except KeyError:
        raise DemoInputError(
            f"unknown method {choice!r}: choose one of {', '.join(METHODS)}"
        ) from None


def available_methods(segmenter: Segmenter) -> list[str]:
    """The method choices the loaded models can run: without a VFM (``--base clearclip``),
    only the ClearCLIP ones."""
    has_vfm = segmenter.vfm_tower is not None
    return [c for c, s in METHODS.items() if has_vfm or not needs_vfm(s["base"])]


def default_method(segmenter: Segmenter) -> str:
    """The method choice whose settings the segmenter already has (the first available one
    otherwise)."""
    current = segmenter.settings.to_dict()
    choices = available_methods(segmenter)
    for choice in choices:
        if all(current.get(k) == v for k, v in METHODS[choice].items()):
            return choice
    return choices[0]


def preset_choices() -> list[tuple[str, str]]:
    """``(label, preset name)`` pairs for the vocabulary menu: ``("Cityscapes (19)", ...)``."""
    return [
        (f"{DATASET_NAMES.get(name, name)} ({len(preset_classes(name))})", name) for name in PRESETS
    ]


def preset_text(name: str | None) -> str:
    """A preset's vocabulary in the class box's syntax (commas between classes)."""
    return ", ".join(preset_classes(name)) if name else ""


def parse_page_classes(text: str | None, keys: QueryKeys | None = None) -> list[str]:
    """The class box's text to class lines, in the syntax of ``glaclip segment --classes``;
    ``keys`` compares the names as the text encoder sees them (``check_vocabulary``)."""
    if text is None or not text.strip():
        raise DemoInputError(
            "No classes: type the classes to find, separated by commas, with ';' between "
            "synonyms of one class (e.g. 'sky, tree, person; man'), or pick a vocabulary."
        )
    try:
        lines = parse_classes_arg(text, source="the class list")
        check_vocabulary(lines, source="the class list", keys=keys)
    except ValueError as err:
        raise DemoInputError(f"Classes: {err}") from err
    return lines


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


def not_an_image_message(name: str) -> str:
    return (
        f"{name} is not an image that can be read: upload a photo "
        "(JPEG, PNG, WebP, BMP, TIFF or GIF)."
    )


def too_large_message(name: str, size: tuple[int, int] | None, max_pixels: int) -> str:
    what = f"{size[0]} x {size[1]} pixels" if size else "too large to open safely"
    return (
        f"{name} is {what}; this demo accepts images of up to {max_pixels / 1e6:g} megapixels "
        "(glaclip demo --max-megapixels N). Downscale it, or segment it with glaclip segment."
    )


def safe_stem(name: str) -> str:
    """A file-name stem for the outputs: letters, digits, spaces, ``.``, ``_`` and ``-`` only."""
    stem = re.sub(r"[^\w .-]+", "_", Path(name).stem).strip(" ._")
    return stem or "image"


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


def embed_classes(
    segmenter: Segmenter, lines: Sequence[str], progress: Callable[[float, str], None]
) -> None:
    """Embed the query names of ``lines`` into the segmenter's text cache, in steps.

    Names already in the cache cost nothing; ``progress(fraction, message)`` reports each step.
    """
    names, _ = expand_queries(parse_class_lines(lines, source="class list"))
    unique = list(dict.fromkeys(names))
    for start in range(0, len(unique), TEXT_CHUNK):
        progress(0.3 * start / len(unique), f"Embedding class names ({start}/{len(unique)})")
        segmenter.text.encode(unique[start : start + TEXT_CHUNK])


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
) -> DemoRun:
    """Segment one uploaded image and write its files as ``glaclip segment`` does.

    Args:
        segmenter: the loaded Segmenter (its settings are the defaults of the page).
        models: the backbones' names, recorded in the JSON.
        image_path: the uploaded file.
        class_text: classes in the ``--classes`` syntax (``"sky, person; man"``).
        method: a key of ``METHODS``.
        threshold: probability threshold in [0, 1].
        out_dir: existing folder that receives ``<stem>.png``, ``<stem>_overlay.jpg`` and
            ``<stem>.json``.
        max_pixels: larger images are refused.
        name: the file's name as uploaded (default: the name of ``image_path``).
        progress: ``progress(fraction, message)`` callback.

    Raises:
        DemoInputError: no image, no classes, not an image, too many pixels, bad settings.
    """
    report = progress or (lambda _fraction, _message: None)
    start = time.perf_counter()
    if image_path is None:
        raise DemoInputError(
            "No image: upload or drop a photo (or pick an example), then press Segment."
        )
    name = name or Path(image_path).name
    lines = parse_page_classes(class_text, segmenter.text.query_keys)
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
    check_image(image_path, name, max_pixels)
    report(0.0, "Reading the image")
    try:
        rgb = read_image(image_path)
    except ImageReadError as err:
        raise DemoInputError(not_an_image_message(name)) from err
    before, t0 = seg.text.encoded_count, time.perf_counter()
    embed_classes(seg, lines, report)
    embedded, embed_seconds = seg.text.encoded_count - before, time.perf_counter() - t0
    report(0.3, "Segmenting: windows, attention, labels")
    result = seg.segment(rgb, lines)
    report(0.9, "Writing the label PNG, the overlay and the JSON")
    files = write_outputs(result, rgb, out_dir, safe_stem(name), Path(name), seg.settings, models)
    seconds = time.perf_counter() - start
    return DemoRun(result, rgb, files, name, method, threshold, seconds, embedded, embed_seconds)


# ------------------------------------------------------------------------------ page views
def hex_colour(rgb: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(c) for c in rgb))


def annotation_view(
    rgb: np.ndarray, labels: np.ndarray, names: Sequence[str], max_side: int = ANNOTATION_SIDE
) -> tuple[tuple[np.ndarray, list[tuple[np.ndarray, str]]], dict[str, str]]:
    """The AnnotatedImage value and colour map: one 0/1 mask per class present.

    The image and labels are reduced (area / nearest) to ``max_side`` pixels on the long side;
    masks are ``h x w`` float32 in {0, 1}. Colours are those of the overlay and label PNG.
    """
    h, w = labels.shape
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        base = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BOX))
        rows = (np.arange(size[1]) * h) // size[1]
        cols = (np.arange(size[0]) * w) // size[0]
        labels = labels[rows][:, cols]
    else:
        base = rgb
    palette = class_palette(len(names))
    counts = np.bincount(labels.ravel(), minlength=len(names))[: len(names)]
    order = [int(i) for i in np.argsort(-counts, kind="stable") if counts[i] > 0]
    masks = [((labels == i).astype(np.float32), names[i]) for i in order]
    colours = {names[i]: hex_colour(palette[i]) for i in order}
    return (base, masks), colours


def _cell(text: str) -> str:
    return html.escape(text).replace("|", "\\|")


def shares_table(result: Segmentation) -> str:
    """Markdown table of the classes, largest pixel share first."""
    shares = result.pixel_shares()
    rows = sorted(range(len(shares)), key=lambda i: -shares[i])
    lines = ["| class | queried as | pixels |", "|---|---|---:|"]
    for i in rows:
        names = result.class_names[i]
        lines.append(f"| {_cell(names[0])} | {_cell('; '.join(names))} | {100 * shares[i]:.1f} % |")
    unlabelled = 1.0 - sum(shares)
    if unlabelled > 5e-4:
        lines.append(f"| *unlabelled* | below the threshold | {100 * unlabelled:.1f} % |")
    return "\n".join(lines)


def timings_line(run: DemoRun) -> str:
    """Markdown: seconds per stage of the Segmenter, the embedding of new names, the request."""
    stages = " · ".join(f"{k} {v:.2f}" for k, v in run.result.timings.items())
    total = sum(run.result.timings.values())
    if run.embedded:
        text = f"{run.embedded} new class name(s) embedded in {run.embed_seconds:.2f} s"
    else:
        text = "class names from the cache"
    return (
        f"**Seconds per stage**: {stages} · total {total:.2f}. "
        f"Request: {run.seconds:.2f} s ({text})."
    )


def summary_line(run: DemoRun) -> str:
    h, w = run.result.image_size
    rh, rw = run.result.resized_size
    return (
        f"**{_cell(run.name)}**: {w} x {h} pixels (network: {rw} x {rh}), {run.method}, "
        f"probability threshold {run.threshold:g}"
    )


# ------------------------------------------------------------------------------ the page
def _page_error(message: str) -> gr.Error:
    """An error shown on the page until closed (bad input, not a server fault: no traceback)."""
    return gr.Error(html.escape(message), duration=None, print_exception=False)


def upload_path(payload: Any) -> tuple[str | None, str | None]:
    """``(server path, name as uploaded)`` of an image component's raw value (or Nones).

    The page's events skip Gradio's image decoding (``preprocess=False``): the file is read by
    ``glaclip.imageio.read_image``, as ``glaclip segment`` reads it, and a file that is not an
    image gets a message that names it. Gradio still checks that the path is one it received.
    """
    if payload is None:
        return None, None
    if isinstance(payload, str):
        return payload, Path(payload).name
    path = payload.get("path")
    return path, payload.get("orig_name") or (Path(path).name if path else None)


class RequestFolders:
    """Per-request output folders inside one temporary folder, the oldest deleted."""

    def __init__(self, keep: int = KEEP_REQUESTS) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="glaclip-demo-"))
        self.keep = keep
        self.count = 0

    def new(self) -> Path:
        self.count += 1
        folder = self.root / f"{self.count:06d}"
        folder.mkdir()
        for old in sorted(self.root.iterdir())[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return folder

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _model_label(name: str) -> str:
    """A backbone's name for the page: a local folder by its own name only."""
    if name.startswith("local-dir:"):
        return "local-dir:" + Path(name.removeprefix("local-dir:")).name
    return name


def build_app(
    segmenter: Segmenter,
    models: dict[str, Any],
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    folders: RequestFolders | None = None,
) -> gr.Blocks:
    """The Gradio page over ``segmenter`` (not launched; see ``serve``).

    Raises:
        ValueError: ``max_megapixels`` is not a finite number above 0.
    """
    if not math.isfinite(max_megapixels) or max_megapixels <= 0:
        raise ValueError(f"max_megapixels must be a finite number above 0, got {max_megapixels}")
    folders = folders or RequestFolders()
    max_pixels = int(max_megapixels * 1e6)

    def segment(
        image: Any,
        class_text: str,
        method: str,
        threshold: float,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 - Gradio's way to ask for progress
    ) -> tuple[Any, ...]:
        image_path, name = upload_path(image)
        try:
            run = run_request(
                segmenter,
                models,
                image_path,
                class_text,
                method,
                threshold,
                folders.new(),
                max_pixels,
                name=name,
                progress=lambda f, message: progress(f, desc=message),
            )
        except DemoInputError as err:
            raise _page_error(str(err)) from None
        names = [c[0] for c in run.result.class_names]
        if run.threshold > 0 and not np.isin(run.result.labels, np.arange(len(names))).any():
            gr.Warning(
                f"No pixel reached the probability threshold {run.threshold:g}: the whole image "
                "is unlabelled. Lower the threshold."
            )
        value, colours = annotation_view(run.rgb, run.result.labels, names)
        files = [str(run.files.labels), str(run.files.record), str(run.files.overlay)]
        return (
            str(run.files.overlay),
            gr.AnnotatedImage(value=value, color_map=colours),
            summary_line(run) + "\n\n" + shares_table(run.result),
            timings_line(run),
            files,
        )

    clip_name = _model_label(segmenter.clip_info.name)
    vfm_text = "no VFM (keys from CLIP itself)"
    if segmenter.vfm_info is not None:
        vfm_text = f"VFM `{_model_label(segmenter.vfm_info.name)}`"
    # delete_cache: Gradio's copies of uploads and results live an hour (and not past a restart)
    with gr.Blocks(title="glaclip", analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        gr.Markdown(
            "## glaclip: segment an image into the classes you name\n"
            f"GLA-CLIP, training-free. CLIP `{clip_name}`, {vfm_text}, "
            f"on `{segmenter.device}`."
        )
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(
                    label="Image",
                    type="filepath",
                    sources=["upload", "clipboard"],
                    elem_id="glaclip-image",
                )
                classes = gr.Textbox(
                    label="Classes",
                    info="commas between classes, ';' between synonyms of one class",
                    placeholder="sky, road, car, tree, person; man; woman",
                    lines=2,
                    elem_id="glaclip-classes",
                )
                preset = gr.Dropdown(
                    choices=preset_choices(),
                    value=None,
                    label="Vocabulary of a benchmark",
                    elem_id="glaclip-preset",
                )
                with gr.Row():
                    method = gr.Radio(
                        choices=available_methods(segmenter),
                        value=default_method(segmenter),
                        label="Method",
                        elem_id="glaclip-method",
                    )
                    threshold = gr.Slider(
                        0.0,
                        1.0,
                        value=segmenter.settings.post.prob_threshold,
                        step=0.01,
                        label="Probability threshold",
                        info="below it a pixel stays unlabelled",
                        elem_id="glaclip-threshold",
                    )
                run = gr.Button("Segment", variant="primary", elem_id="glaclip-run")
                gr.Examples(
                    examples=[[str(EXAMPLES_DIR / f), text] for f, text in EXAMPLES],
                    inputs=[image, classes],
                    label="Example photographs (public domain)",
                )
            with gr.Column(scale=1):
                overlay_view = gr.Image(  # no corner buttons: they would hide the legend
                    label="Overlay",
                    type="filepath",
                    interactive=False,
                    buttons=[],
                    elem_id="glaclip-overlay",
                )
                annotated = gr.AnnotatedImage(
                    label="Classes: hover over or click a class to highlight its pixels",
                    elem_id="glaclip-annotated",
                )
                shares = gr.Markdown(elem_id="glaclip-shares")
                timings = gr.Markdown(elem_id="glaclip-timings")
                files = gr.File(
                    label="Downloads: label PNG, JSON and overlay, as glaclip segment writes them",
                    file_count="multiple",
                    interactive=False,
                    elem_id="glaclip-files",
                )
        preset.change(preset_text, inputs=preset, outputs=classes)
        inputs = [image, classes, method, threshold]
        outputs = [overlay_view, annotated, shares, timings, files]
        # preprocess=False: the upload is read by glaclip's reader (see upload_path)
        run.click(segment, inputs=inputs, outputs=outputs, preprocess=False)
        classes.submit(segment, inputs=inputs, outputs=outputs, preprocess=False)
    return app


def serve(
    segmenter: Segmenter,
    models: dict[str, Any],
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
) -> None:
    """Serve the page until interrupted. Binds ``host`` only; ``share`` opens a public link."""
    folders = RequestFolders()
    app = build_app(segmenter, models, max_megapixels, folders)
    previous = None
    if threading.current_thread() is threading.main_thread():  # SIGTERM stops it like Ctrl+C
        previous = signal.signal(signal.SIGTERM, _interrupt)
    app.queue(default_concurrency_limit=1)  # one model: requests run one at a time
    try:
        app.launch(
            server_name=host,
            server_port=port,
            share=share,
            show_error=True,
            ssr_mode=False,
            allowed_paths=[str(EXAMPLES_DIR), str(folders.root)],
            max_file_size="100mb",
            theme=gr.themes.Default(),
        )  # blocks until interrupted
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        folders.cleanup()


def _interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt
