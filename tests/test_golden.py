"""The reference implementation's own outputs (../shared/golden), through the default path."""

from __future__ import annotations

import pytest
import torch

from glaclip import Segmenter
from tests.golden import (
    CLEARCLIP_CASES,
    GOLDEN_CASES,
    assert_matches_golden,
    golden_agreement,
    is_clearclip,
    settings_of,
)


@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_golden_case(case: str, golden_dir, golden_modules) -> None:
    """Every case through ``from_modules`` + ``segment_tensor``, the CLI's code path; the
    ClearCLIP cases without any VFM."""
    g = torch.load(golden_dir / f"{case}.pt", weights_only=True)
    clip, vfm, tokenizer = golden_modules
    if is_clearclip(g["params"]):
        vfm = None
    seg = Segmenter.from_modules(clip, vfm, tokenizer, **settings_of(g["params"]))
    out = seg.segment_tensor(g["image"], g["class_lines"])

    names = [n for line in g["class_lines"] for n in line.split("; ")]
    assert out.query_names == names
    text = seg.text.encode(names)
    assert torch.allclose(text, g["text_features"], atol=1e-6)
    assert_matches_golden(out.query_logits, out.labels, g)


def test_golden_distinguishes_components(golden_dir, golden_modules) -> None:
    """Switching one component off fails the tolerance rule by far."""
    g = torch.load(golden_dir / "gla_default.pt", weights_only=True)
    clip, vfm, tokenizer = golden_modules
    settings = settings_of(g["params"])
    for switch in ("kv_extension", "proxy_anchor", "dynamic_norm"):
        seg = Segmenter.from_modules(clip, vfm, tokenizer, **{**settings, switch: False})
        out = seg.segment_tensor(g["image"], g["class_lines"])
        close, worst, _ = golden_agreement(out.query_logits, out.labels, g)
        assert close < 0.5 and worst > 1e-2, switch


@pytest.mark.parametrize(
    ("case", "change"),
    [
        ("clearclip_gla", {"kv_extension": False}),
        ("clearclip_gla", {"proxy_anchor": False}),
        ("clearclip_gla", {"dynamic_norm": False}),
        ("clearclip_gla", {"base": "proxyclip"}),
        ("clearclip_gla_fixed_beta", {"dynamic_beta": True}),
        ("clearclip_baseline", {"kv_extension": True}),
        ("gla_default", {"dynamic_beta": False}),
    ],
)
def test_golden_distinguishes_base_switches(case, change, golden_dir, golden_modules):
    """Each ClearCLIP switch (and dynamic_beta on either base) matters: flipping it fails the
    tolerance rule."""
    assert case in CLEARCLIP_CASES + ["gla_default"]
    g = torch.load(golden_dir / f"{case}.pt", weights_only=True)
    clip, vfm, tokenizer = golden_modules
    seg = Segmenter.from_modules(clip, vfm, tokenizer, **{**settings_of(g["params"]), **change})
    out = seg.segment_tensor(g["image"], g["class_lines"])
    close, worst, _ = golden_agreement(out.query_logits, out.labels, g)
    assert close < 0.9 and worst > 1e-2, (change, close, worst)
