"""The seam between a base method and GLA: what a base says, and what the Segmenter does.

A base method owns the last block of CLIP's image tower, the way timm keeps a block whole and
swaps its attention (``x = x + ls_1(attn(ln_1(x)))``). Per window it says:

* ``features``: what it reads of each window (CLIP's last-block queries, keys, values and
  residual stream, a VFM's tokens, ...), as named tensors (``WindowFeatures``);
* ``window_attention``: its own attention inside each window (the base method as its authors
  run it, "KV extension off");
* ``similarity_spaces``: for GLA, the similarity spaces in which the global attention runs
  (token features, initial proxies, an optional additive bias; ``SimilaritySpace``), whose
  outputs are summed as the base sums its attention maps; the values are ``features["v"]``;
* ``finish``: what follows the attention: the output projection alone, or the output
  projection, the residual and the MLP.

The ``Segmenter`` makes the one call into the global attention
(``attention.global_attention``), which alone handles precision, blocking and progress; then
CLIP's ``ln_post`` and projection, the logits and the labels are shared by every base.
A base's own settings are a frozen dataclass (``settings_class``) registered with it: the
flags, the result files, the evaluation presets and the demo read them from the registry.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from glaclip.config import Settings
from glaclip.device import StageTimer
from glaclip.registry import REGISTRY
from glaclip.towers import ClipTower, VFMKeyTower
from glaclip.windows import Window


@dataclass
class WindowFeatures:
    """Features of windows (``L`` of them, or one batch), window-major, by name.

    Attributes:
        grid: ``(gh, gw)`` token grid of one window (``S = gh * gw``).
        parts: ``{name: L x ...}`` tensors as the base named them. Every base has ``v``,
            ``L x S x D``: CLIP's last-block values of the patch tokens on the grid of the
            attention's keys, heads side by side (the values of the global attention).
    """

    grid: tuple[int, int]
    parts: dict[str, torch.Tensor]

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.parts[name]

    def __contains__(self, name: str) -> bool:
        return name in self.parts

    @classmethod
    def cat(cls, batches: Sequence[WindowFeatures]) -> WindowFeatures:
        """The batches of one image as one, every tensor in float32."""
        names = batches[0].parts
        parts = {n: torch.cat([b.parts[n].float() for b in batches]) for n in names}
        return cls(grid=batches[0].grid, parts=parts)


@dataclass
class GaussianBias:
    """NACLIP's neighbourhood bias between tokens at image positions (patch units):
    ``exp(-|p_r - p_c|^2 / (2 std^2))``, 1 between tokens at the same position, no cut-off.

    Attributes:
        y, x: ``N`` float32 positions, on the device of the keys.
        std: the Gaussian's standard deviation in patches.
    """

    y: torch.Tensor
    x: torch.Tensor
    std: float

    def add_to(self, z: torch.Tensor, start: int, chunk: int = 64) -> None:
        """``z += bias[start : start + B]`` for a ``B x N`` block of attention logits, in
        chunks of rows (memory ``2 x chunk x N``)."""
        rows, n = z.shape
        scale = -1.0 / (2.0 * self.std * self.std)
        dy = z.new_empty(min(chunk, rows), n)
        dx = z.new_empty(min(chunk, rows), n)
        for r0 in range(0, rows, chunk):
            r1 = min(rows, r0 + chunk)
            a = torch.sub(self.y[start + r0 : start + r1, None], self.y[None], out=dy[: r1 - r0])
            b = torch.sub(self.x[start + r0 : start + r1, None], self.x[None], out=dx[: r1 - r0])
            a.square_().add_(b.square_()).mul_(scale).exp_()
            z[r0:r1].add_(a)


@dataclass
class SimilaritySpace:
    """One space in which GLA's global attention runs (SPEC 5-7 and 12.2).

    Attributes:
        keys: ``L x S x C`` token features of every window (any scale: rows are L2-normalised).
        initial: ``N x C`` initial proxies the proxy iteration starts from (any scale), or None
            to start from the keys themselves (SPEC 5).
        bias: an additive bias on the attention logits after the dynamic normalisation, before
            the cut and the softmax (NACLIP's neighbourhood), or None.
    """

    keys: torch.Tensor
    initial: torch.Tensor | None = None
    bias: GaussianBias | None = None


@dataclass(frozen=True)
class Published:
    """A base method's published mIoU (ViT-B/16), for the evaluation table and the README.

    Attributes:
        source: where the numbers come from.
        miou: ``{preset: mIoU %}`` for the benchmarks published one by one (may be empty).
        average: the published average over the eight benchmarks, or None.
    """

    source: str
    miou: dict[str, float]
    average: float | None


class BaseMethod:
    """A base method (see the module docstring). Subclasses set the class attributes and
    implement ``features``, ``window_attention`` and, where GLA can run on them,
    ``similarity_spaces``; ``register_base`` lists them by ``name``."""

    name: ClassVar[str] = ""  # the ``base`` setting that selects it
    title: ClassVar[str] = ""  # its name for people: "ProxyCLIP"
    needs_vfm: ClassVar[bool] = False  # whether it takes a vision foundation model
    settings_class: ClassVar[type | None] = None  # its own settings (a frozen dataclass)
    # GLA's global attention runs in this many similarity spaces (0: per window only)
    attention_spaces: ClassVar[int] = 1
    # windows as the authors' sliding-window inference cuts them: an image side under the
    # crop gives a smaller window, a side that is no multiple of the patch loses its last
    # pixels, the position embedding is resampled by scale factor, and the whole image may
    # go in one pass; False: glaclip's canvas (SPEC 2, every window a full crop)
    native_windows: ClassVar[bool] = False
    # published results by ``kv_extension`` (False: the base per window; True: with GLA)
    published: ClassVar[dict[bool, Published]] = {}

    def __init__(
        self,
        clip: ClipTower,
        vfm: VFMKeyTower | None,
        clip_normalisation: tuple[torch.Tensor, torch.Tensor],
        settings: Settings,
        clip_fp32: ClipTower | None = None,
    ) -> None:
        """
        Args:
            clip: CLIP's image tower for the windows' features (cast to the fast mode's
                precision, if any).
            vfm: the VFM tower, for bases that need one.
            clip_normalisation: ``(mean, std)``, ``1 x 3 x 1 x 1`` on the device: how the crops
                were normalised (a VFM undoes it for its own).
            settings: the Segmenter's settings (``settings.method``: this base's own).
            clip_fp32: CLIP's image tower in float32, for ``finish`` (default ``clip``).
        """
        if self.needs_vfm and vfm is None:
            raise ValueError(
                f"base {self.name!r} takes its keys from a vision foundation model, but none "
                "was given: pass a VFM, or use a base that needs none: "
                + " or ".join(f"base={n!r}" for n, c in REGISTRY.items() if not c.needs_vfm)
            )
        self.clip, self.vfm = clip, vfm
        self.clip_fp32 = clip_fp32 or clip
        self.clip_normalisation = clip_normalisation
        self.settings = settings

    # ------------------------------------------------------------------------ settings
    @classmethod
    def check_settings(cls, settings: Settings) -> None:
        """Raise ValueError for settings this base cannot run (called by ``Settings``)."""
        if settings.gla.kv_extension and cls.attention_spaces == 0:
            raise ValueError(
                f"base={cls.name!r} ({cls.title}) has no attention for GLA to extend across "
                "windows: run it per window with kv_extension=False"
            )
        if settings.window.whole_image and not cls.native_windows:
            native = [n for n, c in REGISTRY.items() if c.native_windows]
            raise ValueError(
                "whole_image=True is for the base methods that run the image as their authors' "
                f"code does ({' or '.join(f'base={n!r}' for n in native)}), not base={cls.name!r}"
            )

    @classmethod
    def protocol(cls, dataset: str) -> dict[str, Any]:
        """The flat settings of this base's own evaluation protocol on a benchmark preset,
        where they differ from the preset's (``eval_task.preset_settings``)."""
        return {}

    def patch_sizes(self) -> dict[str, int]:
        """The patch size of each backbone this base runs, by a name for messages."""
        sizes = {"the CLIP patch": self.clip.patch_size[0]}
        if self.vfm is not None and self.needs_vfm:
            sizes["the VFM patch"] = self.vfm.patch_size[0]
        return sizes

    def check_crop(self, crop: int) -> None:
        """Raise ValueError unless the window side ``crop`` is a multiple of every patch size
        (the token grids must cover the window exactly). Bases with native windows take any
        crop, as their authors' code does."""
        if self.native_windows:
            return
        sizes = self.patch_sizes()
        bad = {what: p for what, p in sizes.items() if crop % p}
        if bad:
            step = math.lcm(*sizes.values())
            parts = " and ".join(f"{p} ({what})" for what, p in sizes.items())
            raise ValueError(
                f"crop {crop} must be a multiple of {parts}: e.g. {step * max(1, crop // step)}"
                f" or {step * (crop // step + 1)} (the paper's is 224)"
            )

    # ------------------------------------------------------------------------ per window
    def features(
        self, crops: torch.Tensor, settings: Settings, timer: StageTimer
    ) -> WindowFeatures:
        """Features of a batch of windows (``B x 3 x h x w`` CLIP-normalised float32 crops), in
        the backbones' dtype; ``parts["v"]`` always (see ``WindowFeatures``)."""
        raise NotImplementedError

    def window_attention(self, feats: WindowFeatures) -> torch.Tensor:
        """The base method's own attention inside each window: ``L x S x D`` float32 (before
        the output projection), patch tokens only."""
        raise NotImplementedError

    def similarity_spaces(
        self, feats: WindowFeatures, windows: Sequence[Window]
    ) -> list[SimilaritySpace]:
        """The spaces in which GLA's global attention runs (``attention_spaces`` of them)."""
        raise NotImplementedError

    def finish(self, attended: torch.Tensor, feats: WindowFeatures) -> torch.Tensor:
        """What follows the attention: ``L x S x D`` attention output -> the last block's
        output of each patch token. By default the output projection alone (no residual, no
        MLP). It runs in float32 (``clip_fp32``)."""
        return self.clip_fp32.out_proj(attended)

    def window_features(
        self,
        x: torch.Tensor,
        windows: Sequence[Window],
        settings: Settings,
        timer: StageTimer,
        progress: Any = None,
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


# ------------------------------------------------------------------------------ helpers
def split_class_token(t: torch.Tensor, with_class: bool) -> dict[str, torch.Tensor]:
    """``B x (1 + S) x D`` -> the patch tokens, and the class token where asked."""
    return {"patch": t[:, 1:], "class": t[:, 0]} if with_class else {"patch": t[:, 1:]}


def clip_parts(
    clip: ClipTower,
    crops: torch.Tensor,
    names: Sequence[str],
    with_class: bool,
    positional: str = "size",
) -> tuple[dict[str, torch.Tensor], tuple[int, int]]:
    """CLIP's last block read for a batch of crops: ``q``, ``k``, ``v`` (thirds of its input
    projection of ``ln_1(x)``) and ``x`` (its input, the residual stream), patch tokens
    (``B x S x D``) under their names, and with ``with_class`` the class token's
    (``B x D``) under ``class_<name>``."""
    t, grid = clip.tokens(crops, positional)
    y = clip.last.ln_1(t)
    parts: dict[str, torch.Tensor] = {}
    for name in names:
        full = t if name == "x" else clip.projection(y, name)
        parts[name] = full[:, 1:]
        if with_class:
            parts[f"class_{name}"] = full[:, 0]
    return parts, grid


def with_class_token(feats: WindowFeatures, name: str) -> torch.Tensor:
    """``L x (1 + S) x D``: the class token's ``name`` row, then the patch tokens'."""
    return torch.cat([feats[f"class_{name}"][:, None], feats[name]], dim=1)


def softmax_attention(
    spaces: Sequence[tuple[torch.Tensor, torch.Tensor | None]],
    v: torch.Tensor,
    heads: int,
    chunk: int = 16,
) -> torch.Tensor:
    """Per window and head, ``(sum over spaces of softmax(a a^T / sqrt(d_h) + bias)) v``: the
    per-window attention of ClearCLIP (q-q), SCLIP (q-q plus k-k) and NACLIP (k-k plus its
    neighbourhood), as their authors' code computes it (the maps are summed, then multiplied
    by the values).

    Args:
        spaces: ``(a, bias)`` pairs: ``a`` is ``L x T x D`` (heads side by side), ``bias`` a
            ``T x T`` addition to the logits or None.
        v: ``L x T x D`` values.
        heads: the number of heads (``D = heads * d_h``).
        chunk: windows computed together (memory ``O(chunk x heads x T x T)``).

    Returns:
        ``L x T x D`` float32, heads concatenated.
    """
    n_win, n_tok, d = v.shape
    d_h = d // heads
    out = v.new_empty(n_win, n_tok, d, dtype=torch.float32)
    for start in range(0, n_win, chunk):
        part = slice(start, min(n_win, start + chunk))
        weights = None
        for a, bias in spaces:
            ah = a[part].float().reshape(-1, n_tok, heads, d_h).transpose(1, 2)
            logits = (ah @ ah.transpose(-1, -2)) * d_h**-0.5
            if bias is not None:
                logits += bias
            w = torch.softmax(logits, dim=-1)
            weights = w if weights is None else weights + w
        vh = v[part].float().reshape(-1, n_tok, heads, d_h).transpose(1, 2)
        out[part] = (weights @ vh).transpose(1, 2).reshape(-1, n_tok, d)
    return out


def token_positions(
    windows: Sequence[Window], grid: tuple[int, int], patch: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y, x)``: each token's position, the top-left pixel of its patch in the (resized)
    image, as two ``L x gh x gw`` int64 tensors on the CPU (SPEC 12.2). Made on the host from
    the windows' coordinates (numbers, not device data)."""
    gh, gw = grid
    cpu = torch.device("cpu")
    y0 = torch.tensor([w.y1 for w in windows], device=cpu).view(-1, 1, 1)
    x0 = torch.tensor([w.x1 for w in windows], device=cpu).view(-1, 1, 1)
    ys = y0 + patch[0] * torch.arange(gh, device=cpu).view(1, gh, 1)
    xs = x0 + patch[1] * torch.arange(gw, device=cpu).view(1, 1, gw)
    return ys.expand(-1, gh, gw), xs.expand(-1, gh, gw)


def token_groups(
    windows: Sequence[Window], grid: tuple[int, int], patch: tuple[int, int]
) -> tuple[torch.Tensor, int]:
    """``(group, n_groups)``: the tokens' positions (``token_positions``, flattened
    window-major) numbered ``0 .. n_groups - 1`` in order of position, on the CPU. Computed on
    the host, so that the device never has to report how many distinct positions there are."""
    ys, xs = token_positions(windows, grid, patch)
    width = max(w.x2 for w in windows)
    positions = (ys * width + xs).reshape(-1)
    unique, group = torch.unique(positions, return_inverse=True)
    return group, unique.numel()


def neighbourhood_proxies(
    features: torch.Tensor, windows: Sequence[Window], grid: tuple[int, int], patch: tuple[int, int]
) -> torch.Tensor:
    """SPEC 12.2's initial proxies of CLIP's own features: for each token the mean of the
    tokens at its position in every window and of its 8 neighbours in its own window.

    Args:
        features: ``L x S x C`` unnormalised features on CLIP's grid.

    Returns:
        ``N x C`` float32.
    """
    from glaclip.attention import initial_proxies

    n_win, _, c = features.shape
    group, n_groups = token_groups(windows, grid, patch)
    q = features.reshape(n_win, grid[0], grid[1], c)
    return initial_proxies(q, group.to(q.device), n_groups)


def gaussian_bias(
    windows: Sequence[Window],
    grid: tuple[int, int],
    patch: tuple[int, int],
    std: float,
    device: torch.device,
) -> GaussianBias:
    """The neighbourhood bias of every token with every other at its position in the image, in
    patch units (tokens across a window border are neighbours)."""
    ys, xs = token_positions(windows, grid, patch)
    y = (ys.reshape(-1).to(torch.float32) / patch[0]).to(device)
    x = (xs.reshape(-1).to(torch.float32) / patch[1]).to(device)
    return GaussianBias(y, x, float(std))


def heads_view(tokens: torch.Tensor, heads: int) -> torch.Tensor:
    """``L x S x D`` (heads side by side) as ``heads x L x S x d_h``."""
    n_win, n_tok, d = tokens.shape
    return tokens.reshape(n_win, n_tok, heads, d // heads).permute(2, 0, 1, 3)


def normalised(t: torch.Tensor) -> torch.Tensor:
    """Rows L2-normalised, in float32."""
    return F.normalize(t.float(), dim=-1)
