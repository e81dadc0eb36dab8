"""philox throughput: the sampler's uniforms (spct.ops.sample.philox_uniform, native) vs the torch reference
`spct.ops.ref.philox.uniform`, n in {4,096, 1,048,576} seeds and offsets; both timed in the same test, validated
(bit for bit) before timing. extra_info holds uniforms/s of each and the ratio of medians.

    python -m pytest bench/bench_philox.py --benchmark-enable -s
"""

from __future__ import annotations

import pytest
import torch

import spct.ops.sample as sample_op
from spct.ops.ref import philox as ref_philox
from timing import median_seconds


@pytest.mark.parametrize("n", [4096, 1 << 20])
def test_philox_uniform_throughput(benchmark, n):
    gen = torch.Generator().manual_seed(n)
    seed = torch.randint(-(2**63), 2**63 - 1, (n,), generator=gen, dtype=torch.int64)
    offset = torch.arange(n, dtype=torch.int64)
    native = lambda: sample_op.philox_uniform(seed, offset, backend="native")  # noqa: E731
    reference = lambda: ref_philox.uniform(seed, offset)  # noqa: E731
    assert torch.equal(native(), reference())  # validate before timing

    benchmark.pedantic(native, rounds=20, warmup_rounds=2)
    if benchmark.disabled:  # --benchmark-disable (the default addopts): validated, not timed
        return
    ref_s = median_seconds(reference, 5)
    native_s = benchmark.stats.stats.median
    benchmark.extra_info.update(n=n, native_uniforms_per_s=n / native_s, reference_uniforms_per_s=n / ref_s,
                                ratio_vs_reference=ref_s / native_s)
    print(f"\nn={n:8d} native {n / native_s:12.0f} uniforms/s  reference {n / ref_s:11.0f} uniforms/s  "
          f"ratio {ref_s / native_s:6.1f}x")
