"""The paper's Table 1 in one run: every benchmark found under one root, one set of models.

``glaclip eval --dataset all --data-root ROOT --out OUT`` looks for each benchmark where the
README's layout puts it (``Preset.folder``: ``ROOT/VOCdevkit/VOC2012`` for VOC21 and VOC20,
``ROOT/VOCdevkit/VOC2010`` for Context60 and Context59, ``ROOT/coco_stuff164k`` for
COCO-Object and COCO-Stuff, ``ROOT/cityscapes``, ``ROOT/ADEChallengeData2016``), evaluates the
ones present in the paper's order, each into ``OUT/<preset>/`` exactly as ``--dataset
<preset>`` would (resumable, the preset's own short side, threshold and labels), and gathers
one row per benchmark into ``OUT/table1.json`` and ``OUT/table1.md`` (``table_report``).

A benchmark whose folder is missing is not run (the table says so and why). A benchmark whose
data is broken (a missing label, an unreadable image) stops with its message while the others
still run; the command then exits non-zero.

A run is two steps: ``plan_table`` finds the benchmarks and checks everything that can be
checked before any model loads (the state of earlier runs, the output files); ``run_table``
loads the models once, evaluates every ready benchmark and writes the table.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from glaclip.atomic import STOP_ERRNOS
from glaclip.config import settings_from_kwargs
from glaclip.data.presets import PRESETS, Preset
from glaclip.evaluation.run import EvalRun, run_eval
from glaclip.evaluation.state import check_state
from glaclip.evaluation.table_report import (
    build_table,
    table_row,
    table_stem,
    write_table,
)
from glaclip.evaluation.tasks import (
    EvalTask,
    check_eval_outputs,
    check_limit,
    check_output_folder,
    make_task,
    preset_settings,
)
from glaclip.io.outputs import OutputFolder
from glaclip.model.distributed import DistInfo

if TYPE_CHECKING:
    from glaclip.model.segmenter import Segmenter

__all__ = [
    "Benchmark",
    "TableRun",
    "benchmark_settings",
    "check_all_outputs",
    "check_states",
    "effective_limit",
    "evaluate_benchmarks",
    "find_benchmarks",
    "plan_table",
    "run_table",
]


@dataclass(frozen=True)
class Benchmark:
    """One preset as found under the root of a ``--dataset all`` run.

    Attributes:
        preset: the benchmark's preset.
        root: where its dataset root is expected (``ROOT / preset.folder``).
        task: the evaluation task, or None when the benchmark cannot run.
        status: ``ready``, ``missing`` (no folder) or ``failed`` (its data is broken).
        reason: why it is missing or failed.
    """

    preset: Preset
    root: Path
    task: EvalTask | None
    status: str
    reason: str = ""


def find_benchmarks(root: str | os.PathLike, limit: int | None = None) -> list[Benchmark]:
    """Every preset, in the paper's order, looked for under ``root`` in the README's layout.

    Raises:
        FileNotFoundError: ``root`` is not a folder, or holds none of the benchmark folders.
    """
    root = Path(root)
    folders = ", ".join(dict.fromkeys(str(root / p.folder) for p in PRESETS.values()))
    if not root.is_dir():
        raise FileNotFoundError(
            f"data root {root} is not a folder: --dataset all expects the benchmarks at {folders}"
        )
    found = []
    for preset in PRESETS.values():
        folder = root / preset.folder
        if not folder.is_dir():
            reason = f"not found under {root}: no folder {folder}"
            found.append(Benchmark(preset, folder, None, "missing", reason))
            continue
        try:
            task = make_task(preset.name, folder, limit=limit)
        except (ValueError, OSError) as err:
            found.append(Benchmark(preset, folder, None, "failed", str(err)))
        else:
            found.append(Benchmark(preset, folder, task, "ready"))
    if all(b.status == "missing" for b in found):
        raise FileNotFoundError(
            f"no benchmark found under {root}: --dataset all expects the datasets at {folders} "
            "(the README's layout); point --data-root at the folder holding them"
        )
    return found


def benchmark_settings(name: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The flat settings of one benchmark: its preset's, then those given (which win)."""
    return {**preset_settings(name, settings.get("base")), **settings}


