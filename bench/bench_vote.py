"""vote throughput: spct.vote (native) vs the torch reference, B = 4,096 items, n in {2, 4}, k in {1, ..., 32}.

Shuffled samples (perm) throughout; "meta" adds Meta RM scores with k_meta = k / 2. The native side is the public
call (input checks included); the baseline is the reference function `spct.ops.ref.vote.vote` itself. Both are
timed in the same test; extra_info holds items/s of each and the ratio of medians.

    python -m pytest bench/bench_vote.py --benchmark-enable -s
"""

from __future__ import annotations

import pytest
import torch

import spct
from spct.ops.ref import vote as ref
from timing import median_seconds

ITEMS = 4096
KS = [1, 2, 4, 8, 16, 32]


def make_inputs(k: int, n: int, meta: bool) -> dict:
    g = torch.Generator().manual_seed(k * 10 + n)
    scores = torch.randint(1, 11, (ITEMS, k, n), generator=g).float()
    valid = torch.rand((ITEMS, k), generator=g) > 0.1
    perm = torch.rand((ITEMS, k, n), generator=g).argsort(-1)
    kwargs = {"perm": perm, "seed": 1}
    if meta:
        kwargs.update(meta_scores=torch.randn((ITEMS, k), generator=g), k_meta=max(1, k // 2))
    return {"scores": scores, "valid": valid, **kwargs}


@pytest.mark.parametrize("mode", ["vote", "meta"])
@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize("k", KS)
def test_vote_throughput(benchmark, k, n, mode):
    inputs = make_inputs(k, n, mode == "meta")
    native = lambda: spct.vote(**inputs, backend="native")  # noqa: E731
    args = [inputs.get(name) for name in ("scores", "valid", "perm", "meta_scores", "k_meta")]
    reference = lambda: ref.vote(*args, None, inputs["seed"])  # noqa: E731
    got, want = native(), reference()  # validate before timing
    assert torch.equal(got.best, want[2]) and torch.equal(got.num_used, want[1])
    torch.testing.assert_close(got.rewards, want[0], rtol=0, atol=0, equal_nan=True)

    benchmark.pedantic(native, rounds=20, warmup_rounds=2)
    if benchmark.disabled:  # --benchmark-disable (the default addopts): validated, not timed
        return
    ref_s = median_seconds(reference, 5)
    native_s = benchmark.stats.stats.median
    benchmark.extra_info.update(k=k, n=n, mode=mode, items=ITEMS, native_items_per_s=ITEMS / native_s,
                                reference_items_per_s=ITEMS / ref_s, ratio_vs_reference=ref_s / native_s)
    print(f"\n{mode:4s} k={k:2d} n={n} native {ITEMS / native_s:10.0f} items/s  reference {ITEMS / ref_s:9.0f} "
          f"items/s  ratio {ref_s / native_s:6.1f}x")
