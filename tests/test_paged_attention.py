"""paged_attention: the backend "auto" picks (the C++ kernel where built) and the reference both equal a plain per-row
oracle (each row's segments gathered into one contiguous K/V, the causal rule applied, torch's
scaled_dot_product_attention) within the dtype's tolerance on GRM layouts of two and three levels, awkward shapes,
shuffled blocks, causal prefill chunks and random layouts (hypothesis); equals prefix_attention on the two-level
layout; the C++ kernel's rows are bitwise independent of segmentation, of the other rows and of causal vs decode
rows; every bad input named, by the wrapper and by the C++ checks; dispatch picks the C++ kernel on CPU."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import TOLERANCES
from extract_helpers import native_lib
from hypothesis import given, settings
from hypothesis import strategies as st

from spct.ops import dispatch
from spct.ops.paged_attention import Plan, native_cpu, paged_attention
from spct.ops.prefix_attention import prefix_attention

DTYPES = [torch.float32, torch.bfloat16]
INDEX = ("block_ids", "seg_block_indptr", "seg_len", "seg_row_indptr", "seg_rows")
CAUSAL = ("causal", "q_pos", "seg_start")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tensors here are tiny: on a loaded 2-core machine two intra-op threads made each small softmax wait
    ~10 ms for the other thread (measured: a three-level call took 0.28 s with 2 threads, 0.008 s with 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def i32(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int32)


def indptr(counts) -> torch.Tensor:
    return i32([0, *torch.tensor(counts, dtype=torch.int64).cumsum(0).tolist()])


def make_layout(seg_lens, seg_rows, rows, *, heads=4, kv_heads=2, dim=16, block_size=4, dtype=torch.float32,
                seed=0, causal=None, q_pos=None, seg_start=None, spare_blocks=2, shuffle=True, sharp=1.0) -> dict:
    """Segments of the given lengths read by the given row lists; every segment gets its own blocks, taken from a
    random permutation of the cache (shuffle) or in order. The whole cache is random, so the unused tail of a
    partial block and the spare blocks hold values that must not be read."""
    gen = torch.Generator().manual_seed(seed)
    counts = [math.ceil(n / block_size) for n in seg_lens]
    total = sum(counts) + spare_blocks
    order = torch.randperm(total, generator=gen) if shuffle else torch.arange(total)
    layout = {
        "q": (torch.randn(rows, heads, dim, generator=gen) * sharp).to(dtype),
        "k_cache": torch.randn(total, block_size, kv_heads, dim, generator=gen).to(dtype),
        "v_cache": torch.randn(total, block_size, kv_heads, dim, generator=gen).to(dtype),
        "block_ids": order[:sum(counts)].to(torch.int32), "seg_block_indptr": indptr(counts),
        "seg_len": i32(seg_lens), "seg_row_indptr": indptr([len(r) for r in seg_rows]),
        "seg_rows": i32([r for members in seg_rows for r in members]),
    }
    if causal is not None:
        layout.update(causal=torch.tensor(causal, dtype=torch.bool), q_pos=i32(q_pos), seg_start=i32(seg_start))
    return layout


def run(layout: dict, **kwargs) -> torch.Tensor:
    extra = {name: layout[name] for name in CAUSAL if name in layout}
    return paged_attention(layout["q"], layout["k_cache"], layout["v_cache"], *(layout[n] for n in INDEX), **extra,
                           **kwargs)


def segment_tokens(layout: dict, s: int, name: str) -> torch.Tensor:
    lo, hi = int(layout["seg_block_indptr"][s]), int(layout["seg_block_indptr"][s + 1])
    cache = layout[name]
    return cache[layout["block_ids"][lo:hi].long()].reshape(-1, *cache.shape[2:])[:int(layout["seg_len"][s])]


def oracle(layout: dict, scale: float | None = None) -> torch.Tensor:
    """Per row: its segments' tokens gathered into one K/V (in segment order), the causal rule as a mask, SDPA."""
    q = layout["q"]
    rows, heads, dim = q.shape
    group = heads // layout["k_cache"].shape[2]
    out = torch.zeros(rows, heads, dim)
    for r in range(rows):
        ks, vs, masks = [], [], []
        for s in range(layout["seg_len"].shape[0]):
            lo, hi = int(layout["seg_row_indptr"][s]), int(layout["seg_row_indptr"][s + 1])
            if r not in layout["seg_rows"][lo:hi].tolist():
                continue
            k, v = segment_tokens(layout, s, "k_cache"), segment_tokens(layout, s, "v_cache")
            visible = torch.ones(k.shape[0], dtype=torch.bool)
            if "causal" in layout and bool(layout["causal"][s]):
                visible = int(layout["seg_start"][s]) + torch.arange(k.shape[0]) <= int(layout["q_pos"][r])
            ks, vs, masks = ks + [k], vs + [v], masks + [visible]
        k = torch.cat(ks).float().repeat_interleave(group, dim=1).transpose(0, 1)  # (Hq, L, D)
        v = torch.cat(vs).float().repeat_interleave(group, dim=1).transpose(0, 1)
        out[r] = F.scaled_dot_product_attention(q[r].float()[:, None], k, v, attn_mask=torch.cat(masks)[None, None],
                                                scale=scale)[:, 0]
    return out.to(q.dtype)


