"""Query-embedding time: whole context vs truncated and length-grouped, then the caches.

    python benchmarks/bench_text.py                          # 20 and 171 classes (10+ min)
    python benchmarks/bench_text.py --classes 20 --templates 8   # a quick check

Uses the real-size CLIP ViT-B/16 text tower with random weights (the cost does not depend on
the weights). The classes are the first N of COCO-Stuff's 171; every query name goes through
the first ``--templates`` of the 80 prompt templates. For each N it prints the cold encoding
time over the whole 77-token context and over the truncated, length-grouped context (the
default), their ratio and the largest difference of the embeddings; then the fingerprint
that keys the disk cache, and the disk and memory cache times.
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
    parser.add_argument("--classes", default="20,171", help="class counts, comma-separated")
    parser.add_argument("--templates", type=int, default=80, help="templates per name (<= 80)")
    parser.add_argument("--class-file", default="coco_stuff164k", help="packaged class file")
    args = parser.parse_args(argv)

    import torch

    from glaclip.text.encoder import TextEncoder, openai_templates, text_fingerprint, text_tensors
    from glaclip.text.tower import text_truncation_is_exact
    from glaclip.text.vocabulary import expand_queries, parse_class_lines

    clip, _, tok = _common.build_models()
    templates = openai_templates()[: args.templates]
    lines = _common.class_lines(args.class_file)
    print(
        f"ViT-B-16 text tower (random weights), {len(templates)} templates, torch threads "
        f"{torch.get_num_threads()}, truncation exact for this model: "
        f"{text_truncation_is_exact(clip)}"
    )
    for truncate in (False, True):  # warm up both paths (first-call allocations)
        TextEncoder(clip, tok, templates=templates, truncate=truncate).encode(["warm up"])
    print(
        "| classes | query names | prompts | longest EOT index | whole context (s) "
        "| truncated + grouped (s), before / after | ratio | max abs difference |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for count in (int(c) for c in args.classes.split(",")):
        names, _ = expand_queries(parse_class_lines(lines[:count]))
        prompts = [t(n) for n in names for t in templates]
        longest = int(tok(prompts).argmax(dim=-1).max())
        seconds: dict[str, list[float]] = {"full": [], "truncated": []}
        embeddings = {}
        # truncated, whole, truncated: the ratio uses the mean of the two truncated runs, so
        # that a change of machine load during the long whole-context run shows and averages
        for path in ("truncated", "full", "truncated"):
            enc = TextEncoder(clip, tok, templates=templates, truncate=path == "truncated")
            t0 = time.perf_counter()
            embeddings[path] = enc.encode(names)
            seconds[path].append(time.perf_counter() - t0)
        diff = (embeddings["full"] - embeddings["truncated"]).abs().max().item()
        full, trunc = seconds["full"][0], seconds["truncated"]
        mean = sum(trunc) / len(trunc)
        print(
            f"| {count} | {len(names)} | {len(prompts)} | {longest} | {full:.1f} "
            f"| {mean:.1f} ({trunc[0]:.1f} / {trunc[1]:.1f}) | {full / mean:.2f}x | {diff:.1e} |",
            flush=True,
        )

    t0 = time.perf_counter()
    text_fingerprint(clip, tok)
    t_fp = time.perf_counter() - t0
    hashed = sum(t.numel() * t.element_size() for _, t in text_tensors(clip)) / 2**20
    print(f"\nfingerprint (text weights, {hashed:.0f} MiB, and tokenizer): {t_fp:.3f} s")
    with tempfile.TemporaryDirectory() as cache:
        enc = TextEncoder(clip, tok, templates=templates, cache_dir=cache)
        t0 = time.perf_counter()
        cold = enc.encode(names)
        t_cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        enc.encode(names)
        t_mem = time.perf_counter() - t0
        fresh = TextEncoder(clip, tok, templates=templates, cache_dir=cache)  # a later run
        t0 = time.perf_counter()
        disk = fresh.encode(names)
        t_disk = time.perf_counter() - t0
        size = sum(os.path.getsize(os.path.join(cache, f)) for f in os.listdir(cache))
    assert fresh.encoded_count == 0 and torch.equal(cold, disk)
    print(
        f"{len(names)} names, cold, with the disk cache (fingerprint, encode, save): {t_cold:.1f} s"
    )
    print(
        f"cached on disk, new encoder (fingerprint, read): {t_disk:.3f} s ({size / 1024:.0f} KiB)"
    )
    print(f"cached in memory, same encoder: {t_mem:.4f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
