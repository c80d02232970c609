"""What an evaluation evaluates, and where its outputs may go.

``make_task`` reads a preset (``glaclip.data``), the dataset's sample list and the vocabulary
into an ``EvalTask``; ``check_eval_outputs`` refuses, before any model work, result and
prediction files that would replace files glaclip did not write, or predictions inside the
dataset.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glaclip.config import GLAConfig
from glaclip.data.datasets import Sample, list_samples
from glaclip.data.presets import get_preset, preset_classes, preset_display_names
from glaclip.evaluation.reports import results_stem
from glaclip.io.outputs import OutputFolder, check_outside
from glaclip.registry import base_class
from glaclip.text.vocabulary import read_class_file


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


def preset_settings(dataset: str, base: str | None = None) -> dict[str, Any]:
    """The flat Segmenter settings of a preset's protocol (short side, threshold, background
    index), with the base method's own protocol where it differs (``BaseMethod.protocol``:
    SCLIP's logit scales and area threshold, NACLIP's whole-image VOC and PAMR, ...)."""
    preset = get_preset(dataset)
    out: dict[str, Any] = {
        "short_side": preset.short_side,
        "prob_threshold": preset.prob_threshold,
        "background_index": preset.background_index,
    }
    out.update(base_class(base or GLAConfig.base).protocol(dataset))
    return out
