"""linear throughput: decode-like products y = x W^T at SmolLM2-135M's weight matrices (bfloat16), M in {1, 16, 64}
rows (one per live sample).

Native: `spct.ops.linear.Linear` (the packed kernel this CPU runs: AMX tiles, else AVX-512 BF16, else AVX2 FMAs;
skipped on CPUs with none), the weight packed before timing as the runner packs it once. Each call reads a cold copy
of the weight (512 MiB of copies in turn), as a decode step reads each layer's matrices from memory. Baseline:
torch.nn.functional.linear on the same bf16 tensors, what the runner would call otherwise. Both are validated
against a float32 product before timing and timed in the same test; extra_info holds GB/s (the weight, x and y bytes
each call must move), the ratio of medians, and the fraction of the roofline: the larger of the bytes at the
memory-read speed and the FLOPs at the matmul speed (bf16 or fp32, the faster), both measured in the same run
(`timing.memory_read_gb_per_s`, `timing.matmul_gflop_per_s`), over the native time.

    python -m pytest bench/bench_linear.py --benchmark-enable -s
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from spct.ops.linear import Linear, native_bf16_available
from timing import TOLERANCES, matmul_gflop_per_s, median_seconds, memory_read_gb_per_s

# (N, K) of SmolLM2-135M's matrices: hidden 576, intermediate 1536, 9 query and 3 KV heads of 64, vocabulary 49152
MATRICES = {"qkv": (960, 576), "o": (576, 576), "gate_up": (3072, 576), "down": (576, 1536), "lm_head": (49152, 576)}
ROWS = [1, 16, 64]
COLD_BYTES = 512 << 20  # more than any last-level cache here


@pytest.mark.skipif(not native_bf16_available(torch.device("cpu")),
                    reason="this CPU runs no native bf16 linear (it needs AVX2; Linear is torch's there)")
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("matrix", list(MATRICES))
def test_linear_throughput(benchmark, matrix, rows):
    n, k = MATRICES[matrix]
    g = torch.Generator().manual_seed(n + k + rows)
    weight = (torch.randn((n, k), generator=g) / k**0.5).bfloat16()
    x = torch.randn((rows, k), generator=g).bfloat16()
    lin = Linear(weight)
    assert lin.native
    # decode reads every matrix of the model once per step, from memory, not from cache: each call takes the next of
    # enough copies of the weight (COLD_BYTES in all) that none is still cached when its turn comes again
    copies = max(1, -(-COLD_BYTES // weight.nbytes))
    weights = [weight.clone() for _ in range(copies)]
    lins = [Linear(w) for w in weights]
    turn = itertools.count()

    def native():
        return lins[next(turn) % copies](x)

    def torch_linear():
        return F.linear(x, weights[next(turn) % copies])

    want = F.linear(x.float(), weight.float()).bfloat16()  # validate both before timing
    torch.testing.assert_close(lin(x).float(), want.float(), **TOLERANCES[torch.bfloat16])
    torch.testing.assert_close(F.linear(x, weight).float(), want.float(), **TOLERANCES[torch.bfloat16])

    benchmark.pedantic(native, rounds=max(20, 2000 // rows), warmup_rounds=3)
    if benchmark.disabled:  # --benchmark-disable (the default addopts): validated, not timed
        return
    torch_s = median_seconds(torch_linear, max(20, 2000 // rows))
    native_s = benchmark.stats.stats.median
    moved = (n * k + rows * (k + n)) * weight.element_size()  # the weight once, x in, y out
    floor_s = max(moved / (memory_read_gb_per_s() * 1e9), 2 * rows * n * k / (matmul_gflop_per_s() * 1e9))
    benchmark.extra_info.update(
        matrix=matrix, n=n, k=k, rows=rows, native_gb_per_s=moved / native_s / 1e9,
        torch_gb_per_s=moved / torch_s / 1e9, ratio_vs_torch=torch_s / native_s,
        memory_read_gb_per_s=memory_read_gb_per_s(), matmul_gflop_per_s=matmul_gflop_per_s(),
        fraction_of_roofline=floor_s / native_s,
    )
    print(f"\n{matrix:8s} ({n:5d} x {k:4d}) M={rows:2d} native {native_s * 1e6:8.1f} us "
          f"({moved / native_s / 1e9:5.1f} GB/s, {floor_s / native_s:4.0%} of the roofline)  torch "
          f"{torch_s * 1e6:8.1f} us ({moved / torch_s / 1e9:5.1f} GB/s)  ratio {torch_s / native_s:5.2f}x")
