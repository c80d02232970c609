"""GLA's global attention (SPEC sections 5-7 and 12.2): pure tensors in, tensors out.

``global_attention`` is the entry point: it runs in each similarity space a base method gives
(``bases.SimilaritySpace``) and sums the outputs. It has two implementations that compute the
same thing:

* ``global_attention_dense`` (here) follows the SPEC line by line and holds several ``N x N``
  matrices. It is the readable oracle that the tests compare against (``attention_impl="dense"``).
* ``blocked.global_attention_blocked`` (the default) never holds an ``N x N`` matrix: the extra
  memory is ``O(block x N)`` (see ``glaclip.model.blocked``).

A space's optional bias (NACLIP's neighbourhood, glaclip's construction) is added to the
normalised logits ``Z`` before the cut at ``min(rowmax, 0)`` and the softmax. The per-window
methods (GLA off) are each base's own (``glaclip.model.bases``). ``initial_proxies`` is the starting
point of the proxy iteration of the bases that attend in CLIP's own features (SPEC 12.2), in
``O(N x D)``. The normalisation (``normalisation``, ``dynamic_beta``, ``needs_mask``) is
shared by both implementations.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from glaclip.config import GLAConfig

if TYPE_CHECKING:
    from glaclip.model.bases.ops import GaussianBias, SimilaritySpace

Progress = Callable[[str, int, int], None]  # (stage, done, total)

EPS = 1e-6  # added to the mask's row count before dividing (the reference's)


def global_attention(
    spaces: Sequence[SimilaritySpace],
    values: torch.Tensor,
    heads: int,
    cfg: GLAConfig,
    progress: Progress | None = None,
    half: torch.dtype | None = None,
) -> torch.Tensor:
    """GLA's global attention of every token of every window (SPEC 5-7, 12.2), in each of a
    base method's similarity spaces, the outputs summed.

    Args:
        spaces: the base's similarity spaces (``bases.SimilaritySpace``): ``keys`` ``L x S x C``
            (any scale; rows are L2-normalised here), ``initial`` ``N x C`` proxies the
            iteration starts from (None: the keys), ``bias`` an additive bias on the
            normalised logits (None: none).
        values: ``L x S x D`` CLIP values per window on the keys' grid, heads side by side.
        heads: the number of heads (``D = heads * d_h``).
        cfg: the method's switches and numbers; ``cfg.attention_impl`` picks the blocked
            implementation (default) or the dense oracle.
        progress: called as ``progress("attention", rows_done, N x spaces)`` by the blocked
            implementation after each block of query rows.
        half: ``torch.bfloat16`` or ``torch.float16``: the blocked implementation's products
            named in ``blocked.HALF_PRODUCTS`` run in that precision (the fast mode); None: float32.

    Returns:
        ``L x S x D`` float32 attention output, heads concatenated (head-major).
    """
    from glaclip.model.blocked import global_attention_blocked  # it imports this module

    n_win, n_tok, d = values.shape
    n = n_win * n_tok
    # one token-major copy (N x D); v is a heads x N x d_h view of it
    v = values.float().reshape(n, d).view(n, heads, d // heads).permute(1, 0, 2)
    out = None
    for i, space in enumerate(spaces):
        k = F.normalize(space.keys.float(), dim=-1).reshape(n, -1)
        initial = space.initial
        if initial is not None:
            initial = F.normalize(initial.float().reshape(n, -1), dim=-1)
        if cfg.attention_impl == "dense":
            part = global_attention_dense(k, v, n_win, cfg, initial, space.bias)
        else:
            report = _offset_progress(progress, i * n, n * len(spaces))
            part = global_attention_blocked(
                k, v, n_win, cfg, initial=initial, progress=report, half=half, bias=space.bias
            )
        out = part if out is None else out.add_(part)
    assert out is not None, "a base with GLA has at least one similarity space"
    return out.reshape(n_win, n_tok, d)


def _offset_progress(progress: Progress | None, offset: int, total: int) -> Progress | None:
    """``progress`` for one of several passes: rows counted from ``offset`` of ``total``."""
    if progress is None:
        return None
    return lambda stage, done, _n: progress(stage, offset + done, total)


def needs_mask(cfg: GLAConfig) -> bool:
    """Whether the proxy iteration has to run: for the proxies, or for the mask count that
    the dynamic gamma divides by."""
    return cfg.proxy_anchor or (cfg.dynamic_norm and cfg.token_norm)


def normalisation(
    cfg: GLAConfig, n_windows: int, count: torch.Tensor | None
) -> tuple[float, float | torch.Tensor]:
    """``(beta, gamma)`` of SPEC 6 with the token norm on; ``gamma`` per row (``R x 1``) when
    dynamic (``count``: the last mask's row counts), a number otherwise."""
    if not cfg.dynamic_norm:
        return cfg.fixed_beta, cfg.fixed_gamma
    beta = dynamic_beta(n_windows, cfg.beta_alpha) if cfg.dynamic_beta else cfg.fixed_beta
    assert count is not None
    return beta, 1.0 + cfg.gamma_alpha / count.reshape(-1, 1)


def dynamic_beta(n_windows: int, beta_alpha: float) -> float:
    """``beta = 1 + lambda1 * ln(1 + L)`` (SPEC 6)."""
    return 1.0 + beta_alpha * math.log(1.0 + n_windows)


def sparse_softmax(z: torch.Tensor) -> torch.Tensor:
    """SPEC 7: entries below ``min(rowmax, 0)`` become ``-inf``; softmax over the last axis.

    Works in place on ``z`` (which the caller no longer needs).
    """
    cut = z.amax(dim=-1, keepdim=True).clamp_max(0.0)
    z.masked_fill_(z < cut, float("-inf"))
    return torch.softmax(z, dim=-1)


# ---------------------------------------------------------------------------------------------
# KV extension: the dense oracle


def global_attention_dense(
    k: torch.Tensor,
    v: torch.Tensor,
    n_windows: int,
    cfg: GLAConfig,
    initial: torch.Tensor | None = None,
    bias: GaussianBias | None = None,
) -> torch.Tensor:
    """SPEC 5-7 (and 12.2) as written, with ``N x N`` matrices. The readable oracle.

    Args:
        k: ``N x Ck`` L2-normalised keys of all windows, window-major.
        v: ``heads x N x d_h`` values.
        n_windows: ``L`` (``N = L * S``).
        initial: ``N x Ck`` L2-normalised initial proxies, or None for the keys themselves.
        bias: added to the normalised logits ``Z`` before the cut and the softmax (NACLIP's
            neighbourhood, glaclip's construction), or None.

    Returns:
        ``N x (heads * d_h)``. A row whose last mask is empty (possible only with initial
        proxies and ``T = 0``) has an infinite gamma; its weights are NaN in the reference,
        which replaces them by 0, so its output is the zero vector.
    """
    n = k.shape[0]
    scores, m = dense_proxy_iteration(k, cfg, initial)
    if not cfg.token_norm:
        mu = scores.mean()
        beta, gamma = cfg.fixed_beta, cfg.fixed_gamma
    else:
        mu = scores.mean(dim=1, keepdim=True).clamp_min(0.0)
        count = m.sum(dim=1).to(k.dtype) if m is not None else None
        beta, gamma = normalisation(cfg, n_windows, count)
    z = (scores - beta * mu) * gamma
    if bias is not None:
        bias.add_to(z, 0)
    w = torch.nan_to_num(sparse_softmax(z), nan=0.0)
    out = torch.einsum("nm,hmd->hnd", w, v)
    return out.permute(1, 0, 2).reshape(n, -1)


def dense_proxy_iteration(
    k: torch.Tensor, cfg: GLAConfig, initial: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """SPEC 5 (and 12.2) as written: ``(scores N x N, last mask N x N bool or None)``.

    The scores are the last proxies' similarities ``P K^T`` with proxy anchors on, else
    ``K K^T``; the mask is the last ``[A > tau]`` (its row counts give the dynamic gamma), None
    when no mask is needed (``needs_mask``). The proxy iteration starts from ``initial`` or from
    the keys; an empty mask row keeps its own token.
    """
    tau = cfg.proxy_threshold
    kk = k @ k.T
    if not needs_mask(cfg):
        return kk, None
    cur = kk if initial is None else initial @ k.T
    m = cur > tau
    for _ in range(cfg.proxy_iters):
        m = cur > tau
        diagonal = m.diagonal()
        diagonal |= ~m.any(dim=1)  # an empty row keeps its own token
        mf = m.to(k.dtype)
        p = F.normalize((mf @ k) / (mf.sum(dim=1, keepdim=True) + EPS), dim=-1)
        cur = p @ k.T
    return (cur if cfg.proxy_anchor else kk), m


# ---------------------------------------------------------------------------------------------
# Initial proxies of CLIP's own features (SPEC 12.2)


def initial_proxies(q: torch.Tensor, group: torch.Tensor, n_groups: int) -> torch.Tensor:
    """SPEC 12.2's initial proxies, without an ``N x N`` mask.

    Token ``r``'s candidates are every token at the same position (in any window, ``r``
    included) and its 8 grid neighbours in its own window (fewer at the window's border); its
    proxy is the plain mean of the candidates' rows. The same-position sums come from one
    scatter-add by position, the neighbour sums from a 3x3 box sum over each window's grid:
    ``O(N x D)`` time and memory.

    Args:
        q: ``L x gh x gw x D`` unnormalised key rows on each window's token grid.
        group: ``N`` int64 on ``q``'s device, window-major: the position group of each token
            (equal numbers = the same pixel of the image), numbered ``0 .. n_groups - 1``
            (``bases.token_groups``).
        n_groups: the number of distinct positions.

    Returns:
        ``N x D`` float32 (``N = L*gh*gw``, window-major), not normalised.
    """
    n_win, gh, gw, d = q.shape
    q = q.float()
    flat = q.reshape(-1, d)
    same_sum = flat.new_zeros(n_groups, d).index_add_(0, group, flat)
    same_count = flat.new_zeros(n_groups).index_add_(0, group, flat.new_ones(flat.shape[0]))
    padded = F.pad(q, (0, 0, 1, 1, 1, 1))  # L x (gh+2) x (gw+2) x D, zero border
    ones = F.pad(q.new_ones(1, gh, gw), (1, 1, 1, 1))
    box = torch.zeros_like(q)
    box_count = q.new_zeros(1, gh, gw)
    for dy in range(3):
        for dx in range(3):
            if dy == 1 and dx == 1:
                continue
            box += padded[:, dy : dy + gh, dx : dx + gw]
            box_count += ones[:, dy : dy + gh, dx : dx + gw]
    total = same_sum[group] + box.reshape(-1, d)
    count = same_count[group] + box_count.expand(n_win, gh, gw).reshape(-1)
    return total / count.unsqueeze(1)
