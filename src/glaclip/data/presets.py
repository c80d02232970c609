"""Benchmark presets (SPEC 11) and the bundled class-name files.

A preset ties a dataset layout (``glaclip.data.datasets``) to its class file, resize short
side, probability threshold and label conventions. Class files live in
``glaclip/data/classes/<preset>.txt``: one class per line in the dataset's label order,
synonyms (query names) separated by ``; ``. They hold the query words of the paper's
reference implementation, line for line (``trafficlight``, ``chestofdrawers``: the words
Table 1's prompts were built from); ``<preset>.names.txt`` holds the dataset's standard
names (mmsegmentation's) where they differ, for reports.

``PRESETS`` is in the order of the paper's Table 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from glaclip.text.vocabulary import read_class_file

CLASS_DIR = Path(__file__).resolve().parent / "classes"


@dataclass(frozen=True)
class Preset:
    """One benchmark setting.

    Attributes:
        name: preset name, e.g. ``voc21``.
        layout: folder layout name understood by ``list_samples``.
        class_file: file name inside ``glaclip/data/classes``.
        short_side: resize target for the image's short side (SPEC 1).
        prob_threshold: below this winning probability a pixel gets ``background_index``.
        reduce_zero_label: apply mmseg's reduce_zero_label to the ground truth.
        background_index: label given to low-confidence pixels.
        ignore_index: ground-truth value excluded from the metrics.
        title: the benchmark's name in tables (the paper's column title).
        folder: where the dataset's root lies under the root of ``glaclip eval --dataset
            all`` (the README's layout).
    """

    name: str
    layout: str
    class_file: str
    short_side: int
    prob_threshold: float
    reduce_zero_label: bool
    background_index: int = 0
    ignore_index: int = 255
    title: str = ""
    folder: str = ""


_VOC, _CONTEXT, _COCO = "VOCdevkit/VOC2012", "VOCdevkit/VOC2010", "coco_stuff164k"
# name, layout, short side, prob_threshold, reduce_zero_label, title, folder
_TABLE1 = [
    ("voc21", "voc", 336, 0.1, False, "VOC21", _VOC),
    ("context60", "context", 336, 0.1, False, "Context60", _CONTEXT),
    ("coco_object", "coco_object", 336, 0.1, False, "COCO-Object", _COCO),
    ("voc20", "voc", 336, 0.0, True, "VOC20", _VOC),
    ("context59", "context", 336, 0.0, True, "Context59", _CONTEXT),
    ("coco_stuff164k", "coco_stuff", 336, 0.0, False, "COCO-Stuff", _COCO),
    ("cityscapes", "cityscapes", 560, 0.0, False, "Cityscapes", "cityscapes"),
    ("ade20k", "ade20k", 336, 0.0, True, "ADE20K", "ADEChallengeData2016"),
]
PRESETS: dict[str, Preset] = {
    name: Preset(name, layout, f"{name}.txt", short, thd, rzl, title=t, folder=f)
    for name, layout, short, thd, rzl, t, f in _TABLE1
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; ValueError listing the valid names otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown dataset preset {name!r}; valid presets: {', '.join(PRESETS)}"
        ) from None


def class_file_path(preset: Preset | str) -> Path:
    """Path of a preset's bundled class file (a preset or a preset name)."""
    if isinstance(preset, str):
        preset = get_preset(preset)
    return CLASS_DIR / preset.class_file


def preset_display_names(preset: Preset | str) -> list[str]:
    """The dataset's standard class names, in label order, for reports.

    The class files hold the words the protocol queries (VOC's boat is queried as "ship", the
    background as 26 stuff words, ADE20K's "chest of drawers" as "chestofdrawers"); where
    those differ from the dataset's own names, a ``<preset>.names.txt`` file beside the class
    file gives the standard ones (mmsegmentation's class names). Otherwise the first query
    name of each class is its name.
    """
    path = class_file_path(preset)
    names_file = path.with_name(path.stem + ".names.txt")
    if names_file.is_file():
        return read_class_file(names_file)
    return [line.split(";")[0].strip() for line in read_class_file(path)]


def preset_classes(preset: Preset | str) -> list[str]:
    """The class lines of a preset's bundled class file."""
    return read_class_file(class_file_path(preset))