def assert_matches_oracle(layout: dict, **kwargs) -> torch.Tensor:
    """The backend "auto" picks (the C++ kernel where built) and the reference, each against the oracle."""
    got = run(layout, **kwargs)
    assert got.shape == layout["q"].shape and got.dtype == layout["q"].dtype
    want = oracle(layout, kwargs.get("scale"))
    torch.testing.assert_close(got, want, **TOLERANCES[got.dtype])
    torch.testing.assert_close(run(layout, **kwargs, backend="reference"), want, **TOLERANCES[got.dtype])
    return got


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16 if t.dtype == torch.bfloat16 else torch.int32)


# ---- GRM layouts ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
def test_two_levels_equal_prefix_attention(dtype):
    """The layout of prefix_attention (prompts shared by their rows, then each row's own tokens) gives what
    prefix_attention gives on the same data (its C++ kernel where built, and its reference)."""
    prompt_lens, row_prompts, own_lens = [37, 16, 5], [1, 0, 2, 0, 1, 0, 0], [3, 0, 9, 1, 4, 16, 2]
    rows, heads, kv_heads, dim = len(row_prompts), 6, 2, 32
    seg_rows = [[r for r in range(rows) if row_prompts[r] == p] for p in range(3)] + [[r] for r in range(rows)]
    layout = make_layout(prompt_lens + own_lens, seg_rows, rows, heads=heads, kv_heads=kv_heads, dim=dim,
                         block_size=8, dtype=dtype, seed=1)
    prefix_k = torch.cat([segment_tokens(layout, p, "k_cache") for p in range(3)])
    prefix_v = torch.cat([segment_tokens(layout, p, "v_cache") for p in range(3)])
    own_k = torch.zeros(rows, max(own_lens), kv_heads, dim, dtype=dtype)
    own_v = torch.zeros_like(own_k)
    for r, n in enumerate(own_lens):
        own_k[r, :n], own_v[r, :n] = segment_tokens(layout, 3 + r, "k_cache"), segment_tokens(layout, 3 + r, "v_cache")
    args = (layout["q"], prefix_k, prefix_v, torch.tensor([0, 37, 53, 58]), torch.tensor(row_prompts), own_k, own_v,
            torch.arange(rows), torch.tensor(own_lens))
    got = assert_matches_oracle(layout)
    for backend in ("auto", "reference"):
        torch.testing.assert_close(got, prefix_attention(*args, backend=backend), **TOLERANCES[dtype])


