"""The check of a data root (``glaclip eval ... --check``) and the time estimate."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glaclip.cli.main import main
from glaclip.config import Settings, settings_from_kwargs
from glaclip.data.check import check_preset, scan_dataset
from glaclip.data.presets import PRESETS
from glaclip.evaluation.estimate import DeviceSpeed, estimate_seconds, image_flops, measure_speed


def _image(path: Path, h: int, w: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), (10, 20, 30)).save(path)


def _label(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint8)).save(path)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """VOC2012 with one image missing, one label of another size and one value out of range;
    ADE20K with a value above its 150 classes; no other benchmark."""
    voc = tmp_path / "VOCdevkit/VOC2012"
    ids = ["a", "b", "c", "d"]
    for sid in ids:
        _image(voc / f"JPEGImages/{sid}.jpg", 4, 6)
        _label(voc / f"SegmentationClass/{sid}.png", np.full((4, 6), 1))
    (voc / "JPEGImages/b.jpg").unlink()  # missing image
    _label(voc / "SegmentationClass/c.png", np.full((5, 6), 1))  # another size
    _label(voc / "SegmentationClass/d.png", np.array([[0, 20, 255, 21, 40, 1]] * 4))
    (voc / "ImageSets/Segmentation").mkdir(parents=True)
    (voc / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids) + "\n")
    ade = tmp_path / "ADEChallengeData2016"
    _image(ade / "images/validation/x.jpg", 4, 6)
    _label(ade / "annotations/validation/x.png", np.array([[0, 150, 151, 1, 1, 1]] * 4))
    return tmp_path


def test_scan_and_preset_checks(root: Path) -> None:
    scan = scan_dataset("voc", root / "VOCdevkit/VOC2012", progress=False)
    assert (scan.listed, scan.images, scan.labels, scan.read) == (4, 3, 4, 3)
    assert scan.missing_images == ["JPEGImages/b.jpg"]
    assert scan.wrong_size == ["c.png (5x6, image 4x6)"]
    voc21 = check_preset(PRESETS["voc21"], scan)
    assert voc21.outside == ["d.png (21, 40)"]  # 0..20 and 255 are VOC21's
    # VOC20 reduces zero: 0 -> ignored, 21 -> 20 is outside its 20 classes too, 40 as well
    assert check_preset(PRESETS["voc20"], scan).outside == ["d.png (21, 40)"]
    assert not voc21.ok
    ade = check_preset(PRESETS["ade20k"], scan_dataset("ade20k", root / "ADEChallengeData2016"))
    assert ade.outside == ["x.png (151)"]  # 150 -> 149 is the last class after reduction


def test_eval_check_prints_the_summary_and_loads_no_model(
    root: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    import glaclip.cli.options as cli
    import glaclip.evaluation.estimate as estimate

    speed = DeviceSpeed(torch.device("cpu"), "Test CPU (2 threads)", 1e11)
    monkeypatch.setattr(estimate, "measure_speed", lambda device: speed)
    monkeypatch.setattr(cli, "build_segmenter", lambda *a, **k: pytest.fail("a model loaded"))
    argv = ["eval", "--dataset", "all", "--check", "--data-root", str(root), "--no-progress"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    lines = err.splitlines()
    voc21 = next(line for line in lines if line.strip().startswith("VOC21"))
    assert "3 images, 4 labels (official val: 1,449)" in voc21 and "PROBLEMS" in voc21
    assert "images missing (1):" in err and "b.jpg" in err
    assert "labels of another size (1): c.png (5x6, image 4x6)" in err
    assert "values outside 0..20 and 255 (1): d.png (21, 40)" in err
    assert "values outside 0..149 and 255 (1): x.png (151)" in err
    assert any("Context60" in line and "not found" in line for line in lines)
    assert "Test CPU (2 threads)" in err and "estimate" in err.lower()
    # one benchmark, its own folder; --out is not needed with --check
    argv = ["eval", "--dataset", "ade20k", "--check", "--data-root"]
    assert main([*argv, str(root / "ADEChallengeData2016"), "--no-progress"]) == 1
    assert "x.png (151)" in capsys.readouterr().err
    # its own flags count: without reduce_zero_label, 150 and 151 are outside 0..149
    ade = [*argv, str(root / "ADEChallengeData2016"), "--no-reduce-zero-label", "--no-progress"]
    assert main(ade) == 1
    assert "x.png (150, 151)" in capsys.readouterr().err
    classes = root / "c.txt"
    classes.write_text("\n".join(f"c{i}" for i in range(152)) + "\n")
    assert main([*ade, "--class-file", str(classes)]) == 1  # counts still differ: 1 of 2,000
    err = capsys.readouterr().err
    assert "outside" not in err and "1 image, 1 label (official val: 2,000)" in err


def test_image_flops_at_the_benchmarked_sizes() -> None:
    """BENCHMARKS.md: 336x448 gives 6 windows and N = 4,704 tokens (DINO's 8-pixel grid),
    560x1120 gives 36 windows and 28,224; ClearCLIP's 16-pixel grid a quarter of the tokens."""
    paper = Settings()
    backbones, attention = image_flops(336, 448, paper)
    assert backbones == pytest.approx(6 * (0.156e12 + 0.031e12))
    assert attention == pytest.approx(4704**2 * 8.0e3)
    city = settings_from_kwargs(short_side=560)
    assert image_flops(560, 1120, city)[1] == pytest.approx(28224**2 * 8.0e3)
    assert image_flops(1024, 2048, city)[1] == pytest.approx(28224**2 * 8.0e3)  # same network size
    clear = settings_from_kwargs(base="clearclip")
    assert image_flops(336, 448, clear) == pytest.approx((6 * 0.031e12, 1176**2 * 8.0e3))
    per_window = settings_from_kwargs(kv_extension=False)
    assert image_flops(336, 448, per_window)[1] == pytest.approx(6 * 784**2 * 8.0e3)
    speed = DeviceSpeed(torch.device("cpu"), "cpu", 1e11)
    seconds = estimate_seconds([(336, 448)] * 2, paper, speed)
    assert seconds == pytest.approx(2 * (1.122e12 / 0.7 + 0.177e12) / 1e11, rel=1e-2)


def test_measure_speed_on_the_cpu() -> None:
    speed = measure_speed(torch.device("cpu"), seconds=0.02)
    assert 1e8 < speed.flops_per_second < 1e14
    assert re.search(r"\d+ threads?\b", speed.name)  # "1 thread", "2 threads"
