"""The command line's parser: every subcommand and flag. It imports no PyTorch (nor OpenCV or
Pillow), so that ``glaclip --help`` and every subcommand's ``--help`` answer at once."""

from __future__ import annotations

import argparse

from glaclip import __version__
from glaclip.cli.options import add_method_arguments, add_model_arguments
from glaclip.cli.prepare import add_prepare_parser
from glaclip.cli.tiny import add_tiny_parser
from glaclip.data.presets import PRESETS


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
