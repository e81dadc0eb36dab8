"""sample throughput: the native kernel vs the torch reference (the oracle: sort-based, Philox draw) and the
common torch recipe (softmax + sort-based top-k/top-p + torch.multinomial), all timed in the same test.

V = 49,152 (a Llama-3-style 48k vocabulary), N = 4k rows for k in {1, 2, 4, 8, 16, 32} (N = 128 at k = 32, the
target: native >= 3x the reference there), top-k 50, top-p 0.9, temperature 0.7. extra_info holds tokens/s of
each side and the ratios of medians; every configuration is validated (native == reference, token for token)
before it is timed.

    python -m pytest bench/bench_sample.py --benchmark-enable -s
"""

from __future__ import annotations

import pytest
import torch

import spct.ops.sample as sample_op
from spct.ops.ref import sample as ref
from timing import median_seconds

VOCAB = 49_152
KS = [1, 2, 4, 8, 16, 32]
PARAMS = dict(temperature=0.7, top_k=50, top_p=0.9, min_p=0.0)


@pytest.fixture(scope="module")
def logits() -> torch.Tensor:
    """(128, V) float32 logits shaped like a language model's: a few strong candidates over a long tail."""
    gen = torch.Generator().manual_seed(0)
    return torch.randn(4 * max(KS), VOCAB, generator=gen) * 2.5


@pytest.mark.parametrize("k", KS)
def test_sample_throughput(benchmark, logits, k):
    rows = 4 * k
    x = logits[:rows]
    seed, offset = torch.arange(rows), torch.full((rows,), 17)
    per_row = {name: torch.full((rows,), value, dtype=torch.float32) for name, value in PARAMS.items()}
    per_row["top_k"] = per_row["top_k"].to(torch.int64)

    def native():
        return sample_op.sample(x, **PARAMS, seed=seed, offset=offset, backend="native")

    def reference():
        return ref.sample(x, per_row["temperature"], per_row["top_k"], per_row["top_p"], per_row["min_p"], seed,
                          offset)[0]

    def multinomial():
        return ref.sample_multinomial(x, per_row["temperature"], per_row["top_k"], per_row["top_p"],
                                      per_row["min_p"])

    # Validate before timing: the same tokens as the reference.
    assert torch.equal(native(), reference())

    benchmark.pedantic(native, rounds=max(10, 640 // k), warmup_rounds=3)
    if benchmark.disabled:  # --benchmark-disable (the default addopts): validated, not timed
        return
    rounds = 5 if rows <= 32 else 3
    reference_s = median_seconds(reference, rounds)
    multinomial_s = median_seconds(multinomial, rounds)
    native_s = benchmark.stats.stats.median
    benchmark.extra_info.update(
        k=k,
        rows=rows,
        vocab=VOCAB,
        native_tokens_per_s=rows / native_s,
        reference_tokens_per_s=rows / reference_s,
        multinomial_tokens_per_s=rows / multinomial_s,
        native_gb_per_s=x.numel() * x.element_size() / native_s / 1e9,
        ratio_vs_reference=reference_s / native_s,
        ratio_vs_multinomial=multinomial_s / native_s,
    )
    print(f"\nN={rows:4d} V={VOCAB} native {rows / native_s:10.0f} tok/s ({x.numel() * 4 / native_s / 1e9:5.1f} GB/s)"
          f"  reference {rows / reference_s:8.0f} tok/s  ratio {reference_s / native_s:6.1f}x"
          f"  (softmax+sort+multinomial {rows / multinomial_s:8.0f} tok/s, ratio {multinomial_s / native_s:5.1f}x)")
