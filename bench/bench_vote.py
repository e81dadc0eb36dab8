"""vote throughput: spct.vote (native) against vectorised torch, B = 4,096 items, n in {2, 4}, k in {1, ..., 32}.

Shuffled samples (perm) throughout; "meta" adds Meta RM scores with k_meta = k / 2. The native side is the public
call (input checks included). The headline baseline is the vote a user writes in vectorised torch: scatter each
sample's scores back to the original order, mask the invalid samples (and, with a Meta RM, keep the k_meta best
rated by topk), sum over k, argmax (no seeded tie-break). The reference function `spct.ops.ref.vote.vote` (one
sample at a time, the oracle the native result is validated against) is printed as "vs oracle" only.

The physical limit: a vote must read its inputs once (scores, validity, permutations, Meta RM scores), so its floor
is their bytes at this machine's memory read speed (`timing.memory_read_gb_per_s`, measured in the same run).
extra_info holds items/s of each side, the ratios of medians and the fraction of the limit.

    python -m pytest bench/bench_vote.py --benchmark-enable -s
"""

from __future__ import annotations

import pytest
import torch

import spct
from spct.ops.ref import vote as ref
from timing import median_seconds, memory_read_gb_per_s

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


def torch_vote(scores, valid, perm, meta_scores=None, k_meta=None, seed=None):
    """The vote in vectorised torch (see the module docstring): (rewards (B, n), best (B,))."""
    original = torch.empty_like(scores).scatter_(2, perm, scores)
    used = valid
    if meta_scores is not None:
        top = meta_scores.masked_fill(~valid, float("-inf")).topk(k_meta, dim=1).indices
        used = torch.zeros_like(valid).scatter_(1, top, True) & valid
    rewards = (original * used[..., None]).sum(1)
    rewards = rewards.masked_fill(~used.any(1, keepdim=True), float("nan"))
    return rewards, rewards.nan_to_num(float("-inf")).argmax(-1)


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

    rewards, _ = torch_vote(**inputs)  # the baseline does the same sums (integer scores: exact)
    torch.testing.assert_close(rewards, want[0], rtol=0, atol=0, equal_nan=True)

    benchmark.pedantic(native, rounds=20, warmup_rounds=2)
    if benchmark.disabled:  # --benchmark-disable (the default addopts): validated, not timed
        return
    torch_s = median_seconds(lambda: torch_vote(**inputs), 10)
    ref_s = median_seconds(reference, 5)
    native_s = benchmark.stats.stats.median
    read = sum(t.numel() * t.element_size() for t in inputs.values() if isinstance(t, torch.Tensor))
    floor_s = read / (memory_read_gb_per_s() * 1e9)
    benchmark.extra_info.update(k=k, n=n, mode=mode, items=ITEMS, native_items_per_s=ITEMS / native_s,
                                torch_items_per_s=ITEMS / torch_s, reference_items_per_s=ITEMS / ref_s,
                                ratio_vs_torch=torch_s / native_s, ratio_vs_oracle=ref_s / native_s,
                                memory_read_gb_per_s=memory_read_gb_per_s(), fraction_of_limit=floor_s / native_s)
    print(f"\n{mode:4s} k={k:2d} n={n} native {native_s * 1e3:7.3f} ms ({floor_s / native_s:4.0%} of the "
          f"{memory_read_gb_per_s():.0f} GB/s read limit)  vs vectorised torch {torch_s / native_s:5.2f}x  "
          f"(vs oracle {ref_s / native_s:6.1f}x)")