def three_levels(dtype, seed=0) -> dict:
    """A query prefix of 37 tokens read by all 11 rows; 3 response orders with suffixes of 21, 16 and 1 tokens read
    by their 4, 4 and 3 samples (rows interleaved, not grouped); each sample's own 1..9 tokens."""
    order_of_row = [2, 0, 1, 0, 2, 1, 1, 0, 2, 0, 1]
    rows = len(order_of_row)
    own = [(r * 5) % 9 + 1 for r in range(rows)]
    seg_rows = [list(range(rows))] + [[r for r in range(rows) if order_of_row[r] == o] for o in range(3)]
    seg_rows += [[r] for r in range(rows)]
    return make_layout([37, 21, 16, 1, *own], seg_rows, rows, heads=6, kv_heads=2, dim=32, block_size=8,
                       dtype=dtype, seed=seed, sharp=2.0)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
def test_three_levels(dtype):
    assert_matches_oracle(three_levels(dtype))


# (seg_lens, seg_rows, rows, heads, kv_heads, block_size): 1 and 7 rows, block sizes 1 and 16, partial last blocks,
# 1-token segments, empty segments and segments with no row, Hq = Hkv, GQA 3:1 and 20:1
AWKWARD = {
    "1-row-1-token-bs1": ([1], [[0]], 1, 2, 2, 1),
    "1-row-partial-block-gqa3": ([17, 1], [[0], [0]], 1, 6, 2, 16),
    "7-rows-bs1-gqa3": ([5, 1, 3, 1], [list(range(7)), [6], [0, 3, 5], [2]], 7, 3, 1, 1),
    "7-rows-bs16-mixed": ([40, 16, 1, 0, 33, 15, 7], [list(range(7)), [3, 0, 1, 2], [6], [2, 5], [4, 5, 6], [1], []],
                          7, 4, 4, 16),
    "7-rows-own-segments-bs16": ([16, 1, 2, 15, 17, 31, 32], [[r] for r in range(7)], 7, 6, 2, 16),
    "no-rows": ([5, 0], [[], []], 0, 2, 2, 4),
    "2-rows-gqa20": ([9, 4], [[0, 1], [1]], 2, 20, 1, 4),  # a row's 20 query heads span two 16-query C++ tiles
}


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", list(AWKWARD), ids=list(AWKWARD))
def test_awkward_shapes(case, dtype):
    seg_lens, seg_rows, rows, heads, kv_heads, block_size = AWKWARD[case]
    layout = make_layout(seg_lens, seg_rows, rows, heads=heads, kv_heads=kv_heads, dim=16, block_size=block_size,
                         dtype=dtype, seed=3)
    assert_matches_oracle(layout)


def test_scale_and_non_contiguous_q():
    layout = three_levels(torch.float32, seed=4)
    assert_matches_oracle(layout, scale=0.05)
    q = layout["q"].transpose(0, 1).contiguous().transpose(0, 1)
    assert not q.is_contiguous()
    assert torch.equal(run({**layout, "q": q}), run(layout))
    assert torch.equal(run(layout), run(layout, scale=1 / math.sqrt(32)))  # the default scale is 1 / sqrt(D)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
def test_shuffled_blocks_give_the_same_bits(dtype):
    """Blocks scattered through the cache in any order give bit for bit what the same blocks in order give."""
    layout = make_layout([37, 21, 1, 9], [[0, 1, 2], [2, 0], [1], [0, 1, 2]], 3, block_size=4, dtype=dtype,
                         shuffle=False, spare_blocks=5)
    where = torch.randperm(layout["k_cache"].shape[0], generator=torch.Generator().manual_seed(7))
    moved = dict(layout, block_ids=where[layout["block_ids"].long()].to(torch.int32))
    for name in ("k_cache", "v_cache"):
        moved[name] = torch.randn_like(layout[name].float()).to(dtype)  # other values in the blocks left over
        moved[name][where] = layout[name]
    assert not torch.equal(moved["block_ids"], layout["block_ids"].sort().values)
    assert torch.equal(bits(run(moved)), bits(run(layout)))
    assert_matches_oracle(moved)


