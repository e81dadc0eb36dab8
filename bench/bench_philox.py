"""philox throughput: the sampler's uniforms (spct.ops.sample.philox_uniform, native) against the best a user writes
in torch, n in {4,096, 1,048,576} seeds and offsets; all sides timed in the same test, validated (bit for bit)
before timing.

Baselines:
- vectorised torch Philox4x32-10 (the headline ratio): the same counter-based generator on int64 tensors, one
  int64 multiply per 32 x 32 -> 64-bit product (it wraps in int64; both 32-bit halves stay exact), 10 rounds over
  all n counters at once. torch's own generator is not counter-based (no per-row seed and offset), so it cannot
  replace it;
- the reference `spct.ops.ref.philox.uniform` (four 16-bit partial products per multiply, written for clarity): the
  oracle the native uniforms are validated against, printed as "vs oracle" only;
- torch.rand(n): torch's own (not counter-based) generator, a different op, printed for scale only.

The physical limit: the op must read the seed and offset (16 bytes) and write one float32 per uniform, so its floor
is 20 bytes per uniform at this machine's memory read speed (`timing.memory_read_gb_per_s`, measured in the same
run). Philox is compute-bound in practice (10 rounds of two 32-bit multiplies per uniform), so this floor is a lower
bound and the fraction of it stays well under 100%. extra_info holds uniforms/s of each side, the ratios of medians
and the fraction of the limit.

    python -m pytest bench/bench_philox.py --benchmark-enable -s
"""

from __future__ import annotations

import pytest
import torch

import spct.ops.sample as sample_op
from spct.ops.ref import philox as ref_philox
from timing import median_seconds, memory_read_gb_per_s

M0, M1 = 0xD2511F53, 0xCD9E8D57  # Philox4x32's multipliers and Weyl key increments (Random123)
W0, W1 = 0x9E3779B9, 0xBB67AE85
MASK32 = 0xFFFFFFFF


def torch_uniform(seed: torch.Tensor, counter: torch.Tensor) -> torch.Tensor:
    """float32 uniforms in [0, 1) from Philox4x32-10 (counter (lo, hi, 0, 0), key (seed lo, seed hi)): word 0 >> 8
    times 2^-24, the way a user writes it in torch: int64 tensors, one multiply per product."""
    c0, c1 = counter & MASK32, counter >> 32
    c2 = c3 = torch.zeros_like(c0)
    k0, k1 = seed & MASK32, (seed >> 32) & MASK32
    for _ in range(10):
        p0, p1 = c0 * M0, c2 * M1  # below 2^64: wraps in int64, the high and low 32-bit words stay exact
        c0, c1, c2, c3 = ((p1 >> 32) & MASK32) ^ c1 ^ k0, p1 & MASK32, ((p0 >> 32) & MASK32) ^ c3 ^ k1, p0 & MASK32
        k0, k1 = (k0 + W0) & MASK32, (k1 + W1) & MASK32
    return (c0 >> 8).to(torch.float32) * (1.0 / (1 << 24))


@pytest.mark.parametrize("n", [4096, 1 << 20])
def test_philox_uniform_throughput(benchmark, n):
    gen = torch.Generator().manual_seed(n)
    seed = torch.randint(-(2**63), 2**63 - 1, (n,), generator=gen, dtype=torch.int64)
    offset = torch.arange(n, dtype=torch.int64)
    native = lambda: sample_op.philox_uniform(seed, offset, backend="native")  # noqa: E731
    reference = lambda: ref_philox.uniform(seed, offset)  # noqa: E731
    vectorised = lambda: torch_uniform(seed, offset)  # noqa: E731
    want = reference()  # validate before timing: native and the torch baseline give the oracle's bits
    assert torch.equal(native(), want) and torch.equal(vectorised(), want)

    benchmark.pedantic(native, rounds=20, warmup_rounds=2)
    if benchmark.disabled:  # --benchmark-disable (the default addopts): validated, not timed
        return
    torch_s = median_seconds(vectorised, 10 if n <= 4096 else 5)
    ref_s = median_seconds(reference, 5 if n <= 4096 else 3)
    rand_s = median_seconds(lambda: torch.rand(n), 20)
    native_s = benchmark.stats.stats.median
    moved = n * (seed.element_size() + offset.element_size() + 4)  # seed and offset in, a float32 out
    floor_s = moved / (memory_read_gb_per_s() * 1e9)
    benchmark.extra_info.update(
        n=n, native_uniforms_per_s=n / native_s, torch_uniforms_per_s=n / torch_s,
        reference_uniforms_per_s=n / ref_s, torch_rand_uniforms_per_s=n / rand_s, baseline="vectorised torch Philox",
        ratio_vs_torch=torch_s / native_s, ratio_vs_oracle=ref_s / native_s, ratio_vs_torch_rand=rand_s / native_s,
        limit="memory", memory_read_gb_per_s=memory_read_gb_per_s(), fraction_of_limit=floor_s / native_s,
    )
    print(f"\nn={n:8d} native {n / native_s:12.0f} uniforms/s ({floor_s / native_s:5.1%} of the "
          f"{memory_read_gb_per_s():.0f} GB/s read limit)  vs vectorised torch Philox {torch_s / native_s:6.1f}x  "
          f"(vs oracle {ref_s / native_s:6.1f}x; torch.rand, not counter-based: {rand_s / native_s:5.2f}x)")
