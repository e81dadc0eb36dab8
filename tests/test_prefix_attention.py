"""prefix_attention: C++ == reference on awkward layouts and random ones (hypothesis), within the dtype's
tolerance; a row's output bit-identical alone and in a batch; every bad input named; Triton (interpreter, small
shapes) and CUDA == reference; the registered op passes opcheck."""

from __future__ import annotations

import math
import os

import pytest
import torch
from conftest import TOLERANCES
from extract_helpers import native_lib
from hypothesis import given, settings
from hypothesis import strategies as st

from spct import _native
from spct.ops.prefix_attention import Plan, prefix_attention

DTYPES = [torch.float32, torch.bfloat16]
NAMES = ("q", "prefix_k", "prefix_v", "prefix_indptr", "prefix_index", "own_k", "own_v", "own_index", "own_len")


def make_layout(prompt_lens, row_prompts, own_lens, *, heads, kv_heads, dim, capacity, row_slots=None, slots=None,
                dtype=torch.float32, seed=0, spare_tokens=0, sharp=1.0) -> dict:
    """Inputs for rows reading prompts of the given lengths (packed in order, spare_tokens unused ones after them)
    and own slots (row_slots, default one slot per row); sharp scales q (larger: peakier softmax)."""
    gen = torch.Generator().manual_seed(seed)
    rows = len(row_prompts)
    row_slots = list(range(rows)) if row_slots is None else row_slots
    slots = max([*row_slots, -1]) + 1 if slots is None else slots
    tokens = sum(prompt_lens) + spare_tokens
    indptr = torch.zeros(len(prompt_lens) + 1, dtype=torch.int64)
    indptr[1:] = torch.tensor(prompt_lens, dtype=torch.int64).cumsum(0)

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(dtype)

    return {
        "q": (torch.randn(rows, heads, dim, generator=gen) * sharp).to(dtype),
        "prefix_k": randn(tokens, kv_heads, dim), "prefix_v": randn(tokens, kv_heads, dim),
        "prefix_indptr": indptr, "prefix_index": torch.tensor(row_prompts, dtype=torch.int64),
        "own_k": randn(slots, capacity, kv_heads, dim), "own_v": randn(slots, capacity, kv_heads, dim),
        "own_index": torch.tensor(row_slots, dtype=torch.int64), "own_len": torch.tensor(own_lens, dtype=torch.int64),
    }


def run(layout: dict, backend: str, **kwargs) -> torch.Tensor:
    return prefix_attention(*(layout[name] for name in NAMES), backend=backend, **kwargs)


def assert_matches_reference(layout: dict, backend: str) -> torch.Tensor:
    got, want = run(layout, backend), run(layout, "reference")
    assert got.shape == want.shape and got.dtype == want.dtype == layout["q"].dtype
    torch.testing.assert_close(got, want, **TOLERANCES[want.dtype])
    return got


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16 if t.dtype == torch.bfloat16 else torch.int32)


def need_triton():
    pytest.importorskip("triton", reason="triton is not installed (pip install 'spct[triton]')")
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the Triton kernel needs a GPU or TRITON_INTERPRET=1 (set before triton is imported)")


