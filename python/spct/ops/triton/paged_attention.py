"""Triton kernel of paged_attention: one program per (row, group of query heads reading one KV head) walks the row's
segments in order (a row -> segments CSR built here with torch ops on the device, no sync) and, within a segment,
its blocks in order, with an online softmax updated once per block: the row's scores over the block's tokens it
sees (a full block, the first seg_len % B of a segment's partial last block, for a causal segment only positions
<= q_pos), then the running max, sum and float32 sum of p * v. A row's result depends only on q[r] and the blocks it
sees with their token counts: not on the other rows, on how its blocks are split into segments, or on the grid.
A segment's blocks are read once per reading row (shared rows hit the GPU's cache). Products are float32
multiply-and-sum (no tl.dot: it would round float32 inputs to tf32 on a GPU). Shapes and semantics:
`spct.ops.paged_attention`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# The largest (heads, tokens, D) product tile of a program, in elements: registers on a GPU, numpy in the
# interpreter. A whole block's tokens are one tile (the per-block softmax update), so a larger B * D gets fewer
# heads per program (down to one).
TILE = 16384


@triton.jit
def _attend_block(q, k_ptr, v_ptr, n, token_stride, m_i, l_i, acc, offs_t, offs_d, mask_d):
    """Folds the first n (>= 1) tokens of one block (k_ptr / v_ptr at token 0's head, token_stride apart) into the
    online softmax of the (G_BLOCK, D_BLOCK) pre-scaled queries q."""
    mask_t = offs_t < n
    at = offs_t[:, None] * token_stride + offs_d[None, :]
    mask = mask_t[:, None] & mask_d[None, :]
    k = tl.load(k_ptr + at, mask=mask, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + at, mask=mask, other=0.0).to(tl.float32)
    s = tl.sum(q[:, None, :] * k[None, :, :], axis=2)  # (G_BLOCK, B_BLOCK)
    s = tl.where(mask_t[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))  # finite: n >= 1
    alpha = tl.exp(m_i - m_new)  # 0 on the row's first block (m_i = -inf)
    p = tl.exp(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v[None, :, :], axis=1)
    return m_new, l_i, acc


@triton.jit
def _paged_attention_kernel(q_ptr, k_cache, v_cache, block_ids, seg_block_indptr, seg_len, row_seg_indptr,
                            row_segs, causal, q_pos, seg_start, out_ptr, heads, kv_heads, scale,
                            HEADS: tl.constexpr, GROUP: tl.constexpr, BLOCK: tl.constexpr, DIM: tl.constexpr,
                            G_BLOCK: tl.constexpr, B_BLOCK: tl.constexpr, D_BLOCK: tl.constexpr,
                            HAS_CAUSAL: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    h0 = tl.program_id(1).to(tl.int64) * HEADS  # this program's first query head
    h = h0 // GROUP  # the KV head they read
    offs_g = tl.arange(0, G_BLOCK)
    offs_t = tl.arange(0, B_BLOCK)
    offs_d = tl.arange(0, D_BLOCK)
    mask_g = offs_g < HEADS
    mask_d = offs_d < DIM
    heads_at = (row * heads + h0 + offs_g)[:, None] * DIM + offs_d[None, :]
    mask_q = mask_g[:, None] & mask_d[None, :]
    q = tl.load(q_ptr + heads_at, mask=mask_q, other=0.0).to(tl.float32) * scale

    m_i = tl.full((G_BLOCK,), float("-inf"), tl.float32)
    l_i = tl.zeros((G_BLOCK,), tl.float32)
    acc = tl.zeros((G_BLOCK, D_BLOCK), tl.float32)
    stride = kv_heads * DIM  # between tokens
    first = tl.load(row_seg_indptr + row)
    last = tl.load(row_seg_indptr + row + 1)
    for e in range(first, last):
        s = tl.load(row_segs + e)
        n = tl.load(seg_len + s)
        if HAS_CAUSAL:
            if tl.load(causal + s) != 0:
                n = tl.minimum(n, tl.maximum(tl.load(q_pos + row) - tl.load(seg_start + s) + 1, 0))
        b_lo = tl.load(seg_block_indptr + s)
        for j in range(0, tl.cdiv(n, BLOCK)):
            at = tl.load(block_ids + b_lo + j).to(tl.int64) * BLOCK * stride + h * DIM
            m_i, l_i, acc = _attend_block(q, k_cache + at, v_cache + at, tl.minimum(n - j * BLOCK, BLOCK), stride,
                                          m_i, l_i, acc, offs_t, offs_d, mask_d)
    o = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # no token at all: acc = 0, zeros
    tl.store(out_ptr + heads_at, o.to(out_ptr.dtype.element_ty), mask=mask_q)


def row_segments(seg_row_indptr: torch.Tensor, seg_rows: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The transpose of the segments' row lists, on their device without a sync: row r's segments, in segment
    order, are row_segs[row_seg_indptr[r] : row_seg_indptr[r + 1]].
    seg_row_indptr: (S + 1,) int32; seg_rows: (nnz_rows,) int32 < rows. returns: (rows + 1,) int32, (nnz_rows,)
    int32."""
    segments = seg_row_indptr.shape[0] - 1
    nnz = seg_rows.shape[0]
    device = seg_rows.device
    counts = seg_row_indptr.diff().long()
    segment = torch.repeat_interleave(torch.arange(segments, device=device), counts, output_size=nnz)
    order = torch.sort(seg_rows.long() * max(segments, 1) + segment).indices  # by row, then segment
    per_row = torch.zeros(rows, dtype=torch.int64, device=device).index_add_(0, seg_rows.long(),
                                                                             torch.ones(nnz, dtype=torch.int64,
                                                                                        device=device))
    indptr = torch.cat([per_row.new_zeros(1), per_row.cumsum(0)])
    return indptr.to(torch.int32), segment[order].to(torch.int32)


def heads_per_program(heads: int, kv_heads: int, block_size: int, dim: int) -> int:
    """A KV head's whole group of query heads when its (G, B, D) tile fits TILE, else one query head."""
    group = heads // kv_heads
    tile = triton.next_power_of_2(group) * triton.next_power_of_2(block_size) * triton.next_power_of_2(dim)
    return group if tile <= TILE else 1


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_ids: torch.Tensor,
                    seg_block_indptr: torch.Tensor, seg_len: torch.Tensor, seg_row_indptr: torch.Tensor,
                    seg_rows: torch.Tensor, causal: torch.Tensor | None, q_pos: torch.Tensor | None,
                    seg_start: torch.Tensor | None, scale: float,
                    row_map: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Checked, contiguous inputs whose index values were checked (as spct.ops.paged_attention passes them).
    q: (R, Hq, D); k_cache, v_cache: (N, B, Hkv, D); block_ids: (nnz_blocks,) int32; seg_block_indptr,
    seg_row_indptr: (S + 1,) int32; seg_len: (S,) int32; seg_rows: (nnz_rows,) int32; causal: (S,) bool, q_pos:
    (R,) int32, seg_start: (S,) int32, or all three None; row_map: `row_segments(seg_row_indptr, seg_rows, R)`
    when the caller keeps it for the calls of a step (default: built here). returns: (R, Hq, D) in q's dtype."""
    rows, heads, dim = q.shape
    block_size, kv_heads = k_cache.shape[1], k_cache.shape[2]
    out = torch.empty_like(q)
    if rows == 0:
        return out
    row_seg_indptr, row_segs = row_segments(seg_row_indptr, seg_rows, rows) if row_map is None else row_map
    per_program = heads_per_program(heads, kv_heads, block_size, dim)
    has_causal = causal is not None
    if not has_causal:  # never read (HAS_CAUSAL=False); any int32 pointer
        causal = q_pos = seg_start = seg_len
    _paged_attention_kernel[(rows, heads // per_program)](
        q, k_cache, v_cache, block_ids, seg_block_indptr, seg_len, row_seg_indptr, row_segs,
        causal.view(torch.uint8) if has_causal else causal, q_pos, seg_start, out, heads, kv_heads, scale,
        HEADS=per_program, GROUP=heads // kv_heads, BLOCK=block_size, DIM=dim,
        G_BLOCK=triton.next_power_of_2(per_program), B_BLOCK=triton.next_power_of_2(block_size),
        D_BLOCK=triton.next_power_of_2(dim), HAS_CAUSAL=has_causal,
    )
    return out
