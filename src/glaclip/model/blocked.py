"""The KV-extended attention, exact and memory-bounded (SPEC 5-7 and 12.2).

``global_attention_blocked`` computes what ``attention.global_attention_dense`` computes and
never holds an ``N x N`` matrix: the extra memory is ``O(block x N)``. It runs in two phases:

  1. *Anchors* (``glaclip.model.anchors``): the proxy iteration, in panels of the upper triangle of
     the symmetric ``K K^T`` from the keys, or row block by row block from initial proxies;
     one anchor per token (the final proxy, or the key itself) and the last mask's row count.
  2. *Attention.* Per block of query rows, in place in one buffer: scores ``anchors K^T``,
     the dynamic normalisation, the cut at ``min(rowmax, 0)`` and the softmax (normalised after
     the product with the values); then ``W V``. A row whose maximum is negative keeps a
     single entry, so its output is that token's value: it is gathered, not multiplied.

  Mask-times-keys products switch to a sparse (CSR) product when a block's mask is sparse.
  Every threshold decision (``A > tau``, ``Z < min(rowmax, 0)``) is taken with the same
  float32 formula as in the dense oracle; only the order of the additions inside the matrix
  products differs, so a decision can only flip where a value lies within float32 round-off
  of its threshold, as it would between two BLAS libraries (BENCHMARKS.md measures how often).
  For the same reason the row means are taken from the scores: ``P`` times the mean key is
  equal in exact arithmetic but rounds differently, and flipped the cut of a few rows whose
  maximum is near 0 (it is used for the one global mean of the "token norm off" ablation).

Device placement: every tensor is made on the device of the keys. On the CPU the blocked
implementation takes a few decisions on the host from the data (a sparse product for a sparse
mask, skipping the subtraction of the row maximum where the exponentials cannot overflow,
gathering single-entry rows); elsewhere (CUDA, MPS) those would stall the device on every block,
so it runs without reading any value back (``host_decisions``): dense products, the standard
shifted softmax, the same threshold decisions. Both give the oracle's result to round-off.

The fast mode (``half``): the products named in ``HALF_PRODUCTS`` run in half precision
(``half_mm``); every threshold, the softmax and every normalisation stay in float32.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from glaclip.config import GLAConfig
from glaclip.model.anchors import SPARSE_MASK_DENSITY, Workspace, compute_anchors
from glaclip.model.attention import Progress, normalisation
from glaclip.model.device import free_memory, half_mm, host_decisions

if TYPE_CHECKING:
    from glaclip.model.bases.ops import GaussianBias

# Query-row blocks are sized so that one ``block x N`` float32 buffer has about this many bytes
# (larger blocks gain nothing on the CPU and cost cache misses in the element-wise passes).
_TARGET_BUFFER_BYTES = 96 << 20
_TARGET_BUFFER_BYTES_CUDA = 2 << 30  # on a GPU, larger blocks: fewer, larger products
# exp(z) is used without subtracting the row maximum while the maximum is below this.
_EXP_SAFE = 40.0
_TINY = torch.finfo(torch.float32).tiny
_DROPPED = -80.0  # exp(-80) = 1.8e-35, a normal float32
_DROPPED_EXP = 1e-30


# The method's products that run in half precision when one is asked for (the fast mode:
# ``precision="bf16"``/``"fp16"``): the blocked attention's mask-times-keys sums and
# weights-times-values product. Measured in BENCHMARKS.md ("Fast mode"): which of the products
# move how many threshold decisions and labels (the similarity scores in half precision move
# too many). The thresholds, the softmax and every normalisation stay in float32.
PRODUCTS = ("scores", "mask_keys", "weights_values")
HALF_PRODUCTS: frozenset[str] = frozenset({"weights_values", "mask_keys"})


def auto_block_size(
    n: int, device: torch.device, budget_bytes: int | None = None, symmetric: bool = True
) -> int:
    """Query rows per block for ``N = n`` tokens.

    The blocked attention holds one ``block x N`` buffer (plus ``O(N x Ck)`` and small
    temporaries); twice its size must fit the budget, by default a quarter of the free memory
    (CUDA: free device memory; CPU: available system memory). Within it:

    * on the CPU (and MPS), about 96 MiB per buffer (larger blocks only add cache misses to the
      element-wise passes, measured in BENCHMARKS.md), and with ``symmetric`` (the first proxy
      step from the keys, which skips the lower triangle only across blocks) at most a quarter
      of the rows;
    * on CUDA, at most 2 GiB per buffer: one block of a VOC-sized image (N = 4,704) is all its
      rows, since a GPU is faster on a few large products than on many small ones (each block
      costs a dozen kernel launches), and a 2048 x 2048 image (N = 254,016) takes blocks of
      about 2,100 rows, each a product of about 0.8 TFLOP, within 3 GiB of working memory.

    At least ``min(64, n)``, at most ``n``.
    """
    if budget_bytes is None:
        budget_bytes = free_memory(device) // 4
    rows = budget_bytes // max(1, n * 4 * 2)
    if device.type == "cuda":
        rows = min(rows, _TARGET_BUFFER_BYTES_CUDA // max(1, n * 4))
    else:
        if symmetric:
            rows = min(rows, max(256, -(-n // 4)))
        rows = min(rows, _TARGET_BUFFER_BYTES // max(1, n * 4))
    return int(max(min(64, n), min(n, rows)))


def global_attention_blocked(
    k: torch.Tensor,
    v: torch.Tensor,
    n_windows: int,
    cfg: GLAConfig,
    sparse_density: float = SPARSE_MASK_DENSITY,
    initial: torch.Tensor | None = None,
    progress: Progress | None = None,
    decide_on_host: bool | None = None,
    half: torch.dtype | None = None,
    half_products: frozenset[str] | None = None,
    bias: GaussianBias | None = None,
) -> torch.Tensor:
    """Same result as ``global_attention_dense`` with ``O(block x N)`` extra memory.

    Args:
        k: ``N x Ck`` L2-normalised float32 keys, window-major.
        v: ``heads x N x d_h`` float32 values.
        n_windows: ``L``.
        cfg: the method's settings; ``cfg.block_size`` rows per block (None: from memory).
        sparse_density: mask density below which a mask-times-keys product is sparse
            (0: always dense; 1: always sparse). Changes speed and round-off, not decisions.
        initial: ``N x Ck`` L2-normalised initial proxies, or None for the keys themselves.
        progress: ``progress("attention", rows_done, N)`` after each block of rows.
        decide_on_host: read values back to choose faster paths (sparse products, see the
            module docstring); None: on the CPU only (``host_decisions``). Without it no value
            is read back and the products are dense.
        half: a half precision for the products named in ``half_products`` (default
            ``HALF_PRODUCTS``; of ``PRODUCTS``: the similarity scores, the mask-times-keys sums,
            the weights-times-values product), or None for float32 throughout. Thresholds,
            softmax and normalisations stay in float32.
        bias: added to each block's normalised logits before the cut and the softmax (in
            chunks of 64 rows: ``O(64 x N)`` more memory), or None.

    Returns:
        ``N x (heads * d_h)`` float32; zero rows where the last mask is empty (see
        ``global_attention_dense``).
    """
    n = k.shape[0]
    if decide_on_host is None:
        decide_on_host = host_decisions(k.device)
    block = cfg.block_size or auto_block_size(n, k.device, symmetric=initial is None)
    products = (HALF_PRODUCTS if half_products is None else half_products) if half else frozenset()
    work = Workspace(k, min(n, block), sparse_density if decide_on_host else 0.0, half, products)
    anchors, count = compute_anchors(work, cfg, initial)
    return _attend(
        work, k, v, anchors, count, cfg, n_windows, block, decide_on_host, bias, progress
    )


def _attend(
    work: Workspace,
    k: torch.Tensor,
    v: torch.Tensor,
    anchors: torch.Tensor,
    count: torch.Tensor | None,
    cfg: GLAConfig,
    n_windows: int,
    block: int,
    decide_on_host: bool,
    bias: GaussianBias | None,
    progress: Progress | None,
) -> torch.Tensor:
    """Phase 2 of ``global_attention_blocked``, the attention, block of query rows by block."""
    n = k.shape[0]
    v_flat = v.permute(1, 0, 2).reshape(n, -1)  # N x D: heads side by side
    v_half = v_flat.to(work.half) if "weights_values" in work.products else None
    # "token norm off": the mean of all entries of anchors K^T = mean of (anchor . mean key)
    global_mu = None if cfg.token_norm else (anchors @ k.mean(dim=0)).mean()
    out = k.new_empty(v_flat.shape)
    for start in range(0, n, block):
        rows = slice(start, min(n, start + block))
        x = work.scores(anchors[rows])  # B x N similarities
        empty = _normalise_block(work, x, cfg, n_windows, count, rows, global_mu)
        if bias is not None:
            bias.add_to(x, start)
        zh = work.half_view(*x.shape) if v_half is not None else None
        _softmax_times_values(x, v_flat, out[rows], decide_on_host, v_half, zh)
        if empty is not None:
            out[rows].masked_fill_(empty, 0.0)
        if progress is not None:
            progress("attention", rows.stop, n)
    return out


def _normalise_block(
    work: Workspace,
    x: torch.Tensor,
    cfg: GLAConfig,
    n_windows: int,
    count: torch.Tensor | None,
    rows: slice,
    global_mu: torch.Tensor | None,
) -> torch.Tensor | None:
    """SPEC 6 on a block of scores ``x`` (``B x N``), in place: ``Z = (x - beta mu) gamma``, bit
    for bit as in the dense oracle. ``count``: the last mask's row counts (None: counted here
    from ``x`` when the dynamic gamma needs them); ``global_mu``: the one mean of the "token
    norm off" ablation. Returns the rows whose mask is empty (``B x 1`` bool: infinite gamma,
    the reference's NaN weights become 0), or None."""
    count_b = None
    if cfg.token_norm and cfg.dynamic_norm:  # from these scores when phase 1 left it to them
        count_b = work.mask_count(x, cfg.proxy_threshold) if count is None else count[rows]
    if global_mu is not None:
        bm, gamma = cfg.fixed_beta * global_mu, cfg.fixed_gamma
    else:
        # the row mean of x; (anchors @ k_mean) is equal in exact arithmetic but rounds
        # differently and flips cut decisions of rows whose maximum is near 0
        mu = x.mean(dim=1, keepdim=True).clamp_min_(0.0)
        beta, gamma = normalisation(cfg, n_windows, count_b)
        bm = beta * mu
    empty = None
    if count_b is not None:
        empty = (count_b == 0).unsqueeze(1)
        gamma = gamma.masked_fill(empty, 1.0)
    x.sub_(bm).mul_(gamma)
    return empty


