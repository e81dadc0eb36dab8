"""paged_attention's sliding window and logit soft-capping (window=, softcap=; transformers' semantics: a row sees
positions > q_pos - window, scores become softcap * tanh(score / softcap) before the softmax): the reference and
every C++ build (vector fp32 and bf16, AMX, AVX-512 BF16; a build this CPU lacks is skipped, saying why) against a
per-row oracle (each row's visible tokens concatenated, capped, softmax) on decode layouts (windows cutting shared
segments, spanning several, smaller than a block) and prefill chunks; a row's bits alone and among other rows, split
into other segments, on more threads; blocks wholly before the window are not read (NaN there changes no bit); the
bad arguments' one-line errors, from the wrapper and from the C++ checks; CUDA/Triton refuse or fall back."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TOLERANCES
from extract_helpers import native_lib
from test_paged_attention import CAUSAL, INDEX, bits, cache_of, i32, indptr, make_layout, run, segment_tokens

from spct.ops import dispatch
from spct.ops.paged_attention import Plan, paged_attention

BF16 = torch.bfloat16
# (cpu_kernel, dtype) of each C++ build
BUILDS = [("vector", torch.float32), ("vector", BF16), ("amx", BF16), ("avx512bf16", BF16)]
NEEDS = {"amx": ("linear_bf16_amx_supported", "this CPU has no AMX-BF16 (or the OS did not grant the tile registers)"),
         "avx512bf16": ("linear_bf16_supported", "this CPU has no AVX-512 BF16")}
OPTIONS = [(None, 20.0), (1, None), (5, None), (16, 30.0), (27, 5.0), (100, None)]  # (window, softcap)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=BUILDS, ids=[f"{k}-{'fp32' if d == torch.float32 else 'bf16'}" for k, d in BUILDS])
def build(request):
    """A C++ build this CPU runs, with its dtype (else the test skips, saying why)."""
    kernel, dtype = request.param
    lib = native_lib()
    if kernel in NEEDS and not getattr(lib, NEEDS[kernel][0])():
        pytest.skip(f"{NEEDS[kernel][1]}: the {kernel} build cannot run")
    return kernel, dtype


def oracle(layout: dict, window: int | None = None, softcap: float | None = None) -> torch.Tensor:
    """Per row: the tokens it sees of its segments (in segment order) concatenated, the scores (float64) capped, one
    softmax."""
    q = layout["q"]
    rows, heads, dim = q.shape
    group = heads // layout["k_cache"].shape[2]
    out = torch.zeros(rows, heads, dim, dtype=torch.float64)
    for r in range(rows):
        ks, vs = [], []
        for s in range(layout["seg_len"].shape[0]):
            lo, hi = int(layout["seg_row_indptr"][s]), int(layout["seg_row_indptr"][s + 1])
            if r not in layout["seg_rows"][lo:hi].tolist():
                continue
            k, v = segment_tokens(layout, s, "k_cache"), segment_tokens(layout, s, "v_cache")
            keep = torch.ones(k.shape[0], dtype=torch.bool)
            if "causal" in layout:
                position, at = int(layout["seg_start"][s]) + torch.arange(k.shape[0]), int(layout["q_pos"][r])
                if bool(layout["causal"][s]):
                    keep &= position <= at
                if window:
                    keep &= position > at - window
            ks, vs = ks + [k[keep]], vs + [v[keep]]
        k = torch.cat(ks).double().repeat_interleave(group, dim=1)  # (L, Hq, D)
        v = torch.cat(vs).double().repeat_interleave(group, dim=1)
        scores = torch.einsum("hd,lhd->hl", q[r].double(), k) / math.sqrt(dim)
        if softcap:
            scores = softcap * torch.tanh(scores / softcap)
        out[r] = torch.einsum("hl,lhd->hd", torch.softmax(scores, dim=-1), v)
    return out.to(q.dtype)


def decode(dtype, dim=32, block_size=16, seed=0) -> dict:
    """Decode rows of a GRM step: a 37-token query prefix (positions 0..36) read by all 7 rows, three orders'
    suffixes (21, 16 and 1 tokens from position 37) read by their samples, each sample's own 1..9 tokens after its
    suffix; q_pos: each row's last own token. No segment causal: a window alone cuts them."""
    order_of_row, suffix = [2, 0, 1, 0, 2, 1, 1], [21, 16, 1]
    rows = len(order_of_row)
    own = [(r * 5) % 9 + 1 for r in range(rows)]
    seg_rows = [list(range(rows))] + [[r for r in range(rows) if order_of_row[r] == o] for o in range(3)]
    seg_rows += [[r] for r in range(rows)]
    own_start = [37 + suffix[order_of_row[r]] for r in range(rows)]
    return make_layout([37, *suffix, *own], seg_rows, rows, heads=6, kv_heads=2, dim=dim, block_size=block_size,
                       dtype=dtype, seed=seed, sharp=2.0, causal=[False] * (4 + rows),
                       q_pos=[own_start[r] + own[r] - 1 for r in range(rows)], seg_start=[0, 37, 37, 37, *own_start])


