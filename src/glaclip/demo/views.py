"""What the demo's page shows of a request, without Gradio: the annotated view, the class
table, the summary and timing lines, and the folders the downloads are written to."""

from __future__ import annotations

import html
import secrets
import shutil
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from glaclip.demo.inputs import DemoInputError
from glaclip.demo.logic import DemoRun
from glaclip.io.palette import class_palette
from glaclip.model.names import LOCAL_DIR, is_local_dir
from glaclip.model.results import Segmentation

ANNOTATION_SIDE = 1024  # long side of the annotated view (display only; downloads are full size)
KEEP_REQUESTS = 32  # request folders kept on disk (older ones are deleted)


def hex_colour(rgb: Sequence[int]) -> str:
    """``(R, G, B)`` in [0, 255] as ``#rrggbb``."""
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
    """Markdown: seconds per stage of the Segmenter, the embedding of new names, whether the
    image's features were reused, the memory they are kept in, the whole request."""
    stages = " · ".join(f"{k} {v:.2f}" for k, v in run.result.timings.items())
    total = sum(run.result.timings.values())
    if run.embedded:
        text = f"{run.embedded} new class name(s) embedded in {run.embed_seconds:.2f} s"
    else:
        text = "class names from the cache"
    memory = f"{run.features_kept / 1e6:.1f} MB"
    if run.features_reused:
        features = (
            "Image features reused: the backbones and the attention did not run; "
            f"{memory} kept in memory."
        )
    else:
        features = f"Image features computed and kept for new classes on this photo: {memory}."
    return (
        f"**Seconds per stage**: {stages} · total {total:.2f}. "
        f"Request: {run.seconds:.2f} s ({text}). {features}"
    )


def summary_line(run: DemoRun) -> str:
    """Markdown: the image's name and sizes, the method and the threshold."""
    h, w = run.result.image_size
    rh, rw = run.result.resized_size
    return (
        f"**{_cell(run.name)}**: {w} x {h} pixels (network: {rw} x {rh}), {run.method}, "
        f"probability threshold {run.threshold:g}"
    )


def upload_path(payload: Any) -> tuple[str | None, str | None]:
    """``(server path, name as uploaded)`` of an image component's raw value (or Nones).

    The page's events skip Gradio's image decoding (``preprocess=False``): the file is read by
    ``glaclip.images.read.read_image``, as ``glaclip segment`` reads it, and a file that is not an
    image gets a message that names it. Gradio still checks that the path is one it received.
    """
    if payload is None:
        return None, None
    if isinstance(payload, str):
        return payload, Path(payload).name
    path = payload.get("path") if isinstance(payload, dict) else None
    if not isinstance(path, str):  # through the API: a number, a list, a dict without a path
        raise DemoInputError(
            "Image: expected an uploaded file, got "
            + (f"a {type(payload).__name__}" if not isinstance(payload, dict) else "no path")
            + ": upload a photo (or send one as a file)."
        )
    orig = payload.get("orig_name")
    return path, orig if isinstance(orig, str) and orig else Path(path).name


class RequestFolders:
    """Per-request output folders inside one temporary folder, the oldest deleted.

    The root (``tempfile.mkdtemp``) and every folder in it are readable by the server's user
    alone, and a folder's name is 32 random hex digits (``secrets``): nothing in a request's
    answer tells another request's folder. The page does not serve these folders: Gradio
    copies a request's files into its own cache under a name made from their content, and
    serves them from there to the request that got them.
    """

    def __init__(self, keep: int = KEEP_REQUESTS) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="glaclip-demo-"))
        self.keep = keep
        self.count = 0
        self._order: list[Path] = []
        self._lock = threading.Lock()

    def new(self) -> Path:
        """A new empty folder with an unguessable name; beyond ``keep`` folders, the oldest
        are deleted."""
        with self._lock:
            self.count += 1
            folder = self.root / secrets.token_hex(16)
            folder.mkdir(mode=0o700)
            self._order.append(folder)
            for old in self._order[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
            self._order = self._order[-self.keep :]
        return folder

    def cleanup(self) -> None:
        """Delete the temporary folder and everything in it."""
        shutil.rmtree(self.root, ignore_errors=True)


def model_label(name: str) -> str:
    """A backbone's name for the page: a local folder by its own name only."""
    if is_local_dir(name):
        return LOCAL_DIR + Path(name.removeprefix(LOCAL_DIR)).name
    return name
