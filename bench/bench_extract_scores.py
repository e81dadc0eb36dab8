"""extract_scores throughput: native from token ids vs `batch_decode` + the Python regex reference.

64 items x k generations of about 400 tokens in the GRM output format, k in {1, 2, 4, 8, 16, 32}. The baseline (the
headline ratio) is what a user writes: the tokenizer's batch_decode, then regular expressions over each text
(`spct.ops.ref.extract_scores`: the scores, principles with their weights and the critique span, on bytes with the
standard library's re). batch_decode alone is printed beside it (the part of the baseline the native side replaces
with a byte-table lookup).

The physical limit: the op must read each token id (8 bytes) and its bytes from the table and write the text, so
its floor is those bytes at this machine's memory read speed (`timing.memory_read_gb_per_s`, measured in the same
run); "of limit" is that floor over the native time. The parse is a byte-by-byte scan on top, so the fraction
stays well below 100%. Both sides are timed in the same test; extra_info holds generations/s of each, the ratios of
medians and the fraction of the limit.

    python -m pytest bench/bench_extract_scores.py --benchmark-enable --benchmark-json=extract.json
"""

from __future__ import annotations

import random

import pytest
import torch

import spct
from spct.ops.ref import extract_scores as ref
from timing import median_seconds, memory_read_gb_per_s

ITEMS = 64
TOKENS = 400
KS = [1, 2, 4, 8, 16, 32]
WORDS = ("the response answers question correctly clearly but misses detail step error final value code "
         "example explains reasoning concise safe helpful accurate complete relevant tone format").split()
CRITERIA = ["Accuracy", "Clarity", "Completeness", "Relevance", "Safety", "Conciseness", "Reasoning", "Style"]


def grm_generation(rng: random.Random, n: int) -> str:
    """A generation in the GRM format: weighted criteria, a per-response analysis, then the boxed scores."""
    names = rng.sample(CRITERIA, 4)
    lines = ["Specific Criteria:"]
    lines += [f"{i + 1}. {name} (Weight: {w}%): {' '.join(rng.choices(WORDS, k=14))}."
              for i, (name, w) in enumerate(zip(names, (40, 30, 20, 10)))]
    lines += ["", "Analysis:"]
    for r in range(n):
        lines.append(f"- **Response {r + 1}**: " + " ".join(rng.choices(WORDS, k=120 // n + 40)) + ".")
    scores = ", ".join(str(rng.randint(1, 10)) for _ in range(n))
    return "\n".join(lines) + f"\n\nScores: \\boxed{{{scores}}}"


@pytest.fixture(scope="module")
def corpus(smollm2_tokenizer):
    """(token ids (ITEMS * 32, TOKENS) int64 padded with EOS, lengths) for the largest k; smaller k slice it."""
    rng = random.Random(0)
    tok = smollm2_tokenizer
    rows = []
    for _ in range(ITEMS * max(KS)):
        ids = tok(grm_generation(rng, 2), add_special_tokens=False)["input_ids"]
        tail = ids[-12:]  # keep the score group when trimming to the token budget
        rows.append(ids[: TOKENS - len(tail)] + tail if len(ids) > TOKENS else ids)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tok.eos_token_id, dtype=torch.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
    return ids, torch.tensor([len(r) for r in rows])


def baseline(tok, ids):
    texts = tok.batch_decode(ids, skip_special_tokens=True)
    return ref.extract_scores([t.encode() for t in texts], [2] * len(texts), 1.0, 10.0)


@pytest.mark.parametrize("k", KS)
def test_extract_scores_throughput(benchmark, corpus, smollm2_tokenizer, k):
    tok = smollm2_tokenizer
    table = spct.TokenBytes.from_tokenizer(tok)
    ids, lengths = corpus[0][: ITEMS * k], corpus[1][: ITEMS * k]
    rows = ids.shape[0]

    def native():
        return spct.extract_scores(token_ids=ids, lengths=lengths, vocab=table, num_responses=2)

    # Validate before timing: the same texts, scores and validity as the baseline.
    got, want = native(), baseline(tok, ids)
    assert got.texts == tok.batch_decode(ids, skip_special_tokens=True)
    assert torch.equal(got.valid, torch.from_numpy(want.valid)) and bool(got.valid.all())
    torch.testing.assert_close(got.scores, torch.from_numpy(want.scores), rtol=0, atol=0)

    benchmark.pedantic(native, rounds=max(5, 320 // k), warmup_rounds=2)
    if benchmark.disabled:  # --benchmark-disable (the default addopts): validated, not timed
        return
    rounds = 5
    text_bytes = sum(len(t.encode()) for t in got.texts)
    moved = int(lengths.sum()) * ids.element_size() + 2 * text_bytes  # the ids, each token's bytes read and written
    floor_s = moved / (memory_read_gb_per_s() * 1e9)
    base_s = median_seconds(lambda: baseline(tok, ids), rounds)
    decode_s = median_seconds(lambda: tok.batch_decode(ids, skip_special_tokens=True), rounds)
    native_s = benchmark.stats.stats.median
    benchmark.extra_info.update(
        k=k,
        generations=rows,
        tokens=int(lengths.sum()),
        native_generations_per_s=rows / native_s,
        baseline_generations_per_s=rows / base_s,
        baseline="batch_decode + regex",
        ratio_vs_baseline=base_s / native_s,
        ratio_vs_batch_decode_alone=decode_s / native_s,
        limit="memory",
        memory_read_gb_per_s=memory_read_gb_per_s(),
        fraction_of_limit=floor_s / native_s,
    )
    print(f"\nk={k:2d} rows={rows:5d} native {rows / native_s:10.0f} gen/s ({floor_s / native_s:5.1%} of the "
          f"{memory_read_gb_per_s():.0f} GB/s read limit)  vs batch_decode + regex {base_s / native_s:6.1f}x "
          f"(batch_decode alone: {decode_s / native_s:5.1f}x)")
