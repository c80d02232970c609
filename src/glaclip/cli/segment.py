"""``glaclip segment``: images into the classes given, their files written."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from glaclip.cli import options
from glaclip.cli.common import locks
from glaclip.cli.options import model_identity, settings_from_args

if TYPE_CHECKING:
    from glaclip.io.batch import BatchReport
    from glaclip.model.distributed import DistInfo
    from glaclip.text.vocabulary import Vocabulary


def segment_classes(args: argparse.Namespace) -> Vocabulary:
    """The vocabulary of ``--classes`` or ``--class-file``, each class able to win as the text
    encoder will see it (checked once, with the tokenizer where it needs no download)."""
    from glaclip.model.loading import load_tokenizer
    from glaclip.text.encoder import EncoderView
    from glaclip.text.vocabulary import Vocabulary, parse_classes_arg, read_class_file

    if args.class_file:
        lines = read_class_file(args.class_file)
        source = f"class file {args.class_file}"
    else:
        lines = parse_classes_arg(args.classes, source="--classes")
        source = "--classes"
    tokenizer = load_tokenizer(args.clip)
    return Vocabulary.of(lines, source, EncoderView(tokenizer) if tokenizer else None)


def _summary(report: BatchReport, info: DistInfo) -> tuple[list[str], int]:
    """One summary for the whole run, gathered on rank 0 under torchrun: the lines to print
    and the number of images done."""
    from glaclip.model.distributed import gather_messages

    messages = [f"skipped: {message}" for _path, message in report.failed]
    if report.stopped:
        messages.append(
            f"error: stopped: {report.stopped}; {len(report.left)} image(s) not reached. "
            "Make room and run the same command again"
        )
    done = len(report.done)
    if info.enabled:
        gathered = gather_messages("\n".join(messages), info, max_bytes=1 << 16)
        messages = [m for text in gathered for m in text.splitlines() if m]
        done = sum(int(t or 0) for t in gather_messages(str(len(report.done)), info, 32))
    return messages, done


def run_segment(args: argparse.Namespace) -> int:
    from glaclip.config import check_vocabulary_size, settings_from_kwargs, unlabelled_value
    from glaclip.io.batch import check_outputs, collect_images, segment_files
    from glaclip.model.distributed import process_group

    vocabulary = segment_classes(args)
    classes = len(vocabulary.classes)
    settings = settings_from_args(args)
    settings.setdefault("background_index", unlabelled_value(classes))
    # everything that can be checked is checked before any model loads
    check_vocabulary_size(classes, settings["background_index"])
    settings_from_kwargs(**settings)
    paths = collect_images(args.images)
    out = Path(args.out)
    check_outputs(paths, out, not args.no_overlay, args.overwrite)  # before the lock makes --out
    with locks([(out, "--out")]), process_group(args.device) as (info, args.device):
        check_outputs(paths, out, not args.no_overlay, args.overwrite)  # again, under the lock
        segmenter = options.build_segmenter(args, settings)
        report = segment_files(
            segmenter,
            paths,
            vocabulary,
            out,
            outputs_checked=True,
            write_overlay=not args.no_overlay,
            models=model_identity(args),
            dist=info,
            progress=not args.no_progress and info.is_main,
            overwrite=args.overwrite,
        )
        messages, done = _summary(report, info)
    if not info.is_main:
        return 0
    for line in messages:
        print(f"glaclip: {line}", file=sys.stderr)
    failed = sum(line.startswith("skipped:") for line in messages)
    print(
        f"segmented {done} image(s) into {args.out}" + (f"; {failed} failed" if failed else ""),
        file=sys.stderr,
    )
    return 1 if messages else 0
