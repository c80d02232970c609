"""The blocked KV-extended attention against the dense oracle (SPEC 5-7), and the pieces."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from glaclip.config import GLAConfig
from glaclip.model import attention as att
from glaclip.model import blocked as blk
from glaclip.model.bases.proxyclip import window_attention

N_WIN, N_TOK, DIM, HEADS, HEAD_DIM = 3, 40, 16, 2, 4


def clustered_keys(seed: int, dtype=torch.float64, dominant: float = 0.8, noise: float = 0.5):
    """Unit keys: a dominant cluster (about 80 % of the tokens) and three small ones.

    Masks are 50-75 % dense; rows of the dominant cluster have a negative maximum after the
    normalisation (one kept entry), rows of the small clusters a positive one.
    """
    g = torch.Generator().manual_seed(seed)
    n = N_WIN * N_TOK
    centers = F.normalize(torch.randn(4, DIM, generator=g, dtype=dtype), dim=-1)
    small = torch.randint(1, 4, (n,), generator=g)
    which = torch.where(torch.rand(n, generator=g) < dominant, 0, small)
    k = centers[which] + noise * torch.randn(n, DIM, generator=g, dtype=dtype) / DIM**0.5
    return F.normalize(k, dim=-1)


def random_values(seed: int, n: int = N_WIN * N_TOK, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed + 1000)
    return torch.randn(HEADS, n, HEAD_DIM, generator=g, dtype=dtype)


def dense_counts(k: torch.Tensor, cfg: GLAConfig) -> torch.Tensor:
    """Row counts of the dense oracle's last mask (its own proxy iteration)."""
    _, mask = att.dense_proxy_iteration(k, cfg)
    return mask.sum(dim=1).to(k.dtype)


# the blocked attention with host decisions (the CPU's path) and without (the GPUs' path)
ON_HOST = pytest.mark.parametrize("on_host", [True, False], ids=["host-decisions", "no-readback"])

SWITCHES = list(
    itertools.product([True, False], [True, False], [True, False], [0, 1, 2])
)  # proxy_anchor, dynamic_norm, token_norm, proxy_iters


@ON_HOST
@pytest.mark.parametrize(("proxy", "dynamic", "token_norm", "iters"), SWITCHES)
def test_blocked_equals_dense_for_every_switch(proxy, dynamic, token_norm, iters, on_host):
    k, v = clustered_keys(0), random_values(0)
    base = dict(proxy_anchor=proxy, dynamic_norm=dynamic, token_norm=token_norm)
    ref = att.global_attention_dense(k, v, N_WIN, GLAConfig(proxy_iters=iters, **base))
    assert ref.shape == (N_WIN * N_TOK, HEADS * HEAD_DIM)
    for block in (7, 32, 50, 119, 120, 500):  # 7, 32, 50 do not divide N = 120
        cfg = GLAConfig(proxy_iters=iters, block_size=block, **base)
        out = blk.global_attention_blocked(k, v, N_WIN, cfg, decide_on_host=on_host)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10, msg=f"block {block}")


@pytest.mark.parametrize("iters", [1, 2, 3])
@pytest.mark.parametrize("block", [16, 45, 120])
def test_mask_decisions_identical(iters, block):
    """Same last-mask row counts as the oracle, bit for bit, in float32 too."""
    for dtype in (torch.float64, torch.float32):
        k = clustered_keys(2, dtype)
        cfg = GLAConfig(proxy_iters=iters, block_size=block)
        work = blk.Workspace(k, block, blk.SPARSE_MASK_DENSITY)
        anchors, count = blk.compute_anchors(work, cfg)
        assert torch.equal(count, dense_counts(k, cfg))
        assert anchors.shape == k.shape
        assert 0.05 < float(count.mean()) / k.shape[0] < 0.95  # the masks are not trivial


