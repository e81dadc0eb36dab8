"""paged_attention's Triton kernel (the interpreter on a CPU: tiny shapes): equals the reference within the dtype's
tolerance (several segments per row, GQA, partial blocks, empty segments, causal chunks beside decode rows, one
head per program); the row -> segments map is the transpose of the row lists; and the per-block rule holds bit for
bit: a row's output is the same under two layouts that split its blocks into segments differently beside other
rows, and a causal prefill row equals the decode row that sees the same tokens."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import TOLERANCES
from test_paged_attention import CAUSAL, DTYPES, INDEX, bits, make_layout, one_thread  # noqa: F401 (fixture)

from spct.ops.ref import paged_attention as ref

pytest.importorskip("triton", reason="triton is not installed (pip install 'spct[triton]')")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("the Triton kernel needs a GPU or TRITON_INTERPRET=1 (set before triton is imported)",
                allow_module_level=True)

from spct.ops.triton import paged_attention as kernel  # noqa: E402 (after the skip: needs triton)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def args(layout: dict, scale: float = 0.3) -> list:
    """The reference's positional arguments, on DEVICE."""
    names = ("q", "k_cache", "v_cache", *INDEX, *CAUSAL)
    return [layout[n].to(DEVICE) if n in layout else None for n in names] + [scale]


def assert_matches_reference(layout: dict) -> torch.Tensor:
    got, want = kernel.paged_attention(*args(layout)), ref.paged_attention(*args(layout))
    assert got.shape == want.shape and got.dtype == want.dtype == layout["q"].dtype
    torch.testing.assert_close(got, want, **TOLERANCES[want.dtype])
    return got


