"""What a Segmenter returns: an image's class-independent features, and segmentations."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from glaclip.config import Settings
from glaclip.model.windows import Canvas, Window


@dataclass
class ImageFeatures:
    """Everything ``Segmenter`` computes for one image that does not depend on the class names
    (``Segmenter.encode_image`` / ``encode_tensor``): ask for any classes with
    ``Segmenter.segment`` / ``segment_tensor`` without running the backbones or the attention
    again.

    Attributes:
        embeddings: ``L x S x E`` float32, on the device: every window token's embedding
            (attention output, CLIP's output projection, L2-normalised).
        windows: the ``L`` windows of the canvas.
        grid: ``(gh, gw)`` token grid of one window (``S = gh * gw``).
        canvas: where the windows were cut (``windows.network_canvas``).
        input_size: ``(H, W)`` of the network input (the resized image).
        image_size: ``(H0, W0)`` of the original image (labels come at this size).
        settings: the settings they were computed with; a Segmenter asking with other window,
            method or runtime settings refuses them (other post-processing is fine).
        timings: seconds per stage of the encoding.
        image: ``3 x H x W`` float32, the normalised network input (the resized image), on the
            device: the post-processing's PAMR refines the labels along its edges.
        weights: the identity of the image towers' weights that made them
            (``Segmenter.image_fingerprint``); a Segmenter with other weights refuses them.
    """

    embeddings: torch.Tensor
    windows: list[Window]
    grid: tuple[int, int]
    canvas: Canvas
    input_size: tuple[int, int]
    image_size: tuple[int, int]
    settings: Settings
    timings: dict[str, float] = field(default_factory=dict)
    image: torch.Tensor | None = None
    weights: str | None = None

    def check_compatible(
        self, settings: Settings, device: torch.device, weights: str | None = None
    ) -> None:
        """Raise ValueError unless a Segmenter with ``settings`` on ``device`` (and image
        towers whose identity is ``weights``, where given) may ask these features: the same
        settings but the post-processing (``Settings.feature_parts``), the same device and
        the same weights."""
        mine, theirs = self.settings.feature_parts(), settings.feature_parts()
        differ = [
            name
            for part in dict.fromkeys([*mine, *theirs])
            for name in dict.fromkeys(_fields(mine.get(part)) + _fields(theirs.get(part)))
            if getattr(mine.get(part), name, None) != getattr(theirs.get(part), name, None)
        ]
        if differ:
            raise ValueError(
                "these image features were computed with other settings ("
                + ", ".join(differ)
                + "): encode the image again with this Segmenter (only the post-processing "
                "settings may differ)"
            )
        if weights is not None and self.weights != weights:
            made = f"weights {self.weights[:12]}" if self.weights else "unknown weights"
            raise ValueError(
                f"these image features were computed by image models of other weights ({made}, "
                f"this Segmenter's are {weights[:12]}): their labels would be wrong; encode "
                "the image again with this Segmenter"
            )
        if self.embeddings.device != device:
            raise ValueError(
                f"these image features are on {self.embeddings.device}, this Segmenter runs "
                f"on {device}: encode the image again with it"
            )

    @property
    def nbytes(self) -> int:
        """Memory held by the features: the embeddings, ``4 x L x S x E`` bytes (9.6 MB for a
        VOC-sized image with DINO ViT-B/8 keys and a ViT-B/16 CLIP, 2.4 MB without a VFM),
        and the network input for PAMR, ``4 x 3 x H x W`` (1.8 MB at 448 x 336)."""
        held = [self.embeddings] + ([self.image] if self.image is not None else [])
        return sum(t.numel() * t.element_size() for t in held)


def _fields(part: object) -> list[str]:
    return list(vars(part)) if part is not None else []


@dataclass
class SegmentationOutput:
    """What ``Segmenter.segment_tensor`` returns.

    Attributes:
        query_logits: ``Q x H x W`` float32 stitched cosine logits, one map per query name
            (SPEC 9.1-9.2), at the input tensor's size.
        labels: ``h x w`` int32 labels (SPEC 9.4) at ``output_size`` (default: ``H x W``).
        scores: ``C x h x w`` float32 class probabilities (the softmax over query names,
            maximum over each class's synonyms), at the labels' size; None unless asked for
            (``return_scores=True``).
        class_names: the ``C`` classes, each as its synonym list.
        query_names: the ``Q`` query names, and ``query_class`` the class of each.
        timings: seconds per stage, as ``Segmentation.timings`` (from a tensor: every stage;
            an answer from kept features: only the stages it ran).
    """

    query_logits: torch.Tensor
    labels: torch.Tensor
    scores: torch.Tensor | None
    class_names: list[list[str]]
    query_names: list[str]
    query_class: list[int]
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class Segmentation:
    """What ``Segmenter.segment`` returns for one image.

    Attributes:
        labels: ``H0 x W0`` int32 numpy array at the original size; the class index (position in
            the class list), or ``background_index`` where the winning probability is below
            ``prob_threshold``.
        class_names: the classes, each as its list of query names (synonyms).
        scores: ``C x H0 x W0`` float32 numpy array of class probabilities in [0, 1], or None
            unless ``segment(..., return_scores=True)`` asked for it (it takes
            ``4 x C x H0 x W0`` bytes: 5 GB for 100 classes on a 12-megapixel photo).
        image_size: ``(H0, W0)``; ``resized_size``: ``(H, W)`` the network saw.
        timings: seconds per stage: ``vfm`` (a base with a VFM), ``clip``, ``attention``,
            ``stitch`` (the projection of every token, and the product with the text),
            ``text``, ``labels``; an answer from kept features (``segment(features, ...)``)
            holds only the stages it ran (``text``, ``stitch``, ``labels``), the encoding's are
            ``features.timings``.
    """

    labels: np.ndarray
    class_names: list[list[str]]
    scores: np.ndarray | None
    image_size: tuple[int, int]
    resized_size: tuple[int, int]
    timings: dict[str, float] = field(default_factory=dict)

    def pixel_shares(self) -> list[float]:
        """Fraction of the image's pixels given to each class (unlabelled pixels count in the
        denominator only)."""
        return pixel_shares(self.labels, len(self.class_names))


def to_numpy_labels(labels: torch.Tensor) -> np.ndarray:
    """Labels as an ``H x W`` int32 numpy array."""
    return labels.to("cpu", torch.int32).numpy()


def add_timings(*parts: dict[str, float]) -> dict[str, float]:
    """Seconds per stage of several steps of one run, added up stage by stage (the encoding's
    ``stitch``, the projection, and the answer's, the final product, make one ``stitch``)."""
    total: dict[str, float] = {}
    for part in parts:
        for stage, seconds in part.items():
            total[stage] = total.get(stage, 0.0) + seconds
    return total


_CHUNK = 1 << 22  # labels counted at a time


def pixel_shares(labels: np.ndarray, num_classes: int) -> list[float]:
    """Fraction of all pixels of ``labels`` (any integer array) that carry each class.

    Returns ``num_classes`` floats in [0, 1]; labels outside [0, num_classes) count in the
    denominator only, so the shares sum to at most 1.
    """
    labels = np.asarray(labels).ravel()
    if labels.size == 0 or num_classes <= 0:
        return [0.0] * max(num_classes, 0)
    counts = np.zeros(num_classes, dtype=np.int64)
    for start in range(0, labels.size, _CHUNK):  # chunks: no full-size int64 copy
        part = labels[start : start + _CHUNK]
        valid = part[(part >= 0) & (part < num_classes)].astype(np.int64)
        counts += np.bincount(valid, minlength=num_classes)
    return (counts / labels.size).tolist()