@ON_HOST
def test_float32_agrees_with_oracle(on_host):
    k, v = clustered_keys(3, torch.float32), random_values(3, dtype=torch.float32)
    cfg = GLAConfig(block_size=37)
    ref = att.global_attention_dense(k, v, N_WIN, cfg)
    out = blk.global_attention_blocked(k, v, N_WIN, cfg, decide_on_host=on_host)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_default_inputs_exercise_single_entry_rows():
    """The test keys produce both kinds of rows: a negative maximum (one kept entry) and not."""
    k = clustered_keys(0)
    cfg = GLAConfig()
    work = blk.Workspace(k, 120, 0.0)
    anchors, count = blk.compute_anchors(work, cfg)
    s = anchors @ k.T
    mu = s.mean(dim=1, keepdim=True).clamp_min(0)
    z = (s - att.dynamic_beta(N_WIN, cfg.beta_alpha) * mu) * (1 + cfg.gamma_alpha / count[:, None])
    negative = float((z.amax(dim=1) < 0).double().mean())
    assert 0.1 < negative < 0.9


@pytest.mark.parametrize("iters", [1, 2])
@pytest.mark.parametrize("block", [16, 50, 120])
def test_sparse_mask_products_match(iters, block):
    """The CSR path for mask-times-keys gives the dense result (forced on for every block)."""
    k, v = clustered_keys(4), random_values(4)
    cfg = GLAConfig(proxy_iters=iters, block_size=block)
    ref = att.global_attention_dense(k, v, N_WIN, cfg)
    out = blk.global_attention_blocked(k, v, N_WIN, cfg, sparse_density=1.0)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


def test_sparse_decision_follows_density():
    k = clustered_keys(5)
    work = blk.Workspace(k, 64, 0.05)
    dense_mask = (torch.rand(64, 120, generator=torch.Generator().manual_seed(0)) < 0.5).double()
    sparse_mask = torch.zeros(64, 120, dtype=torch.float64)
    sparse_mask[::8, ::9] = 1.0  # 1.5 % ones
    assert not work.is_sparse(dense_mask)
    assert work.is_sparse(sparse_mask)
    assert not blk.Workspace(k, 64, 0.0).is_sparse(sparse_mask)


def test_empty_rows_get_their_own_token():
    """A short key (norm 0.5) far from the others: its mask is empty at every iteration, so
    SPEC 5 puts its own token in: count 1 and the proxy is that key's direction."""
    k = clustered_keys(6)
    lone = torch.zeros(DIM, dtype=k.dtype)
    lone[0] = 0.5
    k[17] = lone
    k[:, 0][torch.arange(k.shape[0]) != 17] = 0.0  # no other key has a component along it
    v = random_values(6)
    for iters in (1, 2):
        cfg = GLAConfig(proxy_iters=iters, block_size=50)
        # first step: A_17,17 = 0.25 < tau, and 0 against the others
        assert not bool(((k @ k.T)[17] > cfg.proxy_threshold).any())
        work = blk.Workspace(k, 50, 0.0)
        anchors, count = blk.compute_anchors(work, cfg)
        assert count[17] == 1
        torch.testing.assert_close(anchors[17], F.normalize(lone, dim=0))
        # after the first proxy step the row is still empty: p_17 . k_17 = 0.5
        assert float(anchors[17] @ k[17]) < cfg.proxy_threshold
        ref = att.global_attention_dense(k, v, N_WIN, cfg)
        out = blk.global_attention_blocked(k, v, N_WIN, cfg)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


def test_all_rows_empty_above_one():
    """tau at the top of the similarity range (1, the largest setting allows): every mask is
    the diagonal (empty rows get their own token), proxies are the keys."""
    k, v = clustered_keys(7), random_values(7)
    cfg = GLAConfig(proxy_threshold=1.0, block_size=33)
    work = blk.Workspace(k, 33, 0.0)
    anchors, count = blk.compute_anchors(work, cfg)
    assert torch.equal(count, torch.ones_like(count))
    torch.testing.assert_close(anchors, k)
    ref = att.global_attention_dense(k, v, N_WIN, cfg)
    torch.testing.assert_close(blk.global_attention_blocked(k, v, N_WIN, cfg), ref)


