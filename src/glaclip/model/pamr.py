"""Pixel-adaptive mask refinement (PAMR; Araslanov and Roth, CVPR 2020), as NACLIP's and
SCLIP's ``pamr.py`` compute it: class maps smoothed along the image's edges.

For each pixel and each of its 8 neighbours at each dilation ``d`` (``P = 8 x len(dilations)``
neighbours, borders replicated), the affinity is ``softmax over P of mean over the image's
channels of -|I(p) - I(n)| / (1e-8 + 0.1 std)``, ``std`` the standard deviation of the
channel over the pixel's 9-pixel neighbourhoods at every dilation together. Each step replaces
every class map by the affinity-weighted sum of its values at the neighbours.

Every quantity is local: after ``steps`` steps a pixel depends on the image and the maps
within ``steps x max(dilations)`` pixels of it (``halo``). ``glaclip.model.postprocess`` uses
this to
refine the labels of a large image in bands of rows with that margin, each band exactly as
the whole image would give it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

_NEIGHBOURS = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)]  # of a 3 x 3
_WINDOW = [(y, x) for y in range(3) for x in range(3)]  # the 3 x 3, centre included


def _shifted(
    x: torch.Tensor, dilations: Sequence[int], offsets: Sequence[tuple[int, int]]
) -> torch.Tensor:
    """``B x K x H x W`` -> ``B x K x (len(dilations) x len(offsets)) x H x W``: each channel
    seen from each offset of the 3 x 3 neighbourhood at each dilation, the borders replicated.
    The copies are what a convolution with one-hot 3 x 3 kernels gives (as the authors'
    ``pamr.py`` computes them), bit for bit, without the arithmetic."""
    b, k, h, w = x.shape
    flat = x.reshape(b * k, 1, h, w)
    parts = []
    for d in dilations:
        padded = F.pad(flat, [d] * 4, mode="replicate")
        parts += [padded[:, :, y * d : y * d + h, c * d : c * d + w] for y, c in offsets]
    return torch.cat(parts, 1).view(b, k, -1, h, w)


def affinity(image: torch.Tensor, dilations: Sequence[int]) -> torch.Tensor:
    """PAMR's neighbour weights of each pixel: ``1 x 1 x P x H x W`` (softmax over ``P``).

    Args:
        image: ``1 x K x H x W`` float32 (the normalised image).
    """
    std = _shifted(image, dilations, _WINDOW).std(2, keepdim=True)
    difference = image[:, :, None] - _shifted(image, dilations, _NEIGHBOURS)
    x = -difference.abs() / (1e-8 + 0.1 * std)
    return F.softmax(x.mean(1, keepdim=True), 2)


def refine(masks: torch.Tensor, weights: torch.Tensor, steps: int, dilations: Sequence[int]):
    """``steps`` PAMR steps of ``1 x C x H x W`` maps with the ``affinity`` weights: each map
    becomes the weighted sum of its neighbours' values, summed neighbour by neighbour in the
    order of the weights (without the ``C x P x H x W`` copies a single product would hold)."""
    b, c, h, w = masks.shape
    for _ in range(steps):
        out, p = None, 0
        for d in dilations:
            padded = F.pad(masks.reshape(b * c, 1, h, w), [d] * 4, mode="replicate")
            padded = padded.view(b, c, h + 2 * d, w + 2 * d)
            for y, x in _NEIGHBOURS:
                term = padded[:, :, y * d : y * d + h, x * d : x * d + w] * weights[:, :, p]
                out = term if out is None else out.add_(term)
                p += 1
        masks = out
    return masks


def pamr(
    image: torch.Tensor, logits: torch.Tensor, steps: int, dilations: Sequence[int] = (8, 16)
) -> torch.Tensor:
    """PAMR of class maps along an image's edges.

    Args:
        image: ``1 x K x H x W`` float32, the normalised image at the maps' size.
        logits: ``1 x C x h x w`` float32 class maps (resized to ``H x W`` first, bilinear with
            aligned corners, where they differ).
        steps: refinement steps (NACLIP: 10).
        dilations: neighbourhood dilations in pixels (NACLIP: 8 and 16).

    Returns:
        ``1 x C x H x W`` float32 refined maps.
    """
    if logits.shape[-2:] != image.shape[-2:]:
        logits = F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=True)
    return refine(logits, affinity(image, dilations), steps, dilations)


def halo(steps: int, dilations: Sequence[int]) -> int:
    """Rows (and columns) around a pixel that its refined value depends on."""
    return steps * max(dilations)
