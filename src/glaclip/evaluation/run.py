"""Benchmark evaluation: ``glaclip eval`` in one process or under ``torchrun``, resumable.

Per image (SPEC 1, 9, 11): read and resize with the preset's short side
(``Segmenter.prepare``), ``segment_tensor(x, class_lines, output_size=(H0, W0))``, labels at
the original size; the ground truth comes from ``load_label`` (with reduce_zero_label where
the preset says so) and feeds mmseg's IoU counters and the boundary error rate (BER).

BER windows. The seams are those of the windows the network actually saw (``ImageFeatures``
keeps them and their canvas). When both sides of the resized image are at least the crop, the
canvas is the protocol-resized size ``H x W``. When a side is shorter, glaclip's canvas first
upscales the input (up to the long-side cap) and pads what is still too short
(``network_canvas``), and the windows' edges are mapped from the image's part of it straight to
the original size (``metrics.boundary_counts``); a base with its authors' windows cuts smaller
ones, and a whole-image pass has no seam at all.

Resume. Every finished image is recorded in ``OUT/eval_state/`` with its counters, and a later
run of the same evaluation skips it and adds them (``state``). The task and its output
checks live in ``tasks``, the result files in ``reports``; this module is the loop.

Distributed. The images still to do are split with ``distributed.shard`` (no padding, no
duplicates); each rank writes its own predictions and state file; the per-rank counters are
summed with ``distributed.all_reduce_sum`` and only rank 0 writes the result files. When an
image fails on one rank, every rank raises (``OtherRankFailed`` where the images were fine), so
that all ranks leave the evaluation together.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from glaclip.atomic import remove_stale_temporaries
from glaclip.config import settings_from_kwargs
from glaclip.data.datasets import Sample, load_label
from glaclip.evaluation.metrics import SegMetric
from glaclip.evaluation.reports import (
    build_results,
    write_results,
)
from glaclip.evaluation.state import (
    STATE_DIR,
    StateWriter,
    check_state,
    input_fingerprint,
    resume,
    state_config,
)
from glaclip.evaluation.tasks import (
    EvalTask,
    check_eval_outputs,
    check_output_folder,
    make_task,
    preset_settings,
)
from glaclip.io.encode import save_label_png
from glaclip.io.outputs import OutputFolder
from glaclip.model.distributed import DistInfo, all_reduce_sum, gather_messages, shard

if TYPE_CHECKING:
    from tqdm import tqdm

    from glaclip.model.segmenter import Segmenter

__all__ = [
    "EvalRun",
    "OtherRankFailed",
    "evaluate",
    "evaluate_image",
    "plan_eval",
    "run_eval",
]


class OtherRankFailed(ValueError):
    """Raised on the ranks of a distributed evaluation whose own images were fine when
    another rank failed; the message holds the failed ranks' messages."""


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
    features = segmenter.encode_tensor(x, (h0, w0))
    out = segmenter.segment_tensor(features, task.class_lines, output_size=(h0, w0))
    pred = out.labels.to("cpu", torch.int64).numpy()
    metric = SegMetric(len(task.class_lines))
    metric.update(pred, label, ignore_index=task.ignore_index)
    canvas = features.canvas  # where the windows the network saw were cut
    metric.update_ber(
        pred, label, canvas.size, ignore_index=task.ignore_index, content_hw=canvas.content,
        windows=features.windows,
    )  # fmt: skip
    return pred, metric


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
            image or label (``OtherRankFailed`` on the ranks where it was not), ``out_dir`` or
            ``save_predictions`` naming a file, predictions that would replace files glaclip
            did not write (without ``overwrite``) or lie in the dataset (``check_eval_outputs``).
        WriteError: a file could not be written (a full disk).
    """
    dist = dist or DistInfo()
    start = time.perf_counter()
    out = check_output_folder(out_dir)
    settings = segmenter.settings.to_dict()
    models = models or segmenter.model_names()
    config = state_config(task, settings, models)
    prior, finished = resume(out / STATE_DIR, task, config, restart, dist)
    skip = set(finished)
    todo = shard([s for s in task.samples if s.id not in skip], dist)
    predictions = _prepare_outputs(out, task, save_predictions, overwrite, dist)
    writer = StateWriter(out / STATE_DIR, dist.rank, config)
    local, processed = _score_images(
        segmenter, task, todo, writer, predictions, prior, dist, progress
    )
    total, per_rank = _sum_over_ranks(local, processed, dist)
    total.merge(prior)
    return build_results(
        task,
        total,
        settings=settings,
        models=models,
        resumed=len(finished),
        processed_per_rank=per_rank,
        seconds=time.perf_counter() - start,
    )


def _prepare_outputs(
    out: Path,
    task: EvalTask,
    save_predictions: str | os.PathLike | None,
    overwrite: bool,
    dist: DistInfo,
) -> OutputFolder | None:
    """The output folders checked (``check_eval_outputs``) and rid of the temporaries of a run
    killed while it wrote (by rank 0); the predictions' ``OutputFolder``, or None."""
    check_eval_outputs(out, task, save_predictions, overwrite)
    predictions = OutputFolder(save_predictions, "--save-predictions") if save_predictions else None
    for folder in (out, save_predictions):
        if folder is not None and dist.is_main:
            remove_stale_temporaries(folder)
    return predictions


