"""Preparing an image for the network (SPEC 1): the protocol resize (OpenCV, imported when
the first image is resized) and the CLIP normalisation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from glaclip.constants import CLIP_MEAN, CLIP_STD


@dataclass(frozen=True)
class Normalisation:
    """How images are normalised for a CLIP model: per channel (R, G, B), in [0, 1] units,
    ``x = (rgb / 255 - mean) / std``. The one record of it a Segmenter keeps."""

    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    def tensors(self, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, std)`` as ``1 x 3 x 1 x 1`` float32 tensors on ``device``."""
        return tuple(  # type: ignore[return-value]
            torch.tensor(v, dtype=torch.float32, device=device).view(1, 3, 1, 1)
            for v in (self.mean, self.std)
        )


def protocol_size(
    h0: int, w0: int, short_side: int = 336, max_long_side: int = 2048
) -> tuple[int, int]:
    """The benchmark resize target (SPEC 1.2), keeping the aspect ratio.

    ``s = min(max_long_side / max(h0, w0), short_side / min(h0, w0))``; returns
    ``(int(h0*s + 0.5), int(w0*s + 0.5))`` as ``(h, w)``, each at least 1.
    """
    if h0 <= 0 or w0 <= 0:
        raise ValueError(f"image size must be positive, got {h0}x{w0}")
    if short_side <= 0 or max_long_side <= 0:
        raise ValueError(
            f"short_side and max_long_side must be positive, got {short_side}, {max_long_side}"
        )
    s = min(max_long_side / max(h0, w0), short_side / min(h0, w0))
    return max(1, int(h0 * s + 0.5)), max(1, int(w0 * s + 0.5))


def resize_image(rgb: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize without antialiasing, as mmcv does (``cv2.INTER_LINEAR``).

    Args:
        rgb: HxWxC (or HxW) uint8 array.
        size_hw: target ``(h, w)``, both >= 1.

    Returns:
        h x w x C uint8 array; ``rgb`` itself (no copy) when the size is already ``(h, w)``.
    """
    h, w = int(size_hw[0]), int(size_hw[1])
    if h < 1 or w < 1:
        raise ValueError(f"target size must be at least 1x1, got {h}x{w}")
    if rgb.shape[:2] == (h, w):
        return rgb
    import cv2

    return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR)


def to_tensor(
    rgb: np.ndarray,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> torch.Tensor:
    """Normalise an image for the network: ``(rgb / 255 - mean) / std`` in float32.

    Args:
        rgb: HxWx3 uint8 array in [0, 255].
        mean, std: per-channel (R, G, B) statistics in [0, 1] units.

    Returns:
        1x3xHxW float32 CPU tensor.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 array, got shape {rgb.shape} {rgb.dtype}")
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).unsqueeze(0)
    x = x.to(torch.float32)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x / 255.0 - m) / s).contiguous()
