"""The bases ``sclip`` and ``naclip`` and glaclip's PAMR against the authors' own code.

The fixtures in ``tests/golden_bases`` are SCLIP's and NACLIP's segmentors and their ``pamr.py``
run on a tiny random CLIP (``tests/base_golden.py`` says what they hold and what the authors'
code does; ``tests/make_base_golden.py`` made them). Every case runs through the public API,
as a user calls it, with the case's flat settings and the tolerance rule of ``tests/golden.py``
(the same rule for the class probabilities). The negative controls change one setting and must
fail that rule: the fixtures can tell.
"""

from __future__ import annotations

import copy

import pytest
import torch

import glaclip
from tests.base_golden import (
    BASE_CASES,
    BASES_DIR,
    MODEL_SEED,
    PAMR_ATOL,
    PAMR_CASES,
    build_tiny_clip,
    load_base_case,
    probs_agreement,
    query_names,
    remake_image,
    remake_pamr_inputs,
    state_sha256,
    tensor_sha256,
)
from tests.golden import (
    CLOSE_FRACTION,
    LABEL_FRACTION,
    LOGIT_ATOL,
    LOGIT_MAX,
    assert_matches_golden,
    golden_agreement,
)


@pytest.fixture(scope="module")
def tiny():
    """``(open_clip CLIP, its state dict, tokenizer)``: the fixtures' tiny model, remade."""
    import open_clip

    clip, state = build_tiny_clip(MODEL_SEED)
    return clip, state, open_clip.get_tokenizer("ViT-B-16")


def segment(tiny, g: dict, device: str = "cpu", **change):
    """``(segmenter, output)`` of one case with its settings (``change`` replaces some; a
    value of None removes the setting)."""
    clip, _, tokenizer = tiny
    settings = {k: v for k, v in {**g["settings"], **change}.items() if v is not None}
    seg = glaclip.Segmenter.from_modules(
        clip, None, tokenizer, device=device, text_cache_dir=None, **settings
    )
    out = seg.segment_tensor(
        g["image"],
        g["class_lines"],
        output_size=tuple(g["params"]["output_size"]),
        return_scores="probs" in g,
    )
    return seg, out


def verdict(out, g: dict) -> tuple[bool, str]:
    """Whether an output meets the tolerance rule (logits, labels and, where the case has
    them, probabilities), and the numbers."""
    close, worst, agree = golden_agreement(out.query_logits, out.labels, g)
    ok = close >= CLOSE_FRACTION and worst < LOGIT_MAX and agree >= LABEL_FRACTION
    summary = f"{100 * close:.2f} % of logits within {LOGIT_ATOL:g} (max diff {worst:.1e}), "
    summary += f"labels equal on {100 * agree:.3f} %"
    if "probs" in g:
        p_close, p_worst = probs_agreement(out.scores, g)
        ok = ok and p_close >= CLOSE_FRACTION and p_worst < LOGIT_MAX
        summary += f", {100 * p_close:.2f} % of probabilities close (max diff {p_worst:.1e})"
    return ok, summary


def test_fixture_files_are_the_listed_cases() -> None:
    assert sorted(p.stem for p in BASES_DIR.glob("*.pt")) == sorted(BASE_CASES + PAMR_CASES)


def test_remade_weights_and_inputs_are_the_fixtures(tiny) -> None:
    """The tiny weights remade from the seed are the ones the fixtures were made with (and
    exact in float16), and so are the images and PAMR inputs: another machine's generator would
    fail here, not pass the cases by luck."""
    _, state, _ = tiny
    assert all(torch.equal(v, v.half().float()) for v in state.values())
    sha = state_sha256(state)
    for case in BASE_CASES:
        g = load_base_case(case)
        assert g["params"]["model_sha256"] == sha, case
        assert g["params"]["image_sha256"] == tensor_sha256(remake_image(g["params"])), case
    for case in PAMR_CASES:
        g = torch.load(BASES_DIR / f"{case}.pt", weights_only=True)
        assert g["inputs_sha256"] == tensor_sha256(*remake_pamr_inputs(g["params"])), case


