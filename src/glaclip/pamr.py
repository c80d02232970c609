"""Pixel-adaptive mask refinement (PAMR; Araslanov and Roth, CVPR 2020), as NACLIP's and
SCLIP's ``pamr.py`` compute it: class maps smoothed along the image's edges.

For each pixel and each of its 8 neighbours at each dilation ``d`` (``P = 8 x len(dilations)``
neighbours, borders replicated), the affinity is ``softmax over P of mean over the image's
channels of -|I(p) - I(n)| / (1e-8 + 0.1 std)``, ``std`` the standard deviation of the
channel over the pixel's 9-pixel neighbourhoods at every dilation together. Each step replaces
every class map by the affinity-weighted sum of its values at the neighbours.

Every quantity is local: after ``steps`` steps a pixel depends on the image and the maps
within ``steps x max(dilations)`` pixels of it (``halo``). ``glaclip.postprocess`` uses this to
refine the labels of a large image in bands of rows with that margin, each band exactly as
the whole image would give it.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F

_NEIGHBOURS = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)]  # of a 3 x 3


@lru_cache(maxsize=16)
def _kernels(device: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The 3 x 3 shift kernels: ``difference`` (centre minus each neighbour), ``copy`` (each
    neighbour), ``window`` (each of the 9 pixels, centre included)."""
    cpu = torch.device("cpu")  # made on the host, moved below
    difference = torch.zeros(8, 1, 3, 3, device=cpu)
    copy = torch.zeros(8, 1, 3, 3, device=cpu)
    for i, (y, x) in enumerate(_NEIGHBOURS):
        difference[i, 0, 1, 1] = 1
        difference[i, 0, y, x] = -1
        copy[i, 0, y, x] = 1
    window = torch.zeros(9, 1, 3, 3, device=cpu)
    for i in range(9):
        window[i, 0, i // 3, i % 3] = 1
    return {
        name: k.to(device=device, dtype=dtype)
        for name, k in (("difference", difference), ("copy", copy), ("window", window))
    }


def _shifted(x: torch.Tensor, dilations: Sequence[int], kernel: torch.Tensor) -> torch.Tensor:
    """``B x K x H x W`` -> ``B x K x (len(dilations) x kernels) x H x W``: each channel seen
    through each kernel at each dilation, the borders replicated."""
    b, k, h, w = x.shape
    flat = x.reshape(b * k, 1, h, w)
    parts = [
        F.conv2d(F.pad(flat, [d] * 4, mode="replicate"), kernel, dilation=d) for d in dilations
    ]
    return torch.cat(parts, 1).view(b, k, -1, h, w)


def affinity(image: torch.Tensor, dilations: Sequence[int]) -> torch.Tensor:
    """PAMR's neighbour weights of each pixel: ``1 x 1 x P x H x W`` (softmax over ``P``).

    Args:
        image: ``1 x K x H x W`` float32 (the normalised image).
    """
    kernels = _kernels(str(image.device), image.dtype)
    std = _shifted(image, dilations, kernels["window"]).std(2, keepdim=True)
    x = -_shifted(image, dilations, kernels["difference"]).abs() / (1e-8 + 0.1 * std)
    return F.softmax(x.mean(1, keepdim=True), 2)


def refine(masks: torch.Tensor, weights: torch.Tensor, steps: int, dilations: Sequence[int]):
    """``steps`` PAMR steps of ``1 x C x H x W`` maps with the ``affinity`` weights."""
    copy = _kernels(str(masks.device), masks.dtype)["copy"]
    for _ in range(steps):
        masks = (_shifted(masks, dilations, copy) * weights).sum(2)
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
