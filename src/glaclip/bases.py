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

A third base is one more class with ``features`` and ``attend`` and an entry in ``make_base``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from glaclip.attention import Progress, attend, initial_proxies, query_attention
from glaclip.backbones import ClipTower, VFMKeyTower
from glaclip.config import GLAConfig, Settings
from glaclip.device import StageTimer
from glaclip.windows import Window


@dataclass
class WindowFeatures:
    """The features of all windows of one image.

    Attributes:
        keys: ``L x S x Ck`` key tokens (not normalised), window-major.
        values: ``heads x L x S x d_h`` CLIP values on the keys' grid.
        grid: ``(gh, gw)`` token grid of one window (``S = gh * gw``).
        class_tokens: ``L x 2 x D`` the class token's query and value per window, for bases
            whose per-window method attends over it (None otherwise).
    """

    keys: torch.Tensor
    values: torch.Tensor
    grid: tuple[int, int]
    class_tokens: torch.Tensor | None = None


class BaseMethod:
    """Interface of a base method (see the module docstring)."""

    name: str = ""
    needs_vfm: bool = False
    # the half precision of the fast mode (the backbones' dtype), for the global attention's
    # products (``attention.HALF_PRODUCTS``); None: float32
    half: torch.dtype | None = None

    def __init__(self, clip: ClipTower) -> None:
        self.clip = clip

    def patch_sizes(self) -> dict[str, int]:
        """The patch size of each backbone this base runs, by a name for messages."""
        return {"the CLIP patch": self.clip.patch_size[0]}

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
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int], torch.Tensor | None]:
        """Features of a batch of windows (``B x 3 x c x c`` CLIP-normalised float32 crops):
        ``(keys B x S x Ck, values B x D x S, grid, class tokens B x 2 x D or None)``, in the
        backbones' dtype."""
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
        keys, values, cls = [], [], []
        grid = (0, 0)
        for start in range(0, len(windows), batch):
            crops = torch.cat(
                [x[:, :, w.y1 : w.y2, w.x1 : w.x2] for w in windows[start : start + batch]]
            )
            k, v, grid, c = self.features(crops, settings, timer)
            if progress is not None:
                progress("windows", min(len(windows), start + batch), len(windows))
            keys.append(k.float())
            values.append(v.float())
            if c is not None:
                cls.append(c.float())
        vals = torch.cat(values)  # L x D x S
        n_win, d, s = vals.shape
        heads = self.clip.heads
        vals = vals.reshape(n_win, heads, d // heads, s).permute(1, 0, 3, 2)  # heads x L x S x dh
        return WindowFeatures(torch.cat(keys), vals, grid, torch.cat(cls) if cls else None)


class ProxyCLIPBase(BaseMethod):
    """Keys from a vision foundation model, values from CLIP (SPEC 3-7, 10)."""

    name = "proxyclip"
    needs_vfm = True

    def __init__(
        self,
        clip: ClipTower,
        vfm: VFMKeyTower,
        clip_mean: torch.Tensor,
        clip_std: torch.Tensor,
    ) -> None:
        super().__init__(clip)
        self.vfm = vfm
        self.clip_mean = clip_mean  # 1 x 3 x 1 x 1
        self.clip_std = clip_std

    def patch_sizes(self) -> dict[str, int]:
        return {**super().patch_sizes(), "the VFM patch": self.vfm.patch_size[0]}

    def features(self, crops, settings, timer):
        with timer("vfm"):
            fused = settings.runtime.fused
            k = self.vfm.keys(crops, self.clip_mean, self.clip_std, fused_attention=fused)
        gh, gw = k.shape[1], k.shape[2]
        with timer("clip"):
            v = self.clip.values(crops)  # b x D x gh' x gw'
            if v.shape[-2:] != (gh, gw):
                v = F.interpolate(v.float(), size=(gh, gw), mode="bilinear", align_corners=False)
        return (
            k.reshape(k.shape[0], gh * gw, -1),
            v.reshape(v.shape[0], v.shape[1], -1),
            (gh, gw),
            None,
        )

    def attend(self, feats, windows, cfg, progress=None):
        return attend(feats.keys, feats.values, cfg, progress=progress, half=self.half)


class ClearCLIPBase(BaseMethod):
    """CLIP alone: its last block's queries are the keys (SPEC 12). No VFM."""

    name = "clearclip"

    def features(self, crops, settings, timer):
        with timer("clip"):
            y, grid = self.clip.last_block_input(crops)  # b x (1+S) x D
            q = self.clip.projection(y, "q")
            v = self.clip.projection(y, "v")
        cls = None if settings.gla.kv_extension else torch.stack([q[:, 0], v[:, 0]], dim=1)
        return q[:, 1:], v[:, 1:].transpose(1, 2), grid, cls

    def attend(self, feats, windows, cfg, progress=None):
        n_win, n_tok, d = feats.keys.shape
        if not cfg.kv_extension:  # SPEC 12.1: q-q attention over [class token; patches]
            assert feats.class_tokens is not None
            heads = feats.values.shape[0]
            v = feats.values.permute(1, 2, 0, 3).reshape(n_win, n_tok, d)
            q_all = torch.cat([feats.class_tokens[:, :1], feats.keys], dim=1)
            v_all = torch.cat([feats.class_tokens[:, 1:], v], dim=1)
            return query_attention(q_all, v_all, heads)[:, 1:]
        gh, gw = feats.grid
        initial = None
        if cfg.proxy_anchor or cfg.dynamic_norm:
            group, n_groups = token_groups(windows, feats.grid, self.clip.patch_size)
            q = feats.keys.reshape(n_win, gh, gw, d)
            initial = initial_proxies(q, group.to(q.device), n_groups)
        return attend(
            feats.keys, feats.values, cfg, initial=initial, progress=progress, half=self.half
        )


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
    unique, group = torch.unique(
        token_positions(windows, grid, patch).reshape(-1), return_inverse=True
    )
    return group, unique.numel()


REGISTRY: dict[str, type[BaseMethod]] = {"proxyclip": ProxyCLIPBase, "clearclip": ClearCLIPBase}


def needs_vfm(name: str) -> bool:
    """Whether the base method ``name`` takes its keys from a VFM (so one must be loaded)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown base method {name!r}: use {' or '.join(REGISTRY)}")
    return REGISTRY[name].needs_vfm


def make_base(
    name: str,
    clip: ClipTower,
    vfm: VFMKeyTower | None,
    clip_mean: torch.Tensor,
    clip_std: torch.Tensor,
    half: torch.dtype | None = None,
) -> BaseMethod:
    """The base method called ``name`` (``proxyclip`` or ``clearclip``); ``half``: the fast
    mode's precision for the global attention's products (None: float32).

    Raises:
        ValueError: ``proxyclip`` without a VFM, or an unknown name.
    """
    if needs_vfm(name):
        if vfm is None:
            raise ValueError(
                f"base {name!r} takes its keys from a vision foundation model, but none was "
                "given: pass a VFM, or use base='clearclip' (CLIP only)"
            )
        base: BaseMethod = ProxyCLIPBase(clip, vfm, clip_mean, clip_std)
    else:
        base = ClearCLIPBase(clip)
    base.half = half
    return base
