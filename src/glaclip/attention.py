"""The method's attention (SPEC sections 5-7, 10 and 12): pure tensors in, tensors out.

``attend`` is the entry point. The KV-extended attention has two implementations that compute
the same thing:

* ``global_attention_dense`` (here) follows the SPEC line by line and holds several ``N x N``
  matrices. It is the readable oracle that the tests compare against (``attention_impl="dense"``).
* ``blocked.global_attention_blocked`` (the default) never holds an ``N x N`` matrix: the extra
  memory is ``O(block x N)`` (see ``glaclip.blocked``).

``window_attention`` is the per-window baseline of the ProxyCLIP base (KV extension off),
``query_attention`` that of the ClearCLIP base (SPEC 12.1), and ``initial_proxies`` the
ClearCLIP base's starting point of the proxy iteration (SPEC 12.2), in ``O(N x D)``. The
normalisation (``normalisation``, ``dynamic_beta``, ``needs_mask``) is shared by both
implementations.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from glaclip.config import GLAConfig

Progress = Callable[[str, int, int], None]  # (stage, done, total)

EPS = 1e-6  # added to the mask's row count before dividing (the reference's)


def attend(
    keys: torch.Tensor,
    values: torch.Tensor,
    cfg: GLAConfig,
    initial: torch.Tensor | None = None,
    progress: Progress | None = None,
    half: torch.dtype | None = None,
) -> torch.Tensor:
    """Attention output of every token of every window.

    Args:
        keys: ``L x S x Ck`` key tokens per window (any scale; rows are L2-normalised here).
        values: ``heads x L x S x d_h`` CLIP values per window, on the keys' grid.
        cfg: the method's switches and numbers; ``cfg.attention_impl`` picks the blocked
            implementation (default) or the dense oracle.
        initial: ``N x Ck`` initial proxies (any scale; ``N = L * S``) from which the proxy
            iteration starts (SPEC 12.2); None starts from the keys themselves (SPEC 5).
            Used with the KV extension only.
        progress: called as ``progress("attention", rows_done, N)`` by the blocked
            implementation after each block of query rows.
        half: ``torch.bfloat16`` or ``torch.float16``: the blocked implementation's products
            named in ``blocked.HALF_PRODUCTS`` run in that precision (the fast mode); None: float32.

    Returns:
        ``L x S x (heads * d_h)`` float32 attention output, heads concatenated (head-major).
    """
    n_win, n_tok, _ = keys.shape
    heads, _, _, d_h = values.shape
    keys = F.normalize(keys.float(), dim=-1)
    values = values.float()
    if not cfg.kv_extension:
        return window_attention(keys, values, cfg)
    n = n_win * n_tok
    k = keys.reshape(n, -1)
    if initial is not None:
        initial = F.normalize(initial.float().reshape(n, -1), dim=-1)
    # one copy, token-major (N x heads*d_h); v is a heads x N x d_h view of it
    v = values.permute(1, 2, 0, 3).reshape(n, heads * d_h).view(n, heads, d_h).permute(1, 0, 2)
    if cfg.attention_impl == "dense":
        out = global_attention_dense(k, v, n_win, cfg, initial)
    else:
        from glaclip.blocked import global_attention_blocked  # it imports this module

        out = global_attention_blocked(
            k, v, n_win, cfg, initial=initial, progress=progress, half=half
        )
    return out.reshape(n_win, n_tok, heads * d_h)


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


def _sparse_softmax(z: torch.Tensor) -> torch.Tensor:
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
) -> torch.Tensor:
    """SPEC 5-7 (and 12.2) as written, with ``N x N`` matrices. The readable oracle.

    Args:
        k: ``N x Ck`` L2-normalised keys of all windows, window-major.
        v: ``heads x N x d_h`` values.
        n_windows: ``L`` (``N = L * S``).
        initial: ``N x Ck`` L2-normalised initial proxies, or None for the keys themselves.

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
    w = torch.nan_to_num(_sparse_softmax(z), nan=0.0)
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
# Per-window baseline (ProxyCLIP; SPEC 10)


def window_attention(
    keys: torch.Tensor, values: torch.Tensor, cfg: GLAConfig, chunk: int = 16
) -> torch.Tensor:
    """Steps 5-7 inside each window alone, with fixed beta and gamma.

    Args:
        keys: ``L x S x Ck`` L2-normalised keys.
        values: ``heads x L x S x d_h``.
        chunk: windows computed together (batched products; memory ``O(chunk x S x S)``).

    Returns:
        ``L x S x (heads * d_h)``.
    """
    n_win, n_tok, _ = keys.shape
    heads, _, _, d_h = values.shape
    v = values.permute(1, 2, 0, 3).reshape(n_win, n_tok, heads * d_h)
    out = keys.new_empty(n_win, n_tok, heads * d_h)
    for start in range(0, n_win, chunk):
        part = slice(start, min(n_win, start + chunk))
        k = keys[part]
        kt = k.transpose(1, 2)
        a = k @ kt
        if cfg.proxy_anchor and cfg.proxy_iters > 0:
            for _ in range(cfg.proxy_iters):
                mf = (a > cfg.proxy_threshold).to(k.dtype)
                p = F.normalize((mf @ k) / (mf.sum(dim=-1, keepdim=True) + EPS), dim=-1)
                a = p @ kt
            a = p @ p.transpose(1, 2)
        if cfg.token_norm:
            mu = a.mean(dim=-1, keepdim=True)
        else:
            mu = a.mean(dim=(-2, -1), keepdim=True)
        z = (a - cfg.fixed_beta * mu) * cfg.fixed_gamma
        out[part] = _sparse_softmax(z) @ v[part]
    return out


# ---------------------------------------------------------------------------------------------
# ClearCLIP base (SPEC 12)


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


def query_attention(q: torch.Tensor, v: torch.Tensor, heads: int, chunk: int = 16) -> torch.Tensor:
    """SPEC 12.1, ClearCLIP inside each window: ``softmax(q q^T / sqrt(d_h)) v`` per head.

    Args:
        q, v: ``L x T x D`` queries and values of every token of each window (class token
            included), heads side by side (``D = heads * d_h``).
        heads: the number of heads.
        chunk: windows computed together (memory ``O(chunk x heads x T x T)``).

    Returns:
        ``L x T x D`` float32, heads concatenated.
    """
    n_win, n_tok, d = q.shape
    d_h = d // heads
    out = q.new_empty(n_win, n_tok, d, dtype=torch.float32)
    for start in range(0, n_win, chunk):
        part = slice(start, min(n_win, start + chunk))
        qh = q[part].float().reshape(-1, n_tok, heads, d_h).transpose(1, 2)
        vh = v[part].float().reshape(-1, n_tok, heads, d_h).transpose(1, 2)
        w = torch.softmax((qh @ qh.transpose(-1, -2)) * d_h**-0.5, dim=-1)
        out[part] = (w @ vh).transpose(1, 2).reshape(-1, n_tok, d)
    return out
