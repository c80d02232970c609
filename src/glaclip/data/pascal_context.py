"""Pascal Context: ``SegmentationClassContext/<id>.png`` from the official Detail API JSON.

The 59-class Pascal Context labels are made from ``trainval_merged.json`` (PASCAL in Detail)
the way mmsegmentation's ``tools/dataset_converters/pascal_context.py`` makes them:

1. The semantic mask of an image is the Detail API's ``getMask(img)``
   (zhanghang1989/detail-api, ``PythonAPI/detail/__init__.py``): a zero ``height x width``
   array, then, for each of the image's annotations in the file's order of
   ``annos_segmentation``, the pixels of its decoded mask set to its ``category_id``. Later
   annotations overwrite earlier ones. The masks are COCO run-length encodings, decoded with
   pycocotools (the Detail API's ``mask`` module is pycocotools' own code).
2. mmsegmentation's fixed table of 60 category ids (0 and the 59 classes) sorted ascending;
   each pixel becomes the position of its id in that order (``np.digitize``), 0..59. An id
   outside the table stops mmsegmentation's converter (an assertion); here that image fails
   with its name and the others go on.
3. ``SegmentationClassContext/<stem>.png`` (mode ``L``) for every image of the ``train`` and
   ``val`` phases, and ``ImageSets/SegmentationContext/{train,val}.txt``: the stems, sorted,
   one per line. A list is written only when every image of its phase converted.

The 459-class ``.mat`` files of the Pascal Context site are not read: nothing shows that they
give these labels pixel for pixel, and mmsegmentation's labels come from the JSON.

``glaclip prepare pascal-context SOURCE ROOT``: ``SOURCE`` is ``trainval_merged.json``,
``ROOT`` the ``VOCdevkit/VOC2010`` folder. Decoding needs pycocotools
(``pip install "glaclip[prepare]"``). The JSON is read whole into memory, as the Detail API
reads it, and its structure is checked before any label is written (``read_detail_json``): a
file where the Detail API would silently drop a mask (two annotations with one ``id``) or one
label would overwrite another (a ``file_name`` twice, in one phase or in train and val), or a
field missing or of the wrong kind, is refused naming the entries.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from glaclip.data.convert import (
    PREPARE_INSTALL,
    ConversionError,
    ConvertReport,
    Job,
    MissingExtraError,
    OnFailure,
    ensure_folder,
    run_jobs,
    write_list,
)

PHASES = ("train", "val")
LABEL_DIR = "SegmentationClassContext"
SPLIT_DIR = "ImageSets/SegmentationContext"
# mmsegmentation's table, as it is written there (the converter sorts it)
MMSEG_CATEGORY_IDS = (
    0, 2, 259, 260, 415, 324, 9, 258, 144, 18, 19, 22, 23, 397, 25, 284,
    158, 159, 416, 33, 162, 420, 454, 295, 296, 427, 44, 45, 46, 308, 59,
    440, 445, 31, 232, 65, 354, 424, 68, 326, 72, 458, 34, 207, 80, 355,
    85, 347, 220, 349, 360, 98, 187, 104, 105, 366, 189, 368, 113, 115,
)  # fmt: skip


def _lookup() -> np.ndarray:
    ids = sorted(MMSEG_CATEGORY_IDS)
    lut = np.full(max(ids) + 1, -1, dtype=np.int16)
    lut[ids] = np.arange(len(ids))
    return lut


LUT = _lookup()  # (459,) int16: Detail category id -> label 0..59, -1 outside the table


def _decoder() -> Any:
    try:
        from pycocotools import mask
    except ImportError:
        raise MissingExtraError(
            f"pascal-context needs pycocotools to decode the JSON's masks: {PREPARE_INSTALL}"
        ) from None
    return mask


def decode_segmentation(seg: Any, height: int, width: int) -> np.ndarray:
    """A Detail/COCO run-length encoding (``{"size": [h, w], "counts": ...}``) -> ``h x w``
    uint8 mask of 0/1. Compressed (string) and uncompressed (list) counts are read.

    Raises:
        ConversionError: another form, or a size other than ``height x width``.
    """
    mask_api = _decoder()
    if not isinstance(seg, dict) or "counts" not in seg or "size" not in seg:
        raise ConversionError(f"a segmentation that is no run-length encoding: {str(seg)[:60]}")
    if list(seg["size"]) != [height, width]:
        raise ConversionError(f"a mask of size {seg['size']} in an image of {[height, width]}")
    if isinstance(seg["counts"], list):
        seg = mask_api.frPyObjects(seg, height, width)
    try:
        return mask_api.decode(seg)
    except (TypeError, ValueError) as err:
        raise ConversionError(f"a run-length encoding that cannot be decoded ({err})") from err


def category_mask(image: dict[str, Any], annotations: list[dict[str, Any]]) -> np.ndarray:
    """The Detail API's ``getMask(image)``: ``H x W`` int32 category ids, 0 where none."""
    mask = np.zeros((int(image["height"]), int(image["width"])), dtype=np.int32)
    for ann in annotations:
        m = decode_segmentation(ann["segmentation"], *mask.shape)
        mask[m != 0] = int(ann["category_id"])
    return mask


