"""The tensors a base method works with, and the operations the bases share: the windows'
features (``WindowFeatures``), a similarity space of GLA (``SimilaritySpace``, with NACLIP's
``GaussianBias``), CLIP's last block read for a batch of crops (``clip_parts``), the
per-window softmax attention of ClearCLIP, SCLIP and NACLIP (``softmax_attention``), the
tokens' positions and their neighbourhood proxies (SPEC 12.2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from glaclip.model.windows import Window

if TYPE_CHECKING:
    from glaclip.model.towers import ClipTower


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
        full = t if name == "x" else clip.qkv(y, name)
        parts[name] = full[:, 1:]
        if with_class:
            parts[f"class_{name}"] = full[:, 0]
    return parts, grid


def with_class_token(feats: WindowFeatures, name: str) -> torch.Tensor:
    """``L x (1 + S) x D``: the class token's ``name`` row, then the patch tokens'."""
    return torch.cat([feats[f"class_{name}"][:, None], feats[name]], dim=1)


#: bytes of one map of logits (``windows x heads x rows x T`` floats) in ``softmax_attention``
ATTENTION_TILE_BYTES = 128 << 20


def softmax_attention(
    spaces: Sequence[tuple[torch.Tensor, torch.Tensor | None]],
    v: torch.Tensor,
    heads: int,
    chunk: int = 16,
    tile_bytes: int = ATTENTION_TILE_BYTES,
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
        chunk: at most this many windows computed together.
        tile_bytes: the largest map of logits; fewer windows, then blocks of query rows (each
            row's softmax is its own), keep a large window (a whole image) within it.

    Returns:
        ``L x T x D`` float32, heads concatenated.
    """
    n_win, n_tok, d = v.shape
    d_h = d // heads
    per_row = heads * n_tok * 4
    chunk = max(1, min(chunk, tile_bytes // (per_row * n_tok)))
    rows = max(1, min(n_tok, tile_bytes // per_row))
    out = v.new_empty(n_win, n_tok, d, dtype=torch.float32)
    for start in range(0, n_win, chunk):
        part = slice(start, min(n_win, start + chunk))
        per_space = [(_heads(a[part], heads), bias) for a, bias in spaces]
        vh = _heads(v[part], heads)
        for top in range(0, n_tok, rows):
            band = slice(top, min(n_tok, top + rows))
            weights = None
            for ah, bias in per_space:
                w = _softmax_rows(ah, band, bias, d_h)
                weights = w if weights is None else weights + w
            out[part, band] = (weights @ vh).transpose(1, 2).reshape(-1, band.stop - top, d)
    return out


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``L x T x D`` to float32 ``L x heads x T x d_h``."""
    n_win, n_tok, d = x.shape
    return x.float().reshape(n_win, n_tok, heads, d // heads).transpose(1, 2)


def _softmax_rows(
    ah: torch.Tensor, band: slice, bias: torch.Tensor | None, d_h: int
) -> torch.Tensor:
    """``softmax(a a^T / sqrt(d_h) + bias)`` for the query rows ``band`` of every window and
    head (all rows at once when the band is the whole window, as the authors compute it)."""
    whole = band.start == 0 and band.stop == ah.shape[2]
    rows = ah if whole else ah[:, :, band]
    logits = (rows @ ah.transpose(-1, -2)) * d_h**-0.5
    if bias is not None:
        logits += bias if whole else bias[band]
    return torch.softmax(logits, dim=-1)


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
    from glaclip.model.attention import initial_proxies

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
