"""Visualisation: pixel shares, and a label overlay with a legend (colours: ``palette``).

Pure numpy + Pillow (``ImageDraw`` with Pillow's default font); no matplotlib.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from glaclip.io.palette import make_palette
from glaclip.model.results import pixel_shares

__all__ = [
    "LegendEntry",
    "legend_entries",
    "legend_line",
    "overlay",
]

UNLABELLED_NAME = "unlabelled"
_CHUNK = 1 << 22  # pixels per chunk where a full-size temporary would be large
MAX_LEGEND_COLUMNS = 4  # columns of legend entries before the legend outgrows the image


def labelled_share(labels: np.ndarray, num_classes: int) -> float:
    """Fraction of the pixels of ``labels`` whose label is a class in [0, num_classes)."""
    labels = np.asarray(labels).ravel()
    if labels.size == 0:
        return 0.0
    count = 0
    for start in range(0, labels.size, _CHUNK):  # chunks: no full-size temporaries
        part = labels[start : start + _CHUNK]
        count += int(np.count_nonzero((part >= 0) & (part < num_classes)))
    return count / labels.size


@dataclass(frozen=True)
class LegendEntry:
    """One legend line: ``label`` is the class index, or None for unlabelled pixels."""

    label: int | None
    name: str
    share: float  # fraction of all pixels, in [0, 1]


def _valid_mask(labels: np.ndarray, num_classes: int, unlabeled_index: int | None) -> np.ndarray:
    valid = (labels >= 0) & (labels < num_classes)
    if unlabeled_index is not None:
        valid &= labels != unlabeled_index
    return valid


def legend_entries(
    labels: np.ndarray, class_names: Sequence[str], unlabeled_index: int | None = None
) -> list[LegendEntry]:
    """Legend lines for the classes present in ``labels`` (HxW int), largest share first.

    Pixels equal to ``unlabeled_index`` or outside [0, len(class_names)) are gathered in one
    final ``"unlabelled"`` entry (only when there are any).
    """
    labels = np.asarray(labels)
    shares = pixel_shares(labels, len(class_names))
    valid = _valid_mask(labels, len(class_names), unlabeled_index)
    present = [i for i, s in enumerate(shares) if s > 0 and i != unlabeled_index]
    present.sort(key=lambda i: (-shares[i], i))
    entries = [LegendEntry(i, str(class_names[i]), shares[i]) for i in present]
    n_unlabelled = int(labels.size - valid.sum())
    if n_unlabelled:
        entries.append(LegendEntry(None, UNLABELLED_NAME, n_unlabelled / labels.size))
    return entries


def legend_line(entry: LegendEntry) -> str:
    """The legend's text for one entry: its name (40 characters at most) and its share, to a
    tenth of a percent; a class present on fewer pixels reads ``<0.1%``, never ``0.0%``."""
    percent = 100.0 * entry.share
    share = "<0.1%" if 0 < percent < 0.05 else f"{percent:.1f}%"
    return f"{entry.name[:40]}  {share}"


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError, AttributeError):  # old Pillow or no FreeType
        return ImageFont.load_default()


def _boundaries(effective: np.ndarray, valid: np.ndarray, thickness: int) -> np.ndarray:
    """Mask of labelled pixels that touch a pixel of another (effective) label."""
    edge = np.zeros(effective.shape, dtype=bool)
    dy = effective[1:, :] != effective[:-1, :]
    dx = effective[:, 1:] != effective[:, :-1]
    edge[1:, :] |= dy
    edge[:-1, :] |= dy
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    if thickness > 1:
        kernel = np.ones((thickness, thickness), dtype=np.uint8)
        edge = cv2.dilate(edge.astype(np.uint8), kernel).astype(bool)
    return edge & valid


def overlay(
    rgb: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    palette: np.ndarray | None = None,
    alpha: float = 0.5,
    unlabeled_index: int | None = None,
    draw_boundaries: bool = True,
) -> np.ndarray:
    """Blend a colour-coded label map over an image and add a legend panel on the right.

    Args:
        rgb: HxWx3 uint8 image in [0, 255].
        labels: HxW integer label map (indices into ``class_names``).
        class_names: one name per class index.
        palette: Kx3 uint8 colours, K >= len(class_names); default ``make_palette``.
        alpha: colour weight in [0, 1]; 0 leaves the image unchanged except boundaries.
        unlabeled_index: a label to leave uncoloured; labels outside [0, len(class_names))
            are always uncoloured. Uncoloured pixels keep their exact original values.
        draw_boundaries: draw thin white lines on labelled pixels at class borders
            (1 px up to ~1000 px images, thicker for larger ones).

    Returns:
        H' x (W + panel) x 3 uint8, with ``H' = max(H, legend height)``. The legend lists
        only the classes present (swatch, name, percentage of all pixels), largest first,
        then "unlabelled" if any; its font size scales with the image.
    """
    rgb, labels, pal = _overlay_inputs(rgb, labels, len(class_names), palette, alpha)
    h, w = labels.shape
    legend = _legend_panel(legend_entries(labels, class_names, unlabeled_index), pal, h, w)
    out = np.full((max(h, legend.shape[0]), w + legend.shape[1], 3), 255, dtype=np.uint8)
    out[: legend.shape[0], w:] = legend
    n = len(class_names)
    _blend_in_bands(out[:h, :w], rgb, labels, pal, alpha, n, unlabeled_index, draw_boundaries)
    return out


def _overlay_inputs(
    rgb: np.ndarray, labels: np.ndarray, n: int, palette: np.ndarray | None, alpha: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``overlay``'s inputs checked: ``(rgb, labels, palette)`` as arrays (the palette
    ``make_palette``'s when None).

    Raises:
        ValueError: a shape, dtype, ``alpha`` or palette that does not fit.
    """
    rgb = np.asarray(rgb)
    labels = np.asarray(labels)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be HxWx3 uint8, got shape {rgb.shape} {rgb.dtype}")
    if labels.shape != rgb.shape[:2]:
        raise ValueError(f"labels shape {labels.shape} does not match image {rgb.shape[:2]}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be an integer array, got {labels.dtype}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    pal = make_palette(max(n, 1)) if palette is None else np.asarray(palette, dtype=np.uint8)
    if pal.ndim != 2 or pal.shape[1] != 3 or len(pal) < n:
        raise ValueError(f"palette must be Kx3 with K >= {n} classes, got shape {pal.shape}")
    return rgb, labels, pal


def _blend_in_bands(
    canvas: np.ndarray,
    rgb: np.ndarray,
    labels: np.ndarray,
    pal: np.ndarray,
    alpha: float,
    n: int,
    unlabeled_index: int | None,
    draw_boundaries: bool,
) -> None:
    """Write the blended image into ``canvas`` (``H x W x 3``, a view of the output), in bands
    of rows: no full-size temporaries beyond the output. Labels in [0, n) other than
    ``unlabeled_index`` are coloured (``_valid_mask``).

    A band's boundaries need ``margin`` rows of labels on either side (one for the neighbour
    comparison, the rest for the dilation); edges found in the margin are dropped.
    """
    h, w = labels.shape
    thickness = max(1, round(max(h, w) / 1000))
    margin = thickness + 1
    band = max(margin, _CHUNK // max(1, w))
    for r0 in range(0, h, band):
        r1 = min(h, r0 + band)
        a0, a1 = max(0, r0 - margin), min(h, r1 + margin)
        lab = labels[a0:a1]
        valid = _valid_mask(lab, n, unlabeled_index)
        v = valid[r0 - a0 : r1 - a0]
        tile = canvas[r0:r1]
        tile[...] = rgb[r0:r1]
        if v.any():
            colours = pal[labels[r0:r1][v].astype(np.int64)].astype(np.float32)
            mixed = (1.0 - alpha) * rgb[r0:r1][v].astype(np.float32) + alpha * colours
            tile[v] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
            if draw_boundaries:
                effective = np.where(valid, lab, -1).astype(np.int32, copy=False)
                edge = _boundaries(effective, valid, thickness)
                tile[edge[r0 - a0 : r1 - a0]] = 255


def _legend_panel(entries: list[LegendEntry], pal: np.ndarray, h: int, w: int) -> np.ndarray:
    """The legend of an ``h x w`` image: ``H' x panel_width x 3`` uint8 on white.

    One column of entries while they fit beside the image; more entries flow into up to
    ``MAX_LEGEND_COLUMNS`` columns (read down, then across) before the legend grows taller
    than the image (``H' > h``)."""
    size = int(min(64, max(11, round(math.sqrt(h * w) / 45))))
    font = _font(size)
    pad, gap = max(4, size // 2), max(3, size // 3)
    row = size + gap
    texts = [legend_line(e) for e in entries]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max((int(math.ceil(probe.textlength(t, font=font))) for t in texts), default=0)
    per_column = max(1, len(entries))
    fit = max(1, (h - 2 * pad) // row)
    if len(entries) > fit:
        per_column = max(fit, math.ceil(len(entries) / MAX_LEGEND_COLUMNS))
    columns = math.ceil(len(entries) / per_column) if entries else 1
    column_w = size + gap + text_w + pad
    panel_w = pad + columns * column_w
    panel_h = max(1, pad + row * min(per_column, len(entries)) + pad)
    panel = Image.new("RGB", (panel_w, panel_h), (255, 255, 255))
    draw = ImageDraw.Draw(panel)
    for k, (entry, text) in enumerate(zip(entries, texts, strict=True)):
        x0 = pad + (k // per_column) * column_w
        y0 = pad + (k % per_column) * row
        box = (x0, y0, x0 + size - 1, y0 + size - 1)
        if entry.label is None:  # no colour: an outlined box with a cross
            draw.rectangle(box, fill=(255, 255, 255), outline=(0, 0, 0))
            draw.line(box, fill=(128, 128, 128))
        else:
            colour = tuple(int(c) for c in pal[entry.label])
            draw.rectangle(box, fill=colour, outline=(0, 0, 0))
        if isinstance(font, ImageFont.FreeTypeFont):
            draw.text(
                (x0 + size + gap, y0 + size // 2), text, fill=(0, 0, 0), font=font, anchor="lm"
            )
        else:  # the bitmap fallback font supports no anchors
            draw.text((x0 + size + gap, y0), text, fill=(0, 0, 0), font=font)
    return np.asarray(panel, dtype=np.uint8)
