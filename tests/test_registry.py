"""A base method added in this file alone runs through the API, ``glaclip segment`` and the demo
page: ``glaclip.registry`` is the one list every part reads. The toy base is CLIP's own
last-block attention (queries against keys) per window, with its output projection and without
the residual and the MLP."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from glaclip import Segmenter, registry
from glaclip.cli.main import main
from glaclip.model.bases.base import BaseMethod
from glaclip.model.bases.ops import WindowFeatures, clip_parts, with_class_token


class VanillaAttentionBase(BaseMethod):
    name = "toy_vanilla"
    title = "CLIP attention"
    attention_spaces = 0  # no similarity space given: per window only

    def features(self, crops, settings, timer):
        with timer("clip"):
            parts, grid = clip_parts(self.clip, crops, ("q", "k", "v"), with_class=True)
        return WindowFeatures(grid, parts)

    def window_attention(self, feats):
        heads = self.clip.heads
        q, k, v = (with_class_token(feats, n) for n in "qkv")
        n_win, n_tok, d = q.shape
        qh, kh, vh = (t.reshape(n_win, n_tok, heads, -1).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(qh, kh, vh).transpose(1, 2).reshape(n_win, n_tok, d)
        return out[:, 1:]


@pytest.fixture
def toy_base(monkeypatch) -> type[BaseMethod]:
    registry.registered()  # the built-in bases first
    monkeypatch.setitem(registry.REGISTRY, VanillaAttentionBase.name, VanillaAttentionBase)
    return VanillaAttentionBase


def test_the_toy_base_through_segment_tensor(toy_base, golden_modules) -> None:
    """One 224 x 224 window: the logits are the tokens of open_clip's own last block, as its
    attention module computes them (captured in a forward of the whole image tower), without the
    residual and the MLP, through ln_post and the projection, against the text."""
    clip, _, tok = golden_modules
    seg = Segmenter.from_modules(
        clip, None, tok, base="toy_vanilla", kv_extension=False, text_cache_dir=None
    )
    assert isinstance(seg.base, VanillaAttentionBase) and seg.vfm_tower is None
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    out = seg.segment_tensor(x, ["sky", "road; street"])
    last = clip.visual.transformer.resblocks[-1]
    seen = {}
    hook = last.register_forward_pre_hook(lambda _m, args: seen.setdefault("x", args[0]))
    try:
        with torch.inference_mode():
            clip.encode_image(x)
            y = last.ln_1(seen["x"])
            o = last.attn(y, y, y, need_weights=False)[0]  # open_clip's nn.MultiheadAttention
            emb = F.normalize(clip.visual.ln_post(o[0, 1:]) @ clip.visual.proj, dim=-1)
            text = seg.text.encode(["sky", "road", "street"])
            grid = (emb @ text.T).T.reshape(1, 3, 14, 14)
            expected = F.interpolate(grid, size=(224, 224), mode="bilinear", align_corners=False)
    finally:
        hook.remove()
    torch.testing.assert_close(out.query_logits, expected[0], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="toy_vanilla"):  # the settings check knows it
        Segmenter.from_modules(clip, None, tok, base="toy_vanilla2")
    with pytest.raises(ValueError, match="per window with kv_extension=False"):
        Segmenter.from_modules(clip, None, tok, base="toy_vanilla")  # no space for GLA


def test_the_toy_base_through_glaclip_segment(toy_base, tiny_checkpoints, tmp_path) -> None:
    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((240, 320, 3), 90, np.uint8)).save(photo)
    out = tmp_path / "out"
    code = main(
        ["segment", str(photo), "--classes", "sky, road", "--base", "toy_vanilla"]
        + ["--no-kv-extension", "--out", str(out)]
        + ["--clip", tiny_checkpoints["clip"], "--device", "cpu", "--no-progress"]
    )
    assert code == 0
    record = json.loads((out / "photo.json").read_text())
    assert record["settings"]["base"] == "toy_vanilla"
    assert record["models"]["vfm"] is None  # it needs no VFM: none was loaded
    assert np.asarray(Image.open(out / "photo.png")).shape == (240, 320)


def test_the_readme_lists_every_registered_base() -> None:
    """The README's table of base methods has a row for each base of the registry."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    table = readme.split("| `--base` | ", 1)[1].split("\n\n", 1)[0]
    rows = [line.split("|")[1].strip() for line in table.splitlines()[2:]]
    assert [r.split("`")[1] for r in rows] == list(registry.registered())


def test_the_toy_base_in_the_demo_page(toy_base, golden_modules) -> None:
    from glaclip.demo import app

    clip, _, tok = golden_modules
    seg = Segmenter.from_modules(
        clip, None, tok, base="toy_vanilla", kv_extension=False, text_cache_dir=None
    )
    app = app.build_app(seg, {"clip": "tiny", "vfm": None})
    components = app.get_config_file()["components"]
    radio = next(c for c in components if c["props"].get("elem_id") == "glaclip-method")
    labels = [label for label, _ in radio["props"]["choices"]]
    assert "CLIP attention per window (no VFM)" in labels
    assert "GLA-CLIP on CLIP attention (no VFM)" not in labels  # no attention for GLA
    assert "GLA-CLIP on SCLIP (no VFM)" in labels and "MaskCLIP per window (no VFM)" in labels
    assert not any(label.startswith("ProxyCLIP") for label in labels)  # it needs a VFM
