"""Segmenting many image files: outputs per image, bad files reported and skipped."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from glaclip.atomic import (
    STOP_ERRNOS,
    WriteError,
    atomic_write_bytes,
    encode_json,
    remove_stale_temporaries,
    write_error,
)
from glaclip.config import MAX_INDEXED_CLASSES, Settings
from glaclip.images.read import ImageReadError, image_extensions, is_image_file, read_image
from glaclip.io.encode import encode_label_png, encode_rgb
from glaclip.io.outputs import OutputFolder, make_folder, read_manifest
from glaclip.io.palette import class_palette, label_png_palette
from glaclip.io.viz import labelled_share, overlay
from glaclip.model.distributed import DistInfo, shard
from glaclip.model.results import Segmentation
from glaclip.model.segmenter import Segmenter
from glaclip.text.vocabulary import Vocabulary


@dataclass
class BatchReport:
    """Which inputs were written and which failed (with the reason); ``stopped`` says why the
    batch stopped early (a full disk), and ``left`` lists the images it did not reach."""

    done: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    stopped: str | None = None
    left: list[Path] = field(default_factory=list)


def collect_images(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Expand folders to the image files directly inside them (sorted); keep files as given.

    Files glaclip wrote into a folder (its manifest, ``outputs.OutputFolder``) are outputs,
    not images to segment, and are left out. A path that does not exist, and a symbolic link
    with an image's extension that leads nowhere, stay in the list, so that they are reported
    when their turn comes.

    Raises:
        ValueError: a folder holds no image file (empty, or only other files).
    """
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            paths.extend(_folder_images(p))
        else:
            paths.append(p)
    return paths


