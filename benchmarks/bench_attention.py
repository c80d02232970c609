"""The KV-extended attention alone: block size, sparse mask products, mask density.

    python benchmarks/bench_attention.py                             # N = 28,224, 3 groups
    python benchmarks/bench_attention.py --clusters 200 --sparse 0,0.01,1
    python benchmarks/bench_attention.py --n 4704 --windows 6 --blocks 588,1176,4704 --oracle

Keys are synthetic: ``--clusters`` groups of unit vectors in 768 dimensions (cosine about 0.8
inside a group, about 0 across), so the first mask's density is about ``1 / clusters``: the
default 3 is about as dense as the masks of the random-weight backbones (25-40 %), 100 or more
groups give the sparse masks for which the CSR products are meant. Values are random. Prints
seconds per call for each block size and sparse setting, and the first mask's density.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402, F401  (puts src/ on the path)


def synthetic_keys(n: int, dim: int, clusters: int, seed: int = 0):
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    centers = F.normalize(torch.randn(clusters, dim, generator=g), dim=-1)
    which = torch.randint(0, clusters, (n,), generator=g)
    k = centers[which] + 0.5 * torch.randn(n, dim, generator=g) / dim**0.5
    return F.normalize(k, dim=-1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=28_224, help="tokens N")
    parser.add_argument("--windows", type=int, default=36, help="windows L (for beta)")
    parser.add_argument("--clusters", type=int, default=3, help="key groups (density ~1/groups)")
    parser.add_argument("--blocks", default="auto", help="block sizes, e.g. 448,891,1792")
    parser.add_argument("--sparse", default="0.01", help="sparse_density values, e.g. 0,0.01,1")
    parser.add_argument("--oracle", action="store_true", help="also time the dense oracle")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args(argv)

    import torch

    from glaclip.config import GLAConfig
    from glaclip.model.attention import global_attention_dense
    from glaclip.model.blocked import auto_block_size, global_attention_blocked

    k = synthetic_keys(args.n, 768, args.clusters)
    v = torch.randn(12, args.n, 64, generator=torch.Generator().manual_seed(1))
    sample = k[torch.randperm(args.n)[:256]]
    density = float((sample @ k.T > 0.6).float().mean())
    print(
        f"N = {args.n:,}, L = {args.windows}, clusters {args.clusters}: first mask density "
        f"{density:.4f}; auto block {auto_block_size(args.n, torch.device('cpu'))}; "
        f"threads {torch.get_num_threads()}"
    )
    blocks = [None] if args.blocks == "auto" else [int(b) for b in args.blocks.split(",")]
    ref = None
    with torch.inference_mode():
        if args.oracle:
            t0 = time.perf_counter()
            ref = global_attention_dense(k, v, args.windows, GLAConfig())
            print(f"dense oracle: {time.perf_counter() - t0:.2f} s")
        for block in blocks:
            for sparse in (float(s) for s in args.sparse.split(",")):
                cfg = GLAConfig(block_size=block)
                runs = []
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    out = global_attention_blocked(k, v, args.windows, cfg, sparse_density=sparse)
                    runs.append(time.perf_counter() - t0)
                extra = ""
                if ref is not None:
                    extra = f", max |difference| to the oracle {float((out - ref).abs().max()):.1e}"
                print(
                    f"block {block or 'auto':>5}, sparse_density {sparse:<5}: "
                    f"{min(runs):7.2f} s (best of {len(runs)}){extra}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
