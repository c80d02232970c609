"""The reference implementation's own outputs (../shared/golden), through the default path."""

from __future__ import annotations

import pytest
import torch

from glaclip import Segmenter
from tests.conftest import GOLDEN_CASES


def settings_of(params: dict) -> dict:
    """The golden case's parameters as glaclip settings."""
    return {
        "kv_extension": not params["no_kv"],
        "proxy_anchor": not params["no_proxy"],
        "dynamic_norm": not params["no_dyn"],
        "token_norm": not params["no_token_norm"],
        "proxy_iters": params["mini_iters"],
        "proxy_threshold": params["crit"],
        "beta_alpha": params["beta_alpha"],
        "gamma_alpha": params["gamma_alpha"],
        "prob_threshold": params["prob_thd"],
    }


@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_golden_case(case: str, golden_dir, golden_modules) -> None:
    g = torch.load(golden_dir / f"{case}.pt", weights_only=True)
    clip, vfm, tokenizer = golden_modules
    seg = Segmenter.from_modules(clip, vfm, tokenizer, **settings_of(g["params"]))
    out = seg.segment_tensor(g["image"], g["class_lines"])

    names = [n for line in g["class_lines"] for n in line.split("; ")]
    assert out.query_names == names
    text = seg.text.encode(names)
    assert torch.allclose(text, g["text_features"], atol=1e-6)

    assert out.query_logits.shape == g["logits"].shape
    diff = (out.query_logits - g["logits"]).abs()
    assert (diff < 1e-4).float().mean().item() >= 0.9999, f"max diff {diff.max().item():.2e}"
    assert diff.max().item() < 1e-2
    agree = (out.labels == g["pred"].long()).float().mean().item()
    assert agree >= 0.999


def test_golden_distinguishes_components(golden_dir, golden_modules) -> None:
    """Switching one component off moves the logits far beyond the tolerance."""
    g = torch.load(golden_dir / "gla_default.pt", weights_only=True)
    clip, vfm, tokenizer = golden_modules
    settings = settings_of(g["params"])
    for switch in ("kv_extension", "proxy_anchor", "dynamic_norm"):
        seg = Segmenter.from_modules(clip, vfm, tokenizer, **{**settings, switch: False})
        out = seg.segment_tensor(g["image"], g["class_lines"])
        assert (out.query_logits - g["logits"]).abs().max().item() > 1e-2, switch