def check_states(
    benchmarks: list[Benchmark],
    out_dir: str | os.PathLike,
    settings: dict[str, Any],
    models: dict[str, Any],
) -> None:
    """Refuse, before any model is loaded, state in ``OUT/<preset>`` of another evaluation.

    Raises:
        ValueError: names the benchmark and what differs (see ``state.check_state``).
    """
    for b in benchmarks:
        if b.task is None:
            continue
        full = settings_from_kwargs(**benchmark_settings(b.preset.name, settings)).to_dict()
        try:
            check_state(Path(out_dir) / b.preset.name, b.task, full, models)
        except ValueError as err:
            raise ValueError(f"{b.preset.title}: {err}") from err


def effective_limit(benchmarks: list[Benchmark], limit: int | None) -> int | None:
    """``limit``, or None when it covers every ready benchmark whole (``make_task``): the
    table is then ``table1.json``, not ``table1_limitN.json``."""
    if any(b.task is not None and b.task.limit is not None for b in benchmarks):
        return limit
    return None


def check_all_outputs(
    benchmarks: list[Benchmark],
    out_dir: str | os.PathLike,
    save_predictions: str | os.PathLike | None,
    overwrite: bool,
    data_root: str | os.PathLike,
    limit: int | None,
) -> None:
    """Refuse, before any model loads, outputs of a ``--dataset all`` run that would replace
    files glaclip did not write, or predictions inside ``data_root`` (``check_eval_outputs``
    for every ready benchmark, and the table's files in ``out_dir``).

    Raises:
        ValueError: names the file or folder (and the benchmark).
    """
    stem = table_stem(limit)
    OutputFolder(out_dir).check([f"{stem}.json", f"{stem}.md"], overwrite)
    for b in benchmarks:
        if b.task is None:
            continue
        name = b.preset.name
        pred = None if save_predictions is None else Path(save_predictions) / name
        try:
            check_eval_outputs(Path(out_dir) / name, b.task, pred, overwrite, data_root)
        except ValueError as err:
            raise ValueError(f"{b.preset.title}: {err}") from err


Report = Callable[[Benchmark, "dict[str, Any] | None", "Exception | None"], None]


