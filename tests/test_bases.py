"""Base methods (``base="proxyclip"`` / ``"clearclip"``): which models they need and load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from glaclip import Segmenter, backbones
from glaclip.bases import ClearCLIPBase, ProxyCLIPBase, needs_vfm
from glaclip.cli import main


@pytest.fixture
def no_vfm_allowed(monkeypatch):
    """Any attempt to build a VFM fails the test."""
    import timm

    def refuse(*args, **kwargs):
        raise AssertionError("a VFM was constructed")

    monkeypatch.setattr(backbones, "load_vfm", refuse)
    monkeypatch.setattr(timm, "create_model", refuse)


def test_clearclip_needs_no_vfm(golden_modules) -> None:
    clip, vfm, tok = golden_modules
    seg = Segmenter.from_modules(clip, None, tok, base="clearclip")
    assert isinstance(seg.base, ClearCLIPBase) and seg.vfm_tower is None
    out = seg.segment_tensor(torch.randn(1, 3, 224, 300), ["a", "b; c"])
    assert out.query_logits.shape == (3, 224, 300)
    assert seg.model_names()["vfm"] is None
    assert not needs_vfm("clearclip") and needs_vfm("proxyclip")


def test_proxyclip_without_vfm_is_a_clear_error(golden_modules) -> None:
    clip, _, tok = golden_modules
    with pytest.raises(ValueError, match="base='clearclip'"):
        Segmenter.from_modules(clip, None, tok)
    seg = Segmenter.from_modules(clip, None, tok, base="clearclip")
    with pytest.raises(ValueError, match="vision foundation model"):
        seg.with_settings(base="proxyclip")
    with pytest.raises(ValueError, match="base must be one of"):
        Segmenter.from_modules(clip, None, tok, base="segformer")


def test_with_settings_switches_the_base(golden_modules) -> None:
    clip, vfm, tok = golden_modules
    seg = Segmenter.from_modules(clip, vfm, tok)
    assert isinstance(seg.base, ProxyCLIPBase)
    other = seg.with_settings(base="clearclip")
    assert isinstance(other.base, ClearCLIPBase) and isinstance(seg.base, ProxyCLIPBase)
    x = torch.randn(1, 3, 224, 224)
    a = seg.segment_tensor(x, ["a", "b"]).query_logits
    b = other.segment_tensor(x, ["a", "b"]).query_logits
    c = Segmenter.from_modules(clip, None, tok, base="clearclip").segment_tensor(x, ["a", "b"])
    assert not torch.allclose(a, b)
    assert torch.equal(b, c.query_logits)


def test_from_pretrained_clearclip_loads_no_vfm(tiny_checkpoints, no_vfm_allowed) -> None:
    seg = Segmenter.from_pretrained(
        clip=tiny_checkpoints["clip"],
        vfm="local-dir:/nonexistent",
        device="cpu",
        text_cache_dir=None,
        base="clearclip",
    )
    assert seg.vfm_tower is None and seg.vfm_info is None
    assert seg.segment(np.zeros((100, 150, 3), np.uint8), ["a", "b"]).labels.shape == (100, 150)


def test_cli_clearclip_without_vfm(tiny_checkpoints, tmp_path, no_vfm_allowed) -> None:
    """``--base clearclip --clip local-dir:DIR`` with no VFM flag: no VFM is constructed, and
    the JSON records the base method and no VFM."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(tmp_path / "p.jpg")
    out = tmp_path / "out"
    cache = tmp_path / "cache"
    args = ["segment", str(tmp_path / "p.jpg"), "--classes", "sky, road, car", "--out", str(out)]
    args += ["--base", "clearclip", "--clip", tiny_checkpoints["clip"], "--device", "cpu"]
    args += ["--text-cache", str(cache), "--no-dynamic-beta"]
    assert main(args) == 0
    info = json.loads((out / "p.json").read_text())
    assert info["settings"]["base"] == "clearclip"
    assert info["settings"]["dynamic_beta"] is False
    assert info["models"]["vfm"] is None and info["models"]["vfm_checkpoint"] is None
    labels = np.asarray(Image.open(out / "p.png"))
    assert labels.shape == (240, 320) and labels.max() <= 2
