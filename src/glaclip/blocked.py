"""The KV-extended attention, exact and memory-bounded (SPEC 5-7 and 12.2).

``global_attention_blocked`` computes what ``attention.global_attention_dense`` computes and
never holds an ``N x N`` matrix: the extra memory is ``O(block x N)``. It runs in two phases:

  1. *Anchors.* The first proxy iteration needs ``M1 K`` with ``M1 = [K K^T > tau]``. ``K K^T``
     is symmetric, so it is computed in panels of the upper triangle only (half the similarity
     FLOPs): each panel's mask adds its rows' sums and, transposed, the sums of the rows below.
     When the iteration starts from initial proxies instead (the ClearCLIP base, SPEC 12.2),
     ``P0 K^T`` is not symmetric and the first iteration runs row block by row block, like
     every further iteration (they are row-local). The result is one anchor per token (the
     final proxy, or the key itself) and the last mask's row count.
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

import warnings

import torch
import torch.nn.functional as F

from glaclip.attention import EPS, Progress, needs_mask, normalisation
from glaclip.config import GLAConfig
from glaclip.device import free_memory, half_mm, host_decisions

# Below this mask density (fraction of ones) a mask-times-keys product runs as a sparse CSR
# product; above it, as a dense matrix product. Measured break-even on a 2-core AVX-512 CPU is
# about 2-3 %; see BENCHMARKS.md. Exact either way (only the summation order differs).
SPARSE_MASK_DENSITY = 0.01
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
# ``precision="bf16"``/``"fp16"``): the blocked attention's similarity scores, mask-times-keys
# sums and weights-times-values product, and the stitching's projection and cosine logits
# (``Segmenter``). Measured in BENCHMARKS.md ("Fast mode"): which of them move how many
# threshold decisions and labels. The thresholds, the softmax and every normalisation stay in
# float32 whatever this holds.
PRODUCTS = ("scores", "mask_keys", "weights_values", "stitch")
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

    Returns:
        ``N x (heads * d_h)`` float32; zero rows where the last mask is empty (see
        ``global_attention_dense``).
    """
    n = k.shape[0]
    if decide_on_host is None:
        decide_on_host = host_decisions(k.device)
    block = cfg.block_size or auto_block_size(n, k.device, symmetric=initial is None)
    products = (HALF_PRODUCTS if half_products is None else half_products) if half else frozenset()
    work = _Workspace(k, min(n, block), sparse_density if decide_on_host else 0.0, half, products)
    anchors, count = _anchors(work, cfg, initial)
    v_flat = v.permute(1, 0, 2).reshape(n, -1)  # N x D: heads side by side
    v_half = v_flat.to(half) if "weights_values" in work.products else None
    # "token norm off": the mean of all entries of anchors K^T = mean of (anchor . mean key)
    global_mu = None if cfg.token_norm else (anchors @ k.mean(dim=0)).mean()
    out = k.new_empty(v_flat.shape)
    for start in range(0, n, block):
        rows = slice(start, min(n, start + block))
        x = work.scores(anchors[rows])  # B x N similarities
        empty = _normalise_block(work, x, cfg, n_windows, count, rows, global_mu)
        zh = work.half_view(*x.shape) if v_half is not None else None
        _softmax_times_values(x, v_flat, out[rows], decide_on_host, v_half, zh)
        if empty is not None:
            out[rows].masked_fill_(empty, 0.0)
        if progress is not None:
            progress("attention", rows.stop, n)
    return out


