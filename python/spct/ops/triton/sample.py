"""Triton kernel of spct.sample: one program per row, the vocabulary in tiles of BLOCK, no sort.

The same semantics as the reference (ops/sample.py), bit for bit: the weights follow exp_weight op by op (IEEE
division via div_rn, FMA contraction off at launch), masses are exact int64 sums, and two radix searches over
the logits' order keys (16 pivots per pass, 8 passes of 4 bits) find the top-k boundary (by count) and the last
top-p token (by mass); ties inside a key are cut in index order with a running cumsum over the tiles.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from spct.ops.triton.philox import uniform_bits as _uniform_bits


@triton.jit
def _exp_weight(z):
    """exp(z) for z <= 0 exactly as spct/sample.h computes it; 0 below -80."""
    zc = tl.where(z < -80.0, -80.0, z)
    n = tl.floor(zc * 1.4426950216293335 + 0.5)
    r = zc - n * 0.693359375
    r = r - n * -0.00021219444170128554
    r2 = r * r
    p = tl.full(z.shape, 0.00019875691214110702, tl.float32)
    p = p * r + 0.001398199936375022
    p = p * r + 0.008333452045917511
    p = p * r + 0.04166579619050026
    p = p * r + 0.1666666567325592
    p = p * r + 0.5
    y = (p * r2 + r) + 1.0
    scale = ((n.to(tl.int32) + 127) << 23).to(tl.float32, bitcast=True)
    return tl.where(z < -80.0, 0.0, y * scale)


@triton.jit
def _order_key(x):
    bits = x.to(tl.uint32, bitcast=True)
    bits = tl.where(bits == 0x80000000, 0, bits)  # -0 ties with +0
    return tl.where((bits >> 31) == 1, ~bits, bits | 0x80000000)


@triton.jit
def _in_prefix(key, idx, last_key, last_index):
    """Is the token at or before (last_key, last_index) in the order (logit desc, index asc)?"""
    return (key > last_key) | ((key == last_key) & (idx <= last_index))


@triton.jit
def _tile(row_ptr, start, vocab, m, t, ok, BLOCK: tl.constexpr):
    """One tile of a row: indices, in-range mask, order keys, float32 weights and int64 masses."""
    idx = start + tl.arange(0, BLOCK)
    valid = idx < vocab
    x = tl.load(row_ptr + idx, mask=valid, other=float("-inf")).to(tl.float32)
    x = tl.where(ok, x, 0.0)  # a row with a bad status only needs to run through harmlessly
    w = _exp_weight(tl.math.div_rn(x - m, t))
    w = tl.where(valid, w, 0.0)
    q = (w * 1099511627776.0).to(tl.int64)  # floor(w * 2^40)
    return idx, valid, _order_key(x), w, q


@triton.jit
def _row_stats(row_ptr, vocab, BLOCK: tl.constexpr):
    """The row's max, its first argmax and status (1 NaN, else 2 +inf, else 3 all -inf, else 0)."""
    lanes = tl.arange(0, BLOCK)
    m = float("-inf")
    arg = 0
    nan = 0
    pinf = 0
    for start in range(0, vocab, BLOCK):
        idx = start + lanes
        x = tl.load(row_ptr + idx, mask=idx < vocab, other=float("-inf")).to(tl.float32)
        nan = tl.maximum(nan, tl.max(tl.where(x != x, 1, 0), axis=0))
        pinf = tl.maximum(pinf, tl.max(tl.where(x == float("inf"), 1, 0), axis=0))
        x = tl.where(x != x, float("-inf"), x)
        tile_max = tl.max(x, axis=0)
        tile_arg = tl.min(tl.where(x == tile_max, idx, vocab), axis=0)
        arg = tl.where(tile_max > m, tile_arg, arg)
        m = tl.maximum(m, tile_max)
    code = tl.where(nan > 0, 1, tl.where(pinf > 0, 2, tl.where(m == float("-inf"), 3, 0)))
    return m, arg, code


