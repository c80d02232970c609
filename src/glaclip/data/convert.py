"""What every ``glaclip prepare`` conversion shares: jobs, resuming, failures, atomic writes.

A conversion is a list of :class:`Job`: one output label map each, made from its source by a
function that reads and maps. :func:`run_jobs` skips the jobs whose output already exists (a
rerun resumes; ``overwrite=True`` redoes them), runs the others (in threads: Pillow decodes
and encodes PNGs outside the GIL), writes each output under a temporary name and renames it
when complete (``atomic.atomic_write``), and never writes to a source path. A source that
cannot be read or holds values the table does not know is one failure line; the others go
on. A failure to write (a full disk, a read-only folder) stops the conversion, since every
later file would fail the same way.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from glaclip.atomic import atomic_write, remove_stale_temporaries
from glaclip.images.pngcheck import incomplete_png_message, png_rows

OnFailure = Callable[[str, str], None]
PREPARE_INSTALL = (
    'pip install "pycocotools>=2.0.6" (the prepare extra of glaclip: pip install -e ".[prepare]" '
    "in its clone)"
)


class ConversionError(ValueError):
    """A source file that cannot be converted (unreadable, wrong mode, unknown values)."""


class OutputError(OSError):
    """An output that cannot be written: the conversion stops (names the file and the cause)."""


class MissingExtraError(RuntimeError):
    """An optional dependency of a conversion is not installed (the message says what to do)."""


class Job(NamedTuple):
    """One output label map: ``make()`` reads ``source`` and returns an ``H x W`` uint8 array.

    ``name`` is what failure lines call the source (default: its path).
    """

    source: Path
    out: Path
    make: Callable[[], np.ndarray]
    name: str = ""

    def label(self) -> str:
        return self.name or str(self.source)


@dataclass
class ConvertReport:
    """What a conversion did: files written, files already there, failures (path, reason)."""

    written: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def merge(self, other: ConvertReport) -> None:
        self.written += other.written
        self.skipped += other.skipped
        self.failed += other.failed
        self.notes += other.notes


def default_workers() -> int:
    """Threads for conversions and checks: the CPUs, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def read_label_map(path: Path) -> np.ndarray:
    """Read a single-channel 8-bit PNG label map (mode ``L`` or ``P``; indices, not colours).

    Returns:
        ``H x W`` uint8 array.

    Raises:
        ConversionError: the file is missing, not an image Pillow can decode, or has another
            mode (RGB, 16-bit).
    """
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P"):
                raise ConversionError(
                    f"image mode {img.mode!r}: expected a single-channel 8-bit label map"
                )
            label = np.array(img, dtype=np.uint8)
            rows = png_rows(path) if img.format == "PNG" else None
        if rows is not None and not rows.complete:  # Pillow would have read the rest as 0
            raise ConversionError(incomplete_png_message(rows))
        return label
    except ConversionError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ConversionError(f"not a readable image ({err})") from err


def map_values(label: np.ndarray, lut: np.ndarray, table: str) -> np.ndarray:
    """Map an ``H x W`` uint8 label through a ``(256,)`` int16 lookup table (-1: unknown).

    Returns:
        ``H x W`` uint8 array.

    Raises:
        ConversionError: the label holds values the table does not map (the first ten named).
    """
    out = lut[label]
    if (out < 0).any():
        bad = np.unique(label[out < 0])
        shown = ", ".join(str(v) for v in bad[:10]) + (", ..." if len(bad) > 10 else "")
        raise ConversionError(f"holds values that are not in {table}: {shown}")
    return out.astype(np.uint8)


def split_folders(
    source: Path, splits: Sequence[str], wanted: Sequence[str] | None, what: str
) -> list[tuple[str, Path]]:
    """``(split, folder)`` of each wanted split folder in ``source`` (or ``source`` itself,
    when it is named like a split).

    Args:
        splits: the dataset's split names, e.g. ``("train2017", "val2017")``.
        wanted: the splits asked for (None: all).
        what: what ``source`` should be, for the messages (``"the gtFine folder of ..."``).

    Raises:
        FileNotFoundError: ``source`` is not a folder. ValueError: it holds no wanted split.
    """
    if not source.is_dir():
        raise FileNotFoundError(f"{source} is not a folder: pass {what}")
    wanted = list(wanted or splits)
    if source.name in splits:
        found = [(source.name, source)] if source.name in wanted else []
    else:
        found = [(s, source / s) for s in wanted if (source / s).is_dir()]
    if not found:
        raise ValueError(f"no split folder ({', '.join(wanted)}) in {source}: pass {what}")
    return found


