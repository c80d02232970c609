"""Benchmark evaluation: ``glaclip eval`` in one process or under ``torchrun``, resumable.

Per image (SPEC 1, 9, 11): read and resize with the preset's short side
(``Segmenter.prepare``), ``segment_tensor(x, class_lines, output_size=(H0, W0))``, labels at
the original size; the ground truth comes from ``load_label`` (with reduce_zero_label where
the preset says so) and feeds mmseg's IoU counters and the boundary error rate (BER).

BER windows. The seams are those of the windows the network actually saw. When both sides of
the resized image are at least the crop, that is the protocol-resized size ``H x W``. When a
side is shorter, ``Segmenter.segment_tensor`` first upscales the input (up to the long-side
cap) and pads what is still too short (``network_canvas``); the windows then live on that
canvas, and their edges are mapped from the image's part of it straight to the original size
(``metrics.boundary_counts``).

Resume. Every finished image appends one JSON line ``{"id", "counts"}`` (its own metric
counters, ``SegMetric.to_tensor``) to ``OUT/eval_state/rank<r>.jsonl``, flushed and fsynced
after its prediction file is in place. Each state file starts with a header holding a
fingerprint of the evaluation (dataset, data root, class lines, label conventions, every
setting except ``window_batch`` and ``block_size``, which only partition the work, and
``allow_slow``; and the model identities). A later run with the same fingerprint reads every
state file, skips the ids listed there and adds their counters: integer sums, so the result is
the one a fresh run gives. ``--limit`` is not part of the fingerprint (an image's counters do
not depend on it, so a run over the first N images can be continued by a run over all of them);
instead, a run with ``--limit N`` writes ``results_limitN.json``/``.md`` and a run over the
whole dataset ``results.json``/``.md``, so that runs over different numbers of images never
replace each other's results. A torn last line (a crash mid-write) is ignored and cut off; a
different fingerprint is refused unless ``--restart`` discards the state (``--restart`` deletes
no result file). Resume works with any world size; with several nodes, ``OUT`` must be a folder
every node sees (checked: the ranks must agree).

Distributed. The images still to do are split with ``distributed.shard`` (no padding, no
duplicates); each rank writes its own predictions and state file; the per-rank counters are
summed with ``distributed.all_reduce_sum`` and only rank 0 writes the result files. When an
image fails on one rank, every rank raises (``OtherRankFailed`` where the images were fine), so
that all ranks leave the evaluation together.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from glaclip.data import (
    Sample,
    get_preset,
    list_samples,
    load_label,
    preset_classes,
    preset_display_names,
)
from glaclip.distributed import DistInfo, all_reduce_sum, barrier, gather_messages, shard
from glaclip.imageio import atomic_write_bytes, encode_json, save_label_png, write_error
from glaclip.metrics import SegMetric
from glaclip.outputs import OutputFolder, check_outside
from glaclip.text import read_class_file
from glaclip.windows import network_canvas

if TYPE_CHECKING:
    from glaclip.segmenter import Segmenter

STATE_DIR = "eval_state"
STATE_VERSION = 2  # 2: the image records hold SegMetric.tensor_length(C) = 4*C + 3 counters
# settings that only decide how the work is partitioned (or whether it may run), not what is
# computed
_RUNTIME_ONLY = ("window_batch", "block_size", "allow_slow")


# ---------------------------------------------------------------------------------- task
@dataclass(frozen=True)
class EvalTask:
    """What is evaluated: a dataset's samples, the vocabulary and the label conventions.

    Attributes:
        dataset: preset name (``voc21`` ...).
        data_root: the dataset's root folder.
        samples: the images to evaluate, in the dataset's order (``--limit`` applied).
        class_lines: one class per line, synonyms separated by ``;`` (label order).
        reduce_zero_label: apply mmseg's reduce_zero_label to the ground truth.
        ignore_index: ground-truth value left out of the metrics.
        class_file: the custom class file, or None for the preset's bundled one.
        total_samples: the number of samples in the dataset before ``--limit``.
        display_names: the dataset's standard class names (reports), None for a custom file.
        limit: the ``--limit`` asked for (None: the whole dataset); names the result files.
    """

    dataset: str
    data_root: Path
    samples: list[Sample]
    class_lines: list[str]
    reduce_zero_label: bool
    ignore_index: int = 255
    class_file: str | None = None
    total_samples: int = 0
    display_names: tuple[str, ...] | None = None
    limit: int | None = None

    @property
    def class_names(self) -> list[str]:
        """The name of each class in reports: the dataset's standard name for a preset's
        own vocabulary, otherwise the first query name of its line."""
        if self.display_names is not None:
            return list(self.display_names)
        return [line.split(";")[0].strip() for line in self.class_lines]

    def identity(self) -> dict[str, Any]:
        """The task without its sample list (which ``--limit`` may change), for fingerprints."""
        return {
            "dataset": self.dataset,
            "data_root": str(self.data_root.resolve()),
            "class_lines": list(self.class_lines),
            "reduce_zero_label": self.reduce_zero_label,
            "ignore_index": self.ignore_index,
        }


def make_task(
    dataset: str,
    data_root: str | os.PathLike,
    class_file: str | os.PathLike | None = None,
    limit: int | None = None,
    reduce_zero_label: bool | None = None,
) -> EvalTask:
    """The evaluation task of a preset on a dataset folder.

    Args:
        dataset: preset name (``voc21``, ..., ``ade20k``).
        data_root: the dataset's root folder, in the layout of the preset.
        class_file: a custom vocabulary in label order (default: the preset's bundled one).
        limit: evaluate only the first ``limit`` images (a limit of at least the number of
            images is the whole dataset: ``task.limit`` is then None).
        reduce_zero_label: override the preset's reduce_zero_label.

    Raises:
        ValueError: unknown preset, bad ``limit``, an empty or malformed class file.
        FileNotFoundError: missing data root, folder, split file, image, label or class file.
    """
    preset = get_preset(dataset)
    check_limit(limit)
    lines = read_class_file(class_file, blank_lines=False) if class_file else preset_classes(preset)
    samples = list_samples(preset.layout, data_root)
    total = len(samples)
    if limit is not None and limit >= total:
        limit = None  # the whole dataset: results.json, not results_limitN.json
    if limit is not None:
        samples = samples[:limit]
    reduce = preset.reduce_zero_label if reduce_zero_label is None else reduce_zero_label
    return EvalTask(
        dataset=preset.name,
        data_root=Path(data_root),
        samples=samples,
        class_lines=lines,
        reduce_zero_label=reduce,
        ignore_index=preset.ignore_index,
        class_file=None if class_file is None else os.fspath(class_file),
        total_samples=total,
        display_names=None if class_file else tuple(preset_display_names(preset)),
        limit=limit,
    )


def check_limit(limit: int | None) -> None:
    """ValueError unless ``limit`` is None or a positive number of images."""
    if limit is not None and limit <= 0:
        raise ValueError(f"--limit must be a positive number of images, got {limit}")


def limited_stem(name: str, limit: int | None) -> str:
    """``name`` for a run over the whole dataset, ``name_limitN`` for ``--limit N``."""
    return name if limit is None else f"{name}_limit{limit}"


def results_stem(limit: int | None) -> str:
    """``results``, or ``results_limitN`` for a run with ``--limit N``."""
    return limited_stem("results", limit)


def check_output_folder(path: str | os.PathLike, flag: str = "--out") -> Path:
    """``path`` as a Path, if it is a folder or can be made one.

    Raises:
        ValueError: ``path``, or the nearest of its parents that exists, is not a folder.
    """
    path = Path(path)
    for where in (path, *path.parents):
        if where.exists():
            if not where.is_dir():
                what = "is" if where == path else f"lies in {where}, which is"
                raise ValueError(
                    f"{flag} {path} {what} a file, not a folder: choose a folder for the results"
                )
            break
    return path


def check_eval_outputs(
    out_dir: str | os.PathLike,
    task: EvalTask,
    save_predictions: str | os.PathLike | None = None,
    overwrite: bool = False,
    data_root: str | os.PathLike | None = None,
) -> None:
    """Refuse, before any model work, outputs that would replace files glaclip did not write.

    The results files in ``out_dir`` and the predictions ``<id>.png`` in ``save_predictions``
    may replace only files glaclip wrote there (``outputs.OutputFolder``; any file with
    ``overwrite``). ``save_predictions`` may not be, or lie inside, the data root (``data_root``,
    default ``task.data_root``) or a label folder, whatever ``overwrite`` says.

    Raises:
        ValueError: names the file or folder and says what to do.
    """
    out = check_output_folder(out_dir)
    stem = results_stem(task.limit)
    OutputFolder(out).check([f"{stem}.json", f"{stem}.md"], overwrite)
    if save_predictions is None:
        return
    flag = "--save-predictions"
    pred = check_output_folder(save_predictions, flag)
    protected = [(data_root or task.data_root, "the data root")]
    protected += [(p, "the label folder") for p in sorted({s.label.parent for s in task.samples})]
    check_outside(pred, protected, flag)
    OutputFolder(pred, flag).check([f"{s.id}.png" for s in task.samples], overwrite)


def preset_settings(dataset: str) -> dict[str, Any]:
    """The flat Segmenter settings a preset sets (short side, threshold, background index)."""
    preset = get_preset(dataset)
    return {
        "short_side": preset.short_side,
        "prob_threshold": preset.prob_threshold,
        "background_index": preset.background_index,
    }


# ---------------------------------------------------------------------------------- one image
def evaluate_image(
    segmenter: Segmenter, sample: Sample, task: EvalTask
) -> tuple[np.ndarray, SegMetric]:
    """Segment one sample and score it.

    Returns:
        ``(prediction, metric)``: the ``H0 x W0`` int64 labels at the original size and a
        ``SegMetric`` holding this image's IoU and BER counters alone.

    Labels outside the classes (other than the ignore value) are counted as mmseg counts
    them, in ``metric.label_outside``, not refused.

    Raises:
        ValueError: unreadable image or label, or a label size different from the image's.
    """
    label = load_label(sample.label, reduce_zero_label=task.reduce_zero_label)
    x, (h0, w0) = segmenter.prepare(sample.image)
    if label.shape != (h0, w0):
        raise ValueError(
            f"label {sample.label} is {label.shape[0]}x{label.shape[1]} but image "
            f"{sample.image} is {h0}x{w0}: label maps must have the image's size"
        )
    out = segmenter.segment_tensor(x, task.class_lines, output_size=(h0, w0))
    pred = out.labels.to("cpu", torch.int64).numpy()
    win = segmenter.settings.window
    metric = SegMetric(len(task.class_lines))
    metric.update(pred, label, ignore_index=task.ignore_index)
    canvas = network_canvas(x.shape[-2], x.shape[-1], win.crop, win.max_long_side)
    metric.update_ber(
        pred, label, canvas.size, win.crop, win.stride, task.ignore_index, canvas.content
    )
    return pred, metric


# ---------------------------------------------------------------------------------- state
def fingerprint(config: dict[str, Any]) -> str:
    """A short hash of a JSON-ready evaluation description."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    out: list[str] = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


def read_state(state_dir: Path, config: dict[str, Any], counts_len: int) -> dict[str, list[int]]:
    """Finished images recorded in ``state_dir/rank*.jsonl``: ``{id: counts}``.

    A last line without its newline (a write cut short) is ignored.

    Raises:
        ValueError: a file records another evaluation (names what differs) or is damaged.
    """
    done: dict[str, list[int]] = {}
    if not state_dir.is_dir():
        return done
    want = fingerprint(config)
    for path in sorted(state_dir.glob("rank*.jsonl")):
        lines = path.read_bytes().split(b"\n")[:-1]  # the part after the last newline is torn
        for number, raw in enumerate(lines, start=1):
            try:
                record = json.loads(raw)
            except ValueError:
                raise ValueError(
                    f"evaluation state {path} is damaged at line {number}: pass --restart to "
                    "start over"
                ) from None
            if number == 1:
                version = record.get("glaclip_eval_state") if isinstance(record, dict) else None
                if version is None:
                    raise ValueError(f"{path} is not a glaclip eval state file")
                if version != STATE_VERSION:
                    raise ValueError(
                        f"{path} was written by another glaclip version (state version "
                        f"{version}, this one reads {STATE_VERSION}): pass --restart to start "
                        "over"
                    )
                if record.get("fingerprint") != want:
                    what = ", ".join(_differences(record.get("config", {}), config)) or "?"
                    raise ValueError(
                        f"{state_dir} holds the state of a different evaluation (differs in: "
                        f"{what}): pass --restart to discard it, or choose another --out"
                    )
                continue
            counts = record.get("counts") if isinstance(record, dict) else None
            if not isinstance(counts, list) or len(counts) != counts_len:
                raise ValueError(
                    f"evaluation state {path} line {number} is not an image record of "
                    f"{counts_len} counters: pass --restart to start over"
                )
            done.setdefault(str(record["id"]), [int(c) for c in counts])
    return done


def check_state(
    out_dir: str | os.PathLike, task: EvalTask, settings: dict[str, Any], models: dict[str, Any]
) -> None:
    """Refuse, before any model work, an ``out_dir`` that cannot take this evaluation.

    Args:
        settings: the run's flat settings (``Settings.to_dict()``).

    Raises:
        ValueError: ``out_dir`` is a file, or holds the state of another evaluation (names
            what differs) or a damaged one.
    """
    out = check_output_folder(out_dir)
    config = state_config(task, settings, models)
    read_state(out / STATE_DIR, config, SegMetric.tensor_length(len(task.class_lines)))


class StateWriter:
    """Appends one line per finished image to this rank's state file (flushed and fsynced)."""

    def __init__(self, state_dir: Path, rank: int, config: dict[str, Any]) -> None:
        self.path = state_dir / f"rank{rank}.jsonl"
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            if self.path.exists():  # cut a torn last line so the next record starts cleanly
                data = self.path.read_bytes()
                keep = data.rfind(b"\n") + 1
                if keep != len(data):
                    os.truncate(self.path, keep)
            self._file = open(self.path, "a", encoding="utf-8")  # closed in close()
        except OSError as err:
            raise write_error(self.path, err) from None
        if self._file.tell() == 0:
            header = {
                "glaclip_eval_state": STATE_VERSION,
                "fingerprint": fingerprint(config),
                "config": config,
            }
            self._write(header)

    def _write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":"), default=str, allow_nan=False) + "\n"
        try:
            self._file.write(line)
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as err:
            raise write_error(self.path, err) from None

    def add(self, sample_id: str, metric: SegMetric) -> None:
        """Record one finished image and its counters."""
        self._write({"id": sample_id, "counts": metric.to_tensor().tolist()})

    def close(self) -> None:
        self._file.close()


