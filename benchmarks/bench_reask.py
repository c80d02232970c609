"""Seconds of a new vocabulary on an image already encoded: the demo's "ask again".

Builds the paper's backbones with random weights (CLIP ViT-B/16 with quick GELU, DINO ViT-B/8;
``_common.build_models``), encodes a synthetic image once (``Segmenter.encode_tensor``), embeds
the class names once, then times, for each base method:

* ``encode``: the image's class-independent work (backbones, attention, projection), once;
* ``ask``: ``segment_tensor`` from the kept features with the already-embedded names (the text
  from the cache, the cosine product, the stitching and the labels), the median (and range) of
  ``--repeat``;
* ``request``: the demo's whole request on the same photo, its features kept by an earlier
  request (``glaclip.demo.run_request`` with the page's ``FeatureStore``: reading and hashing
  the file, the answer, and writing the label PNG, the overlay and the JSON), the median (and
  range) of ``--repeat``.

    python benchmarks/bench_reask.py                      # 336x448, 20 classes, both bases
    python benchmarks/bench_reask.py --size 336x448 --classes 20 --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _common  # noqa: E402


def _seconds(fn: Callable[[], object], repeat: int) -> str:
    """``median (min-max)`` seconds of ``repeat`` calls of ``fn``."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return f"{statistics.median(times):.3f} ({min(times):.3f}-{max(times):.3f})"


def run_base(base: str, size: tuple[int, int], names: list[str], repeat: int) -> None:
    import numpy as np
    import torch
    from PIL import Image

    from glaclip import Segmenter
    from glaclip.demo.logic import run_request
    from glaclip.demo.store import FeatureStore

    clip, vfm, tok = _common.build_models(with_vfm=base == "proxyclip")
    seg = Segmenter.from_modules(
        clip, vfm, tok, base=base, background_index=255, text_cache_dir=None
    )
    x = _common.synthetic_image(*size)
    seg.text.encode(names)  # embedded once: the asks below take them from the cache
    t0 = time.perf_counter()
    features = seg.encode_tensor(x)
    encode = time.perf_counter() - t0
    ask = _seconds(lambda: seg.segment_tensor(features, names), repeat)

    mean = torch.tensor(seg.normalisation.mean).view(3, 1, 1)
    std = torch.tensor(seg.normalisation.std).view(3, 1, 1)
    rgb = ((x[0] * std + mean) * 255).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        photo = Path(tmp) / "photo.png"
        Image.fromarray(np.ascontiguousarray(rgb)).save(photo)
        store, k = FeatureStore(), iter(range(10**6))
        method = "GLA-CLIP" if base == "proxyclip" else "GLA-CLIP on ClearCLIP (no VFM)"

        def request() -> object:
            out = Path(tmp) / str(next(k))
            out.mkdir()
            return run_request(seg, {}, photo, ", ".join(names), method, 0.0, out, store=store)

        request()  # encodes the photo and keeps its features
        reask = _seconds(request, repeat)
        last = request()
    assert last.features_reused
    stages = " ".join(f"{k} {v:.3f}" for k, v in last.result.timings.items())
    print(
        f"{base:10s} {size[0]}x{size[1]}, {len(names)} classes: encode {encode:6.2f} s | "
        f"ask {ask} s | request {reask} s | features "
        f"{features.nbytes / 1e6:.1f} MB | last request's stages: {stages}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="336x448", help="H x W of the network input")
    parser.add_argument("--classes", type=int, default=20, help="class names (COCO-Stuff's first)")
    parser.add_argument("--bases", default="proxyclip,clearclip")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.size.lower().split("x"))
    names = [line.split(";")[0].strip() for line in _common.class_lines("coco_stuff164k")]
    names = names[: args.classes]
    from glaclip.model.device import describe_device

    print(describe_device(torch.device("cpu")))
    for base in args.bases.split(","):
        run_base(base, (h, w), names, args.repeat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
