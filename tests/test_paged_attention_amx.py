"""paged_attention's bfloat16 pair builds, AMX tiles (csrc/cpu/paged_attention_amx.h) and AVX-512 BF16 vectors
(csrc/cpu/paged_attention_dpbf16.h), both for bfloat16 with head_dim a multiple of 32 and block_size a multiple of
16: each against the per-row oracle within the bfloat16 tolerance on GRM layouts (head sizes 32 to 256,
partial blocks, causal prefill chunks beside decode rows), with NaN in every cache row it must not read; close to the
vector build; its rows bitwise independent of segmentation, of the other rows, of causal vs decode rows and of the
thread count; chosen by default where it applies; cpu_kernel's checks. Each build's tests skip where the CPU lacks
its instructions (AMX-BF16, AVX-512 BF16)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TOLERANCES
from extract_helpers import native_lib
from test_paged_attention import INDEX, bits, cache_of, i32, indptr, make_layout, oracle, run

from spct.ops import paged_attention as pa

BF16 = torch.bfloat16


NEEDS = {"amx": ("linear_bf16_amx_supported", "this CPU has no AMX-BF16 (or the OS did not grant the tile registers)"),
         "avx512bf16": ("linear_bf16_supported", "this CPU has no AVX-512 BF16")}


@pytest.fixture(params=list(NEEDS))
def kernel(request):
    """A pair build this CPU runs (else the test skips, saying why)."""
    check, why = NEEDS[request.param]
    if not getattr(native_lib(), check)():
        pytest.skip(f"{why}: the {request.param} build cannot run")
    return request.param


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def grm(dim: int, seed: int = 0, own=(1, 17, 33, 16, 5)) -> dict:
    """A 70-token query prefix read by every row, two orders' suffixes (23 and 16 tokens) read by their samples, and
    each sample's own tokens; Hq 9 over Hkv 3 (SmolLM2's grouping), blocks of 16."""
    rows = len(own)
    seg_rows = [list(range(rows)), [r for r in range(rows) if r % 2 == 0], [r for r in range(rows) if r % 2]]
    seg_rows += [[r] for r in range(rows)]
    return make_layout([70, 23, 16, *own], seg_rows, rows, heads=9, kv_heads=3, dim=dim, block_size=16, dtype=BF16,
                       seed=seed, sharp=2.0)


def poison_unread(layout: dict) -> dict:
    """NaN in every cache row no segment holds: the tails of partial blocks and the spare blocks."""
    k, v = layout["k_cache"].clone(), layout["v_cache"].clone()
    used = torch.zeros(k.shape[:2], dtype=torch.bool)
    for s in range(layout["seg_len"].shape[0]):
        lo, hi, n = (int(layout["seg_block_indptr"][s]), int(layout["seg_block_indptr"][s + 1]),
                     int(layout["seg_len"][s]))
        for i, b in enumerate(layout["block_ids"][lo:hi].tolist()):
            used[b, :min(k.shape[1], n - i * k.shape[1])] = True
    k[~used], v[~used] = float("nan"), float("nan")
    return {**layout, "k_cache": k, "v_cache": v}


@pytest.mark.parametrize("dim", [32, 64, 128, 256])
def test_matches_the_oracle(dim, kernel):
    layout = poison_unread(grm(dim))
    got = run(layout, backend="native", cpu_kernel=kernel)
    assert got.isfinite().all()
    clean = {**layout, "k_cache": layout["k_cache"].nan_to_num(0.0), "v_cache": layout["v_cache"].nan_to_num(0.0)}
    torch.testing.assert_close(got, oracle(clean), **TOLERANCES[BF16])
    torch.testing.assert_close(got, run(layout, backend="native", cpu_kernel="vector"), **TOLERANCES[BF16])


def test_many_rows_and_a_long_prompt(kernel):
    """16 samples over a 1,100-token prompt with 1..200 tokens each (lanes in three vector groups per KV head)."""
    own = [1 + (r * 37) % 200 for r in range(16)]
    layout = make_layout([1100, *own], [list(range(16))] + [[r] for r in range(16)], 16, heads=9, kv_heads=3,
                         dim=64, block_size=16, dtype=BF16, seed=3)
    torch.testing.assert_close(run(layout, backend="native", cpu_kernel=kernel), oracle(layout), **TOLERANCES[BF16])


def test_causal_prefill_chunk_beside_decode_rows(kernel):
    """A chunk of 20 rows at positions 40..59 over a 32-token context and a causal segment from position 32 (8
    context tokens, then the chunk), beside 3 decode rows: the oracle, and each chunk row bit for bit a decode row
    over the same tokens."""
    k_cache, v_cache = cache_of(12, 16, BF16, seed=5, kv_heads=1, dim=64)
    q = torch.randn(23, 3, 64, generator=torch.Generator().manual_seed(6)).to(BF16)
    chunk = list(range(3, 23))
    q_pos = [0, 0, 0] + [40 + i for i in range(20)]
    segs = [([4, 9], 32, chunk + [0, 2]), ([1, 7], 28, chunk), ([3], 5, [0, 1, 2])]
    causal = {"causal": [False, True, False], "q_pos": q_pos, "seg_start": [0, 32, 0]}
    got = over_blocks(q, k_cache, v_cache, segs, kernel, **causal)
    for r in chunk:
        seen = q_pos[r] - 31
        parts = [([4, 9], 32, [0]), ([1, 7][:math.ceil(seen / 16)], seen, [0])]
        assert torch.equal(bits(over_blocks(q[r:r + 1], k_cache, v_cache, parts, kernel)[0]), bits(got[r])), r
    layout = {"q": q, "k_cache": k_cache, "v_cache": v_cache, "block_ids": i32([4, 9, 1, 7, 3]),
              "seg_block_indptr": indptr([2, 2, 1]), "seg_len": i32([32, 28, 5]),
              "seg_row_indptr": indptr([22, 20, 3]), "seg_rows": i32(chunk + [0, 2] + chunk + [0, 1, 2]),
              "causal": torch.tensor(causal["causal"]), "q_pos": i32(q_pos), "seg_start": i32(causal["seg_start"])}
    torch.testing.assert_close(got, oracle(layout), **TOLERANCES[BF16])


def over_blocks(q, k_cache, v_cache, segs, kernel, **causal) -> torch.Tensor:
    """segs: (block ids, tokens, rows) per segment, over the given cache; the given build."""
    extra = {name: i32(causal[name]) for name in ("q_pos", "seg_start") if name in causal}
    if causal:
        extra["causal"] = torch.tensor(causal["causal"], dtype=torch.bool)
    return pa.paged_attention(q, k_cache, v_cache, i32([b for ids, _, _ in segs for b in ids]),
                              indptr([len(ids) for ids, _, _ in segs]), i32([n for _, n, _ in segs]),
                              indptr([len(rows) for _, _, rows in segs]),
                              i32([r for _, _, rows in segs for r in rows]), backend="native", cpu_kernel=kernel,
                              **extra)


def test_rows_do_not_depend_on_segments_or_other_rows(kernel):
    """A row over 5 blocks of 16 and 3 tokens of a sixth, alone, then among 13 other rows with its blocks split
    into 4 segments shared differently, then among 56 more rows (lanes in three groups): the same bits."""
    k_cache, v_cache = cache_of(30, 16, BF16, seed=11, dim=64)
    gen = torch.Generator().manual_seed(12)
    q = (torch.randn(14, 9, 64, generator=gen) * 2).to(BF16)
    mine = [21, 2, 17, 5, 0, 28]
    alone = over_blocks(q[9:10], k_cache, v_cache, [(mine, 83, [0])], kernel)
    others = [r for r in range(14) if r != 9]
    split = [(mine[:1], 16, [9, 3, 0]), (mine[1:3], 32, others[:10] + [9]), (mine[3:5], 32, [9, *others[4:]]),
             (mine[5:], 3, [12, 9]), ([1, 3], 20, others), ([29], 2, [0, 1])]
    beside = over_blocks(q, k_cache, v_cache, split, kernel)
    assert torch.equal(bits(beside[9]), bits(alone[0]))
    many_q = torch.cat([torch.randn(56, 9, 64, generator=gen).to(BF16), q])
    many = [(ids, n, [56 + r for r in rows]) for ids, n, rows in split]
    many += [([r % 30], 1 + r % 16, [r]) for r in range(56)]
    assert torch.equal(bits(over_blocks(many_q, k_cache, v_cache, many, kernel)[56:]), bits(beside))


@pytest.mark.parametrize("dim", [32, 128])
def test_few_lanes_give_the_bits_of_many(dim, kernel):
    """A segment read by 1 to 9 lanes (in the AVX-512 BF16 build up to 8 take their scores with the block's tokens
    across the vector: a transpose of the keys) against the same rows among 16 (queries across the vector), over
    three blocks and 7 tokens of a fourth, with NaN in the rows past them: the same bits. Outputs are bfloat16, so
    a score summed in another order shows in a few outputs only: 8 draws (that order reversed differed in 58 of
    276,480 outputs over 30 draws)."""
    ids = [3, 0, 6, 5]
    for seed in range(8):
        k_cache, v_cache = cache_of(8, 16, BF16, seed=seed, kv_heads=2, dim=dim)
        k_cache[5, 7:], v_cache[5, 7:] = float("nan"), float("nan")
        gen = torch.Generator().manual_seed(100 + seed)
        q = (torch.randn(16, 2, dim, generator=gen) * 2).to(BF16)  # 1 query head per KV head: a row is one lane
        many = over_blocks(q, k_cache, v_cache, [(ids, 55, list(range(16)))], kernel)
        assert many.isfinite().all()
        for rows in range(1, 10):
            few = over_blocks(q[:rows], k_cache, v_cache, [(ids, 55, list(range(rows)))], kernel)
            assert torch.equal(bits(few), bits(many[:rows])), (seed, rows)


@pytest.mark.parametrize("dim", [32, 128])
def test_few_causal_lanes_give_the_bits_of_many(dim, kernel):
    """As above on a causal segment (a prefill chunk's rows at positions 3 to 53 over three blocks and 7 tokens of
    a fourth, each row seeing its tokens up to its position, so the narrow lanes mask different tokens of a block):
    1 to 9 rows against the same rows among 16, the same bits. The narrow softmax's sums taken in reverse token
    order within a block differed here in a few outputs of dim 128 over these 24 draws (none over 4)."""
    ids = [3, 0, 6, 5]
    for seed in range(24):
        k_cache, v_cache = cache_of(8, 16, BF16, seed=seed, kv_heads=2, dim=dim)
        k_cache[5, 7:], v_cache[5, 7:] = float("nan"), float("nan")
        gen = torch.Generator().manual_seed(200 + seed)
        q = (torch.randn(16, 2, dim, generator=gen) * 2).to(BF16)
        pos = [3 + (r * 23 + seed * 5) % 51 for r in range(16)]
        causal = {"causal": [True], "seg_start": [0]}
        many = over_blocks(q, k_cache, v_cache, [(ids, 55, list(range(16)))], kernel, q_pos=pos, **causal)
        assert many.isfinite().all()
        for rows in range(1, 10):
            few = over_blocks(q[:rows], k_cache, v_cache, [(ids, 55, list(range(rows)))], kernel, q_pos=pos[:rows],
                              **causal)
            assert torch.equal(bits(few), bits(many[:rows])), (seed, rows)


def test_rows_do_not_depend_on_the_thread_count(kernel):
    layout = grm(64, seed=2)
    outs = []
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        outs.append(bits(run(layout, backend="native", cpu_kernel=kernel)))
    torch.set_num_threads(1)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def few_rows_cases() -> list:
    """(segments, rows, causal) over few_rows_cache: one row, two rows, two causal rows of a chunk."""
    prompt = (list(range(45)), 710)
    return [([(*prompt, [0]), ([45, 46, 47], 40, [0])], 1, {}),
            ([(*prompt, [0, 1]), ([45, 46], 17, [0]), ([50], 7, [1])], 2, {}),
            ([(*prompt, [0, 1]), ([45, 46, 47], 44, [0, 1])], 2,
             {"causal": [False, True], "seg_start": [0, 710], "q_pos": [735, 751]})]


def few_rows_cache(dim: int, seed: int) -> tuple:
    """60 blocks of 16 (3 KV heads), NaN in the rows no case of few_rows_cases reads."""
    k_cache, v_cache = cache_of(60, 16, BF16, seed=seed, kv_heads=3, dim=dim)
    k_cache[44, 6:], v_cache[44, 6:] = float("nan"), float("nan")  # the prompt's 710 tokens end in block 44
    for unread in ([48, 49, 52], [55, 56, 57, 58, 59]):
        k_cache[unread], v_cache[unread] = float("nan"), float("nan")
    return k_cache, v_cache


def among_others(segs: list, rows: int, causal: dict) -> tuple:
    """The segments with 16 - rows more rows (1 to 16 tokens of their own each), and the causal arguments for them."""
    crowd = segs + [([r % 3 + 53], 1 + r, [r]) for r in range(rows, 16)]
    if not causal:
        return crowd, {}
    pad = 16 - rows
    return crowd, {"causal": causal["causal"] + [False] * pad, "seg_start": causal["seg_start"] + [0] * pad,
                   "q_pos": causal["q_pos"] + [0] * pad}


@pytest.mark.parametrize("dim", [64, 128])
def test_few_rows_on_more_threads_give_the_bits_of_one(dim, kernel):
    """One or two decode rows (3 KV heads: 3 tasks, fewer than two per thread on 2 or 3 threads, where the AVX-512
    BF16 build cuts the blocks into pieces: paged_attention_split.h) over a 45-block prompt and 7 to 40 tokens of
    their own, and two causal rows of a chunk over it, with NaN in the cache rows no case reads, over 6 draws: the
    bits of one thread and of the same rows among 14 others (on 2 threads), and close to the oracle."""
    for seed in range(6):
        k_cache, v_cache = few_rows_cache(dim, seed=30 + seed)
        q = (torch.randn(16, 9, dim, generator=torch.Generator().manual_seed(60 + seed)) * 2).to(BF16)
        for segs, rows, causal in few_rows_cases():
            outs = []
            for threads in (1, 2, 3):
                torch.set_num_threads(threads)
                outs.append(bits(over_blocks(q[:rows], k_cache, v_cache, segs, kernel, **causal)))
            crowd, extra = among_others(segs, rows, causal)
            torch.set_num_threads(2)
            among = bits(over_blocks(q, k_cache, v_cache, crowd, kernel, **extra)[:rows])
            torch.set_num_threads(1)
            assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2]), (seed, rows, causal)
            assert torch.equal(among, outs[0]), (seed, rows, causal)
            layout = {"q": q[:rows], "k_cache": k_cache, "v_cache": v_cache,
                      **dict(zip(INDEX, (i32([b for ids, _, _ in segs for b in ids]),
                                         indptr([len(ids) for ids, _, _ in segs]), i32([n for _, n, _ in segs]),
                                         indptr([len(r) for _, _, r in segs]),
                                         i32([r for _, _, rs in segs for r in rs]))))}
            if causal:
                layout.update(causal=torch.tensor(causal["causal"]), seg_start=i32(causal["seg_start"]),
                              q_pos=i32(causal["q_pos"]))
            torch.testing.assert_close(outs[0].view(BF16), oracle(layout), **TOLERANCES[BF16])


def test_default_choice():
    """The default for bfloat16 pair shapes is the best build this CPU runs (AMX, then AVX-512 BF16), every other
    shape runs the float32 vector build."""
    lib = native_lib()
    best = "amx" if lib.linear_bf16_amx_supported() else "avx512bf16" if lib.linear_bf16_supported() else "vector"
    assert pa.cpu_kernel(BF16, 64, 16) == best
    assert [pa.cpu_kernel(*args) for args in ((torch.float32, 64, 16), (BF16, 48, 16), (BF16, 64, 8))] == ["vector"] * 3
    layout = grm(64)
    assert torch.equal(bits(run(layout)), bits(run(layout, backend="native", cpu_kernel=best)))
    with pytest.raises(ValueError, match=r"cpu_kernel 'tiles' is not one of 'amx', 'avx512bf16', 'vector'"):
        run(layout, cpu_kernel="tiles")
    with pytest.raises(ValueError, match=r"cpu_kernel 'tiles' is not one of"):
        pa.Plan(*(layout[n] for n in INDEX), cpu_kernel="tiles")


def test_checks(kernel):
    layout = grm(64)
    with pytest.raises(ValueError, match=rf"cpu_kernel '{kernel}' needs bfloat16 \(got torch.float32\)"):
        run(make_layout([20], [[0]], 1, heads=2, kv_heads=1, dim=64, block_size=16), cpu_kernel=kernel)
    with pytest.raises(ValueError, match=r"block_size a multiple of 16 \(got 4\)"):
        run(make_layout([20], [[0]], 1, heads=2, kv_heads=1, dim=64, dtype=BF16), cpu_kernel=kernel)
    lib = native_lib()
    q, k = layout["q"], layout["k_cache"]
    flags = (True, False) if kernel == "amx" else (False, True)
    name = "amx" if kernel == "amx" else "dpbf16"
    with pytest.raises(ValueError, match=rf"{name}=True needs bfloat16, head_dim a multiple of 32"):
        lib.PagedAttentionLayout(*(layout[n].data_ptr() for n in INDEX), 0, 0, 0, *q.shape[:2], k.shape[2], 48,
                                 *k.shape[:2], 8, layout["block_ids"].shape[0], layout["seg_rows"].shape[0], 0.125,
                                 True, *flags)
    with pytest.raises(ValueError, match=r"amx=True and dpbf16=True exclude each other"):
        lib.PagedAttentionLayout(*(layout[n].data_ptr() for n in INDEX), 0, 0, 0, *q.shape[:2], k.shape[2], 64,
                                 *k.shape[:2], 8, layout["block_ids"].shape[0], layout["seg_rows"].shape[0], 0.125,
                                 True, True, True)