# (prompt_lens, row_prompts, own_lens, heads, kv_heads, dim, capacity, row_slots): chunk edges (255/256/257
# tokens, 256 + 1 own tokens), scrambled rows, shared slots, own_len 0 and = capacity, GQA groups 1 and 3.
AWKWARD = {
    "1-row-1-token": ([1], [0], [0], 2, 2, 32, 4, None),
    "1-row-own-only-to-capacity": ([0], [0], [257], 3, 1, 64, 257, None),
    "7-rows-chunk-edges-gqa3": ([255, 256, 257], [2, 0, 1, 2, 0, 1, 2], [0, 9, 3, 9, 1, 0, 5], 6, 2, 64, 9,
                                [0, 1, 1, 2, 3, 0, 4]),
    "7-rows-d128-shared-slot": ([1000, 1], [1, 0, 0, 1, 0, 0, 1], [0, 1, 2, 3, 4, 5, 6], 4, 4, 128, 6,
                                [0, 0, 0, 0, 0, 0, 0]),
    "33-rows-long-prompts": ([1000, 1, 257, 256], [(7 * s) % 4 for s in range(33)], [(s * 37) % 301 for s in range(33)],
                             2, 2, 32, 300, None),
    "33-rows-gqa3-d128": ([1000, 256], [(s * 5) % 2 for s in range(33)], [(s * 11) % 41 for s in range(33)], 6, 2,
                          128, 40, [(s * 3) % 8 for s in range(33)]),
    "d256": ([257, 1], [1, 0, 1], [2, 0, 1], 4, 2, 256, 3, None),
    "empty-prompt-no-own": ([0, 5], [0, 1, 0], [0, 2, 3], 3, 1, 32, 3, None),
    "no-rows": ([5], [], [], 3, 1, 64, 2, None),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", list(AWKWARD), ids=list(AWKWARD))
def test_native_equals_reference(case, dtype):
    native_lib()
    prompt_lens, row_prompts, own_lens, heads, kv_heads, dim, capacity, row_slots = AWKWARD[case]
    layout = make_layout(prompt_lens, row_prompts, own_lens, heads=heads, kv_heads=kv_heads, dim=dim,
                         capacity=capacity, row_slots=row_slots, slots=8 if row_slots else None, dtype=dtype,
                         spare_tokens=3)
    out = assert_matches_reference(layout, "native")
    empty = (layout["own_len"] == 0) & (layout["prefix_indptr"].diff()[layout["prefix_index"]] == 0)
    assert bits(out[empty]).eq(0).all()  # a row without any token gets zeros


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
def test_peaked_scores_and_default_scale(dtype):
    """Large q . k (scores far apart across chunks) exercises the log-sum-exp merge; scale defaults to 1/sqrt(D)."""
    native_lib()
    layout = make_layout([600, 3], [0, 1, 0], [200, 0, 3], heads=4, kv_heads=2, dim=64, capacity=200, dtype=dtype,
                         sharp=4.0)
    assert_matches_reference(layout, "native")
    explicit = run(layout, "native", scale=1 / 8)
    assert torch.equal(bits(run(layout, "native")), bits(explicit))


def test_non_contiguous_inputs():
    native_lib()
    layout = make_layout([40, 7], [1, 0, 1], [2, 0, 1], heads=4, kv_heads=2, dim=32, capacity=3)
    q = layout["q"].transpose(0, 1).contiguous().transpose(0, 1)  # (S, Hq, D) with strides of (Hq, S, D)
    assert not q.is_contiguous()
    assert_matches_reference({**layout, "q": q}, "native")


@st.composite
def layouts(draw):
    """Small random layouts: 1-4 prompts of 0..300 tokens (chunk edges likely), 0-8 rows in any order, shared
    slots, own lengths 0..capacity, GQA groups 1-3, both dtypes."""
    kv_heads, group = draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 2, 3]))
    length = st.sampled_from([0, 1, 2, 255, 256, 257]) | st.integers(0, 300)
    prompt_lens = draw(st.lists(length, min_size=1, max_size=4))
    rows = draw(st.integers(0, 8))
    capacity = draw(st.sampled_from([0, 1, 5, 256, 258]))
    slots = draw(st.integers(1, 4))
    return make_layout(
        prompt_lens,
        draw(st.lists(st.integers(0, len(prompt_lens) - 1), min_size=rows, max_size=rows)),
        draw(st.lists(st.integers(0, capacity), min_size=rows, max_size=rows)),
        heads=kv_heads * group, kv_heads=kv_heads, dim=draw(st.sampled_from([32, 64])), capacity=capacity,
        row_slots=draw(st.lists(st.integers(0, slots - 1), min_size=rows, max_size=rows)), slots=slots,
        dtype=draw(st.sampled_from(DTYPES)), seed=draw(st.integers(0, 2**31)), spare_tokens=draw(st.integers(0, 3)),
        sharp=draw(st.sampled_from([1.0, 3.0])))


@settings(deadline=None)
@given(layouts())
def test_native_equals_reference_on_random_layouts(layout):
    native_lib()
    assert_matches_reference(layout, "native")


def alone(layout: dict, s: int, repack: bool) -> dict:
    """Row s by itself: in the full layout, or (repack) with only its prompt's tokens and its own slot."""
    one = {**layout, **{name: layout[name][s:s + 1] for name in ("q", "prefix_index", "own_index", "own_len")}}
    if repack:
        p, slot = int(layout["prefix_index"][s]), int(layout["own_index"][s])
        lo, hi = int(layout["prefix_indptr"][p]), int(layout["prefix_indptr"][p + 1])
        one.update(prefix_k=layout["prefix_k"][lo:hi], prefix_v=layout["prefix_v"][lo:hi],
                   prefix_indptr=torch.tensor([0, hi - lo]), prefix_index=torch.zeros(1, dtype=torch.int64),
                   own_k=layout["own_k"][slot:slot + 1], own_v=layout["own_v"][slot:slot + 1],
                   own_index=torch.zeros(1, dtype=torch.int64))
    return one


def check_batch_invariance(layout: dict, backend: str, rows) -> None:
    batch = run(layout, backend)
    for s in rows:
        for repack in (False, True):
            single = run(alone(layout, s, repack), backend)
            assert torch.equal(bits(single[0].cpu()), bits(batch[s].cpu())), (s, repack)


