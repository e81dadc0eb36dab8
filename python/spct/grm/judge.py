"""The judging path, written once: from engine samples to scores, from scores to a vote, and the correctness rule.

Scoring (`GenerativeRewardModel.score_batch`), forced scores (`spct.grm.grammar`), evaluation (`spct.eval.run`)
and training (RFT, GRPO, Meta RM under `spct.train`) all go through these functions:

- `extract`: the scores of generated token ids (a trailing EOS dropped), natively over the tokenizer's byte table;
- `to_original`: one sample's scores from the order its prompt showed the responses back to the original order;
- `cast_votes`: the `spct.vote` call for a batch of items, its exact ties broken by each item's NUMBER
  (`indices`), never by its position in the batch, so a result does not depend on how a job is batched;
- `is_correct`: the rule (docs/method.md section 4): with n >= 2 responses the best response's score is strictly
  above every other (a tie at the top is wrong); with n = 1 and a label, the score equals it; any NaN is wrong.

`check_k` and `meta_k` are the one place that validates k and derives k_meta's default (k // 2, at least 1).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

from spct.ops.extract_scores import Extraction, extract_scores
from spct.ops.token_bytes import TokenBytes
from spct.ops.vote import Vote, vote

__all__ = ["cast_votes", "check_k", "extract", "is_correct", "judgement_text", "meta_k", "to_original"]


def check_k(k: object) -> int:
    """k, the samples per item: an int >= 1."""
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    return k


def meta_k(k: int, k_meta: int | None) -> int:
    """The samples a Meta RM keeps out of k: k_meta (at most k), by default k // 2 and at least 1."""
    return max(1, k // 2) if k_meta is None else min(k_meta, k)


def extract(rows: Sequence[Sequence[int]], eos_ids: Iterable[int], vocab: TokenBytes,
            num_responses: int | Sequence[int], score_range: Sequence[float]) -> Extraction:
    """rows: N generations as token ids, each may end with one of eos_ids (dropped); num_responses: int or N ints.
    returns: `Extraction` with scores (N, max(num_responses)) float32 in the order the responses were shown."""
    eos = set(eos_ids)
    lengths = [len(r) - (1 if len(r) and r[-1] in eos else 0) for r in rows]
    ids = torch.zeros((len(rows), max(1, max(lengths, default=0))), dtype=torch.int64)
    for i, r in enumerate(rows):
        ids[i, : lengths[i]] = torch.as_tensor(list(r[: lengths[i]]), dtype=torch.int64)
    return extract_scores(token_ids=ids, lengths=torch.tensor(lengths, dtype=torch.int64), vocab=vocab,
                          num_responses=num_responses, score_range=score_range)


def to_original(shown: Sequence[float] | torch.Tensor, order: Sequence[int], valid: bool) -> list[float]:
    """One sample's scores in the original response order: order[p] = the original index shown at position p,
    shown[p] its score (n = len(order) entries read); all NaN when the sample is invalid."""
    original = [math.nan] * len(order)
    if valid:
        for p, o in enumerate(order):
            original[o] = float(shown[p])
    return original


def judgement_text(ex: Extraction, row: int) -> str:
    """What the Meta RM rates: a generation up to the end of its critique (the whole text when no critique was
    found)."""
    end = int(ex.critique_span[row][1])
    raw = ex.text_bytes(row)
    return (raw[:end] if end > 0 else raw).decode("utf-8", "replace")


def cast_votes(scores: torch.Tensor, valid: torch.Tensor, num_responses: Sequence[int], *, seed: int,
               indices: Sequence[int] | None = None, orders: Sequence[Sequence[Sequence[int]]] | None = None,
               meta_scores: torch.Tensor | None = None, k_meta: int | None = None) -> Vote:
    """Vote over the k samples of B items.

    scores: (B, k, n) float32 with n <= n_max = max(num_responses) (widened here with NaN), in the order each
    sample's prompt showed the responses when orders is given (orders[b][j][p] = the original index shown at
    position p of sample j), else in the original order; valid: (B, k) bool; num_responses: B ints;
    indices: B item numbers (None: 0..B-1), the tie-break key; meta_scores: (B, k) with k_meta (`meta_k`).
    returns: `spct.vote`'s Vote (rewards (B, n_max), num_used (B,), best (B,)).
    """
    batch, k, n = scores.shape
    n_max = max(num_responses)
    if n < n_max:
        scores = torch.nn.functional.pad(scores, (0, n_max - n), value=math.nan)
    perm = None if orders is None else torch.tensor(
        [[list(o) + list(range(len(o), n_max)) for o in item] for item in orders], dtype=torch.int64)
    number = torch.arange(batch) if indices is None else torch.tensor(list(indices), dtype=torch.int64)
    return vote(scores.contiguous(), valid, perm=perm, seed=seed, indices=number,
                num_responses=torch.tensor(list(num_responses), dtype=torch.int64), meta_scores=meta_scores,
                k_meta=None if meta_scores is None else meta_k(k, k_meta))


def is_correct(scores: Sequence[float], best: int | None, label: float | None = None) -> bool:
    """scores: one judgement's scores (or an item's rewards) in the original order, NaN where missing;
    best: the index of the true best response (n >= 2); label: the true score of a single response (n = 1)."""
    if not scores or any(math.isnan(x) for x in scores):
        return False
    if len(scores) == 1 and label is not None:
        return scores[0] == label
    top = scores[best]
    return all(x < top for i, x in enumerate(scores) if i != best)
