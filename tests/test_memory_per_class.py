"""Memory per class: the stitching holds one window's upsampled maps at a time, not every
window's, with the same numbers."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from glaclip.model import windows
from glaclip.model.segmenter import Segmenter
from glaclip.model.windows import stitch, window_grid


def test_stitch_is_the_average_of_every_window_upsampled_at_once_bit_for_bit() -> None:
    wins = window_grid(224, 400, crop=112, stride=56)
    low = torch.randn(len(wins), 7, 14, 14, generator=torch.Generator().manual_seed(0))
    up = F.interpolate(low, size=(112, 112), mode="bilinear", align_corners=False)
    canvas, count = torch.zeros(7, 224, 400), torch.zeros(1, 224, 400)
    for maps, w in zip(up, wins, strict=True):  # every window at once, in the same order
        canvas[:, w.y1 : w.y2, w.x1 : w.x2] += maps
        count[:, w.y1 : w.y2, w.x1 : w.x2] += 1
    assert torch.equal(stitch(low, wins, 112, 224, 400), canvas / count)


def test_stitch_splits_the_queries_where_one_window_is_large(monkeypatch) -> None:
    wins = window_grid(224, 336, crop=112, stride=112)
    low = torch.randn(len(wins), 9, 7, 7, generator=torch.Generator().manual_seed(1))
    want = stitch(low, wins, 112, 224, 336)
    monkeypatch.setattr(windows, "UPSAMPLE_BYTES", 4 * 112 * 112 * 2)  # two maps at a time
    assert torch.equal(stitch(low, wins, 112, 224, 336), want)


def test_segment_never_upsamples_every_window_of_every_class_at_once(
    golden_modules, monkeypatch
) -> None:
    """With 300 classes on a 300 x 200 photo, the window maps at crop size would be
    ``L x 300 x 224 x 224`` floats (480 MB); at most ``UPSAMPLE_BYTES`` of them may be held."""
    seg = Segmenter.from_modules(*golden_modules, device="cpu", text_cache_dir=None)
    crop = seg.settings.window.crop
    largest = {"bytes": 0}
    real = F.interpolate

    def spy(x, *args, **kwargs):
        out = real(x, *args, **kwargs)
        if tuple(out.shape[-2:]) == (crop, crop):
            largest["bytes"] = max(largest["bytes"], out.numel() * out.element_size())
        return out

    monkeypatch.setattr(torch.nn.functional, "interpolate", spy)
    rgb = np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    classes = [f"thing {i}" for i in range(300)]
    seg.segment(rgb, classes)
    assert 0 < largest["bytes"] <= windows.UPSAMPLE_BYTES