# ---------------------------------------------------------------------------------------------
# The cut at min(rowmax, 0) and the softmax

HAND_Z = torch.tensor(
    [
        [0.5, -0.2, 0.0, 1.0],  # positive max: keep z >= 0 (0.5, 0.0, 1.0)
        [-0.3, -0.1, -0.7, -0.2],  # negative max: only the max survives
        [-0.4, -0.1, -0.1, -0.9],  # negative max, tied: both ties survive equally
        [0.0, -1.0, -2.0, 0.0],  # max exactly 0: the zeros survive
    ],
    dtype=torch.float64,
)


def test_sparse_softmax_cut_on_hand_made_matrix():
    w = att.sparse_softmax(HAND_Z.clone())
    e = math.exp
    row0 = torch.tensor([e(0.5), 0.0, e(0.0), e(1.0)], dtype=torch.float64)
    expected = torch.stack(
        [
            row0 / row0.sum(),
            torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=torch.float64),
            torch.tensor([0.0, 0.5, 0.5, 0.0], dtype=torch.float64),
            torch.tensor([0.5, 0.0, 0.0, 0.5], dtype=torch.float64),
        ]
    )
    torch.testing.assert_close(w, expected, rtol=0, atol=1e-15)


@ON_HOST
@pytest.mark.parametrize("rows", [[0, 1, 2, 3], [1], [1, 1, 1, 0], [0, 3], [1, 2]])
def test_softmax_times_values_matches_reference(rows, on_host):
    """The in-place block version (single-entry rows gathered) equals softmax(z) @ V."""
    z = HAND_Z[rows]
    v = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = torch.empty(len(rows), 3, dtype=torch.float64)
    blk._softmax_times_values(z.clone(), v, out, on_host)
    torch.testing.assert_close(out, att.sparse_softmax(z.clone()) @ v, rtol=0, atol=1e-14)


def test_compact_rows_in_place():
    x = torch.arange(300.0).reshape(100, 3)
    rows = torch.tensor([0, 2, 3, 50, 51, 70, 99])
    expected = x[rows].clone()
    top = blk._compact_rows(x, rows, chunk=2)
    assert top.data_ptr() == x.data_ptr()
    assert torch.equal(top, expected)


@ON_HOST
def test_softmax_times_values_large_maximum_and_many_single_rows(on_host):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(40, 30, dtype=torch.float64, generator=g) - 3.0  # mostly negative maxima
    z[3] += 60.0  # a row whose maximum needs the shift before exp
    z[5] = z[5].abs()  # a positive row
    v = torch.randn(30, 6, dtype=torch.float64, generator=g)
    out = torch.empty(40, 6, dtype=torch.float64)
    blk._softmax_times_values(z.clone(), v, out, on_host)
    torch.testing.assert_close(out, att.sparse_softmax(z.clone()) @ v, rtol=1e-12, atol=1e-12)
    assert torch.equal(out[0], v[z[0].argmax()])  # a single-entry row is its value, exactly


# ---------------------------------------------------------------------------------------------
# Block size, routing, per-window baseline


def test_auto_block_size_bounds():
    cpu = torch.device("cpu")
    assert blk.auto_block_size(10, cpu) == 10  # never more than N
    assert blk.auto_block_size(50, cpu, budget_bytes=1) == 50  # floor min(64, N)
    assert blk.auto_block_size(100_000, cpu, budget_bytes=1) == 64  # floor 64
    n = 28_224
    rows = blk.auto_block_size(n, cpu, budget_bytes=2 * 4 * n * 300)
    assert rows == 300  # twice the block x N float32 buffer within the budget
    assert blk.auto_block_size(4704, cpu, budget_bytes=1 << 40) == 1176  # at most N / 4 rows
    big = blk.auto_block_size(n, cpu, budget_bytes=1 << 40)
    assert 64 <= big <= n
    assert big * n * 4 <= blk._TARGET_BUFFER_BYTES  # CPU cap on one buffer