BATCH = ([300, 1000, 7], [1, 0, 2, 1, 1, 0, 2, 1, 0, 0, 2, 1], [0, 40, 3, 17, 40, 1, 0, 39, 2, 5, 6, 7])


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
def test_batch_invariance(dtype):
    """A row's output is bit-identical alone, alone with only its prompt and slot, and in a batch of 12 rows over
    3 prompts (blocks of 1 to 15 queries per prompt chunk)."""
    native_lib()
    layout = make_layout(*BATCH, heads=9, kv_heads=3, dim=64, capacity=40, dtype=dtype, spare_tokens=5)
    check_batch_invariance(layout, "native", range(len(BATCH[1])))


# ---- bad input ------------------------------------------------------------------------------------------------
def base_layout(**changes) -> dict:
    layout = make_layout([4, 6], [1, 0], [2, 8], heads=4, kv_heads=2, dim=32, capacity=8, slots=3)
    layout.update(changes)
    return layout


T_ = torch.tensor
BAD = [
    ({"q": torch.ones(2, 4, 32, dtype=torch.float64)},
     r"q must be a float32 or bfloat16 tensor \(S, Hq, D\), got \(2, 4, 32\) torch.float64"),
    ({"q": torch.ones(2, 128)}, r"q must be a float32 or bfloat16 tensor \(S, Hq, D\), got \(2, 128\)"),
    ({"prefix_k": torch.ones(10, 2, 16)}, r"prefix_k must have shape \(T, Hkv, D = 32\), got \(10, 2, 16\)"),
    ({"prefix_v": torch.ones(9, 2, 32)}, r"prefix_v must have prefix_k's shape \(10, 2, 32\), got \(9, 2, 32\)"),
    ({"prefix_v": torch.ones(10, 2, 32, dtype=torch.bfloat16)},
     r"prefix_v must match q \(torch.float32 on cpu\), got torch.bfloat16 on cpu"),
    ({"own_k": torch.ones(3, 8, 32)}, r"own_k must have shape \(C, M, Hkv = 2, D = 32\), got \(3, 8, 32\)"),
    ({"own_v": torch.ones(3, 7, 2, 32)}, r"own_v must have own_k's shape \(3, 8, 2, 32\), got \(3, 7, 2, 32\)"),
    ({"q": torch.ones(2, 5, 32)}, r"q's 5 heads must be a multiple of the 2 KV heads"),
    ({"prefix_index": T_([0, 2])}, r"prefix_index\[1\] = 2 is outside \[0, 2\)"),
    ({"prefix_index": T_([-1, 0])}, r"prefix_index\[0\] = -1 is outside \[0, 2\)"),
    ({"own_index": T_([3, 0])}, r"own_index\[0\] = 3 is outside \[0, 3\)"),
    ({"own_len": T_([2, 9])}, r"own_len\[1\] = 9 is outside \[0, 8\]"),
    ({"own_len": T_([-1, 0])}, r"own_len\[0\] = -1 is outside \[0, 8\]"),
    ({"prefix_indptr": T_([0, 6, 4])}, r"prefix_indptr\[2\] = 4 must be"),  # not monotone
    ({"prefix_indptr": T_([0, 4, 11])}, r"prefix_indptr\[2\] = 11 must be"),  # past the 10 tokens
    ({"prefix_indptr": T_([1, 4, 10])}, r"prefix_indptr\[0\] = 1 must be 0"),
    ({"prefix_indptr": T_([[0, 4, 10]])}, r"prefix_indptr must have shape \(P \+ 1,\), got \(1, 3\)"),
    ({"prefix_index": T_([1, 0], dtype=torch.int32)},
     r"prefix_index must be an int64 tensor on cpu, got torch.int32 on cpu"),
    ({"own_len": T_([2, 8, 0])}, r"own_len must have shape \(S,\) = \(2,\), got \(3,\)"),
    ({"scale": math.nan}, r"scale must be finite, got nan"),
    ({"backend": "cuda"}, r"backend must be one of .*, got 'cuda'"),
]


@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize(("changes", "match"), BAD, ids=[m[:40] for _, m in BAD])
def test_bad_input(changes, match, backend):
    if backend == "native":
        native_lib()
    changes = dict(changes)
    kwargs = {name: changes.pop(name) for name in ("scale", "backend") if name in changes}
    kwargs.setdefault("backend", backend)
    with pytest.raises(ValueError, match=match):
        run(base_layout(**changes), **kwargs)


