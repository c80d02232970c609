"""Seconds, peak memory and FLOPs of ``Segmenter.segment_tensor``, per stage, per base method.

Builds the paper's backbones (CLIP ViT-B/16 with quick GELU, DINO ViT-B/8) with random weights
and segments a synthetic image of each requested size with the default settings, for each base
method (``proxyclip``: DINO keys; ``clearclip``: CLIP's own keys, no VFM built), once with the
default (blocked) attention and once with the dense ``N x N`` oracle (``attention_impl="dense"``).
Every configuration runs in a fresh subprocess, so that peak resident memory (``VmHWM``, reset
just before the call) belongs to that configuration alone. Query embeddings are computed (or read
from the text cache) before the timed call: the seconds are those of one image.

    python benchmarks/bench_segment.py                        # 336x448, 560x1120, 1024x1024
    python benchmarks/bench_segment.py --sizes 336x448 --impl blocked --bases clearclip
    python benchmarks/bench_segment.py --json results.json

The dense oracle is skipped (with a printed reason) where its ``N x N`` matrices cannot fit.

On a GPU (``--device cuda``) the configurations of one base method run in one process (the
models are built once), the seconds per stage are taken with ``torch.cuda.synchronize`` at
every stage border, and the peak memory is ``torch.cuda.max_memory_allocated``, reset before
each configuration's calls:

    python benchmarks/bench_segment.py --device cuda --sizes 336x448,2048x2048 \\
        --precisions fp32,bf16,fp16

``--one-process`` runs a base's configurations in one process on the CPU too (faster to run;
the peak memory then includes the earlier configurations').
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _common  # noqa: E402

STAGES = ("vfm", "clip", "attention", "project", "stitch", "labels", "text")


# ---------------------------------------------------------------------------------------------
# FLOP counts


def attention_flops_dense(n: int, c: int, d: int, iters: int) -> dict[str, float]:
    """FLOPs of the dense oracle's matrix products (element-wise work not counted)."""
    nn = float(n) * n
    sims = (1 + iters) * 2 * nn * c  # K K^T and one P K^T per iteration
    masks = iters * 2 * nn * c  # M K per iteration
    wv = 2 * nn * d
    return {"similarity": sims, "mask_keys": masks, "weights_values": wv}


def attention_flops_blocked(
    n: int, c: int, d: int, iters: int, block: int, general_rows: float, symmetric: bool = True
) -> dict[str, float]:
    """FLOPs of the blocked implementation's matrix products, dense mask products assumed.

    ``general_rows``: the rows whose weights are not a single 1 (the others are gathered).
    ``symmetric``: the first iteration starts from the keys (``K K^T`` in upper-triangle
    panels); otherwise from initial proxies, full rows like the later iterations.
    """
    ca = (c + 1 + 15) // 16 * 16  # keys with the ones column, padded
    nn = float(n) * n
    if not symmetric:
        sims = (iters + 1) * 2 * nn * c  # P0 K^T, (T-1) iterations, scores
        return {
            "similarity": sims,
            "mask_keys": iters * 2 * nn * ca,
            "weights_values": 2 * general_rows * n * d,
        }
    tri = sum(min(block, n - i0) * (n - i0) for i0 in range(0, n, block))  # upper panels
    below = sum(min(block, n - i0) * max(0, n - i0 - block) for i0 in range(0, n, block))
    sims = 2 * tri * c + iters * 2 * nn * c  # K K^T upper panels, (T-1) iterations, scores
    masks = 2 * (tri + below) * ca + (iters - 1) * 2 * nn * ca
    wv = 2 * general_rows * n * d
    return {"similarity": sims, "mask_keys": masks, "weights_values": wv}


