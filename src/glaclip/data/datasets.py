"""Readers for the mmsegmentation folder layouts of the benchmark datasets (SPEC 11).

``--data-root`` points at the dataset's own root (e.g. ``VOCdevkit/VOC2012``,
``VOCdevkit/VOC2010``, ``coco_stuff164k``, ``cityscapes``, ``ADEChallengeData2016``). Layouts
(image, then label, relative to the root):

- ``voc``: ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png`` (palette PNG).
- ``context``: ``JPEGImages/<id>.jpg``, ``SegmentationClassContext/<id>.png``.
- ``coco_object``: ``images/val2017/<id>.jpg``,
  ``annotations/val2017/<id>_instanceTrainIds.png``.
- ``coco_stuff``: ``images/val2017/<id>.jpg``, ``annotations/val2017/<id>_labelTrainIds.png``.
- ``cityscapes``: ``leftImg8bit/val/<city>/<id>_leftImg8bit.png``,
  ``gtFine/val/<city>/<id>_gtFine_labelTrainIds.png``.
- ``ade20k``: ``images/validation/<id>.jpg``, ``annotations/validation/<id>.png``.

VOC and Context list the ids of a split file (``ImageSets/Segmentation/val.txt``,
``ImageSets/SegmentationContext/val.txt``) in file order; the others list every image of the
folder, sorted by id. Preset names (``voc21``, ``voc20``, ``context60``, ``context59``,
``coco_stuff164k``) are accepted as aliases of their layout.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from glaclip.images.pngcheck import incomplete_png_message, png_rows
from glaclip.images.read import quiet_pillow


class Sample(NamedTuple):
    """One evaluation sample: a file-name-safe ``id`` and the paths of image and label."""

    id: str
    image: Path
    label: Path


@dataclass(frozen=True)
class _Layout:
    image_dir: str  # relative to the root
    image_suffix: str  # file name = id + suffix
    label_dir: str
    label_suffix: str
    split_file: str | None = None  # ids listed in this file (relative to the root)
    nested: bool = False  # images sit one folder deeper (Cityscapes cities)
    hint: str = ""  # which folder --data-root should name

    def describe(self) -> str:
        parts = [
            f"{self.image_dir}/{'<city>/' if self.nested else ''}<id>{self.image_suffix}",
            f"{self.label_dir}/{'<city>/' if self.nested else ''}<id>{self.label_suffix}",
        ]
        if self.split_file:
            parts.append(f"the split file {self.split_file}")
        return ", ".join(parts) + f" under the data root ({self.hint})"


LAYOUTS: dict[str, _Layout] = {
    "voc": _Layout(
        "JPEGImages",
        ".jpg",
        "SegmentationClass",
        ".png",
        split_file="ImageSets/Segmentation/val.txt",
        hint="point --data-root at VOCdevkit/VOC2012",
    ),
    "context": _Layout(
        "JPEGImages",
        ".jpg",
        "SegmentationClassContext",
        ".png",
        split_file="ImageSets/SegmentationContext/val.txt",
        hint="point --data-root at VOCdevkit/VOC2010; make the labels with "
        "'glaclip prepare pascal-context trainval_merged.json VOCdevkit/VOC2010'",
    ),
    "coco_object": _Layout(
        "images/val2017",
        ".jpg",
        "annotations/val2017",
        "_instanceTrainIds.png",
        hint="point --data-root at coco_stuff164k; make the labels with "
        "'glaclip prepare coco-object coco_stuff164k/annotations coco_stuff164k'",
    ),
    "coco_stuff": _Layout(
        "images/val2017",
        ".jpg",
        "annotations/val2017",
        "_labelTrainIds.png",
        hint="point --data-root at coco_stuff164k; make the labels with "
        "'glaclip prepare coco-stuff164k coco_stuff164k/annotations coco_stuff164k'",
    ),
    "cityscapes": _Layout(
        "leftImg8bit/val",
        "_leftImg8bit.png",
        "gtFine/val",
        "_gtFine_labelTrainIds.png",
        nested=True,
        hint="point --data-root at the cityscapes folder; make the labels with "
        "'glaclip prepare cityscapes cityscapes/gtFine cityscapes'",
    ),
    "ade20k": _Layout(
        "images/validation",
        ".jpg",
        "annotations/validation",
        ".png",
        hint="point --data-root at ADEChallengeData2016",
    ),
}

_ALIASES = {
    "voc21": "voc",
    "voc20": "voc",
    "context60": "context",
    "context59": "context",
    "coco_stuff164k": "coco_stuff",
}


def resolve_layout(layout: str) -> str:
    """A layout name (or a preset name alias) to its layout name; ValueError if unknown."""
    name = _ALIASES.get(layout, layout)
    if name not in LAYOUTS:
        valid = sorted(set(LAYOUTS) | set(_ALIASES))
        raise ValueError(f"unknown dataset layout {layout!r}; valid: {', '.join(valid)}")
    return name


def _require_dir(path: Path, name: str, spec: _Layout) -> None:
    if not path.is_dir():
        raise FileNotFoundError(
            f"folder {path} not found: the {name} layout expects {spec.describe()}"
        )


def _read_split(root: Path, name: str, spec: _Layout) -> list[str]:
    assert spec.split_file is not None
    path = root / spec.split_file
    if not path.is_file():
        raise FileNotFoundError(
            f"split file {path} not found: the {name} layout expects {spec.describe()}"
        )
    ids: list[str] = []
    first: dict[str, int] = {}  # id -> the line that lists it
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        sid = line.strip()
        if not sid:
            continue
        if sid in first:
            raise ValueError(
                f"split file {path} lists the image id {sid!r} twice (lines {first[sid]} and "
                f"{number}): it would be counted twice; remove the repeat"
            )
        first[sid] = number
        ids.append(sid)
    if not ids:
        raise ValueError(f"split file {path} lists no image ids")
    return ids


def _scan_images(image_dir: Path, spec: _Layout) -> list[tuple[str, Path]]:
    """``(id, image path)`` of every image in the folder (one level deeper if nested)."""
    folders = sorted(p for p in image_dir.iterdir() if p.is_dir()) if spec.nested else [image_dir]
    found = []
    for folder in folders:
        for entry in folder.iterdir():
            if entry.is_file() and entry.name.endswith(spec.image_suffix):
                found.append((entry.name[: -len(spec.image_suffix)], entry))
    return sorted(found)


def _listed_samples(root: Path, name: str, spec: _Layout) -> list[Sample]:
    """The samples of a layout with a split file, in its order; every image must exist."""
    image_dir, label_dir = root / spec.image_dir, root / spec.label_dir
    samples: list[Sample] = []
    for sid in _read_split(root, name, spec):
        image = image_dir / f"{sid}{spec.image_suffix}"
        if not image.is_file():
            raise FileNotFoundError(
                f"image {image} (listed in {spec.split_file}) not found: the {name} "
                f"layout expects {spec.describe()}"
            )
        samples.append(Sample(sid, image, label_dir / f"{sid}{spec.label_suffix}"))
    return samples


def _scanned_samples(root: Path, name: str, spec: _Layout) -> list[Sample]:
    """The samples of a layout without a split file: every image found, sorted by id."""
    image_dir, label_dir = root / spec.image_dir, root / spec.label_dir
    samples: list[Sample] = []
    for sid, image in _scan_images(image_dir, spec):
        sub = image.parent.name if spec.nested else ""
        samples.append(Sample(sid, image, label_dir / sub / f"{sid}{spec.label_suffix}"))
    if not samples:
        raise ValueError(
            f"no images *{spec.image_suffix} found in {image_dir}: the {name} layout "
            f"expects {spec.describe()}"
        )
    return samples


def list_samples(layout: str, root: str | os.PathLike) -> list[Sample]:
    """Every sample of a dataset in a known folder layout, in a deterministic order.

    Args:
        layout: ``voc``, ``context``, ``coco_object``, ``coco_stuff``, ``cityscapes``,
            ``ade20k`` (or a preset name such as ``voc21``).
        root: the dataset's root folder.

    Returns:
        Samples in split-file order (VOC, Context) or sorted by id (the others). Cityscapes
        ids are file stems such as ``frankfurt_000000_000294`` (unique across cities).

    Raises:
        FileNotFoundError: the root, an expected folder or split file, an image or a label is
            missing (the message names the path and the expected layout).
        ValueError: unknown layout, or no images found.
    """
    name = resolve_layout(layout)
    spec = LAYOUTS[name]
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"data root {root} is not a folder: the {name} layout expects {spec.describe()}"
        )
    image_dir = root / spec.image_dir
    label_dir = root / spec.label_dir
    _require_dir(image_dir, name, spec)
    _require_dir(label_dir, name, spec)

    if spec.split_file is not None:
        samples = _listed_samples(root, name, spec)
    else:
        samples = _scanned_samples(root, name, spec)
    for s in samples:
        if not s.label.is_file():
            raise FileNotFoundError(
                f"label {s.label} for image {s.image} not found: the {name} layout expects "
                f"{spec.describe()}"
            )
    return samples


def reduce_zero_label(label: np.ndarray) -> np.ndarray:
    """mmseg's ``reduce_zero_label``: 0 becomes 255, every other label minus 1, 255 stays 255.

    Args:
        label: ``H x W`` integer array (any integer dtype).

    Returns:
        A new array of the same shape and dtype.
    """
    label = np.asarray(label)
    if not np.issubdtype(label.dtype, np.integer):
        raise ValueError(f"label must be an integer array, got dtype {label.dtype}")
    out = label.astype(np.int64)
    out[out == 0] = 255
    out -= 1
    out[out == 254] = 255
    return out.astype(label.dtype)


_reduced = reduce_zero_label  # for load_label, whose argument has its name


def load_label(path: str | os.PathLike, reduce_zero_label: bool = False) -> np.ndarray:
    """Read a label map as stored: palette PNGs give their indices, not their colours.

    Args:
        path: a single-channel label image (mode ``P``, ``L``, ``I`` or ``I;16``).
        reduce_zero_label: apply mmseg's reduce_zero_label (0 -> 255, others minus 1).

    Returns:
        ``H x W`` array: uint8 for 8-bit images, int32 for 16/32-bit ones.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not an image, cannot be decoded (truncated or corrupt), cannot
            be read, or has colour channels (not a label map); the message names it.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"label file {p} not found")
    try:
        with quiet_pillow():
            label = _decode_label(p)
    except UnidentifiedImageError:
        raise ValueError(
            f"label file {p} is not an image (Pillow cannot identify it): expected a PNG "
            "label map holding class indices"
        ) from None
    except Image.DecompressionBombError as err:
        raise ValueError(f"label file {p} is too large to decode safely ({err})") from None
    except OSError as err:
        raise ValueError(
            f"label file {p} cannot be decoded, truncated or corrupt ({err}): replace it with "
            "a complete copy"
        ) from None
    rows = png_rows(p) if p.suffix.lower() == ".png" else None
    if rows is not None and not rows.complete:  # Pillow would have read the rest as 0
        raise ValueError(f"label file {p}: {incomplete_png_message(rows)}")
    if reduce_zero_label:
        label = _reduced(label)
    return label


def _decode_label(p: Path) -> np.ndarray:
    with Image.open(p) as img:
        if img.mode in ("P", "L"):
            return np.array(img, dtype=np.uint8)
        if img.mode in ("I", "I;16", "I;16B", "I;16L"):
            return np.array(img).astype(np.int32)
        raise ValueError(
            f"label file {p} has image mode {img.mode!r}: expected a single-channel "
            "label map (palette 'P' or greyscale 'L') holding class indices"
        )
