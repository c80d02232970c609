"""A data root checked before a long run: what is there, against the official counts.

For each benchmark folder: the number of images and labels against the official validation
counts, the images or labels missing, and, for each label read, its size against its image's
(the image's header only) and its values against the classes of each preset that uses it
(after reduce_zero_label; 255 is ignored). ``scan_dataset`` reads each dataset folder once;
``check_preset`` judges it for one preset, so VOC21 and VOC20 share one reading.

The labels are decoded (their values are needed); the images are not: their size comes from
the file header. Reading is spread over threads.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from glaclip.data.datasets import (
    LAYOUTS,
    _read_split,
    _scan_images,
    load_label,
    reduce_zero_label,
    resolve_layout,
)
from glaclip.data.presets import Preset, preset_classes
from glaclip.images.pngcheck import incomplete_png_message, png_rows
from glaclip.images.read import oriented_size

# the official validation images of each layout (SPEC 11)
OFFICIAL_IMAGES = {
    "voc": 1449,
    "context": 5105,
    "coco_object": 5000,
    "coco_stuff": 5000,
    "cityscapes": 500,
    "ade20k": 2000,
}
SHOWN = 3  # problems named per kind; the rest are counted


@dataclass
class DatasetScan:
    """One dataset folder as found.

    Attributes:
        layout: the layout read (``voc``, ``context``, ...).
        root: the dataset's root folder.
        problem: why it could not be listed at all (no folder, no split file), else "".
        listed: images the split file lists, or image files found.
        images, labels: how many of the listed images and of their labels exist.
        missing_images, missing_labels: the paths missing (all of them, relative to the
            root).
        read: how many labels were read (all, or the first ``limit`` samples).
        sizes: ``(h, w)`` of each image read, in sample order.
        wrong_size: ``"label (HxW, image HxW)"`` for each label of another size.
        unreadable: ``"path: reason"`` for each image or label that could not be read.
        values: label path -> its distinct values (sorted int array).
    """

    layout: str
    root: Path
    problem: str = ""
    listed: int = 0
    images: int = 0
    labels: int = 0
    missing_images: list[str] = field(default_factory=list)
    missing_labels: list[str] = field(default_factory=list)
    read: int = 0
    sizes: list[tuple[int, int]] = field(default_factory=list)
    wrong_size: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    values: dict[str, np.ndarray] = field(default_factory=dict)


def _listing(layout: str, root: Path) -> list[tuple[Path, Path]]:
    """``(image, label)`` paths of every sample the layout lists (present or not)."""
    spec = LAYOUTS[layout]
    image_dir, label_dir = root / spec.image_dir, root / spec.label_dir
    if spec.split_file is not None:
        ids = _read_split(root, layout, spec)
        return [
            (image_dir / f"{i}{spec.image_suffix}", label_dir / f"{i}{spec.label_suffix}")
            for i in ids
        ]
    if not image_dir.is_dir():
        raise FileNotFoundError(f"no image folder {image_dir}")
    return [
        (image, label_dir / (image.parent.name if spec.nested else "") / f"{i}{spec.label_suffix}")
        for i, image in _scan_images(image_dir, spec)
    ]


def _read_pair(image: Path, label: Path) -> tuple[tuple[int, int] | None, np.ndarray | None, str]:
    """``(image (h, w), label's distinct values, problem)`` of one sample."""
    try:
        with Image.open(image) as img:
            w, h = oriented_size(img)  # as eval reads it: EXIF orientation applied
            rows = png_rows(image) if img.format == "PNG" else None
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        return None, None, f"{image}: not a readable image ({err})"
    if rows is not None and not rows.complete:
        return (h, w), None, f"{image}: {incomplete_png_message(rows)}"
    try:
        arr = load_label(label)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        return (h, w), None, f"{label}: not a readable label map ({err})"
    if arr.shape != (h, w):
        return (h, w), None, f"size:{label.name} ({arr.shape[0]}x{arr.shape[1]}, image {h}x{w})"
    if arr.dtype == np.uint8:
        values = np.flatnonzero(np.bincount(arr.ravel(), minlength=256))
    else:
        values = np.unique(arr)
    return (h, w), values, ""


def _rel(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def scan_dataset(
    layout: str,
    root: str | os.PathLike,
    limit: int | None = None,
    progress: bool = True,
    workers: int = 1,
) -> DatasetScan:
    """List a dataset folder and read its labels (the first ``limit`` samples, or all).

    Never raises for missing or broken data: everything found wrong is in the result.
    """
    layout = resolve_layout(layout)
    scan = DatasetScan(layout, Path(root))
    try:
        pairs = _listing(layout, scan.root)
    except (OSError, ValueError) as err:
        scan.problem = str(err).split(": the ")[0]  # the first clause names the path
        return scan
    scan.listed = len(pairs)
    scan.missing_images = [_rel(i, scan.root) for i, _ in pairs if not i.is_file()]
    scan.missing_labels = [_rel(lb, scan.root) for _, lb in pairs if not lb.is_file()]
    scan.images = scan.listed - len(scan.missing_images)
    scan.labels = scan.listed - len(scan.missing_labels)
    present = [(i, lb) for i, lb in pairs if i.is_file() and lb.is_file()][:limit]
    desc = f"checking {scan.root.name}"
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(lambda pair: _read_pair(*pair), present)
        for (_, label), (size, values, problem) in tqdm(
            zip(present, results, strict=True), total=len(present), desc=desc, disable=not progress
        ):
            scan.read += 1
            if size is not None:
                scan.sizes.append(size)
            if problem.startswith("size:"):
                scan.wrong_size.append(problem[len("size:") :])
            elif problem:
                scan.unreadable.append(problem)
            if values is not None:
                scan.values[str(label)] = values
    return scan


@dataclass
class PresetCheck:
    """One preset judged on its scan: ``outside`` lists ``"label (values)"``."""

    preset: Preset
    scan: DatasetScan
    num_classes: int
    outside: list[str] = field(default_factory=list)

    @property
    def official(self) -> int:
        return OFFICIAL_IMAGES[self.scan.layout]

    @property
    def ok(self) -> bool:
        s = self.scan
        return not (
            s.problem
            or s.missing_images
            or s.missing_labels
            or s.wrong_size
            or s.unreadable
            or self.outside
            or s.listed != self.official
        )


def check_preset(
    preset: Preset,
    scan: DatasetScan,
    num_classes: int | None = None,
    reduce: bool | None = None,
    ignore_index: int = 255,
) -> PresetCheck:
    """Judge a scan for one preset: label values outside ``0..C-1`` (and ``ignore_index``),
    after reduce_zero_label. ``num_classes`` and ``reduce`` override the preset's (a custom
    class file, ``--[no-]reduce-zero-label``)."""
    num_classes = num_classes or len(preset_classes(preset))
    reduce = preset.reduce_zero_label if reduce is None else reduce
    check = PresetCheck(preset, scan, num_classes)
    for path, values in scan.values.items():
        seen = reduce_zero_label(values) if reduce else values
        bad = values[(seen >= num_classes) & (seen != ignore_index) | (seen < 0)]
        if len(bad):
            shown = ", ".join(str(v) for v in bad[:5]) + (", ..." if len(bad) > 5 else "")
            check.outside.append(f"{Path(path).name} ({shown})")
    return check


def named(items: Sequence[str], limit: int = SHOWN) -> str:
    """The first ``limit`` items, then how many more."""
    text = ", ".join(items[:limit])
    return text + (f" and {len(items) - limit} more" if len(items) > limit else "")