def _softmax_times_values(
    z: torch.Tensor,
    v_flat: torch.Tensor,
    out: torch.Tensor,
    decide_on_host: bool = True,
    v_half: torch.Tensor | None = None,
    z_half: torch.Tensor | None = None,
) -> None:
    """SPEC 7 for a block: cut at ``min(rowmax, 0)``, softmax, times values; into ``out``.

    ``z`` (``B x N``) is overwritten. The keep decision ``z >= cut`` is the oracle's: it is
    taken on ``z - cut``, whose sign is that of the comparison in IEEE arithmetic (tested
    against ``-tiny``, so only a negative subnormal ``z - cut``, below 1.2e-38, would be kept
    wrongly). The softmax is normalised after the product with the values.

    With ``decide_on_host`` (the CPU) three shortcuts are chosen from the data
    (``_host_softmax_times_values``). Without it (GPUs), or with ``v_half`` (the values in
    half precision: the fast mode's product, its weights in ``z_half`` if given), nothing is
    read back (``_shifted_softmax_times_values``).
    """
    zmax = z.amax(dim=1)
    cut = zmax.clamp_max(0.0)
    if not decide_on_host or v_half is not None:
        _shifted_softmax_times_values(z, zmax, cut, v_flat, out, v_half, z_half)
    else:
        _host_softmax_times_values(z, zmax, cut, v_flat, out)