# ---- prefill chunks -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
def test_causal_prefill_chunks_beside_decode_rows(dtype):
    """Two sequences share a cached context of 21 tokens: 2 full blocks of 8 (one segment) and a partial block of 5,
    copied into each sequence's own causal segment (from position 16) before its chunk of 7 or 3 new tokens. The
    chunks are prefilled beside a decode row, rows interleaved. A chunk's row at position p sees the shared blocks
    and its own segment's tokens up to p."""
    a, b = [1, 3, 5, 7, 8, 9, 10], [0, 4, 6]
    q_pos = [0] * 11
    for i, r in enumerate(a):
        q_pos[r] = 21 + i
    for i, r in enumerate(b):
        q_pos[r] = 21 + i
    layout = make_layout([16, 12, 8, 4], [a + b, a, b, [2]], 11, heads=6, kv_heads=2, dim=32, block_size=8,
                         dtype=dtype, seed=5, causal=[False, True, True, False], q_pos=q_pos,
                         seg_start=[0, 16, 16, 0])
    got = assert_matches_oracle(layout)
    # the same chunk as a plain causal attention over the sequence's 28 contiguous tokens
    k = torch.cat([segment_tokens(layout, 0, "k_cache"), segment_tokens(layout, 1, "k_cache")]).float()
    v = torch.cat([segment_tokens(layout, 0, "v_cache"), segment_tokens(layout, 1, "v_cache")]).float()
    mask = torch.arange(28)[None, :] <= torch.tensor([q_pos[r] for r in a])[:, None]  # (12, 28)
    want = F.scaled_dot_product_attention(layout["q"][a].float().transpose(0, 1), k.repeat_interleave(3, 1)
                                          .transpose(0, 1), v.repeat_interleave(3, 1).transpose(0, 1),
                                          attn_mask=mask).transpose(0, 1)
    torch.testing.assert_close(got[a], want.to(dtype), **TOLERANCES[dtype])


# ---- random layouts -------------------------------------------------------------------------------------------
@st.composite
def layouts(draw):
    """1-7 rows, each with its own non-causal segment of 1..10 tokens, and 0-4 shared segments of 0..40 tokens
    read by random row subsets, causal or not; segments in a random order; block sizes 1, 3 and 16."""
    rows = draw(st.integers(1, 7))
    segs = [(draw(st.integers(1, 10)), [r], False) for r in range(rows)]
    for _ in range(draw(st.integers(0, 4))):
        members = draw(st.lists(st.integers(0, rows - 1), max_size=rows, unique=True))
        segs.append((draw(st.integers(0, 40)), members, draw(st.booleans())))
    segs = draw(st.permutations(segs))
    kv_heads, group = draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 3]))
    causal = [c for _, _, c in segs]
    return make_layout(
        [n for n, _, _ in segs], [m for _, m, _ in segs], rows, heads=kv_heads * group, kv_heads=kv_heads,
        dim=draw(st.sampled_from([8, 16])), block_size=draw(st.sampled_from([1, 3, 16])),
        dtype=draw(st.sampled_from(DTYPES)), seed=draw(st.integers(0, 2**31)),
        causal=causal if any(causal) else None, q_pos=draw(st.lists(st.integers(0, 50), min_size=rows,
                                                                    max_size=rows)),
        seg_start=draw(st.lists(st.integers(0, 30), min_size=len(segs), max_size=len(segs))),
        spare_blocks=draw(st.integers(0, 3)), sharp=draw(st.sampled_from([1.0, 3.0])))


@settings(max_examples=40, deadline=None)
@given(layouts())
def test_random_layouts(layout):
    assert_matches_oracle(layout)


