"""Helpers shared by the op tests: the native module (or a skip), backend availability, and running extract_scores
native and reference side by side to compare exactly."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from spct.ops import dispatch
from spct.ops.ref import extract_scores as ref

GRM_SAMPLE = (
    "Specific Criteria:\n"
    "1. Factual accuracy (Weight: 40%): the answer must be correct.\n"
    "2. **Clarity** (weight 0.3): easy to follow.\n"
    "   - sub point (Weight: 5%)\n"
    "3. Helpfulness: addresses the question.\n\n"
    "Analysis:\n"
    "- **Response 1** is accurate and clear.\n"
    "- **Response 2** has an arithmetic error.\n\n"
    "Scores: \\boxed{8, 3}"
)

TEXTS = [
    GRM_SAMPLE,
    "Specific Criteria:\n- Caf\u00e9 cr\u00e8me (Weight: 50%)\n- \u65e5\u672c\u8a9e (50%)\nAnalysis: \U0001f600 ok\n[[9]]",
    "def f(x):\n    return x  # code\n\n\tScores: \\boxed{ 2 , 5 }",
    "   leading spaces and trailing   ",
    "",
]


def pad(rows: list[list[int]], pad_id: int, dtype=torch.int64) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id rows padded with pad_id into (N, T) ids, and their lengths (N,)."""
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), pad_id, dtype=dtype)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=dtype)
    return ids, torch.tensor([len(r) for r in rows])


def native_lib():
    """The native module; skips (or fails under SPCT_STRICT=1) when it was not built."""
    try:
        dispatch.pick("extract_scores", "cpu", "native")
    except RuntimeError as exc:
        if dispatch.strict():
            pytest.fail(f"SPCT_STRICT=1 but {exc}")
        pytest.skip(str(exc))
    return dispatch.native()


def as_bytes(texts) -> list[bytes]:
    return [t.encode("utf-8", "surrogatepass") if isinstance(t, str) else bytes(t) for t in texts]


def counts_for(num_responses, rows: int) -> np.ndarray:
    if isinstance(num_responses, int):
        return np.full(rows, num_responses, dtype=np.int64)
    return np.asarray(num_responses, dtype=np.int64)


def native_text(texts, num_responses, lo=1.0, hi=10.0) -> ref.Packed:
    rows = as_bytes(texts)
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([len(r) for r in rows], out=offsets[1:])
    text = np.frombuffer(b"".join(rows), dtype=np.uint8)
    return ref.Packed(*native_lib().extract_scores_text(text, offsets, counts_for(num_responses, len(rows)), lo, hi))


def reference_text(texts, num_responses, lo=1.0, hi=10.0) -> ref.Packed:
    rows = as_bytes(texts)
    return ref.extract_scores(rows, counts_for(num_responses, len(rows)).tolist(), lo, hi)


def _bits(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    return a.view({4: np.uint32, 8: np.uint64}[a.dtype.itemsize]) if a.dtype.kind == "f" else a


def assert_packed_equal(got: ref.Packed, want: ref.Packed) -> None:
    """Every array equal, floats bit for bit (NaN where NaN, -0.0 where -0.0)."""
    for name, g, w in zip(ref.Packed._fields, got, want):
        g, w = np.asarray(g), np.asarray(w)
        assert g.shape == w.shape, f"{name}: shape {g.shape} != {w.shape}"
        assert g.dtype == w.dtype, f"{name}: dtype {g.dtype} != {w.dtype}"
        diff = np.flatnonzero((_bits(g) != _bits(w)).reshape(-1))
        assert diff.size == 0, f"{name} differs at flat index {diff[:5]}: {g.reshape(-1)[diff[:5]]} != {w.reshape(-1)[diff[:5]]}"


def both(texts, num_responses, lo=1.0, hi=10.0) -> ref.Packed:
    """Native and reference on the same input; asserts they agree exactly and returns the reference."""
    want = reference_text(texts, num_responses, lo, hi)
    assert_packed_equal(native_text(texts, num_responses, lo, hi), want)
    return want


def span_text(packed: ref.Packed, row: int, span) -> bytes | None:
    b, e = (int(x) for x in span)
    if b < 0:
        return None
    start = int(packed.row_offsets[row])
    return packed.text[start + b : start + e].tobytes()


def need(backend: str):
    """Skip (or, for the native module under SPCT_STRICT=1, fail) when a backend is not available here."""
    if backend == "native":
        native_lib()
    if backend == "triton":
        pytest.importorskip("triton", reason="triton is not installed (pip install 'spct[triton]')")
        if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
            pytest.skip("the Triton kernel needs a GPU or TRITON_INTERPRET=1 (set before triton is imported)")
