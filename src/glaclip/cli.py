"""Command line: ``glaclip segment``, ``glaclip eval``, ``glaclip prepare``. Thin: parse, call."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from glaclip import __version__
from glaclip.data import PRESETS
from glaclip.options import (
    UNLABELLED,
    add_method_arguments,
    add_model_arguments,
    build_segmenter,
    model_identity,
    settings_from_args,
)


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    """The ``glaclip eval`` flags of the dataset side (model and method flags come apart)."""
    g = p.add_argument_group("evaluation")
    g.add_argument("--dataset", required=True, choices=list(PRESETS), help="benchmark preset")
    g.add_argument("--data-root", required=True, help="the dataset's root folder")
    g.add_argument("--out", required=True, help="folder for results.json, results.md, state")
    g.add_argument("--class-file", help="custom vocabulary in label order (default: preset's)")
    g.add_argument(
        "--reduce-zero-label",
        action=argparse.BooleanOptionalAction,
        help="ground truth 0 -> ignored, others minus 1 (default: the preset's)",
    )
    g.add_argument("--limit", type=int, help="evaluate only the first N images")
    g.add_argument("--save-predictions", metavar="DIR", help="write DIR/<image id>.png labels")
    g.add_argument("--restart", action="store_true", help="discard the resume state found in --out")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="glaclip",
        description="Training-free open-vocabulary semantic segmentation with GLA-CLIP.",
    )
    parser.add_argument("--version", action="version", version=f"glaclip {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    seg = sub.add_parser("segment", help="segment images into the classes you name")
    seg.add_argument("images", nargs="+", help="image files or folders of images")
    cls = seg.add_mutually_exclusive_group(required=True)
    cls.add_argument(
        "--classes",
        help="'sky, tree, person; man': commas between classes, "
        "semicolons between synonyms of one class",
    )
    cls.add_argument("--class-file", help="one class per line, synonyms separated by '; '")
    seg.add_argument("--out", required=True, help="output folder")
    seg.add_argument("--no-overlay", action="store_true", help="do not write overlay images")
    add_model_arguments(seg)
    add_method_arguments(seg)

    ev = sub.add_parser("eval", help="evaluate on a benchmark dataset (mIoU, BER)")
    add_eval_arguments(ev)
    add_model_arguments(ev)
    add_method_arguments(ev)

    prep = sub.add_parser("prepare", help="convert dataset annotations")
    prep_sub = prep.add_subparsers(dest="what", required=True)
    coco = prep_sub.add_parser(
        "coco-object", help="COCO-Stuff164k label maps -> COCO-Object labels (things 1..80)"
    )
    coco.add_argument("src", help="folder of COCO-Stuff label maps")
    coco.add_argument("dst", help="output folder for *_instanceTrainIds.png")
    return parser


def _run_segment(args: argparse.Namespace) -> int:
    from glaclip.batch import collect_images, segment_files
    from glaclip.distributed import process_group
    from glaclip.text import check_vocabulary, parse_classes_arg, read_class_file

    if args.class_file:
        lines = read_class_file(args.class_file)
        check_vocabulary(lines, source=f"class file {args.class_file}")
    else:
        lines = parse_classes_arg(args.classes, source="--classes")
        check_vocabulary(lines, source="--classes")
    settings = settings_from_args(args)
    settings.setdefault("background_index", UNLABELLED)
    paths = collect_images(args.images)
    with process_group(args.device) as (info, args.device):
        segmenter = build_segmenter(args, settings)
        report = segment_files(
            segmenter,
            paths,
            lines,
            Path(args.out),
            write_overlay=not args.no_overlay,
            models=model_identity(args),
            dist=info,
        )
    for _path, message in report.failed:
        print(f"glaclip: skipped: {message}", file=sys.stderr)
    print(
        f"segmented {len(report.done)} image(s) into {args.out}"
        + (f"; {len(report.failed)} failed" if report.failed else ""),
        file=sys.stderr,
    )
    return 1 if report.failed else 0


def _run_eval(args: argparse.Namespace) -> int:
    from glaclip.config import settings_from_kwargs
    from glaclip.distributed import process_group
    from glaclip.evaluate import (
        STATE_DIR,
        evaluate,
        format_percent,
        make_task,
        preset_settings,
        read_state,
        state_config,
        write_results,
    )

    task = make_task(
        args.dataset, args.data_root, args.class_file, args.limit, args.reduce_zero_label
    )
    settings = {**preset_settings(args.dataset), **settings_from_args(args)}
    models = model_identity(args)
    out = Path(args.out)
    if not args.restart:  # refuse a foreign state before loading any model
        config = state_config(task, settings_from_kwargs(**settings).to_dict(), models)
        read_state(out / STATE_DIR, config, 4 * len(task.class_lines) + 2)
    with process_group(args.device) as (info, args.device):
        segmenter = build_segmenter(args, settings)
        results = evaluate(
            segmenter,
            task,
            out,
            models=models,
            save_predictions=args.save_predictions,
            restart=args.restart,
            dist=info,
            progress=not args.no_progress,
        )
        if info.is_main:
            write_results(out, results)
    if info.is_main:
        print(
            f"{task.dataset}: mIoU {format_percent(results['mIoU'])}, "
            f"aAcc {format_percent(results['aAcc'])}, BER {format_percent(results['BER'])} "
            f"on {results['num_images']} images ({results['resumed_images']} resumed); "
            f"wrote {out / 'results.json'}",
            file=sys.stderr,
        )
    return 0


def _fail(message: str) -> int:
    print(f"glaclip: error: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    from glaclip.backbones import ModelLoadError

    try:
        if args.command == "segment":
            return _run_segment(args)
        if args.command == "eval":
            return _run_eval(args)
        if args.command == "prepare":
            from glaclip.data.coco_object import convert_coco_object

            count = convert_coco_object(Path(args.src), Path(args.dst))
            print(f"wrote {count} COCO-Object label maps to {args.dst}")
            return 0
    except (ModelLoadError, ValueError, FileNotFoundError) as err:
        return _fail(str(err))
    except KeyboardInterrupt:
        return _fail("interrupted")
    return _fail(f"unknown command {args.command!r}")