def test_auto_block_size_on_a_gpu():
    """CUDA (budget given, so no GPU is asked): a VOC-sized image in one block, a large one in
    blocks of at most 2 GiB that still have thousands of rows, and never twice the budget."""
    cuda = torch.device("cuda")
    free = 140 << 30  # an H200's memory, a quarter of it the budget
    assert blk.auto_block_size(4704, cuda, budget_bytes=free // 4) == 4704
    n = 254_016  # 2048 x 2048: 324 windows of 28 x 28 DINO tokens
    rows = blk.auto_block_size(n, cuda, budget_bytes=free // 4)
    assert rows * n * 4 <= blk._TARGET_BUFFER_BYTES_CUDA and rows >= 2000
    small = 8 << 30  # a small GPU: the budget rules
    rows = blk.auto_block_size(n, cuda, budget_bytes=small // 4)
    assert 2 * rows * n * 4 <= small // 4 and rows >= 1000


def test_global_attention_routes_to_the_oracle_and_validates():
    from glaclip.model.bases.ops import SimilaritySpace

    k, v = clustered_keys(2, torch.float32), random_values(2, dtype=torch.float32)
    space = [SimilaritySpace(k.reshape(N_WIN, N_TOK, DIM) * 3.0)]  # the keys are normalised
    values = v.permute(1, 0, 2).reshape(N_WIN, N_TOK, HEADS * HEAD_DIM)  # heads side by side
    dense = att.global_attention(space, values, HEADS, GLAConfig(attention_impl="dense"))
    blocked = att.global_attention(space, values, HEADS, GLAConfig(block_size=25))
    assert dense.shape == (N_WIN, N_TOK, HEADS * HEAD_DIM)
    torch.testing.assert_close(
        dense.reshape(-1, HEADS * HEAD_DIM), att.global_attention_dense(k, v, N_WIN, GLAConfig())
    )
    torch.testing.assert_close(blocked, dense, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="attention_impl"):
        GLAConfig(attention_impl="flash")


# One window of three unit keys k0 = (1, 0), k1 = (0.8, 0.6), k2 = (0, 1):
# A = K K^T = [[1, .8, 0], [.8, 1, .6], [0, .6, 1]]; the baseline's fixed beta 1.2, gamma 3.
# * token norm on, no proxies: row means .6, .8, 1.6/3. Z0 = 3 (A0 - .72) = (.84, .24, -2.16):
#   positive maximum, entries >= 0 kept: softmax(.84, .24), i.e. w = 1 / (1 + e^-0.6) on v0 and
#   1 - w on v1. Z1 = 3 (A1 - .96) = (-.48, .12, -1.08): only v1. Z2 = 3 (A2 - .64): only v2.
# * token norm off: one mean 5.8 / 9; Z = 3 (A - .77333): Z0 = (.68, .08, -2.32): w v0 + (1-w) v1
#   again (the same difference .6); Z1 = (.08, .68, -.52): w v1 + (1-w) v0; Z2: only v2.
# * proxy anchors (tau .6, two iterations): masks {0, 1}, {0, 1}, {2} both times (.6 is not
#   above tau), proxies p0 = p1 = (1.8, .6) / |.|, p2 = k2; P P^T = [[1, 1, c], [1, 1, c],
#   [c, c, 1]] with c = .316: Z0 = Z1 = 3 (1 - 1.2 (2 + c) / 3) > 0 on both: (v0 + v1) / 2; v2.
HAND_KEYS = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]], dtype=torch.float64)
_W = 1.0 / (1.0 + math.exp(-0.6))


def _hand_expected(proxy: bool, token_norm: bool, v: torch.Tensor) -> torch.Tensor:
    if proxy:
        return torch.stack([(v[0] + v[1]) / 2, (v[0] + v[1]) / 2, v[2]])
    second = v[1] if token_norm else _W * v[1] + (1 - _W) * v[0]
    return torch.stack([_W * v[0] + (1 - _W) * v[1], second, v[2]])


