"""ProxyCLIP (``base="proxyclip"``, the paper's default): keys from a vision foundation model,
values from CLIP (SPEC 3-7); per window, ProxyCLIP's own attention (SPEC 10)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from glaclip.config import GLAConfig
from glaclip.model.bases.base import BaseMethod, Published
from glaclip.registry import register_base

if TYPE_CHECKING:
    import torch

# the GLA-CLIP paper's Table 1 (ViT-B/16, GLA-CLIP's default settings)
_GLA_TABLE1 = {
    "voc21": 66.3,
    "context60": 36.1,
    "coco_object": 37.7,
    "voc20": 84.2,
    "context59": 39.9,
    "coco_stuff164k": 26.9,
    "cityscapes": 40.8,
    "ade20k": 20.0,
}


@register_base
class ProxyCLIPBase(BaseMethod):
    """Keys from a vision foundation model, values from CLIP (SPEC 3-7, 10)."""

    name = "proxyclip"
    title = "ProxyCLIP"
    needs_vfm = True
    published = {
        True: Published(
            "GLA-CLIP paper, Table 1 (ViT-B/16, GLA-CLIP default settings)", _GLA_TABLE1, 44.0
        ),
    }

    def features(self, crops, settings, timer):
        from glaclip.model.bases import ops

        mean, std = self.clip_normalisation
        with timer("vfm"):
            fused = settings.runtime.fused
            k = self.vfm.keys(crops, mean, std, fused_attention=fused)  # b x gh x gw x Ck
        gh, gw = k.shape[1], k.shape[2]
        with timer("clip"):
            v = self.clip.values(crops)  # b x D x gh' x gw'
            if v.shape[-2:] != (gh, gw):
                import torch.nn.functional as F

                v = F.interpolate(v.float(), size=(gh, gw), mode="bilinear", align_corners=False)
        keys = k.reshape(k.shape[0], gh * gw, -1)
        values = v.reshape(v.shape[0], v.shape[1], -1).transpose(1, 2)
        return ops.WindowFeatures((gh, gw), {"keys": keys, "v": values})

    def window_attention(self, feats):
        from glaclip.model.bases import ops

        values = ops.heads_view(feats["v"].float(), self.clip.heads)
        return window_attention(ops.normalised(feats["keys"]), values, self.settings.gla)

    def similarity_spaces(self, feats, windows):
        from glaclip.model.bases import ops

        return [ops.SimilaritySpace(feats["keys"])]


def window_attention(
    keys: torch.Tensor, values: torch.Tensor, cfg: GLAConfig, chunk: int = 16
) -> torch.Tensor:
    """ProxyCLIP's attention inside each window alone (SPEC 10): steps 5-7 with fixed beta and
    gamma, the proxy iteration without the empty-row fix, then proxy against proxy.

    Args:
        keys: ``L x S x Ck`` L2-normalised keys.
        values: ``heads x L x S x d_h``.
        chunk: windows computed together (batched products; memory ``O(chunk x S x S)``).

    Returns:
        ``L x S x (heads * d_h)``.
    """
    import torch.nn.functional as F

    from glaclip.model.attention import EPS, sparse_softmax

    n_win, n_tok, _ = keys.shape
    heads, _, _, d_h = values.shape
    v = values.permute(1, 2, 0, 3).reshape(n_win, n_tok, heads * d_h)
    out = keys.new_empty(n_win, n_tok, heads * d_h)
    for start in range(0, n_win, chunk):
        part = slice(start, min(n_win, start + chunk))
        k = keys[part]
        kt = k.transpose(1, 2)
        a = k @ kt
        if cfg.proxy_anchor and cfg.proxy_iters > 0:
            for _ in range(cfg.proxy_iters):
                mf = (a > cfg.proxy_threshold).to(k.dtype)
                p = F.normalize((mf @ k) / (mf.sum(dim=-1, keepdim=True) + EPS), dim=-1)
                a = p @ kt
            a = p @ p.transpose(1, 2)
        if cfg.token_norm:
            mu = a.mean(dim=-1, keepdim=True)
        else:
            mu = a.mean(dim=(-2, -1), keepdim=True)
        z = (a - cfg.fixed_beta * mu) * cfg.fixed_gamma
        out[part] = sparse_softmax(z) @ v[part]
    return out
