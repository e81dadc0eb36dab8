"""Triton kernel of vote: one program per item, the same rules as `spct.ops.ref.vote`, bit for bit.

The float32 sums run one sample at a time (ascending), never as a tree reduction; the perm scatter is a one-hot
sum with exactly one nonzero term per slot, so it is exact too.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from spct.ops.triton.philox import uniform_bits


@triton.jit
def _vote_kernel(scores, valid, perm, meta, num_responses, indices, rewards, num_used, best, k, n, k_meta, seed_ptr,
                 HAS_PERM: tl.constexpr, HAS_META: tl.constexpr, HAS_NR: tl.constexpr, HAS_IDX: tl.constexpr,
                 K_BLOCK: tl.constexpr, N_BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    js = tl.arange(0, K_BLOCK)
    ps = tl.arange(0, N_BLOCK)
    n_item = tl.load(num_responses + b) if HAS_NR else n
    in_k = js < k
    ok = tl.load(valid + b * k + js, mask=in_k, other=0) != 0
    if HAS_META:  # rank among valid samples by (meta desc, index asc)
        m = tl.load(meta + b * k + js, mask=in_k, other=0.0)
        mi, mj = m[None, :], m[:, None]
        before = (mi > mj) | ((mi == mj) & (js[None, :] < js[:, None]))
        rank = tl.sum((before & ok[None, :]).to(tl.int32), axis=1)
        used = ok & (rank < k_meta)
    else:
        used = ok
    live = ps < n_item
    acc = tl.zeros((N_BLOCK,), tl.float32)
    for j in range(0, k):
        use_j = tl.sum(tl.where(js == j, used.to(tl.int32), 0)) > 0
        row = tl.load(scores + (b * k + j) * n + ps, mask=live, other=0.0)
        if HAS_PERM:
            idx = tl.load(perm + (b * k + j) * n + ps, mask=live, other=-1)
            onehot = idx[None, :] == ps[:, None]  # [slot, position]
            row = tl.sum(tl.where(onehot, row[None, :], 0.0), axis=1)
        acc = tl.where(use_j & live, acc + row, acc)
    count = tl.sum(used.to(tl.int32))
    out = tl.where(live & (count > 0), acc, float("nan"))
    tl.store(rewards + b * n + ps, out, mask=ps < n)
    tl.store(num_used + b, count)
    masked = tl.where(live, acc, float("-inf"))
    top = tl.max(masked, axis=0)
    ties = live & (masked == top)
    n_ties = tl.sum(ties.to(tl.int64))
    number = tl.load(indices + b) if HAS_IDX else b  # the item's number keys its draw, not its position
    pick = (uniform_bits(tl.load(seed_ptr), number) * n_ties) >> 24
    order = tl.cumsum(ties.to(tl.int64), axis=0)
    chosen = tl.min(tl.where(ties & (order == pick + 1), ps, N_BLOCK), axis=0)
    tl.store(best + b, tl.where(count > 0, chosen, -1).to(tl.int64))


def vote(scores: torch.Tensor, valid: torch.Tensor, perm: torch.Tensor | None, meta_scores: torch.Tensor | None,
         k_meta: int, num_responses: torch.Tensor | None, seed: int, indices: torch.Tensor | None = None
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Checked, contiguous inputs (as spct.ops.vote passes them) -> (rewards, num_used, best). k_meta <= 0: all.
    indices: (B,) int64 item numbers (None: 0..B-1)."""
    batch, k, n = scores.shape
    dev = scores.device
    rewards = torch.empty((batch, n), dtype=torch.float32, device=dev)
    num_used = torch.empty(batch, dtype=torch.int32, device=dev)
    best = torch.empty(batch, dtype=torch.int64, device=dev)
    if batch == 0:
        return rewards, num_used, best
    dummy = scores  # any tensor for pointers the kernel never reads
    # The seed travels as an int64 tensor: a scalar argument in [2^31, 2^32) would arrive as uint32.
    seed_t = torch.tensor([seed], dtype=torch.int64, device=dev)
    _vote_kernel[(batch,)](
        scores, valid.view(torch.uint8), perm if perm is not None else dummy,
        meta_scores if meta_scores is not None else dummy, num_responses if num_responses is not None else dummy,
        indices if indices is not None else dummy, rewards, num_used, best, k, n, k_meta if k_meta > 0 else k, seed_t,
        HAS_PERM=perm is not None, HAS_META=meta_scores is not None and k_meta > 0, HAS_NR=num_responses is not None,
        HAS_IDX=indices is not None, K_BLOCK=triton.next_power_of_2(max(k, 1)),
        N_BLOCK=triton.next_power_of_2(max(n, 1)),
    )
    return rewards, num_used, best
