"""spct.Engine against llama.cpp bf16, the engine CPU users run, on the same model, prompt, threads and sampling.

llama.cpp (llama-cpp-python's low-level API, `llama_cpp_runner.py`) decodes the k samples of one prompt as its users
serve them: the prompt prefilled once in sequence 0, its KV shared by sequences 1..k-1 (`llama_memory_seq_cp`, one
unified KV buffer), then one `llama_decode` of k tokens per step, each sampled by llama.cpp's own samplers
(temperature 0.5, a seeded draw). The model is SmolLM2-135M in bf16 in both (llama.cpp reads a bf16 GGUF converted
once from the same folder, cached under the spct cache); the prompt is bench_generate's ~1,000-token GRM prompt;
min_new_tokens = max_new_tokens; both on torch.get_num_threads() threads. The two engines run alternately in one
process, one at a time: each timed spct round follows one llama.cpp round. Every run changes the prompt's first
token, so both compute the whole prompt each time: spct's prefix cache never holds it (checked through
Engine.stats: no prefix hit, every prompt token prefilled), and llama.cpp's KV is emptied first.

- test_greedy_agrees: the GGUF is the same model (llama.cpp's first greedy token is spct's on a 64-token prompt).
- test_decode_throughput (k = 1, 4, 16, 32): tokens/s of the whole generate (prefill included, as bench_generate),
  and decode tokens/s after the prompt's prefill (k * (new_tokens - 1) tokens over the steps after it), of each and
  their ratio; the decode figure as a fraction of the roofline: k tokens per step, each step reading every weight
  once (llama_model_size bytes) at the memory read speed measured in the same run (timing.memory_read_gb_per_s).
- test_prefill: the prompt's prefill, spct (a generate of one token) against llama.cpp (its llama_decode in chunks
  of n_batch, then one token drawn), and its fraction of the compute limit: the linear layers' and attention's
  FLOPs at the matmul speed (bf16 or fp32, the faster) measured in the same run (timing.matmul_gflop_per_s).

    pip install '.[bench]'     # llama-cpp-python; CMAKE_ARGS="-DGGML_NATIVE=ON" builds it for this CPU
    python -m pytest bench/bench_llama_cpp.py --benchmark-enable -s
    SPCT_BENCH_NEW_TOKENS=32 python -m pytest bench/bench_llama_cpp.py --benchmark-enable -s -k "k1- or k16-"

SPCT_BENCH_NEW_TOKENS shortens the generation (default 256), SPCT_BENCH_ROUNDS sets the timed rounds (default 3).
Without --benchmark-enable each test checks both engines on a short prompt (a few tokens) and times nothing.
"""

from __future__ import annotations

import itertools
import os
import statistics
import time

import pytest
import torch

try:
    import llama_cpp  # noqa: F401
except (ImportError, OSError) as e:  # OSError: the package is there but its shared library does not load
    pytest.skip(f"llama.cpp comparison skipped: llama-cpp-python is not importable ({e}); install it with "
                "pip install '.[bench]' (CMAKE_ARGS=\"-DGGML_NATIVE=ON\" for a build native to this CPU)",
                allow_module_level=True)

import spct
from bench_generate import NEW_TOKENS, grm_prompt
from llama_cpp_runner import LlamaCpp, bf16_gguf, quiet_logs
from spct.engine.models import fetch
from timing import matmul_gflop_per_s, memory_read_gb_per_s

KS = [1, 4, 16, 32]
TEMPERATURE = 0.5
ROUNDS = int(os.environ.get("SPCT_BENCH_ROUNDS", "3"))
ROUND = itertools.count(1)  # the first token of the next fresh prompt, see _fresh_prompts


@pytest.fixture(scope="module")
def model_dir():
    return fetch("smollm2-135m")


@pytest.fixture(scope="module")
def engine(model_dir):
    return spct.Engine.from_pretrained(model_dir, dtype="bfloat16")


@pytest.fixture(scope="module")
def llama(model_dir):
    quiet_logs()
    model = LlamaCpp(bf16_gguf(model_dir), threads=torch.get_num_threads())
    yield model
    model.close()


@pytest.fixture(scope="module")
def prompt(engine):
    return grm_prompt(engine.tokenizer)


