"""The label tables of ``glaclip prepare``, as text for its ``--help``: for each converter, the
value of every source pixel and the label it becomes, read from the tables the converters
use (so that the help cannot drift from them)."""

from __future__ import annotations

import textwrap

import numpy as np

WIDTH = 88


def _wrap(title: str, body: str) -> str:
    lines = textwrap.wrap(body, WIDTH - 2, break_on_hyphens=False)
    return title + "\n" + "\n".join("  " + line for line in lines)


def _runs(pairs: list[tuple[int, int]]) -> str:
    """``[(0, 0), (1, 1), (3, 2)]`` as ``0-1->0-1, 3->2``: runs where both values step by 1."""
    out, start = [], 0
    for i in range(1, len(pairs) + 1):
        if i == len(pairs) or pairs[i] != (pairs[i - 1][0] + 1, pairs[i - 1][1] + 1):
            (a, b), (c, d) = pairs[start], pairs[i - 1]
            out.append(f"{a}->{b}" if a == c else f"{a}-{c}->{b}-{d}")
            start = i
    return ", ".join(out)


def cityscapes_table() -> str:
    from glaclip.data.cityscapes import LABELS

    kept = ", ".join(f"{name} {i}->{t}" for name, i, t in LABELS if t != 255)
    dropped = ", ".join(str(i) for _name, i, t in LABELS if t == 255)
    return _wrap(
        "cityscapes: *_gtFine_labelIds.png id -> train id (cityscapesScripts' labels.py)",
        f"{kept}; ids {dropped} -> 255 (ignored); any other value fails with the file's name.",
    )


def coco_stuff_table() -> str:
    from glaclip.data.coco_stuff import LUT, NUM_CLASSES, UNUSED_RAW

    pairs = _runs([(v, int(LUT[v])) for v in range(256) if 0 <= LUT[v] < NUM_CLASSES])
    return _wrap(
        "coco-stuff164k: stuffthingmaps value (COCO id - 1) -> train id (mmseg's clsID_to_trID)",
        f"{pairs}; 255 -> 255 (unlabelled); {', '.join(map(str, UNUSED_RAW))} (no COCO "
        "category) and other values fail with the file's name.",
    )


def coco_object_table() -> str:
    from glaclip.data.coco_object import LUT_RAW, LUT_TRAIN_IDS

    raw = _runs([(v, int(LUT_RAW[v])) for v in range(256) if LUT_RAW[v]])
    last = int(np.flatnonzero(LUT_TRAIN_IDS)[-1])
    return _wrap(
        "coco-object: COCO-Stuff label -> COCO-Object label (0 = background, 1..80 = things)",
        f"from *_labelTrainIds.png: train id t -> t + 1 for t in 0..{last}, every other value "
        f"-> 0; from the official stuffthingmaps: {raw}, every other value -> 0.",
    )


def pascal_context_table() -> str:
    from glaclip.data.pascal_context import LUT

    ids = np.flatnonzero(LUT >= 0)
    pairs = ", ".join(f"{int(i)}->{int(LUT[i])}" for i in ids)
    return _wrap(
        "pascal-context: Detail category id -> label (mmsegmentation's 60 ids, sorted)",
        f"{pairs}; pixels of no annotation are 0; an image with another id fails with its name.",
    )


def prepare_tables() -> str:
    """Every converter's table, one paragraph each."""
    parts = [cityscapes_table(), coco_stuff_table(), coco_object_table(), pascal_context_table()]
    return "label tables (source value -> label written):\n\n" + "\n\n".join(parts)
