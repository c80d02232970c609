"""Segmenter: image -> windows -> keys and values -> attention -> logits -> labels."""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import torch
import torch.nn.functional as F

from glaclip import attention, backbones
from glaclip.attention import Progress, half_mm
from glaclip.bases import BaseMethod, make_base, needs_vfm
from glaclip.config import Settings, check_vocabulary_size, settings_from_kwargs
from glaclip.device import (
    StageTimer,
    native_precision,
    precision_dtype,
    resolve_device,
    strict_fp32,
)
from glaclip.imageio import protocol_size, read_image, resize_image, to_tensor
from glaclip.postprocess import labels_from_logits
from glaclip.text import (
    TextEncoder,
    check_vocabulary,
    expand_queries,
    parse_class_lines,
    parse_classes_arg,
)
from glaclip.viz import pixel_shares
from glaclip.windows import Window, network_canvas, stitch, window_grid

if TYPE_CHECKING:
    import PIL.Image


ImageSource = Union[str, os.PathLike, "PIL.Image.Image", np.ndarray]


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
    """

    query_logits: torch.Tensor
    labels: torch.Tensor
    scores: torch.Tensor | None
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
        scores: ``C x H0 x W0`` float32 tensor of class probabilities in [0, 1], or None
            unless ``segment(..., return_scores=True)`` asked for it (it takes
            ``4 x C x H0 x W0`` bytes: 5 GB for 100 classes on a 12-megapixel photo).
        image_size: ``(H0, W0)``; ``resized_size``: ``(H, W)`` the network saw.
    """

    labels: np.ndarray
    class_names: list[list[str]]
    scores: torch.Tensor | None
    image_size: tuple[int, int]
    resized_size: tuple[int, int]
    timings: dict[str, float] = field(default_factory=dict)

    def pixel_shares(self) -> list[float]:
        """Fraction of the image's pixels given to each class (unlabelled pixels count in the
        denominator only)."""
        return pixel_shares(self.labels, len(self.class_names))


