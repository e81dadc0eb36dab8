"""Reference for `spct.ops.score_group`: the score-group grammar in plain Python over the byte table."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

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


def candidates(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Ids of the non-empty tokens made only of digits, ",", " " and "}" (no other token can be allowed)."""
    ok = np.isin(data, np.frombuffer(_CHARS, dtype=np.uint8))
    bad_before = np.concatenate([[0], np.cumsum(~ok)])  # bytes outside the set before each offset
    bad = bad_before[offsets[1:]] - bad_before[offsets[:-1]]
    return np.nonzero((bad == 0) & (offsets[1:] > offsets[:-1]))[0]


def score_group_allowed(data: np.ndarray, offsets: np.ndarray, group: Sequence[int], n: int, lo: int,
                        hi: int) -> tuple[np.ndarray, bool, bool]:
    text = b"".join(data[offsets[t]: offsets[t + 1]].tobytes() for t in group)
    try:
        s = text.decode("ascii")
    except UnicodeDecodeError:
        return np.zeros(0, dtype=np.int32), False, False
    if not viable(s, n, lo, hi):
        return np.zeros(0, dtype=np.int32), False, False
    if s.endswith("}"):
        return np.zeros(0, dtype=np.int32), True, True
    ids = [int(t) for t in candidates(data, offsets)
           if viable(s + data[offsets[t]: offsets[t + 1]].tobytes().decode("ascii"), n, lo, hi)]
    return np.array(ids, dtype=np.int32), True, False
