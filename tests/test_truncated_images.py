"""A PNG that holds fewer rows than its header announces is refused, as image and as label;
``eval --check`` sees an image's size as ``eval`` reads it (EXIF orientation applied)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glaclip.cli.main import main
from glaclip.data.check import scan_dataset
from glaclip.data.convert import ConversionError, read_label_map
from glaclip.data.datasets import load_label
from glaclip.images.pngcheck import png_rows
from glaclip.images.read import ImageReadError, read_image

# Adam7: the pass (1..7) of each pixel of an 8 x 8 tile, as the PNG specification draws it
ADAM7 = [
    [1, 6, 4, 6, 2, 6, 4, 6],
    [7, 7, 7, 7, 7, 7, 7, 7],
    [5, 6, 5, 6, 5, 6, 5, 6],
    [7, 7, 7, 7, 7, 7, 7, 7],
    [3, 6, 4, 6, 3, 6, 4, 6],
    [7, 7, 7, 7, 7, 7, 7, 7],
    [5, 6, 5, 6, 5, 6, 5, 6],
    [7, 7, 7, 7, 7, 7, 7, 7],
]
SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _raw_rows(width: int, height: int, colour: int, depth: int, interlace: int) -> list[int]:
    """The length of every filtered row of the image data (filter byte included), pass by
    pass for an interlaced image: counted pixel by pixel from the Adam7 tile."""
    bits = SAMPLES[colour] * depth
    if not interlace:
        return [1 + (width * bits + 7) // 8] * height
    lengths = []
    for p in range(1, 8):
        rows = [y for y in range(height) if any(ADAM7[y % 8][x % 8] == p for x in range(8))]
        cols = [x for x in range(width) if any(ADAM7[y % 8][x % 8] == p for y in range(8))]
        if rows and cols:
            lengths += [1 + (len(cols) * bits + 7) // 8] * len(rows)
    return lengths


def png_bytes(
    width: int, height: int, colour: int = 2, depth: int = 8, interlace: int = 0, keep=None
) -> bytes:
    """A PNG of zero pixels whose image data holds its first ``keep`` rows (all: None), then
    ends cleanly (IEND)."""
    rows = _raw_rows(width, height, colour, depth, interlace)
    raw = b"".join(bytes(n) for n in rows[: len(rows) if keep is None else keep])
    head = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace)
    chunks = [_chunk(b"IHDR", head)]
    if colour == 3:
        chunks.append(_chunk(b"PLTE", bytes(range(12))))
    chunks += [_chunk(b"IDAT", zlib.compress(raw)), _chunk(b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_a_png_with_10_of_its_3000_rows_is_refused(tmp_path) -> None:
    path = _write(tmp_path / "big.png", png_bytes(4000, 3000, keep=10))
    with pytest.raises(ImageReadError, match="holds 10 of the 3000 rows"):
        read_image(path)


@pytest.mark.parametrize(
    ("colour", "depth", "interlace"),
    [(2, 8, 0), (0, 16, 0), (3, 4, 0), (6, 8, 0), (0, 1, 0), (2, 8, 1), (4, 8, 1), (3, 2, 1)],
)
def test_complete_pngs_are_read_and_cut_ones_refused(tmp_path, colour, depth, interlace) -> None:
    whole = _write(tmp_path / "whole.png", png_bytes(37, 29, colour, depth, interlace))
    assert read_image(whole).shape == (29, 37, 3)
    assert png_rows(whole).complete
    cut = _write(tmp_path / "cut.png", png_bytes(37, 29, colour, depth, interlace, keep=5))
    with pytest.raises(ImageReadError, match="the file ends early"):
        read_image(cut)


def test_pngs_that_pillow_writes_are_complete(tmp_path) -> None:
    rng = np.random.default_rng(0)
    for mode, array in [
        ("RGB", rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)),
        ("L", rng.integers(0, 256, (50, 70), dtype=np.uint8)),
        ("I;16", rng.integers(0, 65536, (50, 70), dtype=np.uint16)),
    ]:
        path = tmp_path / f"{mode.replace(';', '')}.png"
        Image.fromarray(array).save(path)
        assert png_rows(path).complete, mode
    assert png_rows(tmp_path / "RGB.png").held == 50


def test_a_cut_label_map_is_refused_by_eval_and_prepare(tmp_path) -> None:
    label = _write(tmp_path / "a.png", png_bytes(40, 30, colour=0, keep=3))
    with pytest.raises(ValueError, match="holds 3 of the 30 rows"):
        load_label(label)
    with pytest.raises(ConversionError, match="holds 3 of the 30 rows"):
        read_label_map(label)


def test_segment_skips_a_cut_png_by_name(tmp_path, tiny_model_args, capsys) -> None:
    cut = _write(tmp_path / "in" / "cut.png", png_bytes(300, 200, keep=10))
    Image.new("RGB", (60, 40), (9, 99, 199)).save(tmp_path / "in" / "fine.png")
    code = main(["segment", str(tmp_path / "in"), "--classes", "sky, tree", "--out",
                 str(tmp_path / "out"), "--no-progress", *tiny_model_args])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and f"{cut}: the file ends early" in err
    assert (tmp_path / "out" / "fine.json").is_file()
    assert not (tmp_path / "out" / "cut.json").exists()


def _rotated_jpeg(path: Path, width: int, height: int) -> None:
    """A JPEG stored ``width x height`` whose EXIF says: turn it a quarter (orientation 6)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (40, 80, 120)).save(path, exif=exif.tobytes())


def test_eval_check_sees_the_size_eval_reads(tmp_path) -> None:
    voc = tmp_path / "VOC2012"
    _rotated_jpeg(voc / "JPEGImages/a.jpg", 60, 40)  # read as 40 wide, 60 high
    _rotated_jpeg(voc / "JPEGImages/b.jpg", 60, 40)
    labels = voc / "SegmentationClass"
    labels.mkdir(parents=True)
    Image.fromarray(np.zeros((60, 40), np.uint8)).save(labels / "a.png")  # as eval reads a
    Image.fromarray(np.zeros((40, 60), np.uint8)).save(labels / "b.png")  # as stored: wrong
    (voc / "ImageSets/Segmentation").mkdir(parents=True)
    (voc / "ImageSets/Segmentation/val.txt").write_text("a\nb\n")
    assert read_image(voc / "JPEGImages/a.jpg").shape[:2] == (60, 40)
    scan = scan_dataset("voc", voc, progress=False)
    assert scan.wrong_size == ["b.png (40x60, image 60x40)"]
