"""Segmentation metrics: mmsegmentation's IoUMetric and the boundary error rate (SPEC 11).

``SegMetric`` accumulates, over a whole dataset, per-class areas exactly like mmseg's
``IoUMetric.intersect_and_union`` (per image: drop ignored pixels, histogram over ``[0, C)``)
and the boundary error rate (BER) counts. All counters are int64, so a distributed evaluator
can ``all_reduce(SUM)`` the tensor of ``to_tensor()`` and rebuild the metric exactly.

Labels outside ``[0, C)`` that are not the ignore value are counted as mmseg counts them
(its ``torch.histc`` over ``[0, C-1]`` drops them from the label and intersection areas,
while the predictions on those pixels stay in the prediction area and so in the union), and
their number is kept in ``SegMetric.label_outside`` so that a report can show it.

Boundary counts (``boundary_counts``). The seams are the inner edges of the windows the network
saw (``ImageFeatures.windows``; one window over the whole image has none) on the canvas the
windows tiled, ``(H, W)``, of which the image occupies the top-left ``(Hc, Wc)`` (all of it, or
less where a panorama was padded, ``network_canvas``). They are mapped to the original size
``(H0, W0)`` with ``int(e * W0 / Wc + 0.5)`` (x) and ``int(e * H0 / Hc + 0.5)`` (y); duplicates
and edges landing on 0, on the border or beyond it are dropped. A vertical seam ``e`` pairs
pixels ``(y, e-1)`` and ``(y, e)`` on every row, a horizontal seam pairs ``(e-1, x)`` and
``(e, x)`` on every column. ``total`` counts the pairs whose two labels are equal and not the
ignore value (nor, when the number of classes is given, outside ``[0, C)``); ``diff`` those of
them whose two predictions differ.

No mmseg or mmcv dependency.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from glaclip.model.windows import Window, inner_edges, window_grid


def _check_pair(pred: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred)
    label = np.asarray(label)
    if pred.shape != label.shape:
        raise ValueError(
            f"prediction shape {pred.shape} differs from label shape {label.shape}: "
            "resize the prediction to the label's size first"
        )
    for name, arr in (("prediction", pred), ("label", label)):
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{name} must be an integer array, got dtype {arr.dtype}")
    return pred.astype(np.int64, copy=False), label.astype(np.int64, copy=False)


def _map_edges(edges: list[int], size: int, original: int) -> list[int]:
    """Edges of the resized image (``size``) to the original size, ``int(e*orig/size + 0.5)``."""
    mapped = {int(e * original / size + 0.5) for e in edges}
    return sorted(e for e in mapped if 0 < e < original)


def boundary_counts(
    pred: np.ndarray,
    label: np.ndarray,
    resized_hw: tuple[int, int],
    crop: int = 224,
    stride: int = 112,
    ignore_index: int = 255,
    num_classes: int | None = None,
    content_hw: tuple[int, int] | None = None,
    windows: list[Window] | None = None,
) -> tuple[int, int]:
    """Boundary error rate counts of one image, ``(diff, total)``: over the pixel pairs across
    the window seams, mapped to the label's size (the module docstring says how).

    Args:
        pred: ``H0 x W0`` integer predicted labels.
        label: ``H0 x W0`` integer ground truth.
        resized_hw: ``(H, W)``, the canvas the windows tiled.
        num_classes: C; labels outside ``[0, C)`` then count like ``ignore_index``.
        content_hw: ``(Hc, Wc)``, the image's part of the canvas (default ``resized_hw``).
        windows: the windows the network saw, as ``ImageFeatures.windows`` holds them
            (default ``window_grid(H, W, crop, stride)``).

    Raises:
        ValueError: ``pred`` and ``label`` differ in shape, are not integer or not 2-D.
    """
    pred, label = _check_pair(pred, label)
    if pred.ndim != 2:
        raise ValueError(f"expected H x W label maps, got shape {pred.shape}")
    h0, w0 = label.shape
    h, w = resized_hw
    hc, wc = content_hw or resized_hw
    windows = windows if windows is not None else window_grid(h, w, crop, stride)
    x_edges, y_edges = inner_edges(windows, h, w)
    xs = np.asarray(_map_edges(x_edges, wc, w0), dtype=np.int64)
    ys = np.asarray(_map_edges(y_edges, hc, h0), dtype=np.int64)
    diff = total = 0
    pairs = (
        (label[:, xs - 1], label[:, xs], pred[:, xs - 1], pred[:, xs]),
        (label[ys - 1, :], label[ys, :], pred[ys - 1, :], pred[ys, :]),
    )
    for la, lb, pa, pb in pairs:
        valid = (la == lb) & (la != ignore_index)
        if num_classes is not None:
            valid &= (la >= 0) & (la < num_classes)
        total += int(valid.sum())
        diff += int((valid & (pa != pb)).sum())
    return diff, total


def _zeros() -> np.ndarray:
    return np.zeros(0, dtype=np.int64)


@dataclass(eq=False)
class SegMetric:
    """Dataset-level accumulator of mmseg IoU areas and BER counts for ``num_classes`` classes.

    Attributes:
        num_classes: C.
        intersect, union, pred_area, label_area: ``(C,)`` int64 pixel counts.
        ber_diff, ber_total: boundary-pair counts (see ``boundary_counts``).
        label_outside: labelled pixels (not ``ignore_index``) whose label is outside
            ``[0, C)``: in no class's label area (mmseg's rule); usually a sign of a wrong
            preset, vocabulary or reduce_zero_label setting.
    """

    num_classes: int
    intersect: np.ndarray = field(default_factory=_zeros)
    union: np.ndarray = field(default_factory=_zeros)
    pred_area: np.ndarray = field(default_factory=_zeros)
    label_area: np.ndarray = field(default_factory=_zeros)
    ber_diff: int = 0
    ber_total: int = 0
    label_outside: int = 0

    @staticmethod
    def tensor_length(num_classes: int) -> int:
        """Length of ``to_tensor()`` for ``num_classes`` classes: ``4*C + 3``."""
        return 4 * num_classes + 3

    def __post_init__(self) -> None:
        if self.num_classes <= 0:
            raise ValueError(f"num_classes must be positive, got {self.num_classes}")
        c = self.num_classes
        for name in ("intersect", "union", "pred_area", "label_area"):
            arr = np.asarray(getattr(self, name), dtype=np.int64)
            if arr.size == 0:
                arr = np.zeros(c, dtype=np.int64)
            if arr.shape != (c,):
                raise ValueError(f"{name} must have shape ({c},), got {arr.shape}")
            setattr(self, name, arr.copy())

    def update(self, pred: np.ndarray, label: np.ndarray, ignore_index: int = 255) -> None:
        """Add one image, exactly like mmseg's ``IoUMetric.intersect_and_union``.

        Pixels labelled ``ignore_index`` are dropped. Of the others, a label outside
        ``[0, C)`` belongs to no class's label area and to no intersection, while the
        prediction on that pixel still counts in its class's prediction area (hence union);
        such pixels are counted in ``label_outside``.

        Args:
            pred: ``H x W`` integer predicted labels; values outside ``[0, C)`` (e.g. 255) are
                wrong everywhere and belong to no class's predicted area.
            label: ``H x W`` integer ground truth: ``[0, C)``, ``ignore_index``, or (counted
                as above) anything else.

        Raises:
            ValueError: shapes differ or non-integer input.
        """
        pred, label = _check_pair(pred, label)
        c = self.num_classes
        keep = label != ignore_index
        pred = pred[keep]
        label = label[keep]
        inside = (label >= 0) & (label < c)
        hit = label[(pred == label) & inside]
        inter = np.bincount(hit, minlength=c)
        p_area = np.bincount(pred[(pred >= 0) & (pred < c)], minlength=c)
        l_area = np.bincount(label[inside], minlength=c)
        self.intersect += inter
        self.pred_area += p_area
        self.label_area += l_area
        self.union += p_area + l_area - inter
        self.label_outside += int(label.size - np.count_nonzero(inside))

    def update_ber(
        self,
        pred: np.ndarray,
        label: np.ndarray,
        resized_hw: tuple[int, int],
        crop: int = 224,
        stride: int = 112,
        ignore_index: int = 255,
        content_hw: tuple[int, int] | None = None,
        windows: list[Window] | None = None,
    ) -> None:
        """Add one image's boundary error rate counts (``boundary_counts``)."""
        diff, total = boundary_counts(
            pred, label, resized_hw, crop, stride, ignore_index, self.num_classes, content_hw,
            windows,
        )  # fmt: skip
        self.ber_diff += diff
        self.ber_total += total

    def merge(self, other: SegMetric) -> None:
        """Add another accumulator's counts (same ``num_classes``) into this one."""
        if other.num_classes != self.num_classes:
            raise ValueError(
                f"cannot merge metrics of {other.num_classes} and {self.num_classes} classes"
            )
        self.intersect += other.intersect
        self.union += other.union
        self.pred_area += other.pred_area
        self.label_area += other.label_area
        self.ber_diff += other.ber_diff
        self.ber_total += other.ber_total
        self.label_outside += other.label_outside

    def to_tensor(self) -> torch.Tensor:
        """All counters as one 1-D int64 tensor of length ``tensor_length(C) = 4*C + 3``.

        Order: intersect, union, pred_area, label_area, then ber_diff, ber_total,
        label_outside.
        """
        parts = [self.intersect, self.union, self.pred_area, self.label_area]
        tail = np.array([self.ber_diff, self.ber_total, self.label_outside], np.int64)
        flat = np.concatenate(parts + [tail])
        return torch.from_numpy(flat.astype(np.int64))

    @classmethod
    def from_tensor(cls, t: torch.Tensor, num_classes: int) -> SegMetric:
        """Inverse of ``to_tensor`` (e.g. after ``all_reduce(SUM)``)."""
        flat = t.detach().cpu().reshape(-1)
        length = cls.tensor_length(num_classes)
        if flat.numel() != length:
            raise ValueError(
                f"a metric tensor for {num_classes} classes has {length} entries, "
                f"got {flat.numel()}"
            )
        if flat.is_floating_point():
            arr = np.rint(flat.double().numpy()).astype(np.int64)
        else:
            arr = flat.numpy().astype(np.int64)
        c = num_classes
        return cls(
            num_classes=c,
            intersect=arr[0:c],
            union=arr[c : 2 * c],
            pred_area=arr[2 * c : 3 * c],
            label_area=arr[3 * c : 4 * c],
            ber_diff=int(arr[4 * c]),
            ber_total=int(arr[4 * c + 1]),
            label_outside=int(arr[4 * c + 2]),
        )

    @property
    def ber(self) -> float | None:
        """Boundary error rate in percent, or None when no boundary pair was counted."""
        if self.ber_total == 0:
            return None
        return 100.0 * self.ber_diff / self.ber_total

    def summary(self, class_names: list[str]) -> dict[str, Any]:
        """Dataset metrics in percent, as JSON-ready Python values.

        Returns:
            ``{"mIoU", "mAcc", "aAcc", "BER", "per_class"}``: ``mIoU`` is the mean IoU over
            classes with union > 0, ``mAcc`` the mean of intersect / label_area over classes
            with label_area > 0 (mmseg's nanmean), ``aAcc`` total intersect / total labelled
            pixels, ``BER`` 100 * diff / total. ``per_class`` is a list of
            ``{"name", "IoU", "Acc"}``; a value is None where its denominator is 0 (the class
            is then excluded from the mean). Any mean without a single defined value is None.
            Values are not rounded (mmseg rounds to 2 decimals for display only).
        """
        if len(class_names) != self.num_classes:
            raise ValueError(
                f"{len(class_names)} class names for a metric of {self.num_classes} classes"
            )
        ious = _ratios(self.intersect, self.union)
        accs = _ratios(self.intersect, self.label_area)
        total_label = int(self.label_area.sum())
        a_acc = 100.0 * int(self.intersect.sum()) / total_label if total_label else None
        return {
            "mIoU": _mean(ious),
            "mAcc": _mean(accs),
            "aAcc": a_acc,
            "BER": self.ber,
            "per_class": [
                {"name": n, "IoU": i, "Acc": a}
                for n, i, a in zip(class_names, ious, accs, strict=True)
            ],
        }


def _ratios(num: np.ndarray, den: np.ndarray) -> list[float | None]:
    return [100.0 * int(n) / int(d) if d > 0 else None for n, d in zip(num, den, strict=True)]


def _mean(values: list[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return math.fsum(defined) / len(defined) if defined else None