def _score_images(
    segmenter: Segmenter,
    task: EvalTask,
    todo: list[Sample],
    writer: StateWriter,
    predictions: OutputFolder | None,
    prior: SegMetric,
    dist: DistInfo,
    progress: bool,
) -> tuple[SegMetric, int]:
    """Segment and score this rank's images, saving each prediction (when asked) before the
    image is recorded as finished in ``writer``, which is closed at the end. Under torchrun
    every rank leaves together: an error on one rank is raised on every rank
    (``_leave_together``).

    Returns:
        The summed counters of this rank's images, and their number.
    """
    from tqdm import tqdm

    local = SegMetric(len(task.class_lines))
    processed = 0
    error: Exception | None = None
    bar = tqdm(
        todo, desc=f"eval {task.dataset}", unit="img", disable=not (progress and dist.is_main)
    )
    try:
        for sample in bar:
            inputs = input_fingerprint(sample)  # what the record will vouch for
            pred, metric = evaluate_image(segmenter, sample, task)
            if predictions is not None:
                predictions.claim([f"{sample.id}.png"])
                save_label_png(predictions.path / f"{sample.id}.png", pred)
            writer.add(sample.id, metric, inputs)
            local.merge(metric)
            processed += 1
            _show_miou(bar, prior, local, task, dist)
    except Exception as err:  # noqa: BLE001 - re-raised below, after telling the other ranks
        if not dist.enabled:
            raise
        error = err
    finally:
        writer.close()
        bar.close()
    _leave_together(error, dist)
    return local, processed


def _show_miou(
    bar: tqdm, prior: SegMetric, local: SegMetric, task: EvalTask, dist: DistInfo
) -> None:
    """The running mIoU (of the images resumed and this rank's) on the progress bar."""
    running = SegMetric(len(task.class_lines))
    running.merge(prior)
    running.merge(local)
    miou = running.summary(task.class_names)["mIoU"]
    if miou is not None:
        bar.set_postfix_str(f"mIoU {miou:.2f}" + (" (rank 0)" if dist.enabled else ""))


def _leave_together(error: Exception | None, dist: DistInfo) -> None:
    """Under torchrun, every rank learns whether any rank failed: this rank's own error is
    raised again, and ``OtherRankFailed`` (with their messages) where another rank's failed.
    A collective: every rank calls it, failed or not."""
    if not dist.enabled:
        return
    messages = gather_messages("" if error is None else str(error) or repr(error), dist)
    if error is not None:
        raise error
    failures = [f"rank {r}: {m}" for r, m in enumerate(messages) if m]
    if failures:
        raise OtherRankFailed("; ".join(failures))


