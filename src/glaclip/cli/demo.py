"""``glaclip demo``: the browser demo over one loaded Segmenter."""

from __future__ import annotations

import argparse
import math

from glaclip.cli import options
from glaclip.cli.common import fail
from glaclip.cli.options import UNLABELLED, model_identity, settings_from_args

DEMO_INSTALL = (
    'the demo needs Gradio: pip install "gradio>=6.0" (the demo extra of glaclip: '
    'pip install -e ".[demo]" in its clone)'
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


def run_demo(args: argparse.Namespace) -> int:
    from glaclip.cli.server import announce, check_port
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
        return fail(DEMO_INSTALL)
    from glaclip.demo.app import serve

    segmenter = options.build_segmenter(args, settings)
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
        return fail(f"cannot serve on {args.host}:{args.port}: {err} Choose another --port.")
    return 0


def _check_demo_limits(args: argparse.Namespace) -> None:
    """Raise ValueError unless ``--max-classes`` and ``--max-name-length`` are usable."""
    from glaclip.text.vocabulary import MAX_NAME_CHARS

    if not 1 <= args.max_classes <= 65535:
        raise ValueError(f"--max-classes must be from 1 to 65535, got {args.max_classes}")
    if not 1 <= args.max_name_length <= MAX_NAME_CHARS:
        raise ValueError(
            f"--max-name-length must be from 1 to {MAX_NAME_CHARS} characters, got "
            f"{args.max_name_length}"
        )
