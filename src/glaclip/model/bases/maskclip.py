"""MaskCLIP (``base="maskclip"``): every patch token's own CLIP value through the last block's
output projection, no attention between tokens, no residual, no MLP (Zhou et al., "Extract
Free Dense Labels from CLIP", ECCV 2022). Per window only: a token attends to nothing but
itself, so there is no attention for GLA to extend across windows."""

from __future__ import annotations

from glaclip.model.bases.base import BaseMethod
from glaclip.registry import register_base


@register_base
class MaskCLIPBase(BaseMethod):
    """CLIP's last-block values as the tokens' attention output (attention = identity)."""

    name = "maskclip"
    title = "MaskCLIP"
    attention_spaces = 0
    native_windows = True

    def features(self, crops, settings, timer):
        from glaclip.model.bases import ops

        with timer("clip"):
            parts, grid = ops.clip_parts(self.clip, crops, ("v",), False, "scale_factor")
        return ops.WindowFeatures(grid, parts)

    def window_attention(self, feats):
        return feats["v"].float()