# ---- bad input ------------------------------------------------------------------------------------------------
BASE = make_layout([5, 3, 2], [[0, 1], [1], [0]], 2, heads=4, kv_heads=2, dim=16, block_size=4)  # 6 blocks
FEW = BASE["block_ids"][:3]
BAD = [
    ({"q": torch.ones(2, 4, 16, dtype=torch.float64)},
     r"q must be a float32 or bfloat16 tensor \(R, Hq, D\), got \(2, 4, 16\) torch.float64 on cpu"),
    ({"q": [1.0]}, r"q must be a float32 or bfloat16 tensor \(R, Hq, D\), got list"),
    ({"k_cache": torch.ones(6, 4, 16)},
     r"k_cache must have shape \(N, B >= 1, Hkv, D = 16\), got \(6, 4, 16\) torch.float32 on cpu"),
    ({"k_cache": torch.ones(6, 0, 2, 16)}, r"k_cache must have shape \(N, B >= 1, Hkv, D = 16\), got \(6, 0, 2, 16\)"),
    ({"v_cache": torch.ones(5, 4, 2, 16)}, r"v_cache must have k_cache's shape \(6, 4, 2, 16\), got \(5, 4, 2, 16\)"),
    ({"v_cache": torch.ones(6, 4, 2, 16, dtype=torch.bfloat16)},
     r"v_cache must match q \(torch.float32 on cpu\), got torch.bfloat16 on cpu"),
    ({"q": torch.ones(2, 5, 16)}, r"q's 5 heads must be a multiple of the 2 KV heads"),
    ({"block_ids": BASE["block_ids"].long()},
     r"block_ids must be a 1-D int32 tensor on cpu, got \(4,\) torch.int64 on cpu"),
    ({"seg_rows": i32([[0, 1, 1, 0]])}, r"seg_rows must be a 1-D int32 tensor on cpu, got \(1, 4\) torch.int32"),
    ({"seg_len": torch.tensor([5.0, 3, 2])}, r"seg_len must be a 1-D int32 tensor on cpu, got \(3,\) torch.float32"),
    ({"seg_block_indptr": i32([0, 2, 4])}, r"seg_block_indptr must have shape \(S \+ 1,\) = \(4,\), got \(3,\)"),
    ({"seg_row_indptr": i32([0, 2, 3, 4, 4])}, r"seg_row_indptr must have shape \(S \+ 1,\) = \(4,\), got \(5,\)"),
    ({"causal": i32([0, 0, 0]), "q_pos": i32([0, 0]), "seg_start": i32([0, 0, 0])},
     r"causal must be a 1-D bool tensor on cpu, got \(3,\) torch.int32 on cpu"),
    ({"causal": torch.zeros(3, dtype=torch.bool), "q_pos": i32([0, 0, 0]), "seg_start": i32([0, 0, 0])},
     r"q_pos must have shape \(R,\) = \(2,\), got \(3,\)"),
    ({"causal": torch.zeros(3, dtype=torch.bool)}, r"causal, q_pos and seg_start go together, got only causal"),
    ({"q_pos": i32([0, 0]), "seg_start": i32([0, 0, 0])},
     r"causal, q_pos and seg_start go together, got only q_pos, seg_start"),
    ({"block_ids": i32([0, 1, 2, 6])}, r"block_ids\[3\] = 6 is outside \[0, 6\)"),
    ({"block_ids": i32([-1, 1, 2, 3])}, r"block_ids\[0\] = -1 is outside \[0, 6\)"),
    ({"seg_block_indptr": i32([1, 2, 3, 4])}, r"seg_block_indptr\[0\] = 1 must be 0"),
    ({"seg_block_indptr": i32([0, 3, 2, 4])}, r"seg_block_indptr\[2\] = 2 is below the entry before it"),
    ({"seg_block_indptr": i32([0, 2, 3, 3])}, r"seg_block_indptr\[-1\] = 3 must equal len\(block_ids\) = 4"),
    ({"seg_row_indptr": i32([0, 2, 3, 5])}, r"seg_row_indptr\[-1\] = 5 must equal len\(seg_rows\) = 4"),
    ({"seg_len": i32([-1, 3, 2])}, r"seg_len\[0\] = -1 must be >= 0"),
    ({"seg_len": i32([9, 3, 2])}, r"seg_len\[0\] = 9 needs ceil\(9 / 4\) = 3 blocks, segment 0 has 2 in block_ids"),
    ({"seg_len": i32([4, 3, 2])}, r"seg_len\[0\] = 4 needs ceil\(4 / 4\) = 1 blocks, segment 0 has 2 in block_ids"),
    ({"seg_rows": i32([0, 1, 2, 0])}, r"seg_rows\[2\] = 2 is outside \[0, 2\) \(R rows of q\)"),
    ({"seg_rows": i32([0, 0, 1, 0])}, r"seg_rows\[1\] = 0 lists row 0 twice in segment 0"),
    ({"seg_rows": i32([0, 0]), "seg_row_indptr": i32([0, 1, 1, 2])}, r"row 1 of q is in no segment"),
    ({"seg_len": i32([5, 3, 0]), "seg_block_indptr": i32([0, 2, 3, 3]), "block_ids": FEW,
      "seg_rows": i32([1, 1, 0]), "seg_row_indptr": i32([0, 1, 2, 3])}, r"row 0 of q sees no token: its segments are "
                                                                         r"empty$"),
    ({"causal": torch.tensor([True, False, True]), "q_pos": i32([0, 5]), "seg_start": i32([1, 0, 3])},
     r"row 0 of q sees no token: its segments are empty or start after q_pos\[0\] = 0"),
    ({"causal": torch.zeros(3, dtype=torch.bool), "q_pos": i32([-1, 0]), "seg_start": i32([0, 0, 0])},
     r"q_pos\[0\] = -1 must be >= 0"),
    ({"causal": torch.zeros(3, dtype=torch.bool), "q_pos": i32([0, 0]), "seg_start": i32([0, -2, 0])},
     r"seg_start\[1\] = -2 must be >= 0"),
    ({"scale": math.inf}, r"scale must be finite, got inf"),
    ({"backend": "cuda"}, r"backend must be one of \('auto', 'native', 'triton', 'reference'\) for "
                          r"paged_attention, got 'cuda'"),
]


