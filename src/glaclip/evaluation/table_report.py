"""Table 1 as data and as Markdown: one row per benchmark, the average, the paper's column.

``build_table`` gathers the rows (``table_row``, from each benchmark's ``results.json``), their
average and what was not run or failed; ``table_notes`` says in plain sentences what the table
is not (missing rows, ``--limit``, settings or models other than the paper's);
``write_table`` writes ``table1.json`` and ``table1.md``. The published numbers of the method
run (``reference``: the GLA-CLIP paper's Table 1 for GLA on ProxyCLIP, SCLIP's and NACLIP's
own for those bases per window, ...) are shown only for rows whose settings are those of the
published protocol (``paper_differences``), so that an ablation is never compared with the
wrong reference.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from glaclip.config import GLAConfig, settings_from_kwargs
from glaclip.constants import DEFAULT_CLIP, DEFAULT_CLIP_PRETRAINED, DEFAULT_VFM
from glaclip.data.presets import PRESETS, Preset
from glaclip.evaluation.reports import format_percent, limited_stem, results_stem, write_report
from glaclip.evaluation.tasks import preset_settings
from glaclip.model.bases.base import Published
from glaclip.registry import base_class, needs_vfm

if TYPE_CHECKING:
    from glaclip.evaluation.table import Benchmark

# settings that change how the work is split, or only its round-off, not the method
_NOT_METHOD = (
    "window_batch",
    "block_size",
    "attention_impl",
    "precision",
    "fused_attention",
    "allow_slow",
)
PAPER_MODELS = {
    "clip": DEFAULT_CLIP,
    "clip_pretrained": DEFAULT_CLIP_PRETRAINED,
    "vfm": DEFAULT_VFM,
    "vfm_checkpoint": None,
}


def reference(settings: dict[str, Any]) -> Published | None:
    """The published numbers of the method a run's flat settings name: its base method per
    window (``kv_extension`` off) or with GLA, where its authors (or the GLA-CLIP paper)
    published them; None otherwise."""
    cls = base_class(settings.get("base") or GLAConfig.base)
    return cls.published.get(bool(settings.get("kv_extension", True)))


def paper_differences(name: str, settings: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The method settings of a run that are not those of its published reference: the base
    method's own protocol (``preset_settings``) for a method with published numbers
    (``reference``), the paper's Table 1 (GLA-CLIP's defaults) otherwise.

    Args:
        name: the preset.
        settings: the run's flat settings (``Settings.to_dict()``, as in results.json).

    Returns:
        ``{setting: {"used": value, "paper": value}}``, empty when the published number
        applies. Settings that only split the work or change round-off (window batch, block
        size, attention implementation, precision, fused attention) are not compared.
    """
    if reference(settings) is None:
        paper = settings_from_kwargs(**preset_settings(name)).to_dict()
    else:
        base = settings.get("base") or GLAConfig.base
        kv = bool(settings.get("kv_extension", True))
        paper = settings_from_kwargs(
            **preset_settings(name, base), base=base, kv_extension=kv
        ).to_dict()
    return {
        key: {"used": settings.get(key), "paper": value}
        for key, value in paper.items()
        if key not in _NOT_METHOD and settings.get(key) != value
    }


def table_row(preset: Preset, results: dict[str, Any]) -> dict[str, Any]:
    """One benchmark's row of Table 1 from its ``results.json`` dictionary."""
    differ = paper_differences(preset.name, results["settings"])
    ref = reference(results["settings"])
    paper = None if differ or ref is None else ref.miou.get(preset.name)
    miou = results["mIoU"]
    return {
        "dataset": preset.name,
        "title": preset.title,
        "mIoU": miou,
        "aAcc": results["aAcc"],
        "BER": results["BER"],
        "num_images": results["num_images"],
        "dataset_images": results["dataset_images"],
        "paper_mIoU": paper,
        "difference": None if paper is None or miou is None else miou - paper,
        "settings_differ": differ,
        "label_pixels_outside_classes": results.get("label_pixels_outside_classes", 0),
        "results": f"{preset.name}/{results_stem(results.get('limit'))}.json",
    }


