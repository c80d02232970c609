"""NACLIP (``base="naclip"``; Hajimiri et al., WACV 2025; sinahmr/NACLIP): key-key attention
with a neighbourhood Gaussian in CLIP's last block (SPEC 14).

Per window and head, over the class token and the patches, with ``s = d_h^-1/2``:
``A = softmax(k k^T s + Omega)`` (the queries are not used), ``o = out_proj(A v)``.
``Omega`` is 0 in the class token's row and column and ``exp(-((a-c)^2 + (b-d)^2) /
(2 std^2))`` between the patches at grid cells ``(a, b)`` and ``(c, d)`` (``gaussian_std``).
The "reduced" architecture (NACLIP's) keeps ``o`` alone: no residual, no MLP; the "vanilla"
one keeps both. Windows, position embedding and post-processing as its code runs them; its
protocol runs VOC in one whole-image pass and refines with PAMR.

With GLA (glaclip's construction, README "Base methods"): GLA's global attention in the
patches' ``k`` space over every window, proxy anchors from that space starting at
neighbourhood means, dynamic normalisation, and the Gaussian added to the normalised logits
before the cut and the softmax, from each token's position in the image: tokens across a
window border are neighbours. Then NACLIP's own continuation.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from glaclip.config import check_real
from glaclip.model.bases.base import BaseMethod, Published
from glaclip.registry import register_base

if TYPE_CHECKING:
    import torch

ARCHITECTURES = ("reduced", "vanilla")


@dataclass(frozen=True)
class NACLIPSettings:
    """NACLIP's own settings."""

    gaussian_std: float = field(
        default=5.0,
        metadata={"help": "NACLIP's neighbourhood Gaussian, in patches (5)"},
    )
    naclip_arch: str = field(
        default="reduced",
        metadata={
            "help": "NACLIP's last block: reduced (no residual, no MLP; NACLIP's) or vanilla",
            "choices": ARCHITECTURES,
        },
    )

    def __post_init__(self) -> None:
        check_real("gaussian_std", self.gaussian_std, above=0.0)
        if self.naclip_arch not in ARCHITECTURES:
            raise ValueError(
                f"naclip_arch must be 'reduced' or 'vanilla', got {self.naclip_arch!r}"
            )


_PROB_THRESHOLD = {"voc21": 0.1, "context60": 0.1, "coco_object": 0.1}
_WHOLE_IMAGE = ("voc21", "voc20")  # its configs' slide_crop=0
# NACLIP's README, "Results" (ViT-B/16, its default setup: PAMR on)
_README = {
    "voc21": 64.07,
    "context60": 34.99,
    "coco_object": 36.19,
    "voc20": 83.03,
    "context59": 38.35,
    "coco_stuff164k": 25.69,
    "cityscapes": 38.27,
    "ade20k": 19.05,
}


@register_base
class NACLIPBase(BaseMethod):
    """NACLIP's neighbourhood attention (SPEC 14)."""

    name = "naclip"
    title = "NACLIP"
    settings_class = NACLIPSettings
    native_windows = True
    published = {
        False: Published("NACLIP's README, Results (ViT-B/16, PAMR on)", _README, 42.46),
    }

    @classmethod
    def protocol(cls, dataset: str) -> dict[str, Any]:
        out: dict[str, Any] = {"pamr_steps": 10, "pamr_dilations": (8, 16)}
        out["prob_threshold"] = _PROB_THRESHOLD.get(dataset, 0.0)
        if dataset in _WHOLE_IMAGE:
            out["whole_image"] = True
        return out

    @property
    def vanilla(self) -> bool:
        return self.settings.method.naclip_arch == "vanilla"

    def features(self, crops, settings, timer):
        from glaclip.model.bases import ops

        with_class = not settings.gla.kv_extension
        names = ("k", "v", "x") if self.vanilla else ("k", "v")
        with timer("clip"):
            parts, grid = ops.clip_parts(self.clip, crops, names, with_class, "scale_factor")
        return ops.WindowFeatures(grid, parts)

    def window_attention(self, feats):
        from glaclip.model.bases import ops

        k, v = ops.with_class_token(feats, "k"), ops.with_class_token(feats, "v")
        omega = window_bias(feats.grid, self.settings.method.gaussian_std, str(k.device))
        return ops.softmax_attention([(k, omega)], v, self.clip.heads)[:, 1:]

    def similarity_spaces(self, feats, windows):
        from glaclip.model.bases import ops

        gla, patch = self.settings.gla, self.clip.patch_size
        initial = None
        if gla.proxy_anchor or gla.dynamic_norm:
            initial = ops.neighbourhood_proxies(feats["k"], windows, feats.grid, patch)
        std = self.settings.method.gaussian_std
        bias = ops.gaussian_bias(windows, feats.grid, patch, std, feats["k"].device)
        return [ops.SimilaritySpace(feats["k"], initial, bias)]

    def finish(self, attended, feats):
        o = self.clip_fp32.out_proj(attended)
        return self.clip_fp32.residual_mlp(feats["x"].float(), o) if self.vanilla else o


def gaussian_window(dim1: int, dim2: int, std: float) -> torch.Tensor:
    """``dim1 x dim2`` Gaussian centred in the middle, ``exp(-(a^2 + b^2))`` over offsets
    scaled by ``1 / (std sqrt 2)``, made as NACLIP's code makes it (``torch.linspace``), on the
    CPU (``window_bias`` moves the result)."""
    import torch

    constant = 1 / (std * math.sqrt(2))
    axes = []
    for dim in (dim1, dim2):
        start = -(dim - 1) / 2.0
        axes.append(
            torch.linspace(
                start * constant,
                (start + (dim - 1)) * constant,
                steps=dim,
                dtype=torch.float,
                device="cpu",
            )
        )
    dist = (torch.stack(torch.meshgrid(*axes, indexing="ij")) ** 2).sum(0)
    return torch.exp(-dist)


@functools.lru_cache(maxsize=8)
def window_bias(grid: tuple[int, int], std: float, device: str) -> torch.Tensor:
    """NACLIP's ``Omega`` for one window's ``gh x gw`` grid: ``(1 + S) x (1 + S)`` float32, 0 in
    the class token's row and column; between the query patch ``(a, b)`` and the key patch
    ``(c, d)``, the Gaussian window's entry at ``(a - c, b - d)`` from its centre, as NACLIP's
    convolution of one-hot maps places it."""
    import torch

    gh, gw = grid
    window = gaussian_window(2 * gh - 1, 2 * gw - 1, std)
    a = torch.arange(gh, device="cpu").view(gh, 1, 1, 1)
    b = torch.arange(gw, device="cpu").view(1, gw, 1, 1)
    c = torch.arange(gh, device="cpu").view(1, 1, gh, 1)
    d = torch.arange(gw, device="cpu").view(1, 1, 1, gw)
    patches = window[a - c + gh - 1, b - d + gw - 1].reshape(gh * gw, gh * gw)
    out = torch.zeros(1 + gh * gw, 1 + gh * gw, device="cpu")
    out[1:, 1:] = patches
    return out.to(device)