def to_context_labels(mask: np.ndarray) -> np.ndarray:
    """``H x W`` Detail category ids -> ``H x W`` uint8 labels 0..59 (mmsegmentation's table).

    Raises:
        ConversionError: an id outside the 60 of the table (the first ten named).
    """
    values = np.unique(mask)
    bad = [int(v) for v in values if v < 0 or v >= len(LUT) or LUT[v] < 0]
    if bad:
        shown = ", ".join(map(str, bad[:10])) + (", ..." if len(bad) > 10 else "")
        raise ConversionError(f"holds categories that are not among the 59 classes: {shown}")
    return LUT[mask].astype(np.uint8)


_REDO = "the file is damaged or not the official trainval_merged.json: download it again"
_ID = (int, str)  # what an id may be (JSON numbers and strings; not lists, objects or bools)


def _entries(data: dict[str, Any], key: str, path: Path) -> list[dict[str, Any]]:
    """``data[key]``: a list of JSON objects."""
    entries = data[key]
    if not isinstance(entries, list):
        raise ValueError(f"{path}: {key!r} is a {type(entries).__name__}, not a list; {_REDO}")
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(
                f"{path}: {key}[{index}] is a {type(entry).__name__}, not an object; {_REDO}"
            )
    return entries


def _field(entry: dict[str, Any], name: str, kinds: tuple[type, ...], where: str) -> Any:
    """``entry[name]``, which must be of one of ``kinds`` (a bool is no number)."""
    if name not in entry:
        raise ValueError(f"{where} has no {name!r}; {_REDO}")
    value = entry[name]
    if isinstance(value, bool) or not isinstance(value, kinds):
        text = json.dumps(value)[:60]
        want = " or ".join("a number" if k is int else "a text" for k in kinds)
        raise ValueError(f"{where} has {name} {text}, not {want}; {_REDO}")
    return value


def _check_images(images: list[dict[str, Any]], path: Path) -> None:
    """Every image has an id, a file name and a size; no id and no label name twice."""
    ids: dict[Any, int] = {}
    stems: dict[str, tuple[int, str]] = {}
    for index, img in enumerate(images):
        where = f"{path}: images[{index}]"
        image_id = _field(img, "image_id", _ID, where)
        name = _field(img, "file_name", (str,), where)
        for side in ("height", "width"):
            if _field(img, side, (int,), where) <= 0:
                raise ValueError(f"{where} has {side} {img[side]}, not a positive size; {_REDO}")
        if image_id in ids:
            raise ValueError(
                f"{where} repeats image_id {image_id!r} of images[{ids[image_id]}]; {_REDO}"
            )
        ids[image_id] = index
        phase = img.get("phase")
        stem = Path(name).stem
        if phase in PHASES and stem:
            if stem in stems:
                other, other_phase = stems[stem]
                where_else = "in the same phase" if other_phase == phase else f"in {other_phase}"
                raise ValueError(
                    f"{where} ({name!r}, {phase}) has the label name {stem}.png of "
                    f"images[{other}] {where_else}: one label would overwrite the other; {_REDO}"
                )
            stems[stem] = (index, phase)