# (seg_lens, seg_rows, rows, heads, kv_heads, block_size) for make_layout: several segments per row in a scrambled
# row order, partial last blocks, an empty segment and one with no row, GQA 3:1 and Hq = Hkv, block size 1
CASES = {
    "3-levels-gqa3": ([9, 5, 1, 0, 3, 2, 4], [[0, 1, 2, 3], [2, 0], [3, 1], [1], [0], [1, 2], []], 4, 3, 1, 4),
    "bs1-mha": ([3, 2, 1], [[1, 0], [0], [1]], 2, 2, 2, 1),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_equals_reference(case, dtype):
    seg_lens, seg_rows, rows, heads, kv_heads, block_size = CASES[case]
    assert_matches_reference(make_layout(seg_lens, seg_rows, rows, heads=heads, kv_heads=kv_heads, dim=8,
                                         block_size=block_size, dtype=dtype, seed=2, sharp=2.0))


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
def test_causal_chunk_beside_decode_rows(dtype):
    """Rows 0, 2, 3: a chunk at positions 5..7 over a shared context (5 tokens, non-causal) and its causal segment
    (from position 4: the context's partial last block and the chunk); row 1 decodes."""
    layout = make_layout([4, 4, 6], [[0, 2, 3], [0, 2, 3], [1]], 4, heads=2, kv_heads=1, dim=8, block_size=4,
                         dtype=dtype, seed=3, causal=[False, True, False], q_pos=[5, 9, 7, 6], seg_start=[0, 4, 0])
    assert_matches_reference(layout)


def test_one_head_per_program(monkeypatch):
    """A (G, B, D) tile above TILE runs one query head per program, with the same result within tolerance."""
    layout = make_layout([6, 3], [[0, 1], [1]], 2, heads=4, kv_heads=2, dim=8, block_size=4, seed=4)
    grouped = assert_matches_reference(layout)
    monkeypatch.setattr(kernel, "TILE", 8)
    assert kernel.heads_per_program(4, 2, 4, 8) == 1
    torch.testing.assert_close(assert_matches_reference(layout), grouped, **TOLERANCES[torch.float32])


def test_row_segments_transpose_the_row_lists():
    seg_rows = [[3, 0], [], [1, 3, 2], [0], [3]]
    indptr, segs = kernel.row_segments(make_layout([1] * 5, seg_rows, 4)["seg_row_indptr"].to(DEVICE),
                                       torch.tensor([r for m in seg_rows for r in m], dtype=torch.int32,
                                                    device=DEVICE), 4)
    assert indptr.dtype == segs.dtype == torch.int32
    assert indptr.tolist() == [0, 2, 3, 4, 7]
    assert segs.tolist() == [0, 3, 2, 2, 0, 2, 4]


def test_row_map_given_once():
    """A caller may build the row map once for the calls of a step (its layers) and pass it."""
    layout = make_layout([5, 2], [[1, 0], [1]], 2, heads=2, kv_heads=1, dim=8, block_size=4, seed=8)
    given = args(layout)
    row_map = kernel.row_segments(given[6], given[7], 2)
    assert torch.equal(kernel.paged_attention(*given, row_map=row_map), kernel.paged_attention(*given))


# ---- the per-block rule, bit for bit ---------------------------------------------------------------------------
def blocks_layout(cache: dict, q: torch.Tensor, segments: list, causal=None) -> dict:
    """A layout over a given cache: segments are (block ids, tokens, rows[, causal, seg_start])."""
    def i32(values):
        return torch.tensor(values, dtype=torch.int32)

    layout = {
        **cache, "q": q, "block_ids": i32([b for seg in segments for b in seg[0]]),
        "seg_block_indptr": i32([0, *torch.tensor([len(s[0]) for s in segments]).cumsum(0).tolist()]),
        "seg_len": i32([s[1] for s in segments]),
        "seg_row_indptr": i32([0, *torch.tensor([len(s[2]) for s in segments]).cumsum(0).tolist()]),
        "seg_rows": i32([r for s in segments for r in s[2]]),
    }
    if causal is not None:
        layout.update(causal=torch.tensor([s[3] for s in segments]), q_pos=i32(causal),
                      seg_start=i32([s[4] for s in segments]))
    return layout


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
def test_row_independent_of_segmentation_and_neighbours(dtype):
    """Query x reads blocks 5, 2, 7 (full) and 0 (2 tokens): as one segment beside row 1, then as three segments
    (row 2 of 4, other rows in two of them, the partial block alone)."""
    cache = make_layout([32], [[0]], 1, heads=6, kv_heads=2, dim=8, block_size=4, dtype=dtype, seed=5,
                        spare_blocks=0)
    x, others = cache["q"][:1], make_layout([1], [[0]], 3, heads=6, kv_heads=2, dim=8, dtype=dtype, seed=6)["q"]
    kv = {name: cache[name] for name in ("k_cache", "v_cache")}
    one = blocks_layout(kv, torch.cat([x, others[:1]]), [([5, 2, 7, 0], 14, [0, 1]), ([3], 1, [1])])
    three = blocks_layout(kv, torch.cat([others[1:], x, others[:1]]),
                          [([5], 4, [2, 0, 3]), ([2, 7], 8, [2, 1]), ([0], 2, [2]), ([3], 3, [0, 1, 3])])
    a = assert_matches_reference(one)[0]
    b = assert_matches_reference(three)[2]
    assert torch.equal(bits(a), bits(b))


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
def test_causal_prefill_row_equals_decode_row(dtype):
    """A chunk's row at position 6 of a causal segment over blocks 1, 4, 3 (from position 0) sees blocks 1 and 4
    (3 tokens): bit for bit the decode row over a 7-token segment of blocks 1, 4."""
    cache = make_layout([16], [[0]], 3, heads=2, kv_heads=1, dim=8, block_size=4, dtype=dtype, seed=7,
                        spare_blocks=1)
    kv = {name: cache[name] for name in ("k_cache", "v_cache")}
    q = cache["q"]
    prefill = blocks_layout(kv, q, [([1, 4, 3], 12, [0, 1, 2], True, 0)], causal=[9, 6, 4])
    decode = blocks_layout(kv, q[1:2], [([1, 4], 7, [0])])
    a = assert_matches_reference(prefill)[1]
    b = assert_matches_reference(decode)[0]
    assert torch.equal(bits(a), bits(b))


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
def test_the_wrapper_dispatches_to_triton(dtype):
    """backend="triton" through spct.paged_attention and its Plan (which builds the row map once) runs this kernel:
    the same bits as calling it directly."""
    from spct.ops.paged_attention import Plan, paged_attention

    seg_lens, seg_rows, rows, heads, kv_heads, block_size = CASES["3-levels-gqa3"]
    layout = make_layout(seg_lens, seg_rows, rows, heads=heads, kv_heads=kv_heads, dim=8, block_size=block_size,
                         dtype=dtype, seed=4)
    a = args(layout)
    direct = kernel.paged_attention(*a)
    index = {n: layout[n].to(DEVICE) for n in INDEX}
    called = paged_attention(*a[:3], *index.values(), scale=0.3, backend="triton")
    planned = Plan(*index.values(), scale=0.3, backend="triton").run(*a[:3])
    assert torch.equal(called, direct) and torch.equal(planned, direct)