def _mean(values: list[float | None]) -> float | None:
    if not values or any(v is None for v in values):
        return None
    return math.fsum(values) / len(values)  # type: ignore[arg-type]


def build_table(
    rows: list[dict[str, Any]],
    benchmarks: list[Benchmark],
    failed: dict[str, str],
    limit: int | None,
    data_root: str | os.PathLike,
    models: dict[str, Any],
    settings: dict[str, Any],
) -> dict[str, Any]:
    """Table 1 as a JSON-ready dictionary: the rows, their average, and what was not run.

    ``failed`` maps preset names to the message that stopped them (during evaluation); the
    benchmarks whose data was found broken before are taken from ``benchmarks``.
    """
    failed = {b.preset.name: b.reason for b in benchmarks if b.status == "failed"} | failed
    not_run = [
        {"dataset": b.preset.name, "title": b.preset.title, "reason": b.reason}
        for b in benchmarks
        if b.status == "missing"
    ]
    failures = [
        {"dataset": name, "title": PRESETS[name].title, "error": failed[name]}
        for name in PRESETS
        if name in failed
    ]
    ref = reference(settings)
    average = _average(rows, ref)
    table = {
        "benchmarks": rows,
        "average": average,
        "not_run": not_run,
        "failed": failures,
        "complete": len(rows) == len(PRESETS) and limit is None,
        "limit": limit,
        "data_root": str(data_root),
        "models": models,
        "settings": settings,
        "paper": {
            "source": None if ref is None else f"{ref.source}, mIoU %",
            "mIoU": {} if ref is None else dict(ref.miou),
            "average": None if ref is None else ref.average,
        },
    }
    table["notes"] = table_notes(table)
    return table


