"""score_batch throughput: spct.GenerativeRewardModel.score_batch (prefix-shared engine, native extraction and
vote) vs a straightforward pipeline on the same model in the same run: per item, transformers.generate with
num_return_sequences=k, batch_decode, a regex for the last \\boxed{...} group, Python sums.

RMB pairwise items from ../shared/data (skips without it). Defaults: 64 items, k = 8, 512 new tokens (long on a
CPU); SPCT_BENCH_ITEMS and SPCT_BENCH_NEW_TOKENS shrink it. Temperature 0.5 on both sides; samples end at EOS or
the token budget, and extra_info records the tokens each side generated.

    python -m pytest bench/bench_score.py --benchmark-enable -s
"""

from __future__ import annotations

import gzip
import json
import os
import re
import time
from pathlib import Path

import pytest
import torch

import spct
from spct.engine.models import fetch

ITEMS = int(os.environ.get("SPCT_BENCH_ITEMS", "64"))
NEW_TOKENS = int(os.environ.get("SPCT_BENCH_NEW_TOKENS", "512"))
K = 8
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "rmb" / "rmb_pairwise.jsonl.gz"
GROUP = re.compile(r"\\boxed\{([^{}]*)\}")


def rmb_pairs(n: int) -> list[tuple[str, list[str]]]:
    if not DATA.is_file():
        pytest.skip(f"RMB pairwise data not found at ../shared/data/rmb (looked in {DATA}); skipping")
    items = []
    with gzip.open(DATA, "rt") as f:
        for line in f:
            r = json.loads(line)
            query = r["conversation_input"][-1]["content"]
            a, b = r["chosen"]["answer"], r["reject"]["answer"]
            if len(query) + len(a) + len(b) < 3000:  # prompts of a few hundred tokens
                items.append((query, [a, b]))
            if len(items) == n:
                return items
    return items


def baseline(model, grm, items) -> tuple[list[list[float]], int]:
    """The pipeline a user writes first: generate, decode, regex, sum. returns (rewards, generated tokens)."""
    rewards, generated = [], 0
    for query, responses in items:
        ids = torch.tensor([grm.prompt_ids(query, responses)])
        with torch.no_grad():
            out = model.generate(ids, do_sample=True, temperature=0.5, top_k=0, num_return_sequences=K,
                                 max_new_tokens=NEW_TOKENS, pad_token_id=2)
        new = out[:, ids.shape[1]:]
        ended = (new == 2).int().cumsum(1) > 0  # EOS (= pad) and what follows
        generated += int((~ended).sum()) + int(ended.any(1).sum())
        texts = grm.tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
        sums = [0.0] * len(responses)
        for text in texts:
            groups = GROUP.findall(text)
            try:
                scores = [float(x) for x in groups[-1].split(",")] if groups else []
            except ValueError:
                continue
            if len(scores) == len(responses) and all(1 <= s <= 10 for s in scores):
                sums = [a + s for a, s in zip(sums, scores)]
        rewards.append(sums)
    return rewards, generated


def test_score_batch_throughput(benchmark):
    items = rmb_pairs(ITEMS)
    grm = spct.GenerativeRewardModel.from_pretrained(fetch("smollm2-135m"))
    run = lambda: grm.score_batch(items, k=K, max_new_tokens=NEW_TOKENS, seed=1)  # noqa: E731
    if benchmark.disabled:
        return
    judged = run()
    assert len(judged) == len(items) and all(len(j.samples) == K for j in judged)
    benchmark.pedantic(run, rounds=1, warmup_rounds=0)
    spct_s = benchmark.stats.stats.median
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(fetch("smollm2-135m"), dtype=torch.bfloat16).eval()
    t0 = time.perf_counter()
    base, base_tokens = baseline(model, grm, items)
    base_s = time.perf_counter() - t0
    assert len(base) == len(items)
    n = len(items)
    spct_tokens = sum(s.num_tokens for j in judged for s in j.samples)
    benchmark.extra_info.update(items=n, k=K, new_tokens=NEW_TOKENS, spct_items_per_s=n / spct_s,
                                baseline_items_per_s=n / base_s, ratio_vs_baseline=base_s / spct_s,
                                spct_generated_tokens=spct_tokens, baseline_generated_tokens=base_tokens)
    print(f"\nscore_batch {n} items x k={K}, {NEW_TOKENS} new tokens: spct {n / spct_s:.3f} items/s, "
          f"pipeline {n / base_s:.3f} items/s, ratio {base_s / spct_s:.2f}x (tokens generated: spct {spct_tokens}, "
          f"pipeline {base_tokens})")
