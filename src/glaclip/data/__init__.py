"""Datasets: folder-layout readers, benchmark presets and class-name files."""

from glaclip.data.coco_object import convert_coco_object
from glaclip.data.datasets import LAYOUTS, Sample, list_samples, load_label, resolve_layout
from glaclip.data.presets import (
    PAPER_AVERAGE_MIOU,
    PRESETS,
    Preset,
    class_file_path,
    get_preset,
    preset_classes,
    preset_display_names,
    read_class_file,
)

__all__ = [
    "LAYOUTS",
    "PRESETS",
    "PAPER_AVERAGE_MIOU",
    "Preset",
    "Sample",
    "class_file_path",
    "convert_coco_object",
    "get_preset",
    "list_samples",
    "load_label",
    "preset_classes",
    "preset_display_names",
    "read_class_file",
    "resolve_layout",
]
