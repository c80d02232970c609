"""Datasets: folder-layout readers, benchmark presets and class-name files."""

from glaclip.data.cityscapes import convert_cityscapes
from glaclip.data.coco_object import convert_coco_object
from glaclip.data.coco_stuff import convert_coco_stuff
from glaclip.data.convert import ConvertReport, MissingExtraError, OutputError
from glaclip.data.datasets import LAYOUTS, Sample, list_samples, load_label, resolve_layout
from glaclip.data.pascal_context import convert_pascal_context
from glaclip.data.presets import (
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
    "Preset",
    "Sample",
    "ConvertReport",
    "MissingExtraError",
    "OutputError",
    "class_file_path",
    "convert_cityscapes",
    "convert_coco_object",
    "convert_coco_stuff",
    "convert_pascal_context",
    "get_preset",
    "list_samples",
    "load_label",
    "preset_classes",
    "preset_display_names",
    "read_class_file",
    "resolve_layout",
]
