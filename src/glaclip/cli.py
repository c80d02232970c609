"""Command line: ``glaclip segment``, ``eval``, ``prepare`` and ``demo``. Thin: parse, call."""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import signal
import sys
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from glaclip import __version__
from glaclip.cli_prepare import add_prepare_parser, print_data_check, run_prepare
from glaclip.cli_terms import Flag, parser_flags, to_flags
from glaclip.cli_tiny import add_tiny_parser, run_tiny
from glaclip.data import PRESETS
from glaclip.options import (
    UNLABELLED,
    add_method_arguments,
    add_model_arguments,
    build_segmenter,
    model_identity,
    settings_from_args,
)

if TYPE_CHECKING:
    from glaclip.distributed import DistInfo
    from glaclip.table import Benchmark, Report


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    """The ``glaclip eval`` flags of the dataset side (model and method flags come apart)."""
    g = p.add_argument_group("evaluation")
    g.add_argument(
        "--dataset",
        required=True,
        choices=[*PRESETS, "all"],
        help="benchmark preset, or all: every benchmark found under --data-root (Table 1)",
    )
    g.add_argument(
        "--data-root",
        required=True,
        help="the dataset's root folder (with --dataset all: the folder holding them all)",
    )
    g.add_argument(
        "--out",
        help="folder for results.json, results.md, state (all: OUT/<preset>/ and table1.*); "
        "required unless --check",
    )
    g.add_argument("--class-file", help="custom vocabulary in label order (default: preset's)")
    g.add_argument(
        "--reduce-zero-label",
        action=argparse.BooleanOptionalAction,
        help="ground truth 0 -> ignored, others minus 1 (default: the preset's)",
    )
    g.add_argument(
        "--limit",
        type=int,
        help="evaluate only the first N images (of each benchmark); writes results_limitN.*",
    )
    g.add_argument("--save-predictions", metavar="DIR", help="write DIR/<image id>.png labels")
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="replace result and prediction files that glaclip did not write (refused otherwise)",
    )
    g.add_argument("--restart", action="store_true", help="discard the resume state found in --out")
    g.add_argument(
        "--check",
        action="store_true",
        help="check the data only (counts, label sizes and values, estimated time), then exit",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


DEMO_INSTALL = (
    'the demo needs Gradio: pip install "gradio>=6.0" (the demo extra of glaclip: '
    'pip install -e ".[demo]" in its clone)'
)


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    """The ``glaclip demo`` flags of the web server (model and method flags come apart)."""
    g = p.add_argument_group("web server")
    g.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    g.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    g.add_argument(
        "--share", action="store_true", help="also open a public link through Gradio's relay"
    )
    g.add_argument(
        "--max-megapixels",
        type=float,
        default=16.0,
        help="refuse larger uploads (default: 16)",
    )
    g.add_argument(
        "--max-classes",
        type=int,
        default=200,
        help="refuse requests with more class names, synonyms counted (default: 200)",
    )
    g.add_argument(
        "--max-name-length",
        type=int,
        default=100,
        help="refuse class names longer than this many characters (default: 100)",
    )
    g.add_argument(
        "--cache-class-names",
        action="store_true",
        help="also keep the class names users type in the text cache on disk (default: only "
        "the benchmark vocabularies' names are written there)",
    )


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
    seg.add_argument(
        "--overwrite",
        action="store_true",
        help="replace files at the output paths that glaclip did not write (refused otherwise)",
    )
    seg.add_argument("--no-overlay", action="store_true", help="do not write overlay images")
    seg.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_model_arguments(seg)
    add_method_arguments(seg)

    ev = sub.add_parser("eval", help="evaluate on a benchmark dataset (mIoU, BER)")
    add_eval_arguments(ev)
    add_model_arguments(ev)
    add_method_arguments(ev)

    demo = sub.add_parser("demo", help="serve a browser demo (needs Gradio: the demo extra)")
    add_demo_arguments(demo)
    add_model_arguments(demo)
    add_method_arguments(demo)

    add_prepare_parser(sub)
    add_tiny_parser(sub)
    return parser


def _segment_classes(args: argparse.Namespace) -> list[str]:
    """The class lines of ``--classes`` or ``--class-file``, each class able to win as the text
    encoder will see it (checked with the tokenizer where it needs no download)."""
    from glaclip.backbones import load_tokenizer
    from glaclip.text import EncoderView, check_vocabulary, parse_classes_arg, read_class_file

    if args.class_file:
        lines = read_class_file(args.class_file)
        source = f"class file {args.class_file}"
    else:
        lines = parse_classes_arg(args.classes, source="--classes")
        source = "--classes"
    check_vocabulary(lines, source)
    tokenizer = load_tokenizer(args.clip)
    if tokenizer is not None:
        check_vocabulary(lines, source, keys=EncoderView(tokenizer))
    return lines


def _run_segment(args: argparse.Namespace) -> int:
    from glaclip.batch import check_outputs, collect_images, segment_files
    from glaclip.config import check_vocabulary_size, settings_from_kwargs, unlabelled_value
    from glaclip.distributed import gather_messages, process_group

    lines = _segment_classes(args)
    settings = settings_from_args(args)
    settings.setdefault("background_index", unlabelled_value(len(lines)))
    # everything that can be checked is checked before any model loads
    check_vocabulary_size(len(lines), settings["background_index"])
    settings_from_kwargs(**settings)
    paths = collect_images(args.images)
    out = Path(args.out)
    check_outputs(paths, out, not args.no_overlay, args.overwrite)
    with _locks([(out, "--out")]), process_group(args.device) as (info, args.device):
        check_outputs(paths, out, not args.no_overlay, args.overwrite)  # now under the lock
        segmenter = build_segmenter(args, settings)
        report = segment_files(
            segmenter,
            paths,
            lines,
            out,
            write_overlay=not args.no_overlay,
            models=model_identity(args),
            dist=info,
            progress=not args.no_progress and info.is_main,
            overwrite=args.overwrite,
        )
        # one summary for the whole run, from rank 0 (under torchrun)
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


def _locks(folders: list[tuple[Path, str]]) -> contextlib.AbstractContextManager:
    """The output folders' locks, held by the main process of a run (rank 0 under torchrun,
    where the other ranks write into the same folders)."""
    from glaclip.outputs import is_main_process, output_locks

    return output_locks(folders) if is_main_process() else contextlib.nullcontext()


def _run_eval(args: argparse.Namespace) -> int:
    """``glaclip eval``: one benchmark (``evaluate``), or every one (``--dataset all``)."""
    from glaclip.distributed import process_group
    from glaclip.evaluate import plan_eval, run_eval

    if args.check:
        return 0 if print_data_check(args) else 1
    if args.out is None:
        raise ValueError("--out is required: the folder for the results (or pass --check)")
    if args.dataset == "all":
        return _run_eval_all(args)
    plan = plan_eval(
        args.dataset,
        args.data_root,
        args.out,
        settings_from_args(args),
        model_identity(args),
        class_file=args.class_file,
        limit=args.limit,
        reduce_zero_label=args.reduce_zero_label,
        save_predictions=args.save_predictions,
        restart=args.restart,
        overwrite=args.overwrite,
    )
    with _locks(_eval_folders(args)), process_group(args.device) as (info, args.device):
        segmenter = build_segmenter(args, plan.settings)
        results, path = run_eval(plan, segmenter, info, progress=not args.no_progress)
    if info.is_main:
        _print_result(plan.task.dataset, results, path)
    return 0


def _eval_folders(args: argparse.Namespace) -> list[tuple[Path, str]]:
    folders = [(Path(args.out), "--out")]
    if args.save_predictions:
        folders.append((Path(args.save_predictions), "--save-predictions"))
    return folders


def _print_result(name: str, results: dict, path: Path) -> None:
    from glaclip.reports import format_percent, outside_note

    print(
        f"{name}: mIoU {format_percent(results['mIoU'])}, "
        f"aAcc {format_percent(results['aAcc'])}, BER {format_percent(results['BER'])} "
        f"on {results['num_images']} images ({results['resumed_images']} resumed); "
        f"wrote {path}",
        file=sys.stderr,
    )
    outside = results["label_pixels_outside_classes"]
    if outside:
        note = outside_note(outside, len(results["per_class"]))
        print(f"glaclip: warning: {name}: {note}", file=sys.stderr)


def _run_eval_all(args: argparse.Namespace) -> int:
    """``--dataset all``: every benchmark under --data-root, then table1.json/md (``table``)."""
    from glaclip.distributed import dist_info_from_env, process_group
    from glaclip.table import plan_table, run_table

    _refuse_one_benchmark_flags(args)
    plan = plan_table(
        args.data_root,
        args.out,
        settings_from_args(args),
        model_identity(args),
        limit=args.limit,
        save_predictions=args.save_predictions,
        restart=args.restart,
        overwrite=args.overwrite,
    )
    if dist_info_from_env().is_main:  # what is there, and how long it will take
        print_data_check(args)
    with _locks(_eval_folders(args)), process_group(args.device) as (info, args.device):
        for bench in plan.benchmarks:
            if bench.status == "failed" and info.is_main:
                print(
                    f"glaclip: error: {bench.preset.title}: {_in_flags(bench.reason)}",
                    file=sys.stderr,
                )
        table, md_path = run_table(
            plan,
            lambda settings: build_segmenter(args, settings),
            info,
            progress=not args.no_progress,
            report=_benchmark_report(plan.out, info),
        )
    if info.is_main:
        _print_table(table, md_path)
    return 1 if table["failed"] else 0


def _refuse_one_benchmark_flags(args: argparse.Namespace) -> None:
    """``--class-file`` and ``--[no-]reduce-zero-label`` have no meaning with ``--dataset all``."""
    for flag_name, value in (
        ("--class-file", args.class_file),
        ("--[no-]reduce-zero-label", args.reduce_zero_label),
    ):
        if value is not None:
            raise ValueError(
                f"{flag_name} belongs to one benchmark: use it with --dataset NAME (with "
                "--dataset all, each benchmark uses its preset's class file and labels)"
            )


def _benchmark_report(out: Path, info: DistInfo) -> Report:
    """What a ``--dataset all`` run says after each benchmark (rank 0 alone)."""
    from glaclip.reports import results_stem

    def report(bench: Benchmark, results: dict | None, error: Exception | None) -> None:
        name = bench.preset.name
        if error is not None:  # every rank has it (the others' messages in OtherRankFailed)
            if info.is_main:
                print(
                    f"glaclip: error: {bench.preset.title}: {_in_flags(str(error))}",
                    file=sys.stderr,
                )
        elif info.is_main and results is not None:
            stem = results_stem(results.get("limit"))
            _print_result(name, results, out / name / f"{stem}.json")

    return report


def _print_table(table: dict[str, Any], md_path: Path | None) -> None:
    from glaclip.reports import format_percent

    avg = table["average"]
    print(
        f"Table 1: average mIoU {format_percent(avg['mIoU'])} over {avg['benchmarks']} "
        f"benchmark(s); {len(table['not_run'])} not found, {len(table['failed'])} failed; "
        f"wrote {md_path}",
        file=sys.stderr,
    )


def check_server_flags(port: int, max_megapixels: float) -> None:
    """Raise ValueError unless ``--port`` is a TCP port and ``--max-megapixels`` a finite
    positive number."""
    if not 1 <= port <= 65535:
        raise ValueError(f"--port must be a TCP port from 1 to 65535, got {port}")
    if not math.isfinite(max_megapixels) or max_megapixels <= 0:
        raise ValueError(
            f"--max-megapixels must be a finite number above 0, got {max_megapixels:g} "
            "(the default is 16)"
        )


def _run_demo(args: argparse.Namespace) -> int:
    from glaclip.cli_server import announce, check_port
    from glaclip.config import settings_from_kwargs

    check_server_flags(args.port, args.max_megapixels)
    _check_demo_limits(args)
    check_port(args.host, args.port)
    settings = settings_from_args(args)
    settings.setdefault("background_index", UNLABELLED)
    settings_from_kwargs(**settings)  # refused before any model loads
    try:
        import gradio  # noqa: F401
    except ImportError:
        return _fail(DEMO_INSTALL)
    from glaclip.demo import serve

    segmenter = build_segmenter(args, settings)
    try:
        serve(
            segmenter,
            model_identity(args),
            host=args.host,
            port=args.port,
            share=args.share,
            max_megapixels=args.max_megapixels,
            max_classes=args.max_classes,
            max_name_length=args.max_name_length,
            cache_class_names=args.cache_class_names,
            announce=announce,
        )
    except OSError as err:
        return _fail(f"cannot serve on {args.host}:{args.port}: {err} Choose another --port.")
    return 0


def _check_demo_limits(args: argparse.Namespace) -> None:
    """Raise ValueError unless ``--max-classes`` and ``--max-name-length`` are usable."""
    from glaclip.vocabulary import MAX_NAME_CHARS

    if not 1 <= args.max_classes <= 65535:
        raise ValueError(f"--max-classes must be from 1 to 65535, got {args.max_classes}")
    if not 1 <= args.max_name_length <= MAX_NAME_CHARS:
        raise ValueError(
            f"--max-name-length must be from 1 to {MAX_NAME_CHARS} characters, got "
            f"{args.max_name_length}"
        )


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


def _fail(message: str) -> int:
    print(f"glaclip: error: {_in_flags(message)}", file=sys.stderr)
    return 2


@functools.cache
def _flags() -> dict[str, Flag]:
    return parser_flags(build_parser())


def _in_flags(message: str) -> str:
    """A library message (which names Python keywords) in the terms of the command line."""
    return to_flags(message, _flags())


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """A warning as one line, ``glaclip: warning: ...``, without the source line."""
    print(f"glaclip: warning: {_in_flags(str(message))}", file=file or sys.stderr)


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: the run stops as after Ctrl-C (outputs of the image being written
    removed, locks released), with status 143."""


def _terminate(_signum: int, _frame: Any) -> None:
    raise Terminated


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Any:
    """SIGTERM stops the command the way Ctrl-C does, for the duration of the block (from
    the main thread only, where Python runs signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (130 after Ctrl-C, 143 after SIGTERM)."""
    with warnings.catch_warnings(), _sigterm_as_interrupt():
        warnings.showwarning = _show_warning
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "no_progress", True) is False and not _is_terminal(sys.stderr):
        args.no_progress = True  # progress bars only on a terminal, not in logs and pipes
    from glaclip.backbones import ModelLoadError
    from glaclip.imageio import WriteError

    try:
        if args.command == "segment":
            return _run_segment(args)
        if args.command == "eval":
            return _run_eval(args)
        if args.command == "demo":
            return _run_demo(args)
        if args.command == "prepare":
            return run_prepare(args)
        if args.command == "tiny-models":
            return run_tiny(args)
    except WriteError as err:  # before FileNotFoundError: a folder vanished while writing
        print(f"glaclip: error: {err}", file=sys.stderr)
        return 1
    except (ModelLoadError, ValueError, FileNotFoundError) as err:
        return _fail(str(err))
    except OSError as err:  # the file system failed; one line, not a traceback
        where = f"{err.filename}: " if err.filename and str(err.filename) not in str(err) else ""
        print(f"glaclip: error: {where}{err.strerror or err}", file=sys.stderr)
        return 1
    except Terminated:
        print("glaclip: terminated", file=sys.stderr)
        return 143  # 128 + SIGTERM, as shells report it
    except KeyboardInterrupt:
        print("glaclip: interrupted", file=sys.stderr)
        return 130  # 128 + SIGINT, as shells report it
    return _fail(f"unknown command {args.command!r}")
