"""Segmenter: image -> windows -> keys and values -> attention -> logits -> labels."""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import torch
import torch.nn.functional as F

from glaclip import backbones
from glaclip.attention import attend
from glaclip.config import Settings, settings_from_kwargs
from glaclip.device import StageTimer, autocast, resolve_device, strict_fp32
from glaclip.imageio import protocol_size, read_image, resize_image, to_tensor
from glaclip.text import (
    TextEncoder,
    check_vocabulary,
    expand_queries,
    parse_class_lines,
    parse_classes_arg,
)
from glaclip.windows import Window, network_size, stitch, window_grid

if TYPE_CHECKING:
    import PIL.Image


ImageSource = Union[str, os.PathLike, "PIL.Image.Image", np.ndarray]


@dataclass
class SegmentationOutput:
    """What ``Segmenter.segment_tensor`` returns.

    Attributes:
        query_logits: ``Q x H x W`` float32 stitched cosine logits, one map per query name
            (SPEC 9.1-9.2), at the input tensor's size.
        labels: ``h x w`` int64 labels (SPEC 9.4) at ``output_size`` (default: ``H x W``).
        scores: ``C x h x w`` float32 class probabilities (the softmax over query names,
            maximum over each class's synonyms), at the labels' size.
        class_names: the ``C`` classes, each as its synonym list.
        query_names: the ``Q`` query names, and ``query_class`` the class of each.
    """

    query_logits: torch.Tensor
    labels: torch.Tensor
    scores: torch.Tensor
    class_names: list[list[str]]
    query_names: list[str]
    query_class: list[int]
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage


@dataclass
class Segmentation:
    """What ``Segmenter.segment`` returns for one image.

    Attributes:
        labels: ``H0 x W0`` int32 numpy array at the original size; the class index (position in
            the class list), or ``background_index`` where the winning probability is below
            ``prob_threshold``.
        class_names: the classes, each as its list of query names (synonyms).
        scores: ``C x H0 x W0`` float32 tensor of class probabilities in [0, 1].
        image_size: ``(H0, W0)``; ``resized_size``: ``(H, W)`` the network saw.
    """

    labels: np.ndarray
    class_names: list[list[str]]
    scores: torch.Tensor
    image_size: tuple[int, int]
    resized_size: tuple[int, int]
    timings: dict[str, float] = field(default_factory=dict)

    def pixel_shares(self) -> list[float]:
        """Fraction of the image's pixels given to each class."""
        counts = np.bincount(self.labels.ravel(), minlength=len(self.class_names))
        return (counts[: len(self.class_names)] / self.labels.size).tolist()


