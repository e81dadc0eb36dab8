"""sample throughput: the native kernel against the best sampler a user writes in torch, timed in the same test.

Baselines:
- topk-first torch (the headline ratio): torch.topk(logits / T, top_k) first, then softmax, the top-p cut on the
  cumulative sum and torch.multinomial over the top_k candidates only (what a user writes for top-k + top-p);
- softmax over the whole vocabulary + sort + top-k/top-p masks + torch.multinomial (the recipe without top-k
  first, `spct.ops.ref.sample_multinomial`);
- the sort-based reference with the Philox draw (`spct.ops.ref.sample`): the oracle the native tokens are validated
  against, not a user's choice; its ratio is printed as "vs oracle" only.

The physical limit: a sampler must read the logits once, so its floor is N x V x 4 bytes at this machine's memory
read speed (`timing.memory_read_gb_per_s`, measured in the same run); "of limit" is that floor over the native
time. V = 49,152, N = 4k rows for k in {1, 2, 4, 8, 16, 32} (N = 128 at k = 32), top-k 50, top-p 0.9,
temperature 0.7. extra_info holds tokens/s of each side, the ratios of medians and the fraction of the limit.

    python -m pytest bench/bench_sample.py --benchmark-enable -s
"""

from __future__ import annotations

import pytest
import torch

import spct.ops.sample as sample_op
from spct.ops.ref import sample as ref
from timing import median_seconds, memory_read_gb_per_s

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

    def topk_first():
        top, index = torch.topk(x / PARAMS["temperature"], PARAMS["top_k"], dim=-1)
        probs = torch.softmax(top, -1)
        probs = probs.masked_fill(probs.cumsum(-1) - probs > PARAMS["top_p"], 0.0)
        return index.gather(1, torch.multinomial(probs, 1)).squeeze(1)

    def multinomial():
        return ref.sample_multinomial(x, per_row["temperature"], per_row["top_k"], per_row["top_p"],
                                      per_row["min_p"])

    # Validate before timing: the same tokens as the reference.
    assert torch.equal(native(), reference())

    benchmark.pedantic(native, rounds=max(10, 640 // k), warmup_rounds=3)
    if benchmark.disabled:  # --benchmark-disable (the default addopts): validated, not timed
        return
    rounds = 5 if rows <= 32 else 3
    topk_s = median_seconds(topk_first, max(rounds, 10))
    reference_s = median_seconds(reference, rounds)
    multinomial_s = median_seconds(multinomial, rounds)
    native_s = benchmark.stats.stats.median
    floor_s = x.numel() * x.element_size() / (memory_read_gb_per_s() * 1e9)
    benchmark.extra_info.update(
        k=k, rows=rows, vocab=VOCAB, native_tokens_per_s=rows / native_s, topk_first_tokens_per_s=rows / topk_s,
        multinomial_tokens_per_s=rows / multinomial_s, reference_tokens_per_s=rows / reference_s,
        native_gb_per_s=x.numel() * x.element_size() / native_s / 1e9, memory_read_gb_per_s=memory_read_gb_per_s(),
        fraction_of_limit=floor_s / native_s, ratio_vs_topk_first=topk_s / native_s,
        ratio_vs_multinomial=multinomial_s / native_s, ratio_vs_oracle=reference_s / native_s,
    )
    print(f"\nN={rows:4d} V={VOCAB} native {native_s * 1e3:7.3f} ms ({floor_s / native_s:4.0%} of the "
          f"{memory_read_gb_per_s():.0f} GB/s read limit)  vs topk-first torch {topk_s / native_s:5.2f}x  "
          f"vs softmax+sort+multinomial {multinomial_s / native_s:5.1f}x  (vs oracle {reference_s / native_s:5.1f}x)")
