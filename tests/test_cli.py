"""`glaclip segment` end to end with the tiny models as local-dir checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glaclip import Segmenter
from glaclip.cli.main import main
from glaclip.cli.parser import build_parser
from glaclip.images.prepare import to_tensor


def _rgb(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=(h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    return np.ascontiguousarray(np.kron(base, np.ones((16, 16, 1), np.uint8))[:h, :w])


@pytest.fixture(scope="module")
def tiny_model_args(tiny_model_args: list[str]) -> list[str]:
    """The tiny models on a 224-pixel short side: these photos take two windows instead of six
    (the attention's work falls with the square of the tokens), on the same code paths."""
    return [*tiny_model_args, "--short-side", "224"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("inputs")
    files: dict[str, Path] = {}
    files["rgb"] = d / "rgb.jpg"
    Image.fromarray(_rgb(240, 320, 0)).save(files["rgb"])
    files["grey"] = d / "grey.png"
    Image.fromarray(_rgb(200, 260, 1)[..., 0]).save(files["grey"])
    files["rgba"] = d / "rgba.png"
    Image.fromarray(np.dstack([_rgb(230, 230, 2), np.full((230, 230), 7, np.uint8)])).save(
        files["rgba"]
    )
    files["palette"] = d / "palette.png"
    Image.fromarray(_rgb(250, 240, 3)).convert("P", palette=Image.ADAPTIVE).save(files["palette"])
    files["deep"] = d / "deep.png"
    Image.fromarray(_rgb(224, 300, 4)[..., 1].astype(np.uint16) * 257).save(files["deep"])
    files["exif"] = d / "exif.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    Image.fromarray(_rgb(240, 360, 5)).save(files["exif"], exif=exif)
    files["broken"] = d / "broken.jpg"
    files["broken"].write_text("this is not a picture")
    return files


def test_batch_with_broken_and_missing_files(inputs, tiny_model_args, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    images = [str(p) for p in inputs.values()] + [str(tmp_path / "missing.png")]
    code = main(
        ["segment", *images, "--classes", "sky, tree, person; man", "--out", str(out)]
        + tiny_model_args
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "glaclip: running on cpu (" in err  # the device, named before the work starts
    assert "broken.jpg" in err and "not an image" in err
    assert "missing.png" in err and "no such file" in err
    good = [k for k in inputs if k != "broken"]
    written = sorted(p.name for p in out.iterdir() if p.name != ".glaclip-outputs")
    assert written == sorted(f"{k}{ext}" for k in good for ext in (".png", ".json", "_overlay.jpg"))
    expected_sizes = {
        "rgb": (240, 320),
        "grey": (200, 260),
        "rgba": (230, 230),
        "palette": (250, 240),
        "deep": (224, 300),
        "exif": (360, 240),
    }
    for key in good:
        labels = Image.open(out / f"{key}.png")
        assert labels.mode == "P" and labels.getpalette() is not None
        arr = np.asarray(labels)
        assert arr.shape == expected_sizes[key]
        assert arr.max() <= 2
        info = json.loads((out / f"{key}.json").read_text())
        assert (info["image_size"]["height"], info["image_size"]["width"]) == expected_sizes[key]
        assert [c["name"] for c in info["classes"]] == ["sky", "tree", "person"]
        assert info["classes"][2]["queries"] == ["person", "man"]
        shares = [c["pixel_share"] for c in info["classes"]]
        for i, share in enumerate(shares):
            assert share == pytest.approx((arr == i).mean())
        assert info["settings"]["kv_extension"] is True and info["settings"]["proxy_iters"] == 2
        assert info["models"]["vfm"].startswith("local-dir:")
        overlay = Image.open(out / f"{key}_overlay.jpg")
        assert overlay.size[1] >= arr.shape[0] and overlay.size[0] > arr.shape[1]


def test_cli_uses_the_segment_tensor_path(tiny_model_args, tmp_path, golden_modules) -> None:
    """An image whose protocol resize is the identity gives segment_tensor's labels."""
    rgb = _rgb(224, 336, 9)  # the 224-pixel short side of this module's tiny_model_args
    path = tmp_path / "id.png"
    Image.fromarray(rgb).save(path)
    classes = ["cat", "dog; puppy", "floor"]
    cf = tmp_path / "classes.txt"
    cf.write_text("\n".join(classes) + "\n")
    code = main(
        [
            "segment",
            str(path),
            "--class-file",
            str(cf),
            "--out",
            str(tmp_path / "o"),
            "--no-overlay",
        ]
        + tiny_model_args
    )
    assert code == 0
    got = np.asarray(Image.open(tmp_path / "o" / "id.png"))
    clip, vfm, tok = golden_modules
    seg = Segmenter.from_modules(clip, vfm, tok, short_side=224)
    ref = seg.segment_tensor(to_tensor(rgb), classes)
    assert np.array_equal(got, ref.labels.numpy())
    assert not (tmp_path / "o" / "id_overlay.jpg").exists()


def test_prob_threshold_leaves_pixels_unlabelled(inputs, tiny_model_args, tmp_path) -> None:
    out = tmp_path / "o"
    args = ["segment", str(inputs["rgb"]), "--classes", "a, b", "--out", str(out)]
    args += ["--prob-threshold", "1.0"] + tiny_model_args
    assert main(args) == 0
    assert set(np.unique(np.asarray(Image.open(out / "rgb.png")))) == {255}
    info = json.loads((out / "rgb.json").read_text())
    assert info["unlabelled_share"] == pytest.approx(1.0)
    assert info["settings"]["background_index"] == 255
    stages = {
        "vfm",
        "clip",
        "attention",
        "project",
        "stitch",
        "text",
        "labels",
    }  # every stage, timed
    assert set(info["seconds"]) == stages and all(s >= 0 for s in info["seconds"].values())
    assert main(args + ["--background-index", "1"]) == 0  # into its own outputs again
    assert set(np.unique(np.asarray(Image.open(out / "rgb.png")))) == {1}
    info = json.loads((out / "rgb.json").read_text())
    assert info["settings"]["background_index"] == 1
    assert info["classes"][1]["pixel_share"] == pytest.approx(1.0)


@pytest.fixture(scope="module")
def identity_image(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A 224 x 336 picture: with the 224-pixel short side of this module's tiny_model_args its
    protocol resize is the identity, so the labels the CLI writes are those of
    ``segment_tensor`` on its pixels."""
    rgb = _rgb(224, 336, 9)
    path = tmp_path_factory.mktemp("identity") / "id.png"
    Image.fromarray(rgb).save(path)
    return path, rgb


def _segment_labels(image: Path, out: Path, flags: list[str], model_args: list[str]):
    """``glaclip segment IMAGE --classes 'a, b'`` with ``flags``: (labels, recorded settings)."""
    args = ["segment", str(image), "--classes", "a, b", "--out", str(out), "--no-overlay"]
    assert main(args + flags + model_args) == 0
    record = json.loads((out / f"{image.stem}.json").read_text())
    return np.asarray(Image.open(out / f"{image.stem}.png")), record["settings"]


@pytest.fixture(scope="module")
def plain_labels(identity_image, tiny_model_args, tmp_path_factory) -> np.ndarray:
    """The labels of a run with no method flag."""
    out = tmp_path_factory.mktemp("plain")
    labels, _ = _segment_labels(identity_image[0], out, [], tiny_model_args)
    return labels


@pytest.mark.parametrize(
    ("flags", "key", "value"),
    [
        (["--no-kv-extension"], "kv_extension", False),
        (["--proxy-iters", "1"], "proxy_iters", 1),
        (["--proxy-threshold", "0.55"], "proxy_threshold", 0.55),
        (["--no-dynamic-norm"], "dynamic_norm", False),
        (["--prob-threshold", "0.52"], "prob_threshold", 0.52),
    ],
)
def test_a_method_flag_changes_the_labels_as_its_setting_does(
    flags, key, value, identity_image, plain_labels, tiny_model_args, golden_modules, tmp_path
) -> None:
    """Against a run without the flag, some labels move; and they are exactly the labels of
    the library with that one setting changed."""
    image, rgb = identity_image
    labels, recorded = _segment_labels(image, tmp_path / "o", flags, tiny_model_args)
    assert recorded[key] == value
    assert (labels != plain_labels).sum() > 0
    clip, vfm, tok = golden_modules
    # 255: `glaclip segment`'s unlabelled value, for pixels under the probability threshold
    seg = Segmenter.from_modules(
        clip, vfm, tok, background_index=255, short_side=224, **{key: value}
    )
    assert np.array_equal(labels, seg.segment_tensor(to_tensor(rgb), ["a", "b"]).labels.numpy())


def test_implementation_flags_reach_the_settings(identity_image, tiny_model_args, tmp_path) -> None:
    """``--attention-impl`` chooses how the same attention is computed (no label should
    move), so the record is what can show it arrived."""
    _, recorded = _segment_labels(
        identity_image[0], tmp_path / "o", ["--attention-impl", "dense"], tiny_model_args
    )
    assert recorded["attention_impl"] == "dense"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--classes", " , "], "--classes is empty"),
        (["--classes", "a, b; "], "empty synonym"),
        (["--class-file", "/nonexistent/classes.txt"], "classes.txt"),
        (["--classes", "a", "--clip", "ViT-Nope"], "unknown CLIP model"),
        (["--classes", "a", "--vfm", "vit_nope_patch8"], "unknown VFM"),
        (["--classes", "a", "--device", "tpu"], "device"),
    ],
)
def test_clear_errors(extra, message, inputs, tiny_model_args, tmp_path, capsys) -> None:
    args = ["segment", str(inputs["rgb"]), "--out", str(tmp_path / "o")] + tiny_model_args + extra
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o" / "rgb.png").exists()


def test_empty_class_file(inputs, tiny_model_args, tmp_path, capsys) -> None:
    cf = tmp_path / "empty.txt"
    cf.write_text("\n\n")
    assert (
        main(
            ["segment", str(inputs["rgb"]), "--class-file", str(cf), "--out", str(tmp_path / "o")]
            + tiny_model_args
        )
        == 2
    )
    assert "no class" in capsys.readouterr().err


def test_folder_input_and_colliding_stems(tiny_model_args, tmp_path) -> None:
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        Image.fromarray(_rgb(224, 224, 3)).save(tmp_path / sub / "same.png")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    out = tmp_path / "o"
    code = main(
        [
            "segment",
            str(tmp_path / "a"),
            str(tmp_path / "b" / "same.png"),
            "--classes",
            "x, y",
            "--out",
            str(out),
            "--no-overlay",
        ]
        + tiny_model_args
    )
    assert code == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["a_same.png", "b_same.png"]


def test_prepare_coco_object(tmp_path, capsys) -> None:
    src, root = tmp_path / "annotations", tmp_path / "coco_stuff164k"
    (src / "val2017").mkdir(parents=True)
    label = np.array([[0, 79], [80, 255]], np.uint8)
    Image.fromarray(label).save(src / "val2017" / "1_labelTrainIds.png")
    assert main(["prepare", "coco-object", str(src), str(root)]) == 0
    out = np.asarray(Image.open(root / "annotations" / "val2017" / "1_instanceTrainIds.png"))
    assert out.tolist() == [[1, 80], [0, 0]]


# ------------------------------------------------------------------ guards before any work
def test_output_never_replaces_an_input(tiny_model_args, tmp_path, capsys) -> None:
    """``segment folder/photo.png --out folder`` would write the label map over the photo."""
    photo = tmp_path / "coffee.png"
    Image.fromarray(_rgb(224, 240, 1)).save(photo)
    before = photo.read_bytes()
    code = main(["segment", str(photo), "--classes", "a, b", "--out", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "would overwrite the input image" in err and "coffee.png" in err
    assert photo.read_bytes() == before
    assert not (tmp_path / "coffee.json").exists()


def test_out_naming_a_file(tiny_model_args, inputs, tmp_path, capsys) -> None:
    target = tmp_path / "results.txt"
    target.write_text("keep me")
    code = main(["segment", str(inputs["rgb"]), "--classes", "a", "--out", str(target)])
    assert code == 2 and "is a file, not a folder" in capsys.readouterr().err
    assert target.read_text() == "keep me"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--stride", "500"], "--stride 500 is larger than --crop 224"),
        (["--crop", "100", "--stride", "50"], "multiple of 16 (the CLIP patch) and 8"),
        (["--crop", "100000"], "larger than --max-long-side 2048"),
        (["--background-index", "7"], "--background-index 7 names no class of the 2"),
        (
            ["--base", "sclip", "--gaussian-std", "3"],
            "--gaussian-std is a setting of --base naclip",
        ),
        (["--base", "maskclip"], "run it per window with --no-kv-extension"),
        (["--area-threshold", "1"], "--area-threshold must be below 1"),
        (["--whole-image"], "not --base proxyclip"),
        (["--base", "naclip", "--gaussian-std", "0"], "--gaussian-std must be above 0"),
    ],
)
def test_bad_numbers_are_refused_before_any_model_loads(
    extra, message, inputs, tiny_model_args, tmp_path, capsys, monkeypatch
) -> None:
    from glaclip.model import segmenter as segmenter_module

    if "--crop" not in extra or "100000" in extra:  # these need no model to be refused
        monkeypatch.setattr(
            segmenter_module.Segmenter,
            "from_pretrained",
            lambda *a, **k: pytest.fail("a model was loaded"),
        )
    out = tmp_path / "o"
    args = ["segment", str(inputs["rgb"]), "--classes", "a, b", "--out", str(out)]
    assert main(args + tiny_model_args + extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert "_" not in err.split("glaclip: error: ")[-1].split(":")[0]  # flags, not keywords
    assert not out.exists()  # nothing written: no folder left behind


def test_pamr_dilations_flag(capsys) -> None:
    args = ["segment", "a.jpg", "--classes", "a", "--out", "o", "--pamr-dilations"]
    assert build_parser().parse_args([*args, "1,2,4"]).pamr_dilations == (1, 2, 4)
    with pytest.raises(SystemExit):
        build_parser().parse_args([*args, "8,x"])
    assert "'8,x' is not a list of whole numbers" in capsys.readouterr().err


def test_naclip_with_pamr_end_to_end(inputs, tiny_model_args, tmp_path, golden_modules) -> None:
    """``glaclip segment --base naclip --pamr-steps 10``: NACLIP's own settings and PAMR reach
    the result file, and the labels are those of the API with the same keywords."""
    out = tmp_path / "o"
    flags = ["--base", "naclip", "--pamr-steps", "10", "--gaussian-std", "3"]
    args = ["segment", str(inputs["rgb"]), "--classes", "sky, road; street, car", "--out"]
    assert main([*args, str(out), *flags, "--no-progress", *tiny_model_args]) == 0
    record = json.loads((out / "rgb.json").read_text())
    settings = record["settings"]
    assert (settings["base"], settings["pamr_steps"], settings["pamr_dilations"]) == (
        "naclip",
        10,
        [8, 16],
    )
    assert (settings["gaussian_std"], settings["naclip_arch"]) == (3.0, "reduced")
    assert record["models"]["vfm"] is None
    labels = np.asarray(Image.open(out / "rgb.png"))
    clip, _, tok = golden_modules
    seg = Segmenter.from_modules(
        clip, None, tok, text_cache_dir=None, base="naclip", pamr_steps=10, gaussian_std=3.0,
        background_index=255, short_side=224,
    )  # fmt: skip
    expected = seg.segment(inputs["rgb"], "sky, road; street, car").labels
    assert labels.shape == (240, 320) and (labels == expected).mean() >= 0.999
    no_pamr = seg.with_settings(pamr_steps=0).segment(inputs["rgb"], "sky, road; street, car")
    assert (no_pamr.labels != expected).any()  # PAMR changed some labels


def test_stride_larger_than_crop_in_the_api(golden_modules) -> None:
    clip, vfm, tok = golden_modules
    with pytest.raises(ValueError, match="stride=500 is larger than crop=224"):
        Segmenter.from_modules(clip, vfm, tok, stride=500)
    seg = Segmenter.from_modules(clip, vfm, tok, prob_threshold=0.5, background_index=7)
    with pytest.raises(ValueError, match="background_index=7 names no class"):
        seg.segment(_rgb(224, 224, 0), ["a", "b"])


def test_more_than_255_classes_write_16_bit_labels(
    tiny_model_args, inputs, tmp_path, monkeypatch
) -> None:
    """300 classes: a 16-bit label PNG, unlabelled pixels 65535 (255 is a class here). Two
    prompt templates instead of 80: the text's work is not what this test is about."""
    from glaclip.text import encoder as text

    few = text.openai_templates()[:2]
    monkeypatch.setattr(text, "openai_templates", lambda: list(few))
    classes = tmp_path / "many.txt"
    classes.write_text("\n".join(f"thing{i}" for i in range(300)) + "\n")
    out = tmp_path / "o"
    args = ["segment", str(inputs["rgb"]), "--class-file", str(classes), "--out", str(out)]
    args += ["--prob-threshold", "0.5", "--no-progress"]
    assert main(args + tiny_model_args) == 0
    labels = Image.open(out / "rgb.png")
    assert labels.mode.startswith("I;16")
    values = set(np.unique(np.asarray(labels)).tolist())
    assert values <= set(range(300)) | {65535} and 65535 in values
    info = json.loads((out / "rgb.json").read_text())
    assert info["settings"]["background_index"] == 65535 and len(info["classes"]) == 300


def test_too_many_classes_before_any_model(tmp_path, capsys) -> None:
    classes = tmp_path / "huge.txt"
    classes.write_text("\n".join(f"c{i}" for i in range(65536)) + "\n")
    photo = tmp_path / "p.png"
    Image.fromarray(_rgb(224, 224, 0)).save(photo)
    args = ["segment", str(photo), "--class-file", str(classes), "--out", str(tmp_path / "o")]
    assert main(args + ["--clip", "local-dir:/nonexistent"]) == 2
    assert "65536 classes: a label PNG holds at most 65535" in capsys.readouterr().err


def test_first_class_has_a_visible_colour(tiny_model_args, inputs, tmp_path) -> None:
    out = tmp_path / "o"
    assert (
        main(
            ["segment", str(inputs["rgb"]), "--classes", "thing", "--out", str(out)]
            + tiny_model_args
        )
        == 0
    )
    png = Image.open(out / "rgb.png")
    palette = np.asarray(png.getpalette()[:6]).reshape(2, 3)
    assert palette[0].sum() > 0  # class 0 is not black
    overlay = np.asarray(Image.open(out / "rgb_overlay.jpg"))[:240, :320].astype(float)
    photo = np.asarray(Image.open(inputs["rgb"])).astype(float)
    # half the photo plus half the class colour; black would leave half the photo
    tint = (overlay - 0.5 * photo).reshape(-1, 3).mean(axis=0)
    assert np.abs(tint - 0.5 * palette[0]).max() < 8 and tint.max() > 40


def test_ctrl_c_exits_130(monkeypatch, capsys) -> None:
    import glaclip.cli.segment as command

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(command, "run_segment", interrupted)
    assert main(["segment", "x.png", "--classes", "a", "--out", "o"]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_help_says_the_defaults(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["segment", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--no-progress" in text
    assert "(default: 0," in text and "(default: 255, unlabelled" in text
    assert "(default: ViT-B-16)" in text and "(default: openai)" in text
    assert "(default: vit_base_patch8_224.dino;" in text


@pytest.mark.parametrize(
    ("flags", "expected"),
    [([], None), (["--fused-attention", "auto"], None), (["--fused-attention", "on"], True),
     (["--fused-attention", "off"], False)],
)  # fmt: skip
def test_fused_attention_flag(flags, expected) -> None:
    """Unset, the fused kernel follows --precision (on in the fast mode); on/off insist."""
    from glaclip.cli.options import settings_from_args
    from glaclip.config import settings_from_kwargs

    args = build_parser().parse_args(
        ["segment", "a.png", "--classes", "x", "--out", "o", "--precision", "bf16"] + flags
    )
    settings = settings_from_kwargs(**settings_from_args(args))
    assert settings.runtime.fused_attention is expected
    assert settings.runtime.fused is (True if expected is None else expected)


# ------------------------------------------------------------------ writes: complete or absent
def _photos(folder: Path, names: list[str]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(names):
        Image.fromarray(_rgb(224, 240, k)).save(folder / name)
    return [str(folder / name) for name in names]


def test_a_write_that_loses_data_fails_the_image(
    tiny_model_args, tmp_path, capsys, monkeypatch
) -> None:
    """A nearly full disk that keeps 1000 bytes of the overlay without an error: the overlay
    is not left under its name, the JSON (the finished mark) is not written, exit 1."""
    from tests.faults import JPEG_START, faulty_disk, silent_loss

    images = _photos(tmp_path / "in", ["a.png"])
    out = tmp_path / "out"
    out.mkdir()
    faulty_disk(monkeypatch, out, silent_loss(JPEG_START, keep=1000))
    code = main(["segment", *images, "--classes", "x, y", "--out", str(out)] + tiny_model_args)
    err = capsys.readouterr().err
    assert code == 1
    assert "a_overlay.jpg" in err and "bytes reached the disk" in err and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == []


def test_a_full_disk_stops_the_batch_with_one_line(
    tiny_model_args, tmp_path, capsys, monkeypatch
) -> None:
    from tests.faults import JPEG_START, faulty_disk, full_disk

    images = _photos(tmp_path / "in", ["a.png", "b.png", "c.png"])
    out = tmp_path / "out"
    out.mkdir()
    faulty_disk(monkeypatch, out, full_disk(JPEG_START))
    code = main(["segment", *images, "--classes", "x, y", "--out", str(out)] + tiny_model_args)
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert f"cannot write {out / 'a_overlay.jpg'}: No space left on device" in err
    assert "2 image(s) not reached" in err
    assert not list(out.glob("*.json")) and not list(out.glob("*.png"))
    assert not [p for p in out.iterdir() if p.suffix == ".tmp"]


def test_a_read_only_folder_is_one_line_not_a_traceback(
    tiny_model_args, tmp_path, capsys, monkeypatch
) -> None:
    from tests.faults import read_only

    images = _photos(tmp_path / "in", ["a.png"])
    out = tmp_path / "out"
    out.mkdir()
    read_only(monkeypatch, out)
    code = main(["segment", *images, "--classes", "x, y", "--out", str(out)] + tiny_model_args)
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert f"glaclip: error: cannot write into --out {out}: Permission denied" in err
    assert list(out.iterdir()) == []


def test_a_name_as_long_as_the_file_system_allows(tiny_model_args, tmp_path, capsys) -> None:
    """A 249-character file name: its label PNG and JSON fit, its overlay's name does not.
    Temporary names are short, so the files that fit are written; the image whose overlay
    cannot be named fails with one line and the next image is still segmented."""
    long_name = "p" * 245 + ".png"
    images = _photos(tmp_path / "in", [long_name, "b.png"])
    out = tmp_path / "out"
    args = ["segment", *images, "--classes", "x, y", "--out", str(out)] + tiny_model_args
    code = main(args)
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "_overlay.jpg: its name is 257 bytes long and the file system allows 255" in err
    assert sorted(p.name for p in out.glob("*.json")) == ["b.json"]
    code = main(args + ["--no-overlay"])
    assert code == 0
    assert (out / ("p" * 245 + ".json")).is_file() and (out / long_name).is_file()


def test_a_class_name_with_a_line_break_is_refused_before_any_work(
    inputs, tiny_model_args, tmp_path, capsys, monkeypatch
) -> None:
    from glaclip.model import segmenter as segmenter_module

    monkeypatch.setattr(
        segmenter_module.Segmenter, "from_pretrained", lambda *a, **k: pytest.fail("loaded")
    )
    out = tmp_path / "o"
    args = ["segment", str(inputs["rgb"]), "--classes", "a\nb, c", "--out", str(out)]
    assert main(args + tiny_model_args) == 2
    err = capsys.readouterr().err
    assert "'a\\nb'" in err and "line break" in err and "Traceback" not in err
    assert not out.exists()


# ------------------------------------------------------------------ output ownership and lock
def _no_model(monkeypatch) -> None:
    from glaclip.model import segmenter as segmenter_module

    monkeypatch.setattr(
        segmenter_module.Segmenter, "from_pretrained", lambda *a, **k: pytest.fail("loaded")
    )


def test_a_labelme_folder_into_itself_keeps_its_annotations(
    tiny_model_args, tmp_path, capsys, monkeypatch
) -> None:
    folder = tmp_path / "labelme"
    _photos(folder, ["img1.jpg"])
    annotation = folder / "img1.json"
    annotation.write_text('{"shapes": []}')
    _no_model(monkeypatch)
    code = main(["segment", str(folder), "--classes", "x, y", "--out", str(folder)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"already holds {annotation}, which glaclip did not write" in err
    assert "--overwrite" in err
    assert annotation.read_text() == '{"shapes": []}'
    assert sorted(p.name for p in folder.iterdir()) == ["img1.jpg", "img1.json"]


def test_an_unrelated_photo_is_replaced_only_with_overwrite(
    tiny_model_args, tmp_path, capsys
) -> None:
    folder = tmp_path / "ph"
    [photo] = _photos(folder, ["a.jpg"])
    other = folder / "a.png"
    Image.fromarray(_rgb(100, 100, 7)).save(other)
    before = other.read_bytes()
    args = ["segment", photo, "--classes", "x, y", "--out", str(folder)] + tiny_model_args
    assert main(args) == 2
    assert f"already holds {other}" in capsys.readouterr().err
    assert other.read_bytes() == before
    assert main(args + ["--overwrite"]) == 0
    assert Image.open(other).mode == "P"  # now the label map, and glaclip's own
    assert main(args) == 0  # replacing its own outputs needs no flag


def test_a_folder_segmented_into_itself_twice(tiny_model_args, tmp_path, capsys) -> None:
    """The second run does not take the first run's outputs for images."""
    folder = tmp_path / "photos"
    _photos(folder, ["a.jpg", "b.jpg"])
    args = ["segment", str(folder), "--classes", "x, y", "--out", str(folder)] + tiny_model_args
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 0
    assert "segmented 2 image(s)" in capsys.readouterr().err


def test_a_folder_named_like_an_output_is_refused(
    inputs, tiny_model_args, tmp_path, capsys, monkeypatch
) -> None:
    out = tmp_path / "o"
    (out / "rgb.json").mkdir(parents=True)
    _no_model(monkeypatch)
    args = ["segment", str(inputs["rgb"]), "--classes", "x", "--out", str(out), "--overwrite"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"holds a folder named like an output file: {out / 'rgb.json'}" in err


def test_a_second_run_into_the_same_folder_is_refused(
    inputs, tiny_model_args, tmp_path, capsys, monkeypatch
) -> None:
    import os

    from glaclip.io.outputs import output_lock

    out = tmp_path / "o"
    args = ["segment", str(inputs["rgb"]), "--classes", "x", "--out", str(out)] + tiny_model_args
    with output_lock(out):  # the first run, still writing
        _no_model(monkeypatch)
        assert main(args) == 2
        err = capsys.readouterr().err
        assert f"--out {out} is in use by another glaclip run (process {os.getpid()} on" in err
        monkeypatch.undo()
    assert main(args) == 0  # the first run has ended
    assert sorted(p.name for p in out.iterdir()) == [
        ".glaclip-outputs",
        "rgb.json",
        "rgb.png",
        "rgb_overlay.jpg",
    ]


# ------------------------------------------------------------------ inputs that were unclear
def test_avif_and_jpeg2000_images_are_segmented(tiny_model_args, tmp_path, capsys) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(_rgb(224, 240, 1)).save(folder / "a.avif")
    Image.fromarray(_rgb(224, 240, 2)).save(folder / "b.jp2")
    out = tmp_path / "o"
    args = ["segment", str(folder), "--classes", "x, y", "--out", str(out), "--no-overlay"]
    assert main(args + tiny_model_args) == 0
    assert "segmented 2 image(s)" in capsys.readouterr().err
    assert sorted(p.name for p in out.glob("*.png")) == ["a.png", "b.png"]


@pytest.mark.parametrize(
    ("content", "message"),
    [({}, "(it is empty)"), ({"notes.txt": "hello"}, "(it holds 1 other file(s), e.g. notes.txt)")],
)
def test_a_folder_without_images_is_refused(
    content: dict, message: str, tmp_path, capsys, monkeypatch
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for name, text in content.items():
        (folder / name).write_text(text)
    _no_model(monkeypatch)
    assert main(["segment", str(folder), "--classes", "x", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"the folder {folder} holds no image to segment {message}" in err


def test_broken_and_looping_links_are_named_as_such(tiny_model_args, tmp_path, capsys) -> None:
    folder = tmp_path / "in"
    [good] = _photos(folder, ["good.png"])
    (folder / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)
    out = tmp_path / "o"
    args = ["segment", str(folder), str(loop), "--classes", "x", "--out", str(out)]
    assert main(args + tiny_model_args) == 1
    err = capsys.readouterr().err
    assert f"{folder / 'gone.jpg'}: is a broken symbolic link (to {tmp_path / 'deleted.jpg'}" in err
    assert f"{loop}: is a symbolic link loop" in err and "no such file" not in err
    assert "segmented 1 image(s)" in err and (out / "good.json").is_file()


@pytest.mark.parametrize("kind", ["folder", "loop"])
def test_a_class_file_that_is_no_file(kind: str, inputs, tmp_path, capsys) -> None:
    path = tmp_path / "classes.txt"
    if kind == "folder":
        path.mkdir()
    else:
        path.symlink_to(path)
    args = ["segment", str(inputs["rgb"]), "--class-file", str(path), "--out", str(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err
    what = "is a folder, not a file" if kind == "folder" else "is a symbolic link loop"
    assert f"class file {path} {what}" in err and "does not exist" not in err


def test_warnings_are_one_line_without_the_source(
    inputs, tiny_model_args, tmp_path, capsys
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = tmp_path / "o"
    args = ["segment", str(inputs["rgb"]), "--classes", "x", "--out", str(out), "--no-overlay"]
    args += tiny_model_args + ["--text-cache", str(blocker / "cache")]  # the last one wins
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "glaclip: warning: text embeddings are not cached on disk: cannot write" in err
    assert "warnings.warn" not in err and "RuntimeWarning" not in err


def test_the_text_cache_goes_to_the_user_cache_folder(
    tiny_checkpoints, tmp_path, monkeypatch
) -> None:
    """Without --text-cache the embeddings are cached in $GLACLIP_CACHE, not in a folder of the
    working directory; --no-text-cache writes none."""
    photo = tmp_path / "photo.png"
    Image.fromarray(_rgb(224, 224, 1)).save(photo)
    user_cache = tmp_path / "user-cache"
    monkeypatch.setenv("GLACLIP_CACHE", str(user_cache))
    monkeypatch.chdir(tmp_path)
    base = ["segment", str(photo), "--classes", "sky, road", "--clip", tiny_checkpoints["clip"]]
    base += ["--base", "clearclip", "--device", "cpu", "--no-progress"]
    assert main(base + ["--out", "out"]) == 0
    assert list(user_cache.glob("text-*.emb"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "photo.png", "user-cache"]
    for f in user_cache.iterdir():
        f.unlink()
    assert main(base + ["--out", "out2", "--no-text-cache"]) == 0
    assert not list(user_cache.glob("*"))


def test_library_messages_in_flags() -> None:
    """Keywords become the parser's flags; prose, paths and dotted names stay as they are."""
    from glaclip.cli.terms import parser_flags, to_flags

    flags = parser_flags(build_parser())
    cases = {
        "prob_threshold must be at most 1, got 1.5": "--prob-threshold must be at most 1, got 1.5",
        "crop must be at least 1, got 0": "--crop must be at least 1, got 0",
        "stride=500 is larger than crop=224; pass a stride <= crop": (
            "--stride 500 is larger than --crop 224; pass a stride <= crop"
        ),
        'pass base="clearclip", which needs no VFM': "pass --base clearclip, which needs no VFM",
        "point clip_pretrained= at a file": "point --clip-pretrained at a file",
        "kv_extension=False and allow_slow=True": "--no-kv-extension and --allow-slow",
        "fused_attention=True; set text_cache_dir": "--fused-attention on; set --text-cache",
        "differs in: settings.prob_threshold": "differs in: settings.prob_threshold",
        "cannot read /data/prob_threshold/a.png": "cannot read /data/prob_threshold/a.png",
        "the crop is 224, stride 112": "the crop is 224, stride 112",
    }
    for message, expected in cases.items():
        assert to_flags(message, flags) == expected