def chunk(dtype, dim=32, block_size=16, seed=1) -> dict:
    """A prefill chunk of 20 rows at positions 40..59 (interleaved with 3 decode rows at position 36) over a 32-token
    context and a causal segment from position 32 (8 context tokens, then the chunk's 20); the decode rows read the
    context and their own 5 tokens from position 32."""
    rows = 23
    decode_rows, chunk_rows = [0, 7, 15], [r for r in range(rows) if r not in (0, 7, 15)]
    q_pos = [0] * rows
    for i, r in enumerate(chunk_rows):
        q_pos[r] = 40 + i
    for r in decode_rows:
        q_pos[r] = 36
    seg_rows = [list(range(rows)), chunk_rows] + [[r] for r in decode_rows]
    return make_layout([32, 28, 5, 5, 5], seg_rows, rows, heads=6, kv_heads=2, dim=dim, block_size=block_size,
                       dtype=dtype, seed=seed, sharp=2.0, causal=[False, True, False, False, False], q_pos=q_pos,
                       seg_start=[0, 32, 32, 32, 32])


LAYOUTS = {"decode": decode, "chunk": chunk}


def options(window, softcap) -> dict:
    return {"window": window, "softcap": softcap}


@pytest.mark.parametrize(("window", "softcap"), OPTIONS, ids=[f"w{w}-c{c}" for w, c in OPTIONS])
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_reference_matches_the_oracle(name, window, softcap):
    """The reference (fp32 and bf16, blocks of 4 and 16) and backend "auto" against the per-row oracle."""
    for dtype, block_size in ((torch.float32, 4), (torch.float32, 16), (BF16, 16)):
        layout = LAYOUTS[name](dtype, block_size=block_size)
        want = oracle(layout, window, softcap)
        for backend in ("reference", "auto"):
            got = run(layout, backend=backend, **options(window, softcap))
            torch.testing.assert_close(got, want, **TOLERANCES[dtype])


@pytest.mark.parametrize(("window", "softcap"), OPTIONS, ids=[f"w{w}-c{c}" for w, c in OPTIONS])
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_builds_match_the_reference(name, window, softcap, build):
    """Each C++ build against the reference and the oracle within the dtype's tolerance (blocks of 16, and of 4 for
    the vector build); with a window or softcap the AVX-512 BF16 build takes its wide path (no narrow lanes)."""
    kernel, dtype = build
    for block_size in (16, 4) if kernel == "vector" else (16,):
        layout = LAYOUTS[name](dtype, block_size=block_size)
        got = run(layout, backend="native", cpu_kernel=kernel, **options(window, softcap))
        assert got.isfinite().all()
        torch.testing.assert_close(got, run(layout, backend="reference", **options(window, softcap)),
                                   **TOLERANCES[dtype])
        torch.testing.assert_close(got, oracle(layout, window, softcap), **TOLERANCES[dtype])