def _shifted_softmax_times_values(
    z: torch.Tensor,
    zmax: torch.Tensor,
    cut: torch.Tensor,
    v_flat: torch.Tensor,
    out: torch.Tensor,
    v_half: torch.Tensor | None = None,
    z_half: torch.Tensor | None = None,
) -> None:
    """``_softmax_times_values`` reading nothing back: the cut and the row maximum are always
    subtracted, every row goes through the product. With ``v_half`` the product runs in half
    precision on weights in [0, 1] rounded to it (into ``z_half``), normalised by the float32
    sums of the weights (float16: before the product, so that its sums stay in range)."""
    z.sub_(cut.unsqueeze(1))  # exact where cut is 0
    F.threshold_(z, -_TINY, float("-inf"))  # keep z - cut >= 0
    z.sub_((zmax - cut).unsqueeze(1))
    z.exp_()
    if v_half is None:
        torch.mm(z, v_flat, out=out)
        out.div_(z.sum(dim=1, keepdim=True))
        return
    total = z.sum(dim=1, keepdim=True)
    if v_half.dtype == torch.float16:  # weights summing to 1: the sums stay in range
        z.div_(total)
        total = None
    if z_half is None:
        z_half = z.new_empty(z.shape, dtype=v_half.dtype)
    out.copy_(half_mm(z_half.copy_(z), v_half))
    if total is not None:
        out.div_(total)


