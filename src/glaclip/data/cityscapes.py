"""Cityscapes: ``*_gtFine_labelTrainIds.png`` from the official ``*_gtFine_labelIds.png``.

The official ``gtFine_trainvaltest.zip`` holds, per image, the label ids drawn from the
polygons (``<city>_<seq>_<frame>_gtFine_labelIds.png``, ids 0..33). The train ids the
benchmark uses are those of cityscapesScripts' label table
(``cityscapesscripts/helpers/labels.py``, mcordts/cityscapesScripts): 19 classes 0..18, every
other id 255. cityscapesScripts' ``preparation/createTrainIdLabelImgs.py`` (which
mmsegmentation's ``tools/dataset_converters/cityscapes.py`` calls through ``json2labelImg``)
draws the polygons again with the train ids; since the id -> train id map is a function and
both images are drawn from the same polygons in the same order, mapping the official
``labelIds`` images gives the same pixels without the polygons (the license plate, id -1, is
drawn in neither). The outputs go where those tools put them,
``ROOT/gtFine/<split>/<city>/<stem>_gtFine_labelTrainIds.png`` (mode ``L``), and, as
mmsegmentation's converter does, ``ROOT/<split>.txt`` lists ``<city>/<stem>`` per image
(sorted here; the converter lists them in directory order).

``glaclip prepare cityscapes SOURCE ROOT``: ``SOURCE`` is the ``gtFine`` folder (with
``train/``, ``val/``, ``test/``) or one split folder of it; ``ROOT`` the dataset root
(``cityscapes``, holding ``leftImg8bit/``).
"""

from __future__ import annotations

import os
from functools import partial
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
    write_list,
)

SPLITS = ("train", "val", "test")
SOURCE_SUFFIX = "_gtFine_labelIds.png"
OUT_SUFFIX = "_gtFine_labelTrainIds.png"

# cityscapesScripts' labels.py, in id order: (name, id, trainId)
LABELS = (
    ("unlabeled", 0, 255), ("ego vehicle", 1, 255), ("rectification border", 2, 255),
    ("out of roi", 3, 255), ("static", 4, 255), ("dynamic", 5, 255), ("ground", 6, 255),
    ("road", 7, 0), ("sidewalk", 8, 1), ("parking", 9, 255), ("rail track", 10, 255),
    ("building", 11, 2), ("wall", 12, 3), ("fence", 13, 4), ("guard rail", 14, 255),
    ("bridge", 15, 255), ("tunnel", 16, 255), ("pole", 17, 5), ("polegroup", 18, 255),
    ("traffic light", 19, 6), ("traffic sign", 20, 7), ("vegetation", 21, 8),
    ("terrain", 22, 9), ("sky", 23, 10), ("person", 24, 11), ("rider", 25, 12),
    ("car", 26, 13), ("truck", 27, 14), ("bus", 28, 15), ("caravan", 29, 255),
    ("trailer", 30, 255), ("train", 31, 16), ("motorcycle", 32, 17), ("bicycle", 33, 18),
)  # fmt: skip


def _lookup() -> np.ndarray:
    lut = np.full(256, -1, dtype=np.int16)
    for _name, label_id, train_id in LABELS:
        lut[label_id] = train_id
    return lut


LUT = _lookup()  # (256,) int16: label id -> train id (0..18, 255), -1 unknown


def to_train_ids(label: np.ndarray) -> np.ndarray:
    """``H x W`` uint8 Cityscapes label ids (0..33) -> ``H x W`` uint8 train ids (0..18, 255).

    Raises:
        ConversionError: a value that is no Cityscapes label id.
    """
    return map_values(label, LUT, "Cityscapes' label ids (0..33)")


def _convert(path: Path) -> np.ndarray:
    return to_train_ids(read_label_map(path))


def _check_root(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise ValueError(f"ROOT {root} is a file: pass the dataset folder (cityscapes)")
    if root.name in ("gtFine", *SPLITS):
        raise ValueError(
            f"ROOT {root} looks like a label folder: pass the dataset root (cityscapes, "
            "holding leftImg8bit/); the labels go to ROOT/gtFine/<split>/<city>/"
        )


def _label_files(folder: Path) -> list[tuple[str, Path]]:
    """``(city/stem, path)`` of every ``*_gtFine_labelIds.png`` one level below ``folder``."""
    found = []
    for city in sorted(p for p in folder.iterdir() if p.is_dir()):
        for entry in city.iterdir():
            if entry.name.endswith(SOURCE_SUFFIX) and not entry.is_dir():
                found.append((f"{city.name}/{entry.name[: -len(SOURCE_SUFFIX)]}", entry))
    return sorted(found)


def convert_cityscapes(
    source: str | os.PathLike,
    root: str | os.PathLike,
    splits: list[str] | None = None,
    progress: bool = True,
    overwrite: bool = False,
    workers: int = 1,
    on_failure: OnFailure | None = None,
) -> ConvertReport:
    """Write the train-id label maps and the split lists of Cityscapes under ``root``.

    Args:
        source: the ``gtFine`` folder, or one split folder of it.
        root: the dataset root (``cityscapes``).
        splits: the splits to convert (default: every one found).

    Returns:
        The report of :func:`glaclip.data.convert.run_jobs`. A split's list
        (``ROOT/<split>.txt``) is written only when every file of the split converted.

    Raises:
        FileNotFoundError, ValueError: a source or root that cannot be right (before any work).
        OutputError: an output could not be written.
    """
    source, root = Path(source), Path(root)
    _check_root(root)
    report = ConvertReport()
    what = "the gtFine folder of gtFine_trainvaltest.zip (holding train/, val/, test/)"
    for split, folder in split_folders(source, SPLITS, splits, what):
        files = _label_files(folder)
        if not files:
            report.notes.append(f"no *{SOURCE_SUFFIX} in {folder}/<city>/")
            continue
        out_dir = root / "gtFine" / split
        for city in sorted({name.split("/")[0] for name, _ in files}):
            ensure_folder(out_dir / city, "label folder")
        jobs = [Job(p, out_dir / f"{name}{OUT_SUFFIX}", partial(_convert, p)) for name, p in files]
        done = run_jobs(jobs, f"Cityscapes {split}", progress, overwrite, workers, on_failure)
        report.merge(done)
        if done.failed:
            report.notes.append(f"{root / split}.txt not written: {len(done.failed)} failed")
        else:
            write_list(root / f"{split}.txt", [name for name, _ in files])
    return report