@triton.jit
def _top_k_last(row_ptr, vocab, m, t, ok, k, BLOCK: tl.constexpr):
    """The k-th token of the order as (key, index): the largest key with count(key >= it) >= k, then the
    (k - count(key above))-th token of that key by index."""
    j16 = tl.arange(0, 16)
    k_key = tl.zeros((), tl.uint32)
    for step in tl.static_range(8):
        shift: tl.constexpr = 28 - 4 * step
        pivots = k_key | (j16.to(tl.uint32) << shift)
        count = tl.zeros([16], tl.int64)
        for start in range(0, vocab, BLOCK):
            idx, valid, key, w, q = _tile(row_ptr, start, vocab, m, t, ok, BLOCK)
            count += tl.sum(((key[None, :] >= pivots[:, None]) & valid[None, :]).to(tl.int64), axis=1)
        digit = tl.max(tl.where(count >= k, j16, 0), axis=0)
        k_key = k_key | (digit.to(tl.uint32) << shift)
    above = tl.zeros((), tl.int64)
    for start in range(0, vocab, BLOCK):
        idx, valid, key, w, q = _tile(row_ptr, start, vocab, m, t, ok, BLOCK)
        above += tl.sum(((key > k_key) & valid).to(tl.int64), axis=0)
    need = k - above
    seen = tl.zeros((), tl.int64)
    k_cut = -1
    for start in range(0, vocab, BLOCK):
        idx, valid, key, w, q = _tile(row_ptr, start, vocab, m, t, ok, BLOCK)
        eq = (key == k_key) & valid
        running = tl.cumsum(eq.to(tl.int64), axis=0) + seen
        k_cut = tl.maximum(k_cut, tl.max(tl.where(eq & (running <= need), idx, -1), axis=0))
        seen += tl.sum(eq.to(tl.int64), axis=0)
    return k_key, k_cut


@triton.jit
def _top_p_last(row_ptr, vocab, m, t, ok, k_key, k_cut, p, BLOCK: tl.constexpr):
    """The last token of the top-p prefix as (key, index): the smallest key present (mass > 0, in top-k) whose
    mass above stays under the threshold, then the index cut inside that key."""
    j16 = tl.arange(0, 16)
    mass_k = tl.zeros((), tl.int64)
    for start in range(0, vocab, BLOCK):
        idx, valid, key, w, q = _tile(row_ptr, start, vocab, m, t, ok, BLOCK)
        mass_k += tl.sum(tl.where(_in_prefix(key, idx, k_key, k_cut) & valid, q, 0), axis=0)
    threshold = p.to(tl.float64) * mass_k.to(tl.float64)
    p_key = tl.zeros((), tl.uint32)
    above = tl.zeros((), tl.int64)  # mass above the keys still in range
    for step in tl.static_range(8):
        shift: tl.constexpr = 28 - 4 * step
        high: tl.constexpr = 0xFFFFFFFF ^ ((16 << shift) - 1)  # the bits fixed before this pass
        mass = tl.zeros([16], tl.int64)
        count = tl.zeros([16], tl.int64)
        for start in range(0, vocab, BLOCK):
            idx, valid, key, w, q = _tile(row_ptr, start, vocab, m, t, ok, BLOCK)
            live = _in_prefix(key, idx, k_key, k_cut) & valid & (q > 0) & ((key & high) == (p_key & high))
            hit = (((key >> shift) & 15)[None, :] == j16[:, None]) & live[None, :]
            mass += tl.sum(tl.where(hit, q[None, :], 0), axis=1)
            count += tl.sum(hit.to(tl.int64), axis=1)
        ahead = above + tl.cumsum(mass, axis=0, reverse=True) - mass  # mass above each digit's keys
        digit = tl.min(tl.where((count > 0) & (ahead.to(tl.float64) < threshold), j16, 16), axis=0)
        above = tl.sum(tl.where(j16 == digit, ahead, 0), axis=0)
        p_key = p_key | (digit.to(tl.uint32) << shift)
    p_cut = -1
    for start in range(0, vocab, BLOCK):
        idx, valid, key, w, q = _tile(row_ptr, start, vocab, m, t, ok, BLOCK)
        q_eq = tl.where((key == p_key) & _in_prefix(key, idx, k_key, k_cut) & valid & (q > 0), q, 0)
        before = above + tl.cumsum(q_eq, axis=0) - q_eq
        keep = (q_eq > 0) & (before.to(tl.float64) < threshold)
        p_cut = tl.maximum(p_cut, tl.max(tl.where(keep, idx, -1), axis=0))
        above += tl.sum(q_eq, axis=0)
    return p_key, p_cut


