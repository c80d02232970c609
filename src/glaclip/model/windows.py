"""Sliding-window tiling and stitching (SPEC section 2 and 9.2). Pure functions."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

# bytes of upsampled window maps held at a time while stitching (``stitch``)
UPSAMPLE_BYTES = 16 << 20


class Window(NamedTuple):
    """One crop of the resized image: rows ``y1:y2`` and columns ``x1:x2`` (end exclusive)."""

    y1: int
    y2: int
    x1: int
    x2: int


def _starts(size: int, crop: int, stride: int) -> list[tuple[int, int]]:
    count = max(size - crop + stride - 1, 0) // stride + 1
    spans = []
    for i in range(count):
        start = i * stride
        end = min(start + crop, size)
        start = max(end - crop, 0)
        spans.append((start, end))
    return spans


def window_grid(height: int, width: int, crop: int = 224, stride: int = 112) -> list[Window]:
    """Windows of an ``height x width`` image, row-major (rows outer), as the reference tiles.

    ``nh = max(H - crop + stride - 1, 0) // stride + 1`` rows and likewise ``nw`` columns; the
    last window of a row or column is shifted back so that it ends at the image border. A side
    shorter than ``crop`` gives windows as long as that side.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if crop <= 0 or stride <= 0:
        raise ValueError(f"crop and stride must be positive, got crop={crop}, stride={stride}")
    rows = _starts(height, crop, stride)
    cols = _starts(width, crop, stride)
    return [Window(y1, y2, x1, x2) for (y1, y2) in rows for (x1, x2) in cols]


class Canvas(NamedTuple):
    """Where an input is segmented: the input scaled to ``content`` (aspect ratio kept), then
    padded at the bottom and right to ``size``, the canvas the windows tile."""

    content: tuple[int, int]
    size: tuple[int, int]


def network_canvas(height: int, width: int, crop: int = 224, max_long_side: int = 2048) -> Canvas:
    """The canvas for an ``height x width`` input (the protocol-resized image).

    Both sides at least ``crop``: the input itself. Otherwise the input is enlarged, aspect
    ratio kept, until its short side equals ``crop``, but never so far that its long side
    passes ``max_long_side`` (nor is it ever shrunk). A side still shorter than ``crop`` after
    that (a very wide panorama) is padded up to ``crop``; ``Segmenter.segment_tensor`` fills
    the padding with zeros of the normalised image (the mean colour), crops the logits back to
    the content and scales them to the input size.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if min(height, width) >= crop:
        return Canvas((height, width), (height, width))
    scale = crop / min(height, width)
    scale = min(scale, max(1.0, max_long_side / max(height, width)))
    content = (max(height, round(height * scale)), max(width, round(width * scale)))
    return Canvas(content, (max(crop, content[0]), max(crop, content[1])))


def stitch(
    window_logits: torch.Tensor,
    windows: list[Window],
    size: int | tuple[int, int],
    height: int,
    width: int,
) -> torch.Tensor:
    """Average overlapping windows' logits into one canvas (SPEC 9.1-9.2): each window's maps
    upsampled from its token grid to the window (bilinear, ``align_corners=False``), added
    into their place, each pixel divided by the number of windows covering it.

    Each window's maps are upsampled on their own (the interpolation is per map), so that
    beside the ``Q x H x W`` canvas at most ``UPSAMPLE_BYTES`` of one window's upsampled maps
    are held.

    Args:
        window_logits: ``L x Q x gh x gw`` logits, one map per window and query.
        windows: the ``L`` windows, in the same order.
        size: the windows' size in pixels, ``(h, w)`` (every window of an image has the same),
            or one side for square windows.
        height, width: the canvas size ``H x W``.

    Returns:
        ``Q x H x W`` tensor.
    """
    if window_logits.shape[0] != len(windows):
        raise ValueError(f"{window_logits.shape[0]} window maps for {len(windows)} windows")
    q = window_logits.shape[1]
    size = (size, size) if isinstance(size, int) else tuple(size)
    canvas = window_logits.new_zeros(q, height, width)
    count = window_logits.new_zeros(1, height, width)
    step = max(1, UPSAMPLE_BYTES // (4 * size[0] * size[1]))  # queries upsampled at a time
    for logit, w in zip(window_logits, windows, strict=True):
        for q0 in range(0, q, step):
            maps = logit[None, q0 : q0 + step]
            up = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
            canvas[q0 : q0 + step, w.y1 : w.y2, w.x1 : w.x2] += up[0]
            del up
        count[:, w.y1 : w.y2, w.x1 : w.x2] += 1
    return canvas.div_(count)


def inner_edges(windows: list[Window], height: int, width: int) -> tuple[list[int], list[int]]:
    """Window edges strictly inside the image: ``(x_edges, y_edges)``, sorted, unique.

    A window's start counts if it is > 0, its end if it is < the image size. These are the
    seams across which the boundary error rate compares neighbouring pixels.
    """
    xs = {w.x1 for w in windows if w.x1 > 0} | {w.x2 for w in windows if w.x2 < width}
    ys = {w.y1 for w in windows if w.y1 > 0} | {w.y2 for w in windows if w.y2 < height}
    return sorted(xs), sorted(ys)
