"""prefix_attention throughput: k sample rows decoding over ONE shared ~1,000-token prompt, SmolLM2-135M shapes
(Hq 9, Hkv 3, D 64), 128 own tokens per row, k in {1, ..., 32}, bf16 and fp32.

Native: the public spct.prefix_attention (checks included) reading the prompt's KV once for all k rows.

Baselines, the best a user writes in torch (`torch_baselines`; every cache layout is built before timing, as a
cache would hold it; only the attention is timed). The headline ratio is against the fastest of the three,
measured in the same run:
- "sdpa x k copies": what transformers does for k samples - k separate caches, each a copy of the prompt KV plus
  the sample's own tokens, one torch.nn.functional.scaled_dot_product_attention call (one query per sample, GQA in
  the call);
- "sdpa, one masked call": the prompt stored once and every sample's own tokens after it, one sdpa call for all k
  queries with a mask that lets each see the prompt and its own tokens (reads the prompt once, but scores every
  query against every sample's tokens);
- "shared-prompt matmul": the queries of all k samples against the prompt as ONE batched matmul per KV head (the
  prompt read once, GQA by folding the query heads into rows), their own tokens as a batched matmul, one softmax
  over both in float32, and the two weighted sums.

The physical limit (a roofline, as in bench_linear): the larger of the KV bytes the op must read (the prompt once,
each sample's own tokens, q and out) at this machine's memory read speed and the FLOPs (4 x D per query head and
key) at its matmul speed (bf16 or fp32, the faster), both measured in the same run
(`timing.memory_read_gb_per_s`, `timing.matmul_gflop_per_s`); "limit" names the one that binds. For fp32 that speed
can be a higher compute limit than fp32 reaches, so the fraction is a lower bound there. Everything is validated
against the reference (spct.ops.ref.prefix_attention) before timing. extra_info holds rows/s, GB/s, each baseline's
time, the ratios and the fraction of the limit.

    python -m pytest bench/bench_prefix_attention.py --benchmark-enable -s
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import spct
from spct.ops.ref import prefix_attention as ref
from timing import TOLERANCES, matmul_gflop_per_s, median_seconds, memory_read_gb_per_s

PROMPT, OWN = 1000, 128
HEADS, KV_HEADS, DIM = 9, 3, 64
KS = [1, 2, 4, 8, 16, 32]
SCALE = DIM**-0.5


def make_inputs(k: int, dtype: torch.dtype) -> tuple:
    g = torch.Generator().manual_seed(k)
    randn = lambda *shape: torch.randn(*shape, generator=g).to(dtype)  # noqa: E731
    q = randn(k, HEADS, DIM)
    prefix_k, prefix_v = randn(PROMPT, KV_HEADS, DIM), randn(PROMPT, KV_HEADS, DIM)
    own_k, own_v = randn(k, OWN, KV_HEADS, DIM), randn(k, OWN, KV_HEADS, DIM)
    indptr = torch.tensor([0, PROMPT])
    index, slots, lengths = torch.zeros(k, dtype=torch.int64), torch.arange(k), torch.full((k,), OWN)
    return q, prefix_k, prefix_v, indptr, index, own_k, own_v, slots, lengths


def torch_baselines(q, prefix_k, prefix_v, own_k, own_v, lengths, scale) -> dict:
    """{name: callable returning (k, Hq, D)}: shared-prompt decode in torch (module docstring), for q (k, Hq, D),
    the prompt's prefix_k, prefix_v (P, Hkv, D) and sample r's own_k[r, :lengths[r]] of own_k, own_v (k, T, Hkv, D).
    The layouts are built here, before any timing."""
    rows, heads, dim = q.shape
    prompt, (_, own, kv_heads, _) = prefix_k.shape[0], own_k.shape
    group = heads // kv_heads
    seen = torch.arange(own)[None, :] < lengths[:, None]  # (k, T): the own slots holding tokens
    ragged = not bool(seen.all())
    # k copies (HF layout): (k, Hkv, P + T, D)
    copy_k, copy_v = (torch.cat([p.unsqueeze(0).expand(rows, -1, -1, -1), o], 1).transpose(1, 2).contiguous()
                      for p, o in ((prefix_k, own_k), (prefix_v, own_v)))
    copy_mask = torch.cat([torch.ones(rows, prompt, dtype=torch.bool), seen], 1)[:, None, None] if ragged else None
    # one sequence: the prompt, then every sample's own tokens: (1, Hkv, P + k T, D)
    one_k, one_v = (torch.cat([p, o.flatten(0, 1)]).transpose(0, 1)[None].contiguous()
                    for p, o in ((prefix_k, own_k), (prefix_v, own_v)))
    own_of = torch.eye(rows, dtype=torch.bool).repeat_interleave(own, 1) & seen.flatten()[None]  # (k, k T)
    one_mask = torch.cat([torch.ones(rows, prompt, dtype=torch.bool), own_of], 1)
    # shared prompt: (Hkv, P, D) once, own tokens (k, Hkv, T, D)
    shared_k, shared_v = prefix_k.transpose(0, 1).contiguous(), prefix_v.transpose(0, 1).contiguous()
    mine_k, mine_v = own_k.transpose(1, 2).contiguous(), own_v.transpose(1, 2).contiguous()
    bias = F.pad(torch.zeros(rows, 1, 1, own).masked_fill(~seen[:, None, None], float("-inf")), (prompt, 0))

    def copies():
        return F.scaled_dot_product_attention(q.unsqueeze(2), copy_k, copy_v, attn_mask=copy_mask, scale=scale,
                                              enable_gqa=True).squeeze(2)

    def one_call():
        out = F.scaled_dot_product_attention(q.transpose(0, 1)[None], one_k, one_v, attn_mask=one_mask, scale=scale,
                                             enable_gqa=True)
        return out[0].transpose(0, 1)

    def shared_matmul():
        qg = q.view(rows, kv_heads, group, dim)
        to_prompt = qg.permute(1, 0, 2, 3).reshape(kv_heads, rows * group, dim) @ shared_k.transpose(1, 2)
        to_prompt = to_prompt.view(kv_heads, rows, group, prompt).permute(1, 0, 2, 3)  # (k, Hkv, g, P)
        to_own = qg @ mine_k.transpose(2, 3)  # (k, Hkv, g, T)
        weights = (torch.cat([to_prompt, to_own], -1).float() * scale + bias).softmax(-1).to(q.dtype)
        w_prompt = weights[..., :prompt].permute(1, 0, 2, 3).reshape(kv_heads, rows * group, prompt)
        out = (w_prompt @ shared_v).view(kv_heads, rows, group, dim).permute(1, 0, 2, 3)
        return (out + weights[..., prompt:] @ mine_v).reshape(rows, heads, dim)

    return {"sdpa x k copies": copies, "sdpa, one masked call": one_call, "shared-prompt matmul": shared_matmul}


def roofline(moved: int, flops: float) -> tuple[float, str]:
    """(the op's floor in seconds, the limit that binds): moved bytes at the memory read speed or flops at the bf16
    matmul speed, whichever takes longer, both measured in this run."""
    memory_s = moved / (memory_read_gb_per_s() * 1e9)
    compute_s = flops / (matmul_gflop_per_s() * 1e9)
    return (memory_s, "memory") if memory_s >= compute_s else (compute_s, "compute")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("k", KS)
def test_prefix_attention_throughput(benchmark, k, dtype):
    args = make_inputs(k, dtype)
    q, prefix_k, prefix_v, _, _, own_k, own_v, _, lengths = args
    baselines = torch_baselines(q, prefix_k, prefix_v, own_k, own_v, lengths, SCALE)

    def native():
        return spct.prefix_attention(*args, scale=SCALE, backend="native")

    want = ref.prefix_attention(*args, SCALE)  # validate every side before timing
    torch.testing.assert_close(native(), want, **TOLERANCES[dtype])
    for fn in baselines.values():
        torch.testing.assert_close(fn(), want, **TOLERANCES[dtype])

    benchmark.pedantic(native, rounds=max(20, 400 // k), warmup_rounds=3)
    if benchmark.disabled:  # --benchmark-disable (the default addopts): validated, not timed
        return
    times = {name: median_seconds(fn, max(10, 200 // k)) for name, fn in baselines.items()}
    best = min(times, key=times.get)
    native_s = benchmark.stats.stats.median
    item = q.element_size()
    kv_row = 2 * KV_HEADS * DIM * item  # bytes of one token's keys and values
    moved = (PROMPT + k * OWN) * kv_row + 2 * q.numel() * item  # the prompt once, the own tokens, q in, out
    floor_s, limit = roofline(moved, 4 * k * HEADS * DIM * (PROMPT + OWN))
    benchmark.extra_info.update(
        k=k, dtype=str(dtype).removeprefix("torch."), prompt=PROMPT, own=OWN, native_rows_per_s=k / native_s,
        native_gb_per_s=moved / native_s / 1e9, baseline_seconds=times, baseline=best,
        ratio_vs_torch=times[best] / native_s, ratios={name: s / native_s for name, s in times.items()},
        limit=limit, memory_read_gb_per_s=memory_read_gb_per_s(), matmul_gflop_per_s=matmul_gflop_per_s(),
        fraction_of_limit=floor_s / native_s,
    )
    others = "  ".join(f"{name} {s / native_s:5.2f}x" for name, s in times.items() if name != best)
    print(f"\n{benchmark.extra_info['dtype']:8s} k={k:2d} native {native_s * 1e6:8.1f} us "
          f"({moved / native_s / 1e9:5.1f} GB/s, {floor_s / native_s:4.0%} of the {limit} limit)  vs best torch "
          f"({best}) {times[best] / native_s:5.2f}x  ({others})")
