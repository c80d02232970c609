"""``glaclip tiny-models DIR``: write tiny random-weight models and print the flags that use them
(``glaclip.model.tiny``)."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

TINY_DESCRIPTION = """\
Write a tiny CLIP and a tiny VFM with random weights (made from --seed) as the local folders
DIR/clip and DIR/vfm, 8 MB in all, and print the flags that select them. They need no
download and run every stage of glaclip in a second or two per image on a CPU: to try the
commands and the demo, or to test code that uses glaclip. Their weights are random, so the
labels they give mean nothing.
"""


def add_tiny_parser(sub: Any) -> None:
    """The ``tiny-models`` subcommand."""
    p = sub.add_parser(
        "tiny-models",
        help="write tiny random-weight models to try glaclip without downloading anything",
        description=TINY_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dir", metavar="DIR", help="folder to write clip/ and vfm/ into")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: 0)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace tiny models written there before"
    )


def run_tiny(args: argparse.Namespace) -> int:
    """Write the models; the flags go to stdout (for ``$(...)``), the rest to stderr."""
    from glaclip.model.tiny import write_tiny_models

    try:
        tiny = write_tiny_models(args.dir, seed=args.seed, overwrite=args.overwrite)
    except FileExistsError as err:
        raise ValueError(str(err)) from None  # the CLI's refusal: status 2, in its terms
    print(
        f"glaclip: wrote tiny random-weight models (seed {args.seed}) to {args.dir}; their "
        "labels mean nothing. Use them with:",
        file=sys.stderr,
    )
    print(shlex.join(tiny.flags()))
    return 0
