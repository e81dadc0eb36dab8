"""Reference paged_attention: one segment at a time, as the kernels will work. A segment's tokens are gathered from
their blocks once, attended by every row that lists it (plain softmax in float32, the causal rule applied), and
each row's partial result is merged into its running one by log-sum-exp. A softcap caps the scores (c * tanh(x /
c)) before the masks; a window masks every segment's tokens at positions <= q_pos - window. The fall-back where no
kernel is built and the oracle of the kernels (tests/test_paged_attention.py checks it against a per-row
concatenation; tests/test_paged_attention_window.py with a window and a softcap).

Merge of two partial results of one row (o: the attention output over a set of tokens, l: the log of the sum of
exp(score) over that set): l = logaddexp(l_a, l_b); o = o_a * exp(l_a - l) + o_b * exp(l_b - l). A part that sees no
token has l = -inf and adds nothing.
"""

from __future__ import annotations

import torch


def _tokens(cache: torch.Tensor, blocks: torch.Tensor, n: int, group: int) -> torch.Tensor:
    """cache: (N, B, Hkv, D); blocks: (b,) its block ids in order -> (n, Hq, D) float32, the first n tokens."""
    return cache[blocks.long()].flatten(0, 1)[:n].float().repeat_interleave(group, dim=1)


def _merge(out: torch.Tensor, lse: torch.Tensor, rows: torch.Tensor, part: torch.Tensor,
           part_lse: torch.Tensor) -> None:
    """Merges a segment's partial outputs part: (r, Hq, D) and log-sum-exps part_lse: (r, Hq) into rows of out:
    (R, Hq, D) and lse: (R, Hq), in place (rows: (r,) distinct)."""
    old = lse[rows]
    new = torch.logaddexp(old, part_lse)
    seen = torch.isfinite(new)  # -inf: the row has seen no token yet, nothing to weigh
    keep = torch.where(seen, torch.exp(old - new), 0.0)
    add = torch.where(seen, torch.exp(part_lse - new), 0.0)
    out[rows] = out[rows] * keep[..., None] + torch.nan_to_num(part) * add[..., None]
    lse[rows] = new


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_ids: torch.Tensor,
                    seg_block_indptr: torch.Tensor, seg_len: torch.Tensor, seg_row_indptr: torch.Tensor,
                    seg_rows: torch.Tensor, causal: torch.Tensor | None, q_pos: torch.Tensor | None,
                    seg_start: torch.Tensor | None, scale: float, window: int = 0,
                    softcap: float = 0.0) -> torch.Tensor:
    """q: (R, Hq, D); k_cache, v_cache: (N, B, Hkv, D); block_ids: (nnz_blocks,); seg_block_indptr,
    seg_row_indptr: (S + 1,); seg_len: (S,); seg_rows: (nnz_rows,); causal: (S,) bool or None; q_pos: (R,) or None;
    seg_start: (S,) or None; window: > 0 the sliding window (causal, q_pos and seg_start given), 0 none; softcap: > 0
    the scores' cap, 0 none (layout: spct.ops.paged_attention). returns: (R, Hq, D) in q's dtype; zeros for a row
    that sees no token (the wrapper refuses such a layout)."""
    rows, heads, dim = q.shape
    group = heads // k_cache.shape[2]
    out = torch.zeros(rows, heads, dim, dtype=torch.float32, device=q.device)
    lse = torch.full((rows, heads), -torch.inf, dtype=torch.float32, device=q.device)
    for s in range(seg_len.shape[0]):
        n = int(seg_len[s])
        members = seg_rows[int(seg_row_indptr[s]):int(seg_row_indptr[s + 1])].long()
        if n == 0 or members.numel() == 0:
            continue
        blocks = block_ids[int(seg_block_indptr[s]):int(seg_block_indptr[s + 1])]
        k, v = _tokens(k_cache, blocks, n, group), _tokens(v_cache, blocks, n, group)  # (n, Hq, D), read once
        scores = torch.einsum("rhd,nhd->rhn", q[members].float(), k) * scale
        if softcap:
            scores = softcap * torch.tanh(scores / softcap)
        visible = torch.ones(members.shape[0], n, dtype=torch.bool, device=q.device)  # (r, n)
        if causal is not None:
            position = int(seg_start[s]) + torch.arange(n, device=q.device)
            at = q_pos[members].long()[:, None]
            if bool(causal[s]):
                visible &= position[None, :] <= at
            if window:
                visible &= position[None, :] > at - window
        scores = scores.masked_fill(~visible[:, None, :], -torch.inf)
        part_lse = torch.logsumexp(scores, dim=-1)  # (r, Hq); -inf where the row sees none of these tokens
        part = torch.einsum("rhn,nhd->rhd", torch.softmax(scores, dim=-1), v)  # nan for such a row, dropped
        _merge(out, lse, members, part, part_lse)
    return out.to(q.dtype)
