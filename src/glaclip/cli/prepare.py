"""``glaclip prepare NAME SOURCE ROOT``: the official annotations in the evaluated layout.

The command-line side of ``glaclip.data``'s converters: arguments, failure lines, the summary
and the exit status (0: every file converted or already there; 1: some file failed or an
output could not be written; 2: a source, root or missing extra refused before any work).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from tqdm import tqdm

PREPARE_DESCRIPTION = """\
Write a benchmark's labels in the layout glaclip eval reads (mmsegmentation's), from the
official downloads: the same label values, file names and split lists as mmsegmentation's
converters, with no other tool. SOURCE is the official annotation download, ROOT the
dataset's folder (the --data-root of glaclip eval). A converted file is not converted again
(--overwrite redoes it), source files are never changed, and every output is written under a
temporary name and renamed when complete. A file that cannot be converted is reported on one
line and the others go on; the command then exits with status 1.

VOC2012 (voc21, voc20) and ADE20K (ADEChallengeData2016) need no preparation: they are
evaluated as downloaded.
"""

# name: (help, SOURCE help, ROOT help, split choices)
_TARGETS: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "pascal-context": (
        "Pascal Context (context60, context59) from VOC2010 and trainval_merged.json",
        "trainval_merged.json (PASCAL in Detail)",
        "the VOCdevkit/VOC2010 folder (labels: SegmentationClassContext/, "
        "lists: ImageSets/SegmentationContext/)",
        ("train", "val"),
    ),
    "coco-stuff164k": (
        "COCO-Stuff164k: official stuffthingmaps -> *_labelTrainIds.png (171 classes)",
        "the folder stuffthingmaps_trainval2017.zip was unzipped into (holding val2017/)",
        "the coco_stuff164k folder (labels: annotations/<split>/)",
        ("train2017", "val2017"),
    ),
    "coco-object": (
        "COCO-Object: COCO-Stuff label maps -> *_instanceTrainIds.png (things 1..80)",
        "the folder holding val2017/ with the stuffthingmaps or *_labelTrainIds.png",
        "the coco_stuff164k folder (labels: annotations/<split>/)",
        ("train2017", "val2017"),
    ),
    "cityscapes": (
        "Cityscapes: gtFine *_labelIds.png -> *_gtFine_labelTrainIds.png (19 classes)",
        "the gtFine folder of gtFine_trainvaltest.zip (holding train/, val/, test/)",
        "the cityscapes folder (labels: gtFine/<split>/<city>/, lists: <split>.txt)",
        ("train", "val", "test"),
    ),
}


def add_prepare_parser(sub: Any) -> None:
    """The ``prepare`` subcommand and one sub-subcommand per benchmark that needs it."""
    from glaclip.data.convert import default_workers
    from glaclip.data.tables import prepare_tables

    prep = sub.add_parser(
        "prepare",
        help="make a benchmark's labels from its official downloads",
        description=PREPARE_DESCRIPTION,
        epilog=prepare_tables(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    prep_sub = prep.add_subparsers(dest="what", required=True, metavar="NAME")
    for name, (help_text, source_help, root_help, splits) in _TARGETS.items():
        p = prep_sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("source", metavar="SOURCE", help=source_help)
        p.add_argument("root", metavar="ROOT", help=root_help)
        p.add_argument(
            "--split",
            action="append",
            choices=splits,
            help="convert only this split (repeatable; default: every split found)",
        )
        p.add_argument("--overwrite", action="store_true", help="convert existing outputs again")
        p.add_argument(
            "--workers",
            type=int,
            default=default_workers(),
            help="threads that convert files (default: the CPUs, at most 8)",
        )
        p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _converter(name: str) -> Callable[..., Any]:
    from glaclip.data.cityscapes import convert_cityscapes
    from glaclip.data.coco_object import convert_coco_object
    from glaclip.data.coco_stuff import convert_coco_stuff
    from glaclip.data.pascal_context import convert_pascal_context

    return {
        "pascal-context": convert_pascal_context,
        "coco-stuff164k": convert_coco_stuff,
        "coco-object": convert_coco_object,
        "cityscapes": convert_cityscapes,
    }[name]


def _say(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


def run_prepare(args: argparse.Namespace) -> int:
    """Run ``glaclip prepare NAME SOURCE ROOT``; returns the exit status."""
    from glaclip.data.convert import MissingExtraError, OutputError

    if args.workers < 1:
        _say(f"glaclip: error: --workers must be at least 1, got {args.workers}")
        return 2
    try:
        report = _converter(args.what)(
            args.source,
            args.root,
            splits=args.split,
            progress=not args.no_progress,
            overwrite=args.overwrite,
            workers=args.workers,
            on_failure=lambda source, reason: _say(f"glaclip: failed: {source}: {reason}"),
        )
    except OutputError as err:
        _say(f"glaclip: error: {err} (the files finished before are kept; run again to go on)")
        return 1
    except (MissingExtraError, ValueError, FileNotFoundError) as err:
        _say(f"glaclip: error: {err}")
        return 2
    for note in report.notes:
        _say(f"glaclip: note: {note}")
    summary = f"{args.what}: wrote {report.written} label map(s) under {args.root}"
    if report.skipped:
        summary += f", {report.skipped} already there"
    if report.failed:
        summary += f"; {len(report.failed)} failed (listed above)"
    _say(summary)
    if report.written + report.skipped == 0 and not report.failed:
        return 1  # nothing to convert: a wrong SOURCE
    return 1 if report.failed else 0


def print_data_check(args: argparse.Namespace) -> bool:
    """Check the data of ``glaclip eval`` (``--dataset``, ``--data-root``, ``--limit``) and
    print the summary to stderr before any model loads; True when nothing is wrong."""
    from glaclip.cli.options import settings_from_args
    from glaclip.data.convert import default_workers
    from glaclip.evaluation.checks import benchmark_folders, check_root, format_check
    from glaclip.evaluation.estimate import measure_speed
    from glaclip.model.device import resolve_device

    folders = benchmark_folders(args.data_root, args.dataset)
    num_classes = None
    if args.class_file and args.dataset != "all":
        from glaclip.text.vocabulary import read_class_file

        num_classes = len(read_class_file(args.class_file))
    reduce = args.reduce_zero_label if args.dataset != "all" else None
    speed = measure_speed(resolve_device(args.device))
    result = check_root(
        folders,
        settings_from_args(args),
        speed,
        limit=args.limit,
        vfm=args.vfm,
        progress=not args.no_progress,
        workers=default_workers(),
        num_classes=num_classes,
        reduce=reduce,
    )
    _say(f"glaclip: the data under {args.data_root}:")
    _say(format_check(result, speed, args.limit))
    return result.ok
