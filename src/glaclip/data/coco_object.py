"""Build COCO-Object labels (``*_instanceTrainIds.png``) from COCO-Stuff164k label maps.

COCO-Object has 81 classes: 0 = background, 1..80 = the 80 COCO thing classes in COCO order.
Every thing pixel becomes its thing index + 1; stuff and unlabelled (255) pixels become 0.

``glaclip prepare coco-object SOURCE ROOT`` reads the split folders (``train2017/``,
``val2017/``) of ``SOURCE``, as ``coco_stuff.py`` does, and writes
``ROOT/annotations/<split>/<id>_instanceTrainIds.png``. Two input kinds are accepted, told
apart by file name:

* ``<id>_labelTrainIds.png`` (``glaclip prepare coco-stuff164k`` or mmseg's converter): things
  are 0..79, stuff 80..170, 255 unlabelled.
* any other ``<id>.png`` (the official ``stuffthingmaps``): pixel = COCO category id - 1, so
  the 80 things are the values 0..89 with gaps (11, 25, 28, 29, 44, 65, 67, 68, 70, 82 unused),
  stuff 91..181, 255 unlabelled.

When both exist for one id (the trainIds are written beside the official maps), the trainIds
map is used. Files named ``*_instanceTrainIds.png`` are outputs, never inputs. Every stuff and
unlabelled value becomes 0, as in the reference's conversion; a value that no COCO-Stuff class
has (171..254 in a trainIds map; 182..254 and the unused category values in an official map)
fails that file with its name, as ``glaclip prepare coco-stuff164k`` refuses it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from glaclip.data.coco_stuff import (
    INSTANCE_SUFFIX,
    NUM_CLASSES,
    TRAIN_SUFFIX,
    check_root,
    coco_splits,
    raw_maps,
)
from glaclip.data.coco_stuff import LUT as STUFF_LUT
from glaclip.data.convert import (
    ConvertReport,
    Job,
    OnFailure,
    ensure_folder,
    map_values,
    read_label_map,
    run_jobs,
)

OUT_SUFFIX = INSTANCE_SUFFIX

# COCO category ids (1-based, with gaps) of the 80 thing classes, in COCO order.
_THING_IDS = [
    *range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70,
    *range(72, 83), *range(84, 91),
]  # fmt: skip


TRAIN_IDS_TABLE = "COCO-Stuff's train ids (0..170, 255)"
RAW_TABLE = "COCO-Stuff's 182 category values (0..181 but the unused ones, 255)"


def _lookup_train_ids() -> np.ndarray:
    lut = np.full(256, -1, dtype=np.int16)  # -1: no COCO-Stuff class has this value
    lut[:NUM_CLASSES] = 0
    lut[:80] = np.arange(1, 81)
    lut[255] = 0
    return lut


def _lookup_raw() -> np.ndarray:
    lut = np.where(STUFF_LUT >= 0, 0, -1).astype(np.int16)  # the values coco-stuff164k takes
    for index, cat_id in enumerate(_THING_IDS):
        lut[cat_id - 1] = index + 1
    return lut


LUT_TRAIN_IDS = _lookup_train_ids()  # (256,) int16: trainId -> COCO-Object label, -1 unknown
LUT_RAW = _lookup_raw()  # (256,) int16: stuffthingmaps value -> COCO-Object label, -1 unknown


def _sources(folder: Path) -> list[tuple[str, Path, np.ndarray]]:
    """``(id, path, lookup table)`` for every label map in a split folder, sorted by id."""
    train = {
        e.name[: -len(TRAIN_SUFFIX)]: e
        for e in folder.iterdir()
        if e.name.endswith(TRAIN_SUFFIX) and not e.is_dir()
    }
    out = [(i, p, LUT_TRAIN_IDS) for i, p in train.items()]
    out += [(i, p, LUT_RAW) for i, p in raw_maps(folder).items() if i not in train]
    return sorted(out, key=lambda item: item[0])


def to_coco_object(
    label: np.ndarray, lut: np.ndarray, table: str = "COCO-Stuff's values"
) -> np.ndarray:
    """Map an ``H x W`` uint8 COCO-Stuff label map through a lookup table to COCO-Object.

    Returns:
        ``H x W`` uint8 array in ``[0, 80]``.

    Raises:
        ConversionError: a value the table does not know (``table`` names it in the message).
    """
    if label.dtype != np.uint8:
        raise ValueError(f"COCO-Stuff label maps are uint8, got dtype {label.dtype}")
    return map_values(label, lut, table)


def _jobs(found: list[tuple[str, Path, np.ndarray]], out_dir: Path) -> list[Job]:
    """One job per label map of ``_sources``: its COCO-Object labels into ``out_dir``."""
    return [
        Job(
            p,
            out_dir / f"{sid}{OUT_SUFFIX}",
            lambda p=p, t=t: to_coco_object(
                read_label_map(p), t, TRAIN_IDS_TABLE if t is LUT_TRAIN_IDS else RAW_TABLE
            ),
        )
        for sid, p, t in found
    ]


def convert_coco_object(
    source: str | os.PathLike,
    root: str | os.PathLike,
    splits: list[str] | None = None,
    progress: bool = True,
    overwrite: bool = False,
    workers: int = 1,
    on_failure: OnFailure | None = None,
) -> ConvertReport:
    """Write ``ROOT/annotations/<split>/<id>_instanceTrainIds.png`` from COCO-Stuff's maps.

    Args:
        source: the folder holding ``train2017/`` and/or ``val2017/`` (``*_labelTrainIds.png``
            and/or the official stuffthingmaps ``*.png``), or one of those folders.
        root: the dataset root (``coco_stuff164k``).
        splits: the splits to convert (default: every one found).

    Returns:
        The report of :func:`glaclip.data.convert.run_jobs`; each output is a uint8 PNG
        (mode ``L``) in ``[0, 80]``, written atomically.

    Raises:
        FileNotFoundError, ValueError: a source or root that cannot be right (before any work).
        OutputError: an output could not be written.
    """
    source, root = Path(source), Path(root)
    check_root(root)
    report = ConvertReport()
    for split, folder in coco_splits(source, splits):
        found = _sources(folder)
        if not found:
            report.notes.append(
                f"no COCO-Stuff label maps in {folder}: expected *{TRAIN_SUFFIX} or the "
                "official stuffthingmaps *.png"
            )
            continue
        out_dir = root / "annotations" / split
        ensure_folder(out_dir, "label folder")
        jobs = _jobs(found, out_dir)
        report.merge(
            run_jobs(jobs, f"COCO-Object {split}", progress, overwrite, workers, on_failure)
        )
    return report