class Segmenter:
    """GLA-CLIP segmenter: a CLIP image tower for values, a VFM for keys, CLIP text for queries.

    Build it with ``from_pretrained`` (names of weights) or ``from_modules`` (models in hand),
    then call ``segment`` on images or ``segment_tensor`` on prepared tensors. Query embeddings
    are computed once per class name and reused.
    """

    def __init__(
        self,
        clip_model: torch.nn.Module,
        vfm_model: torch.nn.Module,
        tokenizer: Any,
        settings: Settings | None = None,
        device: str | torch.device | None = None,
        clip_info: backbones.ModelInfo | None = None,
        vfm_info: backbones.ModelInfo | None = None,
        clip_mean: Sequence[float] = backbones.OPENAI_CLIP_MEAN,
        clip_std: Sequence[float] = backbones.OPENAI_CLIP_STD,
        text_cache_dir: str | os.PathLike | None = None,
    ) -> None:
        self.settings = settings or Settings()
        self.device = resolve_device(device or next(clip_model.parameters()).device.type)
        self.clip_model = clip_model.to(self.device).eval()
        self.values_tower = backbones.ClipValueTower(self.clip_model.visual)
        self.keys_tower = backbones.VFMKeyTower(
            vfm_model.to(self.device).eval(),
            fused_attention=self.settings.runtime.fused_attention,
        )
        self.clip_info = clip_info or backbones.ModelInfo(type(clip_model).__name__, None)
        self.vfm_info = vfm_info or backbones.ModelInfo(type(vfm_model).__name__, None)
        self.clip_mean = torch.tensor(clip_mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.clip_std = torch.tensor(clip_std, dtype=torch.float32).view(1, 3, 1, 1)
        self.text = TextEncoder(self.clip_model, tokenizer, cache_dir=text_cache_dir)

    # ------------------------------------------------------------------------------ builders
    @classmethod
    def from_modules(
        cls,
        clip_model: torch.nn.Module,
        vfm_model: torch.nn.Module,
        tokenizer: Any,
        **settings: Any,
    ) -> Segmenter:
        """Wrap an open_clip ``CLIP`` model, a timm ViT and an open_clip tokenizer.

        ``settings`` are flat keyword settings (see ``glaclip.config``), e.g.
        ``kv_extension=False, prob_threshold=0.1``. Runs on the models' device.
        """
        return cls(clip_model, vfm_model, tokenizer, settings_from_kwargs(**settings))

    @classmethod
    def from_pretrained(
        cls,
        clip: str = backbones.DEFAULT_CLIP,
        clip_pretrained: str | None = backbones.DEFAULT_CLIP_PRETRAINED,
        vfm: str = backbones.DEFAULT_VFM,
        vfm_checkpoint: str | None = None,
        device: str | None = None,
        text_cache_dir: str | os.PathLike | None = "default",
        **settings: Any,
    ) -> Segmenter:
        """Load the backbones by name (weights download on first use, then come from the cache).

        Args:
            clip: open_clip model name, ``hf-hub:`` or ``local-dir:`` name.
            clip_pretrained: open_clip tag (``openai``) or a local checkpoint file.
            vfm: timm model name with tag, or ``local-dir:DIR``.
            vfm_checkpoint: a local weight file for the ``vfm`` architecture.
            device: ``cpu``, ``cuda``, ``cuda:1``, ``mps`` or None (best available).
            text_cache_dir: folder for cached query embeddings; ``"default"`` is the user
                cache folder (``$GLACLIP_CACHE`` or ``~/.cache/glaclip``), None disables it.
            settings: flat keyword settings (see ``glaclip.config``).
        """
        settings_obj = settings_from_kwargs(**settings)
        dev = resolve_device(device)
        clip_model, tokenizer, mean, std = backbones.load_clip(clip, clip_pretrained, dev)
        vfm_model = backbones.load_vfm(vfm, vfm_checkpoint, dev)
        if text_cache_dir == "default":
            text_cache_dir = default_cache_dir()
        return cls(
            clip_model,
            vfm_model,
            tokenizer,
            settings_obj,
            dev,
            backbones.ModelInfo(
                clip, None if clip.startswith(("hf-hub:", "local-dir:")) else clip_pretrained
            ),
            backbones.ModelInfo(vfm, vfm_checkpoint),
            mean,
            std,
            text_cache_dir,
        )

    def with_settings(self, **settings: Any) -> Segmenter:
        """A Segmenter sharing this one's models and text embeddings, with some flat settings
        changed (``kv_extension=False``, ``prob_threshold=0.2``, ...). Loads nothing."""
        other = copy.copy(self)
        other.settings = self.settings.replace(**settings)
        if other.settings.runtime.fused_attention != self.settings.runtime.fused_attention:
            raise ValueError("fused_attention cannot be changed on a built Segmenter")
        return other

    # ------------------------------------------------------------------------------ pieces
    def query_embeddings(
        self, class_lines: Sequence[str]
    ) -> tuple[torch.Tensor, list[list[str]], list[str], list[int]]:
        """Parse class lines and embed their query names: ``(Q x E, classes, names, owners)``."""
        classes = parse_class_lines(class_lines)
        names, owner = expand_queries(classes)
        return self.text.encode(names).to(self.device), classes, names, owner

    def _features(
        self, x: torch.Tensor, windows: Sequence[Window], timer: StageTimer
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """Keys ``L x S x Ck``, values ``heads x L x S x d_h`` and the VFM grid ``(h, w)``."""
        batch = self.settings.runtime.window_batch
        mean = self.clip_mean.to(x.device)
        std = self.clip_std.to(x.device)
        keys, values = [], []
        with autocast(self.device, self.settings.runtime.precision):
            for start in range(0, len(windows), batch):
                crops = torch.cat(
                    [x[:, :, w.y1 : w.y2, w.x1 : w.x2] for w in windows[start : start + batch]]
                )
                with timer("vfm"):
                    k = self.keys_tower.keys(crops, mean, std).float()  # b x h x w x Ck
                gh, gw = k.shape[1], k.shape[2]
                with timer("clip"):
                    v = self.values_tower.values(crops).float()  # b x D x gh' x gw'
                    if v.shape[-2:] != (gh, gw):
                        v = F.interpolate(v, size=(gh, gw), mode="bilinear", align_corners=False)
                keys.append(k.reshape(k.shape[0], gh * gw, -1))
                values.append(v.reshape(v.shape[0], v.shape[1], gh * gw))
        keys_t = torch.cat(keys)  # L x S x Ck
        vals = torch.cat(values)  # L x D x S
        heads = self.values_tower.heads
        n_win, d, s = vals.shape
        vals = vals.reshape(n_win, heads, d // heads, s).permute(1, 0, 3, 2)  # heads x L x S x dh
        return keys_t, vals, (gh, gw)

    # ------------------------------------------------------------------------------ segment
    def prepare(self, image: ImageSource) -> tuple[torch.Tensor, tuple[int, int]]:
        """SPEC 1: read, resize (OpenCV bilinear on uint8) and CLIP-normalise an image.

        Args:
            image: a path, a PIL image or an ``H x W x 3`` uint8 array (RGB).

        Returns:
            ``(1 x 3 x H x W float32 tensor, (H0, W0) original size)``.
        """
        rgb = read_image(image)
        h0, w0 = rgb.shape[:2]
        win = self.settings.window
        size = protocol_size(h0, w0, win.short_side, win.max_long_side)
        x = to_tensor(
            resize_image(rgb, size),
            self.clip_mean.flatten().tolist(),
            self.clip_std.flatten().tolist(),
        )
        return x, (h0, w0)

    def segment(self, image: ImageSource, classes: Sequence[str] | str) -> Segmentation:
        """Segment one image into the given classes.

        Args:
            image: a path, a PIL image or an ``H x W x 3`` uint8 RGB array.
            classes: class lines (``["sky", "person; man"]``: synonyms separated by ``;``) or
                one string with commas between classes (``"sky, person; man"``).

        Returns:
            A ``Segmentation`` at the image's original size.
        """
        lines = parse_classes_arg(classes) if isinstance(classes, str) else list(classes)
        check_vocabulary(lines)
        x, size = self.prepare(image)
        out = self.segment_tensor(x, lines, output_size=size)
        return Segmentation(
            labels=to_numpy_labels(out.labels),
            class_names=out.class_names,
            scores=out.scores.cpu(),
            image_size=size,
            resized_size=(x.shape[-2], x.shape[-1]),
            timings=out.timings,
        )

    @torch.inference_mode()
    def segment_tensor(
        self,
        x: torch.Tensor,
        class_lines: Sequence[str],
        output_size: tuple[int, int] | None = None,
    ) -> SegmentationOutput:
        """Segment a prepared image tensor.

        Args:
            x: ``1 x 3 x H x W`` float32, resized and CLIP-normalised (SPEC 1 done).
            class_lines: one class per entry, synonyms separated by ``;``.
            output_size: ``(H0, W0)`` to resize the logits to before labelling (SPEC 9.3);
                default the input size.

        Returns:
            A ``SegmentationOutput``. An input side shorter than the window is first upscaled
            (bilinear, aspect kept) so that it equals the window; the logits are scaled back.
        """
        if x.ndim != 4 or x.shape[0] != 1 or x.shape[1] != 3:
            raise ValueError(f"expected a 1x3xHxW tensor, got shape {tuple(x.shape)}")
        timer = StageTimer(self.device)
        with timer("text"):
            text, classes, names, owner = self.query_embeddings(class_lines)
        x = x.to(self.device, torch.float32)
        height, width = x.shape[-2:]
        canvas = network_size(height, width, self.settings.window.crop)
        work = x
        if canvas != (height, width):
            work = F.interpolate(x, size=canvas, mode="bilinear", align_corners=False)
        with strict_fp32(self.device):
            logits = self._stitched_logits(work, text, timer)
        with timer("labels"):
            if logits.shape[-2:] != (height, width):
                logits = _resize(logits, (height, width))
            labels, scores = self.labels_from_logits(logits, owner, len(classes), output_size)
        return SegmentationOutput(logits, labels, scores, classes, names, owner, timer.seconds)

    def _stitched_logits(
        self, x: torch.Tensor, text: torch.Tensor, timer: StageTimer
    ) -> torch.Tensor:
        cfg = self.settings
        h, w = x.shape[-2:]
        windows = window_grid(h, w, cfg.window.crop, cfg.window.stride)
        keys, values, (gh, gw) = self._features(x, windows, timer)
        with timer("attention"):
            out = attend(keys, values, cfg.gla)  # L x S x D
        with timer("stitch"):
            feats = F.normalize(self.values_tower.project(out), dim=-1)  # L x S x E
            logits = feats @ text.T  # L x S x Q
            logits = logits.permute(0, 2, 1).reshape(len(windows), -1, gh, gw)
            crop = (cfg.window.crop, cfg.window.crop)
            logits = F.interpolate(logits, size=crop, mode="bilinear", align_corners=False)
            return stitch(logits, windows, h, w)

    def labels_from_logits(
        self,
        logits: torch.Tensor,
        query_class: Sequence[int],
        num_classes: int,
        output_size: tuple[int, int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SPEC 9.3-9.4: resize, softmax over queries, max over synonyms, argmax, threshold.

        Returns ``(labels h x w int64, class probabilities C x h x w)``.
        """
        post = self.settings.post
        if output_size is not None and tuple(output_size) != tuple(logits.shape[-2:]):
            logits = _resize(logits, tuple(output_size))
        probs = torch.softmax(logits * post.logit_scale, dim=0)
        if len(set(query_class)) == len(query_class):
            scores = probs
        else:
            groups: list[list[int]] = [[] for _ in range(num_classes)]
            for q, c in enumerate(query_class):
                groups[c].append(q)
            scores = torch.stack([probs[g].amax(dim=0) for g in groups])
        best, labels = scores.max(dim=0)
        if post.prob_threshold > 0:
            labels[best < post.prob_threshold] = post.background_index
        return labels, scores


def _resize(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(t[None], size=size, mode="bilinear", align_corners=False)[0]


def default_cache_dir() -> str:
    """The user cache folder: ``$GLACLIP_CACHE`` or ``$XDG_CACHE_HOME/glaclip``."""
    if os.environ.get("GLACLIP_CACHE"):
        return os.environ["GLACLIP_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "glaclip")


def to_numpy_labels(labels: torch.Tensor) -> np.ndarray:
    """Labels as an ``H x W`` int32 numpy array."""
    return labels.to("cpu", torch.int32).numpy()
