"""paged_attention throughput on SmolLM2-135M shapes (Hq 9, Hkv 3, D 64), bf16 and fp32, blocks of 16 and 64 tokens.

Decode: 16 rows sharing one 1,000-token prompt segment, plus each row's own segment of 94..106 tokens, the blocks
scattered through the cache. Native: the C++ kernel through `Plan.run` (the layout bound once, as the engine binds
it once per step for its layers). Baselines: the best a user writes in torch over the same tokens, the headline
ratio against the fastest of bench_prefix_attention's three (`torch_baselines`: sdpa over k copies, one masked sdpa
call, a shared-prompt batched matmul), each over the tokens already gathered out of the blocks into its own
contiguous layout before timing (a torch user holding a paged cache would also gather every step: the ratio is a
lower bound of theirs); and, printed beside it, prefix_attention's C++ kernel (its Plan) on the same tokens, the
prompt packed and the own tokens in slots: the spct op paged_attention replaces. Where the default build is the AMX
one (bf16 on a CPU with AMX-BF16), the vector build's time is printed too ("vector build").

Prefill: a chunk of 256 rows at positions 768..1023 of one sequence: its 768-token context as one segment and the
chunk's own tokens as a causal segment from position 768. Baseline: torch's scaled_dot_product_attention over the
1,024 contiguous tokens with the causal mask (GQA in the call; is_causal aligns the mask top-left, wrong for a
chunk after its context).

The physical limit (a roofline): the larger of the KV bytes each call must read (plus q and out) at this machine's
memory read speed and the FLOPs (4 x D per query head and key attended) at its matmul speed (bf16 or fp32, the
faster), both measured in the same run (`timing.memory_read_gb_per_s`, `timing.matmul_gflop_per_s`); "limit" names
the one that binds (decode: memory, prefill: compute). For fp32 that speed can be a higher compute limit than fp32
reaches, so the fraction is a lower bound there.

Everything is validated against the reference (spct.ops.ref.paged_attention) before timing; each side is timed in
the same test; extra_info holds rows/s, GB/s, each baseline's time, the ratios of medians (baseline / native: above
1, paged_attention is faster) and the fraction of the limit. The C++ kernels run on torch's OpenMP threads
(OMP_NUM_THREADS or torch.set_num_threads); on a machine shared with other work, one thread gives the steadier ratio.

    python -m pytest bench/bench_paged_attention.py --benchmark-enable -s
    OMP_NUM_THREADS=1 python -m pytest bench/bench_paged_attention.py --benchmark-enable -s
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from spct.ops import paged_attention as paged
from spct.ops import prefix_attention as prefix
from spct.ops.ref import paged_attention as ref
from bench_prefix_attention import roofline, torch_baselines
from timing import TOLERANCES, matmul_gflop_per_s, median_seconds, memory_read_gb_per_s

HEADS, KV_HEADS, DIM = 9, 3, 64
SCALE = DIM**-0.5
ROWS, PROMPT = 16, 1000
OWN = [94 + (r * 5) % 13 for r in range(ROWS)]  # 94..106 tokens each
CONTEXT, CHUNK = 768, 256
DTYPES = [torch.bfloat16, torch.float32]
BLOCK_SIZES = [16, 64]


def i32(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int32)


def layout(seg_lens: list[int], seg_rows: list[list[int]], rows: int, block_size: int, dtype, seed: int) -> dict:
    """Segments of the given lengths over blocks taken in a random order from a cache with a few spare blocks."""
    gen = torch.Generator().manual_seed(seed)
    counts = [math.ceil(n / block_size) for n in seg_lens]
    total = sum(counts) + 3
    randn = lambda *shape: torch.randn(*shape, generator=gen).to(dtype)  # noqa: E731
    return {
        "q": randn(rows, HEADS, DIM), "k_cache": randn(total, block_size, KV_HEADS, DIM),
        "v_cache": randn(total, block_size, KV_HEADS, DIM),
        "index": (torch.randperm(total, generator=gen)[:sum(counts)].to(torch.int32),
                  i32([0, *torch.tensor(counts).cumsum(0).tolist()]), i32(seg_lens),
                  i32([0, *torch.tensor([len(r) for r in seg_rows]).cumsum(0).tolist()]),
                  i32([r for members in seg_rows for r in members])),
    }


def tokens(data: dict, name: str, s: int) -> torch.Tensor:
    """Segment s's tokens of k_cache or v_cache: (seg_len[s], Hkv, D)."""
    block_ids, seg_block_indptr, seg_len = data["index"][:3]
    blocks = block_ids[int(seg_block_indptr[s]):int(seg_block_indptr[s + 1])].long()
    return data[name][blocks].flatten(0, 1)[:int(seg_len[s])]


