"""Label colours: the deterministic palette of label PNGs, overlays and the demo's page.

Pure numpy: the label PNGs (``encode``) and the drawing (``viz``) both read it.
"""

from __future__ import annotations

import numpy as np

__all__ = ["class_palette", "label_png_palette", "make_palette"]


def make_palette(n: int) -> np.ndarray:
    """Return ``n`` distinct RGB colours as an nx3 uint8 array, deterministically.

    Entries 0..255 are the PASCAL VOC bit-interleaving palette (0 is black, 1 is (128, 0, 0),
    2 is (0, 128, 0), ...), so ``make_palette(21)`` matches VOC's label colours. Entries
    from 256 on (only for n > 256) come from a fixed-seed random generator.
    """
    if n < 0:
        raise ValueError(f"palette size must be >= 0, got {n}")
    pal = np.zeros((max(n, 256), 3), dtype=np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    if n > 256:
        pal[256:] = np.random.default_rng(0).integers(0, 256, size=(n - 256, 3), dtype=np.uint8)
    return pal[:n].copy()


def class_palette(n: int) -> np.ndarray:
    """Colours of ``n`` classes of a user's vocabulary (``n x 3`` uint8): the VOC palette from
    its entry 1 on, so that no class is black (VOC's 0 is black: a class drawn in it darkens
    the photo instead of colouring it)."""
    return make_palette(n + 1)[1:]


def label_png_palette(num_classes: int) -> np.ndarray:
    """The 256-entry palette of an indexed label PNG of up to 255 classes: ``class_palette``
    for the classes, black for 255 (unlabelled)."""
    pal = np.zeros((256, 3), dtype=np.uint8)
    pal[:255] = class_palette(255)
    return pal
