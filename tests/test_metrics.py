"""Metrics on hand-computed cases: mmseg IoU semantics and the boundary error rate."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from glaclip.data.datasets import reduce_zero_label
from glaclip.evaluation.metrics import SegMetric, boundary_counts


def test_hand_computed_confusion() -> None:
    # Pixels kept (label != 255), as (pred, label): (0,0) (1,0) (1,1) (1,1) (0,2).
    label = np.array([[0, 0, 1], [1, 2, 255]], dtype=np.uint8)
    pred = np.array([[0, 1, 1], [1, 0, 2]], dtype=np.int64)
    m = SegMetric(3)
    m.update(pred, label)
    assert m.intersect.tolist() == [1, 2, 0]
    assert m.pred_area.tolist() == [2, 3, 0]  # the pred 2 sits on an ignored pixel
    assert m.label_area.tolist() == [2, 2, 1]
    assert m.union.tolist() == [3, 3, 1]
    s = m.summary(["a", "b", "c"])
    assert s["mIoU"] == pytest.approx((100 / 3 + 200 / 3 + 0) / 3)
    assert s["mAcc"] == pytest.approx((50 + 100 + 0) / 3)
    assert s["aAcc"] == pytest.approx(60.0)
    assert [c["IoU"] for c in s["per_class"]] == pytest.approx([100 / 3, 200 / 3, 0.0])
    assert s["BER"] is None  # no boundary pair counted


def test_predicted_but_absent_class_counts_and_absent_class_excluded() -> None:
    label = np.array([[0, 0], [1, 1]])
    pred = np.array([[0, 2], [1, 1]])
    m = SegMetric(4)
    m.update(pred, label)
    s = m.summary(["zero", "one", "two", "three"])
    iou = [c["IoU"] for c in s["per_class"]]
    acc = [c["Acc"] for c in s["per_class"]]
    assert iou[:3] == pytest.approx([50.0, 100.0, 0.0])
    assert iou[3] is None  # neither labelled nor predicted
    assert acc[:2] == pytest.approx([50.0, 100.0])
    assert acc[2] is None and acc[3] is None  # no labelled pixel
    assert s["mIoU"] == pytest.approx(50.0)  # (50 + 100 + 0) / 3, class 3 excluded
    assert s["mAcc"] == pytest.approx(75.0)  # (50 + 100) / 2
    assert s["aAcc"] == pytest.approx(75.0)  # 3 of 4
    json.dumps(s)  # JSON-ready: None becomes null
    assert "null" in json.dumps(s)


def test_out_of_range_prediction_is_wrong_and_in_no_class() -> None:
    m = SegMetric(2)
    m.update(np.array([[255, 1]]), np.array([[0, 1]]))
    assert m.pred_area.tolist() == [0, 1]
    assert m.union.tolist() == [1, 1]
    s = m.summary(["a", "b"])
    assert s["aAcc"] == pytest.approx(50.0)
    assert s["mIoU"] == pytest.approx(50.0)


def test_accumulates_over_images_not_per_image_mean() -> None:
    m = SegMetric(2)
    m.update(np.array([[0, 0, 0, 0]]), np.array([[0, 0, 0, 1]]))  # class 0 IoU 3/4
    m.update(np.array([[1]]), np.array([[1]]))
    # class 0: inter 3, union 4; class 1: inter 1, pred 1, label 2 -> union 2
    s = m.summary(["a", "b"])
    assert [c["IoU"] for c in s["per_class"]] == pytest.approx([75.0, 50.0])
    assert s["aAcc"] == pytest.approx(80.0)


def test_errors() -> None:
    m = SegMetric(3)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        m.update(np.zeros((2, 3), np.int64), np.zeros((3, 2), np.int64))
    with pytest.raises(ValueError, match="2 class names"):
        m.summary(["a", "b"])
    with pytest.raises(ValueError, match="integer"):
        m.update(np.zeros((1, 2)), np.zeros((1, 2), np.int64))


def test_labels_outside_the_classes_count_as_in_mmseg() -> None:
    # C = 3. Kept pixels (label != 255), as (pred, label):
    # (0,0) (1,7) (1,1) (7,7) (2,2) (5,9) (0,-1); the (2,255) pixel is ignored.
    label = np.array([[0, 7, 1, 7], [255, 2, 9, -1]], dtype=np.int64)
    pred = np.array([[0, 1, 1, 7], [2, 2, 5, 0]], dtype=np.int64)
    m = SegMetric(3)
    m.update(pred, label)
    assert m.label_area.tolist() == [1, 1, 1]  # 7, 9 and -1 are in no class's label area
    assert m.intersect.tolist() == [1, 1, 1]  # (7,7) agrees but 7 is no class
    assert m.pred_area.tolist() == [2, 2, 1]  # the 0 on label -1 and the 1 on label 7 count
    assert m.union.tolist() == [2, 2, 1]
    assert m.label_outside == 4
    s = m.summary(["a", "b", "c"])
    assert s["mIoU"] == pytest.approx((50 + 50 + 100) / 3)
    assert s["aAcc"] == pytest.approx(100.0)  # 3 of the 3 pixels with a class label
    assert s["mAcc"] == pytest.approx(100.0)


def _mmseg_intersect_and_union(
    pred: torch.Tensor, label: torch.Tensor, num_classes: int, ignore_index: int
) -> list[torch.Tensor]:
    """mmsegmentation 1.x ``IoUMetric.intersect_and_union``, as published (torch.histc)."""
    mask = label != ignore_index
    pred, label = pred[mask], label[mask]
    intersect = pred[pred == label]

    def hist(t: torch.Tensor) -> torch.Tensor:
        return torch.histc(t.float(), bins=num_classes, min=0, max=num_classes - 1)

    area_i, area_p, area_l = hist(intersect), hist(pred), hist(label)
    return [area_i, area_p + area_l - area_i, area_p, area_l]


def test_matches_mmseg_histc_with_labels_outside_the_classes() -> None:
    rng = np.random.default_rng(3)
    total = SegMetric(6)
    expected = [torch.zeros(6) for _ in range(4)]
    for _ in range(5):
        label = rng.integers(-2, 9, size=(30, 40))  # -2, -1, 6, 7, 8 are outside [0, 6)
        label[rng.random(label.shape) < 0.1] = 255
        pred = rng.integers(0, 9, size=(30, 40))
        total.update(pred, label)
        parts = _mmseg_intersect_and_union(torch.from_numpy(pred), torch.from_numpy(label), 6, 255)
        expected = [e + p for e, p in zip(expected, parts, strict=True)]
    got = [total.intersect, total.union, total.pred_area, total.label_area]
    for g, e in zip(got, expected, strict=True):
        assert g.tolist() == e.long().tolist()
    assert total.label_outside > 0


def test_ber_leaves_out_labels_outside_the_classes() -> None:
    # 224x336: seams x=112 and x=224, 224 pairs each.
    label = np.zeros((224, 336), np.int64)
    pred = np.zeros((224, 336), np.int64)
    label[0:10, 111:113] = 7  # 10 pairs at seam 112 whose equal labels name no class
    pred[0:10, 112] = 1  # ... predicted differently
    assert boundary_counts(pred, label, resized_hw=(224, 336)) == (10, 448)
    assert boundary_counts(pred, label, resized_hw=(224, 336), num_classes=3) == (0, 438)
    m = SegMetric(3)
    m.update_ber(pred, label, resized_hw=(224, 336))
    assert (m.ber_diff, m.ber_total) == (0, 438)


def test_reduce_zero_label() -> None:
    label = np.array([[0, 1, 2], [255, 3, 0]], dtype=np.uint8)
    out = reduce_zero_label(label)
    assert out.dtype == np.uint8
    assert out.tolist() == [[255, 0, 1], [255, 2, 255]]
    assert label.tolist() == [[0, 1, 2], [255, 3, 0]]  # input untouched
    m = SegMetric(3)
    m.update(np.array([[0, 1, 0], [2, 2, 2]]), out)  # kept: (1,0) (0,1) (2,2)
    assert m.label_area.tolist() == [1, 1, 1]  # three pixels ignored
    assert m.intersect.tolist() == [0, 0, 1]


def _random_pairs(seed: int, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        label = rng.integers(0, 5, size=(40, 60))
        label[rng.random(label.shape) < 0.1] = 255
        label[rng.random(label.shape) < 0.05] = 7  # outside the 5 classes
        out.append((rng.integers(0, 5, size=(40, 60)), label))
    return out


def test_merge_and_tensor_round_trip_equal_single_accumulation() -> None:
    pairs = _random_pairs(0, 6)
    single, a, b = SegMetric(5), SegMetric(5), SegMetric(5)
    for k, (pred, label) in enumerate(pairs):
        for m in (single, a if k < 3 else b):
            m.update(pred, label)
            m.update_ber(pred, label, resized_hw=(224, 336))
    merged = SegMetric(5)
    merged.merge(a)
    merged.merge(b)
    reduced = SegMetric.from_tensor(a.to_tensor() + b.to_tensor(), 5)  # as all_reduce(SUM)
    from_float = SegMetric.from_tensor((a.to_tensor() + b.to_tensor()).double(), 5)
    assert single.ber_total > 0 and single.intersect.sum() > 0 and single.label_outside > 0
    for m in (merged, reduced, from_float):
        assert torch.equal(m.to_tensor(), single.to_tensor())
        assert m.summary(list("abcde")) == single.summary(list("abcde"))
    assert single.to_tensor().shape == (4 * 5 + 3,)
    assert reduced.label_outside == a.label_outside + b.label_outside == single.label_outside
    with pytest.raises(ValueError, match="23 entries"):
        SegMetric.from_tensor(torch.zeros(5), 5)
    with pytest.raises(ValueError, match="merge"):
        single.merge(SegMetric(4))


def test_ber_one_window_row_two_seams() -> None:
    # 224x336: windows x 0:224 and 112:336 -> seams x=112 and x=224, no horizontal seam.
    label = np.zeros((224, 336), np.int64)
    pred = np.zeros((224, 336), np.int64)
    label[0:10, 111] = 255  # 10 pairs at seam 112 ignored
    label[100:105, 224:] = 2  # 5 pairs at seam 224 with different labels: not counted
    pred[100:105, 224:] = 2
    pred[50:60, 224:] = 1  # 10 pairs at seam 224 predicted differently
    pred[0:20, 5] = 1  # a prediction change away from any seam: not counted
    diff, total = boundary_counts(pred, label, resized_hw=(224, 336))
    assert total == (224 - 10) + (224 - 5)
    assert diff == 10
    m = SegMetric(3)
    m.update_ber(pred, label, resized_hw=(224, 336))
    assert m.summary(["a", "b", "c"])["BER"] == pytest.approx(100 * 10 / 433)


def test_ber_horizontal_and_vertical_seams() -> None:
    label = np.ones((336, 336), np.int64)
    pred = np.ones((336, 336), np.int64)
    pred[112:, 0:10] = 2  # differs across the horizontal seam y=112 on 10 columns
    diff, total = boundary_counts(pred, label, resized_hw=(336, 336))
    assert total == 4 * 336  # seams x=112, x=224, y=112, y=224
    assert diff == 10


def test_ber_maps_resized_edges_with_rounding() -> None:
    # Resized 224x336, original 100x155: x edges 112 -> int(51.67 + 0.5) = 52, 224 -> 103.
    label = np.zeros((100, 155), np.int64)
    pred = np.zeros((100, 155), np.int64)
    pred[0:7, 52:] = 1  # 7 diffs at seam 52
    pred[20:23, 103:] = 3  # 3 diffs at seam 103
    pred[40:45, 51:] = 4  # would differ at a truncated seam 51, not at 52
    diff, total = boundary_counts(pred, label, resized_hw=(224, 336))
    assert (diff, total) == (10, 200)


def test_ber_drops_duplicate_and_border_edges() -> None:
    # W0 = 2: both edges map to x = 1 -> one seam, 2 rows.
    assert boundary_counts(np.zeros((2, 2), int), np.zeros((2, 2), int), (224, 336)) == (0, 2)
    # W0 = 1: the edges land on 0 and on the border -> no seam at all.
    m = SegMetric(1)
    m.update_ber(np.zeros((3, 1), int), np.zeros((3, 1), int), (224, 336))
    assert m.ber_total == 0 and m.ber is None


def test_ber_seams_of_a_padded_canvas() -> None:
    """Windows tiled a 224 x 512 canvas whose image part is 64 x 512 (a padded panorama): the
    seams are mapped with the image part's scale (x: 1000 / 512)."""
    label = np.zeros((10, 1000), np.int64)
    pred = np.zeros((10, 1000), np.int64)
    pred[:, 219:] = 1  # a change exactly across the first seam, x = 112 -> 218.75 -> 219
    # inner edges 112, 224, 288, 336, 448 -> 219, 438, 563, 656, 875; no horizontal seam
    diff, total = boundary_counts(pred, label, (224, 512), content_hw=(64, 512))
    assert (diff, total) == (10, 50)
    pred[:, 219:] = 0
    pred[:, 438:] = 1
    assert boundary_counts(pred, label, (224, 512), content_hw=(64, 512)) == (10, 50)
