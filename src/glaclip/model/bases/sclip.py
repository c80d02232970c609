"""SCLIP (``base="sclip"``; Wang et al., ECCV 2024; wangf3014/SCLIP): correlative
self-attention in CLIP's last block, the residual and the MLP kept (SPEC 13).

Per window, over the class token and the patches, per head with ``s = d_h^-1/2``:
``A = softmax(q q^T s) + softmax(k k^T s)``, ``o = out_proj(A v)``, ``x = x + o``,
``x = x + mlp(ln_2(x))``. Windows, position embedding and post-processing as its code runs
them (``native_windows``); its protocol per benchmark (``protocol``).

With GLA (glaclip's construction, README "Base methods"): each of the two maps is GLA's
global attention in its own space (the patches' ``q``, then ``k``, over every window, proxy
anchors from that space starting at neighbourhood means, dynamic normalisation); the two
outputs are summed as SCLIP sums its maps, then the output projection, the residual and the MLP.
"""

from __future__ import annotations

from typing import Any

from glaclip.model.bases.base import BaseMethod, Published
from glaclip.registry import register_base

# SCLIP's configs/cfg_*.py: logit scale, probability threshold, area threshold, resize
_PROTOCOL: dict[str, dict[str, Any]] = {
    "voc21": {"logit_scale": 65.0, "prob_threshold": 0.1, "area_threshold": 0.1},
    "context60": {"logit_scale": 50.0, "prob_threshold": 0.1},
    "coco_object": {"logit_scale": 50.0, "prob_threshold": 0.1},
    "coco_stuff164k": {"short_side": 448},
}
# the SCLIP paper, Table 1 (ViT-B/16)
_PAPER = {
    "voc21": 59.1,
    "context60": 30.4,
    "coco_object": 30.5,
    "voc20": 80.4,
    "context59": 34.2,
    "coco_stuff164k": 22.4,
    "cityscapes": 32.2,
    "ade20k": 16.1,
}


@register_base
class SCLIPBase(BaseMethod):
    """SCLIP's correlative self-attention (SPEC 13)."""

    name = "sclip"
    title = "SCLIP"
    attention_spaces = 2
    native_windows = True
    published = {
        False: Published("SCLIP paper, Table 1 (ViT-B/16)", _PAPER, 38.2),
        True: Published("GLA-CLIP project page (SCLIP + GLA, SCLIP's protocol)", {}, 39.8),
    }

    @classmethod
    def protocol(cls, dataset: str) -> dict[str, Any]:
        return dict(_PROTOCOL.get(dataset, {}))

    def features(self, crops, settings, timer):
        from glaclip.model.bases import ops

        with_class = not settings.gla.kv_extension
        with timer("clip"):
            parts, grid = ops.clip_parts(
                self.clip, crops, ("q", "k", "v", "x"), with_class, "scale_factor"
            )
        return ops.WindowFeatures(grid, parts)

    def window_attention(self, feats):
        from glaclip.model.bases import ops

        q, k = ops.with_class_token(feats, "q"), ops.with_class_token(feats, "k")
        v = ops.with_class_token(feats, "v")
        return ops.softmax_attention([(q, None), (k, None)], v, self.clip.heads)[:, 1:]

    def similarity_spaces(self, feats, windows):
        from glaclip.model.bases import ops

        gla, patch = self.settings.gla, self.clip.patch_size
        spaces = []
        for name in ("q", "k"):
            initial = None
            if gla.proxy_anchor or gla.dynamic_norm:
                initial = ops.neighbourhood_proxies(feats[name], windows, feats.grid, patch)
            spaces.append(ops.SimilaritySpace(feats[name], initial))
        return spaces

    def finish(self, attended, feats):
        return self.clip_fp32.residual_mlp(feats["x"].float(), self.clip_fp32.out_proj(attended))
