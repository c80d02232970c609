"""Base methods: where the attention's keys come from (SPEC 3-4 and 12).

GLA-CLIP's global attention is "equipped on" a training-free base method. A base decides which
features of each window serve as keys and values, where the proxy iteration starts, and what
"KV extension off" means (the base method itself, per window). Everything after the attention
(projection, logits, stitching, labels) is shared and lives in ``Segmenter``.

* ``ProxyCLIPBase`` (``base="proxyclip"``, the paper's default): keys are a VFM's patch
  tokens (DINO ViT-B/8), values CLIP's last-block values resized to the VFM grid (SPEC 3-4);
  off: ProxyCLIP's per-window attention (SPEC 10).
* ``ClearCLIPBase`` (``base="clearclip"``): keys are CLIP's own last-block queries on CLIP's
  grid, no VFM; the proxy iteration starts from neighbourhood means (SPEC 12.2); off:
  ClearCLIP's per-window q-q attention (SPEC 12.1).

``REGISTRY`` is the one list of base methods: the settings check, the ``--base`` choices, the
demo's methods and the loading of a VFM all read it. A further base is one subclass of
``BaseMethod`` (``name``, ``title``, ``needs_vfm``, ``features`` and ``attend``) decorated with
``register_base``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from glaclip.attention import Progress, attend, initial_proxies, query_attention
from glaclip.backbones import ClipTower, VFMKeyTower
from glaclip.config import GLAConfig, Settings
from glaclip.device import StageTimer
from glaclip.windows import Window


@dataclass
class WindowFeatures:
    """Features of windows (``L`` of them, or one batch), window-major, one row per token.

    Attributes:
        keys: ``L x S x Ck`` the attention's key tokens (not normalised).
        values: ``L x S x D`` CLIP's last-block values on the keys' grid, heads side by side.
        grid: ``(gh, gw)`` token grid of one window (``S = gh * gw``).
        queries: ``L x S x D`` CLIP's last-block queries, for bases that use them.
        clip_keys: ``L x S x D`` CLIP's last-block keys, for bases that use them.
        class_query, class_value: ``L x D`` the class token's query and value, for bases whose
            per-window method attends over it.
    """

    keys: torch.Tensor
    values: torch.Tensor
    grid: tuple[int, int]
    queries: torch.Tensor | None = None
    clip_keys: torch.Tensor | None = None
    class_query: torch.Tensor | None = None
    class_value: torch.Tensor | None = None

    @classmethod
    def cat(cls, parts: Sequence[WindowFeatures]) -> WindowFeatures:
        """The batches of one image as one, every tensor in float32."""
        out = {}
        for f in fields(cls):
            if f.name == "grid":
                continue
            tensors = [getattr(p, f.name) for p in parts]
            out[f.name] = None if tensors[0] is None else torch.cat([t.float() for t in tensors])
        return cls(grid=parts[0].grid, **out)

    def heads(self, tokens: torch.Tensor, heads: int) -> torch.Tensor:
        """``L x S x D`` (heads side by side) as ``heads x L x S x d_h``."""
        n_win, n_tok, d = tokens.shape
        return tokens.reshape(n_win, n_tok, heads, d // heads).permute(2, 0, 1, 3)


class BaseMethod:
    """A base method (see the module docstring). Subclasses set the class attributes and
    implement ``features`` and ``attend``; ``REGISTRY`` lists them by ``name``."""

    name: str = ""  # the ``base`` setting that selects it
    title: str = ""  # its name for people: "ProxyCLIP"
    needs_vfm: bool = False  # whether it takes a vision foundation model (a VFM is loaded)

    def __init__(
        self,
        clip: ClipTower,
        vfm: VFMKeyTower | None = None,
        clip_normalisation: tuple[torch.Tensor, torch.Tensor] | None = None,
        half: torch.dtype | None = None,
    ) -> None:
        """
        Args:
            clip: CLIP's image tower (cast to the fast mode's precision, if any).
            vfm: the VFM tower, for bases that need one.
            clip_normalisation: ``(mean, std)``, ``1 x 3 x 1 x 1`` on the device: how the crops
                were normalised (a VFM undoes it for its own).
            half: the fast mode's half precision, for the global attention's products
                (``blocked.HALF_PRODUCTS``); None: float32.
        """
        if self.needs_vfm and vfm is None:
            raise ValueError(
                f"base {self.name!r} takes its keys from a vision foundation model, but none "
                "was given: pass a VFM, or use a base that needs none: "
                + " or ".join(f"base={n!r}" for n, c in REGISTRY.items() if not c.needs_vfm)
            )
        self.clip, self.vfm = clip, vfm
        self.clip_normalisation = clip_normalisation
        self.half = half

    def patch_sizes(self) -> dict[str, int]:
        """The patch size of each backbone this base runs, by a name for messages."""
        sizes = {"the CLIP patch": self.clip.patch_size[0]}
        if self.vfm is not None and self.needs_vfm:
            sizes["the VFM patch"] = self.vfm.patch_size[0]
        return sizes

    def check_crop(self, crop: int) -> None:
        """Raise ValueError unless the window side ``crop`` is a multiple of every patch size
        (the token grids must cover the window exactly)."""
        sizes = self.patch_sizes()
        bad = {what: p for what, p in sizes.items() if crop % p}
        if bad:
            step = math.lcm(*sizes.values())
            parts = " and ".join(f"{p} ({what})" for what, p in sizes.items())
            raise ValueError(
                f"crop {crop} must be a multiple of {parts}: e.g. {step * max(1, crop // step)}"
                f" or {step * (crop // step + 1)} (the paper's is 224)"
            )

    def features(
        self, crops: torch.Tensor, settings: Settings, timer: StageTimer
    ) -> WindowFeatures:
        """Features of a batch of windows (``B x 3 x c x c`` CLIP-normalised float32 crops), in
        the backbones' dtype."""
        raise NotImplementedError

    def attend(
        self,
        feats: WindowFeatures,
        windows: Sequence[Window],
        cfg: GLAConfig,
        progress: Progress | None = None,
    ) -> torch.Tensor:
        """Attention output ``L x S x D`` (before CLIP's output projection)."""
        raise NotImplementedError

    def window_features(
        self,
        x: torch.Tensor,
        windows: Sequence[Window],
        settings: Settings,
        timer: StageTimer,
        progress: Progress | None = None,
    ) -> WindowFeatures:
        """Run ``features`` over the windows of ``x`` (``1 x 3 x H x W``),
        ``settings.runtime.window_batch`` at a time; float32 results. ``progress("windows",
        done, L)`` after each batch."""
        batch = settings.runtime.window_batch
        parts = []
        for start in range(0, len(windows), batch):
            crops = torch.cat(
                [x[:, :, w.y1 : w.y2, w.x1 : w.x2] for w in windows[start : start + batch]]
            )
            parts.append(self.features(crops, settings, timer))
            if progress is not None:
                progress("windows", min(len(windows), start + batch), len(windows))
        return WindowFeatures.cat(parts)


