"""Pure-Python reference of extract_scores: the test oracle, the fallback and the benchmark baseline.

It follows the grammar in `spct.ops.extract_scores` rule by rule, on bytes, with the standard library only.
Returns the same packed arrays as the native kernel (see `Packed`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

_NUMBER = rb"-?[0-9]+(?:\.[0-9]+)?"
_UNSIGNED = rb"[0-9]+(?:\.[0-9]+)?"
_GROUP_CONTENT = re.compile(rb"\s*" + _NUMBER + rb"\s*(?:,\s*" + _NUMBER + rb"\s*)*")
_HEADER = re.compile(rb"[ \t#*>-]*(specific criteria|analysis|final scores|scores)", re.IGNORECASE)
_HEADER_END = re.compile(rb"[ \t*]*(?::|\r|\n|\Z)")
_CONTENT_SKIP = re.compile(rb"[ \t*:]*")
_LIST_MARKER = re.compile(rb"(?:[-*+]|[0-9]+[.)])(?=[ \t])")
_NAME_SKIP = re.compile(rb"[ \t*_]*")
_WEIGHT = re.compile(rb"weight[ \t:=*]*(" + _UNSIGNED + rb")([ \t]*%)?", re.IGNORECASE)
_PERCENT = re.compile(rb"\([ \t]*(" + _UNSIGNED + rb")[ \t]*%")

PRINCIPLES, CRITIQUE, SCORES = "specific criteria", "analysis", "scores"


class Packed(NamedTuple):
    """Extraction results as flat arrays (shared by the reference and the native kernels).

    text: (bytes,) uint8, every row's text; row_offsets: (N + 1,) int64; scores: (N, n_max) float32;
    valid: (N,) bool; principle_span, critique_span: (N, 2) int64 byte offsets into the row, -1 when absent;
    item_counts: (N,) int64 principles per row; item_spans: (P, 2) int64 name offsets; item_weights: (P,) float64.
    """

    text: np.ndarray
    row_offsets: np.ndarray
    scores: np.ndarray
    valid: np.ndarray
    principle_span: np.ndarray
    critique_span: np.ndarray
    item_counts: np.ndarray
    item_spans: np.ndarray
    item_weights: np.ndarray


def score_group(s: bytes) -> tuple[int, int, int]:
    """(start, begin, end) of the last complete \\boxed{...} or [[...]] by start offset; (-1, -1, -1) if none."""
    last_brace, last_dbl = s.rfind(b"}"), s.rfind(b"]]")
    boxed = s.rfind(b"\\boxed{", 0, last_brace) if last_brace >= 0 else -1
    brackets = s.rfind(b"[[", 0, last_dbl) if last_dbl >= 0 else -1
    if boxed < 0 and brackets < 0:
        return -1, -1, -1
    if boxed > brackets:
        return boxed, boxed + 7, s.index(b"}", boxed + 7)
    return brackets, brackets + 2, s.index(b"]]", brackets + 2)


def parse_number(token: bytes) -> float:
    """NUMBER -> the nearest double (Python's float is correctly rounded; an overflow gives inf)."""
    return float(token)


def parse_scores(content: bytes, num_responses: int, lo: float, hi: float) -> list[float] | None:
    """The scores of a group's content, or None when the group is invalid."""
    if not _GROUP_CONTENT.fullmatch(content):
        return None
    values = [parse_number(tok.strip()) for tok in content.split(b",")]
    if len(values) != num_responses or not all(lo <= v <= hi for v in values):
        return None
    return values


def header_at(s: bytes, p: int) -> tuple[str | None, int]:
    """(kind, content start) of a header line starting at p, or (None, -1)."""
    m = _HEADER.match(s, p)
    if m is None or _HEADER_END.match(s, m.end()) is None:
        return None, -1
    kind = m.group(1).lower().decode()
    kind = SCORES if kind.endswith(SCORES) else kind
    return kind, _CONTENT_SKIP.match(s, m.end()).end()


def _trim(s: bytes, b: int, e: int) -> tuple[int, int]:
    piece = s[b:e]
    b += len(piece) - len(piece.lstrip())
    return b, max(b, e - (len(piece) - len(piece.rstrip())))


def sections(s: bytes, group_start: int) -> dict[str, list[int]]:
    """Principle and critique spans [b, e) (or [-1, -1]): each from its first header to the next header line."""
    spans = {PRINCIPLES: [-1, -1], CRITIQUE: [-1, -1]}
    open_span = None
    line_starts = [0] + [i + 1 for i, c in enumerate(s) if c == 0x0A and i + 1 < len(s)]
    for p in line_starts:
        kind, content = header_at(s, p)
        if kind is None:
            continue
        if open_span is not None:
            open_span[1], open_span = p, None
        if kind in spans and spans[kind][0] < 0:
            spans[kind][0] = content
            open_span = spans[kind]
    if open_span is not None:
        open_span[1] = len(s)
    for span in spans.values():
        if span[0] >= 0:
            if span[0] <= group_start < span[1]:
                span[1] = group_start
            span[0], span[1] = _trim(s, span[0], span[1])
    return spans


def _lines(s: bytes, b: int, e: int) -> list[tuple[int, int]]:
    out, p = [], b
    while p < e:
        le = s.find(b"\n", p, e)
        le = e if le < 0 else le
        out.append((p, le))
        p = le + 1
    return out


def _indent(line: bytes) -> int:
    return len(line) - len(line.lstrip(b" \t"))


def item_weight(line: bytes) -> float:
    """The weight written on a principle line (a percentage as a fraction), NaN when there is none."""
    m = _WEIGHT.search(line) or _PERCENT.search(line)
    if m is None:
        return math.nan
    value = parse_number(m.group(1))
    percent = m.re is _PERCENT or m.group(2) is not None
    return value / 100.0 if percent else value


def principle_items(s: bytes, b: int, e: int) -> list[tuple[int, int, float]]:
    """(name begin, name end, weight) of every principle item in the span [b, e)."""
    if b < 0:
        return []
    lines = _lines(s, b, e)
    listed = [_indent(s[p:le]) for p, le in lines if _LIST_MARKER.match(s, p + _indent(s[p:le]), le)]
    top = listed[0] if listed else -1
    items = []
    for p, le in lines:
        ind = _indent(s[p:le])
        i = p + ind
        if top >= 0:
            m = _LIST_MARKER.match(s, i, le)
            if m is None or ind > top:
                continue
            i = m.end()
        elif s[i:le] in (b"", b"\r"):
            continue
        i = _NAME_SKIP.match(s, i, le).end()
        name = re.compile(rb"[^(:]*").match(s, i, le).group(0).rstrip(b" \t\r*_")
        items.append((i, i + len(name), item_weight(s[p:le])))
    return items


def parse_row(s: bytes, num_responses: int, lo: float, hi: float):
    """(scores or None, principle span, critique span, items) of one generation."""
    start, begin, end = score_group(s)
    scores = parse_scores(s[begin:end], num_responses, lo, hi) if start >= 0 else None
    spans = sections(s, start)
    items = principle_items(s, *spans[PRINCIPLES])
    return scores, spans[PRINCIPLES], spans[CRITIQUE], items


def detokenize(token_ids: np.ndarray, lengths: np.ndarray, pieces, strip_leading_space: bool) -> list[bytes]:
    """Each row's text: the concatenated bytes of its first lengths[r] tokens (`pieces[t]` gives token t)."""
    rows = []
    for r in range(token_ids.shape[0]):
        text = b"".join(pieces[int(t)] for t in token_ids[r, : int(lengths[r])])
        rows.append(text[1:] if strip_leading_space and text.startswith(b" ") else text)
    return rows


def extract_scores(texts: Sequence[bytes | str], num_responses: int | Sequence[int], lo: float = 1.0,
                   hi: float = 10.0) -> Packed:
    """Reference extraction of N generations (bytes, or str taken as UTF-8); num_responses: int or (N,) ints >= 1."""
    texts = [t.encode("utf-8", "surrogatepass") if isinstance(t, str) else bytes(t) for t in texts]
    n = len(texts)
    if isinstance(num_responses, (int, np.integer)):
        num_responses = [int(num_responses)] * n
    n_max = int(max(num_responses, default=0))
    scores = np.full((n, n_max), np.nan, dtype=np.float32)
    valid = np.zeros(n, dtype=bool)
    pspan = np.full((n, 2), -1, dtype=np.int64)
    cspan = np.full((n, 2), -1, dtype=np.int64)
    counts = np.zeros(n, dtype=np.int64)
    spans, weights = [], []
    for r, s in enumerate(texts):
        row_scores, pspan[r], cspan[r], items = parse_row(s, num_responses[r], lo, hi)
        if row_scores is not None:
            with np.errstate(over="ignore"):  # beyond float32's range is inf, as in C++
                scores[r, : len(row_scores)] = row_scores
            valid[r] = True
        counts[r] = len(items)
        spans += [(b, e) for b, e, _ in items]
        weights += [w for _, _, w in items]
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum([len(s) for s in texts], out=offsets[1:])
    text = np.frombuffer(b"".join(texts), dtype=np.uint8)
    item_spans = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    return Packed(text, offsets, scores, valid, pspan, cspan, counts, item_spans, np.asarray(weights, np.float64))
