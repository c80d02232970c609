from __future__ import annotations

import itertools

import numpy as np
import pytest

from glaclip.io.palette import make_palette
from glaclip.io.viz import LegendEntry, legend_entries, legend_line, overlay
from glaclip.model.results import pixel_shares


def _scene(h: int = 60, w: int = 80) -> tuple[np.ndarray, np.ndarray]:
    rgb = np.random.default_rng(0).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    labels = np.zeros((h, w), dtype=np.int64)
    labels[:, w // 2 :] = 2
    labels[: h // 4, : w // 4] = 255  # unlabelled block
    return rgb, labels


def test_palette_first_entries_distinct() -> None:
    pal = make_palette(21)
    assert pal.shape == (21, 3) and pal.dtype == np.uint8
    np.testing.assert_array_equal(pal[:3], [[0, 0, 0], [128, 0, 0], [0, 128, 0]])
    dists = [
        np.linalg.norm(a.astype(float) - b.astype(float)) for a, b in itertools.combinations(pal, 2)
    ]
    assert min(dists) >= 64


def test_palette_sizes_and_determinism() -> None:
    pal = make_palette(256)
    assert pal.shape == (256, 3) and len({tuple(c) for c in pal}) == 256
    np.testing.assert_array_equal(make_palette(21), pal[:21])
    big = make_palette(300)
    np.testing.assert_array_equal(big[:256], pal)
    np.testing.assert_array_equal(big, make_palette(300))


def test_pixel_shares() -> None:
    labels = np.array([[0, 0, 1, 7], [1, 1, -1, 0]])
    assert pixel_shares(labels, 3) == pytest.approx([3 / 8, 3 / 8, 0.0])


def test_legend_lists_only_present_classes() -> None:
    _, labels = _scene()
    names = ["sky", "tree", "road", "car"]
    entries = legend_entries(labels, names)
    assert [e.name for e in entries] == ["road", "sky", "unlabelled"]
    assert entries[0] == LegendEntry(2, "road", 0.5)
    assert entries[-1].label is None
    assert sum(e.share for e in entries) == pytest.approx(1.0)


def test_legend_never_reads_zero_percent_for_a_class_present() -> None:
    labels = np.zeros((100, 100), np.int32)
    labels[0, :3] = 1  # 3 pixels of 10,000: 0.03 %
    labels[1, :5] = 2  # 0.05 %, which rounds to 0.1 %
    lines = [legend_line(e) for e in legend_entries(labels, ["sky", "kite", "bird"])]
    assert lines == ["sky  99.9%", "bird  0.1%", "kite  <0.1%"]


def test_legend_unlabeled_index_is_merged() -> None:
    labels = np.array([[0, 1], [1, 1]])
    entries = legend_entries(labels, ["bg", "cat"], unlabeled_index=0)
    assert [(e.label, e.name) for e in entries] == [(1, "cat"), (None, "unlabelled")]
    assert entries[1].share == pytest.approx(0.25)
    assert [e.name for e in legend_entries(labels, ["bg", "cat"])] == ["cat", "bg"]


def test_overlay_shape_colours_and_unlabelled() -> None:
    rgb, labels = _scene()
    h, w = labels.shape
    inner = (slice(h // 2, h - 2), slice(w // 2 + 3, w - 2))  # road, away from borders
    rgb[inner] = (100, 200, 30)
    names = ["sky", "tree", "road", "car"]
    out = overlay(rgb, labels, names, alpha=0.5)
    assert out.dtype == np.uint8 and out.shape[0] >= h and out.shape[1] > w
    img = out[:h, :w]
    unl = labels == 255
    np.testing.assert_array_equal(img[unl], rgb[unl])
    lab = ~unl
    # every labelled pixel differs from the original
    assert (np.abs(img[lab].astype(int) - rgb[lab].astype(int)).sum(axis=1) > 0).all()
    # by hand: road is class 2, VOC colour (0, 128, 0); half of (100, 200, 30) and half of it
    assert (img[inner] == (50, 164, 15)).all()
    # a class border is drawn in white on the labelled side
    assert (img[h // 2, w // 2] == 255).all()
    # the legend panel is not blank
    assert (out[:, w:] != 255).any()


def test_overlay_alpha_zero_without_boundaries_is_identity() -> None:
    rgb, labels = _scene()
    out = overlay(rgb, labels, ["a", "b", "c"], alpha=0.0, draw_boundaries=False)
    np.testing.assert_array_equal(out[: rgb.shape[0], : rgb.shape[1]], rgb)


def test_overlay_legend_scales_with_image() -> None:
    small_rgb, small_lab = _scene(200, 200)
    big_rgb, big_lab = _scene(1000, 1000)
    names = ["sky", "tree", "road"]
    small = overlay(small_rgb, small_lab, names)
    big = overlay(big_rgb, big_lab, names)
    assert big.shape[1] - 1000 > small.shape[1] - 200 > 0


def test_overlay_long_legend_flows_into_columns() -> None:
    # 60 classes beside a 300-pixel-high image: the entries flow into columns beside it
    # instead of making the overlay several times taller than the photo.
    h, w = 300, 400
    labels = np.repeat(np.arange(60), w * h // 60).reshape(h, w)
    rgb = np.full((h, w, 3), 128, np.uint8)
    out = overlay(rgb, labels, [f"class {i}" for i in range(60)], draw_boundaries=False)
    assert out.shape[0] == h
    assert (out[:, w:] != 255).any(axis=2).any(axis=1)[h - 30 :].any()  # used to the bottom


def test_overlay_tall_legend_extends_canvas(monkeypatch: pytest.MonkeyPatch) -> None:
    # Forty entries beside a 4-pixel-high image: MAX_LEGEND_COLUMNS columns, and the canvas
    # grows below the image; with one column allowed it grows four times as far.
    from glaclip.io import viz

    labels = np.arange(40).reshape(4, 10)
    rgb = np.zeros((4, 10, 3), np.uint8)
    names = [f"class {i}" for i in range(40)]
    four = overlay(rgb, labels, names)
    monkeypatch.setattr(viz, "MAX_LEGEND_COLUMNS", 1)
    one = overlay(rgb, labels, names)
    assert one.shape[0] > 40 * 11  # forty rows of at least 11-pixel swatches
    assert 4 < four.shape[0] < one.shape[0] / 3
    assert four.shape[1] - 10 > 3 * (one.shape[1] - 10)


def test_overlay_validates_inputs() -> None:
    rgb, labels = _scene()
    with pytest.raises(ValueError, match="shape"):
        overlay(rgb, labels[:-1], ["a"])
    with pytest.raises(ValueError, match="palette"):
        overlay(rgb, labels, ["a", "b", "c"], palette=make_palette(2))


@pytest.mark.parametrize("unlabeled", [None, 3])
def test_overlay_in_bands_equals_one_band(monkeypatch: pytest.MonkeyPatch, unlabeled) -> None:
    # 1,600 rows: boundaries 2 px thick, so a band needs labels beyond its own rows; bands of
    # 7 rows put a seam next to every kind of border of the random blobs.
    rng = np.random.default_rng(3)
    small = rng.integers(0, 5, size=(40, 5))
    labels = np.kron(small, np.ones((40, 40), dtype=np.int64))[:1600, :200]
    labels[rng.random(labels.shape) < 0.001] = 1  # isolated pixels: edges on both sides
    rgb = rng.integers(0, 256, size=(1600, 200, 3), dtype=np.uint8)
    names = ["a", "b", "c", "d", "e"]
    whole = overlay(rgb, labels, names, unlabeled_index=unlabeled)
    from glaclip.io import viz

    monkeypatch.setattr(viz, "_CHUNK", 7 * 200)
    banded = overlay(rgb, labels, names, unlabeled_index=unlabeled)
    np.testing.assert_array_equal(banded, whole)
    edges = (whole[:1600, :200] == 255).all(axis=2) & (rgb != 255).any(axis=2)
    assert edges.sum() > 1000  # the comparison covers many boundary pixels


def test_labelled_share_counts_only_classes(monkeypatch: pytest.MonkeyPatch) -> None:
    from glaclip.io import viz

    labels = np.array([[0, 1, 2, 3], [255, -1, 1, 65535], [2, 2, 4, 0]], dtype=np.int32)
    monkeypatch.setattr(viz, "_CHUNK", 5)  # several chunks, a short last one
    assert viz.labelled_share(labels, 3) == 7 / 12  # 0, 1, 2 only
    assert viz.labelled_share(labels.astype(np.uint16), 5) == 9 / 12  # -1 wraps to 65535
    assert viz.labelled_share(np.zeros((0, 4), np.int32), 3) == 0.0
