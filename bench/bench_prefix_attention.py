"""prefix_attention throughput: k sample rows decoding over ONE shared ~1,000-token prompt, SmolLM2-135M shapes
(Hq 9, Hkv 3, D 64), 128 own tokens per row, k in {1, ..., 32}, bf16 and fp32.

Native: the public spct.prefix_attention (checks included) reading the prompt's KV once for all k rows. Baseline:
what transformers does for k samples - k separate caches, each a copy of the prompt KV plus the sample's own
tokens, through torch.nn.functional.scaled_dot_product_attention (one query per sample, GQA in the call). The
copies are made before timing (they live in the cache); only the attention call is timed. Both are validated
against the reference (spct.ops.ref.prefix_attention) and timed in the same test; extra_info holds rows/s,
GB/s (the KV bytes each side must read) and the ratio of medians.

    python -m pytest bench/bench_prefix_attention.py --benchmark-enable -s
"""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

import spct
from spct.ops.ref import prefix_attention as ref
from timing import TOLERANCES, median_seconds

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


def per_sample_caches(prefix: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """(k, Hkv, PROMPT + OWN, D): each sample's own copy of the prompt KV followed by its tokens (HF layout)."""
    k = own.shape[0]
    return torch.cat([prefix.unsqueeze(0).expand(k, -1, -1, -1), own], dim=1).transpose(1, 2).contiguous()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("k", KS)
def test_prefix_attention_throughput(benchmark, k, dtype):
    args = make_inputs(k, dtype)
    q, prefix_k, prefix_v, _, _, own_k, own_v, _, _ = args
    keys, values = per_sample_caches(prefix_k, own_k), per_sample_caches(prefix_v, own_v)
    queries = q.unsqueeze(2)  # (k, Hq, 1, D)

    def native():
        return spct.prefix_attention(*args, scale=SCALE, backend="native")

    def sdpa():
        return F.scaled_dot_product_attention(queries, keys, values, scale=SCALE, enable_gqa=True)

    want = ref.prefix_attention(*args, SCALE)  # validate both before timing
    torch.testing.assert_close(native(), want, **TOLERANCES[dtype])
    torch.testing.assert_close(sdpa().squeeze(2), want, **TOLERANCES[dtype])

    benchmark.pedantic(native, rounds=max(20, 400 // k), warmup_rounds=3)
    if benchmark.disabled:  # --benchmark-disable (the default addopts): validated, not timed
        return
    sdpa_s = median_seconds(sdpa, max(10, 200 // k))
    native_s = benchmark.stats.stats.median
    item = q.element_size()
    kv_row = 2 * KV_HEADS * DIM * item  # bytes of one token's keys and values
    io = 2 * q.numel() * item  # q in, out
    native_bytes = (PROMPT + k * OWN) * kv_row + io
    sdpa_bytes = k * (PROMPT + OWN) * kv_row + io
    benchmark.extra_info.update(
        k=k, dtype=str(dtype).removeprefix("torch."), prompt=PROMPT, own=OWN,
        native_rows_per_s=k / native_s, sdpa_rows_per_s=k / sdpa_s,
        native_gb_per_s=native_bytes / native_s / 1e9, sdpa_gb_per_s=sdpa_bytes / sdpa_s / 1e9,
        ratio_vs_sdpa=sdpa_s / native_s,
    )
    print(f"\n{benchmark.extra_info['dtype']:8s} k={k:2d} native {native_s * 1e6:8.1f} us "
          f"({native_bytes / native_s / 1e9:5.1f} GB/s)  sdpa x k copies {sdpa_s * 1e6:8.1f} us "
          f"({sdpa_bytes / sdpa_s / 1e9:5.1f} GB/s)  ratio {sdpa_s / native_s:5.2f}x")
