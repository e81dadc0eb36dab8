"""The online engine (`Engine.submit`, handles, the scheduler) on the real default model: samples do not depend on what
else is in flight or when it arrived; the prefix cache computes a shared prefix's full blocks once; the KV stays
within its budget under preemption and eviction; faults stay with their request; the handle API.

Every engine here is built around one of two runners (bfloat16, float32) loaded once; "alone" means the request
submitted by itself to a fresh `Engine` over the same runner (nothing cached, nothing else in flight)."""

from __future__ import annotations

import asyncio
import gc
import inspect
import math
import random
import re
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import spct
from spct.engine import online
from spct.engine.kv_blocks import MIB
from spct.engine.online import RequestCancelled
from spct.grm.model import prompt_ids

B = 16  # block_size of every engine here


@pytest.fixture(scope="module")
def engine16(default_model_dir):
    return spct.Engine.from_pretrained(default_model_dir, dtype="bfloat16", kv_cache_mb=16)


@pytest.fixture(scope="module")
def engine32(default_model_dir):
    return spct.Engine.from_pretrained(default_model_dir, dtype="float32", kv_cache_mb=16)


@pytest.fixture(scope="module")
def text_ids(engine16) -> list[int]:
    """Real text as token ids (a standard-library source: the same on every machine with this Python)."""
    ids = engine16.tokenizer(inspect.getsource(textwrap)).input_ids
    assert len(ids) > 3000
    return ids


def block_bytes(base: spct.Engine) -> int:
    c = base.runner.config
    return 2 * c.num_layers * B * c.num_kv_heads * c.head_dim * base.runner.dtype.itemsize


def fresh(base: spct.Engine, *, blocks: int = 64, max_batch: int = 256, prefill_chunk: int = 64) -> spct.Engine:
    """A new engine over base's runner with a budget of exactly `blocks` KV blocks."""
    return spct.Engine(base.runner, base.tokenizer, base.eos_token_ids, max_batch,
                       kv_cache_mb=blocks * block_bytes(base) / MIB, block_size=B, prefill_chunk=prefill_chunk)


def alone(base: spct.Engine, prompt, **kw) -> list:
    """The samples of one request submitted by itself to a fresh engine (its prompt prefilled in one step)."""
    engine = fresh(base, prefill_chunk=256)
    try:
        return engine.submit(prompt, **kw).result(timeout=120)
    finally:
        engine.shutdown()


def each_alone(base: spct.Engine, reqs) -> list[list]:
    """alone() for each (prompt, kwargs), two at a time (each on its own fresh engine: still alone there; the
    runner keeps no state between calls)."""
    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(lambda r: alone(base, r[0], **r[1]), reqs))


def requests(text_ids: list[int], n: int, seed: int, lengths=(2, 3, 4, 5, 10)) -> list[tuple[list[int], dict]]:
    """n (prompt, submit kwargs): prompts of 20-80 tokens, about half of them extending one of three shared
    prefixes (some of those a block multiple long, some not), mixed k (1-4), max_new_tokens (from lengths; short
    ones mostly, to keep the test fast), temperatures and seeds."""
    rng = random.Random(seed)
    bases = [text_ids[100:148], text_ids[900:935], text_ids[1700:1732]]
    out = []
    for i in range(n):
        if i % 2:
            base = bases[i % 3]
            start = rng.randrange(2000, 3000)
            prompt = base + text_ids[start:start + rng.randint(1, 80 - len(base))]
        else:
            start = rng.randrange(0, 3000)
            prompt = text_ids[start:start + rng.randint(20, 80)]
        kw = {"k": rng.randint(1, 4), "max_new_tokens": rng.choice(lengths), "temperature": rng.choice([0.0, 0.7, 1.0]),
              "seed": rng.randrange(1 << 30), "return_logprobs": i % 5 == 0}
        out.append((prompt, kw))
    return out