@pytest.mark.parametrize(("proxy", "token_norm"), [(False, True), (False, False), (True, True)])
def test_window_attention_on_a_hand_made_window(proxy, token_norm):
    values = torch.arange(12, dtype=torch.float64).reshape(HEADS, 1, 3, 2)  # heads x L x S x d
    cfg = GLAConfig(kv_extension=False, proxy_anchor=proxy, token_norm=token_norm)
    out = window_attention(HAND_KEYS[None], values, cfg)[0]  # S x (heads * d)
    v = values[:, 0].permute(1, 0, 2).reshape(3, -1)  # token-major: v0, v1, v2
    torch.testing.assert_close(out, _hand_expected(proxy, token_norm, v), rtol=0, atol=1e-12)


def test_window_attention_alike_keys_average_and_windows_stay_apart():
    """Every key alike: A = 1, Z = 3 (1 - 1.2) = -0.6 everywhere, a negative maximum kept by
    every entry (a tie): each token gets its window's mean value. Windows never mix: each one
    alone, and in any chunking, gives the same output."""
    keys = torch.zeros(2, 4, DIM, dtype=torch.float64)
    keys[:, :, 0] = 1.0
    values = random_values(4, n=8).reshape(HEADS, 2, 4, HEAD_DIM)
    cfg = GLAConfig(kv_extension=False, proxy_anchor=False)
    out = window_attention(keys, values, cfg, chunk=1)
    means = values.mean(dim=2).permute(1, 0, 2).reshape(2, 1, -1)  # L x 1 x (heads * d)
    torch.testing.assert_close(out, means.expand_as(out), rtol=0, atol=1e-12)
    keys = clustered_keys(3).reshape(N_WIN, N_TOK, DIM)
    values = random_values(3).reshape(HEADS, N_WIN, N_TOK, HEAD_DIM)
    whole = window_attention(keys, values, GLAConfig(kv_extension=False), chunk=16)
    for i in range(N_WIN):
        alone = window_attention(keys[i : i + 1], values[:, i : i + 1], GLAConfig())
        torch.testing.assert_close(whole[i : i + 1], alone, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# The golden fixtures through both implementations


@pytest.mark.parametrize(
    "extra",
    [
        {"attention_impl": "dense"},
        {"block_size": 1000},  # N = 4,704: five blocks, the last one partial
    ],
    ids=["dense-oracle", "blocked-1000"],
)
def test_golden_default_through_both_paths(extra, golden_dir, golden_modules):
    from glaclip import Segmenter
    from tests.golden import assert_matches_golden, load_case, settings_of

    g = load_case(golden_dir, "gla_default")
    clip, vfm, tokenizer = golden_modules
    seg = Segmenter.from_modules(clip, vfm, tokenizer, **settings_of(g["params"]), **extra)
    out = seg.segment_tensor(g["image"], g["class_lines"])
    assert_matches_golden(out.query_logits, out.labels, g)


# ---------------------------------------------------------------------------------------------
# The ClearCLIP base (SPEC 12)


def _literal_initial_proxies(q, positions):
    """SPEC 12.2 as written: the N x N candidate mask, then the plain mean."""
    n_win, gh, gw, d = q.shape
    flat = q.reshape(-1, d)
    pos = positions.reshape(-1)
    win = torch.arange(n_win).view(-1, 1, 1).expand(n_win, gh, gw).reshape(-1)
    ii = torch.arange(gh).view(1, -1, 1).expand(n_win, gh, gw).reshape(-1)
    jj = torch.arange(gw).view(1, 1, -1).expand(n_win, gh, gw).reshape(-1)
    same = pos[:, None] == pos[None, :]
    near = (
        (win[:, None] == win[None, :])
        & ((ii[:, None] - ii[None, :]).abs() <= 1)
        & ((jj[:, None] - jj[None, :]).abs() <= 1)
    )
    m = (same | near).to(q.dtype)
    return (m @ flat) / m.sum(dim=1, keepdim=True)


@pytest.mark.parametrize(("height", "width"), [(224, 336), (336, 500), (224, 224)])
def test_initial_proxies_equal_the_literal_mask_mean(height, width):
    from glaclip.model.bases.ops import token_groups, token_positions
    from glaclip.model.windows import window_grid

    windows = window_grid(height, width, 224, 112)
    g = torch.Generator().manual_seed(height + width)
    q = torch.randn(len(windows), 14, 14, 8, generator=g, dtype=torch.float64)
    ys, xs = token_positions(windows, (14, 14), (16, 16))
    positions = ys * width + xs
    got = att.initial_proxies(q, *token_groups(windows, (14, 14), (16, 16)))
    ref = _literal_initial_proxies(q, positions)
    torch.testing.assert_close(got.double(), ref, rtol=1e-6, atol=1e-6)


def test_token_positions_by_hand():
    from glaclip.model.bases.ops import token_positions
    from glaclip.model.windows import Window

    wins = [Window(0, 32, 0, 32), Window(0, 32, 20, 52)]  # second window 20 px to the right
    ys, xs = token_positions(wins, (2, 2), (16, 16))
    assert ys[0].tolist() == ys[1].tolist() == [[0, 0], [16, 16]]
    assert xs[0].tolist() == [[0, 16], [0, 16]]
    assert xs[1].tolist() == [[20, 36], [20, 36]]


def _initial_for(k, seed):
    g = torch.Generator().manual_seed(seed)
    noise = 0.3 * torch.randn(k.shape, generator=g, dtype=k.dtype)
    return F.normalize(k + noise, dim=-1)


INITIAL_SWITCHES = list(
    itertools.product([True, False], [True, False], [True, False], [True, False], [0, 1, 2])
)  # proxy_anchor, dynamic_norm, dynamic_beta, token_norm, proxy_iters


@ON_HOST
@pytest.mark.parametrize(("proxy", "dynamic", "dyn_beta", "token_norm", "iters"), INITIAL_SWITCHES)
def test_blocked_equals_dense_from_initial_proxies(
    proxy, dynamic, dyn_beta, token_norm, iters, on_host
):
    k, v = clustered_keys(5), random_values(5)
    initial = _initial_for(k, 5)
    base = dict(
        proxy_anchor=proxy, dynamic_norm=dynamic, dynamic_beta=dyn_beta, token_norm=token_norm
    )
    ref = att.global_attention_dense(k, v, N_WIN, GLAConfig(proxy_iters=iters, **base), initial)
    for block in (7, 50, 120):
        cfg = GLAConfig(proxy_iters=iters, block_size=block, **base)
        out = blk.global_attention_blocked(
            k, v, N_WIN, cfg, initial=initial, decide_on_host=on_host
        )
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10, msg=f"block {block}")


