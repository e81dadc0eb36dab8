"""The online engine (issue 15) against the static engine it replaced, in one run, same model, dtype and threads.

The static engine is the previous `Engine.generate` loop, kept as `spct.engine.static` (each group of prompts
prefilled once, decoded until its last sample ends; the prompt KV shared by its samples by prefix_attention).

    python bench/bench_online.py                 # all three scenarios, bf16 (minutes)
    python bench/bench_online.py --quick         # smaller counts, a smoke run

1. offline: k = 16 samples of one 1,000-token GRM prompt (bench_generate's), min = max new tokens: tokens/s of
   each, median of 3 alternating runs.
2. poisson: 64 GRM requests (RMB BoN items, two responses, k = 4) arriving as a Poisson stream at twice the rate
   the offline batch serves them, against the same requests as one offline batch on the online engine:
   throughput (generated tokens / (last finish - first arrival)) ratio, and p50 / p99 latency.
3. rmb: RMB BoN items with 4 or more responses, score_batch at k = 16 with forced scores (random orders; and
   balanced orders on the online engine): prompt tokens prefilled and wall time, static vs online, each from an
   empty prefix cache; whether the rewards are the same.

Check `cat /proc/loadavg` first: the numbers are ratios measured on a quiet machine, never beside other work.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
import threading
import time
from pathlib import Path

import torch

import spct
from spct.engine.models import fetch
from spct.engine.static import generate_static
from spct.engine.tokens import Request, check_settings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_generate import SHARED, grm_prompt  # noqa: E402


def static_generate(engine, prompts, *, k, seed=0, constraints=None, progress=None, **settings):
    """`Engine.generate` on the static loop (token-id prompts)."""
    st = check_settings(settings.pop("max_new_tokens", 256), settings.pop("min_new_tokens", 0),
                        settings.pop("temperature", 1.0), settings.pop("top_k", 0), settings.pop("top_p", 1.0),
                        settings.pop("min_p", 0.0), settings.pop("stop", ()), settings.pop("return_logprobs", False))
    ks = k if isinstance(k, list) else [k] * len(prompts)
    seeds = seed if isinstance(seed, list) else [seed] * len(prompts)
    reqs = [Request(list(p), ks[i], seeds[i], st, None if constraints is None else constraints[i])
            for i, p in enumerate(prompts)]
    return generate_static(engine.runner, engine.rules, engine.context, reqs, engine.max_batch, progress)


def offline(engine, tokenizer, new_tokens: int) -> dict:
    source, ids = grm_prompt(tokenizer)
    kw = dict(k=16, seed=1, max_new_tokens=new_tokens, min_new_tokens=new_tokens, temperature=0.5)
    runs = {"static": lambda: static_generate(engine, [ids], **kw), "online": lambda: engine.generate([ids], **kw)}
    for fn in runs.values():  # warm up (first-call costs, the native kernels' buffers)
        fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(3):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    tps = {name: 16 * new_tokens / sorted(t)[1] for name, t in times.items()}
    return {"prompt": source, "prompt_tokens": len(ids), "new_tokens": new_tokens, "tokens_per_s": tps,
            "online_over_static": tps["online"] / tps["static"]}


def rmb_items(min_responses: int, count: int, max_chars: int = 1200) -> list[dict]:
    items = []
    with gzip.open(SHARED, "rt") as f:
        for line in f:
            x = json.loads(line)
            responses = [x["bon_best"]["answer"]] + [y["answer"] for y in x["loser_list"]]
            if len(responses) >= min_responses:
                items.append({"query": x["conversation_input"][-1]["content"][:max_chars],
                              "responses": [r[:max_chars] for r in responses[:min_responses]]})
            if len(items) == count:
                break
    return items


def poisson(grm, requests: int, new_tokens: int) -> dict:
    engine = grm.engine
    items = rmb_items(2, requests, max_chars=600)
    prompts = [grm.prompt_ids(it["query"], it["responses"]) for it in items]
    kw = dict(k=4, max_new_tokens=new_tokens, min_new_tokens=new_tokens, temperature=0.5)
    engine.generate(prompts[:2], seed=0, **kw)  # warm up
    engine.shutdown()  # both runs start from an empty prefix cache
    t0 = time.perf_counter()
    engine.generate(prompts, seed=list(range(len(prompts))), **kw)
    offline_s = time.perf_counter() - t0
    rate = 2 * len(prompts) / offline_s  # arrivals per second: twice what the offline batch serves
    rng = random.Random(0)
    arrivals, t = [], 0.0
    for _ in prompts:
        t += rng.expovariate(rate)
        arrivals.append(t)
    done = [0.0] * len(prompts)
    engine.shutdown()
    start = time.perf_counter()

    def client(i: int) -> None:
        time.sleep(max(0.0, start + arrivals[i] - time.perf_counter()))
        engine.submit(prompts[i], seed=i, **kw).result()
        done[i] = time.perf_counter() - start

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(prompts))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    tokens = len(prompts) * 4 * new_tokens
    online_s = max(done) - arrivals[0]
    latency = sorted(d - a for d, a in zip(done, arrivals))
    pick = lambda q: latency[min(len(latency) - 1, int(q * len(latency)))]  # noqa: E731
    return {"requests": len(prompts), "k": 4, "new_tokens": new_tokens,
            "mean_prompt_tokens": sum(map(len, prompts)) / len(prompts), "arrival_rate_per_s": rate,
            "offline_tokens_per_s": tokens / offline_s, "stream_tokens_per_s": tokens / online_s,
            "stream_over_offline": offline_s / online_s, "latency_p50_s": pick(0.5), "latency_p99_s": pick(0.99)}


def rmb(grm, count: int, new_tokens: int) -> dict:
    engine = grm.engine
    items = rmb_items(4, count)
    kw = dict(k=16, max_new_tokens=new_tokens, seed=3, force_scores=True)
    online_generate = engine.generate
    out = {"items": count, "responses": 4, "k": 16, "new_tokens": new_tokens}
    prefilled = []

    def counted_static(prompts, **g):
        prefilled.append(sum(len(p) for p in prompts))
        return static_generate(engine, prompts, **g)

    for name, shuffle in (("static", True), ("online", True), ("online_balanced", "balanced")):
        engine.generate = counted_static if name == "static" else online_generate
        engine.shutdown()  # each run starts from an empty prefix cache
        before = engine.stats()["prefill_tokens"]
        t0 = time.perf_counter()
        judged = grm.score_batch(items, shuffle=shuffle, **kw)
        wall = time.perf_counter() - t0
        tokens = prefilled[-1] if name == "static" else engine.stats()["prefill_tokens"] - before
        out[name] = {"prefill_tokens": tokens, "wall_s": wall, "rewards": [j.rewards for j in judged]}
    engine.generate = online_generate
    out["prefill_ratio_online_over_static"] = out["online"]["prefill_tokens"] / out["static"]["prefill_tokens"]
    out["wall_ratio_static_over_online"] = out["static"]["wall_s"] / out["online"]["wall_s"]
    out["same_rewards_static_online"] = out["static"]["rewards"] == out["online"]["rewards"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small counts: a smoke run, not a measurement")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--only", choices=["offline", "poisson", "rmb"], help="one scenario")
    args = ap.parse_args()
    torch.manual_seed(0)
    grm = spct.GenerativeRewardModel.from_pretrained(str(fetch("smollm2-135m")), dtype=args.dtype)
    result = {"dtype": args.dtype, "threads": torch.get_num_threads(), "loadavg_before": _load()}
    q = args.quick
    if args.only in (None, "offline"):
        result["offline"] = offline(grm.engine, grm.tokenizer, 16 if q else 128)
    if args.only in (None, "poisson"):
        result["poisson"] = poisson(grm, 8 if q else 64, 8 if q else 48)
    if args.only in (None, "rmb") and SHARED.is_file():
        result["rmb"] = rmb(grm, 1 if q else 4, 8 if q else 48)
    result["loadavg_after"] = _load()
    print(json.dumps(result, indent=1))


def _load() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()


if __name__ == "__main__":
    main()