def kv_bytes(n_tokens: int, dtype) -> int:
    return 2 * n_tokens * KV_HEADS * DIM * torch.finfo(dtype).bits // 8


def report(benchmark, name: str, rows: int, moved: int, flops: float, times: dict, others: dict) -> None:
    """times: the torch baselines' medians (the headline ratio is against the fastest); others: further lines."""
    native_s = benchmark.stats.stats.median
    best = min(times, key=times.get)
    floor_s, limit = roofline(moved, flops)
    every = {**times, **others}
    benchmark.extra_info.update(
        threads=torch.get_num_threads(), native_rows_per_s=rows / native_s, native_gb_per_s=moved / native_s / 1e9,
        baseline=best, baseline_seconds=every, ratio_vs_torch=times[best] / native_s,
        ratios={key: s / native_s for key, s in every.items()}, limit=limit,
        memory_read_gb_per_s=memory_read_gb_per_s(), matmul_gflop_per_s=matmul_gflop_per_s(),
        fraction_of_limit=floor_s / native_s)
    rest = "  ".join(f"{key} {s / native_s:5.2f}x" for key, s in every.items() if key != best)
    rest = f"  ({rest})" if rest else ""
    print(f"\n{name} ({torch.get_num_threads()} threads): paged_attention {native_s * 1e6:8.1f} us "
          f"({moved / native_s / 1e9:5.1f} GB/s, {floor_s / native_s:4.0%} of the {limit} limit)  vs best torch "
          f"({best}) {times[best] / native_s:5.2f}x{rest}")


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp32"])
def test_decode_throughput(benchmark, dtype, block_size):
    data = layout([PROMPT, *OWN], [list(range(ROWS))] + [[r] for r in range(ROWS)], ROWS, block_size, dtype, seed=1)
    q, k_cache, v_cache = data["q"], data["k_cache"], data["v_cache"]
    plan = paged.Plan(*data["index"], scale=SCALE, backend="native")
    own_k = torch.zeros(ROWS, max(OWN), KV_HEADS, DIM, dtype=dtype)
    own_v = torch.zeros_like(own_k)
    for r in range(ROWS):
        own_k[r, :OWN[r]], own_v[r, :OWN[r]] = tokens(data, "k_cache", r + 1), tokens(data, "v_cache", r + 1)
    prefix_k, prefix_v = tokens(data, "k_cache", 0), tokens(data, "v_cache", 0)
    prefix_plan = prefix.Plan(torch.tensor([0, PROMPT]), torch.zeros(ROWS, dtype=torch.int64), torch.arange(ROWS),
                              torch.tensor(OWN), scale=SCALE, backend="native")

    def native():
        return plan.run(q, k_cache, v_cache)

    def prefix_kernel():
        return prefix_plan.run(q, prefix_k, prefix_v, own_k, own_v)

    baselines = torch_baselines(q, prefix_k, prefix_v, own_k, own_v, torch.tensor(OWN), SCALE)
    want = ref.paged_attention(q, k_cache, v_cache, *data["index"], None, None, None, SCALE)
    for fn in [native, prefix_kernel, *baselines.values()]:  # validate every side before timing
        torch.testing.assert_close(fn(), want, **TOLERANCES[dtype])

    benchmark.pedantic(native, rounds=200, warmup_rounds=5)
    if benchmark.disabled:  # --benchmark-disable (the default addopts): validated, not timed
        return
    moved = kv_bytes(PROMPT + sum(OWN), dtype) + 2 * q.numel() * q.element_size()
    benchmark.extra_info.update(dtype=str(dtype).removeprefix("torch."), block_size=block_size, rows=ROWS)
    flops = 4 * HEADS * DIM * (ROWS * PROMPT + sum(OWN))
    times = {name: median_seconds(fn, 50) for name, fn in baselines.items()}
    others = {"prefix_attention kernel": median_seconds(prefix_kernel, 200)}
    if paged.cpu_kernel(dtype, DIM, block_size) == "amx":
        vector = paged.Plan(*data["index"], scale=SCALE, backend="native", cpu_kernel="vector")
        torch.testing.assert_close(vector.run(q, k_cache, v_cache), want, **TOLERANCES[dtype])
        others["vector build"] = median_seconds(lambda: vector.run(q, k_cache, v_cache), 200)
    report(benchmark, f"decode {str(dtype)[6:]:8s} B={block_size:2d}", ROWS, moved, flops, times, others)


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp32"])
def test_causal_prefill_throughput(benchmark, dtype, block_size):
    data = layout([CONTEXT, CHUNK], [list(range(CHUNK))] * 2, CHUNK, block_size, dtype, seed=2)
    q, k_cache, v_cache = data["q"], data["k_cache"], data["v_cache"]
    causal = {"causal": torch.tensor([False, True]), "q_pos": CONTEXT + torch.arange(CHUNK, dtype=torch.int32),
              "seg_start": i32([0, CONTEXT])}
    plan = paged.Plan(*data["index"], **causal, scale=SCALE, backend="native")
    # (1, Hkv, L, D), contiguous as a torch user's cache holds it
    keys, values = (torch.cat([tokens(data, name, 0), tokens(data, name, 1)]).transpose(0, 1)[None].contiguous()
                    for name in ("k_cache", "v_cache"))
    queries = q.transpose(0, 1)[None].contiguous()  # (1, Hq, CHUNK, D)
    mask = torch.arange(CONTEXT + CHUNK)[None, :] <= causal["q_pos"][:, None]  # (CHUNK, CONTEXT + CHUNK)

    def native():
        return plan.run(q, k_cache, v_cache)

    def baseline():
        return F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask, scale=SCALE, enable_gqa=True)

    want = ref.paged_attention(q, k_cache, v_cache, *data["index"], *causal.values(), SCALE)
    torch.testing.assert_close(native(), want, **TOLERANCES[dtype])
    torch.testing.assert_close(baseline()[0].transpose(0, 1), want, **TOLERANCES[dtype])

    benchmark.pedantic(native, rounds=20, warmup_rounds=2)
    if benchmark.disabled:  # --benchmark-disable (the default addopts): validated, not timed
        return
    moved = kv_bytes(CONTEXT + CHUNK, dtype) + 2 * q.numel() * q.element_size()
    benchmark.extra_info.update(dtype=str(dtype).removeprefix("torch."), block_size=block_size, rows=CHUNK)
    flops = 4 * HEADS * DIM * (CHUNK * CONTEXT + CHUNK * (CHUNK + 1) // 2)  # row i attends CONTEXT + i + 1 keys
    others = {}
    if paged.cpu_kernel(dtype, DIM, block_size) == "amx":
        vector = paged.Plan(*data["index"], **causal, scale=SCALE, backend="native", cpu_kernel="vector")
        torch.testing.assert_close(vector.run(q, k_cache, v_cache), want, **TOLERANCES[dtype])
        others["vector build"] = median_seconds(lambda: vector.run(q, k_cache, v_cache), 20)
    report(benchmark, f"prefill {str(dtype)[6:]:8s} B={block_size:2d}", CHUNK, moved, flops,
           {"sdpa": median_seconds(baseline, 20)}, others)