def _folder_images(folder: Path) -> list[Path]:
    ours = read_manifest(folder)
    entries = sorted(c for c in folder.iterdir() if c.name not in ours)
    found = [c for c in entries if is_image_file(c) and (c.is_file() or c.is_symlink())]
    if found:
        return found
    others = [c.name for c in entries if not c.name.startswith(".")]
    if others:
        what = f"it holds {len(others)} other file(s), e.g. {', '.join(others[:3])}"
    elif ours:
        what = "it holds only files glaclip wrote there"
    else:
        what = "it is empty"
    raise ValueError(
        f"the folder {folder} holds no image to segment ({what}); glaclip reads "
        f"{', '.join(image_extensions())}: name a folder of images"
    )


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
    labelled = labelled_share(result.labels, len(result.class_names))
    return {
        "image": _text(str(source)),
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


def _text(name: str) -> str:
    """A file name as JSON text: bytes that were not UTF-8 (decoded by Python as lone
    surrogates) written as ``\\xNN``."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def output_paths(out_dir: Path, stem: str, write_overlay: bool = True) -> list[Path]:
    """The files ``write_outputs`` writes for an image: label PNG, overlay, JSON (last)."""
    names = [f"{stem}.png"] + ([f"{stem}_overlay.jpg"] if write_overlay else [])
    return [out_dir / name for name in names + [f"{stem}.json"]]


def check_outputs(
    paths: Sequence[Path], out_dir: Path, write_overlay: bool = True, overwrite: bool = False
) -> None:
    """Refuse a run that would write over one of its own inputs, into a file, over a folder,
    or over a file glaclip did not write (``OutputFolder.check``; allowed with ``overwrite``).

    Raises:
        ValueError: ``out_dir`` is an existing file, an output file of some image would be
            one of the input images (e.g. ``segment folder/photo.png --out folder``), or an
            output path holds a folder, or a file that glaclip did not write.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file, not a folder: pass a folder for the outputs")
    inputs = {os.path.realpath(p): p for p in paths}
    names: list[str] = []
    for path, stem in zip(paths, output_stems(paths), strict=True):
        for out in output_paths(out_dir, stem, write_overlay):
            hit = inputs.get(os.path.realpath(out))
            if hit is not None:
                raise ValueError(
                    f"the output {out} of {path} would overwrite the input image {hit}: "
                    "choose another --out folder"
                )
            names.append(out.name)
    OutputFolder(out_dir).check(names, overwrite)


class StageBar:
    """A progress bar over the stages of one image (``Segmenter.segment``'s ``progress``): it
    appears only when an image takes more than two seconds, and is cleared afterwards."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bar: tqdm | None = None
        self.stage = ""

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None or stage != self.stage:
            self.close()
            self.bar = tqdm(total=total, desc=f"  {stage}", delay=2.0, leave=False)
            self.stage = stage
        self.bar.update(done - self.bar.n)  # update, not refresh: keeps the two-second delay

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@dataclass
class WrittenOutputs:
    """The files written for one image by ``write_outputs``."""

    labels: Path
    overlay: Path | None
    record: Path


def render_outputs(
    result: Segmentation,
    rgb: np.ndarray,
    source: Path,
    settings: Settings,
    models: dict[str, Any],
    write_overlay: bool = True,
) -> dict[str, bytes]:
    """The files of one image, made in memory: ``{suffix: bytes}`` for ``.png``,
    ``_overlay.jpg`` (with ``write_overlay``) and ``.json``, in the order they are written.

    Up to 255 classes the label PNG is indexed with ``label_png_palette`` (255: unlabelled);
    with more, it is a 16-bit greyscale PNG (65535: unlabelled).
    """
    names = [c[0] for c in result.class_names]
    many = len(names) > MAX_INDEXED_CLASSES
    palette = None if many else label_png_palette(len(names))
    files = {".png": encode_label_png(result.labels, palette, sixteen_bit=many)}
    if write_overlay:
        unl = settings.post.background_index
        picture = overlay(
            rgb,
            result.labels,
            names,
            palette=class_palette(len(names)),
            unlabeled_index=unl if unl >= len(names) else None,
        )
        files["_overlay.jpg"] = encode_rgb(picture, ".jpg")
    record = describe(result, source, settings.to_dict(), models)
    files[".json"] = encode_json(record, f"the record of {source}")
    return files


def write_outputs(
    result: Segmentation,
    rgb: np.ndarray,
    out_dir: Path,
    stem: str,
    source: Path,
    settings: Settings,
    models: dict[str, Any],
    write_overlay: bool = True,
) -> WrittenOutputs:
    """Write ``<stem>.png``, ``<stem>_overlay.jpg`` and, last, ``<stem>.json`` into ``out_dir``.

    Args:
        result: the segmentation of ``rgb``.
        rgb: ``H0 x W0 x 3`` uint8 image the result was computed from (for the overlay).
        out_dir: an existing folder.
        stem: file name stem of the three outputs.
        source: the image's name as recorded in the JSON.
        settings: the settings the result was computed with (recorded, and the label of
            unlabelled pixels, which the overlay leaves uncoloured).
        models: the backbones' names, recorded in the JSON.
        write_overlay: write the overlay image.

    Every file is made in memory first (``render_outputs``), so that an error there writes
    nothing. An earlier ``<stem>.json`` is removed before the new files are written, each under
    a temporary name, flushed to the disk, checked and renamed (``atomic_write_bytes``). The
    JSON comes last: it is the record of a finished image, so an image without its JSON was not
    finished. When a file cannot be written, those already written for the image are removed.

    Raises:
        WriteError: a file could not be written (names it and the cause).
    """
    files = render_outputs(result, rgb, source, settings, models, write_overlay)
    paths = {suffix: out_dir / f"{stem}{suffix}" for suffix in files}
    try:
        paths[".json"].unlink(missing_ok=True)  # the old record must not vouch for new files
    except OSError as err:
        raise write_error(paths[".json"], err) from None
    written: list[Path] = []
    try:
        for suffix, data in files.items():
            written.append(atomic_write_bytes(paths[suffix], data))
    except BaseException:
        for path in written:
            try:
                path.unlink(missing_ok=True)
            except OSError:  # the write error is the one to report
                pass
        raise
    return WrittenOutputs(paths[".png"], paths.get("_overlay.jpg"), paths[".json"])


def name_problem(out_dir: Path, stem: str, write_overlay: bool = True) -> str | None:
    """Why the outputs of ``stem`` cannot be written into ``out_dir`` (a name longer than the
    file system allows), or None."""
    try:
        limit = os.pathconf(out_dir, "PC_NAME_MAX") if out_dir.is_dir() else 255
    except (OSError, ValueError, AttributeError):  # no pathconf on this platform or path
        limit = 255
    for path in output_paths(out_dir, stem, write_overlay):
        length = len(os.fsencode(path.name))
        if length > limit:
            return (
                f"cannot write {path}: its name is {length} bytes long and the file system "
                f"allows {limit}; rename the image"
            )
    return None


class _NameTooLong(ValueError):
    """An output name is longer than the file system allows."""


def _segment_one(
    segmenter: Segmenter,
    path: Path,
    stem: str,
    vocabulary: Vocabulary,
    folder: OutputFolder,
    models: dict[str, Any],
    write_overlay: bool,
    progress: bool,
) -> None:
    """Read, segment and write one image of ``segment_files`` (its outputs claimed first).

    Raises:
        _NameTooLong, ImageReadError, WriteError: the image fails (the message names it).
    """
    problem = name_problem(folder.path, stem, write_overlay)
    if problem is not None:
        raise _NameTooLong(f"{path}: {problem}")
    rgb = read_image(path)
    stages = StageBar(progress)
    try:
        result = segmenter.segment(rgb, vocabulary, progress=stages)
    finally:
        stages.close()
    folder.claim(p.name for p in output_paths(folder.path, stem, write_overlay))
    settings = segmenter.settings
    write_outputs(result, rgb, folder.path, stem, path, settings, models, write_overlay)


def segment_files(
    segmenter: Segmenter,
    paths: Sequence[Path],
    classes: Sequence[str] | Vocabulary,
    out_dir: Path,
    write_overlay: bool = True,
    models: dict[str, Any] | None = None,
    dist: DistInfo | None = None,
    progress: bool = True,
    overwrite: bool = False,
    outputs_checked: bool = False,
) -> BatchReport:
    """Segment each image and write its outputs with ``write_outputs``.

    Under torchrun each process takes its share of the images (``distributed.shard``). An image that
    cannot be read or written is recorded in the report and skipped; after a full disk
    (``STOP_ERRNOS``) the batch stops, and ``report.left`` lists the images not reached. Output
    names are claimed in ``out_dir``'s manifest before they are written, a killed run's temporaries
    removed first. One run per folder is the caller's to ensure (``outputs.output_lock``).

    ``classes``: class lines, or a ``Vocabulary`` (checked once: ``Segmenter.vocabulary``).
    ``outputs_checked``: the caller checked the outputs (``check_outputs``) under the lock.

    Raises:
        ValueError: before any work, a class that can never win (``text.check_vocabulary``),
            or an output that would replace an input, a folder or a file glaclip did not write
            (``check_outputs``; the last allowed with ``overwrite``).
        WriteError: ``out_dir`` cannot be made.
    """
    dist = dist or DistInfo()
    vocabulary = segmenter.vocabulary(classes)
    if not outputs_checked:
        check_outputs(paths, out_dir, write_overlay, overwrite)
    folder = OutputFolder(out_dir)
    make_folder(out_dir)
    remove_stale_temporaries(out_dir)  # of an earlier run that was killed while it wrote
    jobs = shard(list(zip(paths, output_stems(paths), strict=True)), dist)
    models = models or segmenter.model_names()
    return _segment_jobs(segmenter, jobs, vocabulary, folder, models, write_overlay, progress)


def _segment_jobs(
    segmenter: Segmenter,
    jobs: list[tuple[Path, str]],
    vocabulary: Vocabulary,
    folder: OutputFolder,
    models: dict[str, Any],
    write_overlay: bool,
    progress: bool,
) -> BatchReport:
    """The loop of ``segment_files`` over its ``(image, output stem)`` jobs."""
    report = BatchReport()
    bar = tqdm(jobs, desc="segment", unit="img", disable=not progress or len(jobs) < 2)
    for number, (path, stem) in enumerate(bar):
        try:
            _segment_one(segmenter, path, stem, vocabulary, folder, models, write_overlay, progress)
        except (ImageReadError, _NameTooLong) as err:
            report.failed.append((path, str(err)))
            continue
        except WriteError as err:
            report.failed.append((path, f"{path}: {err}"))
            if err.errno in STOP_ERRNOS:
                report.stopped = str(err)
                report.left = [p for p, _ in jobs[number + 1 :]]
                break
            continue
        report.done.append(path)
    bar.close()
    return report