class OtherRankFailed(ValueError):
    """Raised on the ranks of a distributed evaluation whose own images were fine when
    another rank failed; the message holds the failed ranks' messages."""


def _check_agreement(done_flags: np.ndarray, dist: DistInfo) -> None:
    """All ranks must see the same finished images (OUT shared by every node)."""
    if not dist.enabled:
        return
    total = all_reduce_sum(torch.from_numpy(done_flags.astype(np.int64)), dist).numpy()
    if not np.all((total == 0) | (total == dist.world_size)):
        raise ValueError(
            "the ranks see different evaluation state files: --out must be a folder shared by "
            "every node to resume; pass --restart to start over"
        )


# ---------------------------------------------------------------------------------- loop
def evaluate(
    segmenter: Segmenter,
    task: EvalTask,
    out_dir: str | os.PathLike,
    models: dict[str, Any] | None = None,
    save_predictions: str | os.PathLike | None = None,
    restart: bool = False,
    dist: DistInfo | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Evaluate ``segmenter`` on ``task``, resuming from ``out_dir``'s state; no results file.

    Every rank returns the same dictionary (see ``write_results`` for its keys). Each
    prediction is recorded in the manifest of ``save_predictions`` before it is written.

    Raises:
        ValueError: state of another evaluation in ``out_dir`` (without ``restart``), a bad
            image or label (``OtherRankFailed`` on the ranks where it was not), ``out_dir``
            or ``save_predictions`` naming a file, predictions that would replace files
            glaclip did not write (without ``overwrite``) or lie in the dataset
            (``check_eval_outputs``).
        WriteError: a file could not be written (a full disk).
    """
    dist = dist or DistInfo()
    start = time.perf_counter()
    out = check_output_folder(out_dir)
    state_dir = out / STATE_DIR
    settings = segmenter.settings.to_dict()
    models = models or segmenter.model_names()
    config = state_config(task, settings, models)
    num_classes = len(task.class_lines)
    counts_len = SegMetric.tensor_length(num_classes)

    if restart and dist.is_main and state_dir.is_dir():
        for path in state_dir.glob("rank*.jsonl"):
            path.unlink()
    barrier(dist)
    done = read_state(state_dir, config, counts_len)
    ids = [s.id for s in task.samples]
    _check_agreement(np.array([i in done for i in ids], dtype=bool), dist)
    barrier(dist)  # every rank has read the state before any rank appends to it

    prior = SegMetric(num_classes)
    for sid in ids:
        if sid in done:
            prior.merge(SegMetric.from_tensor(torch.tensor(done[sid], device="cpu"), num_classes))
    resumed = sum(i in done for i in ids)
    todo = shard([s for s in task.samples if s.id not in done], dist)
    check_eval_outputs(out, task, save_predictions, overwrite)
    predictions = OutputFolder(save_predictions, "--save-predictions") if save_predictions else None

    local = SegMetric(num_classes)
    writer = StateWriter(state_dir, dist.rank, config)
    error: Exception | None = None
    processed = 0
    from tqdm import tqdm

    bar = tqdm(
        todo, desc=f"eval {task.dataset}", unit="img", disable=not (progress and dist.is_main)
    )
    try:
        for sample in bar:
            pred, metric = evaluate_image(segmenter, sample, task)
            if predictions is not None:
                predictions.claim([f"{sample.id}.png"])
                save_label_png(predictions.path / f"{sample.id}.png", pred)
            writer.add(sample.id, metric)
            local.merge(metric)
            processed += 1
            running = SegMetric(num_classes)
            running.merge(prior)
            running.merge(local)
            miou = running.summary(task.class_names)["mIoU"]
            if miou is not None:
                bar.set_postfix_str(f"mIoU {miou:.2f}" + (" (rank 0)" if dist.enabled else ""))
    except Exception as err:  # noqa: BLE001 - re-raised below, after telling the other ranks
        if not dist.enabled:
            raise
        error = err
    finally:
        writer.close()
        bar.close()

    if dist.enabled:
        messages = gather_messages("" if error is None else str(error) or repr(error), dist)
        if error is not None:
            raise error
        failures = [f"rank {r}: {m}" for r, m in enumerate(messages) if m]
        if failures:
            raise OtherRankFailed("; ".join(failures))
    per_rank = torch.zeros(dist.world_size, dtype=torch.int64, device="cpu")
    per_rank[dist.rank] = processed
    per_rank = all_reduce_sum(per_rank, dist)
    total = SegMetric.from_tensor(all_reduce_sum(local.to_tensor(), dist), num_classes)
    total.merge(prior)
    return build_results(
        task,
        total,
        settings=settings,
        models=models,
        resumed=resumed,
        processed_per_rank=per_rank.tolist(),
        seconds=time.perf_counter() - start,
    )


def state_config(
    task: EvalTask, settings: dict[str, Any], models: dict[str, Any]
) -> dict[str, Any]:
    """What a resume must match: task identity, settings (runtime-only ones left out), models."""
    kept = {k: v for k, v in settings.items() if k not in _RUNTIME_ONLY}
    return {"task": task.identity(), "settings": kept, "models": models}


# ---------------------------------------------------------------------------------- results
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
