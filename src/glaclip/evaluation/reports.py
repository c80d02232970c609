"""The result files of an evaluation: ``results.json`` and ``results.md`` (and the writer that
``table1.*`` uses too).

``build_results`` turns a dataset's summed counters (``metrics.SegMetric``) and its setup into
the JSON-ready dictionary; ``format_markdown`` makes the readable report; ``write_report``
writes a pair ``<stem>.json`` / ``<stem>.md`` atomically, each recorded in the folder's
manifest first (``outputs.OutputFolder``). A run with ``--limit N`` writes
``results_limitN.*``, so that runs over different numbers of images never replace each
other's results.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from glaclip.atomic import atomic_write_bytes, encode_json
from glaclip.evaluation.metrics import SegMetric
from glaclip.io.outputs import OutputFolder

if TYPE_CHECKING:
    from glaclip.evaluation.tasks import EvalTask


def limited_stem(name: str, limit: int | None) -> str:
    """``name`` for a run over the whole dataset, ``name_limitN`` for ``--limit N``."""
    return name if limit is None else f"{name}_limit{limit}"


def results_stem(limit: int | None) -> str:
    """``results``, or ``results_limitN`` for a run with ``--limit N``."""
    return limited_stem("results", limit)


def build_results(
    task: EvalTask,
    metric: SegMetric,
    settings: dict[str, Any],
    models: dict[str, Any],
    resumed: int = 0,
    processed_per_rank: Sequence[int] = (),
    seconds: float = 0.0,
) -> dict[str, Any]:
    """The JSON-ready result: metrics in percent (None where undefined) and the whole setup."""
    summary = metric.summary(task.class_names)
    return {
        "dataset": task.dataset,
        "mIoU": summary["mIoU"],
        "mAcc": summary["mAcc"],
        "aAcc": summary["aAcc"],
        "BER": summary["BER"],
        "num_images": len(task.samples),
        "per_class": [
            {
                "name": c["name"],
                "IoU": c["IoU"],
                "accuracy": c["Acc"],
                "label_pixels": int(metric.label_area[i]),
            }
            for i, c in enumerate(summary["per_class"])
        ],
        "ber_pairs": {"differ": metric.ber_diff, "total": metric.ber_total},
        "label_pixels_outside_classes": metric.label_outside,
        "data_root": str(task.data_root),
        "dataset_images": task.total_samples,
        "limit": task.limit,
        "class_file": task.class_file,
        "class_lines": list(task.class_lines),
        "reduce_zero_label": task.reduce_zero_label,
        "ignore_index": task.ignore_index,
        "settings": settings,
        "models": models,
        "resumed_images": resumed,
        "processed_images": int(sum(processed_per_rank)),
        "processed_per_rank": [int(n) for n in processed_per_rank],
        "world_size": max(1, len(processed_per_rank)),
        "seconds": seconds,
    }


def format_percent(value: float | None) -> str:
    """A metric in percent with two decimals, or ``n/a``."""
    return "n/a" if value is None or math.isnan(value) else f"{value:.2f}"


def format_markdown(results: dict[str, Any]) -> str:
    """A readable Markdown report: the headline metrics and a per-class table."""
    pct = format_percent
    images = f"{results['num_images']} images"
    if results.get("limit") is not None:
        images = f"the first {results['num_images']} of {results['dataset_images']} images"
    lines = [
        f"# {results['dataset']}: {images}",
        "",
        "| mIoU | mAcc | aAcc | BER |",
        "|---:|---:|---:|---:|",
        "| " + " | ".join(pct(results[k]) for k in ("mIoU", "mAcc", "aAcc", "BER")) + " |",
        "",
        "| # | class | IoU | Acc |",
        "|---:|---|---:|---:|",
    ]
    for i, c in enumerate(results["per_class"]):
        lines.append(f"| {i} | {c['name']} | {pct(c['IoU'])} | {pct(c['accuracy'])} |")
    outside = results.get("label_pixels_outside_classes", 0)
    if outside:
        lines += ["", outside_note(outside, len(results["per_class"]))]
    models = results["models"]
    lines += ["", "Models: " + ", ".join(f"{k}={v}" for k, v in models.items() if v is not None)]
    changed = ", ".join(f"{k}={v}" for k, v in results["settings"].items())
    lines += ["", f"Settings: {changed}", ""]
    return "\n".join(lines)


def outside_note(pixels: int, num_classes: int) -> str:
    """The report's sentence about labels outside ``[0, C)`` (see ``SegMetric.update``)."""
    return (
        f"{pixels} labelled pixels hold values outside [0, {num_classes}) (not the ignore "
        "value): counted as mmsegmentation counts them (in no class's label area; their "
        "predictions count in the prediction areas). Check the preset, the class file and "
        "reduce_zero_label."
    )


def write_results(
    out_dir: str | os.PathLike, results: dict[str, Any], overwrite: bool = False
) -> tuple[Path, Path]:
    """Write ``results.json`` and ``results.md`` (``results_limitN.*`` for a run with
    ``limit`` N) into ``out_dir`` (``write_report``)."""
    stem = results_stem(results.get("limit"))
    return write_report(out_dir, stem, results, format_markdown, overwrite)


def write_report(
    out_dir: str | os.PathLike,
    stem: str,
    data: dict[str, Any],
    markdown: Callable[[dict[str, Any]], str],
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Write ``data`` as ``<stem>.json`` and ``markdown(data)`` as ``<stem>.md`` into
    ``out_dir``, each atomically, recorded in the folder's manifest first.

    Raises:
        ValueError: a file of that name is there and glaclip did not write it (allowed with
            ``overwrite``), or ``data`` holds NaN or Infinity.
        WriteError: a file could not be written.
    """
    out = OutputFolder(out_dir)
    names = [f"{stem}.json", f"{stem}.md"]
    out.check(names, overwrite)
    text, md = encode_json(data, str(out.path / names[0])), markdown(data).encode("utf-8")
    out.claim(names)
    json_path = atomic_write_bytes(out.path / names[0], text)
    return json_path, atomic_write_bytes(out.path / names[1], md)
