"""Segmenter: image -> windows -> keys and values -> attention -> logits -> labels.

Two steps, as segment-anything's predictor has them: ``encode_image`` computes everything that
does not depend on the class names (the backbones, the global attention, the projection of
every token: ``ImageFeatures``), and ``segment`` asks for classes, from an image or from kept
features. ``segment(image, classes)`` is the two in one call.

Long: the Segmenter is the one public class, and its builders, its encoding and its asking
belong together; every piece it composes (towers, windows, attention, bases, post-processing,
text) lives in a module of its own.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import torch
import torch.nn.functional as F

from glaclip.config import Settings, check_vocabulary_size, settings_from_kwargs
from glaclip.constants import DEFAULT_CLIP, DEFAULT_CLIP_PRETRAINED, DEFAULT_VFM
from glaclip.images.prepare import Normalisation, protocol_size, resize_image, to_tensor
from glaclip.images.read import is_rgb, read_image
from glaclip.model.attention import Progress, global_attention
from glaclip.model.bases import make_base
from glaclip.model.bases.base import BaseMethod
from glaclip.model.bases.ops import WindowFeatures
from glaclip.model.device import (
    StageTimer,
    module_device,
    precision_dtype,
    resolve_device,
    strict_fp32,
)
from glaclip.model.identity import weights_fingerprint
from glaclip.model.loading import clip_normalisation, load_clip, load_vfm
from glaclip.model.names import ModelInfo, model_identity, names_its_weights
from glaclip.model.postprocess import labels_from_logits
from glaclip.model.results import (
    ImageFeatures,
    Segmentation,
    SegmentationOutput,
    add_timings,
    to_numpy_labels,
)
from glaclip.model.sources import check_sources
from glaclip.model.towers import ClipTower, VFMKeyTower, cast_towers
from glaclip.model.windows import Canvas, Window, network_canvas, stitch, window_grid
from glaclip.registry import needs_vfm
from glaclip.text.encoder import USER_CACHE, CacheDir, TextEncoder, _UserCache, default_cache_dir
from glaclip.text.vocabulary import (
    Vocabulary,
    parse_classes_arg,
)

if TYPE_CHECKING:
    import PIL.Image

__all__ = [
    "Segmenter",
]

ImageSource = Union[str, os.PathLike, "PIL.Image.Image", np.ndarray]


# from_modules' keywords that are not settings
_MODULE_KEYWORDS = ("text_cache_dir", "clip_mean", "clip_std")


class Segmenter:
    """GLA-CLIP segmenter: CLIP's image tower for values, a base method's keys (a VFM's tokens,
    or CLIP's own queries), CLIP's text tower for the class queries.

    Build it with ``from_pretrained`` (names of weights) or ``from_modules`` (models in hand):
    both take the same keywords. Then ``segment`` images (or ``segment_tensor`` prepared
    tensors); ``encode_image`` keeps an image's class-independent work for several
    vocabularies. Query embeddings are computed once per class name and reused. The settings
    are read-only: ``with_settings`` gives a Segmenter with others over the same models.
    """

    def __init__(
        self,
        clip_model: torch.nn.Module,
        vfm_model: torch.nn.Module | None,
        tokenizer: Any,
        settings: Settings | None = None,
        *,
        device: str | torch.device | None = None,
        normalisation: Normalisation | None = None,
        text_cache_dir: CacheDir = USER_CACHE,
    ) -> None:
        """Prefer ``from_modules`` (flat keyword settings) or ``from_pretrained`` (names)."""
        self._settings = settings or Settings()
        self.device = resolve_device(device if device is not None else module_device(clip_model))
        self.clip_model = clip_model.to(self.device).eval()
        self.clip_tower = ClipTower(self.clip_model.visual)
        self.vfm_tower = None
        if vfm_model is not None:
            self.vfm_tower = VFMKeyTower(vfm_model.eval()).to(self.device)
        # backbone towers per precision: fp32 wraps the models; bf16/fp16 are cast copies
        # (made on first use, shared with with_settings copies)
        self._towers: dict[str, tuple[ClipTower, VFMKeyTower | None]] = {
            "fp32": (self.clip_tower, self.vfm_tower)
        }
        self.clip_info = ModelInfo(type(clip_model).__name__)
        self.vfm_info = ModelInfo(type(vfm_model).__name__) if vfm_model is not None else None
        # the images' normalisation: given, or the CLIP model's preprocessing config
        self.normalisation = normalisation or Normalisation(*clip_normalisation(clip_model))
        self.base = self._make_base()
        self._identity: dict[bool, str] = {}  # image_fingerprint, shared by with_settings copies
        cache = default_cache_dir() if isinstance(text_cache_dir, _UserCache) else text_cache_dir
        self.text = TextEncoder(self.clip_model, tokenizer, cache_dir=cache)

    # ------------------------------------------------------------------------------ builders
    @classmethod
    def from_modules(
        cls,
        clip_model: torch.nn.Module,
        vfm_model: torch.nn.Module | None,
        tokenizer: Any,
        device: str | torch.device | None = None,
        text_cache_dir: CacheDir = USER_CACHE,
        clip_mean: Sequence[float] | None = None,
        clip_std: Sequence[float] | None = None,
        **settings: Any,
    ) -> Segmenter:
        """Wrap an open_clip ``CLIP`` model, a timm ViT and an open_clip tokenizer.

        ``vfm_model`` may be None with a base that needs no VFM (``base="clearclip"``).

        Args:
            device: where to run (``cpu``, ``cuda``, ``cuda:1``, ``mps``); the models are moved
                there (``Module.to``, in place). None: the CLIP model's device, index included
                (models on ``cuda:1`` run on ``cuda:1``).
            text_cache_dir: folder for cached query embeddings; ``USER_CACHE`` (default) is the
                user cache folder (``$GLACLIP_CACHE`` or ``~/.cache/glaclip``), None disables
                it.
            clip_mean, clip_std: the images' normalisation (R, G, B in [0, 1] units); None: the
                CLIP model's preprocessing config (``loading.clip_normalisation``).
            settings: flat keyword settings (see ``glaclip.config``), e.g.
                ``kv_extension=False, prob_threshold=0.1``.
        """
        normalisation = None
        if clip_mean is not None or clip_std is not None:
            mean, std = clip_normalisation(clip_model)
            normalisation = Normalisation(
                mean if clip_mean is None else clip_mean, std if clip_std is None else clip_std
            )
        return cls(
            clip_model,
            vfm_model,
            tokenizer,
            settings_from_kwargs(**settings),
            device=device,
            normalisation=normalisation,
            text_cache_dir=text_cache_dir,
        )

    @classmethod
    def from_pretrained(
        cls,
        clip: str = DEFAULT_CLIP,
        clip_pretrained: str | None = DEFAULT_CLIP_PRETRAINED,
        vfm: str = DEFAULT_VFM,
        vfm_checkpoint: str | None = None,
        device: str | torch.device | None = None,
        **keywords: Any,
    ) -> Segmenter:
        """Load the backbones by name (weights download on first use, then come from the cache),
        then ``from_modules``.

        A base that needs no VFM (``base="clearclip"``) loads none (``vfm`` and
        ``vfm_checkpoint`` are unused).

        Args:
            clip: open_clip model name, ``hf-hub:`` or ``local-dir:`` name.
            clip_pretrained: open_clip tag (``openai``) or a local checkpoint file.
            vfm: timm model name with tag, or ``local-dir:DIR``.
            vfm_checkpoint: a local weight file for the ``vfm`` architecture.
            device: as for ``from_modules`` (None: the best available).
            keywords: every keyword of ``from_modules`` (``text_cache_dir``, ``clip_mean``,
                ``clip_std`` and the flat settings).
        """
        base = keywords.get("base", Settings().gla.base)
        settings_from_kwargs(**{k: v for k, v in keywords.items() if k not in _MODULE_KEYWORDS})
        dev = resolve_device(device)
        uses_vfm = needs_vfm(base)  # every model checked before any loads:
        check_sources(clip, clip_pretrained, vfm if uses_vfm else None, vfm_checkpoint)
        clip_model, tokenizer = load_clip(clip, clip_pretrained, dev)
        vfm_model = load_vfm(vfm, vfm_checkpoint, dev) if uses_vfm else None
        seg = cls.from_modules(clip_model, vfm_model, tokenizer, device=dev, **keywords)
        seg.clip_info = ModelInfo(clip, None if names_its_weights(clip) else clip_pretrained)
        seg.vfm_info = ModelInfo(vfm, vfm_checkpoint) if uses_vfm else None
        return seg

    @property
    def settings(self) -> Settings:
        """The settings (read-only; ``with_settings`` gives a Segmenter with others)."""
        return self._settings

    @settings.setter
    def settings(self, value: Settings) -> None:
        raise AttributeError(
            "a Segmenter's settings are read-only (its base method and backbones are built "
            "from them): use seg = seg.with_settings(name=value, ...)"
        )

    def with_settings(self, **settings: Any) -> Segmenter:
        """A Segmenter sharing this one's models and text embeddings, with some flat settings
        changed (``kv_extension=False``, ``prob_threshold=0.2``, ...). Loads nothing."""
        other = copy.copy(self)
        other._settings = self._settings.replace(**settings)
        other.base = other._make_base()
        return other

    def model_names(self) -> dict[str, str | None]:
        """The backbones in use, for result files (``names.model_identity``): ``{"clip",
        "clip_pretrained", "vfm", "vfm_checkpoint"}``; the VFM entries are None when the base
        method uses no VFM."""
        return model_identity(self.clip_info, self.vfm_info if self.base.needs_vfm else None)

    def _make_base(self) -> BaseMethod:
        precision = self._settings.runtime.precision
        clip, vfm = self._towers_for(precision)
        # the fast mode's half precision, for the global attention's products
        self._half = None if precision == "fp32" else precision_dtype(precision)
        normalisation = self.normalisation.tensors(self.device)
        base = make_base(self._settings, clip, vfm, normalisation, self.clip_tower)
        base.check_crop(self._settings.window.crop)
        return base

    def _towers_for(self, precision: str) -> tuple[ClipTower, VFMKeyTower | None]:
        """The backbone towers for a precision: the models themselves for fp32, cast copies of
        the image towers otherwise (``towers.cast_towers``; made once, shared with
        ``with_settings`` copies)."""
        if precision not in self._towers:
            self._towers[precision] = cast_towers(
                self.clip_model.visual, self.vfm_tower, precision, self.device
            )
        return self._towers[precision]

    @property
    def image_fingerprint(self) -> str:
        """The identity of the weights that make image features: CLIP's image tower, the
        VFM where the base method uses one, and the images' normalisations
        (``identity.weights_fingerprint``: a sample of every tensor). Taken once, shared with
        ``with_settings`` copies; ``ImageFeatures`` carry it, and ``segment`` refuses
        features of other weights."""
        uses_vfm = self.base.needs_vfm and self.vfm_tower is not None
        if uses_vfm not in self._identity:
            towers = [("clip", self.clip_tower)] + ([("vfm", self.vfm_tower)] if uses_vfm else [])
            self._identity[uses_vfm] = weights_fingerprint(towers, repr(self.normalisation))
        return self._identity[uses_vfm]

    # ------------------------------------------------------------------------------ pieces
    def vocabulary(self, classes: Sequence[str] | str | Vocabulary) -> Vocabulary:
        """Class names as a ``Vocabulary`` checked once as this Segmenter's text encoder sees
        them (``text.check_vocabulary``: no class that can never win), and against the label
        PNG's limits (``check_vocabulary_size``). A vocabulary checked that way already is
        taken as it is.

        Args:
            classes: class lines (``["sky", "person; man"]``), one string with commas between
                classes (``"sky, person; man"``), or a ``Vocabulary``.

        Raises:
            TypeError: ``classes`` is None or not a list of strings.
            ValueError: an empty class name, a class that can never win, too many classes.
        """
        if classes is None:
            raise TypeError(
                "classes is None: pass the class names, e.g. ['sky', 'person; man'] or the "
                "string 'sky, person; man'"
            )
        if not (isinstance(classes, Vocabulary) and classes.tokenized):
            lines = classes.lines if isinstance(classes, Vocabulary) else classes
            if isinstance(lines, str):
                lines = parse_classes_arg(lines, "classes")
            classes = Vocabulary.of(lines, "classes", keys=self.text.query_keys)
        check_vocabulary_size(len(classes.classes), self._settings.post.background_index)
        return classes

    def query_embeddings(self, vocabulary: Vocabulary | Sequence[str]) -> torch.Tensor:
        """The ``Q x E`` embeddings of a vocabulary's query names, on the device."""
        if not isinstance(vocabulary, Vocabulary):
            vocabulary = Vocabulary.parse(vocabulary)
        return self.text.encode(list(vocabulary.names)).to(self.device)

    def prepare(self, image: ImageSource) -> tuple[torch.Tensor, tuple[int, int]]:
        """SPEC 1: read, resize (OpenCV bilinear on uint8) and CLIP-normalise an image.

        Args:
            image: a path, a PIL image or an ``H x W x 3`` uint8 array (RGB). Such an array
                is used as it is (read, not copied: nothing here writes to it); anything else
                is read with ``images.read.read_image``.

        Returns:
            ``(1 x 3 x H x W float32 tensor, (H0, W0) original size)``.
        """
        rgb = image if is_rgb(image) else read_image(image)
        h0, w0 = rgb.shape[:2]
        win = self._settings.window
        size = protocol_size(h0, w0, win.short_side, win.max_long_side)
        x = to_tensor(resize_image(rgb, size), self.normalisation.mean, self.normalisation.std)
        return x, (h0, w0)

    # ------------------------------------------------------------------------------ encode
    def encode_image(self, image: ImageSource, progress: Progress | None = None) -> ImageFeatures:
        """An image's class-independent features: read and resize it (``prepare``), run the
        backbones over its windows, the global attention and the projection of every token.

        Args:
            image: a path, a PIL image or an ``H x W x 3`` uint8 RGB array.
            progress: ``progress(stage, done, total)`` (stages ``windows``, ``attention``).

        Returns:
            ``ImageFeatures``, to pass to ``segment`` (or ``segment_tensor``) instead of the
            image, for any number of class lists. ``features.nbytes`` is what they hold.
        """
        x, size = self.prepare(image)
        return self.encode_tensor(x, size, progress)

    @torch.inference_mode()
    def encode_tensor(
        self,
        x: torch.Tensor,
        image_size: tuple[int, int] | None = None,
        progress: Progress | None = None,
        timer: StageTimer | None = None,
    ) -> ImageFeatures:
        """``encode_image`` for a prepared ``1 x 3 x H x W`` float32 tensor (SPEC 1 done);
        ``image_size``: the original size the labels should come at (default ``H x W``).

        An input side shorter than the window is first upscaled (bilinear, aspect kept) until
        it equals the window, without taking the long side past ``max_long_side``; a side still
        too short is padded with zeros, the mean colour (``network_canvas``).
        """
        if x.ndim != 4 or x.shape[0] != 1 or x.shape[1] != 3:
            raise ValueError(f"expected a 1x3xHxW tensor, got shape {tuple(x.shape)}")
        timer = timer or StageTimer(self.device)
        x = x.to(self.device, torch.float32)
        image = x
        height, width = x.shape[-2:]
        canvas, windows = self._windows(height, width)
        (ch, cw), (canvas_h, canvas_w) = canvas
        if (ch, cw) != (height, width):
            x = F.interpolate(x, size=(ch, cw), mode="bilinear", align_corners=False)
        if (canvas_h, canvas_w) != (ch, cw):  # zeros: the mean colour after normalisation
            x = F.pad(x, (0, canvas_w - cw, 0, canvas_h - ch))
        cfg = self._settings
        with strict_fp32(self.device):
            feats = self.base.window_features(x, windows, cfg, timer, progress)
            with timer("attention"):
                out = self._attend(feats, windows, progress)  # L x S x D
            with timer("project"):
                tokens = self.base.finish(out, feats)  # the last block's output, L x S x D
                embeddings = F.normalize(self.clip_tower.head(tokens), dim=-1)
        size = (height, width)
        return ImageFeatures(
            embeddings.float(), windows, feats.grid, canvas, size, image_size or size,
            self._settings, timings=dict(timer.seconds), image=image[0],
            weights=self.image_fingerprint,
        )  # fmt: skip

    def _windows(self, height: int, width: int) -> tuple[Canvas, list[Window]]:
        """Where the windows of an ``height x width`` input are cut: glaclip's canvas (SPEC 2,
        every window a full crop; ``network_canvas``), or, for a base with native windows, the
        input itself, cut as its authors' code cuts it (or whole, with ``whole_image``)."""
        win = self._settings.window
        if not self.base.native_windows:
            canvas = network_canvas(height, width, win.crop, win.max_long_side)
            return canvas, window_grid(*canvas.size, win.crop, win.stride)
        canvas = Canvas((height, width), (height, width))
        if win.whole_image:
            return canvas, [Window(0, height, 0, width)]
        return canvas, window_grid(height, width, win.crop, win.stride)

    def _attend(
        self, feats: WindowFeatures, windows: list[Window], progress: Progress | None
    ) -> torch.Tensor:
        """The attention output of every patch token (``L x S x D``): GLA's global attention in
        the base's similarity spaces (KV extension on), or the base's own per window."""
        if not self._settings.gla.kv_extension:
            return self.base.window_attention(feats)
        spaces = self.base.similarity_spaces(feats, windows)
        return global_attention(
            spaces, feats["v"], self.base.clip.heads, self._settings.gla, progress, self._half
        )

    # ------------------------------------------------------------------------------ ask
    def segment(
        self,
        image: ImageSource | ImageFeatures,
        classes: Sequence[str] | str | Vocabulary,
        return_scores: bool = False,
        progress: Progress | None = None,
    ) -> Segmentation:
        """Segment one image into the given classes.

        Args:
            image: a path, a PIL image, an ``H x W x 3`` uint8 RGB array, or the features
                ``encode_image`` kept of an image (then only the text and the final product
                run).
            classes: class lines (``["sky", "person; man"]``: synonyms separated by ``;``),
                one string with commas between classes (``"sky, person; man"``), or a
                ``Vocabulary`` (``vocabulary``: checked once for many images).
            return_scores: also return the ``C x H0 x W0`` class probabilities.
            progress: ``progress(stage, done, total)`` as the work advances (stages
                ``windows``, ``attention``), for progress bars on large inputs.

        Returns:
            A ``Segmentation`` at the image's original size.

        Raises:
            TypeError: ``classes`` is None or not a list of strings.
            ValueError: an empty or unreadable image, an empty class name, a class that can
                never win (``text.check_vocabulary``, with the names as the text encoder sees
                them), or features made with other window, method or runtime settings.
        """
        vocabulary = self.vocabulary(classes)
        kept = isinstance(image, ImageFeatures)
        features = image if kept else self.encode_image(image, progress)
        out = self.segment_tensor(features, vocabulary, features.image_size, return_scores)
        return Segmentation(
            labels=to_numpy_labels(out.labels),
            class_names=out.class_names,
            scores=None if out.scores is None else out.scores.cpu().numpy(),
            image_size=features.image_size,
            resized_size=features.input_size,
            timings=out.timings if kept else add_timings(features.timings, out.timings),
        )

    @torch.inference_mode()
    def segment_tensor(
        self,
        x: torch.Tensor | ImageFeatures,
        class_lines: Sequence[str] | Vocabulary,
        output_size: tuple[int, int] | None = None,
        return_scores: bool = False,
        progress: Progress | None = None,
    ) -> SegmentationOutput:
        """Segment a prepared image tensor, or the features ``encode_tensor`` kept of one.

        Args:
            x: ``1 x 3 x H x W`` float32, resized and CLIP-normalised (SPEC 1 done), or
                ``ImageFeatures``.
            class_lines: one class per entry, synonyms separated by ``;`` (parsed as given:
                names that the text encoder cannot tell apart are not refused here), or a
                ``Vocabulary``.
            output_size: ``(H0, W0)`` to resize the logits to before labelling (SPEC 9.3);
                default the input size ``H x W``.
            return_scores: also return the class probabilities at ``output_size``.
            progress: ``progress(stage, done, total)`` (see ``segment``).

        Returns:
            A ``SegmentationOutput``; the logits are cropped and scaled back to ``H x W``
            where the input was enlarged or padded (``encode_tensor``).
        """
        vocabulary = class_lines
        if not isinstance(vocabulary, Vocabulary):
            vocabulary = Vocabulary.parse(class_lines)
        check_vocabulary_size(len(vocabulary.classes), self._settings.post.background_index)
        timer = StageTimer(self.device)
        features = self._input_features(x, progress, timer)
        with strict_fp32(self.device):
            with timer("text"):
                text = self.query_embeddings(vocabulary)
            with timer("stitch"):
                logits = self._stitch(features, text)
        with timer("labels"):
            logits, labels, scores = self._labels(
                logits, features, vocabulary, output_size, return_scores
            )
        return SegmentationOutput(
            logits,
            labels,
            scores,
            vocabulary.class_names(),
            list(vocabulary.names),
            list(vocabulary.owner),
            timer.seconds,
        )

    def _input_features(
        self, x: torch.Tensor | ImageFeatures, progress: Progress | None, timer: StageTimer
    ) -> ImageFeatures:
        """The features of ``segment_tensor``'s input: kept ones, checked against this
        Segmenter (``ImageFeatures.check_compatible``), or those ``encode_tensor`` computes."""
        if isinstance(x, ImageFeatures):
            x.check_compatible(self._settings, self.device, self.image_fingerprint)
            return x
        return self.encode_tensor(x, progress=progress, timer=timer)

    def _labels(
        self,
        logits: torch.Tensor,
        features: ImageFeatures,
        vocabulary: Vocabulary,
        output_size: tuple[int, int] | None,
        return_scores: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The labels step of ``segment_tensor``: ``(logits, labels, scores)``, the logits cropped
        to the image's part of the canvas and scaled back to its input size, then labelled."""
        (ch, cw), _ = features.canvas
        logits = logits[:, :ch, :cw]
        if (ch, cw) != features.input_size:
            logits = _resize(logits, features.input_size)
        labels, scores = self.labels_from_logits(
            logits,
            vocabulary.owner,
            len(vocabulary.classes),
            output_size,
            return_scores,
            features.image,
        )
        return logits, labels, scores

    def _stitch(self, features: ImageFeatures, text: torch.Tensor) -> torch.Tensor:
        """SPEC 9.1-9.2: cosine logits of every token with the ``Q x E`` text embeddings,
        upsampled to each window's size, the overlaps averaged: ``Q x H x W`` on the canvas."""
        feats, windows = features.embeddings, features.windows
        logits = feats @ text.T  # L x S x Q
        gh, gw = features.grid
        logits = logits.permute(0, 2, 1).reshape(len(windows), -1, gh, gw)
        first = windows[0]  # every window of an image has the same size
        size = (first.y2 - first.y1, first.x2 - first.x1)  # each upsampled on its own: memory
        return stitch(logits, windows, size, *features.canvas.size)

    def labels_from_logits(
        self,
        logits: torch.Tensor,
        query_class: Sequence[int],
        num_classes: int,
        output_size: tuple[int, int] | None = None,
        return_scores: bool = False,
        image: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """SPEC 9.3-9.4 with this Segmenter's settings (``postprocess.labels_from_logits``):
        resize, PAMR (with the ``3 x H x W`` normalised ``image``), softmax over queries, max
        over synonyms, area threshold, argmax, threshold, in bands of rows.

        Returns ``(labels h x w int32, class probabilities C x h x w or None)``.
        """
        post = self._settings.post
        return labels_from_logits(
            logits, query_class, num_classes, post, output_size, return_scores, image=image
        )


def _resize(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(t[None], size=size, mode="bilinear", align_corners=False)[0]
