"""Phase 1 of the blocked attention (``glaclip.model.blocked``): the proxy iteration's anchors.

The first proxy iteration needs ``M1 K`` with ``M1 = [K K^T > tau]``. ``K K^T`` is symmetric,
so it is computed in panels of the upper triangle only (half the similarity FLOPs): each
panel's mask adds its rows' sums and, transposed, the sums of the rows below. When the
iteration starts from initial proxies instead (the ClearCLIP base, SPEC 12.2), ``P0 K^T`` is
not symmetric and the first iteration runs row block by row block, like every further
iteration (they are row-local). The result is one anchor per token (the final proxy, or the key
itself) and the last mask's row count. ``Workspace`` holds the keys in the layouts the products
need and the one reusable ``block x N`` buffer, shared with phase 2.
"""

from __future__ import annotations

import warnings

import torch

from glaclip.config import GLAConfig
from glaclip.model.attention import EPS, needs_mask
from glaclip.model.device import half_mm

# Below this mask density (fraction of ones) a mask-times-keys product runs as a sparse CSR
# product; above it, as a dense matrix product. Measured break-even on a 2-core AVX-512 CPU is
# about 2-3 %; see BENCHMARKS.md. Exact either way (only the summation order differs).
SPARSE_MASK_DENSITY = 0.01


class Workspace:
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


def csr_ones(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A 0/1 matrix (any strides and dtype) as a sparse CSR matrix of ones in ``dtype``."""
    index = mask.nonzero()
    crow = torch._convert_indices_from_coo_to_csr(index[:, 0].contiguous(), mask.shape[0])
    ones = mask.new_ones(index.shape[0], dtype=dtype)
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            crow, index[:, 1].contiguous(), ones, tuple(mask.shape), check_invariants=False
        )


def add_mask_product(
    work: Workspace,
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
        acc.add_(csr_ones(mask, acc.dtype) @ work.k_aug[r0:r1])
    elif half is not None:  # mask_value is a power of two: undone exactly
        acc[:, : work.c] += half_mm(half, work.k_half[r0:r1]).mul_(1.0 / work.mask_value)
        acc[:, work.c] += mask.sum(dim=1)
    else:
        acc.addmm_(mask, work.k_aug[r0:r1])


def compute_anchors(
    work: Workspace, cfg: GLAConfig, initial: torch.Tensor | None = None
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
        return k, mask_counts(work, initial, tau)
    if initial is None:
        proxies, count = first_iteration_symmetric(work, tau)
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
            add_mask_product(work, part, mask, 0, n, half)
            proxies[i0:i1] = proxies_from_sums(work, part, i0)
            count[i0:i1] = part[:, c]
    return (proxies if cfg.proxy_anchor else k), count


def first_iteration_symmetric(work: Workspace, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The first proxy iteration from the keys, ``M1 = [K K^T > tau]``: upper-triangle
    panels, each panel's mask added to its rows and, transposed, to the rows below.
    Returns the proxies (a view into a work buffer) and the mask's row counts."""
    n, c, block = work.n, work.c, work.block
    k = work.k
    sums = work.k_aug.new_zeros(n, work.k_aug.shape[1])
    for i0 in range(0, n, block):
        i1 = min(n, i0 + block)
        mask, half = work.mask(work.scores(k[i0:i1], i0), tau)  # rows i0:i1, columns i0:n
        add_mask_product(work, sums[i0:i1], mask, i0, n, half)
        if i1 < n:  # the same entries seen from the rows below (A is symmetric)
            below = None if half is None else half[:, i1 - i0 :].T
            add_mask_product(work, sums[i1:], mask[:, i1 - i0 :].T, i0, i1, below)
    proxies = proxies_from_sums(work, sums, 0)  # a view into sums
    return proxies, sums[:, c].clone()


def mask_counts(work: Workspace, a: torch.Tensor, tau: float) -> torch.Tensor:
    """Row counts of ``[a K^T > tau]`` (``N``), block by block."""
    count = work.k.new_empty(work.n)
    for i0 in range(0, work.n, work.block):
        i1 = min(work.n, i0 + work.block)
        count[i0:i1] = work.mask_count(work.scores(a[i0:i1]), tau)
    return count


def proxies_from_sums(work: Workspace, sums: torch.Tensor, start: int) -> torch.Tensor:
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
