"""The score-group grammar of forced scores, as token masks from a tokenizer's byte table.

After "\\boxed{" a forced group must read "a, b, ..., z}": exactly n integers in [lo, hi] (0 <= lo <= hi), written
without leading zeros, separated by ", ", closed by "}".

    allowed, viable, closed = score_group_allowed(vocab, group_ids, n=2, lo=1, hi=10)

`allowed`: the token ids (int32, increasing) whose bytes keep the group text a prefix of a valid group, so a
sampler restricted to them always completes the group; tokens without bytes (special tokens) are never allowed.
`viable`: the group so far is such a prefix; `closed`: it is complete (nothing more is allowed). The native kernel
runs the group through a state machine once and continues each candidate token from there (the tokens made
only of the group's bytes, found once per byte table); the reference (`spct.ops.ref.score_group`) tests each
candidate in Python.

Checks: this wrapper checks every argument (vocab is a TokenBytes, n >= 1, 0 <= lo <= hi < 10**18, group ids in
[0, vocab)); the byte table was checked when its TokenBytes was built (offsets from 0 to len(data), never
decreasing). The bindings only marshal and the kernel reads only bytes of tokens those checks admit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from spct.ops import dispatch
from spct.ops.ref import score_group as ref
from spct.ops.token_bytes import TokenBytes

__all__ = ["score_group_allowed"]

_CPU = torch.device("cpu")  # the op runs on host buffers


def score_group_allowed(vocab: TokenBytes, group: Sequence[int], *, n: int, lo: int, hi: int,
                        backend: str = "auto") -> tuple[np.ndarray, bool, bool]:
    """(allowed ids, viable, closed) for the group ids generated so far; backend "auto", "native" or "reference".

    group: (G,) token ids after "\\boxed{"; returns allowed: (A,) int32 increasing, viable, closed: bool.
    """
    if not isinstance(vocab, TokenBytes):
        raise TypeError(f"vocab must be a TokenBytes, got {type(vocab).__name__}")
    for name, v in (("n", n), ("lo", lo), ("hi", hi)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
            raise ValueError(f"{name} must be an int, got {v!r}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0 <= lo <= hi < 10**18:
        raise ValueError(f"the score range must have 0 <= lo <= hi < 10**18, got lo = {lo}, hi = {hi}")
    ids = np.asarray(list(group), dtype=np.int64)
    if ids.ndim != 1:
        raise ValueError(f"group must be a sequence of token ids, got an array of shape {ids.shape}")
    size = len(vocab)
    # a group is a few ids: Python's min/max over a list cost a tenth of numpy's reductions (measured)
    values = ids.tolist()
    if values and (min(values) < 0 or max(values) >= size):
        bad = next(t for t in values if not 0 <= t < size)
        raise ValueError(f"group token id {bad} outside [0, {size})")
    if dispatch.pick("score_group", _CPU, backend) == "reference":
        return ref.score_group_allowed(vocab.data, vocab.offsets, values, int(n), int(lo), int(hi))
    lib = dispatch.native()
    candidates = vocab.derived("score_group_candidates", lambda: lib.score_group_candidates(vocab.data, vocab.offsets))
    allowed, viable, closed = lib.score_group_allowed(vocab.data, vocab.offsets, candidates, ids, int(n), int(lo),
                                                      int(hi))
    return allowed, bool(viable), bool(closed)
