"""Query-embedding time: cold (empty cache) vs cached on disk vs in memory.

    python benchmarks/bench_text.py                         # the 171 COCO-Stuff classes
    python benchmarks/bench_text.py --classes cityscapes

Uses the real-size CLIP ViT-B/16 text tower with random weights (the cost does not depend on
the weights): every query name goes through the 80 prompt templates.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", default="coco_stuff164k", help="packaged class file name")
    args = parser.parse_args(argv)

    import torch

    from glaclip.text import TextEncoder, expand_queries, parse_class_lines

    clip, _, tok = _common.build_models()
    names, _ = expand_queries(parse_class_lines(_common.class_lines(args.classes)))
    prompts = len(names) * 80
    print(
        f"{args.classes}: {len(names)} query names, {prompts} prompts, torch threads "
        f"{torch.get_num_threads()}"
    )
    with tempfile.TemporaryDirectory() as cache:
        enc = TextEncoder(clip, tok, "bench", cache_dir=cache)
        t0 = time.perf_counter()
        cold = enc.encode(names)
        t_cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        enc.encode(names)
        t_mem = time.perf_counter() - t0
        fresh = TextEncoder(clip, tok, "bench", cache_dir=cache)  # a later run: reads the file
        t0 = time.perf_counter()
        disk = fresh.encode(names)
        t_disk = time.perf_counter() - t0
        size = sum(os.path.getsize(os.path.join(cache, f)) for f in os.listdir(cache))
    assert fresh.encoded_count == 0 and torch.equal(cold, disk)
    print(f"cold (encode {prompts} prompts): {t_cold:8.2f} s  ({prompts / t_cold:.0f} prompts/s)")
    print(f"cached on disk (new encoder):   {t_disk:8.3f} s  (cache file {size / 1024:.0f} KiB)")
    print(f"cached in memory (same encoder): {t_mem:7.4f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
