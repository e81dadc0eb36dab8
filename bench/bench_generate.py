"""generate throughput: spct.Engine (prompt prefilled once, KV shared by the k samples) vs transformers.generate
with num_return_sequences=k (the prompt prefilled k times, k copies of its KV), same model, dtype and threads.

One real GRM prompt of about 1,000 tokens: the query and two responses of an RMB best-of-N item from
../shared/data (a bundled fallback of standard-library sources when it is absent), 256 new tokens
(min_new_tokens = max_new_tokens), temperature 0.5. extra_info: tokens/s of each, the ratio, and peak memory
(the rise of the process's peak RSS during the call, reset before it through /proc/self/clear_refs).

    python -m pytest bench/bench_generate.py --benchmark-enable -s                      # the full sweep (long)
    python -m pytest bench/bench_generate.py --benchmark-enable -s -k "bfloat16 and (k1- or k16- or k32-)"

SPCT_BENCH_NEW_TOKENS shortens the generation (default 256); SPCT_BENCH_BASELINE=0 skips transformers.
"""

from __future__ import annotations

import gzip
import inspect
import json
import os
from pathlib import Path

import pytest
import torch

import spct
from spct.engine.models import fetch

KS = [1, 2, 4, 8, 16, 32]
PROMPT_TOKENS = 1000
NEW_TOKENS = int(os.environ.get("SPCT_BENCH_NEW_TOKENS", "256"))
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "rmb" / "rmb_bon.jsonl.gz"
TEMPLATE = ("You are a skilled judge. Read the query and both responses, write your principles and a critique, then "
            "score each response from 1 to 10.\n\n[Query]\n{query}\n\n[Response 1]\n{a}\n\n[Response 2]\n{b}\n\n"
            "[Principles]\n")


def grm_prompt(tokenizer) -> tuple[str, list[int]]:
    """(source, token ids): the first RMB BoN item long enough, else the bundled fallback; about 1,000 tokens
    with the template's tail kept."""
    if SHARED.is_file():
        with gzip.open(SHARED, "rt") as f:
            for line in f:
                item = json.loads(line)
                query = item["conversation_input"][-1]["content"]
                a, b = item["bon_best"]["answer"], item["loser_list"][0]["answer"]
                ids = tokenizer(TEMPLATE.format(query=query, a=a, b=b)).input_ids
                if len(ids) >= PROMPT_TOKENS:
                    return f"RMB {item['bon_uid']}", _fit(tokenizer, query, a, b)
    import heapq
    import textwrap

    return "bundled", _fit(tokenizer, "Which implementation is clearer?", inspect.getsource(textwrap),
                           inspect.getsource(heapq))


def _fit(tokenizer, query: str, a: str, b: str) -> list[int]:
    """Cuts both responses evenly until the whole prompt has about PROMPT_TOKENS tokens."""
    lo, hi = 0, max(len(a), len(b))
    while lo < hi:  # the largest cut that fits
        mid = (lo + hi + 1) // 2
        n = len(tokenizer(TEMPLATE.format(query=query, a=a[:mid], b=b[:mid])).input_ids)
        lo, hi = (mid, hi) if n <= PROMPT_TOKENS else (lo, mid - 1)
    return tokenizer(TEMPLATE.format(query=query, a=a[:lo], b=b[:lo])).input_ids


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def peak_rise_mib(fn) -> tuple[object, float]:
    """fn() and how far the process's peak RSS rose above its RSS before the call (MiB; Linux). Freed heap memory
    is handed back first (malloc_trim), or an earlier call's pages would hide this call's allocations."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        pass
    before = _rss_kib("VmRSS")
    out = fn()
    return out, (_rss_kib("VmHWM") - before) / 1024


@pytest.fixture(scope="module")
def model_dir():
    return fetch("smollm2-135m")


@pytest.fixture(scope="module")
def engines(model_dir):
    return {}


def _engine(engines, model_dir, dtype):
    if dtype not in engines:
        engines[dtype] = spct.Engine.from_pretrained(model_dir, dtype=dtype)
    return engines[dtype]


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("k", KS, ids=[f"k{k}-" for k in KS])
def test_generate_throughput(benchmark, engines, model_dir, k, dtype):
    engine = _engine(engines, model_dir, dtype)
    source, ids = grm_prompt(engine.tokenizer)
    settings = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "temperature": 0.5}
    if benchmark.disabled:  # --benchmark-disable (the default addopts): a short validation, not timed
        out = engine.generate([ids[:64]], k=min(k, 2), max_new_tokens=4, min_new_tokens=4, temperature=0.5)
        assert all(len(s.token_ids) == 4 for s in out[0])
        return
    tokens = k * NEW_TOKENS
    run = lambda: engine.generate([ids], k=k, seed=1, **settings)  # noqa: E731
    out, spct_peak = peak_rise_mib(run)
    assert all(len(s.token_ids) == NEW_TOKENS for s in out[0])
    benchmark.pedantic(run, rounds=int(os.environ.get("SPCT_BENCH_ROUNDS", "3")), warmup_rounds=0)
    spct_s = benchmark.stats.stats.median
    info = {"k": k, "dtype": dtype, "prompt": source, "prompt_tokens": len(ids), "new_tokens": NEW_TOKENS,
            "threads": torch.get_num_threads(), "spct_tokens_per_s": tokens / spct_s, "spct_peak_rise_mib": spct_peak,
            "spct_kv_mib": engine.last_kv_bytes / 2**20}
    line = (f"\n{dtype:8s} k={k:2d} spct {tokens / spct_s:7.1f} tok/s (peak +{spct_peak:6.0f} MiB, KV "
            f"{engine.last_kv_bytes / 2**20:5.0f} MiB)")
    if os.environ.get("SPCT_BENCH_BASELINE", "1") != "0":
        import time

        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()
        hf_settings = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "temperature": 0.5,
                       "do_sample": True, "top_k": 0, "top_p": 1.0, "num_return_sequences": k, "pad_token_id": 2}

        def baseline():
            with torch.no_grad():
                return model.generate(torch.tensor([ids]), **hf_settings)

        t0 = time.perf_counter()
        gen, hf_peak = peak_rise_mib(baseline)
        hf_s = time.perf_counter() - t0
        assert gen.shape == (k, len(ids) + NEW_TOKENS)
        info.update(transformers_tokens_per_s=tokens / hf_s, transformers_peak_rise_mib=hf_peak,
                    ratio_vs_transformers=hf_s / spct_s)
        line += (f"  transformers {tokens / hf_s:7.1f} tok/s (peak +{hf_peak:6.0f} MiB)  ratio {hf_s / spct_s:5.2f}x")
    benchmark.extra_info.update(info)
    print(line)