@triton.jit
def _draw(row_ptr, vocab, m, t, ok, k_key, k_cut, p_key, p_cut, min_p, bits, BLOCK: tl.constexpr):
    """The first kept token, in index order, whose running mass exceeds floor(bits * 2^-24 * total)."""
    total = tl.zeros((), tl.int64)
    for start in range(0, vocab, BLOCK):
        idx, valid, key, w, q = _tile(row_ptr, start, vocab, m, t, ok, BLOCK)
        kept = _in_prefix(key, idx, k_key, k_cut) & _in_prefix(key, idx, p_key, p_cut) & valid & (w >= min_p)
        total += tl.sum(tl.where(kept, q, 0), axis=0)
    target = bits * (total >> 24) + ((bits * (total & 0xFFFFFF)) >> 24)
    running = tl.zeros((), tl.int64)
    token = vocab
    for start in range(0, vocab, BLOCK):
        idx, valid, key, w, q = _tile(row_ptr, start, vocab, m, t, ok, BLOCK)
        kept = _in_prefix(key, idx, k_key, k_cut) & _in_prefix(key, idx, p_key, p_cut) & valid & (w >= min_p)
        q_kept = tl.where(kept, q, 0)
        cumulative = running + tl.cumsum(q_kept, axis=0)
        token = tl.minimum(token, tl.min(tl.where((q_kept > 0) & (cumulative > target), idx, vocab), axis=0))
        running += tl.sum(q_kept, axis=0)
    return token


@triton.jit
def _sample_kernel(logits, row_stride, vocab, temperature, top_k, top_p, min_p, seed, offset, tokens, status,
                   BLOCK: tl.constexpr):
    row = tl.program_id(0)
    row_ptr = logits + row.to(tl.int64) * row_stride
    m, arg, code = _row_stats(row_ptr, vocab, BLOCK)
    ok = code == 0
    t = tl.load(temperature + row)
    greedy = (t == 0.0) | (code != 0)
    t = tl.where(t > 0.0, t, 1.0)
    m = tl.where(ok, m, 0.0)
    k = tl.load(top_k + row)
    k_key = tl.zeros((), tl.uint32)  # (key 0, index V): every token is in the prefix
    k_cut = vocab
    if (k > 0) & (k < vocab):
        k_key, k_cut = _top_k_last(row_ptr, vocab, m, t, ok, k, BLOCK)
    p = tl.load(top_p + row)
    p_key = tl.zeros((), tl.uint32)
    p_cut = vocab
    if p < 1.0:
        p_key, p_cut = _top_p_last(row_ptr, vocab, m, t, ok, k_key, k_cut, p, BLOCK)
    bits = _uniform_bits(tl.load(seed + row), tl.load(offset + row))
    token = _draw(row_ptr, vocab, m, t, ok, k_key, k_cut, p_key, p_cut, tl.load(min_p + row), bits, BLOCK)
    tl.store(tokens + row, tl.where(greedy, arg, token).to(tl.int64))
    tl.store(status + row, code.to(tl.int32))


def _block(vocab: int, device: torch.device) -> int:
    # The interpreter pays per tile: up to 1024 lanes. On a GPU the radix passes hold (16, BLOCK) int64 tiles in
    # registers: 256 lanes keep that at 32 values a thread with 4 warps (not yet tuned on a GPU).
    return max(16, min(triton.next_power_of_2(max(vocab, 1)), 256 if device.type == "cuda" else 1024))


def sample(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
           min_p: torch.Tensor, seed: torch.Tensor, offset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits: (N, V) float32/bfloat16 with contiguous rows; parameters: checked (N,) tensors (ops/sample.py).
    returns: tokens (N,) int64 and status (N,) int32."""
    rows, vocab = logits.shape
    tokens = torch.empty(rows, dtype=torch.int64, device=logits.device)
    status = torch.empty(rows, dtype=torch.int32, device=logits.device)
    _sample_kernel[(rows,)](logits, logits.stride(0), vocab, temperature, top_k, top_p, min_p, seed, offset,
                            tokens, status, BLOCK=_block(vocab, logits.device), enable_fp_fusion=False)
    return tokens, status


@triton.jit
def _exp_weight_kernel(z, out, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out + i, _exp_weight(tl.load(z + i, mask=i < n, other=0.0)), mask=i < n)


def exp_weight(z: torch.Tensor) -> torch.Tensor:
    """exp_weight of a float32 tensor (flattened), for the bitwise cross-backend tests."""
    z = z.reshape(-1).contiguous()
    out = torch.empty_like(z)
    _exp_weight_kernel[(triton.cdiv(z.numel(), 1024),)](z, out, z.numel(), BLOCK=1024, enable_fp_fusion=False)
    return out