def submit_from_threads(engine: spct.Engine, reqs, threads: int = 4, seed: int = 0) -> list:
    """Submits reqs from `threads` threads, each sleeping a seeded random 0-8 ms before each submit -> handles."""
    handles: list = [None] * len(reqs)
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        rng = random.Random(seed * 1000 + t)
        try:
            for i in range(t, len(reqs), threads):
                time.sleep(rng.uniform(0, 0.008))
                prompt, kw = reqs[i]
                handles[i] = engine.submit(prompt, **kw)
        except BaseException as e:  # noqa: BLE001 - reported by the test below
            errors.append(e)

    workers = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors, errors
    return handles


# -- 1. invariance --------------------------------------------------------------------------------------------------


def check_invariance(base: spct.Engine, text_ids, n: int, seed: int, **kw) -> None:
    reqs = requests(text_ids, n, seed, **kw)
    engine = fresh(base, blocks=120, max_batch=24, prefill_chunk=64)  # requests wait, prefills are chunked
    try:
        # request 1, the first on a shared prefix, runs to its end before the others arrive: its full prompt blocks
        # are then cached for request 7 (on the same prefix) whatever the threads' timing; left to the race, request
        # 7 could arrive before they were, and the hit below failed on a slow machine
        first = engine.submit(reqs[1][0], **reqs[1][1])
        first.result(timeout=300)
        handles = submit_from_threads(engine, reqs[:1] + reqs[2:], seed=seed)
        handles.insert(1, first)
        got = [h.result(timeout=300) for h in handles]
        stats = engine.stats()
    finally:
        engine.shutdown()
    assert stats["prefix_hit_tokens"] > 0  # the shared prefixes were hit
    for i, ((prompt, kw), samples, want) in enumerate(zip(reqs, got, each_alone(base, reqs))):
        assert [s.index for s in samples] == list(range(kw["k"]))
        assert samples == want, (i, kw)  # token ids, text, finish reason and logprobs, bit for bit


def test_samples_equal_alone_bf16(engine16, text_ids):
    """50 requests from 4 threads at random times: every sample equals the request's sample alone (bfloat16)."""
    check_invariance(engine16, text_ids, 50, seed=1)


def test_samples_equal_alone_fp32(engine32, text_ids):
    """The same in float32: 8 requests, max_new_tokens 2-6 (a float32 step takes ~4 times a bfloat16 one)."""
    check_invariance(engine32, text_ids, 8, seed=2, lengths=(2, 3, 4, 6))


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_samples_equal_alone_many(request, text_ids, dtype):
    engine = request.getfixturevalue("engine16" if dtype == "bfloat16" else "engine32")
    for seed in (10, 11, 12):
        check_invariance(engine, text_ids, 120, seed=seed, lengths=range(2, 11))


# -- 2. the prefix cache --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p_len", [32, 48])
def test_extending_a_cached_prompt_prefills_only_the_new_tokens(engine16, text_ids, p_len):
    engine = fresh(engine16)
    try:
        p, x = text_ids[200:200 + p_len], text_ids[600:619]
        engine.submit(p, max_new_tokens=3, temperature=0.0).result(timeout=60)
        before = engine.stats()
        assert before["prefill_tokens"] == p_len and before["prefix_hit_tokens"] == 0
        longer = engine.submit(p + x, k=2, max_new_tokens=3, temperature=0.7, seed=4).result(timeout=60)
        after = engine.stats()
        assert after["prefill_tokens"] - before["prefill_tokens"] == len(x)
        assert after["prefix_hit_tokens"] - before["prefix_hit_tokens"] == p_len
    finally:
        engine.shutdown()
    assert longer == alone(engine16, p + x, k=2, max_new_tokens=3, temperature=0.7, seed=4)


