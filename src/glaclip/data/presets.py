"""Benchmark presets (SPEC 11) and the bundled class-name files.

A preset ties a dataset layout (``glaclip.data.datasets``) to its class file, resize short
side, probability threshold and label conventions. Class files live in
``glaclip/data/classes/<preset>.txt``: one class per line in the dataset's label order,
synonyms (query names) separated by ``; ``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from glaclip.text import read_class_file

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
    """

    name: str
    layout: str
    class_file: str
    short_side: int
    prob_threshold: float
    reduce_zero_label: bool
    background_index: int = 0
    ignore_index: int = 255


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("voc21", "voc", "voc21.txt", 336, 0.1, False),
        Preset("context60", "context", "context60.txt", 336, 0.1, False),
        Preset("coco_object", "coco_object", "coco_object.txt", 336, 0.1, False),
        Preset("voc20", "voc", "voc20.txt", 336, 0.0, True),
        Preset("context59", "context", "context59.txt", 336, 0.0, True),
        Preset("coco_stuff164k", "coco_stuff", "coco_stuff164k.txt", 336, 0.0, False),
        Preset("cityscapes", "cityscapes", "cityscapes.txt", 560, 0.0, False),
        Preset("ade20k", "ade20k", "ade20k.txt", 336, 0.0, True),
    )
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

    The class files hold the names the protocol queries (VOC's boat is queried as "ship", the
    background as 26 stuff words); where those differ from the dataset's own names, a
    ``<preset>.names.txt`` file beside the class file gives the standard ones. Otherwise the
    first query name of each class is its name.
    """
    path = class_file_path(preset)
    names_file = path.with_name(path.stem + ".names.txt")
    if names_file.is_file():
        return read_class_file(names_file)
    return [line.split(";")[0].strip() for line in read_class_file(path)]


def preset_classes(preset: Preset | str) -> list[str]:
    """The class lines of a preset's bundled class file."""
    return read_class_file(class_file_path(preset))