def evaluate_benchmarks(
    segmenter: Segmenter | None,
    benchmarks: list[Benchmark],
    out_dir: str | os.PathLike,
    settings: dict[str, Any],
    models: dict[str, Any],
    save_predictions: str | os.PathLike | None = None,
    restart: bool = False,
    dist: DistInfo | None = None,
    progress: bool = True,
    report: Report | None = None,
    limit: int | None = None,
    data_root: str | os.PathLike = "",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Evaluate every ready benchmark, in the paper's order, with one set of models; return
    the table of ``build_table`` (identical on every rank; not written).

    Each runs ``run_eval`` with ``segmenter.with_settings(preset settings, then settings)``
    into ``out_dir/<preset>``, predictions into ``save_predictions/<preset>``. A benchmark with
    a bad image or label is recorded as failed and the next one runs; under torchrun all ranks
    leave it together (``evaluate``), so all run the same sequence.

    Args:
        segmenter: the models, loaded once (None only when no benchmark is ready).
        settings: the flat settings given by the user; they override every preset's.
        report: called after each benchmark with ``(benchmark, results, None)`` or
            ``(benchmark, None, error)``, on every rank.
    """
    dist = dist or DistInfo()
    out = Path(out_dir)
    rows: list[dict[str, Any]] = []
    failed: dict[str, str] = {}
    for b in benchmarks:
        if b.task is None:
            continue
        name = b.preset.name
        if segmenter is None:
            raise ValueError("evaluate_benchmarks needs a segmenter for the ready benchmarks")
        flat = benchmark_settings(name, settings)
        pred = None if save_predictions is None else Path(save_predictions) / name
        run = EvalRun(b.task, out / name, flat, models, pred, restart, overwrite)
        results, error = _run_benchmark(run, segmenter.with_settings(**flat), dist, progress)
        if error is None:
            rows.append(table_row(b.preset, results))
        else:
            failed[name] = str(error)
        if report is not None:
            report(b, results, error)
    return build_table(rows, benchmarks, failed, limit, data_root, models, settings)


def _run_benchmark(
    run: EvalRun, seg: Segmenter, dist: DistInfo, progress: bool
) -> tuple[dict[str, Any] | None, Exception | None]:
    """``run_eval`` of one benchmark: ``(results, None)``, or ``(None, error)`` where an image
    or a label is bad or a file cannot be written (a full disk stops the table: it raises)."""
    try:
        results, _ = run_eval(run, seg, dist, progress)
    except (ValueError, OSError) as err:
        if isinstance(err, OSError) and err.errno in STOP_ERRNOS:
            raise  # a full disk: the next benchmark could not write either
        return None, err
    return results, None


@dataclass(frozen=True)
class TableRun:
    """A ``--dataset all`` run, checked before any model loads (``plan_table``).

    Attributes:
        benchmarks: every preset, in the paper's order, as found under ``data_root``.
        out: the folder of ``table1.*``; each benchmark's results go into ``out/<preset>``.
        settings: the flat settings given by the user; they override every preset's.
        models: the model identities written into the result files.
        data_root: the folder holding the benchmarks, as given.
        limit: the ``--limit`` that names the files (``effective_limit``).
        save_predictions: the folder of ``<preset>/<image id>.png``, or None.
        restart: discard each benchmark's resume state.
        overwrite: replace result and prediction files glaclip did not write.
    """

    benchmarks: list[Benchmark]
    out: Path
    settings: dict[str, Any]
    models: dict[str, Any]
    data_root: str | os.PathLike
    limit: int | None = None
    save_predictions: str | os.PathLike | None = None
    restart: bool = False
    overwrite: bool = False

    @property
    def ready(self) -> bool:
        """Whether any benchmark can run (otherwise no model is needed)."""
        return any(b.task is not None for b in self.benchmarks)


def plan_table(
    data_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    settings: dict[str, Any],
    models: dict[str, Any],
    limit: int | None = None,
    save_predictions: str | os.PathLike | None = None,
    restart: bool = False,
    overwrite: bool = False,
) -> TableRun:
    """Find the benchmarks under ``data_root`` and refuse, before any model loads, what
    would fail later: a bad ``limit``, ``out_dir`` or ``save_predictions`` naming a file, the
    state of another evaluation in ``out_dir/<preset>`` (unless ``restart``), and outputs that
    would replace files glaclip did not write (unless ``overwrite``) or lie in the data.

    Raises:
        ValueError: names the flag, file or folder (and the benchmark).
        FileNotFoundError: ``data_root`` is not a folder, or holds no benchmark.
    """
    check_limit(limit)
    out = check_output_folder(out_dir)
    if save_predictions:
        check_output_folder(save_predictions, "--save-predictions")
    benchmarks = find_benchmarks(data_root, limit)
    if not restart:
        check_states(benchmarks, out, settings, models)
    limit = effective_limit(benchmarks, limit)
    check_all_outputs(benchmarks, out, save_predictions, overwrite, data_root, limit)
    return TableRun(
        benchmarks, out, settings, models, data_root, limit, save_predictions, restart, overwrite
    )


def run_table(
    run: TableRun,
    build: Callable[[dict[str, Any]], Segmenter],
    dist: DistInfo | None = None,
    progress: bool = True,
    report: Report | None = None,
) -> tuple[dict[str, Any], Path | None]:
    """Evaluate every ready benchmark of ``run`` (``evaluate_benchmarks``) with the models
    that ``build(run.settings)`` loads (once, and only when a benchmark is ready); rank 0 writes
    ``table1.json`` and ``table1.md`` (``table1_limitN.*``) into ``run.out``.

    Returns:
        ``(table, path of table1.md)``: the table on every rank, the path on rank 0 alone
        (None on the others).

    Raises:
        ValueError: the table's files cannot replace files glaclip did not write.
        WriteError: a file could not be written (a full disk stops the whole run).
    """
    dist = dist or DistInfo()
    table = evaluate_benchmarks(
        build(run.settings) if run.ready else None,
        run.benchmarks,
        run.out,
        run.settings,
        run.models,
        save_predictions=run.save_predictions,
        restart=run.restart,
        dist=dist,
        progress=progress,
        report=report,
        limit=run.limit,
        data_root=run.data_root,
        overwrite=run.overwrite,
    )
    if not dist.is_main:
        return table, None
    _, md_path = write_table(run.out, table, run.overwrite)
    return table, md_path
