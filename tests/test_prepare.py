"""``glaclip prepare``: each converter on small files in the official formats.

The expected labels are written out by hand from the published tables (mmsegmentation's
``clsID_to_trID`` and 60-id Pascal Context table, cityscapesScripts' ``labels.py``), not
computed by the code under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glaclip.cli.main import main
from glaclip.data.cityscapes import convert_cityscapes
from glaclip.data.coco_stuff import convert_coco_stuff
from glaclip.data.datasets import list_samples

# mmsegmentation's coco_stuff164k.py clsID_to_trID, written out as runs of its entries
COCO_STUFF_TABLE = {
    **{v: v for v in range(0, 11)},  # 0..10 -> 0..10
    **{v: v - 1 for v in range(12, 25)},  # 12 -> 11 ... 24 -> 23
    26: 24,
    27: 25,
    **{v: v - 4 for v in range(30, 44)},  # 30 -> 26 ... 43 -> 39
    **{v: v - 5 for v in range(45, 65)},  # 45 -> 40 ... 64 -> 59
    66: 60,
    69: 61,
    **{v: v - 9 for v in range(71, 82)},  # 71 -> 62 ... 81 -> 72
    **{v: v - 10 for v in range(83, 90)},  # 83 -> 73 ... 89 -> 79
    **{v: v - 11 for v in range(91, 182)},  # 91 -> 80 ... 181 -> 170
    255: 255,
}
# cityscapesScripts labels.py: the ids with a train id; every other id 0..33 -> 255
CITYSCAPES_TRAIN_IDS = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
    25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
# mmsegmentation's pascal_context.py: the 60 Detail category ids, sorted, -> 0..59
CONTEXT_TABLE = {
    0: 0, 2: 1, 9: 2, 18: 3, 19: 4, 22: 5, 23: 6, 25: 7, 31: 8, 33: 9, 34: 10, 44: 11,
    45: 12, 46: 13, 59: 14, 65: 15, 68: 16, 72: 17, 80: 18, 85: 19, 98: 20, 104: 21,
    105: 22, 113: 23, 115: 24, 144: 25, 158: 26, 159: 27, 162: 28, 187: 29, 189: 30,
    207: 31, 220: 32, 232: 33, 258: 34, 259: 35, 260: 36, 284: 37, 295: 38, 296: 39,
    308: 40, 324: 41, 326: 42, 347: 43, 349: 44, 354: 45, 355: 46, 360: 47, 366: 48,
    368: 49, 397: 50, 415: 51, 416: 52, 420: 53, 424: 54, 427: 55, 440: 56, 445: 57,
    454: 58, 458: 59,
}  # fmt: skip


def _png(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint8)).save(path)


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.mode == "L"
        return np.array(img)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------- COCO-Stuff164k
def test_coco_stuff_every_value_of_the_table(tmp_path: Path) -> None:
    src, root = tmp_path / "stuffthingmaps", tmp_path / "coco_stuff164k"
    values = np.array(sorted(COCO_STUFF_TABLE), np.uint8).reshape(4, 43)  # 172 values
    _png(src / "val2017" / "000000000139.png", values)
    _png(src / "train2017" / "000000000009.png", values[::-1])
    before = _files(src)
    report = convert_coco_stuff(src, root, progress=False)
    assert (report.written, report.skipped, report.failed) == (2, 0, [])
    expected = np.vectorize(COCO_STUFF_TABLE.get)(values)
    out = _read(root / "annotations/val2017/000000000139_labelTrainIds.png")
    assert out.tolist() == expected.tolist()
    assert set(np.unique(out)) == set(range(171)) | {255}
    out = _read(root / "annotations/train2017/000000000009_labelTrainIds.png")
    assert out.tolist() == expected[::-1].tolist()
    assert _files(src) == before  # sources untouched
    # a rerun converts nothing again; --split picks a split
    again = convert_coco_stuff(src, root, splits=["val2017"], progress=False)
    assert (again.written, again.skipped) == (0, 1)


def test_coco_stuff_unused_value_fails_that_file_only(tmp_path: Path, capsys) -> None:
    src, root = tmp_path / "annotations", tmp_path
    _png(src / "val2017" / "1.png", np.array([[0, 181]]))
    _png(src / "val2017" / "2.png", np.array([[11, 90]]))  # category ids 12 and 91: unused
    _png(src / "val2017" / "3.png", np.array([[91, 255]]))
    (src / "val2017" / "4.png").symlink_to(src / "gone.png")  # a dangling link
    code = main(["prepare", "coco-stuff164k", str(src), str(root), "--no-progress"])
    assert code == 1
    err = capsys.readouterr().err
    failed = [line for line in err.splitlines() if "failed:" in line]
    assert len(failed) == 2 and "2.png" in failed[0] and "11, 90" in failed[0]
    assert "4.png" in failed[1] and "not a readable image" in failed[1]
    assert _read(src / "val2017/1_labelTrainIds.png").tolist() == [[0, 170]]
    assert _read(src / "val2017/3_labelTrainIds.png").tolist() == [[80, 255]]
    assert not (src / "val2017/2_labelTrainIds.png").exists()
    assert sorted(p.name for p in (src / "val2017").iterdir() if p.name.startswith(".")) == []


# ------------------------------------------------------------------------------- Cityscapes
def test_cityscapes_every_label_id(tmp_path: Path) -> None:
    gt, root = tmp_path / "cityscapes" / "gtFine", tmp_path / "cityscapes"
    ids = np.arange(34).reshape(2, 17)
    _png(gt / "val/frankfurt/frankfurt_000000_000294_gtFine_labelIds.png", ids)
    _png(gt / "val/lindau/lindau_000001_000019_gtFine_labelIds.png", ids.T)
    _png(gt / "train/aachen/aachen_000000_000019_gtFine_labelIds.png", ids[:, ::-1])
    _png(gt / "val/lindau/lindau_000001_000019_gtFine_instanceIds.png", ids + 100)  # not read
    for stem in ["frankfurt_000000_000294", "lindau_000001_000019"]:
        city = stem.split("_")[0]
        _png(root / f"leftImg8bit/val/{city}/{stem}_leftImg8bit.png", np.zeros((2, 17)))
    report = convert_cityscapes(gt, root, progress=False)
    assert (report.written, report.failed) == (3, [])
    expected = np.vectorize(lambda i: CITYSCAPES_TRAIN_IDS.get(i, 255))(ids)
    out = _read(gt / "val/frankfurt/frankfurt_000000_000294_gtFine_labelTrainIds.png")
    assert out.tolist() == expected.tolist()
    assert set(np.unique(out)) == set(range(19)) | {255}
    out = _read(gt / "val/lindau/lindau_000001_000019_gtFine_labelTrainIds.png")
    assert out.tolist() == expected.T.tolist()
    assert (root / "val.txt").read_text() == (
        "frankfurt/frankfurt_000000_000294\nlindau/lindau_000001_000019\n"
    )
    assert (root / "train.txt").read_text() == "aachen/aachen_000000_000019\n"
    # the evaluated layout now reads
    assert [s.id for s in list_samples("cityscapes", root)] == [
        "frankfurt_000000_000294",
        "lindau_000001_000019",
    ]


def test_cityscapes_value_outside_the_ids(tmp_path: Path) -> None:
    gt = tmp_path / "gtFine"
    _png(gt / "val/bonn/bonn_000000_000019_gtFine_labelIds.png", np.array([[7, 34]]))
    report = convert_cityscapes(gt, tmp_path, progress=False)
    assert len(report.failed) == 1 and "34" in report.failed[0][1]
    assert not (tmp_path / "val.txt").exists()  # no list of a split with a failure
    assert any("val.txt not written" in n for n in report.notes)


# --------------------------------------------------------------------------- Pascal Context
def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_api

    rle = mask_api.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def _detail_json(path: Path, images: list[dict], anns: list[tuple[int, int, np.ndarray]]) -> None:
    segs = [
        {"id": i, "image_id": image_id, "category_id": cat, "segmentation": _rle(m)}
        for i, (image_id, cat, m) in enumerate(anns, start=1)
    ]
    path.write_text(json.dumps({"images": images, "annos_segmentation": segs}))


def _img(image_id: int, name: str, phase: str, h: int, w: int) -> dict:
    return {"image_id": image_id, "file_name": name, "phase": phase, "height": h, "width": w}


def test_pascal_context_every_category(tmp_path: Path) -> None:
    pytest.importorskip("pycocotools", reason='needs the extra: pip install "glaclip[prepare]"')
    root = tmp_path / "VOCdevkit" / "VOC2010"
    (root / "JPEGImages").mkdir(parents=True)
    ids = np.array(sorted(CONTEXT_TABLE)).reshape(6, 10)  # pixel -> its category (0: none)
    anns = [(1, int(c), ids == c) for c in ids.ravel() if c]
    wall = np.ones((2, 3), bool)
    wall[1, 2] = False
    anns += [(2, 440, wall), (2, 284, np.array([[1, 0, 0], [1, 0, 0]], bool))]  # later wins
    anns += [(3, 2, np.ones((2, 2), bool))]
    images = [
        _img(1, "2008_000002.jpg", "val", 6, 10),
        _img(2, "2008_000001.jpg", "val", 2, 3),
        _img(3, "2008_000003.jpg", "train", 2, 2),
    ]
    source = tmp_path / "trainval_merged.json"
    _detail_json(source, images, anns)
    code = main(["prepare", "pascal-context", str(source), str(root), "--no-progress"])
    assert code == 0
    out = _read(root / "SegmentationClassContext/2008_000002.png")
    assert out.tolist() == np.vectorize(CONTEXT_TABLE.get)(ids).tolist()
    assert set(np.unique(out)) == set(range(60))
    # person (37) over wall (56), the pixel no annotation covers: background 0
    assert _read(root / "SegmentationClassContext/2008_000001.png").tolist() == [
        [37, 56, 56],
        [37, 56, 0],
    ]
    assert _read(root / "SegmentationClassContext/2008_000003.png").tolist() == [[1, 1], [1, 1]]
    split_dir = root / "ImageSets/SegmentationContext"
    assert (split_dir / "val.txt").read_text() == "2008_000001\n2008_000002\n"
    assert (split_dir / "train.txt").read_text() == "2008_000003\n"


def test_pascal_context_bad_images_and_roots(tmp_path: Path, capsys) -> None:
    pytest.importorskip("pycocotools", reason='needs the extra: pip install "glaclip[prepare]"')
    root = tmp_path / "VOC2010"
    (root / "JPEGImages").mkdir(parents=True)
    images = [_img(1, "a.jpg", "val", 1, 2), _img(2, "b.jpg", "val", 1, 2)]
    images += [_img(3, "c.jpg", "val", 1, 2)]
    anns = [(1, 17, np.array([[1, 0]], bool))]  # 17: not one of the 59 classes
    anns += [(2, 2, np.ones((2, 2), bool))]  # a mask of another size than the image
    anns += [(3, 458, np.array([[0, 1]], bool))]
    source = tmp_path / "trainval_merged.json"
    _detail_json(source, images, anns)
    assert main(["prepare", "pascal-context", str(source), str(root), "--no-progress"]) == 1
    failed = [line for line in capsys.readouterr().err.splitlines() if "failed:" in line]
    assert len(failed) == 2
    assert "a.jpg" in failed[0] and "17" in failed[0]
    assert "b.jpg" in failed[1] and "size" in failed[1]
    assert _read(root / "SegmentationClassContext/c.png").tolist() == [[0, 59]]
    assert not (root / "ImageSets/SegmentationContext/val.txt").exists()
    # the devkit instead of VOC2010, a file that is not the Detail JSON: refused at once
    devkit = tmp_path / "VOCdevkit"
    (devkit / "VOC2010" / "JPEGImages").mkdir(parents=True)
    assert main(["prepare", "pascal-context", str(source), str(devkit)]) == 2
    assert "pass " + str(devkit / "VOC2010") in capsys.readouterr().err
    (tmp_path / "other.json").write_text("[1, 2]")
    assert main(["prepare", "pascal-context", str(tmp_path / "other.json"), str(root)]) == 2
    assert "not a PASCAL in Detail annotation file" in capsys.readouterr().err


def test_pascal_context_without_the_extra(tmp_path: Path, monkeypatch, capsys) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pycocotools", None)  # import fails as if not installed
    (tmp_path / "JPEGImages").mkdir()
    (tmp_path / "t.json").write_text("{}")
    assert main(["prepare", "pascal-context", str(tmp_path / "t.json"), str(tmp_path)]) == 2
    assert 'pip install "pycocotools>=2.0.6"' in capsys.readouterr().err


def test_prepare_help_shows_the_tables_as_published(capsys) -> None:
    """The README sends readers to ``glaclip prepare --help`` for the converters' tables."""
    with pytest.raises(SystemExit):
        main(["prepare", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "label tables" in text
    for label_id, train_id in CITYSCAPES_TRAIN_IDS.items():
        assert f" {label_id}->{train_id}," in text or f" {label_id}->{train_id};" in text
    for category, label in CONTEXT_TABLE.items():
        assert f" {category}->{label}," in text or f" {category}->{label};" in text
    runs = "0-10->0-10, 12-24->11-23, 26-27->24-25, 30-43->26-39, 45-64->40-59, 66->60, "
    runs += "69->61, 71-81->62-72, 83-89->73-79, 91-181->80-170; 255 -> 255"
    assert runs in text  # COCO_STUFF_TABLE above, in runs


def test_progress_bars_only_on_a_terminal(tmp_path: Path, monkeypatch) -> None:
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    src, root = tmp_path / "annotations", tmp_path
    _png(src / "val2017" / "1.png", np.array([[0, 255]]))
    for stream, bar in ((Terminal(), True), (io.StringIO(), False)):
        monkeypatch.setattr(sys, "stderr", stream)
        assert main(["prepare", "coco-stuff164k", str(src), str(root), "--overwrite"]) == 0
        assert ("file/s]" in stream.getvalue()) is bar, stream.getvalue()


# ------------------------------------------------------ COCO-Object and the shared guarantees
def test_coco_object_non_image_png_is_one_line_and_the_rest_converts(tmp_path: Path, capsys):
    """Issue 16, item 10: a non-image .png after some outputs were written."""
    src, root = tmp_path / "annotations", tmp_path
    _png(src / "val2017" / "1_labelTrainIds.png", np.array([[0, 80]]))
    (src / "val2017" / "2.png").write_text("not an image")
    _png(src / "val2017" / "3_labelTrainIds.png", np.array([[79, 255]]))
    code = main(["prepare", "coco-object", str(src), str(root), "--workers", "1"])
    assert code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "file/s" not in err and "\r" not in err  # no progress bar: stderr is no terminal
    failed = [line for line in err.splitlines() if "failed:" in line]
    assert len(failed) == 1 and str(src / "val2017" / "2.png") in failed[0]
    assert _read(src / "val2017/1_instanceTrainIds.png").tolist() == [[1, 0]]
    assert _read(src / "val2017/3_instanceTrainIds.png").tolist() == [[80, 0]]
    assert not list(src.rglob(".*.tmp"))


def test_coco_object_root_that_is_a_file(tmp_path: Path, capsys) -> None:
    """Issue 16, item 10: a destination that is a file."""
    src = tmp_path / "annotations"
    _png(src / "val2017" / "1_labelTrainIds.png", np.array([[0, 80]]))
    root = tmp_path / "coco_stuff164k"
    root.write_text("a file")
    assert main(["prepare", "coco-object", str(src), str(root)]) == 2
    err = capsys.readouterr().err
    assert "is a file" in err and str(root) in err and "Traceback" not in err
    assert root.read_text() == "a file"
    # a file where the label folder must go
    root2 = tmp_path / "coco2"
    (root2 / "annotations").mkdir(parents=True)
    (root2 / "annotations" / "val2017").write_text("in the way")
    assert main(["prepare", "coco-object", str(src), str(root2)]) == 2
    assert "is a file" in capsys.readouterr().err
    # the old form (a label folder as ROOT) is refused instead of nesting folders
    assert main(["prepare", "coco-object", str(src / "val2017"), str(src / "val2017")]) == 2
    assert "dataset root" in capsys.readouterr().err


def test_resume_overwrite_and_a_failed_write(tmp_path: Path, capsys, monkeypatch) -> None:
    src, root = tmp_path / "annotations", tmp_path
    for i in range(3):
        _png(src / "val2017" / f"{i}.png", np.array([[i, 91]]))
    done = src / "val2017" / "0_labelTrainIds.png"
    _png(done, np.array([[9, 9]]))  # a finished output is not redone
    args = ["prepare", "coco-stuff164k", str(src), str(root), "--no-progress"]
    assert main(args) == 0
    assert "wrote 2 label map(s)" in capsys.readouterr().err
    assert _read(done).tolist() == [[9, 9]]
    assert main([*args, "--overwrite"]) == 0
    assert _read(done).tolist() == [[0, 80]]

    import glaclip.data.convert as convert

    def full_disk(path, write_fn):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(convert, "atomic_write", full_disk)
    assert main([*args, "--overwrite"]) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "Traceback" not in err
