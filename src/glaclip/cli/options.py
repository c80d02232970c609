"""Command-line options shared by ``glaclip segment``, ``eval`` and ``demo``.

The flags of the models and of the method, the flat settings they give, and the Segmenter
they build. Every command that runs the model takes the same flags from here.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import TYPE_CHECKING, Any

from glaclip.config import PRECISIONS, GLAConfig
from glaclip.constants import DEFAULT_CLIP, DEFAULT_CLIP_PRETRAINED, DEFAULT_VFM
from glaclip.model.names import ModelInfo
from glaclip.model.names import model_identity as identity_of
from glaclip.registry import needs_vfm, registered

if TYPE_CHECKING:
    from glaclip.model.segmenter import Segmenter

UNLABELLED = 255  # label of low-confidence pixels in a user run (no background class)

# flat setting name -> (type, help); switches are handled separately
NUMBERS: list[tuple[str, type, str]] = [
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
    (
        "area_threshold",
        float,
        "drop the classes (background aside) whose share of the pixels' "
        "best classes is not above this, before the labels are taken (SCLIP's rule; 0: off)",
    ),
    (
        "pamr_steps",
        int,
        "refine the class maps along the image's edges with this many PAMR "
        "steps (NACLIP's protocol: 10; 0: off)",
    ),
]
SWITCHES: list[tuple[str, str]] = [
    ("kv_extension", "attend across all windows (GLA; off: the base method per window)"),
    ("proxy_anchor", "proxy anchors"),
    ("dynamic_norm", "dynamic beta and gamma"),
    ("dynamic_beta", "with --dynamic-norm: beta from the window count (off: --fixed-beta)"),
    ("token_norm", "per-token mean in the normalisation"),
    (
        "whole_image",
        "one pass over the whole image, no windows (the bases that run images as their "
        "authors' code does; NACLIP's VOC protocol)",
    ),
]


def flag(name: str) -> str:
    """``proxy_iters`` -> ``--proxy-iters``."""
    return "--" + name.replace("_", "-")


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """Backbone, device and runtime flags."""
    g = p.add_argument_group("models and device")
    g.add_argument(
        "--clip",
        default=DEFAULT_CLIP,
        help=f"open_clip model name, hf-hub:ORG/REPO or local-dir:DIR (default: {DEFAULT_CLIP})",
    )
    g.add_argument(
        "--clip-pretrained",
        default=DEFAULT_CLIP_PRETRAINED,
        help=f"open_clip pretrained tag or a local checkpoint file (default: "
        f"{DEFAULT_CLIP_PRETRAINED})",
    )
    g.add_argument(
        "--vfm",
        default=DEFAULT_VFM,
        help=f"timm model name with tag, or local-dir:DIR (default: {DEFAULT_VFM}; "
        "unused by the base methods that need no VFM)",
    )
    g.add_argument("--vfm-checkpoint", help="local weight file for the --vfm architecture")
    g.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: best available)")
    g.add_argument(
        "--precision",
        choices=list(PRECISIONS),
        help="backbone precision (default fp32; bf16/fp16 are faster only on GPUs and on CPUs "
        "with native bf16/fp16 instructions, and change a few labels)",
    )
    g.add_argument(
        "--text-cache",
        metavar="DIR",
        help="folder for cached text embeddings (default: $GLACLIP_CACHE or ~/.cache/glaclip)",
    )
    g.add_argument("--no-text-cache", action="store_true", help="do not cache text embeddings")


def add_method_arguments(p: argparse.ArgumentParser) -> None:
    """Every switch and number of the method (unset flags keep the paper's or preset's value),
    and each registered base method's own settings in a group of their own."""
    g = p.add_argument_group("method (defaults: the paper's)")
    _add_base_choice(g)
    for name, help_text in SWITCHES:
        g.add_argument(flag(name), dest=name, action=argparse.BooleanOptionalAction, help=help_text)
    for name, typ, help_text in NUMBERS:
        g.add_argument(flag(name), dest=name, type=typ, help=help_text)
    g.add_argument(
        "--pamr-dilations",
        type=_dilations,
        metavar="D,D",
        help="PAMR's neighbourhood dilations in pixels (default: 8,16)",
    )
    _add_labelling(g)
    _add_implementation(g)
    _add_base_settings(p)


