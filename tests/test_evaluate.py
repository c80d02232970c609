"""`glaclip eval` end to end on synthetic miniature datasets in every folder layout.

The metrics are recomputed here from the saved predictions with an independent numpy
confusion matrix, and the boundary pairs counted across window seams worked out by hand for
each test image (``SEAMS``; SPEC 2 and 11), not with SegMetric or the windows module.
Text embeddings use one prompt template instead of 80 (``fast_text``) to keep the large
vocabularies (171 and 150 classes) quick; the image side runs the real tiny models.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import glaclip
from glaclip.cli.main import main
from glaclip.evaluation.metrics import SegMetric
from glaclip.evaluation.state import STATE_DIR, StateWriter, read_state

CLASS_DIR = Path(glaclip.__file__).resolve().parent / "data" / "classes"

# layout -> (image path, label path) for an id, relative to the root
PATHS = {
    "voc": ("JPEGImages/{id}.jpg", "SegmentationClass/{id}.png"),
    "context": ("JPEGImages/{id}.jpg", "SegmentationClassContext/{id}.png"),
    "coco_object": ("images/val2017/{id}.jpg", "annotations/val2017/{id}_instanceTrainIds.png"),
    "coco_stuff": ("images/val2017/{id}.jpg", "annotations/val2017/{id}_labelTrainIds.png"),
    "cityscapes": (
        "leftImg8bit/val/{city}/{id}_leftImg8bit.png",
        "gtFine/val/{city}/{id}_gtFine_labelTrainIds.png",
    ),
    "ade20k": ("images/validation/{id}.jpg", "annotations/validation/{id}.png"),
}
SPLITS = {
    "voc": "ImageSets/Segmentation/val.txt",
    "context": "ImageSets/SegmentationContext/val.txt",
}
SIZES = [(240, 320), (200, 260), (230, 240)]
Dataset = tuple[Path, dict[str, tuple[int, int]]]  # root, {id: (H0, W0)}


# ------------------------------------------------------------------------ synthetic data
def rgb_image(h: int, w: int, seed: int) -> np.ndarray:
    """``h x w x 3`` uint8 blocky picture."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=(h // 24 + 1, w // 24 + 1, 3), dtype=np.uint8)
    return np.ascontiguousarray(np.kron(base, np.ones((24, 24, 1), np.uint8))[:h, :w])