def random_layout(seed: int, dtype) -> tuple[dict, int, float | None]:
    """1..6 rows, each with its own segment ending at its position (causal or not), and 0..3 shared segments at random
    positions read by random rows (causal or not); a random window and softcap."""
    gen = torch.Generator().manual_seed(seed)

    def pick(n: int) -> int:
        return int(torch.randint(n, (1,), generator=gen))

    rows = 1 + pick(6)
    q_pos = [20 + pick(40) for _ in range(rows)]
    own = [1 + pick(12) for _ in range(rows)]
    lens, starts, members, causal = [], [], [], []
    for _ in range(pick(4)):
        lens.append(pick(30))
        starts.append(pick(40))
        members.append([r for r in range(rows) if pick(2)])
        causal.append(bool(pick(2)))
    lens += own
    starts += [q_pos[r] - own[r] + 1 for r in range(rows)]
    members += [[r] for r in range(rows)]
    causal += [bool(pick(2)) for _ in range(rows)]
    layout = make_layout(lens, members, rows, heads=4, kv_heads=2, dim=16, block_size=[1, 3, 4, 8][pick(4)],
                         dtype=dtype, seed=seed, causal=causal, q_pos=q_pos, seg_start=starts, sharp=2.0)
    return layout, [1, 2, 5, 17, 40][pick(5)], [None, 5.0, 30.0][pick(3)]


@pytest.mark.parametrize("dtype", [torch.float32, BF16], ids=["fp32", "bf16"])
def test_random_layouts(dtype):
    """20 random layouts: the vector build (backend "auto") and the reference against the oracle."""
    for seed in range(20):
        layout, window, softcap = random_layout(seed, dtype)
        want = oracle(layout, window, softcap)
        for backend in ("auto", "reference"):
            got = run(layout, backend=backend, **options(window, softcap))
            torch.testing.assert_close(got, want, **TOLERANCES[dtype], msg=lambda m: f"seed {seed} {backend}: {m}")


def over_blocks(q, k_cache, v_cache, segs, kernel, q_pos, **kwargs) -> torch.Tensor:
    """segs: (block ids, tokens, rows, first position) per segment (none causal), over the given cache; q_pos: the
    rows' positions."""
    return paged_attention(q, k_cache, v_cache, i32([b for ids, _, _, _ in segs for b in ids]),
                           indptr([len(ids) for ids, _, _, _ in segs]), i32([n for _, n, _, _ in segs]),
                           indptr([len(rows) for _, _, rows, _ in segs]),
                           i32([r for _, _, rows, _ in segs for r in rows]), causal=torch.zeros(len(segs), dtype=bool),
                           q_pos=i32(q_pos), seg_start=i32([p for _, _, _, p in segs]), backend="native",
                           cpu_kernel=kernel, **kwargs)


@pytest.mark.parametrize(("window", "softcap"), [(13, None), (40, 30.0), (3, 5.0)], ids=["w13", "w40-c30", "w3-c5"])
def test_rows_do_not_depend_on_segments_or_other_rows(window, softcap, build):
    """A row at position 82 over 6 blocks of 16 (83 tokens from position 0), alone in one segment, then among 13
    other rows at other positions (so the window cuts each lane's blocks differently) with its blocks split into 4
    segments shared differently, then on 2 threads: the same bits."""
    kernel, dtype = build
    k_cache, v_cache = cache_of(30, 16, dtype, seed=11, dim=32)
    gen = torch.Generator().manual_seed(12)
    q = (torch.randn(14, 9, 32, generator=gen) * 2).to(dtype)
    mine = [21, 2, 17, 5, 0, 28]
    kwargs = {"window": window, "softcap": softcap}
    alone = over_blocks(q[9:10], k_cache, v_cache, [(mine, 83, [0], 0)], kernel, [82], **kwargs)
    others = [r for r in range(14) if r != 9]
    q_pos = [15 + 5 * r for r in range(14)]
    q_pos[9] = 82
    split = [(mine[:1], 16, [9, 3, 0], 0), (mine[1:3], 32, others[:10] + [9], 16),
             (mine[3:5], 32, [9, *others[4:]], 48), (mine[5:], 3, [12, 9], 80), ([1, 3], 20, others, 0),
             ([29], 2, others, 20 + 5 * 13 - 1)]
    beside = over_blocks(q, k_cache, v_cache, split, kernel, q_pos, **kwargs)
    assert beside.isfinite().all()
    assert torch.equal(bits(beside[9]), bits(alone[0]))
    torch.set_num_threads(2)
    try:
        twice = over_blocks(q, k_cache, v_cache, split, kernel, q_pos, **kwargs)
        alone2 = over_blocks(q[9:10], k_cache, v_cache, [(mine, 83, [0], 0)], kernel, [82], **kwargs)
    finally:
        torch.set_num_threads(1)
    assert torch.equal(bits(twice), bits(beside)) and torch.equal(bits(alone2), bits(alone))


