"""Logits to labels (SPEC 9.3-9.4) in tiles of rows, so that memory does not grow with
classes x original pixels.

The network's stitched logits are small (``Q x H x W`` at the network size, 336 px on the short
side); the labels are wanted at the original size ``H0 x W0``, which may be 12 or 64
megapixels. Resizing all ``Q`` logit maps to that size at once (``F.interpolate``) and taking
the softmax there holds several ``Q x H0 x W0`` tensors: 16 GB for an 8000 x 8000 image with
20 classes. Here every step runs on a band of output rows at a time: the bilinear resize, the
softmax over the query names, the maximum over each class's synonyms, the argmax and the
probability threshold. Every one of them is per pixel, so the bands partition the work exactly.

The resize reproduces ``F.interpolate(mode="bilinear", align_corners=False)``: each axis's
source indices and weights are read off PyTorch's own kernel (``axis_weights``) and combined in
its order of operations, ``fma(a, w_a, b * w_b)`` per axis, width first. On the CPUs this was
checked on, the result is bit for bit that of ``F.interpolate``; elsewhere it can differ in the
last bit of a logit, which can only change a label where two classes' probabilities tie to
float32 precision.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from glaclip.config import PostConfig
from glaclip.model import pamr

# Rows per band are chosen so that one band of logits (Q x rows x W0 float32) has about this
# many bytes; the band's temporaries take a few times that.
TILE_BYTES = 16 << 20
# With PAMR, a band's class maps are refined a few classes at a time within about this many bytes.
PAMR_TILE_BYTES = 64 << 20


class AxisWeights(NamedTuple):
    """One axis of a bilinear resize: output ``j`` is ``w0[j] * x[i0[j]] + w1[j] * x[i1[j]]``.

    ``i0``, ``i1`` (int64) and ``w0``, ``w1`` (float32, PyTorch's own weights on that device)
    are on the device of the logits; ``host_i0``, ``host_i1`` are the same indices on the CPU,
    where the rows a band reads are looked up without a read-back from the device.
    """

    i0: torch.Tensor
    i1: torch.Tensor
    w0: torch.Tensor
    w1: torch.Tensor
    host_i0: torch.Tensor
    host_i1: torch.Tensor


@functools.lru_cache(maxsize=64)
def _axis_weights(n_in: int, n_out: int, device: str) -> AxisWeights:
    dev, cpu = torch.device(device), torch.device("cpu")
    scale = torch.tensor(n_in / n_out, dtype=torch.float32, device=cpu)
    real = scale * (torch.arange(n_out, dtype=torch.float32, device=cpu) + 0.5) - 0.5
    i0 = real.clamp_min(0.0).to(torch.int64).clamp_max(n_in - 1)
    i1 = torch.where(i0 < n_in - 1, i0 + 1, i0)
    # one-hot patterns through the device's own kernel: even source positions set, then odd
    # ones; each output is then exactly one of its two weights (or their sum where i0 == i1)
    even = (torch.arange(n_in, device=dev) % 2 == 0).to(torch.float32)
    pattern = torch.stack([even, 1.0 - even]).view(1, 2, 1, n_in)
    seen = F.interpolate(pattern, size=(1, n_out), mode="bilinear", align_corners=False)
    w_even, w_odd = seen[0, 0, 0], seen[0, 1, 0]
    first_even, same = (i0 % 2 == 0).to(dev), (i0 == i1).to(dev)
    w0 = torch.where(same, w_even + w_odd, torch.where(first_even, w_even, w_odd))
    w1 = torch.where(same, torch.zeros_like(w0), torch.where(first_even, w_odd, w_even))
    return AxisWeights(i0.to(dev), i1.to(dev), w0, w1, i0, i1)


def axis_weights(n_in: int, n_out: int, device: torch.device) -> AxisWeights:
    """Source indices and weights of one axis of a bilinear resize (``align_corners=False``)
    from ``n_in`` to ``n_out`` samples, on ``device`` (cached)."""
    return _axis_weights(n_in, n_out, str(device))


def _fma(a: torch.Tensor, wa: torch.Tensor, b: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    """``a * wa + b * wb`` with the first product fused into the addition (one rounding), as
    PyTorch's CPU kernel computes it; plain float32 where float64 is not available (MPS)."""
    second = b * wb
    if a.device.type == "mps":
        return a * wa + second
    return (a.double() * wa.double() + second.double()).float()


def resize_rows(logits: torch.Tensor, size: tuple[int, int], r0: int, r1: int) -> torch.Tensor:
    """Rows ``r0:r1`` of ``F.interpolate(logits[None], size, mode="bilinear")[0]``.

    Args:
        logits: ``Q x H x W`` float32.
        size: the full output size ``(H0, W0)``.

    Returns:
        ``Q x (r1 - r0) x W0`` float32.
    """
    _, height, width = logits.shape
    out_h, out_w = size
    if height == out_h:  # weights 1 and 0: the rows themselves
        lo, hi = r0, r1
    else:
        rows = axis_weights(height, out_h, logits.device)
        h0, h1, hw0, hw1 = (t[r0:r1] for t in rows[:4])
        lo, hi = int(rows.host_i0[r0:r1].min()), int(rows.host_i1[r0:r1].max()) + 1
    slab = logits[:, lo:hi]  # the source rows this band reads
    if width != out_w:
        w0, w1, ww0, ww1 = axis_weights(width, out_w, logits.device)[:4]
        slab = _fma(slab[:, :, w0], ww0, slab[:, :, w1], ww1)
    if height == out_h:
        return slab
    top, bottom = slab[:, h0 - lo], slab[:, h1 - lo]
    return _fma(top, hw0.view(1, -1, 1), bottom, hw1.view(1, -1, 1))


def band_rows(queries: int, width: int, tile_bytes: int = TILE_BYTES) -> int:
    """Rows per band for ``queries`` logit maps of ``width`` columns (at least 1)."""
    return max(1, tile_bytes // max(1, 4 * queries * width))


def labels_from_logits(
    logits: torch.Tensor,
    query_class: Sequence[int],
    num_classes: int,
    post: PostConfig,
    output_size: tuple[int, int] | None = None,
    return_scores: bool = False,
    tile_bytes: int = TILE_BYTES,
    image: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """SPEC 9.3-9.4 (and 13-14): resize, PAMR, softmax over query names, max over synonyms,
    area threshold, argmax, probability threshold.

    Args:
        logits: ``Q x H x W`` float32 stitched logits.
        query_class: the class of each query name (``Q`` entries in ``[0, C)``).
        num_classes: ``C``.
        post: the logit scale, thresholds, background index and PAMR settings.
        output_size: ``(H0, W0)``; default ``(H, W)``.
        return_scores: also return the ``C x H0 x W0`` class probabilities (memory
            ``C x H0 x W0`` floats; without it, only ``O(Q x band)``).
        image: ``3 x H x W`` float32, the normalised image the logits belong to; needed with
            PAMR (``post.pamr_steps``), which refines the logits at the output size along its
            edges (the image resized there likewise).

    Returns:
        ``(labels H0 x W0 int32, scores or None)`` on the logits' device. Labels are class
        indices, or ``post.background_index`` where the winning probability is below
        ``post.prob_threshold``. With an area threshold, the classes whose share of the
        pixels' best classes is not above it (the background class aside) are dropped before
        the labels are taken (SCLIP's rule); ``scores`` are the probabilities before it.
    """
    out_h, out_w = output_size or tuple(logits.shape[-2:])
    if post.pamr_steps and image is None:
        raise ValueError("PAMR (pamr_steps) refines along the image: pass image=")
    bands = _Bands(logits, query_class, num_classes, post, (out_h, out_w), tile_bytes, image)
    keep = area_keep(bands, post) if post.area_threshold > 0 else None
    labels = torch.empty(out_h, out_w, dtype=torch.int32, device=logits.device)
    scores = None
    if return_scores:
        scores = torch.empty(num_classes, out_h, out_w, device=logits.device)
    for r0, r1, probs in bands:
        if scores is not None:
            scores[:, r0:r1] = probs
        labels[r0:r1] = _band_labels(probs, keep, post, num_classes)
    return labels, scores


def _band_labels(
    probs: torch.Tensor, keep: torch.Tensor | None, post: PostConfig, num_classes: int
) -> torch.Tensor:
    """The labels of one band of ``C x rows x W0`` probabilities: the argmax over the classes
    ``keep`` keeps (all when None); ``post.background_index`` where the winning probability is
    below ``post.prob_threshold``, or, when the background is no class, where the area
    threshold dropped every class of the pixel."""
    bg = post.background_index
    kept = probs if keep is None else probs * keep.view(-1, 1, 1)
    best, index = kept.max(dim=0)
    if post.prob_threshold > 0:
        index.masked_fill_(best < post.prob_threshold, bg)
    if keep is not None and not 0 <= bg < num_classes:  # every class of a pixel dropped
        index.masked_fill_(best <= 0, bg)
    return index


class _Bands:
    """The class probabilities of an image, band of output rows by band (iterable, again and
    again): ``(r0, r1, C x (r1 - r0) x W0 probabilities)``."""

    def __init__(
        self,
        logits: torch.Tensor,
        query_class: Sequence[int],
        num_classes: int,
        post: PostConfig,
        size: tuple[int, int],
        tile_bytes: int,
        image: torch.Tensor | None,
    ) -> None:
        self.logits, self.post, self.size, self.image = logits, post, size, image
        self.groups: list[list[int]] | None = None
        if len(set(query_class)) != len(query_class):
            self.groups = [[] for _ in range(num_classes)]
            for q, c in enumerate(query_class):
                self.groups[c].append(q)
        self.step = band_rows(logits.shape[0], size[1], tile_bytes)
        # with PAMR, blocks of rows at least as tall as their margin (at most 3x the work) are
        # refined at a time, then taken apart into bands
        self.block = self.step
        if post.pamr_steps:
            self.block = max(self.step, pamr.halo(post.pamr_steps, post.pamr_dilations), 16)

    def __iter__(self):
        out_h = self.size[0]
        for b0 in range(0, out_h, self.block):
            b1 = min(out_h, b0 + self.block)
            refined = self._refined(b0, b1) if self.post.pamr_steps else None
            for r0 in range(b0, b1, self.step):
                r1 = min(b1, r0 + self.step)
                if refined is not None:
                    band = refined[:, r0 - b0 : r1 - b0]
                else:
                    band = resize_rows(self.logits, self.size, r0, r1)
                probs = torch.softmax(band * self.post.logit_scale, dim=0)
                if self.groups is not None:
                    probs = torch.stack([probs[g].amax(dim=0) for g in self.groups])
                yield r0, r1, probs

    def _refined(self, r0: int, r1: int) -> torch.Tensor:
        """Rows ``r0:r1`` of the logits at the output size after PAMR: computed on the rows
        within ``pamr.halo`` of them (exact: PAMR is local), a few classes at a time."""
        post, (out_h, out_w) = self.post, self.size
        margin = pamr.halo(post.pamr_steps, post.pamr_dilations)
        s0, s1 = max(0, r0 - margin), min(out_h, r1 + margin)
        image = resize_rows(self.image, self.size, s0, s1)[None]
        weights = _affinity_rows(image, post.pamr_dilations)
        per_class = 4 * (s1 - s0) * out_w * 4  # a class's map, its padded copy, a term, the sum
        chunk = max(1, PAMR_TILE_BYTES // per_class)
        queries = self.logits.shape[0]
        out = self.logits.new_empty(queries, r1 - r0, out_w)
        for c0 in range(0, queries, chunk):
            band = resize_rows(self.logits[c0 : c0 + chunk], self.size, s0, s1)
            refined = pamr.refine(band[None], weights, post.pamr_steps, post.pamr_dilations)
            out[c0 : c0 + chunk] = refined[0, :, r0 - s0 : r1 - s0]
        return out


def _affinity_rows(image: torch.Tensor, dilations: Sequence[int]) -> torch.Tensor:
    """``pamr.affinity`` of a ``1 x K x R x W`` image, computed in chunks of rows with the
    margin each needs (exact: a pixel's weights read the image within ``max(dilations)``)."""
    rows = image.shape[2]
    margin = max(dilations)
    step = max(margin, PAMR_TILE_BYTES // max(1, 4 * 48 * len(dilations) * image.shape[3]))
    if step >= rows:
        return pamr.affinity(image, dilations)
    out = image.new_empty(1, 1, 8 * len(dilations), rows, image.shape[3])
    for a in range(0, rows, step):
        b = min(rows, a + step)
        lo, hi = max(0, a - margin), min(rows, b + margin)
        out[:, :, :, a:b] = pamr.affinity(image[:, :, lo:hi], dilations)[:, :, :, a - lo : b - lo]
    return out


def area_keep(bands: Iterable[tuple[int, int, torch.Tensor]], post: PostConfig) -> torch.Tensor:
    """SCLIP's area threshold: ``C`` float32, 1 for the classes kept, 0 for those dropped.

    ``n_c`` is the number of pixels whose most probable class is ``c``; a class other than
    the background (``post.background_index``, when it is a class) is kept iff
    ``n_c > area_threshold x (sum of n_c over those classes)``; the background always is.
    """
    counts = None
    for _, _, probs in bands:
        best = probs.argmax(dim=0).reshape(-1)  # counted on the device, nothing read back
        n = best.new_zeros(probs.shape[0]).index_add_(0, best, torch.ones_like(best))
        counts = n if counts is None else counts + n
    assert counts is not None
    num_classes, bg = counts.shape[0], post.background_index
    others = torch.ones(num_classes, dtype=torch.bool, device=counts.device)
    if 0 <= bg < num_classes:
        others[bg] = False
    exact = torch.float32 if counts.device.type == "mps" else torch.float64  # MPS: no float64
    total = (counts * others).sum().to(exact)
    keep = (counts.to(exact) > post.area_threshold * total) | ~others
    return keep.to(torch.float32)
