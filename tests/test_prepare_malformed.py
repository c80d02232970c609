"""``glaclip prepare`` refuses malformed sources instead of writing wrong labels: a Detail JSON
whose entries clash or lack fields, and COCO-Object sources with values no class has."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glaclip.cli.main import main
from tests.test_prepare import _detail_json, _img, _png

pytest.importorskip("pycocotools", reason='needs the extra: pip install "glaclip[prepare]"')

MASK = np.ones((2, 3), bool)


def _source(tmp_path: Path) -> tuple[Path, Path, dict]:
    """A valid Detail JSON of two val images and one train image, as a dict to break."""
    root = tmp_path / "VOC2010"
    (root / "JPEGImages").mkdir(parents=True)
    images = [_img(1, "a.jpg", "val", 2, 3), _img(2, "b.jpg", "val", 2, 3)]
    images += [_img(3, "c.jpg", "train", 2, 3)]
    source = tmp_path / "trainval_merged.json"
    _detail_json(source, images, [(1, 2, MASK), (2, 440, MASK), (3, 2, MASK)])
    return source, root, json.loads(source.read_text())


def _image(field: str, value):
    def change(data: dict) -> None:
        if value is _DROP:
            del data["images"][1][field]
        else:
            data["images"][1][field] = value

    return change


def _annotation(field: str, value):
    def change(data: dict) -> None:
        if value is _DROP:
            del data["annos_segmentation"][1][field]
        else:
            data["annos_segmentation"][1][field] = value

    return change


_DROP = object()


def _set(key: str, value):
    return lambda data: data.__setitem__(key, value)


CASES = {
    "one annotation id twice": (_annotation("id", 1), "repeats the id 1 of annos_segmentation[0]"),
    "one file name twice in a phase": (_image("file_name", "a.jpg"), "in the same phase"),
    "one file name in train and val": (_image("file_name", "c.jpg"), "c.png of images[1] in val"),
    "one image id twice": (_image("image_id", 1), "repeats image_id 1 of images[0]"),
    "no image_id": (_image("image_id", _DROP), "images[1] has no 'image_id'"),
    "no file_name": (_image("file_name", _DROP), "images[1] has no 'file_name'"),
    "file_name null": (_image("file_name", None), "has file_name null, not a text"),
    "an unhashable image id": (_image("image_id", [2]), "has image_id [2], not a number or"),
    "no height": (_image("height", _DROP), "images[1] has no 'height'"),
    "a negative width": (_image("width", -3), "has width -3, not a positive size"),
    "images not a list": (_set("images", {"1": 1}), "'images' is a dict, not a list"),
    "an image that is no object": (
        lambda d: d["images"].append("d.jpg"),
        "images[3] is a str, not an object",
    ),
    "annotations not a list": (_set("annos_segmentation", 7), "is a int, not a list"),
    "an unhashable annotation id": (_annotation("id", {"a": 1}), 'has id {"a": 1}, not a'),
    "an annotation without image_id": (
        _annotation("image_id", _DROP),
        "annos_segmentation[1] has no 'image_id'",
    ),
    "a category that is text": (_annotation("category_id", "cat"), 'has category_id "cat"'),
    "an annotation without mask": (_annotation("segmentation", _DROP), "no 'segmentation'"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_malformed_detail_json_is_refused_before_any_label(case, tmp_path, capsys) -> None:
    change, message = CASES[case]
    source, root, data = _source(tmp_path)
    change(data)
    source.write_text(json.dumps(data))
    code = main(["prepare", "pascal-context", str(source), str(root), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and "Traceback" not in err and str(source) in err
    assert not list((root / "SegmentationClassContext").glob("*.png"))


def test_the_valid_source_converts(tmp_path) -> None:
    source, root, _ = _source(tmp_path)
    assert main(["prepare", "pascal-context", str(source), str(root), "--no-progress"]) == 0
    assert len(list((root / "SegmentationClassContext").glob("*.png"))) == 3


@pytest.mark.parametrize(
    ("name", "values", "bad"),
    [
        ("1_labelTrainIds.png", [[0, 200]], "200"),  # trainIds stop at 170 (and 255)
        ("2.png", [[0, 200]], "200"),  # official maps stop at 181 (and 255)
        ("3.png", [[11, 90]], "11, 90"),  # unused category values
    ],
)
def test_coco_object_refuses_values_that_coco_stuff_refuses(
    name, values, bad, tmp_path: Path, capsys
) -> None:
    src = tmp_path / "annotations"
    _png(src / "val2017" / name, np.array(values))
    _png(src / "val2017" / "9_labelTrainIds.png", np.array([[5, 100]]))  # a good one
    assert main(["prepare", "coco-object", str(src), str(tmp_path), "--no-progress"]) == 1
    failed = [line for line in capsys.readouterr().err.splitlines() if "failed:" in line]
    assert len(failed) == 1 and name in failed[0] and bad in failed[0]
    out = src / "val2017"
    assert not (out / f"{name.split('_')[0].removesuffix('.png')}_instanceTrainIds.png").exists()
    assert np.array(Image.open(out / "9_instanceTrainIds.png")).tolist() == [[6, 0]]
    if not name.endswith("_labelTrainIds.png"):  # coco-stuff164k refuses the same file
        assert main(["prepare", "coco-stuff164k", str(src), str(tmp_path), "--no-progress"]) == 1
        assert name in capsys.readouterr().err