def test_few_rows_on_two_threads(build):
    """One and two decode rows (3 KV heads: fewer tasks than two per thread, where the AVX-512 BF16 build would cut
    the blocks into pieces without a window) over a 700-token prompt and their own tokens, window 100 and softcap
    30 on 1 and 2 threads: the same bits, and the oracle's values."""
    kernel, dtype = build
    layout = make_layout([700, 9, 30], [[0, 1], [0], [1]], 2, heads=9, kv_heads=3, dim=64, block_size=16,
                         dtype=dtype, seed=5, sharp=2.0, causal=[False] * 3, q_pos=[708, 729], seg_start=[0, 700, 700])
    outs = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        try:
            outs.append(run(layout, backend="native", cpu_kernel=kernel, window=100, softcap=30.0))
        finally:
            torch.set_num_threads(1)
    assert torch.equal(bits(outs[0]), bits(outs[1]))
    torch.testing.assert_close(outs[0], oracle(layout, 100, 30.0), **TOLERANCES[dtype])


def test_blocks_before_the_window_are_not_read(build):
    """Decode rows at positions 105..110 over a 100-token prompt (blocks of 16) and their own tokens, window 20: the
    prompt's first 5 blocks (positions 0..79) lie wholly before every row's window. NaN in their keys and values,
    and in the keys of the window's first block before every row's window (read, masked): finite outputs, the same
    bits as with the values there, and the oracle's values."""
    kernel, dtype = build
    rows = 6
    own = [6 + r for r in range(rows)]  # own tokens at positions 100 .. 105 + r: q_pos 105 .. 110
    layout = make_layout([100, *own], [list(range(rows))] + [[r] for r in range(rows)], rows, heads=6, kv_heads=2,
                         dim=32, block_size=16, dtype=dtype, seed=9, sharp=2.0, causal=[False] * (rows + 1),
                         q_pos=[99 + n for n in own], seg_start=[0] + [100] * rows, shuffle=True)
    clean = run(layout, backend="native", cpu_kernel=kernel, window=20, softcap=30.0)
    blocks = layout["block_ids"][:7].long()
    k, v = layout["k_cache"].clone(), layout["v_cache"].clone()
    k[blocks[:5]], v[blocks[:5]] = float("nan"), float("nan")
    k[blocks[5], :6] = float("nan")  # positions 80..85: before the window of every row (> 85 .. > 90)
    poisoned = {**layout, "k_cache": k, "v_cache": v}
    got = run(poisoned, backend="native", cpu_kernel=kernel, window=20, softcap=30.0)
    assert got.isfinite().all()
    assert torch.equal(bits(got), bits(clean))
    ref = run(poisoned, backend="reference", window=20, softcap=30.0)
    assert ref.isfinite().all()
    torch.testing.assert_close(got, oracle(layout, 20, 30.0), **TOLERANCES[dtype])


def test_plan_and_registered_op():
    """Plan(window=, softcap=) runs like the call; the registered op takes them (opcheck)."""
    layout = decode(torch.float32)
    extra = {name: layout[name] for name in CAUSAL}
    plan = Plan(*(layout[n] for n in INDEX), **extra, window=9, softcap=20.0)
    assert torch.equal(plan.run(layout["q"], layout["k_cache"], layout["v_cache"]), run(layout, window=9, softcap=20.0))
    assert not torch.equal(run(layout, window=9), run(layout))
    assert torch.equal(run(layout, window=0, softcap=0), run(layout))  # 0: none
    args = (layout["q"], layout["k_cache"], layout["v_cache"], *(layout[n] for n in INDEX + CAUSAL), 0.25, "auto",
            None, 9, 20.0)
    torch.library.opcheck(torch.ops.spct.paged_attention.default, args, test_utils=("test_schema", "test_faketensor"))