@pytest.mark.parametrize("plan", [False, True], ids=["call", "plan"])
@pytest.mark.parametrize(("changes", "match"), BAD, ids=[m[:40] for _, m in BAD])
def test_bad_input(changes, match, plan):
    layout = {**BASE, **changes}
    kwargs = {name: layout.pop(name) for name in ("scale", "backend") if name in layout}
    with pytest.raises(ValueError, match=match):
        if plan:
            extra = {name: layout[name] for name in CAUSAL if name in layout}
            Plan(*(layout[n] for n in INDEX), **extra, **kwargs).run(layout["q"], layout["k_cache"], layout["v_cache"])
        else:
            run(layout, **kwargs)


# ---- the step plan and dispatch -------------------------------------------------------------------------------
def test_plan_runs_each_layer_like_one_call():
    first = three_levels(torch.float32)
    plan = Plan(*(first[name] for name in INDEX), scale=0.2)
    for seed in range(3):  # the layers of a step: one layout, other queries and caches
        gen = torch.Generator().manual_seed(seed)
        layer = {**first, **{name: torch.randn(first[name].shape, generator=gen) for name in ("q", "k_cache",
                                                                                            "v_cache")}}
        got = plan.run(layer["q"], layer["k_cache"], layer["v_cache"])
        assert torch.equal(got, run(layer, scale=0.2))
    with pytest.raises(ValueError, match=r"seg_rows\[3\] = 3 is outside \[0, 3\) \(R rows of q\)"):
        plan.run(first["q"][:3], first["k_cache"], first["v_cache"])  # fewer rows: checked again


def test_dispatch_picks_the_cpu_kernel(monkeypatch):
    native_lib()
    monkeypatch.setattr(dispatch, "_environment", lambda: (True, None))  # SPCT_STRICT=1
    assert dispatch.pick("paged_attention", "cpu") == "native" and native_cpu()
    # CUDA tensors: the CUDA kernel in a build with CUDA (CI's), else the Triton kernel
    cuda_build = bool(dispatch.native().has_cuda)
    assert dispatch.native_available("paged_attention", "cuda") == cuda_build
    if cuda_build or importlib.util.find_spec("triton") is not None:
        assert dispatch.pick("paged_attention", "cuda") == ("native" if cuda_build else "triton")
    layout = three_levels(torch.float32)
    assert torch.equal(run(layout), run(layout, backend="native"))
    if not cuda_build:
        with pytest.raises(RuntimeError, match=r"backend='native' for paged_attention: spct._C was built without "
                                               r"CUDA"):
            dispatch.pick("paged_attention", "cuda", "native")


