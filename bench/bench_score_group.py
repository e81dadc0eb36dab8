"""score_group throughput: the native token masks against the masks a user writes in Python.

One decoding step of k forced samples (grm/grammar.py's ForceScores): each sample holds its own prefix of a score
group "a, b}" (n = 2 integers in [1, 10]) as SmolLM2 token ids, and asks for the tokens allowed next, over the
default model's byte table (V = 49,152). k in {1, 2, 4, 8, 16, 32}. The native side is the public call (input
checks included).

Baselines (`user_maskers`; what is per byte table or per (n, lo, hi) is built once before timing, as the native side
finds its candidate tokens once per byte table). The headline ratio is against the faster of the first two,
measured in the same run:
- "prefix set": every valid group enumerated once ((hi - lo + 1)^n of them: small ranges only), the set of their
  prefixes, then per sample one set lookup for the group so far and one per candidate token (the tokens made only
  of digits, ",", " " and "}", `spct.ops.ref.score_group.candidates`);
- "regex partial match": the group's regular expression, matched with the `regex` package's partial=True (any
  range) against the group so far and against it plus each candidate token;
- the reference function (`spct.ops.ref.score_group`, which finds the candidates over the whole byte table on every
  call): the oracle the masks are validated against, printed as "vs oracle" only.
Numpy or torch vectorisation buys nothing here: a mask tests a few dozen candidate strings.

The physical limit: the op must read the group's token bytes and the candidates (their ids, offsets and bytes) and
write the allowed ids, well under a KiB per sample, so its floor at this machine's memory read speed
(`timing.memory_read_gb_per_s`, measured in the same run) is tens of nanoseconds: the op is bound by its per-call
work, and the fraction of that limit is printed to show how far. Every configuration is validated (the same masks,
viable and closed flags) before it is timed; extra_info holds masks/s of each side, the ratios of medians and the
fraction of the limit.

    python -m pytest bench/bench_score_group.py --benchmark-enable -s
"""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
import regex

from spct.ops.ref import score_group as ref
from spct.ops.score_group import score_group_allowed
from spct.ops.token_bytes import TokenBytes
from timing import median_seconds, memory_read_gb_per_s

KS = [1, 2, 4, 8, 16, 32]
N, LO, HI = 2, 1, 10
NONE = np.zeros(0, dtype=np.int32)


def user_maskers(vocab: TokenBytes, n: int, lo: int, hi: int) -> dict:
    """{name: group ids -> (allowed ids, viable, closed)}: the Python baselines of the module docstring."""
    data, offsets = vocab.data, vocab.offsets
    table = [data[offsets[t]:offsets[t + 1]].tobytes() for t in range(len(offsets) - 1)]
    candidates = [(int(t), table[t].decode("ascii")) for t in ref.candidates(data, offsets)]
    prefixes = set()
    for values in itertools.product(range(lo, hi + 1), repeat=n):
        group = ", ".join(map(str, values)) + "}"
        prefixes.update(group[:i] for i in range(len(group) + 1))
    number = "(?:" + "|".join(str(v) for v in range(hi, lo - 1, -1)) + ")"
    pattern = regex.compile(", ".join([number] * n) + r"\}")

    def masker(keeps):
        def allowed(group):
            try:
                text = b"".join(table[t] for t in group).decode("ascii")
            except UnicodeDecodeError:
                return NONE, False, False
            if not keeps(text):
                return NONE, False, False
            if text.endswith("}"):
                return NONE, True, True
            return np.array([t for t, c in candidates if keeps(text + c)], dtype=np.int32), True, False
        return allowed

    return {"prefix set": masker(prefixes.__contains__),
            "regex partial match": masker(lambda text: pattern.fullmatch(text, partial=True) is not None)}


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


@pytest.fixture(scope="module")
def maskers(vocab) -> dict:
    return user_maskers(vocab, N, LO, HI)


def bytes_moved(vocab: TokenBytes, groups: list[list[int]], masks: list) -> int:
    """The bytes the op must move: per sample the candidates' ids, offsets (8 bytes each) and bytes; in all the
    groups' token bytes and the allowed ids written."""
    candidates = ref.candidates(vocab.data, vocab.offsets)
    candidate_bytes = int(vocab.offsets[candidates + 1].sum() - vocab.offsets[candidates].sum())
    group_bytes = sum(int(vocab.offsets[t + 1] - vocab.offsets[t]) for g in groups for t in g)
    return len(groups) * (len(candidates) * (4 + 8) + candidate_bytes) + group_bytes + 4 * sum(len(m[0]) for m in masks)


@pytest.mark.parametrize("k", KS)
def test_score_group_throughput(benchmark, vocab, prefixes, maskers, k):
    groups = prefixes[:k]

    def native():
        return [score_group_allowed(vocab, g, n=N, lo=LO, hi=HI, backend="native") for g in groups]

    def reference():
        return [ref.score_group_allowed(vocab.data, vocab.offsets, g, N, LO, HI) for g in groups]

    baselines = {name: (lambda fn=fn: [fn(g) for g in groups]) for name, fn in maskers.items()}
    wants = reference()
    for side in [native, *baselines.values()]:  # validate every side before timing
        for got, want in zip(side(), wants):
            assert got[0].tolist() == want[0].tolist() and got[1:] == want[1:]

    benchmark.pedantic(native, rounds=max(5, 320 // k), warmup_rounds=2)
    if benchmark.disabled:  # --benchmark-disable (the default addopts): validated, not timed
        return
    times = {name: median_seconds(fn, max(10, 320 // k)) for name, fn in baselines.items()}
    best = min(times, key=times.get)
    ref_s = median_seconds(reference, 5)
    native_s = benchmark.stats.stats.median
    floor_s = bytes_moved(vocab, groups, wants) / (memory_read_gb_per_s() * 1e9)
    benchmark.extra_info.update(
        k=k, n=N, lo=LO, hi=HI, vocab=len(vocab), native_masks_per_s=k / native_s,
        baseline_masks_per_s={name: k / t for name, t in times.items()}, reference_masks_per_s=k / ref_s,
        baseline=best, ratio_vs_baseline=times[best] / native_s,
        ratios={name: t / native_s for name, t in times.items()},
        ratio_vs_oracle=ref_s / native_s, limit="memory", memory_read_gb_per_s=memory_read_gb_per_s(),
        fraction_of_limit=floor_s / native_s,
    )
    rest = "  ".join(f"{name} {t / native_s:5.2f}x" for name, t in times.items() if name != best)
    print(f"\nk={k:2d} native {k / native_s:10.0f} masks/s ({floor_s / native_s:6.2%} of the "
          f"{memory_read_gb_per_s():.0f} GB/s read limit)  vs best Python ({best}) {times[best] / native_s:5.2f}x  "
          f"({rest}; vs oracle {ref_s / native_s:6.1f}x)")