def test_extending_a_prompt_with_a_partial_last_block(engine16, text_ids):
    """P of 40 tokens: 2 full blocks of 16 and 8 more. The radix cache holds full blocks only; the scheduler's
    matching is exact to the token (since fdc9347; 3b9d478 prefilled len(P) % 16 + len(X) here): P's partial last
    block is kept and its 8 tokens copied, so P + X prefills only len(X)."""
    engine = fresh(engine16)
    try:
        p, x = text_ids[300:340], text_ids[700:713]
        engine.submit(p, max_new_tokens=3, temperature=0.0).result(timeout=60)
        before = engine.stats()
        longer = engine.submit(p + x, k=2, max_new_tokens=3, temperature=0.7, seed=4).result(timeout=60)
        after = engine.stats()
    finally:
        engine.shutdown()
    assert longer == alone(engine16, p + x, k=2, max_new_tokens=3, temperature=0.7, seed=4)  # the copied KV is right
    assert after["prefix_hit_tokens"] - before["prefix_hit_tokens"] == len(p)
    assert after["prefill_tokens"] - before["prefill_tokens"] == len(x)


def test_four_response_orders_prefill_the_shared_prefix_once(engine16):
    """A GRM item: 4 responses shown in 4 rotated orders (one prompt each), k = 4 per prompt = 16 samples, submitted
    together. The system prompt + instructions + query (the common prefix, 210 tokens today) is prefilled once: the
    three other prompts wait for its prefill, match its 13 full blocks and copy the 2 tokens of the 14th that they
    share, and prefill only the rest."""
    responses = ["Paris.", "It is Paris, the capital.", "Lyon.", "I think Marseille."]
    prompts = [prompt_ids(engine16.tokenizer, "What is the capital of France?",
                          [responses[(p + j) % 4] for p in range(4)]) for j in range(4)]
    common = min(next(i for i, (a, b) in enumerate(zip(prompts[0], q)) if a != b) for q in prompts[1:])
    assert common > 4 * B and common % B and len({tuple(q) for q in prompts}) == 4  # a copy of a partial block
    engine = fresh(engine16, blocks=200, prefill_chunk=256)
    try:
        handles = [engine.submit(q, k=4, max_new_tokens=2, temperature=1.0, seed=5) for q in prompts]
        got = [h.result(timeout=120) for h in handles]
        stats = engine.stats()
    finally:
        engine.shutdown()
    assert stats["prefix_hit_tokens"] == 3 * common  # 13 full blocks and 2 tokens copied from the 14th
    assert stats["prefill_tokens"] == sum(len(q) for q in prompts) - 3 * common
    assert sum(len(s) for s in got) == 16
    assert got[1] == alone(engine16, prompts[1], k=4, max_new_tokens=2, temperature=1.0, seed=5)


TIGHT_BLOCKS = 10


@pytest.fixture(scope="module")
def tight_run(engine16, text_ids):
    """The same 5 requests on a roomy engine and on one of TIGHT_BLOCKS blocks (about two requests' worth: blocks
    are evicted and requests preempted), stats sampled from another thread during the tight run."""
    rng = random.Random(3)
    reqs = []
    for i in range(5):
        start = rng.randrange(0, 3000)
        prompt = (text_ids[50:82] if i % 3 == 0 else []) + text_ids[start:start + rng.randint(10, 30)]
        reqs.append((prompt, {"k": 3, "max_new_tokens": rng.randint(5, 7), "temperature": 0.7, "seed": i}))
    roomy = fresh(engine16, blocks=200)
    try:
        want = [h.result(timeout=120) for h in [roomy.submit(p, **kw) for p, kw in reqs]]
    finally:
        roomy.shutdown()
    engine = fresh(engine16, blocks=TIGHT_BLOCKS, prefill_chunk=32)
    seen, stop = [], threading.Event()

    def sampler() -> None:
        while not stop.is_set():
            seen.append(engine.stats())
            time.sleep(0.002)

    watcher = threading.Thread(target=sampler)
    try:
        handles = [engine.submit(p, **kw) for p, kw in reqs]
        watcher.start()
        got = [h.result(timeout=120) for h in handles]
    finally:
        stop.set()
        if watcher.is_alive():
            watcher.join()
        online = engine._online
        cache_stats = online.scheduler.cache.stats()
        final = engine.stats()
        engine.shutdown()
    return {"want": want, "got": got, "seen": seen, "final": final, "cache": cache_stats, "online": online,
            "engine": engine}


