"""Settings of the method, as frozen dataclasses with the paper's defaults.

Every switch and number of SPEC.md is a field here. ``settings_from_kwargs`` routes flat
keyword settings (``kv_extension=False, prob_threshold=0.1, ...``) to the right dataclass.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from glaclip.registry import REGISTRY, base_class, setting_owner


def check_int(name: str, value: Any, minimum: int) -> None:
    """Raise ValueError unless ``value`` is an integer (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")


def check_bool(name: str, value: Any) -> None:
    """Raise ValueError unless ``value`` is True or False."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def check_real(
    name: str,
    value: Any,
    above: float | None = None,
    at_least: float | None = None,
    at_most: float | None = None,
) -> None:
    """Raise ValueError unless ``value`` is a finite real number (not a bool) in range:
    ``> above``, ``>= at_least``, ``<= at_most`` (each bound optional)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if above is not None and not value > above:
        raise ValueError(f"{name} must be above {above:g}, got {value:g}")
    if at_least is not None and value < at_least:
        raise ValueError(f"{name} must be at least {at_least:g}, got {value:g}")
    if at_most is not None and value > at_most:
        raise ValueError(f"{name} must be at most {at_most:g}, got {value:g}")


@dataclass(frozen=True)
class WindowConfig:
    """Sliding windows (SPEC 1-2)."""

    crop: int = 224  # window side in pixels of the resized image
    stride: int = 112  # step between windows
    short_side: int = 336  # protocol resize: target short side
    max_long_side: int = 2048  # protocol resize: cap on the long side
    whole_image: bool = False  # one pass over the whole image, no windows (NACLIP's VOC protocol)

    def __post_init__(self) -> None:
        for name in ("crop", "stride", "short_side", "max_long_side"):
            check_int(name, getattr(self, name), 1)
        check_bool("whole_image", self.whole_image)
        if self.stride > self.crop:
            raise ValueError(
                f"stride={self.stride} is larger than crop={self.crop}: the windows would leave "
                f"columns and rows that no window covers; pass a stride <= crop (e.g. "
                f"stride={max(1, self.crop // 2)}; the paper's is half the crop)"
            )
        if self.crop > self.max_long_side:
            raise ValueError(
                f"crop={self.crop} is larger than max_long_side={self.max_long_side}: a window "
                "larger than the largest image side is not a window; the paper's crop is 224"
            )


PRECISIONS = ("fp32", "bf16", "fp16")  # backbone precisions
MAX_INDEXED_CLASSES = 255  # classes an indexed (8-bit) label PNG holds; 255 marks unlabelled
MAX_CLASSES = 65535  # classes a 16-bit label PNG holds; 65535 marks unlabelled


def unlabelled_value(num_classes: int) -> int:
    """The label of unlabelled pixels in a label PNG of ``num_classes`` classes: 255 in an
    indexed PNG (up to 255 classes), 65535 in a 16-bit one (more)."""
    return 255 if num_classes <= MAX_INDEXED_CLASSES else 65535


def check_vocabulary_size(num_classes: int, background_index: int) -> None:
    """Raise ValueError if ``background_index`` names no class and is not the unlabelled
    value (``unlabelled_value``), or if there are more classes than a label PNG holds."""
    if num_classes > MAX_CLASSES:
        raise ValueError(
            f"{num_classes} classes: a label PNG holds at most {MAX_CLASSES}; split the vocabulary"
        )
    unlabelled = unlabelled_value(num_classes)
    if not (0 <= background_index < num_classes or background_index == unlabelled):
        raise ValueError(
            f"background_index={background_index} names no class of the {num_classes} given "
            f"(0..{num_classes - 1}) and is not {unlabelled}, the value of "
            "unlabelled pixels: pass a class index or leave it unset"
        )


@dataclass(frozen=True)
class GLAConfig:
    """The base method and the global-local attention (SPEC 5-7, 10, 12)."""

    base: str = "proxyclip"  # the base method (glaclip.registry): proxyclip, clearclip, ...
    kv_extension: bool = True  # attend across all windows (off: the base's per-window method)
    proxy_anchor: bool = True  # proxy anchors (SPEC 5)
    dynamic_norm: bool = True  # dynamic beta and gamma (SPEC 6)
    dynamic_beta: bool = True  # with dynamic_norm: beta from the window count (off: fixed_beta)
    token_norm: bool = True  # per-row mean (off: one mean over the whole matrix)
    proxy_iters: int = 2  # T
    proxy_threshold: float = 0.6  # tau (the reference's eval script uses 0.55)
    beta_alpha: float = 0.3  # lambda1
    gamma_alpha: float = 30.0  # lambda2
    fixed_beta: float = 1.2  # beta when dynamic normalisation is off
    fixed_gamma: float = 3.0  # gamma when dynamic normalisation is off
    block_size: int | None = None  # query rows per attention block (None: from memory)
    attention_impl: str = "blocked"  # blocked (exact, O(block x N) memory) | dense (N x N oracle)

    def __post_init__(self) -> None:
        base_class(self.base)  # a registered base method (the message lists them)
        check_int("proxy_iters", self.proxy_iters, 0)
        check_real("proxy_threshold", self.proxy_threshold, at_least=0.0, at_most=1.0)
        for name in ("beta_alpha", "gamma_alpha", "fixed_beta", "fixed_gamma"):
            check_real(name, getattr(self, name), above=0.0)
        if self.block_size is not None:
            check_int("block_size", self.block_size, 1)
        if self.attention_impl not in ("blocked", "dense"):
            raise ValueError(
                f"attention_impl must be 'blocked' or 'dense', got {self.attention_impl!r}"
            )


@dataclass(frozen=True)
class PostConfig:
    """Logits to labels (SPEC 9.3-9.4, 13-14): PAMR, softmax, area and probability thresholds."""

    logit_scale: float = 40.0  # softmax temperature applied to cosine logits
    prob_threshold: float = 0.0  # below this winning probability a pixel gets background_index
    background_index: int = 0  # label for low-confidence pixels (0: the first class)
    # SCLIP's area threshold: a class (other than background_index) whose share of the argmax
    # is not above this is dropped before the labels are taken; 0: off
    area_threshold: float = 0.0
    pamr_steps: int = 0  # pixel-adaptive mask refinement (NACLIP's PAMR) steps; 0: off
    pamr_dilations: tuple[int, ...] = (8, 16)  # PAMR's neighbourhood dilations in pixels

    def __post_init__(self) -> None:
        check_real("logit_scale", self.logit_scale, above=0.0)
        check_real("prob_threshold", self.prob_threshold, at_least=0.0, at_most=1.0)
        check_int("background_index", self.background_index, 0)
        check_real("area_threshold", self.area_threshold, at_least=0.0)
        if self.area_threshold >= 1.0:
            raise ValueError(
                f"area_threshold must be below 1 (a share of the image), got "
                f"{self.area_threshold:g}; SCLIP's is 0.1"
            )
        check_int("pamr_steps", self.pamr_steps, 0)
        dilations = self.pamr_dilations
        if isinstance(dilations, (str, bytes)) or not isinstance(dilations, Sequence):
            raise ValueError(f"pamr_dilations must be a list of whole numbers, got {dilations!r}")
        if not dilations:
            raise ValueError("pamr_dilations must name at least one dilation, e.g. (8, 16)")
        for d in dilations:
            check_int("each of pamr_dilations", d, 1)
        object.__setattr__(self, "pamr_dilations", tuple(int(d) for d in dilations))


@dataclass(frozen=True)
class RuntimeConfig:
    """How the computation runs.

    ``window_batch`` never changes what is computed. ``precision`` and ``fused_attention`` do.
    ``fp32`` (the default) is the reference's arithmetic. ``bf16`` and ``fp16`` are the fast
    mode: the backbones run cast to that precision with the VFM's fused attention kernel, and
    the global attention's weights-times-values product runs in it too (``attention.
    HALF_PRODUCTS``), while its thresholds, softmax and normalisations stay in float32. Either
    departure can flip the method's thresholds (``A > tau``) and so change labels.
    """

    window_batch: int = 4  # windows per backbone batch (larger batches are not faster on CPU)
    precision: str = "fp32"  # fp32 (exact) | bf16 | fp16 (the fast mode)
    # the VFM's fused attention kernel: None follows the precision (on in bf16/fp16)
    fused_attention: bool | None = None
    allow_slow: bool = False  # run settings that take far longer than the paper's (slow_reasons)

    @property
    def fused(self) -> bool:
        """Whether the VFM runs its fused attention kernel."""
        if self.fused_attention is None:
            return self.precision != "fp32"
        return self.fused_attention

    def __post_init__(self) -> None:
        check_int("window_batch", self.window_batch, 1)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be fp32, bf16 or fp16, got {self.precision!r}")


@dataclass(frozen=True)
class Settings:
    """All settings of a Segmenter.

    ``method`` holds the settings of the base method itself (``BaseMethod.settings_class``, a
    frozen dataclass registered with the base: NACLIP's ``gaussian_std``, ...), or None for a
    base that has none.
    """

    window: WindowConfig = field(default_factory=WindowConfig)
    gla: GLAConfig = field(default_factory=GLAConfig)
    post: PostConfig = field(default_factory=PostConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    method: Any = None

    def __post_init__(self) -> None:
        cls = base_class(self.gla.base)
        own = cls.settings_class
        if self.method is None and own is not None:
            object.__setattr__(self, "method", own())
        elif (
            own is None
            and self.method is not None
            or (own is not None and not isinstance(self.method, own))
        ):
            raise ValueError(
                f"method settings {self.method!r} do not belong to base {self.gla.base!r}"
            )
        cls.check_settings(self)
        reasons = slow_reasons(self)
        if reasons and not self.runtime.allow_slow:
            raise ValueError("; ".join(reasons) + ". Pass allow_slow=True to run it anyway")

    def parts(self) -> dict[str, Any]:
        """The settings' parts by name (``window``, ``gla``, ``post``, ``runtime``, and
        ``method`` where the base has settings of its own)."""
        parts = {name: getattr(self, name) for name in _PARTS}
        if self.method is not None:
            parts["method"] = self.method
        return parts

    def feature_parts(self) -> dict[str, Any]:
        """The parts that shape an image's features (``Segmenter.encode_image``): every part
        but the post-processing, which only turns the features into labels."""
        return {name: part for name, part in self.parts().items() if name != "post"}

    def to_dict(self) -> dict[str, Any]:
        """Flat ``{name: value}`` of every setting (for result files; tuples as lists)."""
        out: dict[str, Any] = {}
        for part in self.parts().values():
            for name, value in dataclasses.asdict(part).items():
                out[name] = list(value) if isinstance(value, tuple) else value
        return out

    def replace(self, **kwargs: Any) -> Settings:
        """A copy with some flat settings changed."""
        return settings_from_kwargs(self, **kwargs)


SLOW_STRIDE_DIVISOR = 8  # a stride below crop / 8 is refused without allow_slow
MAX_PROXY_ITERS = 10  # more proxy iterations are refused without allow_slow
MAX_PAMR_STEPS = 50  # more PAMR steps are refused without allow_slow (NACLIP's protocol: 10)
MAX_WHOLE_IMAGE_TOKENS = 8192  # a larger one-pass image is refused without allow_slow
_PATCH = 16  # CLIP ViT-B/16's patch, for the whole-image estimate
_REFERENCE_IMAGE = (3, 4)  # the aspect ratio of the image the window estimate is made for


def _window_count(settings: WindowConfig, stride: int) -> tuple[int, int, int]:
    """``(windows, height, width)`` for a 3:4 photo at the protocol size (SPEC 1-2)."""
    h = settings.short_side
    w = min(settings.max_long_side, round(h * _REFERENCE_IMAGE[1] / _REFERENCE_IMAGE[0]))
    h, w = max(h, settings.crop), max(w, settings.crop)

    def count(size: int) -> int:
        return max(size - settings.crop + stride - 1, 0) // stride + 1

    return count(h) * count(w), h, w


def slow_reasons(settings: Settings) -> list[str]:
    """Why ``settings`` would take far longer than the paper's (empty when they would not),
    with an estimate: a stride below ``crop / 8`` (the windows grow with the square of ``crop /
    stride``), more than 10 proxy iterations (each one is a pass of the global attention),
    more than 50 PAMR steps, or a whole-image pass over more than 8,192 tokens."""
    win, gla, reasons = settings.window, settings.gla, _post_slow_reasons(settings)
    if win.stride * SLOW_STRIDE_DIVISOR < win.crop:
        n, h, w = _window_count(win, win.stride)
        usual = max(1, win.crop // 2)
        base, _, _ = _window_count(win, usual)
        reasons.append(
            f"stride={win.stride} is below crop / {SLOW_STRIDE_DIVISOR} "
            f"({win.crop / SLOW_STRIDE_DIVISOR:g}): a {h} x {w} image would take {n:,} windows "
            f"instead of {base:,} at stride {usual}, at least {n / base:,.0f} times the work "
            "(hours instead of seconds on a CPU); pass a stride of at least "
            f"{math.ceil(win.crop / SLOW_STRIDE_DIVISOR)}"
        )
    if gla.proxy_iters > MAX_PROXY_ITERS:
        reasons.append(
            f"proxy_iters={gla.proxy_iters} is above {MAX_PROXY_ITERS}: each iteration is one "
            "more pass of the global attention over every window (the paper's is 2), so the "
            f"attention would take about {gla.proxy_iters / 2:,.0f} times as long"
        )
    return reasons


def _whole_image_tokens(win: WindowConfig, short_side: int) -> tuple[int, int, int]:
    """``(tokens, height, width)`` of a 3:4 photo in one pass at ``short_side`` (ViT-B/16)."""
    h = short_side
    w = min(win.max_long_side, round(h * _REFERENCE_IMAGE[1] / _REFERENCE_IMAGE[0]))
    return (h // _PATCH) * (w // _PATCH), h, w


def _post_slow_reasons(settings: Settings) -> list[str]:
    """``slow_reasons`` of PAMR's steps and of a whole-image pass."""
    win, post, reasons = settings.window, settings.post, []
    if post.pamr_steps > MAX_PAMR_STEPS:
        reasons.append(
            f"pamr_steps={post.pamr_steps} is above {MAX_PAMR_STEPS}: each step passes "
            f"{8 * len(post.pamr_dilations)} shifted copies of every class map at the image's "
            f"original size (NACLIP's protocol takes 10), so PAMR would take about "
            f"{post.pamr_steps / 10:,.0f} times as long as NACLIP's"
        )
    tokens, h, w = _whole_image_tokens(win, win.short_side) if win.whole_image else (0, 0, 0)
    if tokens > MAX_WHOLE_IMAGE_TOKENS:
        side = win.short_side
        while side > _PATCH and _whole_image_tokens(win, side)[0] > MAX_WHOLE_IMAGE_TOKENS:
            side -= _PATCH
        reasons.append(
            f"whole_image with short_side={win.short_side}: a {h} x {w} image is one pass of "
            f"CLIP over {tokens:,} tokens, whose attention grows with their square (about "
            f"{48 * tokens**2 / 2**30:,.1f} GiB per layer of ViT-B/16); use windows "
            f"(whole_image=False) or a short_side of at most {side}"
        )
    return reasons


_PARTS = {"window": WindowConfig, "gla": GLAConfig, "post": PostConfig, "runtime": RuntimeConfig}


def setting_names() -> list[str]:
    """Every flat setting name accepted by ``settings_from_kwargs`` (the base methods' own
    settings included)."""
    names = [f.name for cls in _PARTS.values() for f in dataclasses.fields(cls)]
    for cls in REGISTRY.values():
        if cls.settings_class is not None:
            names += [f.name for f in dataclasses.fields(cls.settings_class) if f.name not in names]
    return names


def settings_from_kwargs(start: Settings | None = None, /, **kwargs: Any) -> Settings:
    """Build ``Settings`` from flat keyword settings, starting from ``start`` (or the defaults).

    A base method's own settings (``gaussian_std`` of ``base="naclip"``, ...) go to its
    settings; they restart from that base's defaults when ``base`` changes.

    Raises:
        TypeError: for a name that is not a setting (the message lists the valid ones).
        ValueError: for a setting of another base method than the one chosen.
    """
    start = start or Settings()
    base = kwargs.get("base", start.gla.base)
    own = base_class(base).settings_class
    own_names = {f.name for f in dataclasses.fields(own)} if own is not None else set()
    updates: dict[str, dict[str, Any]] = {part: {} for part in _PARTS}
    method_updates: dict[str, Any] = {}
    for name, value in kwargs.items():
        for part, cls in _PARTS.items():
            if name in {f.name for f in dataclasses.fields(cls)}:
                updates[part][name] = value
                break
        else:
            if name in own_names:
                method_updates[name] = value
                continue
            owners = setting_owner(name)
            if owners:
                raise ValueError(
                    f"{name} is a setting of base={owners[0]!r} only, not of base={base!r}: "
                    f"choose base={owners[0]!r} or leave {name} unset"
                )
            raise TypeError(
                f"unknown setting {name!r}; valid settings: {', '.join(setting_names())}"
            )
    method = start.method if start.gla.base == base else None
    if own is not None:
        method = dataclasses.replace(method or own(), **method_updates)
    return Settings(
        **{
            part: dataclasses.replace(getattr(start, part), **changes)
            for part, changes in updates.items()
        },
        method=method,
    )
