"""Settings: every number is checked once, in the dataclasses, for the API, CLI and demo."""

from __future__ import annotations

import math

import pytest

from glaclip.cli.main import main
from glaclip.config import Settings, settings_from_kwargs

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("logit_scale", NAN, "logit_scale must be a finite number, got nan"),
        ("logit_scale", INF, "logit_scale must be a finite number, got inf"),
        ("logit_scale", -INF, "logit_scale must be a finite number, got -inf"),
        ("logit_scale", 0.0, "logit_scale must be above 0, got 0"),
        ("logit_scale", -1.0, "logit_scale must be above 0, got -1"),
        ("beta_alpha", NAN, "beta_alpha must be a finite number"),
        ("beta_alpha", -INF, "beta_alpha must be a finite number"),
        ("beta_alpha", 0.0, "beta_alpha must be above 0"),
        ("gamma_alpha", INF, "gamma_alpha must be a finite number"),
        ("gamma_alpha", -3.0, "gamma_alpha must be above 0"),
        ("proxy_threshold", NAN, "proxy_threshold must be a finite number"),
        ("proxy_threshold", INF, "proxy_threshold must be a finite number"),
        ("proxy_threshold", 1.5, "proxy_threshold must be at most 1"),
        ("proxy_threshold", -0.1, "proxy_threshold must be at least 0"),
        ("fixed_beta", NAN, "fixed_beta must be a finite number"),
        ("fixed_beta", 0.0, "fixed_beta must be above 0"),
        ("fixed_gamma", INF, "fixed_gamma must be a finite number"),
        ("fixed_gamma", -1.0, "fixed_gamma must be above 0"),
        ("prob_threshold", NAN, "prob_threshold must be a finite number"),
        ("proxy_iters", 2.5, "proxy_iters must be a whole number"),
        ("proxy_iters", -1, "proxy_iters must be at least 0"),
        ("stride", 0, "stride must be at least 1"),
        ("crop", True, "crop must be a whole number"),
        ("window_batch", 0, "window_batch must be at least 1"),
        ("block_size", 0, "block_size must be at least 1"),
        ("background_index", -1, "background_index must be at least 0"),
    ],
)
def test_every_number_is_checked_in_the_settings(name: str, value: float, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        settings_from_kwargs(**{name: value})


def test_good_numbers_pass() -> None:
    s = settings_from_kwargs(
        logit_scale=100.0, beta_alpha=1e-3, gamma_alpha=1, proxy_threshold=0.0, fixed_beta=0.5
    )
    assert s.post.logit_scale == 100.0 and s.gla.gamma_alpha == 1
    assert all(math.isfinite(v) for v in s.to_dict().values() if isinstance(v, float))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"stride": 1}, r"stride=1 is below crop / 8 \(28\): a 336 x 448 image would take 25,425"),
        ({"stride": 27}, "stride=27 is below crop / 8"),
        ({"proxy_iters": 1000}, "proxy_iters=1000 is above 10"),
        ({"pamr_steps": 51}, "pamr_steps=51 is above 50: each step passes 16 shifted copies"),
        (
            {"base": "naclip", "whole_image": True, "short_side": 2048},
            r"a 2048 x 2048 image is one pass of CLIP over 16,384 tokens.*at most 1248",
        ),
    ],
)
def test_slow_settings_are_refused_with_an_estimate(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        settings_from_kwargs(**kwargs)
    assert "Pass allow_slow=True to run it anyway" in str(info.value)  # Python's terms
    from glaclip.config import slow_reasons

    allowed = settings_from_kwargs(**kwargs, allow_slow=True)
    assert slow_reasons(allowed) and allowed.runtime.allow_slow


def test_the_paper_settings_are_not_slow() -> None:
    from glaclip.config import slow_reasons

    assert slow_reasons(Settings()) == []
    assert slow_reasons(settings_from_kwargs(stride=28, proxy_iters=10)) == []
    assert slow_reasons(settings_from_kwargs(pamr_steps=50, pamr_dilations=(8, 16))) == []
    # NACLIP's VOC protocol, and the largest whole image allowed (8,112 tokens)
    for side in (336, 1248):
        settings = settings_from_kwargs(base="naclip", whole_image=True, short_side=side)
        assert slow_reasons(settings) == []


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--logit-scale", "nan"], "--logit-scale must be a finite number, got nan"),
        (["--logit-scale=-inf"], "--logit-scale must be a finite number, got -inf"),
        (["--logit-scale", "0"], "--logit-scale must be above 0"),
        (["--logit-scale=-1"], "--logit-scale must be above 0"),
        (["--beta-alpha", "inf"], "--beta-alpha must be a finite number"),
        (["--gamma-alpha", "nan"], "--gamma-alpha must be a finite number"),
        (["--proxy-threshold", "nan"], "--proxy-threshold must be a finite number"),
        (["--prob-threshold", "1.5"], "--prob-threshold must be at most 1, got 1.5"),
        (["--fixed-beta", "inf"], "--fixed-beta must be a finite number"),
        (["--fixed-gamma", "nan"], "--fixed-gamma must be a finite number"),
        (["--stride", "1"], "--stride 1 is below crop / 8 (28): a 336 x 448 image would take"),
        (["--proxy-iters", "1000"], "--proxy-iters 1000 is above 10"),
        (["--pamr-steps", "60"], "--pamr-steps 60 is above 50"),
        (
            ["--base", "naclip", "--whole-image", "--short-side", "2048"],
            "use windows (--no-whole-image) or a --short-side of at most 1248",
        ),
        (["--crop", "0"], "--crop must be at least 1, got 0"),
    ],
)
@pytest.mark.parametrize("command", ["segment", "eval", "demo"])
def test_cli_refuses_bad_numbers_before_any_model_loads(
    flags: list[str], message: str, command: str, tmp_path, monkeypatch, capsys
) -> None:
    from glaclip.model import segmenter as segmenter_module

    monkeypatch.setattr(
        segmenter_module.Segmenter,
        "from_pretrained",
        lambda *a, **k: pytest.fail("a model was loaded"),
    )
    photo = tmp_path / "p.png"
    from PIL import Image

    Image.new("RGB", (40, 30)).save(photo)
    args = {
        "segment": ["segment", str(photo), "--classes", "a, b", "--out", str(tmp_path / "o")],
        "eval": ["eval", "--dataset", "voc21", "--data-root", str(tmp_path), "--out", "o"],
        "demo": ["demo"],
    }[command]
    if command == "eval":  # a dataset is needed before the settings are checked
        (tmp_path / "JPEGImages").mkdir()
        (tmp_path / "SegmentationClass").mkdir()
        (tmp_path / "ImageSets" / "Segmentation").mkdir(parents=True)
        (tmp_path / "ImageSets" / "Segmentation" / "val.txt").write_text("p\n")
        Image.new("RGB", (40, 30)).save(tmp_path / "JPEGImages" / "p.jpg")
        Image.new("L", (40, 30)).save(tmp_path / "SegmentationClass" / "p.png")
        args[args.index("o")] = str(tmp_path / "o")
    assert main(args + flags) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    if any(f in message for f in ("--stride 1 ", "--proxy-iters", "--pamr", "--short-side")):
        assert "Pass --allow-slow to run it anyway" in err
    assert not (tmp_path / "o").exists()  # nothing written: no folder left behind
