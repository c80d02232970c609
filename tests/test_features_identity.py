"""Image features carry the identity of the weights that made them: a Segmenter of other
weights refuses them, one of the same weights takes them."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from glaclip import Segmenter
from glaclip.model import identity
from glaclip.model.identity import weights_fingerprint

RGB = np.random.default_rng(3).integers(0, 256, (120, 150, 3), dtype=np.uint8)
CLASSES = ["sky", "tree", "person; man"]


def _nudged(module: torch.nn.Module, scale: float = 1e-3) -> torch.nn.Module:
    """A copy of ``module`` with every weight moved a little: another checkpoint."""
    other = copy.deepcopy(module)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return other


@pytest.mark.parametrize("tower", ["clip", "vfm"])
def test_features_of_other_weights_are_refused(golden_modules, tower) -> None:
    clip, vfm, tok = golden_modules
    first = Segmenter.from_modules(clip, vfm, tok, text_cache_dir=None)
    if tower == "clip":
        other = Segmenter.from_modules(_nudged(clip), vfm, tok, text_cache_dir=None)
    else:
        other = Segmenter.from_modules(clip, _nudged(vfm), tok, text_cache_dir=None)
    features = first.encode_image(RGB)
    with pytest.raises(ValueError, match="image models of other weights"):
        other.segment(features, CLASSES)
    assert other.segment(other.encode_image(RGB), CLASSES).labels.shape == RGB.shape[:2]


def test_features_of_the_same_weights_are_taken(golden_modules) -> None:
    clip, vfm, tok = golden_modules
    first = Segmenter.from_modules(clip, vfm, tok, text_cache_dir=None)
    twin = Segmenter.from_modules(copy.deepcopy(clip), copy.deepcopy(vfm), tok, text_cache_dir=None)
    features = first.encode_image(RGB)
    assert features.weights == twin.image_fingerprint
    got = twin.segment(features, CLASSES).labels
    assert np.array_equal(got, twin.segment(RGB, CLASSES).labels)


def test_a_base_without_the_vfm_does_not_depend_on_it(golden_modules) -> None:
    clip, vfm, tok = golden_modules
    a = Segmenter.from_modules(clip, vfm, tok, base="clearclip", text_cache_dir=None)
    b = Segmenter.from_modules(clip, _nudged(vfm), tok, base="clearclip", text_cache_dir=None)
    assert a.image_fingerprint == b.image_fingerprint
    b.segment(a.encode_image(RGB), CLASSES)  # the VFM made none of these features
    normalised = Segmenter.from_modules(
        clip, None, tok, base="clearclip", text_cache_dir=None, clip_mean=(0.5, 0.5, 0.5)
    )
    assert normalised.image_fingerprint != a.image_fingerprint


def test_the_fingerprint_is_taken_once_and_shared(golden_modules, monkeypatch) -> None:
    calls = []
    real = weights_fingerprint
    monkeypatch.setattr(
        "glaclip.model.segmenter.weights_fingerprint", lambda *a: calls.append(1) or real(*a)
    )
    seg = Segmenter.from_modules(*golden_modules, text_cache_dir=None)
    features = seg.encode_image(RGB)
    seg.with_settings(prob_threshold=0.2).segment(features, CLASSES)
    seg.segment(features, ["cat"])
    assert calls == [1]


def test_the_fingerprint_reads_a_sample_of_each_tensor(monkeypatch) -> None:
    big = torch.nn.Linear(1000, 1000)
    base = weights_fingerprint([("m", big)])
    with torch.no_grad():
        big.weight[0, 0] += 1.0  # the first value is always sampled
    assert weights_fingerprint([("m", big)]) != base
    monkeypatch.setattr(identity, "SAMPLES", 10)
    assert len(identity._sample(big.weight)) == 10 * 8