def _add_base_choice(g: argparse._ArgumentGroup) -> None:
    bases = registered()
    g.add_argument(
        "--base",
        choices=list(bases),
        help="base method: "
        + "; ".join(
            f"{name} ({cls.title}, " + ("keys from the VFM" if cls.needs_vfm else "no VFM") + ")"
            for name, cls in bases.items()
        )
        + f" (default: {GLAConfig.base})",
    )


def _add_base_settings(p: argparse.ArgumentParser) -> None:
    """A group of flags per base method with settings of its own (``settings_class``)."""
    for name, cls in registered().items():
        if cls.settings_class is None:
            continue
        own = p.add_argument_group(f"{cls.title} (--base {name} only)")
        for f in dataclasses.fields(cls.settings_class):
            own.add_argument(
                flag(f.name),
                dest=f.name,
                type=type(f.default),
                choices=f.metadata.get("choices"),
                help=f.metadata.get("help"),
            )


def _add_labelling(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--prob-threshold",
        type=float,
        help="pixels whose best class probability is below this get --background-index "
        "(default: 0, every pixel gets a class; a benchmark preset sets its own)",
    )
    g.add_argument(
        "--background-index",
        type=int,
        help="label of those pixels: a class index, or the unlabelled value (default: 255, "
        "unlabelled; 65535 with more than 255 classes; a benchmark preset sets its own)",
    )


def _add_implementation(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--attention-impl",
        choices=["blocked", "dense"],
        help="blocked: exact and memory-bounded (default); dense: the N x N reference oracle",
    )
    g.add_argument(
        "--fused-attention",
        choices=["auto", "on", "off"],
        default="auto",
        help="the VFM's fused attention kernel (faster; not bit-faithful to the reference). "
        "auto (default): on with --precision bf16/fp16, off with fp32",
    )
    g.add_argument(
        "--allow-slow",
        action="store_true",
        help="run settings that take far longer than the paper's (a --stride below crop / 8, "
        "more than 10 --proxy-iters), which are refused otherwise",
    )


def settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The flat settings given on the command line (unset flags are left out)."""
    out: dict[str, Any] = {}
    names = [n for n, _ in SWITCHES] + [n for n, _, _ in NUMBERS] + base_setting_names()
    names += ["base", "prob_threshold", "background_index", "precision", "attention_impl"]
    names += ["pamr_dilations"]
    for name in names:
        value = getattr(args, name, None)
        if value is not None:
            out[name] = value
    if getattr(args, "fused_attention", "auto") != "auto":
        out["fused_attention"] = args.fused_attention == "on"
    if getattr(args, "allow_slow", False):
        out["allow_slow"] = True
    return out


def base_setting_names() -> list[str]:
    """The flat names of every registered base method's own settings (their flags)."""
    names: list[str] = []
    for cls in registered().values():
        if cls.settings_class is not None:
            names += [f.name for f in dataclasses.fields(cls.settings_class)]
    return list(dict.fromkeys(names))


def _dilations(text: str) -> tuple[int, ...]:
    """``--pamr-dilations 8,16`` -> ``(8, 16)``."""
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a list of whole numbers: give e.g. 8,16"
        ) from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: give dilations of at least 1, e.g. 8,16")
    return values


def build_segmenter(args: argparse.Namespace, settings: dict[str, Any]) -> Segmenter:
    """A Segmenter from the model flags and flat settings."""
    from glaclip.model.device import describe_device
    from glaclip.model.segmenter import Segmenter
    from glaclip.text.encoder import USER_CACHE

    cache = USER_CACHE if args.text_cache is None else args.text_cache
    segmenter = Segmenter.from_pretrained(
        clip=args.clip,
        clip_pretrained=args.clip_pretrained,
        vfm=args.vfm,
        vfm_checkpoint=args.vfm_checkpoint,
        device=args.device,
        text_cache_dir=None if args.no_text_cache else cache,
        **settings,
    )
    if os.environ.get("RANK", "0") == "0":  # once under torchrun (each rank: its local GPU)
        print(f"glaclip: running on {describe_device(segmenter.device)}", file=sys.stderr)
    return segmenter


def model_identity(args: argparse.Namespace) -> dict[str, Any]:
    """The backbones as named on the command line, for result files (``names.model_identity``,
    as ``Segmenter.model_names`` gives them); the VFM is None for a base method that uses none."""
    uses_vfm = needs_vfm(getattr(args, "base", None) or GLAConfig.base)
    vfm = ModelInfo(args.vfm, args.vfm_checkpoint) if uses_vfm else None
    return identity_of(ModelInfo(args.clip, args.clip_pretrained), vfm)
