"""Make the compact golden set in ``tests/golden/`` from the full fixtures.

The full fixtures (the reference implementation's outputs, 67 MB) hold, per case, the input
image and the stitched logits at every pixel. The compact set keeps what the tests need to
apply the same tolerance rule at a fraction of the size:

* ``models.pt``: the tiny models, unchanged;
* per case: ``class_lines``, ``params``, ``text_features``, the full ``pred`` (labels), and
  ``logits`` on a regular subgrid only (rows and columns ``start::step``, float32), with
  ``subgrid = {"start": ..., "step": ...}`` stated in the file. ``image`` is dropped: it is
  remade exactly from ``params`` (``tests.golden.remake_image``).

It also copies the reference implementation's class files into ``tests/data/reference_classes``.

Run it again when the fixtures change::

    python tests/make_compact_golden.py --shared ../shared
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.golden import (  # noqa: E402
    COMPACT_DIR,
    GOLDEN_CASES,
    REFERENCE_CLASSES_DIR,
    SUBGRID_START,
    SUBGRID_STEP,
    remake_image,
)


def compact_case(full: dict) -> dict:
    """The compact form of one full case (see the module docstring)."""
    image = remake_image(full["params"])
    if not torch.equal(image, full["image"]):
        worst = (image - full["image"]).abs().max().item()
        print(f"  note: the remade image differs from the stored one by up to {worst:.2e}")
    s, t = SUBGRID_START, SUBGRID_STEP
    return {
        "class_lines": list(full["class_lines"]),
        "params": dict(full["params"]),
        "text_features": full["text_features"].float().contiguous(),
        "pred": full["pred"].contiguous(),
        "logits": full["logits"][:, s::t, s::t].float().contiguous(),
        "subgrid": {"start": s, "step": t},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--shared",
        type=Path,
        default=REPO.parent / "shared",
        help="folder holding golden/ and reference_classes/ (default ../shared)",
    )
    args = parser.parse_args(argv)
    source = args.shared / "golden"
    if not (source / "models.pt").is_file():
        parser.error(f"no full golden fixtures at {source} (models.pt missing)")
    COMPACT_DIR.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source / "models.pt", COMPACT_DIR / "models.pt")
    for case in GOLDEN_CASES:
        print(case)
        full = torch.load(source / f"{case}.pt", weights_only=True)
        torch.save(compact_case(full), COMPACT_DIR / f"{case}.pt")
    classes = args.shared / "reference_classes"
    if classes.is_dir():
        REFERENCE_CLASSES_DIR.mkdir(parents=True, exist_ok=True)
        for path in sorted(classes.glob("*.txt")):
            shutil.copyfile(path, REFERENCE_CLASSES_DIR / path.name)
    total = sum(p.stat().st_size for p in COMPACT_DIR.glob("*.pt"))
    print(f"wrote {COMPACT_DIR} ({total / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
