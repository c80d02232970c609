from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glaclip.atomic import atomic_write, atomic_write_bytes, save_json
from glaclip.constants import CLIP_MEAN, CLIP_STD
from glaclip.images.prepare import protocol_size, resize_image, to_tensor
from glaclip.images.read import ImageReadError, image_extensions, is_image_file, read_image
from glaclip.io.encode import encode_rgb, save_label_png


def _rng_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _only_file(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# ---------------------------------------------------------------- reading


def test_read_greyscale_png(tmp_path: Path) -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(grey).save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (3, 4, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)


def test_read_rgba_drops_alpha_without_compositing(tmp_path: Path) -> None:
    rgba = np.concatenate([_rng_rgb(5, 6), np.zeros((5, 6, 1), np.uint8)], axis=2)
    rgba[0, 0, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = read_image(str(tmp_path / "a.png"))
    np.testing.assert_array_equal(out, rgba[..., :3])


def test_read_palette_resolves_colours(tmp_path: Path) -> None:
    idx = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    im = Image.frombytes("P", (2, 2), idx.tobytes())
    im.putpalette([10, 20, 30, 200, 100, 50, 0, 255, 0] + [0] * (253 * 3))
    im.save(tmp_path / "p.png")
    out = read_image(tmp_path / "p.png")
    np.testing.assert_array_equal(out[0, 0], [10, 20, 30])
    np.testing.assert_array_equal(out[0, 1], [200, 100, 50])
    np.testing.assert_array_equal(out[1, 0], [0, 255, 0])


def test_read_16bit_png_shifts_to_8bit(tmp_path: Path) -> None:
    vals = np.array([[0, 255, 256, 65535]], dtype=np.uint16)
    im = Image.fromarray(vals)
    assert im.mode == "I;16"
    im.save(tmp_path / "d.png")
    out = read_image(tmp_path / "d.png")
    np.testing.assert_array_equal(out[0, :, 0], [0, 0, 1, 255])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


@pytest.mark.parametrize("orientation", [6, 8])
def test_read_applies_exif_orientation(tmp_path: Path, orientation: int) -> None:
    rgb = np.full((20, 40, 3), 255, np.uint8)  # 20 rows x 40 columns
    rgb[:8, :8] = (255, 0, 0)  # red block at the top-left corner
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(rgb).save(tmp_path / "r.jpg", exif=exif, quality=95)
    out = read_image(tmp_path / "r.jpg")
    assert out.shape == (40, 20, 3)
    # 6 = rotate 90 clockwise to display: top-left goes top-right; 8: it goes bottom-left.
    corner = out[2, -3] if orientation == 6 else out[-3, 2]
    assert corner[0] > 200 and corner[1] < 60 and corner[2] < 60


def test_read_numpy_inputs() -> None:
    rgb = _rng_rgb(4, 5)
    out = read_image(rgb)
    np.testing.assert_array_equal(out, rgb)
    assert out is not rgb  # never a view of the caller's array
    grey = read_image(rgb[..., 0])
    np.testing.assert_array_equal(grey[..., 1], rgb[..., 0])
    rgba = np.concatenate([rgb, np.full((4, 5, 1), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(read_image(rgba), rgb)
    np.testing.assert_array_equal(read_image(np.full((2, 2, 3), 512, np.uint16)), 2)
    np.testing.assert_array_equal(read_image(np.full((2, 2, 3), 0.5)), 128)


def test_read_numpy_rejects_bad_arrays() -> None:
    with pytest.raises(ImageReadError, match=r"\[0, 1\]"):
        read_image(np.full((2, 2, 3), 3.0))
    with pytest.raises(ImageReadError, match="shape"):
        read_image(np.zeros((2, 2, 5), np.uint8))
    with pytest.raises(ImageReadError, match="dtype"):
        read_image(np.zeros((2, 2, 3), np.int64))


def test_read_pil_image_is_not_closed() -> None:
    rgb = _rng_rgb(3, 7)
    im = Image.fromarray(rgb)
    np.testing.assert_array_equal(read_image(im), rgb)
    np.testing.assert_array_equal(np.array(im), rgb)  # still usable
    np.testing.assert_array_equal(read_image(im.convert("CMYK")).shape, (3, 7, 3))


def test_read_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "nope.jpg"
    with pytest.raises(ImageReadError, match="no such file") as err:
        read_image(p)
    assert str(p) in str(err.value)


def test_read_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="directory") as err:
        read_image(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_read_text_file_named_jpg(tmp_path: Path) -> None:
    p = tmp_path / "fake.jpg"
    p.write_text("hello, I am not a picture\n")
    with pytest.raises(ImageReadError, match="not an image file") as err:
        read_image(p)
    assert str(p) in str(err.value)
    assert isinstance(err.value, ValueError)


def test_read_large_rgb_in_bands_equals_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from glaclip.images import read as imageio

    p = tmp_path / "photo.png"
    rgb = _rng_rgb(101, 37, seed=4)
    Image.fromarray(rgb).save(p)
    monkeypatch.setattr(imageio, "_BAND_PIXELS", 37 * 8)  # 8-row bands, a short last one
    out = read_image(p)
    assert out.flags.writeable and out.shape == (101, 37, 3)
    np.testing.assert_array_equal(out, rgb)


def test_read_too_many_pixels_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pillow refuses images above twice its MAX_IMAGE_PIXELS (179 megapixels by default);
    # lowered here so that a small file crosses it.
    p = tmp_path / "huge.png"
    Image.fromarray(_rng_rgb(40, 50)).save(p)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    with pytest.raises(ImageReadError, match="too large to decode safely") as err:
        read_image(p)
    assert str(p) in str(err.value)
    assert "downscale it first" in str(err.value)


LOSSY_FORMATS = {"JPEG", "WEBP", "AVIF"}


@pytest.mark.parametrize("ext", image_extensions())
def test_every_listed_extension_is_an_image_read_image_reads(tmp_path: Path, ext: str) -> None:
    """The list promises what ``read_image`` does: a picture of 16 x 16 blocks of six pure
    colours written in the extension's format (by Pillow, where it writes it) reads back to its
    pixels, exactly where the format is lossless; and ``is_image_file`` names it whatever the
    case."""
    fmt = Image.registered_extensions().get(ext)
    assert fmt in Image.OPEN, f"{ext} is listed, but this Pillow opens no such file"
    if fmt not in Image.SAVE:
        pytest.skip(f"this Pillow reads {ext} but cannot write it")
    colours = np.array(
        [[[255, 0, 0], [0, 255, 0], [0, 0, 255]], [[255, 255, 255], [0, 0, 0], [255, 255, 0]]],
        np.uint8,
    )
    rgb = np.kron(colours, np.ones((16, 16, 1), np.uint8))  # 32 x 48 x 3
    path = tmp_path / f"blocks{ext.upper()}"
    Image.fromarray(rgb).save(path, format=fmt)
    out = read_image(path)
    assert out.shape == (32, 48, 3) and out.dtype == np.uint8
    error = np.abs(out.astype(int) - rgb.astype(int))
    if fmt in LOSSY_FORMATS:
        assert error.mean() < 8, (ext, error.mean())
    else:
        assert error.max() == 0, ext
    assert is_image_file(path) and is_image_file(tmp_path / f"x{ext.lower()}")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a/B.JPG", True),
        ("scan.Tiff", True),
        ("notes.txt", False),
        ("photo.jpg.txt", False),
        ("photos.jpg/notes.md", False),  # a folder named like an image
        ("README", False),
        ("weights.pt", False),
        ("labels.json", False),
    ],
)
def test_is_image_file_goes_by_the_last_extension(name: str, expected: bool) -> None:
    assert is_image_file(name) is expected


# ---------------------------------------------------------------- resize and tensors


@pytest.mark.parametrize(
    ("hw0", "kwargs", "expected"),
    [
        ((375, 500), {}, (336, 448)),  # 500x375 landscape: s = 336/375
        ((300, 6000), {}, (102, 2048)),  # long side limited: s = 2048/6000
        ((1024, 2048), {"short_side": 560}, (560, 1120)),
        ((336, 336), {}, (336, 336)),
        ((1, 100000), {}, (1, 2048)),  # clamps to at least one pixel
    ],
)
def test_protocol_size(hw0: tuple[int, int], kwargs: dict, expected: tuple[int, int]) -> None:
    assert protocol_size(*hw0, **kwargs) == expected


def test_protocol_size_rejects_empty() -> None:
    with pytest.raises(ValueError, match="positive"):
        protocol_size(0, 10)


def _bilinear_reference(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """mmcv's resize written out: bilinear with half-pixel centres, borders clamped, no
    antialiasing, in float64 (OpenCV's fixed-point weights round to within 1 of it)."""

    def axis(n_in: int, n_out: int):
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        i0 = np.floor(src).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    (y0, y1, fy), (x0, x1, fx) = axis(rgb.shape[0], size[0]), axis(rgb.shape[1], size[1])
    img = rgb.astype(np.float64)
    rows = img[y0] * (1 - fy)[:, None, None] + img[y1] * fy[:, None, None]
    return rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]


@pytest.mark.parametrize("size", [(20, 31), (80, 121), (37, 200)])
def test_resize_image_is_bilinear_without_antialiasing(size) -> None:
    rgb = _rng_rgb(37, 53)
    out = resize_image(rgb, size)
    assert out.shape == (*size, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(np.float64) - _bilinear_reference(rgb, size)).max() <= 1.0
    assert resize_image(rgb, (37, 53)) is rgb  # the protocol size already: no copy
    # a known case: a 1 x 2 ramp doubled -> the half-pixel centres give 1/4, 3/4 weights
    ramp = np.array([[[0, 0, 0], [200, 200, 200]]], np.uint8)
    assert resize_image(ramp, (1, 4))[0, :, 0].tolist() == [0, 50, 150, 200]


def test_to_tensor_known_pixel() -> None:
    """Hand-computed: ``(v / 255 - mean) / std`` with OpenAI CLIP's published mean (0.48145466,
    0.4578275, 0.40821073) and std (0.26862954, 0.26130258, 0.27577711)."""
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[1, 2] = (255, 128, 0)
    x = to_tensor(rgb)
    assert x.shape == (1, 3, 2, 3) and x.dtype == torch.float32
    # (1 - 0.48145466) / 0.26862954, (128/255 - 0.4578275) / 0.26130258, -0.40821073 / 0.27577711
    expected = torch.tensor([1.9303363, 0.1688972, -1.4802198])
    torch.testing.assert_close(x[0, :, 1, 2], expected, rtol=0, atol=2e-6)
    torch.testing.assert_close(x[0, :, 0, 0], torch.tensor([-1.7922625, -1.7520971, -1.4802198]))
    assert (CLIP_MEAN, CLIP_STD) == (
        (0.48145466, 0.4578275, 0.40821073),
        (0.26862954, 0.26130258, 0.27577711),
    )
    ones = to_tensor(rgb, mean=(0, 0, 0), std=(1, 1, 1))
    assert float(ones[0, 0, 1, 2]) == 1.0
    assert float(ones[0, 1, 1, 2]) == pytest.approx(128 / 255, abs=1e-7)


# ---------------------------------------------------------------- writers


def test_atomic_write_failure_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out.png"

    def boom(tmp: Path) -> None:
        assert tmp.parent == tmp_path and tmp.name.startswith(".") and tmp.suffix == ".tmp"
        tmp.write_bytes(b"partial")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(target, boom)
    assert _only_file(tmp_path) == []


def test_atomic_write_failure_keeps_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    save_json(target, {"a": 1})
    with pytest.raises(TypeError):
        save_json(target, {"a": object()})
    assert json.loads(target.read_text()) == {"a": 1}
    assert _only_file(tmp_path) == ["r.json"]


def test_save_label_png_indexed_round_trip(tmp_path: Path) -> None:
    labels = np.random.default_rng(1).integers(0, 21, size=(9, 11))
    palette = np.array([[1, 2, 3], [250, 0, 7], [9, 9, 200]], dtype=np.uint8)
    save_label_png(tmp_path / "sub" / "l.png", labels, palette)
    with Image.open(tmp_path / "sub" / "l.png") as im:
        assert im.mode == "P"
        np.testing.assert_array_equal(np.array(im), labels)
        pal = np.array(im.getpalette()[: 3 * 3], dtype=np.uint8).reshape(3, 3)
    np.testing.assert_array_equal(pal, palette)
    assert _only_file(tmp_path / "sub") == ["l.png"]


def test_save_label_png_16bit_round_trip(tmp_path: Path) -> None:
    labels = np.array([[0, 255, 256], [1000, 65535, 3]], dtype=np.int64)
    save_label_png(tmp_path / "big.png", labels)
    with Image.open(tmp_path / "big.png") as im:
        assert im.mode.startswith("I")
        assert im.palette is None
        np.testing.assert_array_equal(np.array(im), labels)


def test_save_label_png_rejects_out_of_range(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="65535"):
        save_label_png(tmp_path / "x.png", np.array([[-1, 0]]))
    assert not (tmp_path / "x.png").exists()


def test_encode_rgb_png_and_jpeg(tmp_path: Path) -> None:
    rgb = _rng_rgb(8, 8)
    atomic_write_bytes(tmp_path / "a.png", encode_rgb(rgb, ".png"))
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgb)
    flat = np.full((8, 8, 3), 120, np.uint8)
    atomic_write_bytes(tmp_path / "b.JPG", encode_rgb(flat, ".JPG"))
    with Image.open(tmp_path / "b.JPG") as im:
        assert im.format == "JPEG"
    assert np.abs(read_image(tmp_path / "b.JPG").astype(int) - 120).max() <= 2
    with pytest.raises(ValueError, match="extension"):
        encode_rgb(rgb, ".unknownext")


def test_save_json_format(tmp_path: Path) -> None:
    p = tmp_path / "m.json"
    save_json(p, {"miou": np.float32(0.5), "name": "café", "ids": np.arange(2)})
    text = p.read_bytes().decode("utf-8")
    assert text.endswith("}\n") and '\n  "miou": 0.5' in text and "café" in text
    assert json.loads(text) == {"miou": 0.5, "name": "café", "ids": [0, 1]}


def test_atomic_write_reports_the_write_error_not_the_clean_up(tmp_path: Path, monkeypatch) -> None:
    import errno

    def full(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    def unlink_fails(self: Path, missing_ok: bool = False) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(Path, "unlink", unlink_fails)
    target = tmp_path / "x.bin"
    with pytest.raises(OSError) as info:
        atomic_write(target, full)
    assert info.value.errno == errno.ENOSPC
    assert str(info.value) == f"cannot write {target}: No space left on device"
    assert info.value.__context__ is None or "Permission" not in str(info.value.__context__)


def test_temporary_names_are_short(tmp_path: Path) -> None:
    """A name of 250 characters can be written: the temporary name does not grow with it."""
    seen: list[str] = []
    target = tmp_path / ("n" * 246 + ".txt")
    atomic_write(target, lambda tmp: (seen.append(tmp.name), tmp.write_text("ok")))
    assert target.read_text() == "ok" and len(seen[0]) <= 32


def test_save_json_refuses_nan_and_infinity(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="NaN or Infinity"):
        save_json(tmp_path / "x.json", {"share": float("nan")})
    with pytest.raises(ValueError, match="NaN or Infinity"):
        save_json(tmp_path / "x.json", {"share": float("inf")})
    assert list(tmp_path.iterdir()) == []


def test_pillow_warnings_about_a_readable_file_are_not_passed_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large image below the refused size, and a corrupt EXIF block (which is ignored)."""
    import warnings

    large = tmp_path / "large.png"
    Image.fromarray(np.zeros((50, 50, 3), np.uint8)).save(large)
    corrupt = tmp_path / "exif.jpg"
    exif = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x05\x01\x12\x00\x03"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(corrupt, exif=exif)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # 2500 pixels: warned, not refused
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_image(large).shape == (50, 50, 3)
        assert read_image(corrupt).shape == (20, 20, 3)


# ---------------------------------------------------------------- where the modules sit


def _modules_after_import(module: str) -> set[str]:
    """The modules a fresh interpreter holds after importing ``module`` of the glaclip package
    alone (the package's ``__init__``, which loads the Segmenter and all it needs, skipped)."""
    code = (
        "import importlib, importlib.util, sys, types\n"
        "folders = importlib.util.find_spec('glaclip').submodule_search_locations\n"
        "package = types.ModuleType('glaclip')\n"
        "package.__path__ = list(folders)\n"
        "sys.modules['glaclip'] = package\n"
        f"importlib.import_module({module!r})\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(done.stdout.split())


def test_loading_a_model_does_not_import_the_image_readers() -> None:
    """``backbones`` reads CLIP's normalisation from ``constants``, not from ``imageio``."""
    loaded = _modules_after_import("glaclip.model.loading")
    assert "glaclip.constants" in loaded  # the probe sees the imports it is meant to see
    assert loaded.isdisjoint({"cv2", "PIL", "glaclip.images.read", "glaclip.io.viz"})


def test_image_reading_imports_no_drawing_no_models_and_no_image_library_yet() -> None:
    """Pillow is imported when the first image is read, OpenCV when the first is resized."""
    loaded = _modules_after_import("glaclip.images.read")
    assert "glaclip.images.pngcheck" in loaded  # the probe sees the imports it is meant to see
    unwanted = {"cv2", "PIL", "torch", "glaclip.io.viz", "glaclip.io.palette"}
    assert loaded.isdisjoint(unwanted | {"glaclip.model.loading", "glaclip.text.encoder"})