REGISTRY: dict[str, type[BaseMethod]] = {}


def register_base(cls: type[BaseMethod]) -> type[BaseMethod]:
    """Class decorator: list ``cls`` in ``REGISTRY`` under ``cls.name``."""
    if not cls.name or not cls.title:
        raise ValueError(f"{cls.__name__} needs a name and a title to be registered")
    REGISTRY[cls.name] = cls
    return cls


@register_base
class ProxyCLIPBase(BaseMethod):
    """Keys from a vision foundation model, values from CLIP (SPEC 3-7, 10)."""

    name = "proxyclip"
    title = "ProxyCLIP"
    needs_vfm = True

    def features(self, crops, settings, timer):
        mean, std = self.clip_normalisation
        with timer("vfm"):
            fused = settings.runtime.fused
            k = self.vfm.keys(crops, mean, std, fused_attention=fused)  # b x gh x gw x Ck
        gh, gw = k.shape[1], k.shape[2]
        with timer("clip"):
            v = self.clip.values(crops)  # b x D x gh' x gw'
            if v.shape[-2:] != (gh, gw):
                v = F.interpolate(v.float(), size=(gh, gw), mode="bilinear", align_corners=False)
        keys = k.reshape(k.shape[0], gh * gw, -1)
        return WindowFeatures(keys, v.reshape(v.shape[0], v.shape[1], -1).transpose(1, 2), (gh, gw))

    def attend(self, feats, windows, cfg, progress=None):
        values = feats.heads(feats.values, self.clip.heads)
        return attend(feats.keys, values, cfg, progress=progress, half=self.half)