def test_head_dim_without_a_native_kernel():
    native_lib()
    layout = make_layout([5], [0], [1], heads=2, kv_heads=1, dim=48, capacity=2)
    with pytest.raises(ValueError, match=r"head_dim 48 has no CPU kernel \(built: 32, 64, 128, 256\)"):
        run(layout, "native")
    assert run(layout, "reference").shape == (1, 2, 48)


def test_plan_runs_each_layer_like_one_call():
    """A Plan (the engine's per-step layout) gives each "layer" what one prefix_attention call gives, and checks
    again when a call's shapes change."""
    def layer(seed):
        return make_layout([30, 4], [1, 0, 1], [2, 0, 3], heads=4, kv_heads=2, dim=32, capacity=3, seed=seed)

    first = layer(0)
    plan = Plan(*(first[name] for name in ("prefix_indptr", "prefix_index", "own_index", "own_len")), scale=0.2)
    for seed in range(3):
        t = layer(seed)
        got = plan.run(t["q"], t["prefix_k"], t["prefix_v"], t["own_k"], t["own_v"])
        assert torch.equal(bits(got), bits(run(t, "auto", scale=0.2)))
    with pytest.raises(ValueError, match=r"prefix_k must have shape \(T, Hkv, D = 32\), got \(34, 2, 16\)"):
        plan.run(first["q"], torch.ones(34, 2, 16), first["prefix_v"], first["own_k"], first["own_v"])


# ---- other backends -------------------------------------------------------------------------------------------
TRITON_CASES = {
    "gqa3-two-prompts": ([1, 40], [1, 0, 1], [0, 5, 2], 6, 2, 32, 5),
    "chunk-edge-gqa1": ([257], [0, 0], [20, 0], 2, 2, 64, 20),
    "empty-row-d128": ([0, 17], [0, 1, 0], [0, 3, 2], 2, 1, 128, 3),
    "d48-not-a-power-of-2": ([9], [0, 0], [1, 2], 3, 3, 48, 2),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", list(TRITON_CASES), ids=list(TRITON_CASES))
def test_triton_equals_reference(case, dtype):
    need_triton()
    prompt_lens, row_prompts, own_lens, heads, kv_heads, dim, capacity = TRITON_CASES[case]
    layout = make_layout(prompt_lens, row_prompts, own_lens, heads=heads, kv_heads=kv_heads, dim=dim,
                         capacity=capacity, dtype=dtype, spare_tokens=2, sharp=3.0)
    assert_matches_reference(layout, "triton")


def test_triton_batch_invariance():
    need_triton()
    layout = make_layout([70, 3], [1, 0, 0, 1], [2, 0, 4, 1], heads=4, kv_heads=2, dim=32, capacity=4)
    check_batch_invariance(layout, "triton", [0, 2])


def to_cuda(layout: dict) -> dict:
    return {name: t.cuda() for name, t in layout.items()}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["native", "triton"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
def test_cuda_equals_reference(backend, dtype):
    if backend == "native" and not getattr(native_lib(), "has_cuda", False):
        pytest.skip("spct._C was built without CUDA")
    if backend == "triton":
        need_triton()
    layouts_ = [make_layout(*AWKWARD[case][:3], heads=AWKWARD[case][3], kv_heads=AWKWARD[case][4],
                            dim=AWKWARD[case][5], capacity=AWKWARD[case][6], row_slots=AWKWARD[case][7],
                            slots=8 if AWKWARD[case][7] else None, dtype=dtype, spare_tokens=3) for case in AWKWARD]
    # 300 rows over 3 prompts: many query batches per prompt chunk
    layouts_.append(make_layout([1000, 513, 7], [(s * 7) % 3 for s in range(300)], [s % 65 for s in range(300)],
                                heads=9, kv_heads=3, dim=64, capacity=64, dtype=dtype, sharp=2.0))
    for layout in layouts_:
        got, want = run(to_cuda(layout), backend), run(layout, "reference")
        assert got.is_cuda
        torch.testing.assert_close(got.cpu(), want, **TOLERANCES[dtype])
    layout = make_layout(*BATCH, heads=9, kv_heads=3, dim=64, capacity=40, dtype=dtype)
    check_batch_invariance(to_cuda(layout), backend, range(len(BATCH[1])))
    with pytest.raises(ValueError, match=r"own_len\[1\] = 9 is outside \[0, 8\]"):
        run(to_cuda(base_layout(own_len=T_([2, 9]))), backend)


def test_registered_op_passes_opcheck():
    layout = make_layout([30, 4], [1, 0, 1], [2, 0, 3], heads=4, kv_heads=2, dim=32, capacity=3)
    args = (*(layout[name] for name in NAMES), 0.2, "auto" if _native._module is not None else "reference")
    torch.library.opcheck(torch.ops.spct.prefix_attention.default, args, test_utils=("test_schema", "test_faketensor"))