def tower_flops(seg, crop) -> tuple[float, float]:
    """FLOPs of one window through the VFM (keys; 0 without one) and the CLIP tower.

    Counted with autograd on: under inference mode ``nn.MultiheadAttention`` takes a fused
    fast path that the counter does not see (a third of CLIP's FLOPs).
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from glaclip.model.device import StageTimer

    timer = StageTimer(crop.device)
    with torch.enable_grad():
        vfm = 0
        if seg.base.needs_vfm:
            with FlopCounterMode(display=False) as fc:
                seg.vfm_tower.keys(crop, *seg.normalisation.tensors(crop.device))
            vfm = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            seg.base.features(crop, seg.settings, timer)
        clip = fc.get_total_flops() - vfm
    return float(vfm), float(clip)


_RATES: dict[tuple[str, str], float] = {}


def matmul_rate(device, precision: str, size: int = 2048, inner: int = 768) -> float:
    """The device's measured matrix-product rate in ``precision`` (GFLOP/s): the median of five
    ``size x inner @ inner x size`` products after two warm-ups, the shape of the attention's
    and the towers' products. Measured once per process."""
    import torch

    from glaclip.model.device import half_mm, precision_dtype

    key = (str(device), precision)
    if key not in _RATES:
        dtype = precision_dtype(precision)
        gen = torch.Generator().manual_seed(0)
        a = torch.randn(size, inner, generator=gen).to(device, dtype)
        b = torch.randn(inner, size, generator=gen).to(device, dtype)
        product = (lambda: a @ b) if precision == "fp32" else (lambda: half_mm(a, b))
        times = []
        for i in range(7):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            product()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= 2:
                times.append(time.perf_counter() - start)
        _RATES[key] = 2.0 * size * size * inner / statistics.median(times) / 1e9
    return _RATES[key]


def floors(flops: dict, precision: str, rates: dict[str, float]) -> dict[str, float]:
    """Seconds each stage would take at the measured matrix-product rate of the precision its
    products run in: the towers in ``precision``, the attention's products by
    ``blocked.HALF_PRODUCTS`` (the others, and the stitching, in float32)."""
    from glaclip.model.blocked import HALF_PRODUCTS

    half = rates[precision] * 1e9  # FLOP/s
    fp32 = rates["fp32"] * 1e9
    parts = flops["attention_parts"]
    names = {"similarity": "scores", "mask_keys": "mask_keys", "weights_values": "weights_values"}
    attention = sum(
        v / (half if names[k] in HALF_PRODUCTS and precision != "fp32" else fp32)
        for k, v in parts.items()
    )
    return {
        "vfm": flops["vfm"] / half,
        "clip": flops["clip"] / half,
        "attention": attention,
        "project": flops["project"] / fp32,
        "stitch": flops["stitch"] / fp32,
    }


def project_flops(n: int, d: int, e: int) -> float:
    """out_proj and the image projection of every token (a base's MLP not counted)."""
    return 2.0 * n * (d * d + d * e)


def stitch_flops(n: int, e: int, q: int) -> float:
    """The cosine logits (interpolation not counted)."""
    return 2.0 * n * e * q


# ---------------------------------------------------------------------------------------------
# Sampled statistics of the method on the run's own keys


def attention_statistics(
    keys, n_windows: int, cfg, rows: int = 512, seed: int = 0, initial=None
) -> dict:
    """Mask densities and cut outcomes on a random sample of query rows (dense formulas).

    Every quantity of SPEC 5-7 is per row, so a row sample gives unbiased fractions.
    ``initial``: the ``N x C`` initial proxies of a base that starts from them (None: the keys).
    """
    import torch
    import torch.nn.functional as F

    from glaclip.model.attention import dynamic_beta

    k = F.normalize(keys.reshape(-1, keys.shape[-1]).float(), dim=-1)
    n = k.shape[0]
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(n, generator=gen)[: min(rows, n)].to(k.device)
    tau = cfg.proxy_threshold
    start = k if initial is None else F.normalize(initial.float(), dim=-1)
    with torch.inference_mode():
        cur = start[idx] @ k.T
        densities = []
        p = k[idx]
        for _ in range(cfg.proxy_iters):
            m = cur > tau
            empty = ~m.any(dim=1)
            m[empty.nonzero().squeeze(1), idx[empty]] = True
            mf = m.float()
            densities.append(float(mf.mean()))
            count = mf.sum(dim=1, keepdim=True)
            p = F.normalize((mf @ k) / (count + 1e-6), dim=-1)
            cur = p @ k.T
        s = cur if cfg.proxy_anchor else k[idx] @ k.T
        mu = s.mean(dim=1, keepdim=True).clamp_min(0)
        beta = dynamic_beta(n_windows, cfg.beta_alpha)
        z = (s - beta * mu) * (1 + cfg.gamma_alpha / count)
        zmax = z.amax(dim=1, keepdim=True)
        cut = zmax.clamp_max(0)
        keep = z >= cut
        single = (zmax.squeeze(1) < 0) & (keep.sum(dim=1) == 1)
    return {
        "mask_density": densities,
        "weight_density": float(keep.float().mean()),
        "single_row_fraction": float(single.float().mean()),
        "sample_rows": int(idx.numel()),
    }