def test_initial_proxies_change_the_result_only_where_used():
    k, v = clustered_keys(6), random_values(6)
    initial = _initial_for(k, 6)
    for cfg, used in [
        (GLAConfig(), True),
        (GLAConfig(proxy_anchor=False, dynamic_norm=False), False),  # A = K K^T, no mask
    ]:
        a = att.global_attention_dense(k, v, N_WIN, cfg)
        b = att.global_attention_dense(k, v, N_WIN, cfg, initial)
        assert (not torch.allclose(a, b)) == used


@ON_HOST
def test_empty_masks_give_zero_rows(on_host):
    """T = 0 from initial proxies: a row whose mask is empty has an infinite gamma; the
    reference's NaN weights become 0, so the row's output is zero (SPEC 12.2)."""
    k, v = clustered_keys(7), random_values(7)
    initial = _initial_for(k, 7)
    cfg = GLAConfig(proxy_iters=0, proxy_threshold=0.9)
    empty = ((initial @ k.T) > 0.9).sum(dim=1) == 0
    assert 0 < int(empty.sum()) < k.shape[0]
    ref = att.global_attention_dense(k, v, N_WIN, cfg, initial)
    cfg16 = GLAConfig(proxy_iters=0, proxy_threshold=0.9, block_size=16)
    out = blk.global_attention_blocked(k, v, N_WIN, cfg16, initial=initial, decide_on_host=on_host)
    assert torch.isfinite(ref).all() and torch.isfinite(out).all()
    assert (ref[empty] == 0).all() and (ref[~empty].abs().sum(dim=1) > 0).all()
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


