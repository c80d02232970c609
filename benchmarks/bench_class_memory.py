"""Resident memory per class name: one ``Segmenter.segment`` call on a 300 x 200 photo.

Each case runs in a fresh process: the models are built, a warm-up call runs, the peak
resident memory (``VmHWM``) is reset (``/proc/self/clear_refs``, Linux), and one call with N
class names is measured; the class names are embedded before the call, or in it. The growth
from 50 to 500 names, divided by 450, is the memory per class name. ``--models tiny`` (the
default) uses the tests' tiny random models, whose backbones are small, so that what grows with
the classes shows; ``--models real`` the paper's architectures with random weights.

    python benchmarks/bench_class_memory.py
    python benchmarks/bench_class_memory.py --classes 50,500 --models real
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def _status(field: str) -> float:
    """``field`` of ``/proc/self/status`` in MiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def run_child(count: int, embedded: bool, models: str) -> None:
    import _common
    import numpy as np
    import torch

    from glaclip.model.segmenter import Segmenter

    torch.set_num_threads(1)
    build = _common.build_tiny_models if models == "tiny" else _common.build_models
    clip, vfm, tokenizer = build()
    seg = Segmenter.from_modules(clip, vfm, tokenizer, device="cpu", text_cache_dir=None)
    rgb = np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    classes = [f"thing number {i}" for i in range(count)]
    if embedded:
        seg.text.encode(classes)
    seg.segment(rgb, ["warm", "up"])
    before = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # the peak starts again from here
    seg.segment(rgb, classes)
    print(f"{before:.0f} {_status('VmHWM'):.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", default="50,500", help="class counts, comma-separated")
    parser.add_argument("--models", choices=["tiny", "real"], default="tiny")
    parser.add_argument("--child", nargs=2, metavar=("COUNT", "EMBEDDED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(int(args.child[0]), args.child[1] == "1", args.models)
        return
    counts = [int(c) for c in args.classes.split(",")]
    print(f"{'classes':>8} {'names':>22} {'before MiB':>11} {'peak MiB':>9} {'growth MiB':>11}")
    for embedded in (True, False):
        growth = {}
        for count in counts:
            out = subprocess.run(
                [sys.executable, __file__, "--models", args.models, "--child", str(count),
                 "1" if embedded else "0"],
                check=True, capture_output=True, text=True,
            ).stdout.split()  # fmt: skip
            before, peak = float(out[-2]), float(out[-1])
            growth[count] = peak - before
            when = "embedded before" if embedded else "embedded in the call"
            print(f"{count:>8} {when:>22} {before:>11.0f} {peak:>9.0f} {peak - before:>11.0f}")
        if len(counts) > 1:
            lo, hi = min(counts), max(counts)
            per = (growth[hi] - growth[lo]) / (hi - lo)
            print(f"{'':>8} {'per class name':>22} {per:>33.2f}")


if __name__ == "__main__":
    main()
