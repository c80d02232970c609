"""Peak memory of ``glaclip segment`` on large photographs, against the targets.

Two cases, each in a fresh process: a 12-megapixel photo (4032 x 3024) with 100 classes and an
8000 x 8000 image with 20 classes. Each runs the command line's own path,
``batch.segment_files`` (read, segment, label PNG, overlay, JSON), on the paper's backbones
(CLIP ViT-B/16 and DINO ViT-B/8 with random weights: the memory of the real ones). The peak
resident memory of the process (``VmHWM``) is printed beside the memory the models alone take,
and compared with the 3 GB target.

``--check-identity`` also checks that the labels equal those of the former computation, which
resized all class logits to the original size at once (``F.interpolate``, then the softmax):
the banded resize must give the same logits bit for bit. It compares them in groups of
classes (``F.interpolate`` is per channel), so the check itself fits in memory.

    python benchmarks/bench_memory.py
    python benchmarks/bench_memory.py --cases 12mp --check-identity
    python benchmarks/bench_memory.py --base naclip --pamr-steps 10   # GLA on NACLIP, PAMR

``--base`` runs GLA on another base method (per window for one without GLA, MaskCLIP);
``--pamr-steps`` adds PAMR's refinement to the labels.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _common  # noqa: E402

CASES = {  # name -> (height, width, classes)
    "12mp": (3024, 4032, 100),
    "64mp": (8000, 8000, 20),
}
TARGET_GB = 3.0


def _status(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _photo(height: int, width: int, path: str) -> None:
    """A synthetic photograph as a JPEG: the benchmark image, scaled up."""
    import numpy as np
    from PIL import Image

    small = _common.synthetic_image(height // 8, width // 8, seed=0)[0]
    from glaclip.constants import CLIP_MEAN, CLIP_STD

    mean = np.array(CLIP_MEAN)[:, None, None]
    std = np.array(CLIP_STD)[:, None, None]
    rgb = ((small.numpy() * std + mean) * 255).clip(0, 255).astype("uint8").transpose(1, 2, 0)
    Image.fromarray(rgb).resize((width, height), Image.Resampling.BILINEAR).save(path, quality=90)


def _vocabulary(count: int) -> list[str]:
    """``count`` class names: ADE20K's, as many as needed."""
    names = _common.class_lines("ade20k")
    return [names[i % len(names)] + ("" if i < len(names) else f" {i}") for i in range(count)]


def run_child(args: argparse.Namespace) -> dict:
    import torch

    from glaclip.io.batch import segment_files
    from glaclip.model.segmenter import Segmenter
    from glaclip.registry import base_class

    height, width, count = CASES[args.case]
    torch.set_num_threads(args.threads or torch.get_num_threads())
    work = tempfile.mkdtemp(prefix="glaclip-mem-")
    photo = os.path.join(work, f"{args.case}.jpg")
    _photo(height, width, photo)
    cls = base_class(args.base)
    clip, vfm, tok = _common.build_models(seed=0, with_vfm=cls.needs_vfm)
    seg = Segmenter.from_modules(
        clip, vfm, tok, text_cache_dir=args.text_cache, base=args.base,
        kv_extension=bool(cls.attention_spaces), pamr_steps=args.pamr_steps,
    )  # fmt: skip
    classes = _vocabulary(count)
    seg.query_embeddings(classes)  # text outside the measured call (cached on disk)
    models_rss = _status("VmRSS")
    start = time.perf_counter()
    report = segment_files(seg, [Path(photo)], classes, Path(work) / "out", progress=False)
    seconds = time.perf_counter() - start
    peak = _status("VmHWM")
    result = {
        "case": args.case,
        "base": args.base,
        "pamr_steps": args.pamr_steps,
        "size": f"{height}x{width}",
        "classes": count,
        "seconds": seconds,
        "models_rss": models_rss,
        "peak": peak,
        "done": len(report.done),
    }
    if args.check_identity:
        result["identity"] = check_identity(seg, photo, classes)
    return result


def check_identity(seg, photo: str, classes: list[str], group: int = 10) -> dict:
    """Labels of the banded computation against the former all-at-once resize.

    The former labels come from ``F.interpolate`` of all logits to the original size and a
    softmax over them; both depend on each pixel's logits only, so equal logits give equal
    labels. The logits are compared bit for bit, ``group`` classes at a time.
    """
    import torch.nn.functional as F

    from glaclip.model.postprocess import resize_rows

    x, size = seg.prepare(photo)
    logits = seg.segment_tensor(x, classes).query_logits
    differing = 0
    for q0 in range(0, logits.shape[0], group):
        part = logits[q0 : q0 + group]
        old = F.interpolate(part[None], size=size, mode="bilinear", align_corners=False)[0]
        for r0 in range(0, size[0], 256):
            new = resize_rows(part, size, r0, min(size[0], r0 + 256))
            differing += int((new != old[:, r0 : r0 + 256]).sum())
        del old
    return {"logits_compared": int(logits.shape[0]) * size[0] * size[1], "differing": differing}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="12mp,64mp", help="12mp,64mp or one of them")
    parser.add_argument("--check-identity", action="store_true", help="compare with F.interpolate")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--text-cache",
        default=os.path.join(tempfile.gettempdir(), "glaclip-bench-text"),
        help="folder for cached query embeddings (the first run encodes them)",
    )
    parser.add_argument("--base", default="proxyclip", help="base method (GLA on it)")
    parser.add_argument("--pamr-steps", type=int, default=0, help="PAMR steps (0: off)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(run_child(args)), flush=True)
        return 0
    print(f"command: python {' '.join([os.path.relpath(__file__)] + (argv or sys.argv[1:]))}")
    worst = 0.0
    for case in args.cases.split(","):
        cmd = [sys.executable, os.path.abspath(__file__), "--child", "--case", case]
        cmd += ["--threads", str(args.threads), "--text-cache", args.text_cache]
        cmd += ["--base", args.base, "--pamr-steps", str(args.pamr_steps)]
        if args.check_identity:
            cmd.append("--check-identity")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            print(f"{case}: FAILED (exit {proc.returncode})\n{proc.stderr[-3000:]}")
            return 1
        r = json.loads(lines[-1][len("RESULT ") :])
        gb = r["peak"] / 1e9
        worst = max(worst, gb)
        verdict = "meets" if gb < TARGET_GB else "MISSES"
        print(
            f"{r['size']:>9} px, {r['classes']:3d} classes, {r['base']}, PAMR "
            f"{r['pamr_steps']}: peak {gb:.2f} GB "
            f"(models and text alone {r['models_rss'] / 1e9:.2f} GB), {r['seconds']:.1f} s; "
            f"{verdict} the {TARGET_GB:.0f} GB target"
        )
        if "identity" in r:
            i = r["identity"]
            same = i["logits_compared"] - i["differing"]
            print(
                f"{'':>26}logits equal to F.interpolate's: {same:,} of "
                f"{i['logits_compared']:,} ({i['differing']} differ)"
            )
    return 0 if worst < TARGET_GB else 1


if __name__ == "__main__":
    raise SystemExit(main())
