"""The reference implementation's own outputs, through the default path.

Every test runs on the compact set shipped in ``tests/golden`` and, where the full fixtures are
present (``$GLACLIP_GOLDEN`` or ``../shared/golden``), on those too (``tests/golden.py``).
``GLACLIP_TEST_DEVICE=cuda`` runs the cases on a GPU (``benchmarks/gpu_check.py``).
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from glaclip import Segmenter
from tests.golden import (
    CLEARCLIP_CASES,
    COMPACT_DIR,
    GOLDEN_CASES,
    REFERENCE_CLASSES_DIR,
    SHARED,
    assert_matches_golden,
    full_golden_dir,
    golden_agreement,
    golden_sets,
    is_clearclip,
    load_case,
    reference_logits,
    remake_image,
    settings_of,
)

SETS = golden_sets()


@pytest.mark.parametrize("which", list(SETS))
@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_golden_case(case: str, which: str, golden_modules, test_device) -> None:
    """Every case through ``from_modules`` + ``segment_tensor``, the CLI's code path; the
    ClearCLIP cases without any VFM. On ``$GLACLIP_TEST_DEVICE`` (default the CPU), with the
    same tolerance rule (CUDA runs with TF32 off, as every call does)."""
    g = load_case(SETS[which], case)
    clip, vfm, tokenizer = golden_modules
    if is_clearclip(g["params"]):
        vfm = None
    if test_device != "cpu":  # from_modules moves the models: leave the shared ones alone
        clip, vfm = copy.deepcopy(clip), copy.deepcopy(vfm)
    settings = settings_of(g["params"])
    seg = Segmenter.from_modules(clip, vfm, tokenizer, device=test_device, **settings)
    out = seg.segment_tensor(g["image"], g["class_lines"])
    assert out.labels.device == seg.device

    names = [n for line in g["class_lines"] for n in line.split("; ")]
    assert out.query_names == names
    text = seg.text.encode(names)
    assert torch.allclose(text.cpu(), g["text_features"], atol=1e-6)
    close, worst, agree = golden_agreement(out.query_logits, out.labels, g)
    print(  # shown by pytest -rA (benchmarks/gpu_check.py)
        f"{case} [{which}] on {seg.device}: {100 * close:.3f} % of logits within 1e-4, "
        f"max diff {worst:.2e}, labels equal on {100 * agree:.3f} %"
    )
    assert_matches_golden(out.query_logits, out.labels, g)


@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_golden_case_without_readback(case: str, golden_modules, monkeypatch) -> None:
    """The attention as it runs on GPUs (no value read back to the host: dense products, the
    shifted softmax; ``blocked.host_decisions``), here on the CPU, meets the same rule."""
    from glaclip.model import blocked

    monkeypatch.setattr(blocked, "host_decisions", lambda device: False)
    g = load_case(COMPACT_DIR, case)
    clip, vfm, tokenizer = golden_modules
    vfm = None if is_clearclip(g["params"]) else vfm
    seg = Segmenter.from_modules(clip, vfm, tokenizer, **settings_of(g["params"]))
    out = seg.segment_tensor(g["image"], g["class_lines"])
    assert_matches_golden(out.query_logits, out.labels, g)


# The fast mode against the reference (float32) on the golden inputs, per case. Measured on an
# Intel Xeon with AMX (BENCHMARKS.md, "Fast mode"): labels equal on at least 98.3 % (bf16) and
# 99.7 % (fp16) of the pixels, logits within 1e-2 for at least 95.6 % and 98.6 %.
FAST_TOLERANCE = {"bf16": (0.97, 0.93), "fp16": (0.99, 0.97)}  # labels, logits within 1e-2


# bf16 (the fast mode's usual precision) on every case; fp16 runs the same code with another
# dtype, emulated and slow on most CPUs: one case per base
FAST_CASES = [(case, "bf16") for case in GOLDEN_CASES]
FAST_CASES += [("gla_default", "fp16"), ("clearclip_gla", "fp16")]


@pytest.mark.parametrize(("case", "precision"), FAST_CASES)
def test_fast_mode_stays_close_to_the_reference(case, precision, golden_modules) -> None:
    """``precision="bf16"/"fp16"`` (cast backbones, the VFM's fused attention, half-precision
    products in the attention) keeps the labels and logits near the reference's float32 ones;
    the thresholds may flip where a value lies within half-precision round-off of them."""
    g = load_case(COMPACT_DIR, case)
    clip, vfm, tokenizer = golden_modules
    vfm = None if is_clearclip(g["params"]) else vfm
    with warnings.catch_warnings():  # "emulated" on CPUs without native half precision
        warnings.simplefilter("ignore", RuntimeWarning)
        seg = Segmenter.from_modules(
            clip, vfm, tokenizer, precision=precision, **settings_of(g["params"])
        )
        out = seg.segment_tensor(g["image"], g["class_lines"])
    ours, ref = reference_logits(out.query_logits, g)
    labels = (out.labels.long() == g["pred"].long()).float().mean().item()
    close = ((ours - ref).abs() < 1e-2).float().mean().item()
    min_labels, min_close = FAST_TOLERANCE[precision]
    assert labels >= min_labels and close >= min_close, (labels, close)
    assert (ours - ref).abs().max() > 1e-4  # the fast mode is not the exact path


@pytest.mark.parametrize("which", list(SETS))
def test_golden_distinguishes_components(which: str, golden_modules) -> None:
    """Switching one component off fails the tolerance rule by far."""
    g = load_case(SETS[which], "gla_default")
    clip, vfm, tokenizer = golden_modules
    settings = settings_of(g["params"])
    for switch in ("kv_extension", "proxy_anchor", "dynamic_norm"):
        seg = Segmenter.from_modules(clip, vfm, tokenizer, **{**settings, switch: False})
        out = seg.segment_tensor(g["image"], g["class_lines"])
        close, worst, _ = golden_agreement(out.query_logits, out.labels, g)
        assert close < 0.5 and worst > 1e-2, switch


@pytest.mark.parametrize("which", list(SETS))
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
def test_golden_distinguishes_base_switches(case, change, which, golden_modules):
    """Each ClearCLIP switch (and dynamic_beta on either base) matters: flipping it fails the
    tolerance rule."""
    assert case in CLEARCLIP_CASES + ["gla_default"]
    g = load_case(SETS[which], case)
    clip, vfm, tokenizer = golden_modules
    seg = Segmenter.from_modules(clip, vfm, tokenizer, **{**settings_of(g["params"]), **change})
    out = seg.segment_tensor(g["image"], g["class_lines"])
    close, worst, _ = golden_agreement(out.query_logits, out.labels, g)
    assert close < 0.9 and worst > 1e-2, (change, close, worst)


def test_compact_set_was_made_from_the_full_set() -> None:
    """Where the full fixtures are present: the compact set holds the same cases, models,
    class lines, settings, text features and labels, its logits are the full logits on the
    stated subgrid, and the image remade from the settings is the stored one."""
    full = full_golden_dir()
    if full is None:
        pytest.skip("the full golden fixtures are not present ($GLACLIP_GOLDEN, ../shared/golden)")
    assert sorted(p.stem for p in COMPACT_DIR.glob("*.pt")) == sorted(
        p.stem for p in full.glob("*.pt")
    )
    small = torch.load(COMPACT_DIR / "models.pt", weights_only=True)
    big = torch.load(full / "models.pt", weights_only=True)
    assert small.keys() == big.keys()
    for key, value in big.items():
        if isinstance(value, dict) and all(isinstance(v, torch.Tensor) for v in value.values()):
            assert value.keys() == small[key].keys()
            assert all(torch.equal(value[k], small[key][k]) for k in value), key
        else:
            assert small[key] == value, key
    for case in GOLDEN_CASES:
        c = torch.load(COMPACT_DIR / f"{case}.pt", weights_only=True)
        f = torch.load(full / f"{case}.pt", weights_only=True)
        assert c["class_lines"] == f["class_lines"] and c["params"] == f["params"], case
        assert torch.equal(c["text_features"], f["text_features"]), case
        assert torch.equal(c["pred"], f["pred"]), case
        s, t = c["subgrid"]["start"], c["subgrid"]["step"]
        assert t <= 4 and c["logits"].shape[1] == len(range(s, f["logits"].shape[1], t)), case
        assert torch.equal(c["logits"], f["logits"][:, s::t, s::t]), case
        # the recipe of golden/README.md; float round-off of the pooling at most
        assert torch.allclose(remake_image(c["params"]), f["image"], rtol=0, atol=1e-6), case


def test_reference_class_files_are_the_shared_ones() -> None:
    """Where ``../shared`` is present: tests/data/reference_classes is a copy of its files."""
    shared = SHARED / "reference_classes"
    if not shared.is_dir():
        pytest.skip("../shared/reference_classes is not present")
    ours = sorted(p.name for p in REFERENCE_CLASSES_DIR.glob("*.txt"))
    assert ours == sorted(p.name for p in shared.glob("*.txt"))
    for name in ours:
        assert (REFERENCE_CLASSES_DIR / name).read_bytes() == (shared / name).read_bytes(), name
