"""Forced scores: an engine constraint that completes a judgement without a valid score group.

`ForceScores` lets each sample of a prompt generate freely. When a sample ends (EOS or its token budget) and its
text has no valid score group for the prompt's n responses, the engine forces "\\nScores: \\boxed{" in place of the
EOS and the constraint then allows, before each token, only the tokens that keep the group a prefix of
"a, b, ..., z}" (n integers in range; masks from `spct.ops.score_group_allowed`, native over the byte table), and
EOS once the group is closed. The sample keeps its KV: nothing is prefilled again.
"""

from __future__ import annotations

from collections.abc import Sequence

from spct.engine import Allow, Force
from spct.grm.judge import extract
from spct.ops.score_group import score_group_allowed
from spct.ops.token_bytes import TokenBytes

__all__ = ["ForceScores", "PREFIX"]

PREFIX = "\nScores: \\boxed{"


class ForceScores:
    """Constraint for the samples of one prompt judging n responses with integer scores in [lo, hi]."""

    def __init__(self, vocab: TokenBytes, prefix_ids: Sequence[int], eos_ids: Sequence[int], n: int, lo: int,
                 hi: int, score_range: tuple[float, float] | None = None):
        if not prefix_ids or not eos_ids:
            raise ValueError("ForceScores needs the prefix's token ids and at least one EOS id")
        self.vocab, self.prefix, self.n, self.lo, self.hi = vocab, list(prefix_ids), n, lo, hi
        self.eos, self.eos_set = int(eos_ids[0]), set(eos_ids)
        self.score_range = (lo, hi) if score_range is None else score_range
        # the prefix, then per number its digits and ", " (at least one byte per token), "}", EOS
        self.max_extra_tokens = len(self.prefix) + (len(str(hi)) + 2) * n + 1
        self.start: dict[int, int] = {}  # sample j -> index of its group's first token

    def valid(self, ids: Sequence[int]) -> bool:
        """The ids (a trailing EOS excluded) hold a valid score group for n responses."""
        return bool(extract([ids], self.eos_set, self.vocab, self.n, self.score_range).valid[0])

    def on_end(self, j: int, ids: Sequence[int]) -> list[int] | None:
        if self.valid(ids):
            return None
        body = len(ids) - (1 if ids and ids[-1] in self.eos_set else 0)
        self.start[j] = body + len(self.prefix)
        return self.prefix

    def __call__(self, j: int, ids: Sequence[int]) -> Allow | Force | None:
        start = self.start.get(j)
        if start is None or len(ids) < start:
            return None
        allowed, viable, closed = score_group_allowed(self.vocab, ids[start:], n=self.n, lo=self.lo, hi=self.hi)
        if closed or not viable:
            return Force([self.eos])
        return Allow(allowed)