class Segmenter:
    """GLA-CLIP segmenter: CLIP's image tower for values, a base method's keys (a VFM's tokens,
    or CLIP's own queries), CLIP's text tower for the class queries.

    Build it with ``from_pretrained`` (names of weights) or ``from_modules`` (models in hand),
    then call ``segment`` on images or ``segment_tensor`` on prepared tensors. Query embeddings
    are computed once per class name and reused.
    """

    def __init__(
        self,
        clip_model: torch.nn.Module,
        vfm_model: torch.nn.Module | None,
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
        self.device = resolve_device(device if device is not None else module_device(clip_model))
        self.clip_model = clip_model.to(self.device).eval()
        self.clip_tower = backbones.ClipTower(self.clip_model.visual)
        self.vfm_tower = None
        if vfm_model is not None:
            self.vfm_tower = backbones.VFMKeyTower(vfm_model.eval()).to(self.device)
        # backbone towers per precision: fp32 wraps the models; bf16/fp16 are cast copies
        # (made on first use, shared with with_settings copies)
        self._towers: dict[str, tuple[backbones.ClipTower, backbones.VFMKeyTower | None]] = {
            "fp32": (self.clip_tower, self.vfm_tower)
        }
        self.clip_info = clip_info or backbones.ModelInfo(type(clip_model).__name__, None)
        self.vfm_info = vfm_info or (
            backbones.ModelInfo(type(vfm_model).__name__, None) if vfm_model is not None else None
        )
        self.normalisation = (tuple(map(float, clip_mean)), tuple(map(float, clip_std)))
        mean, std = (
            torch.tensor(v, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
            for v in self.normalisation
        )
        self.clip_mean, self.clip_std = mean, std  # 1 x 3 x 1 x 1, on the device
        self.base = self._make_base()
        self.text = TextEncoder(self.clip_model, tokenizer, cache_dir=text_cache_dir)

    # ------------------------------------------------------------------------------ builders
    @classmethod
    def from_modules(
        cls,
        clip_model: torch.nn.Module,
        vfm_model: torch.nn.Module | None,
        tokenizer: Any,
        device: str | torch.device | None = None,
        **settings: Any,
    ) -> Segmenter:
        """Wrap an open_clip ``CLIP`` model, a timm ViT and an open_clip tokenizer.

        ``settings`` are flat keyword settings (see ``glaclip.config``), e.g.
        ``kv_extension=False, prob_threshold=0.1``. ``vfm_model`` may be None with
        ``base="clearclip"``, which takes its keys from CLIP.

        Args:
            device: where to run (``cpu``, ``cuda``, ``cuda:1``, ``mps``); the models are moved
                there (``Module.to``, in place). None: the CLIP model's device, index included
                (models on ``cuda:1`` run on ``cuda:1``).
        """
        return cls(clip_model, vfm_model, tokenizer, settings_from_kwargs(**settings), device)

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

        With ``base="clearclip"`` no VFM is loaded (``vfm`` and ``vfm_checkpoint`` are unused).

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
        vfm_model = None
        if needs_vfm(settings_obj.gla.base):
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
            backbones.ModelInfo(vfm, vfm_checkpoint) if vfm_model is not None else None,
            mean,
            std,
            text_cache_dir,
        )

    def with_settings(self, **settings: Any) -> Segmenter:
        """A Segmenter sharing this one's models and text embeddings, with some flat settings
        changed (``kv_extension=False``, ``prob_threshold=0.2``, ...). Loads nothing."""
        other = copy.copy(self)
        other.settings = self.settings.replace(**settings)
        other.base = other._make_base()
        return other

    def model_names(self) -> dict[str, str | None]:
        """The backbones in use, for result files: ``{"clip", "clip_pretrained", "vfm",
        "vfm_checkpoint"}``; the VFM entries are None when the base method uses no VFM."""
        vfm = self.vfm_info if self.base.needs_vfm else None
        return {
            "clip": self.clip_info.name,
            "clip_pretrained": self.clip_info.pretrained,
            "vfm": vfm.name if vfm else None,
            "vfm_checkpoint": vfm.pretrained if vfm else None,
        }

    def _make_base(self) -> BaseMethod:
        precision = self.settings.runtime.precision
        clip, vfm = self._towers_for(precision)
        half = None if precision == "fp32" else precision_dtype(precision)
        base = make_base(self.settings.gla.base, clip, vfm, self.clip_mean, self.clip_std, half)
        base.check_crop(self.settings.window.crop)
        return base

    def _towers_for(
        self, precision: str
    ) -> tuple[backbones.ClipTower, backbones.VFMKeyTower | None]:
        """The backbone towers for a precision: the models themselves for fp32, copies of the
        image towers cast to bf16/fp16 otherwise (the caller's models and the text tower are
        left in float32). Cast weights, not autocast: on the CPU, autocast turns the attention's
        input projection into a slow batched product."""
        if precision not in self._towers:
            dtype = precision_dtype(precision)
            if not native_precision(self.device, precision):
                warnings.warn(
                    f"precision {precision} on this {self.device.type.upper()} has no native "
                    f"{precision} instructions (AVX-512 BF16/FP16 or AMX on CPUs): it is "
                    "emulated and several times slower than fp32 (6-9x measured on an AVX2 "
                    "CPU); use fp32 here",
                    RuntimeWarning,
                    stacklevel=3,
                )
            clip = backbones.ClipTower(copy.deepcopy(self.clip_model.visual).to(dtype))
            vfm = None
            if self.vfm_tower is not None:
                vfm = backbones.VFMKeyTower(copy.deepcopy(self.vfm_tower.model).to(dtype))
            self._towers[precision] = (clip, vfm)
        return self._towers[precision]

    # ------------------------------------------------------------------------------ pieces
    def query_embeddings(
        self, class_lines: Sequence[str]
    ) -> tuple[torch.Tensor, list[list[str]], list[str], list[int]]:
        """Parse class lines and embed their query names: ``(Q x E, classes, names, owners)``."""
        classes = parse_class_lines(class_lines)
        names, owner = expand_queries(classes)
        return self.text.encode(names).to(self.device), classes, names, owner

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
        x = to_tensor(resize_image(rgb, size), *self.normalisation)
        return x, (h0, w0)

    def segment(
        self,
        image: ImageSource,
        classes: Sequence[str] | str,
        return_scores: bool = False,
        progress: Progress | None = None,
    ) -> Segmentation:
        """Segment one image into the given classes.

        Args:
            image: a path, a PIL image or an ``H x W x 3`` uint8 RGB array.
            classes: class lines (``["sky", "person; man"]``: synonyms separated by ``;``) or
                one string with commas between classes (``"sky, person; man"``).
            return_scores: also return the ``C x H0 x W0`` class probabilities.
            progress: ``progress(stage, done, total)`` as the work advances (stages
                ``windows``, ``attention``), for progress bars on large inputs.

        Returns:
            A ``Segmentation`` at the image's original size.

        Raises:
            TypeError: ``classes`` is None or not a list of strings.
            ValueError: an empty or unreadable image, an empty class name, or a class that
                can never win (``text.check_vocabulary``, with the names as the text encoder
                sees them).
        """
        if classes is None:
            raise TypeError(
                "classes is None: pass the class names, e.g. ['sky', 'person; man'] or the "
                "string 'sky, person; man'"
            )
        lines = parse_classes_arg(classes, "classes") if isinstance(classes, str) else classes
        check_vocabulary(lines, "classes", keys=self.text.query_keys)
        lines = list(lines)
        x, size = self.prepare(image)
        out = self.segment_tensor(x, lines, size, return_scores, progress)
        return Segmentation(
            labels=to_numpy_labels(out.labels),
            class_names=out.class_names,
            scores=None if out.scores is None else out.scores.cpu(),
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
        return_scores: bool = False,
        progress: Progress | None = None,
    ) -> SegmentationOutput:
        """Segment a prepared image tensor.

        Args:
            x: ``1 x 3 x H x W`` float32, resized and CLIP-normalised (SPEC 1 done).
            class_lines: one class per entry, synonyms separated by ``;``.
            output_size: ``(H0, W0)`` to resize the logits to before labelling (SPEC 9.3);
                default the input size.
            return_scores: also return the class probabilities at ``output_size``.
            progress: ``progress(stage, done, total)`` (see ``segment``).

        Returns:
            A ``SegmentationOutput``. An input side shorter than the window is first upscaled
            (bilinear, aspect kept) until it equals the window, without taking the long side
            past ``max_long_side``; a side still too short is padded (``network_canvas``). The
            logits are cropped and scaled back to the input size.
        """
        if x.ndim != 4 or x.shape[0] != 1 or x.shape[1] != 3:
            raise ValueError(f"expected a 1x3xHxW tensor, got shape {tuple(x.shape)}")
        check_vocabulary_size(
            len(parse_class_lines(class_lines)), self.settings.post.background_index
        )
        timer = StageTimer(self.device)
        x = x.to(self.device, torch.float32)
        height, width = x.shape[-2:]
        win = self.settings.window
        canvas = network_canvas(height, width, win.crop, win.max_long_side)
        (ch, cw), (canvas_h, canvas_w) = canvas
        work = x
        if (ch, cw) != (height, width):
            work = F.interpolate(x, size=(ch, cw), mode="bilinear", align_corners=False)
        if (canvas_h, canvas_w) != (ch, cw):  # zeros: the mean colour after normalisation
            work = F.pad(work, (0, canvas_w - cw, 0, canvas_h - ch))
        with strict_fp32(self.device):
            # the class-independent work first: windows, backbones, the global attention
            windows, grid, attended = self._attend_windows(work, timer, progress)
            with timer("text"):
                text, classes, names, owner = self.query_embeddings(class_lines)
            with timer("stitch"):
                logits = self._stitch(attended, windows, grid, text, (canvas_h, canvas_w))
        with timer("labels"):
            logits = logits[:, :ch, :cw]
            if (ch, cw) != (height, width):
                logits = _resize(logits, (height, width))
            labels, scores = self.labels_from_logits(
                logits, owner, len(classes), output_size, return_scores
            )
        return SegmentationOutput(logits, labels, scores, classes, names, owner, timer.seconds)

    def _attend_windows(
        self, x: torch.Tensor, timer: StageTimer, progress: Progress | None = None
    ) -> tuple[list[Window], tuple[int, int], torch.Tensor]:
        """The windows of the canvas ``x``, their token grid, and the attention output of
        every window's tokens (``L x S x D``, before CLIP's output projection)."""
        cfg = self.settings
        h, w = x.shape[-2:]
        windows = window_grid(h, w, cfg.window.crop, cfg.window.stride)
        feats = self.base.window_features(x, windows, cfg, timer, progress)
        with timer("attention"):
            out = self.base.attend(feats, windows, cfg.gla, progress)  # L x S x D
        return windows, feats.grid, out

    def _stitch(
        self,
        attended: torch.Tensor,
        windows: list[Window],
        grid: tuple[int, int],
        text: torch.Tensor,
        size: tuple[int, int],
    ) -> torch.Tensor:
        """SPEC 9.1-9.2: project, cosine logits with the ``Q x E`` text embeddings, upsample
        each window's map to the crop, average the overlaps: ``Q x H x W`` at canvas ``size``.
        In the fast mode the projection and the cosine product run in its half precision."""
        gh, gw = grid
        half = self.base.half if "stitch" in attention.HALF_PRODUCTS else None
        if half is None:
            feats = F.normalize(self.clip_tower.project(attended), dim=-1)  # L x S x E
            logits = feats @ text.T  # L x S x Q
        else:  # the cast tower's projection; the normalisation in float32
            feats = F.normalize(self.base.clip.project(attended.to(half)).float(), dim=-1)
            flat = half_mm(feats.reshape(-1, feats.shape[-1]).to(half), text.T.to(half))
            logits = flat.reshape(*feats.shape[:2], -1)
        logits = logits.permute(0, 2, 1).reshape(len(windows), -1, gh, gw)
        crop = (self.settings.window.crop, self.settings.window.crop)
        logits = F.interpolate(logits, size=crop, mode="bilinear", align_corners=False)
        return stitch(logits, windows, *size)

    def labels_from_logits(
        self,
        logits: torch.Tensor,
        query_class: Sequence[int],
        num_classes: int,
        output_size: tuple[int, int] | None = None,
        return_scores: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """SPEC 9.3-9.4 with this Segmenter's settings (``postprocess.labels_from_logits``):
        resize, softmax over queries, max over synonyms, argmax, threshold, in bands of rows.

        Returns ``(labels h x w int32, class probabilities C x h x w or None)``.
        """
        return labels_from_logits(
            logits, query_class, num_classes, self.settings.post, output_size, return_scores
        )


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter (with its index: ``cuda:1``), or the CPU."""
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


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