def _value(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _average(rows: list[dict[str, Any]], ref: Published | None) -> dict[str, Any]:
    """The rows' average, beside the published one: the published average itself where every
    benchmark ran with the published settings, else the mean of the rows' published numbers."""
    paper_avg = _mean([r["paper_mIoU"] for r in rows])
    matches = bool(rows) and not any(r["settings_differ"] for r in rows)
    if ref is not None and ref.average is not None and matches and len(rows) == len(PRESETS):
        paper_avg = ref.average  # the published average (of unrounded numbers)
    avg_miou = _mean([r["mIoU"] for r in rows])
    return {
        "benchmarks": len(rows),
        "mIoU": avg_miou,
        "aAcc": _mean([r["aAcc"] for r in rows]),
        "BER": _mean([r["BER"] for r in rows]),
        "paper_mIoU": paper_avg,
        "difference": None if paper_avg is None or avg_miou is None else avg_miou - paper_avg,
    }


def table_notes(table: dict[str, Any]) -> list[str]:
    """Plain sentences about what the table is not: missing rows, limits, other settings."""
    return [*_coverage_notes(table), *_settings_notes(table)]


def _coverage_notes(table: dict[str, Any]) -> list[str]:
    """What was published, and which benchmarks and images the table covers."""
    rows, notes = table["benchmarks"], []
    published = table["paper"]
    if published["source"] is None:
        notes.append(
            "No published numbers for this method (base method and KV extension): the paper "
            "column is empty."
        )
    elif not published["mIoU"]:
        notes.append(
            f"Published ({published['source']}): the average over the {len(PRESETS)} "
            f"benchmarks only, {published['average']}; no number per benchmark."
        )
    if len(rows) < len(PRESETS):
        ran = ", ".join(r["title"] for r in rows) or "none"
        own = published["average"]
        own = f" (the published one, {own}, is over all {len(PRESETS)})" if own else ""
        notes.append(
            f"{len(rows)} of {len(PRESETS)} benchmarks were run ({ran}): the average is over "
            f"these only, and so is the paper column's average{own}."
        )
    notes += [f"Not run: {item['title']}: {item['reason']}." for item in table["not_run"]]
    notes += [
        f"Failed: {item['title']}: {item['error']} (the images finished before are kept; "
        "the same command continues once the data is fixed)."
        for item in table["failed"]
    ]
    if table["limit"] is not None:
        notes.append(
            f"--limit {table['limit']}: each benchmark was evaluated on its first "
            f"{table['limit']} images only; the numbers are not the benchmarks' and not "
            "comparable with the paper's."
        )
    return notes


def _settings_notes(table: dict[str, Any]) -> list[str]:
    """Where the settings or the models are not the published ones, and odd label values."""
    rows, notes = table["benchmarks"], []
    groups: dict[str, list[str]] = {}
    for r in rows:
        if r["settings_differ"]:
            what = ", ".join(
                f"{k}={_value(v['used'])} (paper: {_value(v['paper'])})"
                for k, v in r["settings_differ"].items()
            )
            groups.setdefault(what, []).append(r["title"])
    for what, titles in groups.items():
        notes.append(
            f"Paper column not applicable to {', '.join(titles)}: the method settings differ "
            f"from the paper's: {what}."
        )
    base = table["settings"].get("base") or GLAConfig.base
    compared = PAPER_MODELS if needs_vfm(base) else {"clip": DEFAULT_CLIP}
    if any(table["models"].get(k) != v for k, v in compared.items()):
        notes.append(
            "The models are not the paper's (CLIP ViT-B-16 openai, VFM "
            f"{DEFAULT_VFM}): compare with the paper's column with that in mind."
        )
    notes += [
        f"{r['title']}: {r['label_pixels_outside_classes']} labelled pixels hold values "
        "outside the classes, counted as mmsegmentation counts them; see its results."
        for r in rows
        if r["label_pixels_outside_classes"]
    ]
    return notes


def format_table_markdown(table: dict[str, Any]) -> str:
    """Table 1 as Markdown: one row per benchmark run, the average, then the notes."""
    pct = format_percent

    def paper(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.1f}"

    def diff(v: float | None) -> str:
        return "n/a" if v is None else f"{v:+.2f}"

    lines = [
        f"# Table 1: GLA-CLIP on the benchmarks under {table['data_root']}",
        "",
        "| benchmark | mIoU | aAcc | BER | images | paper mIoU | difference |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in table["benchmarks"]:
        images = str(r["num_images"])
        if r["num_images"] != r["dataset_images"]:
            images += f" of {r['dataset_images']}"
        cells = [r["title"], pct(r["mIoU"]), pct(r["aAcc"]), pct(r["BER"]), images]
        cells += [paper(r["paper_mIoU"]), diff(r["difference"])]
        lines.append("| " + " | ".join(cells) + " |")
    a = table["average"]
    cells = [f"average ({a['benchmarks']} of {len(PRESETS)})", pct(a["mIoU"]), pct(a["aAcc"])]
    cells += [pct(a["BER"]), "", paper(a["paper_mIoU"]), diff(a["difference"])]
    lines.append("| " + " | ".join(cells) + " |")
    source = table["paper"]["source"] or "none published for this method"
    lines += ["", f"mIoU, aAcc, BER in %; the paper's numbers: {source}."]
    if table["notes"]:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in table["notes"]]
    models = ", ".join(f"{k}={v}" for k, v in table["models"].items() if v is not None)
    given = ", ".join(f"{k}={_value(v)}" for k, v in table["settings"].items())
    lines += ["", f"Models: {models}", ""]
    lines += [f"Settings given: {given or 'none (the paper defaults and each preset)'}", ""]
    return "\n".join(lines)


def table_stem(limit: int | None) -> str:
    """``table1``, or ``table1_limitN`` for a run with ``--limit N``."""
    return limited_stem("table1", limit)


def write_table(
    out_dir: str | os.PathLike, table: dict[str, Any], overwrite: bool = False
) -> tuple[Path, Path]:
    """Write ``table1.json`` and ``table1.md`` (``table1_limitN.*``) atomically
    (``write_report``)."""
    stem = table_stem(table["limit"])
    return write_report(out_dir, stem, table, format_table_markdown, overwrite)