def test_fixtures_exercise_the_thresholds() -> None:
    """The area threshold dropped classes that won pixels in ``sclip_voc21``, and the
    probability threshold set pixels to 0 there and in the NACLIP cases that use it."""
    g = load_base_case("sclip_voc21")
    assert g["settings"]["area_threshold"] > 0 and g["params"]["area_dropped_classes"]
    for case in BASE_CASES:
        g = load_base_case(case)
        if g["settings"]["prob_threshold"] > 0:
            assert g["params"]["prob_threshold_zeroed_pixels"] > 0, case


@pytest.mark.parametrize("case", BASE_CASES)
def test_base_case(case: str, tiny, test_device) -> None:
    """Each case through ``from_modules`` + ``segment_tensor``: text features, stitched logits,
    labels at the output size and, where the case has them, class probabilities."""
    g = load_base_case(case)
    if test_device != "cpu":  # from_modules moves the model: leave the shared one alone
        tiny = (copy.deepcopy(tiny[0]), *tiny[1:])
    seg, out = segment(tiny, g, device=test_device)
    names = query_names(g["class_lines"])
    assert out.query_names == names
    text = seg.text.encode(names)
    assert torch.allclose(text.cpu(), g["text_features"], atol=1e-6)
    h, w = g["params"]["H"], g["params"]["W"]
    assert tuple(out.query_logits.shape) == (len(names), h, w)
    assert tuple(out.labels.shape) == tuple(g["params"]["output_size"])
    ok, summary = verdict(out, g)
    print(f"{case} on {seg.device}: {summary}")  # shown by pytest -rA
    assert_matches_golden(out.query_logits, out.labels, g)
    if "probs" in g:
        assert tuple(out.scores.shape) == (len(g["class_lines"]), *g["params"]["output_size"])
    assert ok, summary


# One setting changed: the fixtures must tell (each measured against the authors' code with the
# same change: every one fails the rule, most by far).
NEGATIVE_CONTROLS = [
    ("sclip_voc21", {"base": "naclip"}),
    ("sclip_voc21", {"area_threshold": 0.0}),
    ("sclip_voc21", {"prob_threshold": 0.0}),
    ("sclip_small", {"base": "naclip"}),
    ("sclip_pamr", {"pamr_steps": 0}),
    ("sclip_pamr", {"pamr_dilations": (1, 2)}),
    ("naclip_reduced", {"gaussian_std": 3.0}),
    ("naclip_reduced", {"naclip_arch": "vanilla"}),
    ("naclip_reduced", {"whole_image": True}),
    ("naclip_reduced", {"base": "sclip", "gaussian_std": None, "naclip_arch": None}),
    ("naclip_vanilla", {"naclip_arch": "reduced"}),
    ("naclip_vanilla", {"gaussian_std": 5.0}),
    ("naclip_whole", {"whole_image": False}),
    ("naclip_whole", {"gaussian_std": 3.0}),
    ("naclip_pamr", {"pamr_steps": 0}),
    ("naclip_pamr", {"prob_threshold": 0.0}),
]


@pytest.mark.parametrize(
    ("case", "change"),
    NEGATIVE_CONTROLS,
    ids=[f"{case}-" + ",".join(f"{k}={v}" for k, v in c.items()) for case, c in NEGATIVE_CONTROLS],
)
def test_base_case_tells_a_wrong_setting(case: str, change: dict, tiny) -> None:
    g = load_base_case(case)
    _, out = segment(tiny, g, **change)
    ok, summary = verdict(out, g)
    print(f"{case} with {change}: {summary}")  # shown by pytest -rA
    assert not ok, f"{case} with {change} meets the rule: {summary}"


@pytest.mark.parametrize("case", PAMR_CASES)
def test_pamr_matches_the_authors(case: str) -> None:
    """``glaclip.model.pamr.pamr(image, logits, steps, dilations)`` against the authors' ``PAMR``,
    every value; one step fewer is far off (the fixture can tell)."""
    from glaclip.model.pamr import pamr

    g = torch.load(BASES_DIR / f"{case}.pt", weights_only=True)
    p = g["params"]
    image, logits = remake_pamr_inputs(p)
    out = pamr(image, logits, p["steps"], tuple(p["dilations"]))
    assert tuple(out.shape) == tuple(g["refined"].shape)
    worst = (out.float() - g["refined"]).abs().max().item()
    assert worst < PAMR_ATOL, worst
    fewer = pamr(image, logits, p["steps"] - 1, tuple(p["dilations"]))
    assert (fewer.float() - g["refined"]).abs().max().item() > 1e-2
