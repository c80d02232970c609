"""Command line: ``glaclip segment``, ``glaclip eval``, ``glaclip prepare``. Thin: parse, call."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from glaclip import __version__

UNLABELLED = 255  # label of low-confidence pixels in a user run (no background class)

# flat setting name -> (flag, type, help); switches are handled separately
_NUMBERS: list[tuple[str, type, str]] = [
    ("proxy_iters", int, "proxy-anchor iterations T (paper: 2)"),
    ("proxy_threshold", float, "proxy-anchor threshold tau (paper: 0.6)"),
    ("beta_alpha", float, "lambda1 of the dynamic beta (paper: 0.3)"),
    ("gamma_alpha", float, "lambda2 of the dynamic gamma (paper: 30)"),
    ("fixed_beta", float, "beta when dynamic normalisation is off (1.2)"),
    ("fixed_gamma", float, "gamma when dynamic normalisation is off (3.0)"),
    ("logit_scale", float, "softmax scale of the cosine logits (40)"),
    ("crop", int, "window side in pixels (224)"),
    ("stride", int, "window stride in pixels (112)"),
    ("short_side", int, "resize the image's short side to this (336)"),
    ("max_long_side", int, "cap on the resized long side (2048)"),
    ("window_batch", int, "windows per backbone batch (4)"),
    ("block_size", int, "query rows per attention block (default: from free memory)"),
]
_SWITCHES: list[tuple[str, str]] = [
    ("kv_extension", "attend across all windows (off: per-window ProxyCLIP baseline)"),
    ("proxy_anchor", "proxy anchors"),
    ("dynamic_norm", "dynamic beta and gamma"),
    ("token_norm", "per-token mean in the normalisation"),
]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """Backbone, device and runtime flags."""
    g = p.add_argument_group("models and device")
    g.add_argument("--clip", default="ViT-B-16", help="open_clip model name, hf-hub: or local-dir:")
    g.add_argument(
        "--clip-pretrained",
        default="openai",
        help="open_clip pretrained tag or a local checkpoint file (default: openai)",
    )
    g.add_argument(
        "--vfm",
        default="vit_base_patch8_224.dino",
        help="timm model name with tag, or local-dir:DIR (default: vit_base_patch8_224.dino)",
    )
    g.add_argument("--vfm-checkpoint", help="local weight file for the --vfm architecture")
    g.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: best available)")
    g.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="backbone precision")
    g.add_argument(
        "--text-cache",
        default="default",
        help="folder for cached text embeddings (default: $GLACLIP_CACHE or ~/.cache/glaclip)",
    )
    g.add_argument("--no-text-cache", action="store_true", help="do not cache text embeddings")


def add_method_arguments(p: argparse.ArgumentParser) -> None:
    """Every switch and number of the method (unset flags keep the paper's or preset's value)."""
    g = p.add_argument_group("method (defaults: the paper's)")
    for name, help_text in _SWITCHES:
        g.add_argument(
            _flag(name), dest=name, action=argparse.BooleanOptionalAction, help=help_text
        )
    for name, typ, help_text in _NUMBERS:
        g.add_argument(_flag(name), dest=name, type=typ, help=help_text)
    g.add_argument(
        "--prob-threshold",
        type=float,
        help="pixels whose best class probability is below this get --background-index",
    )
    g.add_argument("--background-index", type=int, help="label for low-confidence pixels")
    g.add_argument(
        "--attention-impl",
        choices=["blocked", "dense"],
        help="blocked: exact and memory-bounded (default); dense: the N x N reference oracle",
    )
    g.add_argument(
        "--fused-attention",
        action="store_true",
        help="fused attention kernel in the VFM (faster on GPUs; not bit-faithful)",
    )


def settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The flat settings given on the command line (unset flags are left out)."""
    out: dict[str, Any] = {}
    names = [n for n, _ in _SWITCHES] + [n for n, _, _ in _NUMBERS]
    names += ["prob_threshold", "background_index", "precision", "attention_impl"]
    for name in names:
        value = getattr(args, name, None)
        if value is not None:
            out[name] = value
    if getattr(args, "fused_attention", False):
        out["fused_attention"] = True
    return out


def build_segmenter(args: argparse.Namespace, settings: dict[str, Any]):
    """A Segmenter from the model flags and flat settings."""
    from glaclip.segmenter import Segmenter

    return Segmenter.from_pretrained(
        clip=args.clip,
        clip_pretrained=args.clip_pretrained,
        vfm=args.vfm,
        vfm_checkpoint=args.vfm_checkpoint,
        device=args.device,
        text_cache_dir=None if args.no_text_cache else args.text_cache,
        **settings,
    )


def model_identity(args: argparse.Namespace) -> dict[str, Any]:
    """The backbones as named on the command line (for result files)."""
    return {
        "clip": args.clip,
        "clip_pretrained": None
        if args.clip.startswith(("hf-hub:", "local-dir:"))
        else args.clip_pretrained,
        "vfm": args.vfm,
        "vfm_checkpoint": args.vfm_checkpoint,
    }


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
    from glaclip.evaluate import add_eval_arguments

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
    from glaclip.text import parse_classes_arg, read_class_file

    lines = read_class_file(args.class_file) if args.class_file else parse_classes_arg(args.classes)
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
            from glaclip.evaluate import run_eval

            return run_eval(args)
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
