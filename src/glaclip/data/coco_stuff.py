"""COCO-Stuff164k: the official ``stuffthingmaps`` to mmsegmentation's ``*_labelTrainIds.png``.

The official label maps (``stuffthingmaps_trainval2017.zip``: ``train2017/<id>.png``,
``val2017/<id>.png``) hold COCO category id - 1 per pixel: the 80 things are the values 0..89
with 10 gaps, the 91 stuff classes 91..181, and 255 is unlabelled. mmsegmentation's
converter, ``tools/dataset_converters/coco_stuff164k.py`` (its ``clsID_to_trID`` table),
numbers the 171 used values consecutively, 0..170 in increasing order, and keeps 255; it
writes ``annotations/<split>/<id>_labelTrainIds.png`` (mode ``L``) under the dataset root. The
unused values are those of the category ids COCO left out (12, 26, 29, 30, 45, 66, 68, 69, 71,
83, 91): the converter's table has no entry for them, so it would leave them as they are and
collide with real train ids; they never occur in the official files, and here a file holding
one fails with its name instead.

``glaclip prepare coco-stuff164k SOURCE ROOT``: ``SOURCE`` is the folder the zip was unzipped
into (holding ``train2017/`` and/or ``val2017/``; mmsegmentation's instructions unzip it into
``coco_stuff164k/annotations``), or one of those split folders; ``ROOT`` the dataset root
(``coco_stuff164k``). Outputs go to ``ROOT/annotations/<split>/``, beside the sources when
``SOURCE`` is ``ROOT/annotations``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from glaclip.data.convert import (
    ConvertReport,
    Job,
    OnFailure,
    ensure_folder,
    map_values,
    read_label_map,
    run_jobs,
    split_folders,
)

SPLITS = ("train2017", "val2017")
TRAIN_SUFFIX = "_labelTrainIds.png"
INSTANCE_SUFFIX = "_instanceTrainIds.png"  # COCO-Object's outputs (coco_object.py)
# stuffthingmaps values (COCO category id - 1) that no COCO category uses
UNUSED_RAW = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
NUM_CLASSES = 171


def _lookup() -> np.ndarray:
    lut = np.full(256, -1, dtype=np.int16)
    used = [v for v in range(182) if v not in UNUSED_RAW]
    lut[used] = np.arange(len(used))
    lut[255] = 255
    return lut


LUT = _lookup()  # (256,) int16: stuffthingmaps value -> train id (0..170, 255), -1 unknown


def coco_splits(source: Path, splits: list[str] | None) -> list[tuple[str, Path]]:
    """``(split, folder)`` of each COCO split under ``source`` (see ``convert.split_folders``)."""
    what = "the folder stuffthingmaps_trainval2017.zip was unzipped into (holding val2017/)"
    return split_folders(source, SPLITS, splits, what)


def check_root(root: Path) -> None:
    """Refuse a ``ROOT`` that is a label folder rather than the dataset root (the old form)."""
    if root.name in SPLITS or root.name == "annotations":
        raise ValueError(
            f"ROOT {root} looks like a label folder: pass the dataset root (coco_stuff164k, "
            "holding images/ and annotations/); the labels go to ROOT/annotations/<split>/"
        )
    if root.exists() and not root.is_dir():
        raise ValueError(f"ROOT {root} is a file: pass the dataset folder (coco_stuff164k)")


def raw_maps(folder: Path) -> dict[str, Path]:
    """``{id: path}`` of the official maps in a split folder (not the converted ones)."""
    out = {}
    for entry in folder.iterdir():
        name = entry.name
        if not name.endswith(".png") or name.endswith((TRAIN_SUFFIX, INSTANCE_SUFFIX)):
            continue
        if not entry.is_dir():  # a dangling link is read, and reported
            out[name[: -len(".png")]] = entry
    return out


def to_train_ids(label: np.ndarray) -> np.ndarray:
    """``H x W`` uint8 stuffthingmaps values -> ``H x W`` uint8 train ids (0..170, 255).

    Raises:
        ConversionError: a value that no COCO-Stuff category uses.
    """
    return map_values(label, LUT, "COCO-Stuff's 182 category values (0..181, 255)")


def _convert(path: Path) -> np.ndarray:
    return to_train_ids(read_label_map(path))


def convert_coco_stuff(
    source: str | os.PathLike,
    root: str | os.PathLike,
    splits: list[str] | None = None,
    progress: bool = True,
    overwrite: bool = False,
    workers: int = 1,
    on_failure: OnFailure | None = None,
) -> ConvertReport:
    """Write ``ROOT/annotations/<split>/<id>_labelTrainIds.png`` from the official maps.

    Args:
        source: the folder holding ``train2017/`` and/or ``val2017/`` stuffthingmaps (or one
            of those folders).
        root: the dataset root (``coco_stuff164k``).
        splits: the splits to convert (default: every one found).

    Returns:
        The report of :func:`glaclip.data.convert.run_jobs`.

    Raises:
        FileNotFoundError, ValueError: a source or root that cannot be right (before any work).
        OutputError: an output could not be written.
    """
    source, root = Path(source), Path(root)
    check_root(root)
    report = ConvertReport()
    for split, folder in coco_splits(source, splits):
        maps = raw_maps(folder)
        if not maps:
            report.notes.append(f"no stuffthingmaps *.png in {folder}")
            continue
        out_dir = root / "annotations" / split
        ensure_folder(out_dir, "label folder")
        jobs = [
            Job(
                path,
                out_dir / f"{sid}{TRAIN_SUFFIX}",
                lambda p=path: to_train_ids(read_label_map(p)),
            )
            for sid, path in sorted(maps.items())
        ]
        desc = f"COCO-Stuff {split}"
        report.merge(run_jobs(jobs, desc, progress, overwrite, workers, on_failure))
    return report
