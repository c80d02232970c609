"""The method's attention (SPEC sections 5-7 and 10): pure tensors in, tensors out.

Two implementations of the KV-extended attention compute the same thing:

* ``global_attention_dense`` follows the SPEC line by line and holds ``N x N`` matrices. It is
  the readable oracle that tests compare against.
* ``global_attention_blocked`` (the default) walks over blocks of query rows. Every quantity
  the SPEC needs is per row (the proxy iteration, the mask count, the row mean, the row max),
  so each block is computed exactly as the dense method would, with ``O(block x N)`` memory.

``window_attention`` is the per-window baseline (ProxyCLIP, KV extension off).
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F

from glaclip.config import GLAConfig

_EPS = 1e-6


def attend(keys: torch.Tensor, values: torch.Tensor, cfg: GLAConfig) -> torch.Tensor:
    """Attention output of every token of every window.

    Args:
        keys: ``L x S x Ck`` VFM tokens per window (any scale; rows are L2-normalised here).
        values: ``heads x L x S x d_h`` CLIP values per window, already on the VFM grid.
        cfg: the method's switches and numbers.

    Returns:
        ``L x S x (heads * d_h)`` attention output, heads concatenated (head-major).
    """
    n_win, n_tok, _ = keys.shape
    heads, _, _, d_h = values.shape
    keys = F.normalize(keys, dim=-1)
    if not cfg.kv_extension:
        return window_attention(keys, values, cfg)
    k = keys.reshape(n_win * n_tok, -1)
    v = values.reshape(heads, n_win * n_tok, d_h)
    out = global_attention_blocked(k, v, n_win, cfg)
    return out.reshape(n_win, n_tok, heads * d_h)


# ---------------------------------------------------------------------------------------------
# Shared pieces


def _proxy_mask_step(scores: torch.Tensor, k: torch.Tensor, tau: float, row_index: torch.Tensor):
    """One proxy-anchor iteration for a block of rows (SPEC 5).

    ``scores``: ``B x N`` similarities of the block's current anchors; ``row_index``: the block's
    global row numbers (the column of each row's own token). Returns ``(mask, proxies)``.
    """
    mask = scores > tau
    empty = ~mask.any(dim=1)
    if bool(empty.any()):
        rows = torch.nonzero(empty).squeeze(1)
        mask[rows, row_index[rows]] = True
    maskf = mask.to(k.dtype)
    proxies = F.normalize((maskf @ k) / (maskf.sum(dim=1, keepdim=True) + _EPS), dim=-1)
    return mask, proxies


def _sparse_softmax(z: torch.Tensor) -> torch.Tensor:
    """SPEC 7: entries below ``min(rowmax, 0)`` become ``-inf``; softmax over the last axis.

    Works in place on ``z`` (which the caller no longer needs).
    """
    cut = z.amax(dim=-1, keepdim=True).clamp_max(0.0)
    z.masked_fill_(z < cut, float("-inf"))
    return torch.softmax(z, dim=-1)


def dynamic_beta(n_windows: int, beta_alpha: float) -> float:
    """``beta = 1 + lambda1 * ln(1 + L)`` (SPEC 6)."""
    return 1.0 + beta_alpha * math.log(1.0 + n_windows)


# ---------------------------------------------------------------------------------------------
# KV extension: the dense oracle


def global_attention_dense(
    k: torch.Tensor, v: torch.Tensor, n_windows: int, cfg: GLAConfig
) -> torch.Tensor:
    """SPEC 5-7 as written, with ``N x N`` matrices. The readable oracle.

    Args:
        k: ``N x Ck`` L2-normalised keys of all windows, window-major.
        v: ``heads x N x d_h`` values.
        n_windows: ``L`` (``N = L * S``).

    Returns:
        ``N x (heads * d_h)``.
    """
    n = k.shape[0]
    tau = cfg.proxy_threshold
    a = k @ k.T
    if cfg.proxy_iters == 0:
        m = a > tau
        scores = a
    else:
        cur = a
        for _ in range(cfg.proxy_iters):
            m = cur > tau
            empty = ~m.any(dim=1)
            idx = torch.nonzero(empty).squeeze(1)
            m[idx, idx] = True
            mf = m.to(k.dtype)
            p = F.normalize((mf @ k) / (mf.sum(dim=1, keepdim=True) + _EPS), dim=-1)
            cur = p @ k.T
        scores = cur if cfg.proxy_anchor else a
    count = m.sum(dim=1, keepdim=True).to(k.dtype)
    if not cfg.token_norm:
        mu = scores.mean()
        beta, gamma = cfg.fixed_beta, cfg.fixed_gamma
    else:
        mu = scores.mean(dim=1, keepdim=True).clamp_min(0.0)
        if cfg.dynamic_norm:
            beta = dynamic_beta(n_windows, cfg.beta_alpha)
            gamma = 1.0 + cfg.gamma_alpha / count
        else:
            beta, gamma = cfg.fixed_beta, cfg.fixed_gamma
    z = (scores - beta * mu) * gamma
    w = _sparse_softmax(z)
    out = torch.einsum("nm,hmd->hnd", w, v)
    return out.permute(1, 0, 2).reshape(n, -1)


# ---------------------------------------------------------------------------------------------
# KV extension: exact, memory-bounded


def auto_block_size(n: int, device: torch.device, budget_bytes: int | None = None) -> int:
    """Query rows per block so that about five ``block x N`` float32 matrices fit the budget.

    The budget defaults to a quarter of the free memory (CUDA: free device memory; CPU: the
    available system memory), at most 1 GiB on the CPU (larger blocks do not run faster there).
    """
    if budget_bytes is None:
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            budget_bytes = free // 4
        else:
            budget_bytes = min(_available_memory() // 4, 1 << 30)
    rows = budget_bytes // max(1, n * 4 * 5)
    return int(max(64, min(n, rows)))


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def _final_anchors(
    k: torch.Tensor, rows: slice, cfg: GLAConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchors whose similarities to ``K`` are the scores, and the mask counts, for a block.

    Returns ``(anchors B x Ck, count B)``: with proxy anchors on, the final proxies; else the
    keys themselves. ``count`` is ``rowsum(M)`` of the last iteration's mask.
    """
    kb = k[rows]
    index = torch.arange(rows.start, rows.stop, device=k.device)
    scores = kb @ k.T
    if cfg.proxy_iters == 0:
        return kb, (scores > cfg.proxy_threshold).sum(dim=1)
    proxies = kb
    for _ in range(cfg.proxy_iters):
        mask, proxies = _proxy_mask_step(scores, k, cfg.proxy_threshold, index)
        count = mask.sum(dim=1)
        del mask
        if _ + 1 < cfg.proxy_iters:
            scores = proxies @ k.T
    return (proxies if cfg.proxy_anchor else kb), count


def global_attention_blocked(
    k: torch.Tensor, v: torch.Tensor, n_windows: int, cfg: GLAConfig
) -> torch.Tensor:
    """Same result as ``global_attention_dense`` with ``O(block x N)`` extra memory.

    Args:
        k: ``N x Ck`` L2-normalised keys, window-major.
        v: ``heads x N x d_h`` values.
        n_windows: ``L``.

    Returns:
        ``N x (heads * d_h)``.
    """
    n = k.shape[0]
    heads, _, d_h = v.shape
    block = cfg.block_size or auto_block_size(n, k.device)
    v_flat = v.permute(1, 0, 2).reshape(n, heads * d_h)  # N x (heads*d_h), for one matmul
    out = k.new_empty(n, heads * d_h)
    global_mu = None
    if not cfg.token_norm:
        # mean of all entries of A = mean_r (anchor_r . mean_n k_n): one extra pass of anchors.
        k_mean = k.mean(dim=0)
        total = k.new_zeros(())
        for start in range(0, n, block):
            anchors, _ = _final_anchors(k, slice(start, min(n, start + block)), cfg)
            total = total + (anchors @ k_mean).sum()
        global_mu = total / n
    beta_dyn = dynamic_beta(n_windows, cfg.beta_alpha)
    for start in range(0, n, block):
        rows = slice(start, min(n, start + block))
        anchors, count = _final_anchors(k, rows, cfg)
        scores = anchors @ k.T
        if global_mu is not None:
            z = (scores - cfg.fixed_beta * global_mu) * cfg.fixed_gamma
        else:
            mu = scores.mean(dim=1, keepdim=True).clamp_min(0.0)
            if cfg.dynamic_norm:
                gamma = 1.0 + cfg.gamma_alpha / count.to(k.dtype).unsqueeze(1)
                z = (scores - beta_dyn * mu) * gamma
            else:
                z = (scores - cfg.fixed_beta * mu) * cfg.fixed_gamma
        del scores
        w = _sparse_softmax(z)
        # per head: W @ V_h; V heads side by side give the concatenated output directly
        out[rows] = w @ v_flat
    return out


# ---------------------------------------------------------------------------------------------
# Per-window baseline (ProxyCLIP; SPEC 10)


def window_attention(keys: torch.Tensor, values: torch.Tensor, cfg: GLAConfig) -> torch.Tensor:
    """Steps 5-7 inside each window alone, with fixed beta and gamma.

    Args:
        keys: ``L x S x Ck`` L2-normalised keys.
        values: ``heads x L x S x d_h``.

    Returns:
        ``L x S x (heads * d_h)``.
    """
    n_win, n_tok, _ = keys.shape
    heads, _, _, d_h = values.shape
    v = values.permute(1, 2, 0, 3).reshape(n_win, n_tok, heads * d_h)
    out = keys.new_empty(n_win, n_tok, heads * d_h)
    for i in range(n_win):
        k = keys[i]
        a = k @ k.T
        if cfg.proxy_anchor and cfg.proxy_iters > 0:
            for _ in range(cfg.proxy_iters):
                mf = (a > cfg.proxy_threshold).to(k.dtype)
                p = F.normalize((mf @ k) / (mf.sum(dim=1, keepdim=True) + _EPS), dim=-1)
                a = p @ k.T
            a = p @ p.T
        if cfg.token_norm:
            mu = a.mean(dim=1, keepdim=True)
        else:
            mu = a.mean()
        z = (a - cfg.fixed_beta * mu) * cfg.fixed_gamma
        out[i] = _sparse_softmax(z) @ v[i]
    return out
