"""The score-group grammar for forced scores: `n` integers in [lo, hi] separated by ", ", closed by "}".

`ScoreGroup(vocab, n, lo, hi)` is an engine constraint: before each token it allows exactly the tokens whose bytes
keep the group text a prefix of a valid group (so the group always completes), EOS never. The candidate tokens
(those made only of digits, ",", " " and "}") are found once per vocabulary with numpy over the byte table.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from spct.engine import Allow
from spct.ops.token_bytes import TokenBytes

__all__ = ["ScoreGroup", "viable"]

_CHARS = b"0123456789, }"


def _number_prefix(p: str, lo: int, hi: int) -> bool:
    """Some integer in [lo, hi], written without leading zeros, starts with the digits p."""
    if not p:
        return True
    if not p.isdigit() or (len(p) > 1 and p[0] == "0"):
        return False
    return any(str(v).startswith(p) for v in range(lo, hi + 1))


def _number(p: str, lo: int, hi: int) -> bool:
    return p.isdigit() and (len(p) == 1 or p[0] != "0") and lo <= int(p) <= hi


def viable(s: str, n: int, lo: int, hi: int) -> bool:
    """s is a prefix of "a, b, ..., z}" with n integers in [lo, hi]."""
    closed = s.endswith("}")
    body = s[:-1] if closed else s
    if "}" in body:
        return False
    pending_space = body.endswith(",")  # "," arrived, its " " not yet
    if pending_space:
        body += " "
    parts = body.split(", ")
    if len(parts) > n or any(not _number(p, lo, hi) for p in parts[:-1]):
        return False
    last = parts[-1]
    if closed:
        return not pending_space and len(parts) == n and _number(last, lo, hi)
    if pending_space:
        return last == "" and len(parts) <= n
    return _number_prefix(last, lo, hi)


class ScoreGroup:
    """Constraint for the tokens after "\\boxed{": call(j, tokens) -> Allow(next tokens that keep the group viable)."""

    _candidates: dict[int, np.ndarray] = {}

    def __init__(self, vocab: TokenBytes, n: int, lo: int, hi: int):
        self.vocab, self.n, self.lo, self.hi = vocab, n, int(lo), int(hi)
        key = id(vocab)
        if key not in ScoreGroup._candidates:
            ScoreGroup._candidates[key] = self._find_candidates(vocab)
        self.candidates = ScoreGroup._candidates[key]
        self._texts = {int(t): vocab[int(t)].decode("ascii") for t in self.candidates}

    @staticmethod
    def _find_candidates(vocab: TokenBytes) -> np.ndarray:
        data, offsets = np.asarray(vocab.data), np.asarray(vocab.offsets)
        ok = np.isin(data, np.frombuffer(_CHARS, dtype=np.uint8))
        bad_before = np.concatenate([[0], np.cumsum(~ok)])  # non-group bytes before each offset
        bad = bad_before[offsets[1:]] - bad_before[offsets[:-1]]
        nonempty = offsets[1:] > offsets[:-1]
        return np.nonzero((bad == 0) & nonempty)[0]

    def text(self, tokens: Sequence[int]) -> str:
        return "".join(self._texts.get(t, "\x00") for t in tokens)

    def __call__(self, j: int, tokens: Sequence[int]) -> Allow:
        s = self.text(tokens)
        return Allow([t for t, x in self._texts.items() if viable(s + x, self.n, self.lo, self.hi)])
