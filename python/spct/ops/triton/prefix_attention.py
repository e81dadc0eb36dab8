"""Triton kernel of prefix_attention: one program per (row, KV head) computes the G = Hq / Hkv query heads that
read that KV head, walking the row's prompt tokens and then its own tokens in tiles of BLOCK_T with an online
softmax (running max, sum and sum of p * v in float32). A row's arithmetic does not depend on the other rows, so
its output does not depend on the batch. Products are float32 multiply-and-sum (no tl.dot: it would round float32
inputs to tf32 on a GPU). Shapes and semantics: `spct.ops.prefix_attention`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _attend(q, k_ptr, v_ptr, n, token_stride, m_i, l_i, acc, offs_d, mask_d, BLOCK_T: tl.constexpr):
    """Folds n tokens (k_ptr / v_ptr at the first one's head, token_stride apart) into the online softmax of the
    (G_BLOCK, D_BLOCK) pre-scaled queries q."""
    offs_t = tl.arange(0, BLOCK_T)
    for t0 in range(0, n, BLOCK_T):
        mask_t = t0 + offs_t < n
        at = (t0 + offs_t)[:, None] * token_stride + offs_d[None, :]
        mask = mask_t[:, None] & mask_d[None, :]
        k = tl.load(k_ptr + at, mask=mask, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + at, mask=mask, other=0.0).to(tl.float32)
        s = tl.sum(q[:, None, :] * k[None, :, :], axis=2)  # (G_BLOCK, BLOCK_T)
        s = tl.where(mask_t[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp(m_i - m_new)  # 0 on the first tile (m_i = -inf)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v[None, :, :], axis=1)
        m_i = m_new
    return m_i, l_i, acc


@triton.jit
def _prefix_attention_kernel(q_ptr, prefix_k, prefix_v, prefix_indptr, prefix_index, own_k, own_v, own_index,
                             own_len, out_ptr, heads, kv_heads, capacity, scale, GROUP: tl.constexpr,
                             DIM: tl.constexpr, G_BLOCK: tl.constexpr, D_BLOCK: tl.constexpr,
                             BLOCK_T: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1).to(tl.int64)
    offs_g = tl.arange(0, G_BLOCK)
    offs_d = tl.arange(0, D_BLOCK)
    mask_g = offs_g < GROUP
    mask_d = offs_d < DIM
    heads_at = (row * heads + h * GROUP + offs_g)[:, None] * DIM + offs_d[None, :]
    mask_q = mask_g[:, None] & mask_d[None, :]
    q = tl.load(q_ptr + heads_at, mask=mask_q, other=0.0).to(tl.float32) * scale

    m_i = tl.full((G_BLOCK,), float("-inf"), tl.float32)
    l_i = tl.zeros((G_BLOCK,), tl.float32)
    acc = tl.zeros((G_BLOCK, D_BLOCK), tl.float32)
    stride = kv_heads * DIM
    p = tl.load(prefix_index + row)
    lo = tl.load(prefix_indptr + p)
    hi = tl.load(prefix_indptr + p + 1)
    m_i, l_i, acc = _attend(q, prefix_k + lo * stride + h * DIM, prefix_v + lo * stride + h * DIM, hi - lo, stride,
                            m_i, l_i, acc, offs_d, mask_d, BLOCK_T)
    first = tl.load(own_index + row) * capacity * stride + h * DIM
    m_i, l_i, acc = _attend(q, own_k + first, own_v + first, tl.load(own_len + row), stride, m_i, l_i, acc, offs_d,
                            mask_d, BLOCK_T)
    o = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # no token at all: acc = 0, zeros
    tl.store(out_ptr + heads_at, o.to(out_ptr.dtype.element_ty), mask=mask_q)


def prefix_attention(q: torch.Tensor, prefix_k: torch.Tensor, prefix_v: torch.Tensor, prefix_indptr: torch.Tensor,
                     prefix_index: torch.Tensor, own_k: torch.Tensor, own_v: torch.Tensor, own_index: torch.Tensor,
                     own_len: torch.Tensor, scale: float) -> torch.Tensor:
    """Checked, contiguous inputs whose index values were checked (as spct.ops.prefix_attention passes them).
    q: (S, Hq, D); prefix_k, prefix_v: (T, Hkv, D); own_k, own_v: (C, M, Hkv, D). returns: (S, Hq, D)."""
    rows, heads, dim = q.shape
    kv_heads = prefix_k.shape[1]
    group = heads // kv_heads
    out = torch.empty_like(q)
    if rows == 0:
        return out
    g_block = triton.next_power_of_2(group)
    d_block = triton.next_power_of_2(dim)
    # A (G, BLOCK_T, D) product tile of at most 4,096 elements (registers on a GPU; the interpreter's numpy).
    block_t = max(16, min(64, 4096 // (g_block * d_block)))
    _prefix_attention_kernel[(rows, kv_heads)](
        q, prefix_k, prefix_v, prefix_indptr, prefix_index, own_k, own_v, own_index, own_len, out, heads, kv_heads,
        own_k.shape[1], scale, GROUP=group, DIM=dim, G_BLOCK=g_block, D_BLOCK=d_block, BLOCK_T=block_t,
    )
    return out