def test_query_attention_equals_scaled_dot_product_attention():
    from glaclip.model.bases.ops import softmax_attention

    g = torch.Generator().manual_seed(8)
    q = torch.randn(5, 17, 12, generator=g)
    v = torch.randn(5, 17, 12, generator=g)
    heads = 3
    out = softmax_attention([(q, None)], v, heads, chunk=2)
    qh = q.reshape(5, 17, heads, 4).transpose(1, 2)
    vh = v.reshape(5, 17, heads, 4).transpose(1, 2)
    ref = F.scaled_dot_product_attention(qh, qh, vh).transpose(1, 2).reshape(5, 17, 12)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# The fast mode's half-precision products


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("products", [{"weights_values"}, {"mask_keys"}, blk.HALF_PRODUCTS])
def test_half_products_stay_close_to_the_oracle(half, products):
    """Float32 keys and values; the named products in half precision: the output is the
    oracle's to half-precision round-off (the thresholds decided in float32)."""
    k, v = clustered_keys(3, torch.float32), random_values(3, dtype=torch.float32)
    cfg = GLAConfig(block_size=37)
    ref = att.global_attention_dense(k, v, N_WIN, cfg)
    out = blk.global_attention_blocked(k, v, N_WIN, cfg, half=half, half_products=products)
    assert out.dtype == torch.float32
    err = (out - ref).abs().max() / ref.abs().max()
    assert 0 < err < (2e-2 if half == torch.bfloat16 else 3e-3), err  # rounded, and only that


def test_half_mask_products_count_in_float32():
    """Mask row counts are summed in float32 beside the half-precision product: with every
    entry in the mask (keys around one direction, tau 0 below every similarity) each count is
    N exactly, though N = 601 is not a bfloat16 number."""
    g = torch.Generator().manual_seed(0)
    k = F.normalize(torch.randn(601, DIM, generator=g) + 3.0, dim=-1)
    assert (k @ k.T).min() > 0
    cfg = GLAConfig(proxy_threshold=0.0, proxy_iters=2, block_size=128)
    work = blk.Workspace(k, 128, 0.0, torch.bfloat16, frozenset({"mask_keys"}))
    _, count = blk.compute_anchors(work, cfg)
    assert torch.equal(count, torch.full_like(count, 601.0))
    assert torch.tensor(601.0).to(torch.bfloat16).item() != 601.0


def test_half_precision_product_accumulates_in_float32():
    """``half_mm``: a float32 result whose error is that of the inputs' rounding plus at most
    one rounding of each result, not one per addition (1024 terms of 1/1024)."""
    a = torch.full((2, 1024), 1 / 1024, dtype=torch.bfloat16)
    b = torch.ones(1024, 3, dtype=torch.bfloat16)
    out = blk.half_mm(a, b)
    assert out.dtype == torch.float32
    assert torch.equal(out, torch.ones(2, 3))  # 1024 additions of 2^-10, exact in float32


def test_float16_weighted_sums_stay_in_range():
    """Float16 holds at most 65,504: 2,000 equal weights times values of 100 would sum to
    200,000. The fast mode's float16 product takes normalised weights, so the output is 100."""
    n = 2000
    k = torch.zeros(n, DIM)
    k[:, 0] = 1.0  # every token alike: every mask and every weight row is full
    v = torch.full((HEADS, n, HEAD_DIM), 100.0)
    cfg = GLAConfig(block_size=500)
    out = blk.global_attention_blocked(
        k, v, 1, cfg, half=torch.float16, half_products=frozenset({"weights_values", "mask_keys"})
    )
    torch.testing.assert_close(out, torch.full_like(out, 100.0), rtol=2e-3, atol=0)