def _host_softmax_times_values(
    z: torch.Tensor, zmax: torch.Tensor, cut: torch.Tensor, v_flat: torch.Tensor, out: torch.Tensor
) -> None:
    """``_softmax_times_values`` on the CPU, with three shortcuts chosen from the data: rows with
    a non-negative maximum skip the subtraction of the cut (it is 0), the row maximum is not
    subtracted where no exponential can overflow, and rows left with a single entry take that
    token's value by a gather instead of a product."""
    negative = cut < 0
    if bool(negative.any()):
        z.sub_(cut.unsqueeze(1))  # rows with a negative maximum: z - zmax, their max is 0
    shift = zmax - cut
    if bool((shift > _EXP_SAFE).any()):
        F.threshold_(z, -_TINY, float("-inf"))  # keep z - cut >= 0
        z.sub_(shift.unsqueeze(1))
        z.exp_()
    else:
        # exp is slow on -inf (and on results below the normal range): drop to a finite value
        # whose exp is a normal float, then zero it. Kept entries are >= 0, so exp(z) >= 1.
        F.threshold_(z, -_TINY, _DROPPED)  # keep z - cut >= 0
        z.exp_()
        F.threshold_(z, _DROPPED_EXP, 0.0)
    total = z.sum(dim=1)
    # A row with a negative maximum and no tie keeps one entry with weight exactly 1.
    single = negative & (total == 1.0)
    n_single = int(single.sum())
    if n_single == 0:
        torch.mm(z, v_flat, out=out)
        out.div_(total.unsqueeze(1))
        return
    _values_with_single_rows(z, v_flat, out, total, single, n_single)


def _values_with_single_rows(
    z: torch.Tensor,
    v_flat: torch.Tensor,
    out: torch.Tensor,
    total: torch.Tensor,
    single: torch.Tensor,
    n_single: int,
) -> None:
    """``out = (z @ V) / total`` where the ``single`` rows (one weight of exactly 1) gather
    their token's value and only the others go through the product."""
    arg = z.argmax(dim=1)
    if n_single < z.shape[0]:
        rows = torch.nonzero(~single).squeeze(1)
        if n_single * 10 > z.shape[0]:  # worth moving the other rows to skip the single ones
            picked = _compact_rows(z, rows)
            out[rows] = (picked @ v_flat).div_(total[rows].unsqueeze(1))
        else:
            res = (z @ v_flat).div_(total.unsqueeze(1))
            out[rows] = res[rows]
    idx = torch.nonzero(single).squeeze(1)
    out[idx] = v_flat[arg[idx]]


def _compact_rows(x: torch.Tensor, rows: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """Move the rows ``rows`` (ascending, unique) of ``x`` to its top, in place.

    Safe because ``rows[j] >= j``: a chunk is gathered before it is written, and later chunks
    read rows below everything written so far. Returns ``x[: len(rows)]``.
    """
    for i in range(0, rows.numel(), chunk):
        part = rows[i : i + chunk]
        x[i : i + part.numel()] = x[part]
    return x[: rows.numel()]
