"""ClearCLIP (``base="clearclip"``): CLIP alone, its last block's queries are the keys
(SPEC 12). No VFM. Per window: q-q attention over the class token and the patches, the output
projection, no residual, no MLP (SPEC 12.1); with GLA the proxy iteration starts from
neighbourhood means (SPEC 12.2)."""

from __future__ import annotations

from glaclip.model.bases.base import BaseMethod, Published
from glaclip.registry import register_base


@register_base
class ClearCLIPBase(BaseMethod):
    """CLIP alone: its last block's queries are the keys (SPEC 12). No VFM."""

    name = "clearclip"
    title = "ClearCLIP"
    published = {
        True: Published("GLA-CLIP paper (ClearCLIP + GLA, ViT-B/16)", {}, 39.3),
        False: Published("GLA-CLIP paper (ClearCLIP, ViT-B/16)", {}, 38.1),
    }

    def features(self, crops, settings, timer):
        from glaclip.model.bases import ops

        with_class = not settings.gla.kv_extension  # the per-window method attends over it
        with timer("clip"):
            parts, grid = ops.clip_parts(self.clip, crops, ("q", "v"), with_class)
        return ops.WindowFeatures(grid, parts)

    def window_attention(self, feats):
        from glaclip.model.bases import ops

        q, v = ops.with_class_token(feats, "q"), ops.with_class_token(feats, "v")
        return ops.softmax_attention([(q, None)], v, self.clip.heads)[:, 1:]

    def similarity_spaces(self, feats, windows):
        from glaclip.model.bases import ops

        initial = None
        gla = self.settings.gla
        if gla.proxy_anchor or gla.dynamic_norm:
            initial = ops.neighbourhood_proxies(
                feats["q"], windows, feats.grid, self.clip.patch_size
            )
        return [ops.SimilaritySpace(feats["q"], initial)]