@register_base
class ClearCLIPBase(BaseMethod):
    """CLIP alone: its last block's queries are the keys (SPEC 12). No VFM."""

    name = "clearclip"
    title = "ClearCLIP"

    def features(self, crops, settings, timer):
        with timer("clip"):
            y, grid = self.clip.last_block_input(crops)  # b x (1+S) x D
            q = self.clip.projection(y, "q")
            v = self.clip.projection(y, "v")
        feats = WindowFeatures(keys=q[:, 1:], values=v[:, 1:], grid=grid, queries=q[:, 1:])
        if not settings.gla.kv_extension:  # the per-window method attends over the class token
            feats.class_query, feats.class_value = q[:, 0], v[:, 0]
        return feats

    def attend(self, feats, windows, cfg, progress=None):
        n_win, n_tok, d = feats.keys.shape
        if not cfg.kv_extension:  # SPEC 12.1: q-q attention over [class token; patches]
            assert feats.class_query is not None and feats.class_value is not None
            q_all = torch.cat([feats.class_query[:, None], feats.queries], dim=1)
            v_all = torch.cat([feats.class_value[:, None], feats.values], dim=1)
            return query_attention(q_all, v_all, self.clip.heads)[:, 1:]
        gh, gw = feats.grid
        initial = None
        if cfg.proxy_anchor or cfg.dynamic_norm:
            group, n_groups = token_groups(windows, feats.grid, self.clip.patch_size)
            q = feats.keys.reshape(n_win, gh, gw, d)
            initial = initial_proxies(q, group.to(q.device), n_groups)
        values = feats.heads(feats.values, self.clip.heads)
        return attend(feats.keys, values, cfg, initial=initial, progress=progress, half=self.half)


def token_positions(
    windows: Sequence[Window], grid: tuple[int, int], patch: tuple[int, int]
) -> torch.Tensor:
    """``L x gh x gw`` int64 on the CPU: each token's position, the index of the top-left
    pixel of its patch in the (resized) image, ``y * width + x`` (SPEC 12.2). Made on the host
    from the windows' coordinates (numbers, not device data)."""
    gh, gw = grid
    cpu = torch.device("cpu")
    width = max(w.x2 for w in windows)
    y0 = torch.tensor([w.y1 for w in windows], device=cpu).view(-1, 1, 1)
    x0 = torch.tensor([w.x1 for w in windows], device=cpu).view(-1, 1, 1)
    ys = y0 + patch[0] * torch.arange(gh, device=cpu).view(1, gh, 1)
    xs = x0 + patch[1] * torch.arange(gw, device=cpu).view(1, 1, gw)
    return ys * width + xs


def token_groups(
    windows: Sequence[Window], grid: tuple[int, int], patch: tuple[int, int]
) -> tuple[torch.Tensor, int]:
    """``(group, n_groups)``: the tokens' positions (``token_positions``, flattened
    window-major) numbered ``0 .. n_groups - 1`` in order of position, on the CPU. Computed on
    the host, so that the device never has to report how many distinct positions there are."""
    positions = token_positions(windows, grid, patch).reshape(-1)
    unique, group = torch.unique(positions, return_inverse=True)
    return group, unique.numel()


def base_class(name: str) -> type[BaseMethod]:
    """The registered base method called ``name``.

    Raises:
        ValueError: no base of that name (the message lists the registered ones).
    """
    if name not in REGISTRY:
        raise ValueError(f"unknown base method {name!r}: use {' or '.join(REGISTRY)}")
    return REGISTRY[name]


def needs_vfm(name: str) -> bool:
    """Whether the base method ``name`` takes a VFM (so one must be loaded)."""
    return base_class(name).needs_vfm


def make_base(
    name: str,
    clip: ClipTower,
    vfm: VFMKeyTower | None,
    clip_normalisation: tuple[torch.Tensor, torch.Tensor],
    half: torch.dtype | None = None,
) -> BaseMethod:
    """The base method called ``name``, over the given towers (see ``BaseMethod``).

    Raises:
        ValueError: an unknown name, or a base that needs a VFM without one.
    """
    return base_class(name)(clip, vfm, clip_normalisation, half)


def method_choices(default: str = "proxyclip") -> dict[str, dict[str, object]]:
    """The methods a person can choose (the demo's menu): for each registered base, GLA on it
    and the base alone per window, by label -> flat settings. ``"GLA-CLIP"`` is GLA on the
    ``default`` base; a base without a VFM is marked "(no VFM)"."""
    choices: dict[str, dict[str, object]] = {}
    for name, cls in REGISTRY.items():
        mark = "" if cls.needs_vfm else " (no VFM)"
        gla = "GLA-CLIP" if name == default else f"GLA-CLIP on {cls.title}{mark}"
        choices[gla] = {"base": name, "kv_extension": True}
        choices[f"{cls.title} per window{mark}"] = {"base": name, "kv_extension": False}
    return choices
