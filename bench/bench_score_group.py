"""score_group throughput: the native token masks vs the Python reference (`spct.ops.ref.score_group`).

One decoding step of k forced samples (grm/grammar.py's ForceScores): each sample holds its own prefix of a score
group "a, b}" (n = 2 integers in [1, 10]) as SmolLM2 token ids, and asks for the tokens allowed next, over the
default model's byte table (V = 49,152). k in {1, 2, 4, 8, 16, 32}. The native side is the public call (input
checks included); the baseline is the reference function itself. Every configuration is validated (the same
masks, viable and closed flags) before it is timed; extra_info holds masks/s of each and the ratio of medians.

    python -m pytest bench/bench_score_group.py --benchmark-enable -s
"""

from __future__ import annotations

import random

import pytest

from spct.ops.ref import score_group as ref
from spct.ops.score_group import score_group_allowed
from spct.ops.token_bytes import TokenBytes
from timing import median_seconds

KS = [1, 2, 4, 8, 16, 32]
N, LO, HI = 2, 1, 10


@pytest.fixture(scope="module")
def vocab(smollm2_tokenizer) -> TokenBytes:
    return TokenBytes.from_tokenizer(smollm2_tokenizer)


@pytest.fixture(scope="module")
def prefixes(smollm2_tokenizer) -> list[list[int]]:
    """max(KS) group prefixes as token ids: a random valid group "a, b}" cut at a random character."""
    rng = random.Random(0)
    out = []
    for _ in range(max(KS)):
        group = ", ".join(str(rng.randint(LO, HI)) for _ in range(N)) + "}"
        text = group[: rng.randint(0, len(group) - 1)]  # never closed: the mask is the work
        out.append(smollm2_tokenizer(text, add_special_tokens=False).input_ids if text else [])
    return out


@pytest.mark.parametrize("k", KS)
def test_score_group_throughput(benchmark, vocab, prefixes, k):
    groups = prefixes[:k]

    def native():
        return [score_group_allowed(vocab, g, n=N, lo=LO, hi=HI, backend="native") for g in groups]

    def reference():
        return [ref.score_group_allowed(vocab.data, vocab.offsets, g, N, LO, HI) for g in groups]

    for got, want in zip(native(), reference()):  # validate before timing
        assert got[0].tolist() == want[0].tolist() and got[1:] == want[1:]

    benchmark.pedantic(native, rounds=max(5, 320 // k), warmup_rounds=2)
    if benchmark.disabled:  # --benchmark-disable (the default addopts): validated, not timed
        return
    ref_s = median_seconds(reference, 5)
    native_s = benchmark.stats.stats.median
    benchmark.extra_info.update(k=k, n=N, lo=LO, hi=HI, vocab=len(vocab), native_masks_per_s=k / native_s,
                                reference_masks_per_s=k / ref_s, ratio_vs_reference=ref_s / native_s)
    print(f"\nk={k:2d} native {k / native_s:10.0f} masks/s  reference {k / ref_s:8.0f} masks/s  "
          f"ratio {ref_s / native_s:6.1f}x")