def read_detail_json(path: Path) -> tuple[dict[int, dict], dict[int, list[dict]]]:
    """``({image_id: image}, {image_id: [annotations in the file's order]})``, as indexed by
    the Detail API, after checking the structure the conversion relies on.

    Raises:
        FileNotFoundError: no such file. ValueError: not JSON, not the Detail format, or a
            malformed entry (a field missing or of the wrong kind, an image or annotation id
            twice, one label file name for two images); the message names the entries.
    """
    if not path.is_file():
        raise FileNotFoundError(
            f"Detail annotation file {path} not found: pass trainval_merged.json"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a JSON file ({err}): pass trainval_merged.json") from err
    if not isinstance(data, dict) or not {"images", "annos_segmentation"} <= data.keys():
        raise ValueError(
            f"{path} is not a PASCAL in Detail annotation file (no 'images' and "
            "'annos_segmentation'): pass trainval_merged.json"
        )
    image_list = _entries(data, "images", path)
    _check_images(image_list, path)
    images = {img["image_id"]: img for img in image_list}
    per_image: dict[int, list[dict]] = {i: [] for i in images}
    seen: dict[Any, int] = {}
    for index, seg in enumerate(_entries(data, "annos_segmentation", path)):
        where = f"{path}: annos_segmentation[{index}]"
        seg_id = _field(seg, "id", _ID, where)
        _field(seg, "image_id", _ID, where)
        _field(seg, "category_id", (int,), where)
        if "segmentation" not in seg:
            raise ValueError(f"{where} has no 'segmentation'; {_REDO}")
        if seg_id in seen:  # the Detail API would keep only the later one's mask
            raise ValueError(
                f"{where} repeats the id {seg_id!r} of annos_segmentation[{seen[seg_id]}]: one "
                f"of the two masks would be dropped; {_REDO}"
            )
        seen[seg_id] = index
        per_image.setdefault(seg["image_id"], []).append(seg)
    return images, per_image


def _check_root(root: Path) -> None:
    if root.is_dir() and (root / "JPEGImages").is_dir():
        return
    if (root / "VOC2010" / "JPEGImages").is_dir():
        raise ValueError(f"ROOT {root} is the devkit: pass {root / 'VOC2010'}")
    raise ValueError(
        f"ROOT {root} is not the VOC2010 folder (no JPEGImages/ in it): pass VOCdevkit/VOC2010"
    )


def _jobs(
    source: Path,
    root: Path,
    chosen: list[dict[str, Any]],
    stems: list[str],
    per_image: dict[int, list[dict[str, Any]]],
) -> list[Job]:
    """One job per image of a phase: its 0..59 labels into ``SegmentationClassContext/``."""
    return [
        Job(
            source,
            root / LABEL_DIR / f"{stem}.png",
            lambda img=img: to_context_labels(category_mask(img, per_image[img["image_id"]])),
            name=f"{img['file_name']} (in {source.name})",
        )
        for img, stem in zip(chosen, stems, strict=True)
    ]


def convert_pascal_context(
    source: str | os.PathLike,
    root: str | os.PathLike,
    splits: list[str] | None = None,
    progress: bool = True,
    overwrite: bool = False,
    workers: int = 1,
    on_failure: OnFailure | None = None,
) -> ConvertReport:
    """Write ``ROOT/SegmentationClassContext/*.png`` and the split lists from the JSON.

    Args:
        source: ``trainval_merged.json``.
        root: ``VOCdevkit/VOC2010``.
        splits: the phases to convert (``train``, ``val``; default both).

    Returns:
        The report of :func:`glaclip.data.convert.run_jobs`; labels are uint8 in 0..59.

    Raises:
        MissingExtraError: pycocotools is not installed.
        FileNotFoundError, ValueError: a source or root that cannot be right (before any work).
        OutputError: an output could not be written.
    """
    source, root = Path(source), Path(root)
    _decoder()
    _check_root(root)
    ensure_folder(root / LABEL_DIR, "label folder")
    ensure_folder(root / SPLIT_DIR, "split folder")
    images, per_image = read_detail_json(source)
    report = ConvertReport()
    for phase in splits or list(PHASES):
        chosen = [img for img in images.values() if img.get("phase") == phase]
        if not chosen:
            report.notes.append(f"no image of phase {phase!r} in {source}")
            continue
        stems = [Path(img["file_name"]).stem for img in chosen]
        jobs = _jobs(source, root, chosen, stems, per_image)
        done = run_jobs(jobs, f"Pascal Context {phase}", progress, overwrite, workers, on_failure)
        report.merge(done)
        if done.failed:
            report.notes.append(f"{SPLIT_DIR}/{phase}.txt not written: {len(done.failed)} failed")
        else:
            write_list(root / SPLIT_DIR / f"{phase}.txt", sorted(stems))
    return report