def label_map(h: int, w: int, values: list[int], seed: int) -> np.ndarray:
    """``h x w`` uint8 labels: blocks of ``values`` and a band of 255 (ignored)."""
    rng = np.random.default_rng(seed + 100)
    base = rng.choice(values, size=(h // 40 + 1, w // 40 + 1)).astype(np.uint8)
    label = np.kron(base, np.ones((40, 40), np.uint8))[:h, :w].copy()
    label[h // 3 : h // 3 + 6, :] = 255
    return label


def make_dataset(
    root: Path,
    layout: str,
    values: list[int],
    count: int = 2,
    sizes: list[tuple[int, int]] | None = None,
) -> dict[str, tuple[int, int]]:
    """Write a miniature dataset in ``layout`` under ``root``; returns ``{id: (H0, W0)}``."""
    sizes = sizes or SIZES
    image_t, label_t = PATHS[layout]
    made: dict[str, tuple[int, int]] = {}
    for k in range(count):
        h, w = sizes[k % len(sizes)]
        sid = f"frankfurt_000000_00000{k}" if layout == "cityscapes" else f"2008_00000{k}"
        image_path = root / image_t.format(id=sid, city="frankfurt")
        label_path = root / label_t.format(id=sid, city="frankfurt")
        image_path.parent.mkdir(parents=True, exist_ok=True)
        label_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb_image(h, w, k)).save(image_path)
        label = Image.fromarray(label_map(h, w, values, k))
        if layout == "voc":  # VOC ships palette PNGs: the indices are the labels
            label = label.convert("P")
            label.putpalette([(i * 37) % 256 for i in range(768)])
        label.save(label_path)
        made[sid] = (h, w)
    if layout in SPLITS:
        split = root / SPLITS[layout]
        split.parent.mkdir(parents=True, exist_ok=True)
        split.write_text("\n".join(made) + "\n")
    return made


# ------------------------------------------------------------------------ independent scoring
def ground_truth(path: Path, reduce_zero_label: bool) -> np.ndarray:
    label = np.array(Image.open(path)).astype(np.int64)
    if reduce_zero_label:
        label = np.where(label == 0, 255, label - 1)
        label[label == 254] = 255
    return label


def rescore(preds: list[np.ndarray], labels: list[np.ndarray], c: int) -> dict[str, float]:
    """mIoU, mAcc, aAcc in percent from a numpy confusion matrix (rows: label, cols: pred).

    Labelled pixels outside ``[0, c)`` follow mmseg: no label, but their predictions count.
    """
    cm = np.zeros((c, c), dtype=np.int64)
    stray = np.zeros(c, dtype=np.int64)  # predictions on labels outside the classes
    for pred, label in zip(preds, labels, strict=True):
        keep = (label != 255) & (label < c)
        cm += np.bincount(label[keep] * c + pred[keep], minlength=c * c).reshape(c, c)
        stray += np.bincount(pred[(label != 255) & (label >= c)], minlength=c)[:c]
    inter = np.diag(cm)
    union = cm.sum(0) + stray + cm.sum(1) - inter
    rows = cm.sum(1)
    return {
        "mIoU": float(np.mean(100.0 * inter[union > 0] / union[union > 0])),
        "mAcc": float(np.mean(100.0 * inter[rows > 0] / rows[rows > 0])),
        "aAcc": float(100.0 * inter.sum() / cm.sum()),
    }


# The window seams of every test image, worked out by hand, in pixels of the original image:
# (H0, W0, short side) -> (x of the vertical seams, y of the horizontal ones). The protocol
# resize scales by short / min(H0, W0) (the 2048 cap never binds here) to
# (int(H0 * s + 0.5), int(W0 * s + 0.5)); a side under the crop (224) is first enlarged by
# 224 / short side; windows of 224 every 112, the last of a row shifted back to end at the
# border; an inner window edge e of a side of n pixels lands at int(e * N0 / n + 0.5).
SEAMS = {
    # 336 x 448: window columns at 0, 112, 224 -> edges 112, 224, 336; rows at 0, 112
    (240, 320, 336): ([80, 160, 240], [80, 160]),
    # 336 x 437: columns at 0, 112, 213 -> edges 112, 213, 224, 336 (x 260/437)
    (200, 260, 336): ([67, 127, 133, 200], [67, 133]),
    # 336 x 351: columns at 0, 112, 127 -> edges 112, 127, 224, 336 (x 240/351)
    (230, 240, 336): ([77, 87, 153, 230], [77, 153]),
    # 224 x 299: columns at 0, 75 -> edges 75, 224; a single row of windows
    (240, 320, 224): ([80, 240], []),
    # 224 x 291: columns at 0, 67 -> edges 67, 224 (x 260/291)
    (200, 260, 224): ([60, 200], []),
    # 160 x 213, enlarged by 1.4 to 224 x 298: columns at 0, 74 -> edges 74, 224
    (240, 320, 160): ([79, 241], []),
    # 160 x 208, enlarged by 1.4 to 224 x 291: as at short side 224
    (200, 260, 160): ([60, 200], []),
}


def seam_pairs(
    pred: np.ndarray, label: np.ndarray, xs: list[int], ys: list[int], num_classes: int
) -> tuple[int, int]:
    """BER ``(differ, total)`` from the definition: the neighbours across a seam (``xs``
    vertical, ``ys`` horizontal) that share a class label (ignored labels and labels outside
    the classes left out), and of those, the ones whose predictions differ."""
    label = np.where(label < num_classes, label, 255)
    differ = total = 0
    for x in xs:  # vertical seam: (y, x-1) and (y, x) on every row
        same = (label[:, x - 1] == label[:, x]) & (label[:, x] != 255)
        total += int(same.sum())
        differ += int((same & (pred[:, x - 1] != pred[:, x])).sum())
    for y in ys:  # horizontal seam: (y-1, x) and (y, x) on every column
        same = (label[y - 1] == label[y]) & (label[y] != 255)
        total += int(same.sum())
        differ += int((same & (pred[y - 1] != pred[y])).sum())
    return differ, total


def test_seam_pairs_counted_by_hand() -> None:
    """Three classes on a 4 x 5 map, one vertical seam at x 2 and one horizontal at y 2."""
    label = np.array(
        [
            [0, 0, 0, 1, 1],
            [0, 0, 255, 1, 1],
            [2, 2, 2, 1, 7],  # 7: outside the 3 classes
            [2, 2, 2, 1, 1],
        ]
    )
    pred = np.array(
        [
            [0, 0, 1, 1, 1],  # (0, 1)-(0, 2): labels 0 = 0, predictions differ
            [0, 0, 0, 1, 1],  # (1, 2) ignored
            [2, 2, 2, 1, 1],
            [2, 0, 2, 1, 0],  # (3, 1)-(3, 2): labels 2 = 2, predictions differ
        ]
    )
    # x seam 2, rows 0..3: (0,1)-(0,2) same label, differ; (1,1)-(1,2) ignored;
    # (2,1)-(2,2) same, agree; (3,1)-(3,2) same, differ -> total 3, differ 2.
    # y seam 2, columns 0..4: (1,0)-(2,0) 0 vs 2; (1,1)-(2,1) 0 vs 2; (1,2)-(2,2) ignored;
    # (1,3)-(2,3) 1 = 1, agree; (1,4)-(2,4) 1 vs 7 -> total 1, differ 0.
    assert seam_pairs(pred, label, [2], [2], 3) == (2, 4)


# ------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module", autouse=True)
def fast_text() -> Iterator[None]:
    """One prompt template instead of 80: the text digest (and cache file) changes with it."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(
            "glaclip.text.encoder.openai_templates", lambda: list(OPENAI_IMAGENET_TEMPLATES[:1])
        )
        yield


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, dict | None]:
    """``main(argv)`` -> (exit code, stderr, results.json -- results_limitN.json for
    ``--limit N`` -- or None)."""
    code = main(argv)
    err = capsys.readouterr().err
    name = f"results_limit{argv[argv.index('--limit') + 1]}" if "--limit" in argv else "results"
    out = Path(argv[argv.index("--out") + 1]) / f"{name}.json"
    return code, err, json.loads(out.read_text()) if out.is_file() and code == 0 else None


@pytest.fixture(scope="module")
def voc(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple[int, int]]]:
    root = tmp_path_factory.mktemp("voc") / "VOC2012"
    return root, make_dataset(root, "voc", [0, 1, 15, 20], count=3)


@pytest.fixture(scope="module")
def voc_fresh(
    voc: Dataset, tiny_model_args: list[str], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict]:
    """A full, fresh voc21 run at the preset's settings, with predictions."""
    root, _ = voc
    out = tmp_path_factory.mktemp("voc_fresh")
    code = main(
        ["eval", "--dataset", "voc21", "--data-root", str(root), "--out", str(out / "res")]
        + ["--save-predictions", str(out / "pred"), "--no-progress"]
        + tiny_model_args
    )
    assert code == 0
    return out, json.loads((out / "res" / "results.json").read_text())


def check_run(
    results: dict,
    preset: str,
    root: Path,
    made: dict[str, tuple[int, int]],
    layout: str,
    pred_dir: Path,
    reduce_zero_label: bool,
    short_side: int,
) -> dict[str, float]:
    """Keys, sizes, class names, and metrics recomputed independently (returned: mIoU, mAcc,
    aAcc and BER in percent, from the saved predictions)."""
    for key in ("mIoU", "mAcc", "aAcc", "BER", "num_images", "per_class", "settings", "models"):
        assert key in results
    assert results["dataset"] == preset
    assert results["num_images"] == len(made)
    names_file = CLASS_DIR / f"{preset}.names.txt"
    if not names_file.is_file():  # no renamings: the first query name of each class file line
        names_file = CLASS_DIR / f"{preset}.txt"
    lines = names_file.read_text().splitlines()
    names = [line.split(";")[0].strip() for line in lines if line.strip()]
    assert [c["name"] for c in results["per_class"]] == names
    if preset == "voc21":
        assert names[0] == "background" and names[4] == "boat"
    assert results["settings"]["short_side"] == short_side
    assert results["models"]["clip"].startswith("local-dir:")
    preds, labels, differ, total, outside = [], [], 0, 0, 0
    for sid, (h, w) in made.items():
        saved = Image.open(pred_dir / f"{sid}.png")
        pred = np.array(saved).astype(np.int64)
        assert pred.shape == (h, w)
        label_path = root / PATHS[layout][1].format(id=sid, city="frankfurt")
        label = ground_truth(label_path, reduce_zero_label)
        preds.append(pred)
        labels.append(label)
        outside += int(((label != 255) & (label >= len(names))).sum())
        d, t = seam_pairs(pred, label, *SEAMS[(h, w, short_side)], len(names))
        differ, total = differ + d, total + t
    expected = rescore(preds, labels, len(names))
    for key, value in expected.items():
        assert results[key] == pytest.approx(value, abs=1e-6)
    assert total > 0
    assert results["ber_pairs"] == {"differ": differ, "total": total}
    assert results["BER"] == pytest.approx(100.0 * differ / total, abs=1e-9)
    assert results["label_pixels_outside_classes"] == outside
    written = [p.name for p in pred_dir.iterdir() if p.name != ".glaclip-outputs"]
    assert sorted(written) == sorted(f"{s}.png" for s in made)
    return {**expected, "BER": 100.0 * differ / total}


# ------------------------------------------------------------------------ end to end
def test_voc21_end_to_end(voc: Dataset, voc_fresh: tuple[Path, dict]) -> None:
    root, made = voc
    out, results = voc_fresh
    check_run(results, "voc21", root, made, "voc", out / "pred", False, 336)
    assert results["settings"]["prob_threshold"] == 0.1  # the preset's value
    assert results["resumed_images"] == 0 and results["processed_images"] == 3
    md = (out / "res" / "results.md").read_text()
    assert "| mIoU |" in md and f"{results['mIoU']:.2f}" in md and "aeroplane" in md


@pytest.mark.parametrize(
    ("preset", "layout", "values", "reduce", "short_side"),
    [
        ("context59", "context", [0, 1, 5, 59], True, 224),
        ("coco_object", "coco_object", [0, 1, 80, 90], False, 224),  # 90: no class
        ("coco_stuff164k", "coco_stuff", [0, 100, 170], False, 224),
        ("cityscapes", "cityscapes", [0, 10, 18], False, 224),
        ("ade20k", "ade20k", [0, 1, 150], True, 160),  # 160 < crop: the upscaled canvas
    ],
)
def test_layouts_end_to_end(
    preset: str,
    layout: str,
    values: list[int],
    reduce: bool,
    short_side: int,
    tiny_model_args: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = tmp_path / "data"
    made = make_dataset(root, layout, values, count=2)
    code, err, results = run(
        ["eval", "--dataset", preset, "--data-root", str(root), "--out", str(tmp_path / "o")]
        + ["--save-predictions", str(tmp_path / "p"), "--short-side", str(short_side)]
        + tiny_model_args,
        capsys,
    )
    assert code == 0, err
    assert "glaclip: running on cpu (" in err  # the device, named before the work starts
    assert results is not None and results["reduce_zero_label"] is reduce
    check_run(results, preset, root, made, layout, tmp_path / "p", reduce, short_side)
    if preset == "coco_object":  # label 90 is outside the 81 classes: counted, reported
        assert results["label_pixels_outside_classes"] > 0
        assert "outside [0, 81)" in err
        md = (tmp_path / "o" / "results.md").read_text()
        assert str(results["label_pixels_outside_classes"]) in md


def test_limit_class_file_and_override(
    voc: Dataset, tiny_model_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, made = voc
    class_file = tmp_path / "mine.txt"
    lines = ["background; sky; wall"] + [f"thing {i}" for i in range(1, 21)]
    lines[15] = "human; person"
    class_file.write_text("\n".join(lines) + "\n")
    code, err, results = run(
        ["eval", "--dataset", "voc21", "--data-root", str(root), "--out", str(tmp_path / "o")]
        + ["--limit", "1", "--class-file", str(class_file), "--prob-threshold", "0.3"]
        + ["--short-side", "224", "--reduce-zero-label"]
        + tiny_model_args,
        capsys,
    )
    assert code == 0, err
    assert results is not None
    assert results["num_images"] == 1 and results["dataset_images"] == 3
    assert results["settings"]["prob_threshold"] == 0.3
    assert results["settings"]["short_side"] == 224
    assert results["reduce_zero_label"] is True  # voc21's default is False
    assert results["class_file"] == str(class_file)
    assert results["class_lines"][15] == "human; person"
    assert [c["name"] for c in results["per_class"]][:2] == ["background", "thing 1"]
    assert results["per_class"][15]["name"] == "human"
    assert "mIoU" in err  # the closing summary line


def test_resume_matches_fresh_run(
    voc: Dataset,
    voc_fresh: tuple[Path, dict],
    tiny_model_args: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root, _ = voc
    out = tmp_path / "o"
    base = ["eval", "--dataset", "voc21", "--data-root", str(root), "--out", str(out)]
    base += tiny_model_args + ["--no-progress"]
    code, err, first = run(base + ["--limit", "1"], capsys)
    assert code == 0, err
    assert first is not None
    assert first["processed_images"] == 1 and first["resumed_images"] == 0
    state = out / STATE_DIR / "rank0.jsonl"
    with open(state, "a", encoding="utf-8") as f:  # a crash in the middle of a line
        f.write('{"id": "2008_000001", "counts": [1, 2')

    code, err, second = run(base, capsys)
    assert code == 0, err
    assert second is not None
    assert second["resumed_images"] == 1 and second["processed_images"] == 2
    _, fresh = voc_fresh
    for key in ("mIoU", "mAcc", "aAcc", "BER", "per_class", "ber_pairs", "num_images"):
        assert second[key] == fresh[key], key
    ids = [json.loads(line)["id"] for line in state.read_text().splitlines()[1:]]
    assert ids == ["2008_000000", "2008_000001", "2008_000002"]  # torn line cut, no repeats

    # a different setting is refused, and --restart starts over
    code, err, _ = run(base + ["--prob-threshold", "0.2"], capsys)
    assert code == 2
    assert "different evaluation" in err and "prob_threshold" in err and "--restart" in err
    code, err, third = run(base + ["--limit", "1", "--restart"], capsys)
    assert code == 0, err
    assert third is not None and third["resumed_images"] == 0
    assert len(state.read_text().splitlines()) == 2  # header + the one image
    assert json.loads((out / "results.json").read_text()) == second  # not replaced


def test_limit_into_a_finished_run_keeps_its_results(
    voc: Dataset,
    voc_fresh: tuple[Path, dict],
    tiny_model_args: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    root, _ = voc
    out, fresh = voc_fresh
    before = (out / "res" / "results.json").read_bytes()
    code, err, limited = run(
        ["eval", "--dataset", "voc21", "--data-root", str(root), "--out", str(out / "res")]
        + ["--limit", "2", "--no-progress"]
        + tiny_model_args,
        capsys,
    )
    assert code == 0, err
    assert (out / "res" / "results.json").read_bytes() == before  # the full run's, untouched
    assert limited is not None  # results_limit2.json, from the finished images' counters
    assert limited["num_images"] == 2 and limited["limit"] == 2
    assert limited["resumed_images"] == 2 and limited["processed_images"] == 0
    assert fresh["num_images"] == 3 and fresh["limit"] is None
    assert str(out / "res" / "results_limit2.json") in err
    md = (out / "res" / "results_limit2.md").read_text()
    assert "the first 2 of 3 images" in md


def test_out_naming_a_file_is_a_clear_error(
    voc: Dataset, tiny_model_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, _ = voc
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    base = ["eval", "--dataset", "voc21", "--data-root", str(root), "--no-progress"]
    for dataset in ("voc21", "all"):
        for out in (a_file, a_file / "sub"):
            argv = base + ["--out", str(out)] + tiny_model_args
            argv[argv.index("voc21")] = dataset
            assert main(argv) == 2
            err = capsys.readouterr().err
            assert f"--out {out}" in err and "is a file" in err and "Traceback" not in err
    code = main(base + ["--out", str(tmp_path / "o"), "--save-predictions", str(a_file)])
    err = capsys.readouterr().err
    assert code == 2 and f"--save-predictions {a_file}" in err
    assert a_file.read_text() == "mine"


def test_missing_data_root_and_label(
    tiny_model_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere"
    code = main(
        ["eval", "--dataset", "ade20k", "--data-root", str(missing), "--out", str(tmp_path / "o")]
        + tiny_model_args
    )
    err = capsys.readouterr().err
    assert code == 2 and str(missing) in err

    root = tmp_path / "coco"
    made = make_dataset(root, "coco_stuff", [0, 1], count=2)
    gone = root / PATHS["coco_stuff"][1].format(id=list(made)[1])
    gone.unlink()
    code = main(
        ["eval", "--dataset", "coco_stuff164k", "--data-root", str(root)]
        + ["--out", str(tmp_path / "o")]
        + tiny_model_args
    )
    err = capsys.readouterr().err
    assert code == 2 and str(gone) in err
    assert not (tmp_path / "o" / "results.json").exists()


# ------------------------------------------------------------------------ pieces
def test_network_canvas() -> None:
    from glaclip.model.windows import network_canvas

    assert network_canvas(336, 448, 224) == ((336, 448), (336, 448))
    assert network_canvas(224, 300, 224) == ((224, 300), (224, 300))
    assert network_canvas(160, 208, 224) == ((224, 291), (224, 291))  # 208 * 1.4 = 291.2
    assert network_canvas(100, 40, 224) == ((560, 224), (560, 224))
    # a panorama: enlarging stops at the long-side cap, then the short side is padded
    assert network_canvas(64, 512, 224, max_long_side=512) == ((64, 512), (224, 512))
    assert network_canvas(4, 2048, 224) == ((4, 2048), (224, 2048))
    assert network_canvas(100, 1000, 224, max_long_side=1500) == ((150, 1500), (224, 1500))
    assert network_canvas(100, 3000, 224, max_long_side=2048) == ((100, 3000), (224, 3000))


def test_state_file_torn_and_damaged(tmp_path: Path) -> None:
    config = {"task": {"dataset": "x"}, "settings": {"crop": 224}}
    m = SegMetric(2)
    n = SegMetric.tensor_length(2)
    m.update(np.array([[0, 1]]), np.array([[0, 0]]))
    writer = StateWriter(tmp_path, 0, config)
    writer.add("a", m)
    writer.close()
    path = tmp_path / "rank0.jsonl"
    with open(path, "a") as f:
        f.write('{"id": "b", "cou')
    done = read_state(tmp_path, config, n)
    assert list(done) == ["a"] and done["a"] == m.to_tensor().tolist()
    writer = StateWriter(tmp_path, 0, config)  # cuts the torn tail, appends cleanly
    writer.add("b", m)
    writer.close()
    assert list(read_state(tmp_path, config, n)) == ["a", "b"]
    with pytest.raises(ValueError, match="different evaluation.*settings.crop"):
        read_state(tmp_path, {**config, "settings": {"crop": 112}}, 10)
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "{oops", lines[1]]) + "\n")
    with pytest.raises(ValueError, match="damaged at line 2"):
        read_state(tmp_path, config, n)
    # a state file of the version before the out-of-range label counter
    old = json.loads(lines[0]) | {"glaclip_eval_state": 1}
    path.write_text(json.dumps(old) + "\n")
    with pytest.raises(ValueError, match="another glaclip version .*--restart"):
        read_state(tmp_path, config, n)


def test_evaluation_library_does_not_import_the_cli() -> None:
    import subprocess
    import sys

    code = (
        "import sys, glaclip.evaluation.run as e; "
        "print(sorted(m for m in sys.modules if m in ('glaclip.cli.main', 'glaclip.cli.options')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------ faults
def _small_voc(root: Path) -> dict[str, tuple[int, int]]:
    return make_dataset(root, "voc", [0, 1, 15], count=2, sizes=[(224, 240)])


@pytest.mark.parametrize("damage", ["truncated", "text"])
def test_a_damaged_label_file_is_a_clear_message(
    damage: str, tiny_model_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "VOC2012"
    made = _small_voc(root)
    label = root / PATHS["voc"][1].format(id=list(made)[1])
    data = label.read_bytes()
    label.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"id,class\n1,cat\n")
    out = tmp_path / "o"
    code = main(
        ["eval", "--dataset", "voc21", "--data-root", str(root), "--out", str(out)]
        + ["--no-progress"]
        + tiny_model_args
    )
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    what = "cannot be decoded, truncated or corrupt" if damage == "truncated" else "is not an image"
    assert f"label file {label} {what}" in err
    assert not (out / "results.json").exists()


def test_a_full_disk_during_eval_is_one_line(
    tiny_model_args: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.faults import faulty_disk, full_disk

    root = tmp_path / "VOC2012"
    made = _small_voc(root)
    pred = tmp_path / "pred"
    pred.mkdir()
    faulty_disk(monkeypatch, pred, full_disk())
    out = tmp_path / "o"
    code = main(
        ["eval", "--dataset", "voc21", "--data-root", str(root), "--out", str(out)]
        + ["--save-predictions", str(pred), "--no-progress"]
        + tiny_model_args
    )
    err = capsys.readouterr().err
    first = pred / f"{list(made)[0]}.png"
    assert code == 1 and "Traceback" not in err
    assert f"glaclip: error: cannot write {first}: No space left on device" in err
    assert not list(pred.glob("*.png")) and not (out / "results.json").exists()
    state = (out / STATE_DIR / "rank0.jsonl").read_text().splitlines()
    assert len(state) == 1  # the header only: no image was recorded as finished


# ------------------------------------------------------------------------ output ownership
@pytest.fixture()
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    from glaclip.model import segmenter as segmenter_module

    monkeypatch.setattr(
        segmenter_module.Segmenter, "from_pretrained", lambda *a, **k: pytest.fail("loaded")
    )


def test_predictions_never_go_onto_the_ground_truth(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model: None
) -> None:
    data = tmp_path / "data"
    root = data / "VOCdevkit" / "VOC2012"  # also the layout of --dataset all
    _small_voc(root)
    labels = root / "SegmentationClass"
    before = {p.name: p.read_bytes() for p in labels.iterdir()}
    outside = tmp_path / "gt"  # a label folder linked from outside the data root
    (root / "SegmentationClass").rename(outside)
    labels.symlink_to(outside)
    out = ["--out", str(tmp_path / "o"), "--overwrite"]
    for pred, message in (
        (labels, f"--save-predictions {labels} is the label folder {labels}"),
        (outside, f"--save-predictions {outside} is the label folder {labels}"),
        (root / "preds", f"--save-predictions {root / 'preds'} lies inside the data root {root}"),
    ):
        argv = ["eval", "--dataset", "voc21", "--data-root", str(root), "--save-predictions"]
        assert main([*argv, str(pred), *out]) == 2
        err = capsys.readouterr().err
        assert message in err and "outside it" in err
    argv = ["eval", "--dataset", "all", "--data-root", str(data), "--save-predictions"]
    assert main([*argv, str(data / "preds"), *out]) == 2
    err = capsys.readouterr().err
    assert f"{data / 'preds' / 'voc21'} lies inside the data root {data}" in err
    assert {p.name: p.read_bytes() for p in outside.iterdir()} == before


def test_results_and_predictions_replace_only_glaclips_files(
    tiny_model_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "VOC2012"
    made = _small_voc(root)
    out, pred = tmp_path / "o", tmp_path / "pred"
    pred.mkdir()
    mine = pred / f"{list(made)[0]}.png"
    mine.write_bytes(b"someone's picture")
    argv = ["eval", "--dataset", "voc21", "--data-root", str(root), "--out", str(out)]
    argv += ["--save-predictions", str(pred), "--no-progress"] + tiny_model_args
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"--save-predictions {pred} already holds {mine}, which glaclip did not write" in err
    assert mine.read_bytes() == b"someone's picture" and not out.exists()
    assert main(argv + ["--overwrite"]) == 0
    assert Image.open(mine).size == made[mine.stem][::-1]
    assert main(argv) == 0  # its own files now
    capsys.readouterr()
    (out / "results.md").unlink()
    (out / "results.md").write_text("my notes")
    (out / ".glaclip-outputs").write_text("")  # a folder from before the manifest
    assert main(argv) == 2
    assert f"already holds {out / 'results.json'}, {out / 'results.md'}" in capsys.readouterr().err


def test_a_limit_above_the_image_count_is_the_whole_dataset(
    tiny_model_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "VOC2012"
    _small_voc(root)
    out = tmp_path / "o"
    argv = ["eval", "--dataset", "voc21", "--data-root", str(root), "--out", str(out)]
    assert main(argv + ["--limit", "999999", "--no-progress"] + tiny_model_args) == 0
    assert f"wrote {out / 'results.json'}" in capsys.readouterr().err
    assert sorted(p.name for p in out.glob("results*")) == ["results.json", "results.md"]
    assert json.loads((out / "results.json").read_text())["limit"] is None


# ------------------------------------------------------------------------ base methods' protocols
@pytest.mark.parametrize(
    ("flags", "protocol"),
    [
        (  # SCLIP's configs/cfg_voc21.py
            ["--base", "sclip"],
            {"logit_scale": 65.0, "prob_threshold": 0.1, "area_threshold": 0.1, "pamr_steps": 0},
        ),
        (  # NACLIP's configs/cfg_voc21.py and README: the whole image, PAMR on
            ["--base", "naclip", "--no-kv-extension"],
            {"whole_image": True, "pamr_steps": 10, "pamr_dilations": [8, 16]},
        ),
    ],
    ids=["sclip", "naclip"],
)
def test_eval_follows_the_base_methods_protocol(
    flags: list[str],
    protocol: dict,
    voc: Dataset,
    tiny_model_args: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``eval --dataset voc21 --base B`` runs the preset with B's own protocol (its authors'
    config for the benchmark), writes it in results.json, and its metrics are those of its
    saved predictions."""
    root, made = voc
    args = ["eval", "--dataset", "voc21", "--data-root", str(root), "--out", str(tmp_path / "r")]
    args += ["--save-predictions", str(tmp_path / "pred"), "--no-progress", *flags]
    code, err, results = run(args + tiny_model_args, capsys)
    assert code == 0, err
    settings = results["settings"]
    assert {k: settings[k] for k in protocol} == protocol
    assert settings["base"] == flags[1] and settings["background_index"] == 0
    preds, labels = [], []
    for sid, (h, w) in made.items():
        preds.append(np.array(Image.open(tmp_path / "pred" / f"{sid}.png")).astype(np.int64))
        assert preds[-1].shape == (h, w)
        label_path = root / PATHS["voc"][1].format(id=sid, city="")
        labels.append(ground_truth(label_path, False))
    for key, value in rescore(preds, labels, 21).items():
        assert results[key] == pytest.approx(value, abs=1e-6)
