"""Build COCO-Object labels (``*_instanceTrainIds.png``) from COCO-Stuff164k label maps.

COCO-Object has 81 classes: 0 = background, 1..80 = the 80 COCO thing classes in COCO order.
Every thing pixel becomes its thing index + 1; stuff and unlabelled (255) pixels become 0.

Two input kinds are accepted, told apart by file name:

* ``<id>_labelTrainIds.png`` (mmseg's converted COCO-Stuff164k): things are 0..79, stuff
  80..170, 255 unlabelled.
* any other ``<id>.png`` (the raw ``stuffthingmaps``): pixel = COCO category id - 1, so the
  80 things are the values 0..89 with gaps (11, 25, 28, 29, 44, 65, 67, 68, 70, 82 unused),
  stuff 91..181, 255 unlabelled.

When both exist for one id (mmseg writes its trainIds beside the raw maps), the trainIds map
is used. Files already named ``*_instanceTrainIds.png`` are skipped, so ``dst`` may equal
``src``. Only the top level of ``src`` is read.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from glaclip.imageio import atomic_write

TRAIN_SUFFIX = "_labelTrainIds.png"
OUT_SUFFIX = "_instanceTrainIds.png"

# COCO category ids (1-based, with gaps) of the 80 thing classes, in COCO order.
_THING_IDS = [
    *range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70,
    *range(72, 83), *range(84, 91),
]  # fmt: skip


def _lookup_train_ids() -> np.ndarray:
    lut = np.zeros(256, dtype=np.uint8)
    lut[:80] = np.arange(1, 81, dtype=np.uint8)
    return lut


def _lookup_raw() -> np.ndarray:
    lut = np.zeros(256, dtype=np.uint8)
    for index, cat_id in enumerate(_THING_IDS):
        lut[cat_id - 1] = index + 1
    return lut


LUT_TRAIN_IDS = _lookup_train_ids()  # (256,) uint8: trainId -> COCO-Object label
LUT_RAW = _lookup_raw()  # (256,) uint8: stuffthingmaps value -> COCO-Object label


def _sources(src: Path) -> list[tuple[str, Path, np.ndarray]]:
    """``(id, path, lookup table)`` for every label map in ``src``, sorted by id."""
    train: dict[str, Path] = {}
    raw: dict[str, Path] = {}
    for entry in src.iterdir():
        name = entry.name
        if not entry.is_file() or not name.endswith(".png") or name.endswith(OUT_SUFFIX):
            continue
        if name.endswith(TRAIN_SUFFIX):
            train[name[: -len(TRAIN_SUFFIX)]] = entry
        else:
            raw[name[: -len(".png")]] = entry
    out = [(i, p, LUT_TRAIN_IDS) for i, p in train.items()]
    out += [(i, p, LUT_RAW) for i, p in raw.items() if i not in train]
    return sorted(out, key=lambda item: item[0])


def to_coco_object(label: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Map an ``H x W`` uint8 COCO-Stuff label map through a lookup table to COCO-Object.

    Returns:
        ``H x W`` uint8 array in ``[0, 80]``.
    """
    if label.dtype != np.uint8:
        raise ValueError(f"COCO-Stuff label maps are uint8, got dtype {label.dtype}")
    return lut[label]


def convert_coco_object(src: str | os.PathLike, dst: str | os.PathLike) -> int:
    """Convert every COCO-Stuff164k label map in ``src`` to ``dst/<id>_instanceTrainIds.png``.

    Args:
        src: folder of ``*_labelTrainIds.png`` and/or raw stuffthingmaps ``*.png``.
        dst: output folder (created if missing; may equal ``src``).

    Returns:
        The number of label maps written. Each is a uint8 PNG (mode ``L``) written atomically
        (temporary file in ``dst``, then ``os.replace``).

    Raises:
        FileNotFoundError: ``src`` is not a folder.
        ValueError: ``src`` holds no label map, or one is not single-channel 8-bit.
    """
    src = Path(src)
    dst = Path(dst)
    if not src.is_dir():
        raise FileNotFoundError(
            f"COCO-Stuff label folder {src} not found: pass e.g. coco_stuff164k/annotations/val2017"
        )
    sources = _sources(src)
    if not sources:
        raise ValueError(
            f"no COCO-Stuff label maps in {src}: expected *{TRAIN_SUFFIX} (mmseg trainIds) "
            "or raw stuffthingmaps *.png"
        )
    dst.mkdir(parents=True, exist_ok=True)
    for sid, path, lut in sources:
        with Image.open(path) as img:
            if img.mode not in ("L", "P"):
                raise ValueError(
                    f"{path} has image mode {img.mode!r}: expected a single-channel 8-bit label map"
                )
            label = np.array(img, dtype=np.uint8)
        out = Image.fromarray(to_coco_object(label, lut))
        atomic_write(dst / f"{sid}{OUT_SUFFIX}", lambda tmp, im=out: im.save(tmp, format="PNG"))
    return len(sources)
