"""The correctness rule of SPCT training (grm-method.md section 4): rejection, RL reward and Meta RM labels.

With n >= 2 responses and the true best j, a judgement is correct iff its score for j is strictly above every
other score (a tie at the top is wrong); with n = 1, iff its score equals the label. Invalid is incorrect.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["is_correct"]


def is_correct(scores: Sequence[float], item: dict) -> bool:
    """scores: one judgement's scores in the item's original response order (NaN: invalid judgement)."""
    if not scores or any(math.isnan(x) for x in scores):
        return False
    if len(scores) != len(item["responses"]):
        raise ValueError(f"item {item.get('id')!r}: {len(scores)} scores for {len(item['responses'])} responses")
    if len(scores) == 1:
        return scores[0] == item["label"]
    best = item["best"]
    return all(scores[best] > x for i, x in enumerate(scores) if i != best)