def test_preemption_and_eviction_give_the_same_samples(tight_run):
    assert tight_run["final"]["preemptions"] > 0
    assert tight_run["cache"]["evicted_blocks"] > 0
    assert tight_run["got"] == tight_run["want"]


def test_the_kv_stays_within_its_budget(tight_run):
    seen, online, engine = tight_run["seen"], tight_run["online"], tight_run["engine"]
    assert len(seen) > 10 and any(s["running"] for s in seen)
    for s in seen:
        assert s["blocks_total"] == TIGHT_BLOCKS
        assert s["blocks_used"] + s["blocks_cached"] <= s["blocks_total"], s
    assert online.kv_bytes <= engine.kv_cache_mb * MIB
    assert online.kv_bytes == TIGHT_BLOCKS * online.block_bytes
    assert 0 < online.scheduler.peak_used <= online.num_blocks == TIGHT_BLOCKS
    final = tight_run["final"]
    assert final["blocks_used"] == 0 and final["blocks_free"] + final["blocks_cached"] == TIGHT_BLOCKS


# -- 3. faults ------------------------------------------------------------------------------------------------------


def test_cancel_during_decode_frees_every_block(engine16, text_ids):
    engine = fresh(engine16, blocks=200)
    try:
        handle = engine.submit(text_ids[400:440], k=3, max_new_tokens=500, min_new_tokens=500, seed=1)
        deadline = time.monotonic() + 60
        while engine.stats()["decode_tokens"] < 3:
            assert time.monotonic() < deadline and not handle.done()
            time.sleep(0.005)
        assert engine.stats()["blocks_used"] > 0
        engine.cancel(handle)
        with pytest.raises(RequestCancelled):
            handle.result(timeout=60)
        stats = engine.stats()
        assert stats["blocks_used"] == 0 and stats["running"] == 0 and stats["waiting"] == 0
        assert stats["blocks_free"] + stats["blocks_cached"] == stats["blocks_total"]
        with pytest.raises(RequestCancelled):
            list(handle)
        # the engine goes on
        assert len(engine.submit(text_ids[400:440], k=2, max_new_tokens=2).result(timeout=60)) == 2
    finally:
        engine.shutdown()


