"""How long an evaluation will take on this device: an estimate, not a measurement.

The work of one image follows from its network size alone: the protocol resize gives the
windows (``windows.py``), the windows give the backbone passes and the tokens ``N`` of the
global attention. Its matrix-product FLOPs were counted in BENCHMARKS.md ("FLOPs and achieved
rates", ``torch.utils.flop_counter``): 0.156 TFLOP per window for DINO ViT-B/8, 0.031 TFLOP
per window for CLIP ViT-B/16, and about 8,000 FLOPs per token pair for the blocked
attention (0.193 TFLOP at N = 4,704; 6.10 at 28,224; 31.3 at 63,504). On CPUs the backbones
ran at about 0.7 of the float32 matrix-product rate measured on the same machine, the
attention at about that rate (BENCHMARKS.md, the Intel machine's section).

So the estimate is: FLOPs / (that share x this device's float32 matrix-product rate,
measured now with a product of the attention's shape for a fraction of a second). It counts
no image decoding, resizing or text embedding, and it is for the paper's architectures
(ViT-B/16 CLIP, ViT-B/8 DINO); GPUs have not been measured with glaclip, and there the
backbones' small window batches run far below the product rate, so on a GPU the figure is a
lower bound.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from glaclip.config import Settings
from glaclip.images.prepare import protocol_size
from glaclip.model.device import describe_device, strict_fp32
from glaclip.model.windows import network_canvas, window_grid
from glaclip.registry import base_class

VFM_FLOP_PER_WINDOW = 0.156e12  # DINO ViT-B/8 on a 224-pixel window
CLIP_FLOP_PER_WINDOW = 0.031e12  # CLIP ViT-B/16 on a 224-pixel window
ATTENTION_FLOP_PER_PAIR = 8.0e3  # blocked KV-extended attention, per (query, key) token pair
BACKBONE_SHARE = 0.7  # achieved rate of the backbones / measured product rate (CPU)
ATTENTION_SHARE = 1.0  # achieved rate of the attention / measured product rate (CPU)


@dataclass(frozen=True)
class DeviceSpeed:
    """This device's measured float32 matrix-product rate and its name."""

    device: torch.device
    name: str
    flops_per_second: float


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def measure_speed(device: torch.device, seconds: float = 0.3) -> DeviceSpeed:
    """Time float32 products of the attention's shape (``B x 768`` times ``768 x N``) on
    ``device`` for about ``seconds``; the best rate of the repeats, in FLOP/s."""
    n = 4096 if device.type == "cpu" else 16384
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(1024, 768, generator=gen, device="cpu").to(device)
    b = torch.randn(768, n, generator=gen, device="cpu").to(device)
    flop = 2.0 * a.shape[0] * a.shape[1] * n
    best = float("inf")
    with strict_fp32(device), torch.no_grad():
        a @ b  # warm-up
        _sync(device)
        spent = 0.0
        while spent < seconds:
            start = time.perf_counter()
            for _ in range(4):
                a @ b
            _sync(device)
            took = (time.perf_counter() - start) / 4
            best, spent = min(best, took), spent + 4 * took
    return DeviceSpeed(device, describe_device(device), flop / max(best, 1e-9))


def image_flops(h0: int, w0: int, settings: Settings, vfm_patch: int = 8) -> tuple[float, float]:
    """``(backbone FLOPs, attention FLOPs)`` of one ``h0 x w0`` image under ``settings``: the
    base method says what it runs (a VFM or not; the similarity spaces of its attention)."""
    w = settings.window
    base = base_class(settings.gla.base)
    h, wd = protocol_size(h0, w0, w.short_side, w.max_long_side)
    if w.whole_image:
        windows, scale = 1, h * wd / 224**2
    else:
        canvas = (
            (h, wd) if base.native_windows else network_canvas(h, wd, w.crop, w.max_long_side).size
        )
        windows = len(window_grid(canvas[0], canvas[1], w.crop, w.stride))
        scale = (w.crop / 224) ** 2  # the backbones' work grows with the window's tokens
    patch = vfm_patch if base.needs_vfm else 16
    per_window = scale * (224 // patch) ** 2
    vfm = VFM_FLOP_PER_WINDOW if base.needs_vfm else 0.0
    backbones = windows * scale * (CLIP_FLOP_PER_WINDOW + vfm)
    spaces = max(1, base.attention_spaces)  # a per-window map each (MaskCLIP: its values)
    if settings.gla.kv_extension:
        pairs = float(windows * per_window) ** 2 * spaces
    else:
        pairs = windows * float(per_window) ** 2 * spaces
    return backbones, pairs * ATTENTION_FLOP_PER_PAIR


def estimate_seconds(
    sizes: Iterable[tuple[int, int]], settings: Settings, speed: DeviceSpeed, vfm_patch: int = 8
) -> float:
    """Estimated seconds for images of these ``(h, w)`` sizes at the measured rate."""
    backbones = attention = 0.0
    for h, w in sizes:
        b, a = image_flops(h, w, settings, vfm_patch)
        backbones += b
        attention += a
    rate = speed.flops_per_second
    return backbones / (BACKBONE_SHARE * rate) + attention / (ATTENTION_SHARE * rate)


def format_duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3.4 h`` or ``2.1 days``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
