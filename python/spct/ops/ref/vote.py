"""Reference voting in plain torch: the oracle for the native kernels and the benchmark baseline.

Rules (docs/method.md section 3; the C++/CUDA/Triton kernels follow them exactly):
- used samples: the valid ones; with meta scores and k_meta, the valid samples whose rank by (meta score desc,
  sample index asc) is below k_meta;
- rewards[b, i]: the float32 sum, accumulated in ascending sample order, of the scores that the used samples gave
  original response i; NaN for padding (i >= num_responses[b]) and for items with no used sample;
- best[b]: argmax of the rewards; exact ties: the floor(u * ties)-th tied response in index order, with u =
  random_bits24(seed, indices[b]) / 2^24 from Philox4x32-10 (indices[b]: the item's number, default b, so that a
  result does not depend on the item's position in its batch); -1 when no sample is used.
"""

from __future__ import annotations

import torch

from spct.ops.ref.philox import random_bits24


def used_samples(valid: torch.Tensor, meta_scores: torch.Tensor | None, k_meta: int | None) -> torch.Tensor:
    """(B, k) bool: valid, and among the k_meta best by (meta desc, index asc) when meta scores are given."""
    if meta_scores is None or k_meta is None:
        return valid.clone()
    k = valid.shape[1]
    idx = torch.arange(k, device=valid.device)
    other, this = meta_scores[:, None, :], meta_scores[:, :, None]  # [b, j, i]: sample i vs sample j
    before = (other > this) | ((other == this) & (idx[None, None, :] < idx[None, :, None]))
    rank = (before & valid[:, None, :]).sum(-1)
    return valid & (rank < k_meta)


def unshuffle(scores: torch.Tensor, perm: torch.Tensor | None, live: torch.Tensor) -> torch.Tensor:
    """(B, k, n) scores in original response order: out[b, j, perm[b, j, p]] = scores[b, j, p]."""
    if perm is None:
        return scores
    pos = torch.arange(scores.shape[2], device=scores.device)
    index = torch.where(live[:, None, :], perm.to(torch.int64), pos)  # padding positions map to themselves
    return torch.zeros_like(scores).scatter_(2, index, scores)


def vote(scores: torch.Tensor, valid: torch.Tensor, perm: torch.Tensor | None = None,
         meta_scores: torch.Tensor | None = None, k_meta: int | None = None,
         num_responses: torch.Tensor | None = None, seed: int = 0, indices: torch.Tensor | None = None
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """scores (B, k, n) float32, valid (B, k) bool -> rewards (B, n) float32, num_used (B,) int32, best (B,) int64.

    indices: (B,) int64 item numbers in [0, 2^63) keying the tie-break draw (None: 0..B-1)."""
    batch, k, n = scores.shape
    dev = scores.device
    n_item = torch.full((batch,), n, device=dev) if num_responses is None else num_responses.to(dev)
    live = torch.arange(n, device=dev)[None, :] < n_item[:, None]
    used = used_samples(valid, meta_scores, k_meta)
    original = unshuffle(scores, perm, live)
    rewards = torch.zeros((batch, n), dtype=torch.float32, device=dev)
    for j in range(k):  # one sample at a time: the float32 sum in ascending sample order
        rewards = torch.where(used[:, j, None], rewards + original[:, j], rewards)
    num_used = used.sum(1).to(torch.int32)
    rewards = rewards.masked_fill(~live | (num_used == 0)[:, None], float("nan"))

    masked = rewards.masked_fill(~live, float("-inf"))
    ties = (masked == masked.max(1, keepdim=True).values) & live
    count = ties.sum(1)
    number = torch.arange(batch, device=dev) if indices is None else indices.to(device=dev, dtype=torch.int64)
    pick = (random_bits24(torch.tensor(seed), number) * count) >> 24
    best = ((ties.cumsum(1) == (pick + 1)[:, None]) & ties).to(torch.int8).argmax(1)
    best = torch.where(num_used > 0, best, torch.full_like(best, -1))
    return rewards, num_used, best