def _sum_over_ranks(
    local: SegMetric, processed: int, dist: DistInfo
) -> tuple[SegMetric, list[int]]:
    """The counters summed over the ranks, and the number of images each rank processed."""
    per_rank = torch.zeros(dist.world_size, dtype=torch.int64, device="cpu")
    per_rank[dist.rank] = processed
    per_rank = all_reduce_sum(per_rank, dist)
    total = all_reduce_sum(local.to_tensor(), dist)
    return SegMetric.from_tensor(total, local.num_classes), per_rank.tolist()


@dataclass(frozen=True)
class EvalRun:
    """A ``glaclip eval --dataset NAME`` run, checked before any model loads (``plan_eval``).

    Attributes:
        task: what is evaluated.
        out: the folder of the results files and of the resume state.
        settings: the flat settings: the preset's, then those given (which win).
        models: the model identities written into the result files.
        save_predictions: the folder of ``<image id>.png``, or None.
        restart: discard the resume state.
        overwrite: replace result and prediction files glaclip did not write.
    """

    task: EvalTask
    out: Path
    settings: dict[str, Any]
    models: dict[str, Any]
    save_predictions: str | os.PathLike | None = None
    restart: bool = False
    overwrite: bool = False


def plan_eval(
    dataset: str,
    data_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    settings: dict[str, Any],
    models: dict[str, Any],
    class_file: str | os.PathLike | None = None,
    limit: int | None = None,
    reduce_zero_label: bool | None = None,
    save_predictions: str | os.PathLike | None = None,
    restart: bool = False,
    overwrite: bool = False,
) -> EvalRun:
    """The task of ``dataset`` (``make_task``), with everything that can be refused before
    any model loads refused: ``out_dir`` or ``save_predictions`` naming a file, the state of
    another evaluation in ``out_dir`` (unless ``restart``), outputs that would replace files
    glaclip did not write (unless ``overwrite``) or lie in the dataset.

    Args:
        settings: the flat settings given; the preset's (``preset_settings``) fill the rest.

    Raises:
        ValueError, FileNotFoundError: names the flag, file or folder and what to do.
    """
    out = check_output_folder(out_dir)
    if save_predictions:
        check_output_folder(save_predictions, "--save-predictions")
    task = make_task(dataset, data_root, class_file, limit, reduce_zero_label)
    settings = {**preset_settings(dataset, settings.get("base")), **settings}
    if not restart:  # refuse a foreign state before loading any model
        check_state(out, task, settings_from_kwargs(**settings).to_dict(), models)
    check_eval_outputs(out, task, save_predictions, overwrite)
    return EvalRun(task, out, settings, models, save_predictions, restart, overwrite)


def run_eval(
    run: EvalRun,
    segmenter: Segmenter,
    dist: DistInfo | None = None,
    progress: bool = True,
) -> tuple[dict[str, Any], Path | None]:
    """Evaluate ``run`` with ``segmenter`` (``evaluate``; its settings are ``run.settings``);
    rank 0 writes ``results.json`` and ``results.md`` (``results_limitN.*``) into ``run.out``.

    Returns:
        ``(results, path of the results JSON)``: the results on every rank, the path on
        rank 0 alone (None on the others).

    Raises:
        ValueError, WriteError: as ``evaluate`` and ``write_results`` raise them.
    """
    dist = dist or DistInfo()
    results = evaluate(
        segmenter,
        run.task,
        run.out,
        models=run.models,
        save_predictions=run.save_predictions,
        restart=run.restart,
        dist=dist,
        progress=progress,
        overwrite=run.overwrite,
    )
    if not dist.is_main:
        return results, None
    json_path, _ = write_results(run.out, results, run.overwrite)
    return results, json_path
