"""A base method added in this file alone runs through the API, ``glaclip segment`` and the demo
page: ``bases.REGISTRY`` is the one list every part reads. The toy base is MaskCLIP's "values
only": each token's attention output is its own CLIP value (attention = identity)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from glaclip import Segmenter, bases
from glaclip.bases import BaseMethod, WindowFeatures
from glaclip.cli import main


class MaskCLIPBase(BaseMethod):
    name = "maskclip"
    title = "MaskCLIP"

    def features(self, crops, settings, timer):
        with timer("clip"):
            y, grid = self.clip.last_block_input(crops)
            v = self.clip.projection(y, "v")[:, 1:]
        return WindowFeatures(keys=v, values=v, grid=grid)

    def attend(self, feats, windows, cfg, progress=None):
        return feats.values


@pytest.fixture
def toy_base(monkeypatch) -> type[BaseMethod]:
    monkeypatch.setitem(bases.REGISTRY, MaskCLIPBase.name, MaskCLIPBase)
    return MaskCLIPBase


def test_the_toy_base_through_segment_tensor(toy_base, golden_modules) -> None:
    """One 224 x 224 window: the logits are CLIP's projected values against the text,
    upsampled from the 14 x 14 grid, computed here from the CLIP tower's own pieces."""
    clip, _, tok = golden_modules
    seg = Segmenter.from_modules(clip, None, tok, base="maskclip", text_cache_dir=None)
    assert isinstance(seg.base, MaskCLIPBase) and seg.vfm_tower is None
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    out = seg.segment_tensor(x, ["sky", "road; street"])
    with torch.inference_mode():
        y, (gh, gw) = seg.clip_tower.last_block_input(x)
        emb = F.normalize(seg.clip_tower.project(seg.clip_tower.projection(y, "v")[0, 1:]), dim=-1)
        text = seg.text.encode(["sky", "road", "street"])
        grid = (emb @ text.T).T.reshape(1, 3, gh, gw)
        expected = F.interpolate(grid, size=(224, 224), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(out.query_logits, expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="maskclip"):  # the settings check knows it
        Segmenter.from_modules(clip, None, tok, base="maskclip2")


def test_the_toy_base_through_glaclip_segment(toy_base, tiny_checkpoints, tmp_path) -> None:
    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((240, 320, 3), 90, np.uint8)).save(photo)
    out = tmp_path / "out"
    code = main(
        ["segment", str(photo), "--classes", "sky, road", "--base", "maskclip", "--out", str(out)]
        + ["--clip", tiny_checkpoints["clip"], "--device", "cpu", "--no-progress"]
    )
    assert code == 0
    record = json.loads((out / "photo.json").read_text())
    assert record["settings"]["base"] == "maskclip"
    assert record["models"]["vfm"] is None  # it needs no VFM: none was loaded
    assert np.asarray(Image.open(out / "photo.png")).shape == (240, 320)


def test_the_readme_lists_every_registered_base() -> None:
    """The README's table of base methods has a row for each base of the registry."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    table = readme.split("| `--base` | keys |", 1)[1].split("\n\n", 1)[0]
    rows = [line.split("|")[1].strip() for line in table.splitlines()[2:]]
    assert [r.split("`")[1] for r in rows] == list(bases.REGISTRY)


def test_the_toy_base_in_the_demo_page(toy_base, golden_modules) -> None:
    from glaclip import demo

    clip, _, tok = golden_modules
    seg = Segmenter.from_modules(clip, None, tok, base="maskclip", text_cache_dir=None)
    app = demo.build_app(seg, {"clip": "tiny", "vfm": None})
    components = app.get_config_file()["components"]
    radio = next(c for c in components if c["props"].get("elem_id") == "glaclip-method")
    labels = [label for label, _ in radio["props"]["choices"]]
    assert "GLA-CLIP on MaskCLIP (no VFM)" in labels and "MaskCLIP per window (no VFM)" in labels
    assert not any(label.startswith("ProxyCLIP") for label in labels)  # it needs a VFM