def test_a_request_larger_than_the_budget_is_refused(engine16, text_ids):
    engine = fresh(engine16, blocks=8)
    try:
        prompt, k, new = text_ids[:40], 4, 100
        own = k * math.ceil((len(prompt) % B + new) / B)  # each sample's blocks, the copied partial one included
        with pytest.raises(ValueError) as err:
            engine.submit(prompt, k=k, max_new_tokens=new)
        msg = str(err.value)
        need = int(re.search(r"needs (\d+) KV blocks", msg).group(1))
        # the prompt's full blocks, or all its blocks (its partial last one is held until the samples copy it)
        assert need in (len(prompt) // B + own, -(-len(prompt) // B) + own), msg
        assert f"{need * block_bytes(engine16) / MIB:.1f} MiB" in msg, msg
        assert "budget of 8 blocks" in msg and f"({engine.kv_cache_mb:g} MiB" in msg, msg
        assert engine.stats()["waiting"] == 0
        # one that fits the budget runs
        assert len(engine.submit(prompt, k=2, max_new_tokens=4).result(timeout=60)) == 2
    finally:
        engine.shutdown()


def test_a_request_that_fills_the_budget_runs_and_one_block_more_is_refused(engine16, text_ids):
    """A 40-token prompt (2 full blocks and a partial one) with k = 2 samples of 8 tokens: at its fork it holds its
    3 blocks and each sample's copy of the partial one, 5 blocks. On 5 blocks it runs to its end; on 4 it is refused
    at submit, not accepted to wait forever for room it can never have."""
    prompt, kw = text_ids[2000:2040], {"k": 2, "max_new_tokens": 8, "min_new_tokens": 8, "temperature": 0.7, "seed": 3}
    engine = fresh(engine16, blocks=5)
    try:
        got = engine.submit(prompt, **kw).result(timeout=60)
    finally:
        engine.shutdown()
    assert got == alone(engine16, prompt, **kw)
    engine = fresh(engine16, blocks=4)
    try:
        with pytest.raises(ValueError, match="needs 5 KV blocks"):
            engine.submit(prompt, **kw).result(timeout=10)
    finally:
        engine.shutdown()


class Boom(Exception):
    pass


def test_a_failing_constraint_fails_its_request_alone(engine16, text_ids):
    def bad(j, ids):
        if len(ids) == 2:
            raise Boom(f"sample {j} at 2")
        return None

    reqs = [(text_ids[500 + 60 * i:530 + 60 * i], {"k": 2, "max_new_tokens": 4, "temperature": 0.7, "seed": i})
            for i in range(3)]
    engine = fresh(engine16)
    try:
        handles = [engine.submit(p, **kw) for p, kw in reqs[:2]]
        failing = engine.submit(text_ids[900:930], k=3, max_new_tokens=6, min_new_tokens=4, seed=9,
                                constraint=bad)
        handles += [engine.submit(p, **kw) for p, kw in reqs[2:]]
        with pytest.raises(Boom, match="at 2"):
            failing.result(timeout=60)
        got = [h.result(timeout=60) for h in handles]
        stats = engine.stats()
    finally:
        engine.shutdown()
    assert stats["blocks_used"] == 0 and stats["running"] == 0
    assert got == each_alone(engine16, reqs)


# -- 4. the handle API ----------------------------------------------------------------------------------------------


def test_await_iterate_and_generate_agree_with_result(engine16, text_ids):
    kw = {"k": 4, "max_new_tokens": 4, "temperature": 1.0, "seed": 21}
    prompt = text_ids[1000:1030]
    engine = fresh(engine16)
    try:
        want = engine.submit(prompt, **kw).result(timeout=60)

        async def main():
            handles = [engine.submit(prompt, **kw), engine.submit(text_ids[1100:1125], k=2, max_new_tokens=3)]
            return await asyncio.gather(*handles), handles

        (awaited, _), handles = asyncio.run(main())
        assert awaited == want == handles[0].result()

        handle = engine.submit(prompt, **kw)
        streamed = list(handle)
        assert sorted(s.index for s in streamed) == list(range(4))
        assert sorted(streamed, key=lambda s: s.index) == handle.result() == want

        prompts = [prompt, text_ids[1200:1250], text_ids[1300:1322]]
        outs = engine.generate(prompts, k=[4, 1, 3], max_new_tokens=4, temperature=1.0, seed=[21, 5, 6])
        one = [engine.submit(p, k=k, max_new_tokens=4, temperature=1.0, seed=s).result(timeout=60)
               for p, k, s in zip(prompts, [4, 1, 3], [21, 5, 6])]
        assert outs == one and outs[0] == want
    finally:
        engine.shutdown()


def test_an_online_engine_freezes_the_startup_heap(engine16, monkeypatch):
    """Making an Online moves the objects alive then out of the cyclic collector's scans (gc.freeze);
    SPCT_GC_FREEZE=0 leaves the collector as it is."""
    gc.unfreeze()
    monkeypatch.setenv("SPCT_GC_FREEZE", "0")
    online.freeze_startup_heap()
    assert gc.get_freeze_count() == 0
    monkeypatch.delenv("SPCT_GC_FREEZE")
    loop = online.Online(engine16.runner, engine16.rules, 256, num_blocks=4, block_size=16, max_batch=2,
                         prefill_chunk=16)
    assert gc.get_freeze_count() > 0
    loop.shutdown()