def ensure_folder(path: Path, what: str) -> None:
    """Create ``path`` (and parents) as a folder; ValueError naming it if a file is in the way."""
    for part in (path, *path.parents):
        if part.exists() and not part.is_dir():
            raise ValueError(f"{what} {path} cannot be made: {part} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create {what} {path}: {err.strerror or err}") from err


def write_list(path: Path, lines: Sequence[str]) -> None:
    """Write a split list, one line each, atomically.

    Raises:
        OutputError: it could not be written.
    """
    remove_stale_temporaries(path.parent)
    text = "".join(f"{line}\n" for line in lines)
    try:
        atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    except OSError as err:
        raise OutputError(f"cannot write {path}: {err.strerror or err}") from err


def _write(job: Job, sources: frozenset[Path]) -> None:
    if job.out in sources:  # never replace a source file
        raise ConversionError(f"its output {job.out} would replace a source file")
    try:
        label = job.make()
    except ConversionError:
        raise
    except (KeyError, TypeError, ValueError, OSError) as err:  # a malformed source
        raise ConversionError(f"cannot be converted ({type(err).__name__}: {err})") from err
    image = Image.fromarray(label)
    try:
        atomic_write(job.out, lambda tmp: image.save(tmp, format="PNG"))
    except OSError as err:
        raise OutputError(f"cannot write {job.out}: {err.strerror or err}") from err


def _pending(jobs: Sequence[Job], overwrite: bool, report: ConvertReport) -> list[Job]:
    todo = []
    for job in jobs:
        if not overwrite and job.out.is_file():
            report.skipped += 1
        elif job.out.exists() and not job.out.is_file():
            report.failed.append((job.label(), f"its output {job.out} is a folder"))
        else:
            todo.append(job)
    return todo


def _bounded(pool: ThreadPoolExecutor, jobs: Iterable[Job], fn: Callable, depth: int):
    """Yield ``(job, future)`` in order with at most ``depth`` jobs in flight."""
    flight: deque[tuple[Job, Future]] = deque()
    for job in jobs:
        flight.append((job, pool.submit(fn, job)))
        if len(flight) >= depth:
            yield flight.popleft()
    while flight:
        yield flight.popleft()


def run_jobs(
    jobs: Sequence[Job],
    desc: str,
    progress: bool = True,
    overwrite: bool = False,
    workers: int = 1,
    on_failure: OnFailure | None = None,
) -> ConvertReport:
    """Run a conversion: skip finished outputs, write the others atomically, collect failures.

    Args:
        jobs: the outputs to make.
        desc: the progress bar's label.
        overwrite: redo outputs that already exist.
        workers: threads that read, map and write.
        on_failure: called with ``(source, reason)`` for each file that fails, as it fails.

    Returns:
        The report: ``written``, ``skipped`` (already there) and ``failed``.

    Raises:
        OutputError: an output could not be written (the files finished before are kept).
    """
    report = ConvertReport()
    for folder in sorted({job.out.parent for job in jobs}):  # left by a run that was killed
        remove_stale_temporaries(folder)
    todo = _pending(jobs, overwrite, report)
    for source, reason in report.failed:
        if on_failure is not None:
            on_failure(source, reason)
    sources = frozenset(j.source for j in jobs)
    bar = tqdm(total=len(todo), desc=desc, unit="file", disable=not progress or not todo)
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        for job, future in _bounded(pool, todo, lambda j: _write(j, sources), 4 * workers):
            try:
                future.result()
                report.written += 1
            except ConversionError as err:
                report.failed.append((job.label(), str(err)))
                if on_failure is not None:
                    on_failure(job.label(), str(err))
            bar.update(1)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    return report
