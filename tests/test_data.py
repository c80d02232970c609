"""Dataset readers on synthetic folders, presets and class files, COCO-Object conversion."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glaclip.data.coco_object import convert_coco_object
from glaclip.data.datasets import list_samples, load_label
from glaclip.data.presets import (
    PRESETS,
    class_file_path,
    get_preset,
    preset_classes,
    preset_display_names,
)
from glaclip.text.vocabulary import read_class_file
from tests.golden import REFERENCE_CLASSES_DIR

REFERENCE_CLASSES = Path(os.environ.get("GLACLIP_REFERENCE_CLASSES", REFERENCE_CLASSES_DIR))
# preset -> the reference implementation's class file
REFERENCE_FILES = {
    "voc21": "cls_voc21.txt",
    "context60": "cls_context60.txt",
    "coco_object": "cls_coco_object.txt",
    "voc20": "cls_voc20.txt",
    "context59": "cls_context59.txt",
    "coco_stuff164k": "cls_coco_stuff.txt",
    "cityscapes": "cls_city_scapes.txt",
    "ade20k": "cls_ade20k.txt",
}


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 4), (10, 20, 30)).save(path)


def _label(path: Path, value: int = 1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 6), value, np.uint8)).save(path)


def _palette_label(path: Path, indices: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.frombytes("P", indices.shape[::-1], indices.astype(np.uint8).tobytes())
    # colour of index i: (3i+40, 200-i, 7) -- never equal to i itself
    img.putpalette([c for i in range(256) for c in ((3 * i + 40) % 256, (200 - i) % 256, 7)])
    img.save(path)


def _voc_like(root: Path, label_dir: str, split: str, ids: list[str]) -> None:
    for sid in ids:
        _image(root / "JPEGImages" / f"{sid}.jpg")
        _label(root / label_dir / f"{sid}.png")
    (root / split).parent.mkdir(parents=True, exist_ok=True)
    (root / split).write_text("\n".join(ids) + "\n\n")


@pytest.mark.parametrize(
    "layout,label_dir,split",
    [
        ("voc21", "SegmentationClass", "ImageSets/Segmentation/val.txt"),
        ("context", "SegmentationClassContext", "ImageSets/SegmentationContext/val.txt"),
    ],
)
def test_split_file_layouts_keep_file_order(
    tmp_path: Path, layout: str, label_dir: str, split: str
) -> None:
    ids = ["2008_000002", "2007_000033", "2007_000005"]
    _voc_like(tmp_path, label_dir, split, ids)
    _image(tmp_path / "JPEGImages" / "2009_000001.jpg")  # not in the split: not listed
    samples = list_samples(layout, tmp_path)
    assert [s.id for s in samples] == ids
    assert samples[1].image == tmp_path / "JPEGImages" / "2007_000033.jpg"
    assert samples[1].label == tmp_path / label_dir / "2007_000033.png"


@pytest.mark.parametrize(
    "layout,img_dir,lbl_dir,lbl_suffix",
    [
        ("coco_object", "images/val2017", "annotations/val2017", "_instanceTrainIds.png"),
        ("coco_stuff164k", "images/val2017", "annotations/val2017", "_labelTrainIds.png"),
        ("ade20k", "images/validation", "annotations/validation", ".png"),
    ],
)
def test_folder_layouts_sorted(
    tmp_path: Path, layout: str, img_dir: str, lbl_dir: str, lbl_suffix: str
) -> None:
    for sid in ["000000000285", "000000000139"]:
        _image(tmp_path / img_dir / f"{sid}.jpg")
        _label(tmp_path / lbl_dir / f"{sid}{lbl_suffix}")
    samples = list_samples(layout, tmp_path)
    assert [s.id for s in samples] == ["000000000139", "000000000285"]
    assert samples[0].label == tmp_path / lbl_dir / f"000000000139{lbl_suffix}"


def test_cityscapes_layout(tmp_path: Path) -> None:
    ids = {"munster": ["munster_000001_000019"], "frankfurt": ["frankfurt_000000_000294"]}
    for city, names in ids.items():
        for sid in names:
            _image(tmp_path / "leftImg8bit/val" / city / f"{sid}_leftImg8bit.png")
            _label(tmp_path / "gtFine/val" / city / f"{sid}_gtFine_labelTrainIds.png")
    # other gtFine files must not confuse the reader
    _label(tmp_path / "gtFine/val/munster/munster_000001_000019_gtFine_labelIds.png")
    samples = list_samples("cityscapes", tmp_path)
    assert [s.id for s in samples] == ["frankfurt_000000_000294", "munster_000001_000019"]
    assert samples[1].label == (
        tmp_path / "gtFine/val/munster/munster_000001_000019_gtFine_labelTrainIds.png"
    )


def test_missing_folder_names_path_and_layout(tmp_path: Path) -> None:
    _image(tmp_path / "images/validation/a.jpg")
    with pytest.raises(FileNotFoundError) as err:
        list_samples("ade20k", tmp_path)
    assert str(tmp_path / "annotations/validation") in str(err.value)
    assert "ADEChallengeData2016" in str(err.value)
    with pytest.raises(FileNotFoundError, match="data root"):
        list_samples("ade20k", tmp_path / "nope")


def test_missing_label_and_split_file(tmp_path: Path) -> None:
    _voc_like(tmp_path, "SegmentationClass", "ImageSets/Segmentation/val.txt", ["a", "b"])
    (tmp_path / "SegmentationClass" / "b.png").unlink()
    with pytest.raises(FileNotFoundError) as err:
        list_samples("voc", tmp_path)
    assert str(tmp_path / "SegmentationClass" / "b.png") in str(err.value)
    (tmp_path / "ImageSets/Segmentation/val.txt").unlink()
    with pytest.raises(FileNotFoundError, match="val.txt"):
        list_samples("voc20", tmp_path)


def test_unknown_layout_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="valid: .*cityscapes"):
        list_samples("kitti", tmp_path)
    (tmp_path / "images/validation").mkdir(parents=True)
    (tmp_path / "annotations/validation").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images"):
        list_samples("ade20k", tmp_path)


def test_load_label_reads_palette_indices(tmp_path: Path) -> None:
    indices = np.array([[0, 1, 15], [255, 20, 1]], np.uint8)
    path = tmp_path / "p.png"
    _palette_label(path, indices)
    with Image.open(path) as img:
        assert img.mode == "P"
        rgb = np.array(img.convert("RGB"))
    assert not np.array_equal(rgb[..., 0], indices)  # colours differ from indices
    out = load_label(path, reduce_zero_label=False)
    assert out.dtype == np.uint8
    assert out.tolist() == indices.tolist()
    assert load_label(path, reduce_zero_label=True).tolist() == [[255, 0, 14], [255, 19, 0]]


def test_load_label_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_label(tmp_path / "missing.png")
    Image.new("RGB", (2, 2)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="single-channel"):
        load_label(tmp_path / "rgb.png")


EXPECTED = {
    "voc21": (21, 336, 0.1, False, "voc"),
    "context60": (60, 336, 0.1, False, "context"),
    "coco_object": (81, 336, 0.1, False, "coco_object"),
    "voc20": (20, 336, 0.0, True, "voc"),
    "context59": (59, 336, 0.0, True, "context"),
    "coco_stuff164k": (171, 336, 0.0, False, "coco_stuff"),
    "cityscapes": (19, 560, 0.0, False, "cityscapes"),
    "ade20k": (150, 336, 0.0, True, "ade20k"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_presets_and_class_counts(name: str) -> None:
    count, short, thd, rzl, layout = EXPECTED[name]
    p = get_preset(name)
    assert (p.short_side, p.prob_threshold, p.reduce_zero_label, p.layout) == (
        short,
        thd,
        rzl,
        layout,
    )
    assert (p.background_index, p.ignore_index) == (0, 255)
    lines = read_class_file(class_file_path(p))
    assert len(lines) == count
    assert len(set(lines)) == count  # no duplicated class
    for line in lines:
        assert all(part == part.strip() and part for part in line.split("; "))
        assert ";" not in line.replace("; ", "")  # separator is exactly '; '


def test_preset_registry() -> None:
    assert set(PRESETS) == set(EXPECTED)
    with pytest.raises(ValueError, match="valid presets: .*voc21"):
        get_preset("voc")


BACKGROUND = (
    "sky; wall; tree; wood; grass; road; sea; river; mountain; sands; desk; bed; building; "
    "cloud; lamp; door; window; wardrobe; ceiling; shelf; curtain; stair; floor; hill; rail; "
    "fence"
)
PERSON = (
    "person; person in shirt; person in jeans; person in dress; person in sweater; "
    "person in skirt; person in jacket"
)


def test_protocol_renamings() -> None:
    voc = preset_classes("voc21")
    assert voc[0] == BACKGROUND and len(voc[0].split("; ")) == 26
    assert voc[4] == "ship" and voc[11] == "table"
    assert voc[15] == PERSON
    assert voc[20] == "television monitor; tv monitor; monitor; television; screen"
    assert preset_classes("voc20") == voc[1:]
    coco = preset_classes("coco_object")
    assert coco[0] == BACKGROUND
    assert coco[1] == PERSON + "; body"
    stuff = preset_classes("coco_stuff164k")
    # the reference queries COCO-Object's things with spaces, COCO-Stuff's joined
    assert [c.replace(" ", "") for c in coco[2:]] == [c.replace(" ", "") for c in stuff[1:80]]
    assert coco[10] == "traffic light" and stuff[9] == "trafficlight"
    assert stuff[80] == "banner" and stuff[-1] == "wood"
    # COCO-Object's class "bed" is also one of the background's words (see the README)
    assert coco[60] == "bed" and "bed" in coco[0].split("; ")
    ctx = preset_classes("context60")
    assert ctx[0] == "background" and preset_classes("context59") == ctx[1:]
    assert preset_classes("cityscapes")[0] == "road"
    ade = preset_classes("ade20k")
    assert ade[:3] == ["wall", "building", "sky"] and ade[7] == "bed"


def test_read_class_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("cat\n\ndog;  ; puppy\n")
    with pytest.raises(ValueError, match=r"bad\.txt, line 3"):
        read_class_file(bad)
    good = tmp_path / "good.txt"
    good.write_text("  cat \n\ndog; puppy\n")
    assert read_class_file(good) == ["cat", "dog; puppy"]
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(ValueError, match="no class"):
        read_class_file(tmp_path / "empty.txt")


def _save_l(path: Path, array: list[list[int]]) -> None:
    Image.fromarray(np.array(array, np.uint8)).save(path)


def test_convert_coco_object(tmp_path: Path) -> None:
    src, root = tmp_path / "annotations" / "val2017", tmp_path / "coco_stuff164k"
    src.mkdir(parents=True)
    dst = root / "annotations" / "val2017"
    # trainIds: things 0..79 -> 1..80, stuff 80..170 and 255 -> 0
    _save_l(src / "000000000001_labelTrainIds.png", [[0, 79, 80], [170, 255, 5]])
    # raw stuffthingmaps (category id - 1): 0 person -> 1, 181 (the last stuff) -> 0,
    # 12 stop sign (12th thing) -> 12, 89 toothbrush -> 80, 91 stuff -> 0, 255 -> 0
    _save_l(src / "000000000002.png", [[0, 181, 12], [89, 91, 255]])
    # raw map beside its trainIds: the trainIds one wins
    _save_l(src / "000000000001.png", [[200, 200, 200], [200, 200, 200]])
    report = convert_coco_object(src, root, progress=False)
    assert (report.written, report.skipped, report.failed) == (2, 0, [])
    out1 = Image.open(dst / "000000000001_instanceTrainIds.png")
    out2 = Image.open(dst / "000000000002_instanceTrainIds.png")
    assert out1.mode == "L" and out2.mode == "L"
    assert np.array(out1).tolist() == [[1, 80, 0], [0, 0, 6]]
    assert np.array(out2).tolist() == [[1, 0, 12], [80, 0, 0]]
    assert sorted(p.name for p in dst.iterdir()) == [
        "000000000001_instanceTrainIds.png",
        "000000000002_instanceTrainIds.png",
    ]  # no temporary file left behind
    # its own outputs are never read as inputs: a folder of outputs only has no label map
    assert convert_coco_object(dst, root, progress=False).notes[0].startswith("no COCO-Stuff")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        convert_coco_object(tmp_path / "nowhere", root)


def test_convert_coco_object_in_place(tmp_path: Path) -> None:
    labels = tmp_path / "annotations" / "val2017"
    labels.mkdir(parents=True)
    _save_l(labels / "7_labelTrainIds.png", [[3, 100]])
    assert convert_coco_object(tmp_path / "annotations", tmp_path, progress=False).written == 1
    assert np.array(Image.open(labels / "7_instanceTrainIds.png")).tolist() == [[4, 0]]
    again = convert_coco_object(tmp_path / "annotations", tmp_path, progress=False)
    assert (again.written, again.skipped) == (0, 1)  # rerun: outputs are not inputs, not redone


def test_display_names_are_the_datasets_own() -> None:
    from glaclip.data.presets import preset_classes, preset_display_names

    voc = preset_display_names("voc21")
    assert voc[0] == "background" and voc[4] == "boat" and voc[11] == "diningtable"
    assert voc[-1] == "tvmonitor" and len(voc) == len(preset_classes("voc21")) == 21
    assert preset_display_names("voc20") == voc[1:]
    coco = preset_display_names("coco_object")
    assert coco[:2] == ["background", "person"] and len(coco) == 81
    assert coco[10] == "traffic light" and coco[63] == "tv"
    # presets without renamings name each class by its first query name
    assert preset_display_names("context60") == preset_classes("context60")
    assert preset_display_names("context59") == preset_classes("context60")[1:]
    for name in PRESETS:
        names = preset_display_names(name)
        assert len(names) == len(preset_classes(name))
        assert len(set(names)) == len(names), name


# mmsegmentation's class names (METAINFO) where the reference joined the words
STANDARD = {
    "ade20k": {7: "bed", 44: "chest of drawers", 56: "pool table", 136: "traffic light"},
    "coco_stuff164k": {
        9: "traffic light",
        10: "fire hydrant",
        79: "toothbrush",
        84: "building-other",
    },
    "cityscapes": {6: "traffic light", 7: "traffic sign", 18: "bicycle"},
}


@pytest.mark.parametrize("name", sorted(STANDARD))
def test_display_names_undo_the_joined_query_words(name: str) -> None:
    names = preset_display_names(name)
    queries = preset_classes(name)
    for index, standard in STANDARD[name].items():
        assert names[index] == standard
    # line for line, the query word is the standard name with its spaces removed
    assert [n.replace(" ", "") for n in names] == queries
    assert (
        sum(" " in n for n in names) == {"ade20k": 15, "coco_stuff164k": 15, "cityscapes": 2}[name]
    )


@pytest.mark.parametrize("name", sorted(REFERENCE_FILES))
def test_class_files_are_the_reference_words_line_for_line(name: str) -> None:
    reference = REFERENCE_CLASSES / REFERENCE_FILES[name]
    if not reference.is_file():
        raise FileNotFoundError(
            f"reference class file {reference} not found: tests/data/reference_classes is part "
            "of the repository (tests/make_compact_golden.py copies it), or set "
            "GLACLIP_REFERENCE_CLASSES"
        )
    bundled = class_file_path(name).read_text(encoding="utf-8").splitlines()
    assert bundled == reference.read_text(encoding="utf-8").splitlines()


def test_a_duplicate_id_in_a_split_file_is_an_error(tmp_path: Path) -> None:
    from tests.test_evaluate import make_dataset

    made = make_dataset(tmp_path, "voc", [0, 1], count=2)
    split = tmp_path / "ImageSets" / "Segmentation" / "val.txt"
    first = list(made)[0]
    split.write_text("\n".join([*made, first]) + "\n")
    with pytest.raises(ValueError, match=f"lists the image id '{first}' twice \\(lines 1 and 3\\)"):
        list_samples("voc", tmp_path)


def test_blank_line_in_an_eval_class_file(tmp_path: Path) -> None:
    from glaclip.evaluation.tasks import make_task
    from tests.test_evaluate import make_dataset

    make_dataset(tmp_path, "voc", [0, 1], count=1)
    classes = tmp_path / "classes.txt"
    classes.write_text("background\n\naeroplane\n")
    with pytest.raises(ValueError, match=r"classes\.txt, line 2 is blank"):
        make_task("voc21", tmp_path, class_file=classes)