def _normalise_block(
    work: _Workspace,
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


class _Workspace:
    """The keys in the layouts the products need, and one reusable ``block x N`` buffer."""

    def __init__(
        self,
        k: torch.Tensor,
        block: int,
        sparse_density: float,
        half: torch.dtype | None = None,
        products: frozenset[str] = frozenset(),
    ) -> None:
        n, c = k.shape
        self.n, self.c, self.block = n, c, block
        self.half, self.products = half, products
        # the keys in half precision, for the products that run in it, and one half-precision
        # block x N buffer for the masks and weights that go into them
        self.k_half = k.to(half) if products & {"scores", "mask_keys"} else None
        self.half_buffer = None
        if products & {"mask_keys", "weights_values"}:
            self.half_buffer = k.new_empty(block * n, dtype=half)
        # float16 tops out at 65,504: its masks hold 2^-12 instead of 1 (exact), so that the
        # sums of up to hundreds of thousands of keys stay in range where the result is float16
        self.mask_value = 2.0**-12 if half == torch.float16 else 1.0
        width = (c + 1 + 15) // 16 * 16
        # keys with a column of ones: mask @ k_aug gives the row sums and the row counts
        self.k_aug = k.new_zeros(n, width)
        self.k_aug[:, :c] = k
        self.k_aug[:, c] = 1.0
        self.k = self.k_aug[:, :c]  # a strided view; products read it in place
        self.buffer = k.new_empty(block * n)
        self.sparse_density = sparse_density

    def view(self, rows: int, cols: int) -> torch.Tensor:
        return self.buffer[: rows * cols].view(rows, cols)

    def half_view(self, rows: int, cols: int) -> torch.Tensor:
        return self.half_buffer[: rows * cols].view(rows, cols)

    def mask(self, x: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``[x > tau]`` for a mask-times-keys product: float32 0/1 in place in ``x``, and, when
        that product runs in half precision, a copy in the half buffer (its entries
        ``mask_value``). Summing and casting float32 is faster on the CPU than either on a
        half-precision matrix."""
        mask = torch.gt(x, tau, out=x)
        if "mask_keys" not in self.products:
            return mask, None
        return mask, torch.mul(mask, self.mask_value, out=self.half_view(*x.shape))

    def scores(self, a: torch.Tensor, start: int = 0) -> torch.Tensor:
        """``a K[start:]^T`` into the buffer (in half precision if ``scores`` is a half
        product)."""
        x = self.view(a.shape[0], self.n - start)
        if "scores" in self.products:
            x.copy_(half_mm(a.to(self.half), self.k_half[start:].T))
        else:
            torch.mm(a, self.k[start:].T, out=x)
        return x

    def mask_count(self, x: torch.Tensor, tau: float) -> torch.Tensor:
        """Row counts of ``x > tau`` (``x`` is left unchanged), 64 rows at a time."""
        count = x.new_empty(x.shape[0])
        tmp = x.new_empty(min(64, x.shape[0]), x.shape[1])
        for r0 in range(0, x.shape[0], 64):
            part = tmp[: min(64, x.shape[0] - r0)]
            torch.gt(x[r0 : r0 + 64], tau, out=part)
            count[r0 : r0 + 64] = part.sum(dim=1)
        return count

    def is_sparse(self, mask: torch.Tensor) -> bool:
        """Whether a 0/1 float mask is sparse enough for a CSR product (sampled estimate)."""
        if self.sparse_density <= 0.0:
            return False
        if self.sparse_density >= 1.0:
            return True
        sample = mask[:: max(1, mask.shape[0] // 64)]
        return float(sample.sum()) < self.sparse_density * sample.numel()


def _csr(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A 0/1 matrix (any strides and dtype) as a sparse CSR matrix of ones in ``dtype``."""
    index = mask.nonzero()
    crow = torch._convert_indices_from_coo_to_csr(index[:, 0].contiguous(), mask.shape[0])
    ones = mask.new_ones(index.shape[0], dtype=dtype)
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            crow, index[:, 1].contiguous(), ones, tuple(mask.shape), check_invariants=False
        )


def _add_mask_product(
    work: _Workspace,
    acc: torch.Tensor,
    mask: torch.Tensor,
    r0: int,
    r1: int,
    half: torch.Tensor | None = None,
) -> None:
    """``acc += mask @ [K | 1][r0:r1]`` for a float32 0/1 ``mask``: sparse, in half precision
    from ``half`` (the same mask, entries ``work.mask_value``; the row counts summed from
    ``mask`` in float32), or in float32."""
    if work.is_sparse(mask):
        acc.add_(_csr(mask, acc.dtype) @ work.k_aug[r0:r1])
    elif half is not None:  # mask_value is a power of two: undone exactly
        acc[:, : work.c] += half_mm(half, work.k_half[r0:r1]).mul_(1.0 / work.mask_value)
        acc[:, work.c] += mask.sum(dim=1)
    else:
        acc.addmm_(mask, work.k_aug[r0:r1])


def _anchors(
    work: _Workspace, cfg: GLAConfig, initial: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Phase 1: the anchors the scores are taken with (``N x Ck``: the final proxies, or the
    keys) and the last mask's row counts (``N``), or None where phase 2 counts the mask from
    its own scores (``T = 0`` with the scores equal to the mask's similarities) or no mask is
    needed (``needs_mask``).

    The iteration starts from ``initial`` (SPEC 12.2) or from the keys (SPEC 5). From the keys,
    the first similarities ``K K^T`` are symmetric and are computed in upper-triangle panels,
    each used twice; from initial proxies, ``P0 K^T`` is not symmetric, so the first iteration
    runs row block by row block like the later ones.
    """
    n, c, block, tau = work.n, work.c, work.block, cfg.proxy_threshold
    k = work.k
    if not needs_mask(cfg):
        return k, None
    if cfg.proxy_iters == 0:
        if initial is None or cfg.proxy_anchor:
            return (k if initial is None else initial), None
        # proxy anchors off: the scores are K K^T, the mask [P0 K^T > tau]
        return k, _mask_counts(work, initial, tau)
    if initial is None:
        proxies, count = _first_iteration_symmetric(work, tau)
        remaining = cfg.proxy_iters - 1
    else:
        proxies, count = initial.clone(), k.new_empty(n)
        remaining = cfg.proxy_iters
    # Row-local iterations, block by block, in place.
    for _ in range(remaining):
        for i0 in range(0, n, block):
            i1 = min(n, i0 + block)
            mask, half = work.mask(work.scores(proxies[i0:i1]), tau)
            part = work.k_aug.new_zeros(i1 - i0, work.k_aug.shape[1])
            _add_mask_product(work, part, mask, 0, n, half)
            proxies[i0:i1] = _proxies_from_sums(work, part, i0)
            count[i0:i1] = part[:, c]
    return (proxies if cfg.proxy_anchor else k), count


def _first_iteration_symmetric(work: _Workspace, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The first proxy iteration from the keys, ``M1 = [K K^T > tau]``: upper-triangle
    panels, each panel's mask added to its rows and, transposed, to the rows below.
    Returns the proxies (a view into a work buffer) and the mask's row counts."""
    n, c, block = work.n, work.c, work.block
    k = work.k
    sums = work.k_aug.new_zeros(n, work.k_aug.shape[1])
    for i0 in range(0, n, block):
        i1 = min(n, i0 + block)
        mask, half = work.mask(work.scores(k[i0:i1], i0), tau)  # rows i0:i1, columns i0:n
        _add_mask_product(work, sums[i0:i1], mask, i0, n, half)
        if i1 < n:  # the same entries seen from the rows below (A is symmetric)
            below = None if half is None else half[:, i1 - i0 :].T
            _add_mask_product(work, sums[i1:], mask[:, i1 - i0 :].T, i0, i1, below)
    proxies = _proxies_from_sums(work, sums, 0)  # a view into sums
    return proxies, sums[:, c].clone()


def _mask_counts(work: _Workspace, a: torch.Tensor, tau: float) -> torch.Tensor:
    """Row counts of ``[a K^T > tau]`` (``N``), block by block."""
    count = work.k.new_empty(work.n)
    for i0 in range(0, work.n, work.block):
        i1 = min(work.n, i0 + work.block)
        count[i0:i1] = work.mask_count(work.scores(a[i0:i1]), tau)
    return count


def _proxies_from_sums(work: _Workspace, sums: torch.Tensor, start: int) -> torch.Tensor:
    """``normalize((M K) / (rowsum(M) + eps))`` from ``[M K | rowsum(M)]``, in place.

    A row whose mask is empty gets its own token (the diagonal entry), as in SPEC 5. Returns a
    view of the first ``Ck`` columns of ``sums``.
    """
    c = work.c
    count = sums[:, c : c + 1]
    empty = count == 0
    own = work.k[start : start + sums.shape[0]]
    sums[:, :c] = torch.where(empty, own, sums[:, :c])
    count.masked_fill_(empty, 1.0)
    proxies = sums[:, :c].div_(count + EPS)
    # F.normalize, in place: x / max(||x||, 1e-12)
    return proxies.div_(torch.linalg.vector_norm(proxies, dim=1, keepdim=True).clamp_min_(1e-12))


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