def test_registered_op_passes_opcheck():
    for layout in (three_levels(torch.float32), make_layout([4, 3], [[0, 1], [1]], 2, causal=[True, False],
                                                            q_pos=[2, 0], seg_start=[0, 0])):
        args = (layout["q"], layout["k_cache"], layout["v_cache"], *(layout[n] for n in INDEX),
                *(layout.get(n) for n in CAUSAL), 0.25, "auto")
        torch.library.opcheck(torch.ops.spct.paged_attention.default, args,
                              test_utils=("test_schema", "test_faketensor"))


# ---- the C++ kernel: bitwise rules and its own index checks ---------------------------------------------------
def cache_of(blocks: int, block_size: int, dtype, seed: int, kv_heads=3, dim=16) -> tuple:
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(blocks, block_size, kv_heads, dim, generator=gen).to(dtype) for _ in range(2))


def over_blocks(q, k_cache, v_cache, segs, **causal) -> torch.Tensor:
    """segs: (block ids, tokens, rows) per segment, over the given cache."""
    extra = {name: i32(causal[name]) for name in ("q_pos", "seg_start") if name in causal}
    if causal:
        extra["causal"] = torch.tensor(causal["causal"], dtype=torch.bool)
    return paged_attention(q, k_cache, v_cache, i32([b for ids, _, _ in segs for b in ids]),
                           indptr([len(ids) for ids, _, _ in segs]), i32([n for _, n, _ in segs]),
                           indptr([len(rows) for _, _, rows in segs]), i32([r for _, _, rows in segs for r in rows]),
                           backend="native", **extra)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
def test_native_rows_do_not_depend_on_segments_or_other_rows(dtype):
    """A row over 7 blocks of 4 tokens and 3 of an eighth, alone (one segment), and among 13 other rows (lanes
    of several vector groups, two tiles) with its blocks split into 4 segments shared differently: the same bits;
    all 14 rows again beside 56 more (larger tiles) and with the row order reversed: the same bits."""
    native_lib()
    k_cache, v_cache = cache_of(40, 4, dtype, seed=11)
    gen = torch.Generator().manual_seed(12)
    q = (torch.randn(14, 9, 16, generator=gen) * 3).to(dtype)
    mine = [31, 2, 17, 5, 0, 38, 23, 9]  # the row's blocks, in order; 31 tokens
    alone = over_blocks(q[9:10], k_cache, v_cache, [(mine, 31, [0])])
    others = [r for r in range(14) if r != 9]
    split = [(mine[:1], 4, [9, 3, 0]), (mine[1:5], 16, others[:10] + [9]), (mine[5:7], 8, [9, *others[4:]]),
             (mine[7:], 3, [12, 9]), ([1, 3], 5, others), ([30], 2, [0, 1])]
    beside = over_blocks(q, k_cache, v_cache, split)
    assert torch.equal(bits(beside[9]), bits(alone[0]))
    shuffled = over_blocks(q.flip(0), k_cache, v_cache, [(ids, n, [13 - r for r in rows]) for ids, n, rows in split])
    assert torch.equal(bits(shuffled.flip(0)), bits(beside))
    # 70 rows: 210 queries per KV head, which the C++ kernel cuts into tiles of 48 instead of 16
    many_q = torch.cat([torch.randn(56, 9, 16, generator=gen).to(dtype), q])  # the 14 rows above become 56..69
    many = [(ids, n, [56 + r for r in rows]) for ids, n, rows in split]
    many += [([r % 40], 1 + r % 4, [r]) for r in range(56)]
    crowd = over_blocks(many_q, k_cache, v_cache, many)
    assert torch.equal(bits(crowd[56:]), bits(beside))


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
def test_native_causal_rows_equal_decode_rows(dtype):
    """A prefill chunk of 10 rows at positions 21..30 over a context of 2 blocks of 8 and a causal segment from
    position 16 (2 blocks: 5 context tokens, then the chunk's 10; rows interleaved with 2 decode rows): each chunk row
    equals, bit for bit, a decode row over the same context and the first q_pos - 15 tokens of the causal segment as
    a plain segment."""
    native_lib()
    k_cache, v_cache = cache_of(9, 8, dtype, seed=13, kv_heads=1)
    q = torch.randn(12, 3, 16, generator=torch.Generator().manual_seed(14)).to(dtype)
    chunk, context, tail = [0, 2, 3, 4, 6, 7, 8, 9, 10, 11], [4, 7], [1, 6]
    q_pos = [0] * 12
    for i, r in enumerate(chunk):
        q_pos[r] = 21 + i
    segs = [(context[:1], 8, chunk + [5]), (context[1:], 8, chunk + [1, 5]), (tail, 15, chunk), ([0], 1, [1])]
    got = over_blocks(q, k_cache, v_cache, segs, causal=[False, False, True, False], q_pos=q_pos,
                      seg_start=[0, 8, 16, 0])
    for r in chunk:
        seen = q_pos[r] - 15
        parts = [(context, 16, [0]), (tail[:math.ceil(seen / 8)], seen, [0])]
        assert torch.equal(bits(over_blocks(q[r:r + 1], k_cache, v_cache, parts)[0]), bits(got[r])), r


