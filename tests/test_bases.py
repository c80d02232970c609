"""Base methods: which models they need and load, and GLA on each (README "Base methods")."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from glaclip import Segmenter
from glaclip.cli.main import main
from glaclip.model.bases.clearclip import ClearCLIPBase
from glaclip.model.bases.proxyclip import ProxyCLIPBase
from glaclip.registry import needs_vfm


@pytest.fixture
def no_vfm_allowed(monkeypatch):
    """Any attempt to build a VFM fails the test."""
    import timm

    def refuse(*args, **kwargs):
        raise AssertionError("a VFM was constructed")

    monkeypatch.setattr("glaclip.model.segmenter.load_vfm", refuse)
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


# ---------------------------------------------------------------------------------------------
# GLA on SCLIP and NACLIP: glaclip's construction (README "GLA on each base"), checked against
# a literal implementation of the stated formulas with N x N matrices, from open_clip's own
# modules (the last block's input captured in a forward of the image tower).


def _literal_last_block_input(clip, x: torch.Tensor) -> torch.Tensor:
    """``B x (1 + S) x D``: the input of open_clip's last image block, captured in a forward."""
    last = clip.visual.transformer.resblocks[-1]
    seen = []
    hook = last.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        clip.visual(x)
    finally:
        hook.remove()
    tokens = seen[0]
    return tokens if clip.visual.transformer.batch_first else tokens.transpose(0, 1)


