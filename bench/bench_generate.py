"""generate throughput: spct.Engine (prompt prefilled once, KV shared by the k samples) vs transformers.generate
with num_return_sequences=k (the prompt prefilled k times, k copies of its KV), same model, dtype and threads.

One real GRM prompt of about 1,000 tokens: the query and two responses of an RMB best-of-N item from
../shared/data (a bundled fallback of standard-library sources when it is absent), 256 new tokens
(min_new_tokens = max_new_tokens), temperature 0.5; every timed round changes the prompt's first token, so spct
prefills it each time as transformers does (its prefix cache never holds it). extra_info: tokens/s of each, the
ratio, and peak memory (the rise of the process's peak RSS during the call, reset before it through
/proc/self/clear_refs).

    python -m pytest bench/bench_generate.py --benchmark-enable -s                      # the full sweep (long)
    python -m pytest bench/bench_generate.py --benchmark-enable -s -k "bfloat16 and (k1- or k16- or k32-)"

Each line also gives the roofline of a decode step on this machine, measured in the same run: the larger of the bytes
it must read (every weight matrix once, the prompt's KV once per layer) at `timing.memory_read_gb_per_s` and its
FLOPs at `timing.matmul_gflop_per_s`, and spct's decode as a fraction of it (decode alone: the time of the
same request with one new token, its prefill from the prefix cache, is taken off).

test_generate_under_contention runs k = 16 quiet, then beside a busy process that holds one core (a Python loop,
ended after), with the engine's thread tuner (spct.engine.threads) and with a fixed thread count.

SPCT_BENCH_NEW_TOKENS shortens the generation (default 256); SPCT_BENCH_BASELINE=0 skips transformers;
SPCT_BENCH_DEVICE runs spct and transformers on another device (default cpu; bench/gpu_suite.sh sets cuda).
"""

from __future__ import annotations

import gzip
import inspect
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import spct
from spct.engine.models import fetch

KS = [1, 2, 4, 8, 16, 32]
PROMPT_TOKENS = 1000
NEW_TOKENS = int(os.environ.get("SPCT_BENCH_NEW_TOKENS", "256"))
DEVICE = os.environ.get("SPCT_BENCH_DEVICE", "cpu")
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
        engines[dtype] = spct.Engine.from_pretrained(model_dir, dtype=dtype, device=DEVICE)
    return engines[dtype]


def _sync():
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def roofline_tokens_per_s(runner, k: int, context: int) -> tuple[float, str]:
    """The most decode tokens/s this machine allows at k samples over `context` tokens (module docstring), and
    what bounds it."""
    from timing import matmul_gflop_per_s, memory_read_gb_per_s

    c = runner.config
    linears = [runner.lm_head, *(m for layer in runner.layers for m in layer.values() if hasattr(m, "out_features"))]
    params = sum(m.out_features * m.in_features for m in linears)
    weight_bytes = params * runner.dtype.itemsize
    kv_bytes = 2 * c.num_layers * context * c.num_kv_heads * c.head_dim * runner.dtype.itemsize
    flops = 2 * k * params + 4 * k * c.num_layers * context * c.num_heads * c.head_dim
    read_s = (weight_bytes + kv_bytes) / (memory_read_gb_per_s() * 1e9)
    compute_s = flops / (matmul_gflop_per_s() * 1e9)
    return k / max(read_s, compute_s), "memory" if read_s >= compute_s else "compute"


