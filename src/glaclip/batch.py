"""Segmenting many image files: outputs per image, bad files reported and skipped."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from glaclip.distributed import DistInfo, shard
from glaclip.imageio import (
    IMAGE_EXTENSIONS,
    ImageReadError,
    read_image,
    save_json,
    save_label_png,
    save_rgb,
)
from glaclip.segmenter import Segmentation, Segmenter
from glaclip.viz import make_palette, overlay


@dataclass
class BatchReport:
    """Which inputs were written and which failed (with the reason)."""

    done: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


def collect_images(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Expand folders to the image files directly inside them (sorted); keep files as given.

    A path that does not exist stays in the list, so that it is reported when its turn comes.
    """
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(
                c for c in p.iterdir() if c.is_file() and c.suffix.lower() in IMAGE_EXTENSIONS
            )
            paths.extend(found)
        else:
            paths.append(p)
    return paths


def output_stems(paths: Sequence[Path]) -> list[str]:
    """Output name stems, unique: the file stem, or ``parent_stem`` where stems collide."""
    stems = [p.stem for p in paths]
    seen: dict[str, int] = {}
    for s in stems:
        seen[s] = seen.get(s, 0) + 1
    out = []
    used: set[str] = set()
    for p, s in zip(paths, stems, strict=True):
        name = s if seen[s] == 1 else f"{p.parent.name}_{s}"
        base, k = name, 1
        while name in used:
            k += 1
            name = f"{base}_{k}"
        used.add(name)
        out.append(name)
    return out


def describe(
    result: Segmentation, source: Path, settings: dict[str, Any], models: dict[str, Any]
) -> dict[str, Any]:
    """The JSON record of one segmented image."""
    shares = result.pixel_shares()
    labelled = float(np.isin(result.labels, np.arange(len(result.class_names))).mean())
    return {
        "image": str(source),
        "image_size": {"height": result.image_size[0], "width": result.image_size[1]},
        "resized_size": {"height": result.resized_size[0], "width": result.resized_size[1]},
        "classes": [
            {"index": i, "name": names[0], "queries": names, "pixel_share": shares[i]}
            for i, names in enumerate(result.class_names)
        ],
        "unlabelled_share": 1.0 - labelled,
        "settings": settings,
        "models": models,
        "seconds": result.timings,
    }


def segment_files(
    segmenter: Segmenter,
    paths: Sequence[Path],
    class_lines: Sequence[str],
    out_dir: Path,
    write_overlay: bool = True,
    models: dict[str, Any] | None = None,
    dist: DistInfo | None = None,
    progress: bool = True,
) -> BatchReport:
    """Segment each image and write ``<stem>.png``, ``<stem>_overlay.jpg`` and ``<stem>.json``.

    Under torchrun each process takes its share of the images (``distributed.shard``). An image
    that cannot be read is recorded in the report and skipped; nothing is written for it. Every
    file is written under a temporary name and renamed when complete.
    """
    dist = dist or DistInfo()
    out_dir.mkdir(parents=True, exist_ok=True)
    report = BatchReport()
    jobs = shard(list(zip(paths, output_stems(paths), strict=True)), dist)
    settings = segmenter.settings.to_dict()
    models = models or segmenter.model_names()
    n_classes = len(class_lines)
    palette = make_palette(256)
    bar = tqdm(jobs, desc="segment", unit="img", disable=not progress or len(jobs) < 2)
    for path, stem in bar:
        try:
            rgb = read_image(path)
        except ImageReadError as err:
            report.failed.append((path, str(err)))
            continue
        result = segmenter.segment(rgb, class_lines)
        save_label_png(out_dir / f"{stem}.png", result.labels, palette)
        if write_overlay:
            names = [c[0] for c in result.class_names]
            unl = segmenter.settings.post.background_index
            picture = overlay(
                rgb,
                result.labels,
                names,
                palette=palette,
                unlabeled_index=unl if unl >= n_classes else None,
            )
            save_rgb(out_dir / f"{stem}_overlay.jpg", picture)
        save_json(out_dir / f"{stem}.json", describe(result, path, settings, models))
        report.done.append(path)
    return report