def _literal_gla(feats, values, windows, heads, omega_std=None, tau=0.6, iters=2):
    """README "GLA on each base", one similarity space, with N x N matrices: ``feats`` and
    ``values`` are ``L x 14 x 14 x D`` on CLIP's grid (patch 16)."""
    n_win, gh, gw, d = feats.shape
    f = feats.reshape(-1, d)
    k = F.normalize(f, dim=-1)
    wy = torch.tensor([w.y1 for w in windows]).view(-1, 1, 1).expand(n_win, gh, gw)
    wx = torch.tensor([w.x1 for w in windows]).view(-1, 1, 1).expand(n_win, gh, gw)
    ii = torch.arange(gh).view(1, -1, 1).expand(n_win, gh, gw)
    jj = torch.arange(gw).view(1, 1, -1).expand(n_win, gh, gw)
    py, px = (wy + 16 * ii).reshape(-1), (wx + 16 * jj).reshape(-1)
    win = torch.arange(n_win).view(-1, 1, 1).expand(n_win, gh, gw).reshape(-1)
    ii, jj = ii.reshape(-1), jj.reshape(-1)
    same = (py[:, None] == py[None]) & (px[:, None] == px[None])
    near = (win[:, None] == win[None]) & ((ii[:, None] - ii[None]).abs() <= 1)
    near &= (jj[:, None] - jj[None]).abs() <= 1
    cand = (same | near).float()
    p = F.normalize((cand @ f) / cand.sum(dim=1, keepdim=True), dim=-1)
    a = p @ k.T
    for _ in range(iters):
        m = a > tau
        m[torch.arange(len(m)), torch.arange(len(m))] |= ~m.any(dim=1)
        mf = m.float()
        p = F.normalize((mf @ k) / (mf.sum(dim=1, keepdim=True) + 1e-6), dim=-1)
        a = p @ k.T
    beta = 1 + 0.3 * math.log(1 + n_win)
    gamma = 1 + 30 / mf.sum(dim=1, keepdim=True)
    z = (a - beta * a.mean(dim=1, keepdim=True).clamp_min(0)) * gamma
    if omega_std is not None:
        dist2 = ((py[:, None] - py[None]) / 16.0) ** 2 + ((px[:, None] - px[None]) / 16.0) ** 2
        z = z + torch.exp(-dist2 / (2 * omega_std**2))
    cut = z.amax(dim=1, keepdim=True).clamp_max(0)
    w = torch.softmax(z.masked_fill(z < cut, float("-inf")), dim=1)
    v = values.reshape(-1, heads, d // heads)
    return torch.einsum("nm,mhd->nhd", w, v).reshape(n_win, gh * gw, d)


def _literal_embeddings(clip, x, windows, base: str, omega: bool = True) -> torch.Tensor:
    """Every token's embedding (``L x S x E``) under GLA on ``base``, literally."""
    visual, last = clip.visual, clip.visual.transformer.resblocks[-1]
    heads = last.attn.num_heads
    crops = torch.cat([x[:, :, w.y1 : w.y2, w.x1 : w.x2] for w in windows])
    tokens = _literal_last_block_input(clip, crops)[:, 1:]  # patches
    q, k, v = F.linear(last.ln_1(tokens), last.attn.in_proj_weight, last.attn.in_proj_bias).chunk(
        3, dim=-1
    )
    grid = (len(windows), 14, 14, -1)
    if base == "sclip":
        o = _literal_gla(q.reshape(grid), v, windows, heads)
        o = o + _literal_gla(k.reshape(grid), v, windows, heads)
        t = tokens + last.attn.out_proj(o)
        t = t + last.mlp(last.ln_2(t))
    else:
        std = 5.0 if omega else None
        t = last.attn.out_proj(_literal_gla(k.reshape(grid), v, windows, heads, std))
    return F.normalize(visual.ln_post(t) @ visual.proj, dim=-1)


@pytest.mark.parametrize("impl", [{"attention_impl": "dense"}, {"block_size": 50}])
@pytest.mark.parametrize("base", ["sclip", "naclip"])
def test_gla_on_a_base_is_the_stated_construction(base, impl, golden_modules) -> None:
    """GLA on SCLIP (the q and k maps, summed, then the residual and MLP) and on NACLIP (the k
    map with the neighbourhood Gaussian at image positions): the blocked kernel (in blocks of 50
    rows) and the dense oracle give the literal formulas' embeddings; without the Gaussian the
    literal NACLIP is far from them (the bias matters)."""
    from glaclip.model.windows import window_grid

    clip, _, tok = golden_modules
    seg = Segmenter.from_modules(clip, None, tok, base=base, text_cache_dir=None, **impl)
    x = torch.randn(1, 3, 224, 336, generator=torch.Generator().manual_seed(3))
    windows = window_grid(224, 336)
    with torch.inference_mode():
        got = seg.encode_tensor(x).embeddings
        ref = _literal_embeddings(clip, x, windows, base)
    assert got.shape == ref.shape == (2, 196, 32)
    diff = (got - ref).abs()
    assert (diff < 1e-4).float().mean() >= 0.995 and diff.max() < 1e-2, diff.max()
    if base == "naclip":
        with torch.inference_mode():
            plain = _literal_embeddings(clip, x, windows, base, omega=False)
        assert (plain - got).abs().max() > 1e-2


def test_neighbourhood_bias_crosses_window_borders() -> None:
    """Tokens are neighbours by their position in the image: the same pixel seen from two
    windows has bias 1, and tokens one patch apart across the seam exp(-1 / (2 std^2))."""
    from glaclip.model.bases.ops import gaussian_bias
    from glaclip.model.windows import Window

    windows = [Window(0, 32, 0, 32), Window(0, 32, 16, 48)]  # 2 x 2 tokens each, 16 px apart
    bias = gaussian_bias(windows, (2, 2), (16, 16), std=2.0, device=torch.device("cpu"))
    z = torch.zeros(8, 8)
    bias.add_to(z, 0, chunk=3)
    # token 1 (window 0, row 0, column 1: pixel x = 16) and token 4 (window 1, row 0, column 0)
    assert z[1, 4] == 1.0 and z[4, 1] == 1.0
    assert z[0, 4] == pytest.approx(math.exp(-1 / 8))  # one patch apart across the seam
    assert z[0, 7] == pytest.approx(math.exp(-(1 + 4) / 8))  # (1, 2) patches apart
    torch.testing.assert_close(z, z.T)


@pytest.mark.parametrize("base", ["sclip", "naclip"])
def test_fast_mode_applies_to_gla_on_a_base(base, golden_modules) -> None:
    """``precision="bf16"`` runs GLA on the base with its half-precision products and stays near
    float32: labels mostly equal, logits within 1e-2 nearly everywhere, but not the exact path."""
    clip, _, tok = golden_modules
    x = torch.randn(1, 3, 224, 336, generator=torch.Generator().manual_seed(4))
    lines = ["sky", "road; street", "car", "tree"]
    exact = Segmenter.from_modules(clip, None, tok, base=base, text_cache_dir=None)
    with warnings.catch_warnings():  # "emulated" on CPUs without native bf16
        warnings.simplefilter("ignore", RuntimeWarning)
        fast = exact.with_settings(precision="bf16").segment_tensor(x, lines)
    ref = exact.segment_tensor(x, lines)
    diff = (fast.query_logits - ref.query_logits).abs()
    assert (fast.labels == ref.labels).float().mean() >= 0.97
    assert (diff < 1e-2).float().mean() >= 0.93 and diff.max() > 1e-5


def test_window_attention_of_a_large_window_stays_within_its_tile(monkeypatch) -> None:
    """The per-window attention of ClearCLIP, SCLIP and NACLIP (a whole image with
    ``--whole-image``) computes its logits in blocks of query rows within ``tile_bytes``, with
    the numbers of the authors' all-rows formula."""
    from glaclip.model.bases import ops

    g = torch.Generator().manual_seed(3)
    n_win, n_tok, heads, d_h = 3, 50, 2, 4
    q, k, v = (torch.randn(n_win, n_tok, heads * d_h, generator=g) for _ in range(3))
    bias = torch.randn(n_tok, n_tok, generator=g)

    expected = torch.zeros(n_win, n_tok, heads * d_h, dtype=torch.float64)
    for w in range(n_win):  # the formula, one window and head at a time, in float64
        for h in range(heads):
            cols = slice(h * d_h, (h + 1) * d_h)
            qh, kh, vh = (x[w, :, cols].double() for x in (q, k, v))
            att = torch.softmax(qh @ qh.T / math.sqrt(d_h), -1)
            att = att + torch.softmax(kh @ kh.T / math.sqrt(d_h) + bias.double(), -1)
            expected[w, :, cols] = att @ vh

    largest = []
    softmax = torch.softmax

    def recording_softmax(x, dim):
        largest.append(x.numel() * 4)
        return softmax(x, dim)

    monkeypatch.setattr(torch, "softmax", recording_softmax)
    tile = 7 * heads * n_tok * 4  # seven query rows of one window
    blocked = ops.softmax_attention([(q, None), (k, bias)], v, heads, tile_bytes=tile)
    assert max(largest) <= tile
    largest.clear()
    whole = ops.softmax_attention([(q, None), (k, bias)], v, heads)
    assert max(largest) == n_win * heads * n_tok * n_tok * 4  # all windows, all rows at once
    torch.testing.assert_close(blocked.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(whole.double(), expected, rtol=1e-5, atol=1e-5)