def decode_tokens_per_s(engine, ids, k: int, rounds: int) -> float:
    """k * (NEW_TOKENS - 1) over the best time of a NEW_TOKENS generation less that of a 1-token one (the prefill,
    served by the prefix cache after the first)."""
    settings = {"temperature": 0.5, "seed": 1}
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        engine.generate([ids], k=k, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, **settings)
        _sync()
        t1 = time.perf_counter()
        engine.generate([ids], k=k, max_new_tokens=1, min_new_tokens=1, **settings)
        _sync()
        best = min(best, (t1 - t0) - (time.perf_counter() - t1))
    return k * (NEW_TOKENS - 1) / best


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
    fresh = itertools.count(1)

    def run():  # a new first token each time: the prompt is prefilled in every round, never from the prefix cache
        prompt = [(ids[0] + next(fresh)) % engine.vocab_size, *ids[1:]]
        out = engine.generate([prompt], k=k, seed=1, **settings)
        _sync()
        return out

    out, spct_peak = peak_rise_mib(run)
    assert all(len(s.token_ids) == NEW_TOKENS for s in out[0])
    benchmark.pedantic(run, rounds=int(os.environ.get("SPCT_BENCH_ROUNDS", "3")), warmup_rounds=0)
    spct_s = benchmark.stats.stats.median
    decode = decode_tokens_per_s(engine, ids, k, 2)
    roof, bound = roofline_tokens_per_s(engine.runner, k, len(ids) + NEW_TOKENS // 2)
    info = {"k": k, "dtype": dtype, "device": str(engine.runner.device), "prompt": source, "prompt_tokens": len(ids),
            "new_tokens": NEW_TOKENS, "threads": torch.get_num_threads(), "spct_tokens_per_s": tokens / spct_s,
            "spct_decode_tokens_per_s": decode, "roofline_decode_tokens_per_s": roof, "roofline_bound": bound,
            "fraction_of_roofline": decode / roof, "spct_peak_rise_mib": spct_peak,
            "spct_kv_mib": engine.last_kv_bytes / 2**20}
    line = (f"\n{dtype:8s} k={k:2d} spct {tokens / spct_s:7.1f} tok/s, decode {decode:7.1f} tok/s = "
            f"{decode / roof:4.0%} of the {bound} roofline {roof:6.0f} (peak +{spct_peak:6.0f} MiB, KV "
            f"{engine.last_kv_bytes / 2**20:5.0f} MiB)")
    if os.environ.get("SPCT_BENCH_BASELINE", "1") != "0":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval().to(DEVICE)
        hf_settings = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "temperature": 0.5,
                       "do_sample": True, "top_k": 0, "top_p": 1.0, "num_return_sequences": k, "pad_token_id": 2}

        def baseline():
            with torch.no_grad():
                out = model.generate(torch.tensor([ids], device=DEVICE), **hf_settings)
            _sync()
            return out

        t0 = time.perf_counter()
        gen, hf_peak = peak_rise_mib(baseline)
        hf_s = time.perf_counter() - t0
        assert gen.shape == (k, len(ids) + NEW_TOKENS)
        info.update(transformers_tokens_per_s=tokens / hf_s, transformers_peak_rise_mib=hf_peak,
                    ratio_vs_transformers=hf_s / spct_s)
        line += (f"  transformers {tokens / hf_s:7.1f} tok/s (peak +{hf_peak:6.0f} MiB)  ratio {hf_s / spct_s:5.2f}x")
    benchmark.extra_info.update(info)
    print(line)


def _busy_core() -> subprocess.Popen:
    """A process that holds one core until it is killed."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


@pytest.mark.skipif(DEVICE != "cpu", reason="the contention bench is for CPU runs")
def test_generate_under_contention(benchmark, model_dir):
    """k = 16 decode quiet and beside a busy process, with the thread tuner and with a fixed count."""
    if benchmark.disabled:
        pytest.skip("a timing-only bench: run with --benchmark-enable")
    if os.cpu_count() < 2:
        pytest.skip("needs at least 2 cores")
    info, line = {"k": 16, "threads": torch.get_num_threads()}, "\nbfloat16 k=16 under contention:"
    for mode in ("auto", "fixed"):
        os.environ["SPCT_THREADS"] = mode  # read when the engine's step loop is made
        try:
            engine = spct.Engine.from_pretrained(model_dir, dtype="bfloat16")
        finally:
            os.environ.pop("SPCT_THREADS")
        _, ids = grm_prompt(engine.tokenizer)
        quiet = decode_tokens_per_s(engine, ids, 16, 2)
        hog = _busy_core()
        try:
            time.sleep(0.5)
            busy = decode_tokens_per_s(engine, ids, 16, 2)
        finally:
            hog.kill()
            hog.wait()
        info.update({f"{mode}_quiet_tokens_per_s": quiet, f"{mode}_busy_tokens_per_s": busy,
                     f"{mode}_busy_fraction": busy / quiet})
        line += f"  {mode}: quiet {quiet:6.1f}, one core busy {busy:6.1f} tok/s ({busy / quiet:4.0%})"
        del engine
    benchmark.extra_info.update(info)
    benchmark.pedantic(lambda: None, rounds=1)
    print(line)