def _cells(prompt_tokens: int, k: int, new_tokens: int) -> int:
    """KV cells for the prompt once and k samples, rounded up to llama.cpp's padding of 256."""
    return -(-(prompt_tokens + k * new_tokens) // 256) * 256


def _llama_run(llama, ids, k, new_tokens, temperature=TEMPERATURE):
    ctx = llama.context(k, _cells(len(ids), k, new_tokens))
    try:
        return ctx.generate(ids, new_tokens, temperature)[0]
    finally:
        ctx.close()


def test_greedy_agrees(engine, llama, prompt):
    """The GGUF is the same model: llama.cpp's greedy tokens are spct's (both bf16; the first must agree, later
    ones may part at a near tie)."""
    ids = prompt[1][:64]
    ours = engine.generate([ids], k=1, max_new_tokens=4, min_new_tokens=4, temperature=0)[0][0].token_ids
    theirs = _llama_run(llama, ids, 1, 4, temperature=0)[0]
    assert theirs[0] == ours[0], (theirs, ours)


def _spct_decode(engine, ids, k, marks):
    """One timed spct generate; appends (start, prefilled, end) to marks."""
    seen, before = {}, engine.stats()
    start = time.perf_counter()
    out = engine.generate([ids], k=k, seed=1, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                          temperature=TEMPERATURE, progress=lambda n: seen.setdefault("t", time.perf_counter()))
    marks.append((start, seen["t"], time.perf_counter()))
    assert all(len(s.token_ids) == NEW_TOKENS for s in out[0])
    _check_computed(before, engine.stats(), len(ids))


def _check_computed(before: dict, after: dict, prompt_tokens: int) -> None:
    """spct computed the whole prompt: no token of it came from the prefix cache."""
    assert after["prefix_hit_tokens"] == before["prefix_hit_tokens"], "spct's prefix cache held the prompt"
    assert after["prefill_tokens"] - before["prefill_tokens"] == prompt_tokens


def _llama_decode(ctx, ids, k, marks):
    start = time.perf_counter()
    out, prefilled = ctx.generate(ids, NEW_TOKENS, TEMPERATURE)
    marks.append((start, prefilled, time.perf_counter()))
    assert len(out) == k and all(len(row) == NEW_TOKENS for row in out)


def _rates(marks, k) -> tuple[float, float]:
    """(whole-generate tok/s, decode tok/s after the prefill), medians over the rounds."""
    whole = statistics.median(end - start for start, _, end in marks)
    decode = statistics.median(end - mid for _, mid, end in marks)
    return k * NEW_TOKENS / whole, k * (NEW_TOKENS - 1) / decode


@pytest.mark.parametrize("k", KS, ids=[f"k{k}-" for k in KS])
def test_decode_throughput(benchmark, engine, llama, prompt, k):
    source, ids = prompt
    if benchmark.disabled:  # --benchmark-disable (the default addopts): a short validation, not timed
        out = engine.generate([ids[:64]], k=min(k, 2), max_new_tokens=4, min_new_tokens=4, temperature=TEMPERATURE)
        assert all(len(s.token_ids) == 4 for s in out[0])
        rows = _llama_run(llama, ids[:64], min(k, 2), 4)
        assert len(rows) == min(k, 2) and all(len(r) == 4 for r in rows)
        return
    ctx = llama.context(k, _cells(len(ids), k, NEW_TOKENS))
    fresh = _fresh_prompts(ids, engine.vocab_size)  # spct prefills each round too, as llama.cpp does
    spct_marks, llama_marks = [], []

    def llama_round():
        _llama_decode(ctx, next(fresh), k, llama_marks)
        return (next(fresh),), {}

    try:
        _spct_decode(engine, next(fresh), k, [])  # a warm-up of each, untimed
        _llama_decode(ctx, next(fresh), k, [])
        benchmark.pedantic(lambda p: _spct_decode(engine, p, k, spct_marks), setup=llama_round, rounds=ROUNDS,
                           warmup_rounds=0)
    finally:
        ctx.close()
    spct_tps, spct_dec = _rates(spct_marks, k)
    llama_tps, llama_dec = _rates(llama_marks, k)
    gb_per_s = memory_read_gb_per_s()
    roofline = k * gb_per_s * 1e9 / llama.weight_bytes  # tok/s when a step costs one read of the weights
    benchmark.extra_info.update({
        "k": k, "prompt": source, "prompt_tokens": len(ids), "new_tokens": NEW_TOKENS,
        "threads": torch.get_num_threads(), "spct_tokens_per_s": spct_tps, "llama_cpp_tokens_per_s": llama_tps,
        "ratio_vs_llama_cpp": spct_tps / llama_tps, "spct_decode_tokens_per_s": spct_dec,
        "llama_cpp_decode_tokens_per_s": llama_dec, "decode_ratio_vs_llama_cpp": spct_dec / llama_dec,
        "weight_bytes_per_step": llama.weight_bytes, "memory_read_gb_per_s": gb_per_s,
        "roofline_tokens_per_s": roofline, "spct_decode_of_roofline": spct_dec / roofline,
        "llama_cpp_decode_of_roofline": llama_dec / roofline, "loadavg": os.getloadavg()[0]})
    print(f"\nbf16 k={k:2d} spct {spct_tps:7.1f} tok/s (decode {spct_dec:7.1f}, {spct_dec / roofline:4.0%} of "
          f"roofline)  llama.cpp {llama_tps:7.1f} tok/s (decode {llama_dec:7.1f}, {llama_dec / roofline:4.0%})  "
          f"ratio {spct_tps / llama_tps:5.2f}x (decode {spct_dec / llama_dec:5.2f}x)  roofline {roofline:7.1f} "
          f"tok/s ({llama.weight_bytes / 1e6:.0f} MB/step at {gb_per_s:.1f} GB/s)  load {os.getloadavg()[0]:.2f}")


def _fresh_prompts(ids: list[int], vocab: int):
    """The prompt with a new first token each time (one count for the module, as the engine and its prefix cache
    live as long): never a cached prefix in spct, the same length."""
    for r in ROUND:
        yield [(ids[0] + r) % vocab] + ids[1:]


def _spct_prefill(engine, ids, times):
    before = engine.stats()
    start = time.perf_counter()
    engine.generate([ids], k=1, max_new_tokens=1, temperature=TEMPERATURE)
    times.append(time.perf_counter() - start)
    _check_computed(before, engine.stats(), len(ids))


def _prefill_flop(llama, n: int) -> float:
    """FLOPs of a prefill of n tokens: every linear layer once per token, the LM head (tied to the embedding, as
    SmolLM2's) for the last token only, and causal attention (QK^T and PV over half the n x n scores)."""
    linear = llama.n_params - llama.n_vocab * llama.n_embd
    return 2 * n * linear + 2 * llama.n_vocab * llama.n_embd + 2 * llama.n_layer * llama.n_embd * n * n


def test_prefill(benchmark, engine, llama, prompt):
    source, ids = prompt
    if benchmark.disabled:
        _spct_prefill(engine, next(_fresh_prompts(ids[:64], engine.vocab_size)), [])
        assert len(_llama_run(llama, ids[:64], 1, 1)[0]) == 1
        return
    ctx = llama.context(1, _cells(len(ids), 1, 1))
    fresh = _fresh_prompts(ids, engine.vocab_size)
    spct_times, llama_times = [], []

    def llama_round():
        start = time.perf_counter()
        ctx.generate(next(fresh), 1, TEMPERATURE)
        llama_times.append(time.perf_counter() - start)
        return (next(fresh), spct_times), {}

    try:
        _spct_prefill(engine, next(fresh), [])  # a warm-up of each, untimed
        llama_round()
        llama_times.clear()
        benchmark.pedantic(lambda p, t: _spct_prefill(engine, p, t), setup=llama_round, rounds=ROUNDS,
                           warmup_rounds=0)
    finally:
        ctx.close()
    spct_s, llama_s = statistics.median(spct_times), statistics.median(llama_times)
    gflop_per_s = matmul_gflop_per_s()
    limit_s = _prefill_flop(llama, len(ids)) / (gflop_per_s * 1e9)
    benchmark.extra_info.update({
        "prompt": source, "prompt_tokens": len(ids), "threads": torch.get_num_threads(), "spct_prefill_s": spct_s,
        "llama_cpp_prefill_s": llama_s, "ratio_vs_llama_cpp": llama_s / spct_s, "matmul_gflop_per_s":
        gflop_per_s, "compute_limit_s": limit_s, "spct_of_limit": limit_s / spct_s,
        "llama_cpp_of_limit": limit_s / llama_s, "loadavg": os.getloadavg()[0]})
    print(f"\nbf16 prefill {len(ids)} tokens: spct {spct_s * 1e3:6.0f} ms ({limit_s / spct_s:4.0%} of limit)  "
          f"llama.cpp {llama_s * 1e3:6.0f} ms ({limit_s / llama_s:4.0%})  ratio {llama_s / spct_s:5.2f}x  limit "
          f"{limit_s * 1e3:.0f} ms at {gflop_per_s:.0f} GFLOP/s  load {os.getloadavg()[0]:.2f}")
