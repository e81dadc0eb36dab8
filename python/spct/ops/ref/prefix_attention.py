"""Reference prefix_attention: one row at a time, the prompt's keys and values concatenated with the row's own,
plain softmax attention in float32. The oracle for every backend and the fallback where none is built."""

from __future__ import annotations

import torch


def prefix_attention(q: torch.Tensor, prefix_k: torch.Tensor, prefix_v: torch.Tensor, prefix_indptr: torch.Tensor,
                     prefix_index: torch.Tensor, own_k: torch.Tensor, own_v: torch.Tensor, own_index: torch.Tensor,
                     own_len: torch.Tensor, scale: float) -> torch.Tensor:
    """q: (S, Hq, D); prefix_k, prefix_v: (T, Hkv, D); prefix_indptr: (P + 1,); prefix_index, own_index, own_len:
    (S,); own_k, own_v: (C, M, Hkv, D). returns: (S, Hq, D) in q's dtype (zeros for a row with no token)."""
    rows, heads, _ = q.shape
    group = heads // prefix_k.shape[1]
    out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    for s in range(rows):
        p, slot, n = int(prefix_index[s]), int(own_index[s]), int(own_len[s])
        lo, hi = int(prefix_indptr[p]), int(prefix_indptr[p + 1])
        k = torch.cat([prefix_k[lo:hi], own_k[slot, :n]]).float().repeat_interleave(group, dim=1)  # (L, Hq, D)
        v = torch.cat([prefix_v[lo:hi], own_v[slot, :n]]).float().repeat_interleave(group, dim=1)
        if k.shape[0] == 0:
            continue
        weights = (torch.einsum("hd,lhd->hl", q[s].float(), k) * scale).softmax(-1)
        out[s] = torch.einsum("hl,lhd->hd", weights, v)
    return out.to(q.dtype)