# ---------------------------------------------------------------------------------------------
# One configuration (child process)


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _vm_hwm() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return _common.peak_rss_bytes()


def parse_settings(pairs: list[str]) -> dict:
    """``["window_batch=4", "precision=bf16"]`` -> ``{"window_batch": 4, "precision": "bf16"}``."""
    out = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        try:
            out[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[name] = value
    return out


def build_segmenter(args: argparse.Namespace):
    """The benchmark's Segmenter for ``args.base`` on ``args.device`` (random real-size models)."""
    import torch

    from glaclip.config import settings_from_kwargs
    from glaclip.model.segmenter import Segmenter
    from glaclip.registry import base_class

    torch.set_num_threads(args.threads or torch.get_num_threads())
    build = _common.build_tiny_models if args.models == "tiny" else _common.build_models
    cls = base_class(args.base)
    clip, vfm, tok = build(with_vfm=cls.needs_vfm)
    given = parse_settings(args.set)
    if not cls.attention_spaces:  # a base without GLA (MaskCLIP) runs per window
        given.setdefault("kv_extension", False)
    settings = settings_from_kwargs(base=args.base, **given)
    return Segmenter(clip, vfm, tok, settings, device=args.device, text_cache_dir=args.text_cache)


def measure(seg, args: argparse.Namespace, size: str, precision: str, impl: str) -> dict:
    """One configuration on an already built Segmenter: seconds per stage, peak memory, FLOPs,
    sampled statistics of the method."""
    import torch

    from glaclip.model.blocked import auto_block_size

    seg = seg.with_settings(attention_impl=impl, precision=precision)
    settings = seg.settings
    on_gpu = seg.device.type == "cuda"
    height, width = (int(v) for v in size.split("x"))
    recorded = {}
    window_features = seg.base.window_features

    def recording(x, windows, *rest):  # keeps the last call's keys, for the statistics
        feats = window_features(x, windows, *rest)
        recorded.update(feats=feats, windows=windows)
        return feats

    seg.base.window_features = recording
    lines = _common.class_lines(args.classes)
    seg.query_embeddings(lines)  # text outside the timed call (cached on disk)
    x = _common.synthetic_image(height, width, seed=0)
    rss_before = _common.current_rss_bytes()
    if on_gpu:
        torch.cuda.synchronize(seg.device)
        torch.cuda.reset_peak_memory_stats(seg.device)
        reset = True
    else:
        reset = _reset_peak_rss()
    for _ in range(args.warmup):
        seg.segment_tensor(x, lines)
    totals, stage_runs = [], []
    for _ in range(args.repeat):
        start = time.perf_counter()
        out = seg.segment_tensor(x, lines)
        if on_gpu:
            torch.cuda.synchronize(seg.device)
        totals.append(time.perf_counter() - start)
        stage_runs.append(out.timings)
    if on_gpu:
        peak = torch.cuda.max_memory_allocated(seg.device)
    else:
        peak = _vm_hwm() if reset else _common.peak_rss_bytes()
    # after the timed calls: counting runs one window with autograd on, whose memory the
    # allocator keeps, which would change both the peak and the speed of the calls
    # the same products in any precision: counted in float32 (the counter misses some of the
    # half-precision fast paths)
    crop = _common.synthetic_image(224, 224, seed=1).to(seg.device)
    vfm_f, clip_f = tower_flops(seg.with_settings(precision="fp32"), crop)
    seconds = statistics.median(totals)
    timings = {s: statistics.median(t.get(s, 0.0) for t in stage_runs) for s in stage_runs[0]}
    feats = recorded["feats"]
    spaces = seg.base.attention_spaces if settings.gla.kv_extension else 0
    if spaces:  # the first similarity space the base's global attention runs in
        space = seg.base.similarity_spaces(feats, recorded["windows"])[0]
        keys, initial = space.keys, space.initial
    else:  # per window: the statistics of the value tokens' own space
        keys, initial = feats["v"], None
    n_windows, s_tok, c = keys.shape
    n = n_windows * s_tok
    d = seg.clip_tower.width
    queries = out.query_logits.shape[0]
    stats = attention_statistics(keys, n_windows, settings.gla, initial=initial)
    iters = settings.gla.proxy_iters
    if impl == "dense":
        att = attention_flops_dense(n, c, d, iters)
        block = n
    else:
        block = settings.gla.block_size or auto_block_size(n, seg.device, symmetric=initial is None)
        general = n * (1.0 - stats["single_row_fraction"])
        att = attention_flops_blocked(n, c, d, iters, block, general, symmetric=initial is None)
    # one pass per similarity space; none for a base without attention (MaskCLIP)
    att = {
        part: flops * (spaces or min(1, seg.base.attention_spaces)) for part, flops in att.items()
    }
    embed = seg.clip_model.visual.output_dim
    rates = {p: matmul_rate(seg.device, p) for p in dict.fromkeys(["fp32", precision])}
    return {
        "size": size,
        "base": args.base,
        "precision": precision,
        "impl": impl,
        "device": str(seg.device),
        "windows": n_windows,
        "tokens": n,
        "block": block,
        "seconds": seconds,
        "seconds_all": totals,
        "timings": timings,
        "timings_all": stage_runs,
        "settings": parse_settings(args.set),
        "peak_rss": peak,
        "rss_before": rss_before,
        "peak_is_call_only": reset,
        "flops": {
            "vfm": vfm_f * n_windows,
            "clip": clip_f * n_windows,
            "attention": sum(att.values()),
            "attention_parts": att,
            "project": project_flops(n, d, embed),
            "stitch": stitch_flops(n, embed, queries),
        },
        "stats": stats,
        "threads": torch.get_num_threads(),
        "matmul_gflops": rates,
    }


def run_child(args: argparse.Namespace) -> None:
    """Every configuration of ``args.configs`` (``size:precision:impl,...``) on one Segmenter,
    printing one ``RESULT`` line each (or ``FAILED`` with the reason, and on to the next)."""
    seg = build_segmenter(args)
    for config in args.configs.split(","):
        size, precision, impl = config.split(":")
        try:
            result = measure(seg, args, size, precision, impl)
        except Exception as err:  # e.g. out of memory: report it, measure the others
            print("FAILED " + json.dumps({"config": config, "error": repr(err)[:500]}), flush=True)
            continue
        print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------
# Orchestration (parent process)


def _mem_available() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def dense_fits(n: int, device: str = "cpu") -> tuple[bool, str]:
    """The dense oracle holds about five ``N x N`` float32 matrices at its peak (on a GPU,
    within 80 % of the free device memory)."""
    need = 5 * 4 * n * n
    if device.startswith("cuda"):
        import torch

        avail = int(0.8 * torch.cuda.mem_get_info(torch.device(device))[0])
    else:
        avail = _mem_available()
    if need > avail:
        return False, (
            f"N = {n:,}: each N x N float32 matrix is {4 * n * n / 2**30:.1f} GiB and the oracle "
            f"holds about five ({need / 2**30:.0f} GiB) against {avail / 2**30:.0f} GiB available"
        )
    return True, ""


def tokens_for(size: str, base: str) -> tuple[int, int]:
    """Windows and tokens: DINO ViT-B/8 has 28x28 tokens per window, CLIP ViT-B/16 14x14 (the
    bases without a VFM attend on CLIP's grid)."""
    from glaclip.model.windows import window_grid

    height, width = (int(v) for v in size.split("x"))
    from glaclip.registry import needs_vfm

    n_windows = len(window_grid(height, width))
    side = 28 if needs_vfm(base) else 14
    return n_windows, n_windows * side * side


def machine_line(device: str = "cpu") -> str:
    import torch

    from glaclip.model.device import describe_device, resolve_device

    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = 0
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    gpu = ""
    if device != "cpu":
        gpu = f"{describe_device(resolve_device(device))}, CUDA {torch.version.cuda}; host: "
    return gpu + (
        f"{cpu}, {os.cpu_count()} logical CPUs, {mem / 2**30:.0f} GiB RAM, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.2f}"
    )


def _gib(b: float) -> str:
    return f"{b / 2**30:.2f}"


def _ratio(a: dict, b: dict, stage: str) -> str:
    ta, tb = a["timings"].get(stage, 0.0), b["timings"].get(stage, 0.0)
    return f"{ta / tb:.2f}x" if ta > 0 and tb > 0 else "-"


def _rate(flops: float, seconds: float) -> str:
    return f"{flops / seconds / 1e9:.0f}" if seconds > 0 else "-"


def print_result(r: dict) -> None:
    t = r["timings"]
    f = r["flops"]
    runs = ", ".join(f"{x:.3f}" for x in r["seconds_all"])
    memory = f"peak {_gib(r['peak_rss'])} GiB (before call {_gib(r['rss_before'])})"
    if r.get("device", "cpu").startswith("cuda"):
        memory = f"{1 / r['seconds']:.2f} images/s, GPU peak {_gib(r['peak_rss'])} GiB allocated"
    print(
        f"{r['size']:>10} {r['base']:>9} {r['precision']:>4} {r['impl']:>7}  "
        f"L={r['windows']:<3d} N={r['tokens']:<6d} {r['seconds']:7.3f} s  {memory}"
        + (f"  [runs: {runs}]" if len(r["seconds_all"]) > 1 else ""),
        flush=True,
    )
    rates = r.get("matmul_gflops")
    floor = floors(f, r["precision"], rates) if rates else {}
    if rates:
        print(
            f"{'':>30}matrix-product rate measured in this run: "
            + ", ".join(f"{p} {g:.0f} GFLOP/s" for p, g in rates.items())
        )
    for stage in STAGES:
        sec = t.get(stage, 0.0)
        fl = f.get(stage)
        extra = f"  {fl / 1e12:7.3f} TFLOP  {_rate(fl, sec):>5} GFLOP/s" if fl else ""
        if fl and stage in floor and sec > 0:
            extra += f"  floor {floor[stage]:.3f} s ({sec / floor[stage]:.1f}x the floor)"
        print(f"{'':>30}{stage:>10} {sec:7.3f} s{extra}")
    parts = f["attention_parts"]
    print(
        f"{'':>30}attention products: "
        + ", ".join(f"{k} {v / 1e12:.3f}" for k, v in parts.items())
        + " TFLOP"
    )
    st = r["stats"]
    print(
        f"{'':>30}sampled rows {st['sample_rows']}: mask density "
        + " / ".join(f"{x:.3f}" for x in st["mask_density"])
        + f", weight density {st['weight_density']:.3f}, "
        f"single-entry rows {st['single_row_fraction']:.3f}, block {r['block']}"
    )


def run_configurations(args: argparse.Namespace, base: str, configs: list[str]) -> list[dict]:
    """Configurations (``size:precision:impl``) of one base in a fresh subprocess; their
    results, as they come (a failed one is printed with its reason)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--base", base]
    cmd += ["--configs", ",".join(configs), "--device", args.device]
    cmd += ["--classes", args.classes, "--text-cache", args.text_cache]
    cmd += ["--threads", str(args.threads), "--repeat", str(args.repeat)]
    cmd += ["--warmup", str(args.warmup), "--models", args.models]
    for pair in args.set:
        cmd += ["--set", pair]
    env = dict(os.environ, **dict(pair.split("=", 1) for pair in args.env))
    results = []
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    ) as proc:
        for line in proc.stdout:
            if line.startswith("RESULT "):
                results.append(json.loads(line[len("RESULT ") :]))
                print_result(results[-1])
            elif line.startswith("FAILED "):
                failed = json.loads(line[len("FAILED ") :])
                print(f"{failed['config']:>30} {base}  FAILED: {failed['error']}", flush=True)
        stderr = proc.stderr.read()
    if proc.returncode != 0:
        print(f"{base}: {','.join(configs)}: the process FAILED (exit {proc.returncode})")
        print(stderr[-3000:])
    return results


def print_blocked_vs_dense(size: str, base: str, b: dict, d: dict) -> None:
    att_b, att_d = b["timings"]["attention"], d["timings"]["attention"]
    # everything but the attention is the same work in both: its run-to-run noise (mostly the
    # backbones) moves the plain ratio, so also print it with their mean
    shared = (b["seconds"] - att_b + d["seconds"] - att_d) / 2
    print(
        f"{size:>10} {base:>9}: blocked / dense time {b['seconds'] / d['seconds']:.2f}x "
        f"({b['seconds']:.1f} s vs {d['seconds']:.1f} s; with the shared stages equal "
        f"({shared:.1f} s): {(shared + att_b) / (shared + att_d):.2f}x), attention "
        f"{att_b / att_d:.2f}x, peak memory {b['peak_rss'] / d['peak_rss']:.2f}x "
        f"({_gib(b['peak_rss'])} vs {_gib(d['peak_rss'])} GiB)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="336x448,560x1120,1024x1024", help="HxW,HxW,...")
    parser.add_argument("--impl", default="blocked,dense", help="blocked,dense or one of them")
    parser.add_argument(
        "--bases",
        default="proxyclip,clearclip",
        help="base methods, comma-separated: proxyclip, clearclip, sclip, naclip, maskclip",
    )
    parser.add_argument(
        "--precisions",
        default="fp32",
        help="backbone precisions, e.g. fp32,bf16 (the dense oracle runs in fp32 only)",
    )
    parser.add_argument("--classes", default="cityscapes", help="packaged class file name")
    parser.add_argument(
        "--text-cache",
        default=os.path.join(tempfile.gettempdir(), "glaclip-bench-text"),
        help="folder for cached query embeddings (the first run encodes them)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--repeat", type=int, default=1, help="calls per configuration (medians are reported)"
    )
    parser.add_argument("--warmup", type=int, default=0, help="untimed calls before those")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for both implementations, e.g. --set window_batch=4 (repeatable)",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment of the measured processes, e.g. --env MALLOC_TRIM_THRESHOLD_=8589934592",
    )
    parser.add_argument("--json", help="also write all results to this JSON file")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default: cpu)")
    parser.add_argument(
        "--models",
        choices=["paper", "tiny"],
        default="paper",
        help="paper: ViT-B/16 + DINO ViT-B/8 with random weights (default); tiny: the tests' "
        "tiny models, to try the code paths quickly (no meaningful figures)",
    )
    parser.add_argument(
        "--one-process", action="store_true", help="a base's configurations in one process"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--configs", help=argparse.SUPPRESS)
    parser.add_argument("--base", default="proxyclip", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        run_child(args)
        return 0

    print(f"machine: {machine_line(args.device)}")
    print(f"command: python {' '.join([os.path.relpath(__file__)] + (argv or sys.argv[1:]))}")
    results: list[dict] = []
    precisions = args.precisions.split(",")
    # CPU: one process per configuration, for its own peak RSS
    one_process = args.one_process or args.device.startswith("cuda")
    for base in args.bases.split(","):
        configs = []
        for size in args.sizes.split(","):
            n_windows, n = tokens_for(size, base)
            for precision in precisions:
                for impl in args.impl.split(","):
                    if impl == "dense" and precision != "fp32":
                        continue
                    if impl == "dense":
                        ok, why = dense_fits(n, args.device)
                        if not ok:
                            print(f"{size:>10} {base:>9} fp32   dense  skipped: {why}", flush=True)
                            continue
                    configs.append(f"{size}:{precision}:{impl}")
        for group in [configs] if one_process else [[c] for c in configs]:
            results += run_configurations(args, base, group)
    print()
    print("ratios (same run):")
    by = {(r["size"], r["base"], r["precision"], r["impl"]): r for r in results}
    for size in args.sizes.split(","):
        for base in args.bases.split(","):
            b, d = by.get((size, base, "fp32", "blocked")), by.get((size, base, "fp32", "dense"))
            if b and d:
                print_blocked_vs_dense(size, base, b, d)
            for precision in precisions[1:] if precisions[0] == "fp32" else []:
                lo = by.get((size, base, precision, "blocked"))
                if b and lo:
                    print(
                        f"{size:>10} {base:>9}: {precision} / fp32 time "
                        f"{lo['seconds'] / b['seconds']:.2f}x ({lo['seconds']:.1f} s vs "
                        f"{b['seconds']:.1f} s); vfm {_ratio(lo, b, 'vfm')}, clip "
                        f"{_ratio(lo, b, 'clip')}"
                    )
        p = by.get((size, "proxyclip", "fp32", "blocked"))
        c = by.get((size, "clearclip", "fp32", "blocked"))
        if p and c:
            print(
                f"{size:>10}: clearclip / proxyclip (blocked): time "
                f"{c['seconds'] / p['seconds']:.2f}x ({c['seconds']:.1f} s vs "
                f"{p['seconds']:.1f} s), peak memory {_gib(c['peak_rss'])} vs "
                f"{_gib(p['peak_rss'])} GiB"
            )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": machine_line(args.device), "results": results}, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