def native_call(layout: dict, scale: float = 0.25) -> torch.Tensor:
    """Straight into spct._C, past the wrapper's checks: the C++ kernel's own."""
    lib = native_lib()
    q, k_cache = layout["q"], layout["k_cache"]
    addresses = [0 if layout.get(n) is None else layout[n].data_ptr() for n in INDEX + CAUSAL]
    plan = lib.PagedAttentionLayout(*addresses, *q.shape[:2], k_cache.shape[2], q.shape[2], *k_cache.shape[:2],
                                    layout["seg_len"].shape[0], layout["block_ids"].shape[0],
                                    layout["seg_rows"].shape[0], scale, q.dtype == torch.bfloat16)
    out = torch.empty_like(q)
    lib.paged_attention(plan, q.data_ptr(), k_cache.data_ptr(), layout["v_cache"].data_ptr(), out.data_ptr())
    return out


VALUES = [(changes, match) for changes, match in BAD if match.startswith(
    ("block_ids\\[", "seg_block_indptr\\[", "seg_row_indptr\\[", "seg_len\\[", "seg_rows\\[", "row ", "q_pos\\[",
     "seg_start\\["))]


@pytest.mark.parametrize(("changes", "match"), VALUES, ids=[m[:40] for _, m in VALUES])
def test_native_checks_index_values(changes, match):
    with pytest.raises(ValueError, match=match):
        native_call({**BASE, **changes})


def test_native_head_dims_and_binding_checks():
    assert torch.equal(native_call(BASE), run(BASE, scale=0.25, backend="native"))
    layout = make_layout([5], [[0]], 1, heads=2, kv_heads=1, dim=48)
    with pytest.raises(ValueError, match=r"head_dim 48 has no native kernel \(built: 8, 16, 32, 64, 128, 256\)"):
        run(layout, backend="native")
    assert torch.equal(run(layout), run(layout, backend="reference"))  # "auto": the reference for such a head
    with pytest.raises(ValueError, match=r"head_dim 48 has no CPU kernel"):
        native_call(layout)
    assert run(layout, backend="reference").shape == (1, 2, 48)
    with pytest.raises(ValueError, match=r"causal, q_pos and seg_start go together"):
        native_call({**BASE, "causal": torch.zeros(3, dtype=torch.bool)})


def test_native_rows_do_not_depend_on_the_thread_count():
    """The three-level layout (10 tasks) with 1, 2 and 3 threads: the same bits. spct._C runs on the OpenMP runtime
    torch loaded (one libgomp per process), so torch.set_num_threads sets its thread count too."""
    native_lib()
    layout = three_levels(torch.bfloat16)
    outs = []
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        outs.append(bits(run(layout)))
    torch.set_num_threads(1)  # the module's setting (fixture one_thread)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