def test_cuda_and_triton_kernels_refuse_or_fall_back(monkeypatch):
    """Where dispatch picks the Triton kernel (here: as if on a GPU without the CUDA build), "auto" runs the
    reference with a window or softcap, and backend="triton" refuses them in one line."""
    layout = decode(torch.float32)
    want = run(layout, backend="reference", window=7, softcap=10.0)
    monkeypatch.setattr(dispatch, "pick", lambda op, device, backend="auto": "triton")
    assert torch.equal(run(layout, window=7, softcap=10.0), want)
    with pytest.raises(ValueError, match=r"^window and softcap run on the C\+\+ CPU kernel and the reference; the "
                                         r"CUDA and Triton kernels lack them \(backend='triton' on cpu\)$"):
        run(layout, backend="triton", softcap=10.0)


NO_POSITIONS = (r"^window needs causal, q_pos and seg_start \(every segment's token positions; causal may be all "
                r"False\)$")
BAD = [
    ({"window": 0.5}, r"^window must be an int in \[1, 2\*\*31 - 1\] \(None or 0: no window\), got 0.5$"),
    ({"window": -1}, r"^window must be an int in \[1, 2\*\*31 - 1\] \(None or 0: no window\), got -1$"),
    ({"window": True}, r"^window must be an int in \[1, 2\*\*31 - 1\] \(None or 0: no window\), got True$"),
    ({"window": 2**31}, r"^window must be an int in \[1, 2\*\*31 - 1\]"),
    ({"softcap": math.nan}, r"^softcap must be finite and > 0 \(None or 0: none\), got nan$"),
    ({"softcap": -1.0}, r"^softcap must be finite and > 0 \(None or 0: none\), got -1.0$"),
    ({"softcap": math.inf}, r"^softcap must be finite and > 0 \(None or 0: none\), got inf$"),
    ({"softcap": "50"}, r"^softcap must be finite and > 0 \(None or 0: none\), got '50'$"),
]


@pytest.mark.parametrize("plan", [False, True], ids=["call", "plan"])
@pytest.mark.parametrize(("kwargs", "match"), BAD + [({"window": 4, "positions": False}, NO_POSITIONS)],
                         ids=[m[1:30] + str(k) for k, m in BAD] + ["no-positions"])
def test_bad_arguments(kwargs, match, plan):
    layout = decode(torch.float32)
    kwargs = dict(kwargs)
    extra = {name: layout[name] for name in CAUSAL} if kwargs.pop("positions", True) else {}
    with pytest.raises(ValueError, match=match):
        if plan:
            Plan(*(layout[n] for n in INDEX), **extra, **kwargs).run(layout["q"], layout["k_cache"], layout["v_cache"])
        else:
            paged_attention(layout["q"], layout["k_cache"], layout["v_cache"], *(layout[n] for n in INDEX), **extra,
                            **kwargs)


def test_a_row_must_see_a_token_of_its_window():
    """A row whose segments all end before its window: the same one-line error from the wrapper's checks (the
    reference) and from the C++ kernel's; the binding's own checks of window and softcap."""
    layout = make_layout([5, 3], [[0], [0, 1]], 2, causal=[False, True], q_pos=[20, 6], seg_start=[0, 5])
    match = (r"^row 0 of q sees no token: its segments are empty, start after q_pos\[0\] = 20 or end before its "
             r"window of 4 \(positions > 16\)$")
    for backend in ("reference", "native"):
        with pytest.raises(ValueError, match=match):
            run(layout, window=4, backend=backend)
    assert run(layout, window=14, backend="native").isfinite().all()  # position 7 > 20 - 14
    lib = native_lib()
    q, k = layout["q"], layout["k_cache"]
    sizes = (*q.shape[:2], k.shape[2], q.shape[2], *k.shape[:2], 2, layout["block_ids"].shape[0],
             layout["seg_rows"].shape[0], 0.25, False, False, False)
    addresses = [layout[n].data_ptr() for n in INDEX]
    with pytest.raises(ValueError, match=r"^window needs causal, q_pos and seg_start"):
        lib.PagedAttentionLayout(*addresses, 0, 0, 0, *sizes, 4, 0.0)
    with pytest.raises(ValueError, match=r"^softcap must be finite and >= 0 \(0: none\)"):
        lib.PagedAttentionLayout(*addresses, *(layout[n].data_ptr() for n in CAUSAL), *sizes, 4, math.nan)
