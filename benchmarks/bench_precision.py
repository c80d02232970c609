"""How many threshold decisions flip if the similarities are computed in lower precision, and
how many labels change with the backbones in bf16/fp16 (``--backbones``).

    python benchmarks/bench_precision.py                 # 336x448 (6 windows, N = 4,704)
    python benchmarks/bench_precision.py --size 560x1120
    python benchmarks/bench_precision.py --backbones bf16,fp16   # the bundled example photos
    python benchmarks/bench_precision.py --fast bf16     # the fast mode: golden inputs, then
                                                         # its parts one at a time on the photos

Computes the keys and values of a synthetic image with the real-size backbones (random
weights), then runs the dense oracle of SPEC 5-7 with its similarity products (``K K^T`` and
``P K^T``) computed in float64, float32 (the reference), TF32-like, bfloat16 and float16, and the
default blocked implementation in float32. For each it counts the ``A > tau`` decisions that
differ from float32 (per proxy iteration), the rows whose cut outcome (``max Z < 0``) differs,
the largest change of the attention output, and the tokens whose label (argmax over the class
queries) changes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402


def _round_tf32(x):
    """Round float32 to TF32 (10 mantissa bits), as a tensor core reads its inputs."""
    import torch

    bits = x.contiguous().view(torch.int32)
    bits = (bits + 0x1000) & ~0x1FFF  # round half up on the 13 dropped bits
    return bits.view(torch.float32)


def dense_with_similarity_dtype(k, v, n_windows: int, cfg, kind: str):
    """The dense oracle with its similarity products in another precision.

    Returns ``(output N x D float32, [mask per iteration], negative-max rows)``.
    """
    import torch
    import torch.nn.functional as F

    from glaclip.model.attention import dynamic_beta

    def sim(a, b):
        if kind == "float64":
            return (a.double() @ b.double().T).float()
        if kind == "tf32":
            return _round_tf32(a) @ _round_tf32(b).T
        if kind in ("bfloat16", "float16"):
            dt = getattr(torch, kind)
            return (a.to(dt) @ b.to(dt).T).float()
        return a @ b.T

    tau = cfg.proxy_threshold
    a = sim(k, k)
    cur, masks = a, []
    for _ in range(cfg.proxy_iters):
        m = cur > tau
        idx = torch.nonzero(~m.any(dim=1)).squeeze(1)
        m[idx, idx] = True
        masks.append(m)
        mf = m.float()
        p = F.normalize((mf @ k) / (mf.sum(dim=1, keepdim=True) + 1e-6), dim=-1)
        cur = sim(p, k)
    count = masks[-1].sum(dim=1, keepdim=True).float()
    mu = cur.mean(dim=1, keepdim=True).clamp_min(0.0)
    z = (cur - dynamic_beta(n_windows, cfg.beta_alpha) * mu) * (1.0 + cfg.gamma_alpha / count)
    negative = z.amax(dim=1) < 0
    cut = z.amax(dim=1, keepdim=True).clamp_max(0.0)
    w = torch.softmax(z.masked_fill(z < cut, float("-inf")), dim=1)
    heads, n, d_h = v.shape
    out = torch.einsum("nm,hmd->hnd", w, v).permute(1, 0, 2).reshape(n, heads * d_h)
    return out, masks, negative


def backbone_precision_labels(precisions: list[str], text_cache: str) -> None:
    """Labels of the bundled example photos with the backbones in ``precisions`` against fp32
    (real-size backbones with random weights, default settings, each photo's example classes)."""
    import time

    import numpy as np

    from glaclip.demo.logic import EXAMPLES, EXAMPLES_DIR
    from glaclip.model.segmenter import Segmenter

    clip, vfm, tok = _common.build_models()
    fp32 = Segmenter(clip, vfm, tok, text_cache_dir=text_cache)
    print(f"{'photo':>14} | {'precision':>9} | {'labels changed':>22} | seconds (fp32 / this)")
    for name, classes in EXAMPLES:
        path = EXAMPLES_DIR / name
        lines = [c.strip() for c in classes.split(",")]
        fp32.query_embeddings(lines)
        start = time.perf_counter()
        ref = fp32.segment(path, lines).labels
        t_ref = time.perf_counter() - start
        for precision in precisions:
            other = fp32.with_settings(precision=precision)
            start = time.perf_counter()
            labels = other.segment(path, lines).labels
            t = time.perf_counter() - start
            changed = int(np.count_nonzero(labels != ref))
            print(
                f"{name:>14} | {precision:>9} | {changed:>10,} ({changed / ref.size:6.2%}) | "
                f"{t_ref:.1f} / {t:.1f}"
            )


FAST_VARIANTS = [  # (name, settings over precision=P, half products of the method)
    ("backbones cast", {"fused_attention": False}, ()),
    ("+ fused VFM", {}, ()),
    ("+ weights_values", {}, ("weights_values",)),
    ("+ mask_keys", {}, ("weights_values", "mask_keys")),  # the fast mode
    ("fast + scores", {}, ("weights_values", "mask_keys", "scores")),  # rejected
]


class DecisionRecorder:
    """Records the method's decisions per token while it runs: the last proxy mask's row counts
    (``A > tau``) and the entries each row keeps at the cut ``Z >= min(rowmax, 0)``."""

    def __init__(self, blocked) -> None:
        self.blocked = blocked
        self.counts, self.kept = [], []

    def __enter__(self):
        import torch

        att = self.blocked
        self.saved = (att.compute_anchors, att._softmax_times_values)
        anchors, softmax = self.saved

        def anchors_recorded(work, cfg, initial=None):
            result = anchors(work, cfg, initial)
            if result[1] is not None:
                self.counts.append(result[1].clone())
            return result

        def softmax_recorded(z, *rest):
            cut = z.amax(dim=1, keepdim=True).clamp_max(0.0)
            self.kept.append((z >= cut).sum(dim=1).to(torch.int64))
            return softmax(z, *rest)

        att.compute_anchors, att._softmax_times_values = anchors_recorded, softmax_recorded
        return self

    def __exit__(self, *exc) -> None:
        self.blocked.compute_anchors, self.blocked._softmax_times_values = self.saved

    def rows(self):
        import torch

        counts = torch.cat(self.counts) if self.counts else None
        return counts, torch.cat(self.kept)


def fast_mode_moves(precision: str, text_cache: str) -> None:
    """Against fp32, on the bundled example photos (real-size backbones, random weights), with
    the fast mode's parts added one at a time: tokens whose last proxy mask (its row count)
    changed, tokens whose kept entries at the cut changed, and labels changed."""
    import numpy as np

    from glaclip.demo.logic import EXAMPLES, EXAMPLES_DIR
    from glaclip.model import blocked
    from glaclip.model.segmenter import Segmenter

    clip, vfm, tok = _common.build_models()
    fp32 = Segmenter(clip, vfm, tok, text_cache_dir=text_cache)
    print(
        f"precision {precision}; each row adds one part of the fast mode to the row above "
        "(the fourth row is the fast mode); the last adds a product to the fast mode"
    )
    print(f"{'photo':>14} | {'variant':>18} | {'mask rows moved':>17} | {'cut rows moved':>16} | "
          f"{'labels changed':>20}")  # fmt: skip
    saved = blocked.HALF_PRODUCTS
    try:
        for name, classes in EXAMPLES:
            path = EXAMPLES_DIR / name
            lines = [c.strip() for c in classes.split(",")]
            blocked.HALF_PRODUCTS = frozenset()
            with DecisionRecorder(blocked) as rec:
                ref = fp32.segment(path, lines).labels
            ref_counts, ref_kept = rec.rows()
            for variant, settings, products in FAST_VARIANTS:
                blocked.HALF_PRODUCTS = frozenset(products)
                other = fp32.with_settings(precision=precision, **settings)
                with DecisionRecorder(blocked) as rec:
                    labels = other.segment(path, lines).labels
                counts, kept = rec.rows()
                n = kept.numel()
                mask_moved = int((counts != ref_counts).sum()) if counts is not None else 0
                cut_moved = int((kept != ref_kept).sum())
                changed = int(np.count_nonzero(labels != ref))
                print(
                    f"{name:>14} | {variant:>18} | {mask_moved:>7,} ({mask_moved / n:6.2%}) | "
                    f"{cut_moved:>6,} ({cut_moved / n:6.2%}) | "
                    f"{changed:>10,} ({changed / ref.size:6.2%})",
                    flush=True,
                )
    finally:
        blocked.HALF_PRODUCTS = saved


def fast_mode_golden(precision: str) -> None:
    """The fast mode against float32 on the golden inputs (the tests' tiny models): tokens
    whose last mask or cut moved, labels changed, logits within 1e-2."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from glaclip.model import blocked
    from glaclip.model.segmenter import Segmenter
    from tests.golden import COMPACT_DIR, GOLDEN_CASES, is_clearclip, load_case, settings_of

    clip, vfm, tok = _common.build_tiny_models()
    print(f"precision {precision}, the fast mode against float32, golden inputs")
    print(f"{'case':>24} | {'mask rows moved':>15} | {'cut rows moved':>15} | "
          f"{'labels changed':>14} | logits within 1e-2")  # fmt: skip
    for case in GOLDEN_CASES:
        g = load_case(COMPACT_DIR, case)
        seg = Segmenter.from_modules(
            clip, None if is_clearclip(g["params"]) else vfm, tok, **settings_of(g["params"])
        )
        runs = []
        for other in (seg, seg.with_settings(precision=precision)):
            with DecisionRecorder(blocked) as rec:
                out = other.segment_tensor(g["image"], g["class_lines"])
            runs.append((out, *rec.rows()) if rec.kept else (out, None, None))
        (ref, c0, k0), (fast, c1, k1) = runs

        def moved(a, b):
            return "-" if a is None else f"{float((a != b).float().mean()):.2%}"

        labels = float((fast.labels != ref.labels).float().mean())
        close = float(((fast.query_logits - ref.query_logits).abs() < 1e-2).float().mean())
        print(f"{case:>24} | {moved(c0, c1):>15} | {moved(k0, k1):>15} | "
              f"{labels:>14.2%} | {close:.2%}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="336x448", help="HxW of the synthetic image")
    parser.add_argument("--classes", default="cityscapes", help="packaged class file name")
    parser.add_argument(
        "--text-cache", default=os.path.join(tempfile.gettempdir(), "glaclip-bench-text")
    )
    parser.add_argument(
        "--backbones", help="e.g. bf16,fp16: label changes against fp32 on the example photos"
    )
    parser.add_argument(
        "--fast", help="bf16 or fp16: decisions and labels the fast mode's parts move"
    )
    args = parser.parse_args(argv)
    if args.backbones:
        backbone_precision_labels(args.backbones.split(","), args.text_cache)
        return 0
    if args.fast:
        fast_mode_golden(args.fast)
        fast_mode_moves(args.fast, args.text_cache)
        return 0

    import torch
    import torch.nn.functional as F

    from glaclip.config import GLAConfig, Settings
    from glaclip.model.blocked import global_attention_blocked
    from glaclip.model.device import StageTimer
    from glaclip.model.segmenter import Segmenter
    from glaclip.model.windows import window_grid

    height, width = (int(x) for x in args.size.split("x"))
    clip, vfm, tok = _common.build_models()
    seg = Segmenter(clip, vfm, tok, Settings(), text_cache_dir=args.text_cache)
    text = seg.query_embeddings(_common.class_lines(args.classes))
    x = _common.synthetic_image(height, width)
    windows = window_grid(height, width)
    with torch.inference_mode():
        feats = seg.base.window_features(x, windows, seg.settings, StageTimer(seg.device))
        n_win = len(windows)
        k = F.normalize(feats.keys.reshape(-1, feats.keys.shape[-1]), dim=-1)
        heads = seg.clip_tower.heads
        v = feats.heads(feats.values, heads)  # heads x L x S x d_h
        v = v.reshape(heads, -1, v.shape[-1])
        cfg = GLAConfig()

        def labels(out):
            emb = F.normalize(seg.clip_tower.head(seg.clip_tower.out_proj(out)), dim=-1)
            return (emb @ text.T).argmax(dim=1)

        ref, ref_masks, ref_neg = dense_with_similarity_dtype(k, v, n_win, cfg, "float32")
        ref_labels = labels(ref)
        n = k.shape[0]
        print(f"{args.size}: L = {n_win} windows, N = {n:,} tokens, tau = {cfg.proxy_threshold}")
        print(
            "mask density per iteration (float32): "
            + ", ".join(f"{float(m.float().mean()):.3f}" for m in ref_masks)
            + f"; rows with a negative maximum: {float(ref_neg.float().mean()):.3f}"
        )
        header = (
            f"{'similarities in':>16} | {'A>tau flips, it. 1':>19} | {'it. 2':>19} | "
            f"{'cut rows':>8} | {'max |dO|':>9} | {'token labels changed':>20}"
        )
        print(header)
        print("-" * len(header))
        for kind in ("float64", "tf32", "bfloat16", "float16"):
            out, masks, neg = dense_with_similarity_dtype(k, v, n_win, cfg, kind)
            flips = [int((m != r).sum()) for m, r in zip(masks, ref_masks, strict=True)]
            cells = [f"{f:>8,} ({f / n / n:.1e})" for f in flips]
            changed = int((labels(out) != ref_labels).sum())
            cut_rows = int((neg != ref_neg).sum())
            print(
                f"{kind:>16} | {cells[0]:>19} | {cells[1]:>19} | {cut_rows:>8} | "
                f"{float((out - ref).abs().max()):9.2e} | {changed:>8} ({changed / n:.2%})"
            )
        out = global_attention_blocked(k, v, n_win, cfg)
        changed = int((labels(out) != ref_labels).sum())
        print(
            f"{'blocked float32':>16} | {'(same decisions, see tests)':>41} | {'':>8} | "
            f"{float((out - ref).abs().max()):9.2e} | {changed:>8} ({changed / n:.2%})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
