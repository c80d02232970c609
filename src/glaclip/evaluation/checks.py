"""The check of a data root before a long evaluation (``glaclip eval ... --check``).

For each benchmark: found or not, its images and labels against the official validation
counts, the first few missing files, labels of another size than their image, label values
outside the preset's classes, and the estimated time of its evaluation on this device
(``estimate.py``). Each dataset folder is read once even when two presets use it (VOC21 and
VOC20, Context60 and Context59). Nothing here loads a model.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glaclip.config import settings_from_kwargs
from glaclip.data.check import (
    DatasetScan,
    PresetCheck,
    check_preset,
    named,
    scan_dataset,
)
from glaclip.data.presets import PRESETS, Preset
from glaclip.evaluation.estimate import DeviceSpeed, estimate_seconds, format_duration
from glaclip.evaluation.tasks import preset_settings

# what makes a layout's labels, when they are missing
PREPARE_HINTS = {
    "context": "glaclip prepare pascal-context trainval_merged.json VOCdevkit/VOC2010",
    "coco_object": "glaclip prepare coco-object coco_stuff164k/annotations coco_stuff164k",
    "coco_stuff": "glaclip prepare coco-stuff164k coco_stuff164k/annotations coco_stuff164k",
    "cityscapes": "glaclip prepare cityscapes cityscapes/gtFine cityscapes",
}


@dataclass
class RootCheck:
    """Every preset asked for: its check (None when its folder is missing) and its estimate."""

    checks: list[tuple[Preset, Path, PresetCheck | None, float | None]]

    @property
    def ok(self) -> bool:
        return all(c is not None and c.ok for _, _, c, _ in self.checks)


def vfm_patch(vfm: str | None) -> int:
    """The VFM's patch size as its timm name says (``..._patch8_...``), else 8."""
    found = re.search(r"patch(\d+)", vfm or "")
    return int(found.group(1)) if found else 8


def check_root(
    folders: dict[str, Path],
    settings: dict[str, Any],
    speed: DeviceSpeed | None,
    limit: int | None = None,
    vfm: str | None = None,
    progress: bool = True,
    workers: int = 1,
    num_classes: int | None = None,
    reduce: bool | None = None,
) -> RootCheck:
    """Check each preset's dataset folder (``{preset: folder}``); scans are shared.

    ``num_classes`` and ``reduce`` override the presets' (one benchmark with a custom class
    file or ``--[no-]reduce-zero-label``)."""
    scans: dict[tuple[str, Path], DatasetScan] = {}
    out = []
    for name, folder in folders.items():
        preset = PRESETS[name]
        if not folder.is_dir():
            out.append((preset, folder, None, None))
            continue
        key = (preset.layout, folder)
        if key not in scans:
            scans[key] = scan_dataset(preset.layout, folder, limit, progress, workers)
        check = check_preset(preset, scans[key], num_classes, reduce)
        seconds = None
        if speed is not None and scans[key].sizes:
            full = settings_from_kwargs(
                **{**preset_settings(name, settings.get("base")), **settings}
            )
            seconds = estimate_seconds(scans[key].sizes, full, speed, vfm_patch(vfm))
        out.append((preset, folder, check, seconds))
    return RootCheck(out)


def _n(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def _counts(check: PresetCheck, limit: int | None) -> str:
    s = check.scan
    text = f"{_n(s.images, 'image')}, {_n(s.labels, 'label')} (official val: {check.official:,})"
    if limit is not None and s.read < s.labels:
        text += f"; the first {s.read:,} read (--limit)"
    return text


def _problems(check: PresetCheck) -> list[str]:
    s, lines = check.scan, []
    if s.listed != check.official and not s.problem:
        lines.append(f"{s.listed:,} images listed where the official validation set has "
                     f"{check.official:,}")  # fmt: skip
    if s.missing_images:
        lines.append(f"images missing ({len(s.missing_images):,}): {named(s.missing_images)}")
    if s.missing_labels:
        hint = PREPARE_HINTS.get(s.layout)
        lines.append(
            f"labels missing ({len(s.missing_labels):,}): {named(s.missing_labels)}"
            + (f"; make them with: {hint}" if hint else "")
        )
    if s.wrong_size:
        lines.append(f"labels of another size ({len(s.wrong_size):,}): {named(s.wrong_size)}")
    if check.outside:
        top = check.num_classes - 1
        lines.append(
            f"labels with values outside 0..{top} and 255 ({len(check.outside):,}): "
            f"{named(check.outside)}"
        )
    if s.unreadable:
        lines.append(f"unreadable ({len(s.unreadable):,}): {named(s.unreadable)}")
    return lines


def format_check(result: RootCheck, speed: DeviceSpeed | None, limit: int | None = None) -> str:
    """The check as plain text: one line per benchmark, its problems indented below, then the
    estimated total."""
    lines = []
    width = max(len(p.title) for p, _, _, _ in result.checks)
    for preset, folder, check, seconds in result.checks:
        head = f"  {preset.title:<{width}}  "
        if check is None:
            lines.append(head + f"not found: no folder {folder}")
            continue
        if check.scan.problem:
            lines.append(head + f"found {folder}, but {check.scan.problem}")
            continue
        status = "ok" if check.ok else "PROBLEMS"
        est = "" if seconds is None else f"; estimate {format_duration(seconds)}"
        lines.append(head + f"{status}: {_counts(check, limit)}{est}")
        lines += [f"  {' ' * width}    {p}" for p in _problems(check)]
    lines.append(_total(result, speed))
    return "\n".join(lines)


def _total(result: RootCheck, speed: DeviceSpeed | None) -> str:
    timed = [s for _, _, _, s in result.checks if s is not None]
    if speed is None or not timed:
        return "No time estimate (nothing to evaluate, or no device measured)."
    return (
        f"Estimated time for {len(timed)} benchmark(s): {format_duration(sum(timed))} on "
        f"{speed.name}, whose float32 matrix products ran at "
        f"{speed.flops_per_second / 1e9:,.0f} GFLOP/s just now. An estimate from the FLOPs "
        "counted in BENCHMARKS.md for the paper's ViT-B models, not a measurement of "
        "glaclip on this device (on a GPU, a lower bound)."
    )


def benchmark_folders(root: str | os.PathLike, dataset: str) -> dict[str, Path]:
    """``{preset: folder}``: every preset under ``root`` (``all``), or ``root`` itself."""
    root = Path(root)
    if dataset == "all":
        return {name: root / p.folder for name, p in PRESETS.items()}
    return {dataset: root}
