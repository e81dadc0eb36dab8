"""`spct serve` under load (issue 16, "Load"), against offline `score_batch` on the same items, in one run.

    python bench/bench_serve.py                  # the defaults below (a few minutes on a 2-core CPU)
    python bench/bench_serve.py --clients 4 --requests 2 --overload-clients 4 --json out.json   # a smoke run

Loopback only, bounded in count (clients x requests) and in time (--deadline-s per phase). The items are made here
(arithmetic questions, one right and one wrong answer, alternating positions): no data files.

1. load: a real server (`python -m spct serve --model M --port 0`, started as tests/serving.py does) and
   --clients concurrent client coroutines (httpx.AsyncClient, one connection each), each sending its --requests
   `/v1/score` requests back to back. Each request is ONE item (`{"items": [item], "k", "seed", "max_new_tokens",
   "force_scores": true}`), so every item is item 0 of its request and the server seeds it as item 0. Reported:
   statuses, p50 / p90 / p99 latency, items/s and generated tokens/s (the responses' usage.completion_tokens)
   from the first send to the last answer. One request is sent first to warm the server up (not counted).
2. overload: a server with --max-queue 4 (`--overload-max-queue`) and --overload-clients concurrent clients of 2
   requests each: the 429s it answers (each must carry Retry-After), and that clients which wait Retry-After and
   try again get every request done (200), with the rewards of phase 1.
3. offline: after both servers have exited (never beside them), `GenerativeRewardModel.from_pretrained(M)
   .score_batch(all items, same k, seed, max_new_tokens, force_scores, indices=[0] * items)` in this process,
   after a warm-up call like the server's: items/s and tokens/s, the ratio server / offline (the goal: >= 0.8), and
   whether the server's rewards (and best, num_valid, completion tokens) equal offline's item for item. indices
   are all 0 because the server seeds each item as item 0 of its request; the online engine is batch invariant, so
   an item judged beside 255 others draws what it draws alone.

force_scores is on so every judgement has rewards to compare (the 135M model rarely writes a valid score group
within a few dozen tokens). The defaults (k = 1: greedy, one prompt per item; 16 new tokens) keep the run to a few
minutes on a 2-core CPU, where prefill dominates (a GRM prompt is ~290 tokens, ~90 of them the item's own): k = 2
shows each item's responses in two orders (two prompts) and takes about twice as long. Check `cat /proc/loadavg`:
the report carries it, before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import math
import sys
import time
from pathlib import Path

import httpx

TESTS = Path(__file__).resolve().parents[1] / "tests"


def load_serving():
    """tests/serving.py, the launcher the server's tests use (a real subprocess on 127.0.0.1, --port 0)."""
    spec = importlib.util.spec_from_file_location("spct_tests_serving", TESTS / "serving.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up by name
    spec.loader.exec_module(module)
    return module


def make_items(n: int) -> list[dict]:
    """n deterministic items: "What is a + b?" with the right sum and a wrong one, the right one first in even
    items and second in odd ones."""
    items = []
    for i in range(n):
        a, b = 7 + (i * 37) % 90, 3 + (i * 53) % 60
        right, wrong = str(a + b), str(a + b + 1 + i % 9)
        responses = [right, wrong] if i % 2 == 0 else [wrong, right]
        items.append({"query": f"What is {a} + {b}?", "responses": responses})
    return items


WARMUP_ITEM = {"query": "What is the capital of France?", "responses": ["Paris", "Lyon"]}


def score_body(item: dict, args) -> dict:
    return {"items": [item], "k": args.k, "seed": args.seed, "max_new_tokens": args.max_new_tokens,
            "force_scores": True}


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank q-quantile of values (q in [0, 1])."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def load_avg() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


async def send(http: httpx.AsyncClient, url: str, body: dict) -> dict:
    """One /v1/score request: status, latency, Retry-After, and the judgement and usage when 200."""
    t0 = time.perf_counter()
    try:
        r = await http.post(f"{url}/v1/score", json=body)
    except httpx.HTTPError as e:  # counted as an error with status 0
        return {"status": 0, "latency_s": time.perf_counter() - t0, "error": f"{type(e).__name__}: {e}"}
    out = {"status": r.status_code, "latency_s": time.perf_counter() - t0, "end": time.perf_counter(),
           "retry_after": r.headers.get("retry-after")}
    if r.status_code == 200:
        data = r.json()
        out["judgement"], out["completion_tokens"] = data["judgements"][0], data["usage"]["completion_tokens"]
    else:
        out["error"] = r.text[:300]
    return out


async def load_clients(url: str, items: list[dict], args) -> tuple[list[dict], float]:
    """--clients coroutines, client c sending items c * requests ... (c + 1) * requests - 1 back to back.
    Returns the results in item order and the wall time from the first send to the last answer."""
    results: list[dict | None] = [None] * len(items)
    timeout = httpx.Timeout(args.deadline_s)

    async def client(c: int) -> None:
        async with httpx.AsyncClient(timeout=timeout) as http:
            for r in range(args.requests):
                i = c * args.requests + r
                results[i] = await send(http, url, score_body(items[i], args))

    start = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(client(c) for c in range(args.clients))), args.deadline_s)
    return results, max(r["end"] for r in results if "end" in r) - start


def retry_after_s(value: str | None) -> float:
    """Retry-After in seconds (an int or a float; the HTTP-date form is not expected from spct serve)."""
    return float(value) if value is not None else 1.0


async def overload_clients(url: str, items: list[dict], args) -> list[dict]:
    """--overload-clients coroutines of 2 requests each; a 429 is retried after its Retry-After. Per item: the
    final result and the 429s it got (and whether each carried Retry-After)."""
    per_client = 2
    count = min(len(items), args.overload_clients * per_client)
    results: list[dict | None] = [None] * count

    async def client(c: int) -> None:
        async with httpx.AsyncClient(timeout=httpx.Timeout(args.deadline_s)) as http:
            for i in range(c * per_client, min(count, (c + 1) * per_client)):
                refused, missing_header, seen = 0, 0, set()
                while True:
                    res = await send(http, url, score_body(items[i], args))
                    if res["status"] != 429:
                        break
                    refused += 1
                    missing_header += res["retry_after"] is None
                    seen.add(res["retry_after"])
                    await asyncio.sleep(retry_after_s(res["retry_after"]))
                results[i] = {**res, "429s": refused, "429s_without_retry_after": missing_header,
                              "retry_after_seen": sorted(v for v in seen if v is not None)}

    await asyncio.wait_for(asyncio.gather(*(client(c) for c in range(args.overload_clients))), args.deadline_s)
    return results


def metric_values(text: str, names: tuple[str, ...]) -> dict:
    """Unlabelled samples of the named metrics from Prometheus text."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in names:
            out[parts[0]] = float(parts[1])
    return out


ENGINE_METRICS = ("spct_prefill_tokens_total", "spct_prefix_hit_tokens_total", "spct_decode_tokens_total",
                  "spct_preemptions_total")


def serve_args(args, *extra: str) -> list[str]:
    return ["--k", str(args.k), "--max-new-tokens", str(args.max_new_tokens), "--force-scores", *extra]


def run_load(serving, items: list[dict], args) -> dict:
    """Phase 1 (see the module docstring)."""
    srv = serving.start(args.model, *serve_args(args))
    try:
        warm = httpx.post(f"{srv.url}/v1/score", json=score_body(WARMUP_ITEM, args), timeout=args.deadline_s)
        warm.raise_for_status()
        results, wall = asyncio.run(load_clients(srv.url, items, args))
        engine = metric_values(httpx.get(f"{srv.url}/metrics", timeout=30).text, ENGINE_METRICS)
    finally:
        code = srv.stop()
    ok = [r for r in results if r["status"] == 200]
    latencies = [r["latency_s"] for r in ok]
    tokens = sum(r["completion_tokens"] for r in ok)
    return {"requests": len(results), "items_per_request": 1, "statuses": count_statuses(results),
            "errors": [r.get("error") for r in results if r["status"] != 200][:5],
            "latency_p50_s": percentile(latencies, 0.5), "latency_p90_s": percentile(latencies, 0.9),
            "latency_p99_s": percentile(latencies, 0.99), "wall_s": wall, "items_per_s": len(ok) / wall,
            "completion_tokens": tokens, "tokens_per_s": tokens / wall, "engine_metrics": engine,
            "exit_code": code, "results": results}


def count_statuses(results: list[dict]) -> dict:
    counts: dict[str, int] = {}
    for r in results:
        counts[str(r["status"])] = counts.get(str(r["status"]), 0) + 1
    return counts


def run_overload(serving, items: list[dict], reference: list[dict], args) -> dict:
    """Phase 2: --max-queue small, more clients than that; 429s honoured by waiting Retry-After."""
    srv = serving.start(args.model, *serve_args(args, "--max-queue", str(args.overload_max_queue)))
    try:
        t0 = time.perf_counter()
        results = asyncio.run(overload_clients(srv.url, items, args))
        wall = time.perf_counter() - t0
    finally:
        code = srv.stop()
    same = all(r["status"] == 200 and ref["status"] == 200 and same_judgement(r["judgement"], ref["judgement"])
               for r, ref in zip(results, reference))
    return {"clients": args.overload_clients, "max_queue": args.overload_max_queue, "requests": len(results),
            "final_statuses": count_statuses(results), "429s": sum(r["429s"] for r in results),
            "429s_without_retry_after": sum(r["429s_without_retry_after"] for r in results),
            "retry_after_seen": sorted({v for r in results for v in r["retry_after_seen"]}),
            "wall_s": wall, "same_rewards_as_load": same, "exit_code": code}


def same_rewards(a: list, b: list) -> bool:
    """Equal reward lists, null / NaN equal to each other."""
    nan = lambda x: x is None or (isinstance(x, float) and math.isnan(x))  # noqa: E731
    return len(a) == len(b) and all((nan(x) and nan(y)) or x == y for x, y in zip(a, b))


def same_judgement(a: dict, b: dict) -> bool:
    return same_rewards(a["rewards"], b["rewards"]) and a["best"] == b["best"] and a["num_valid"] == b["num_valid"]


def run_offline(items: list[dict], args) -> dict:
    """Phase 3: score_batch in this process, every item numbered 0 as the server numbers it."""
    import torch

    import spct

    grm = spct.GenerativeRewardModel.from_pretrained(args.model)
    kw = dict(k=args.k, seed=args.seed, max_new_tokens=args.max_new_tokens, force_scores=True)
    grm.score_batch([WARMUP_ITEM], indices=[0], **kw)  # the server's warm-up request, here
    t0 = time.perf_counter()
    judged = grm.score_batch(items, indices=[0] * len(items), **kw)
    wall = time.perf_counter() - t0
    grm.engine.shutdown()
    tokens = [sum(s.num_tokens for s in j.samples) for j in judged]
    return {"threads": torch.get_num_threads(), "wall_s": wall, "items_per_s": len(items) / wall,
            "completion_tokens": sum(tokens), "tokens_per_s": sum(tokens) / wall,
            "judgements": [{"rewards": [None if math.isnan(x) else x for x in j.rewards], "best": j.best,
                            "num_valid": j.num_valid, "completion_tokens": t} for j, t in zip(judged, tokens)]}


def compare(load: dict, offline: dict) -> dict:
    """Item by item: the server's judgement against offline's, and the throughput ratios."""
    pairs = list(zip(load["results"], offline["judgements"]))
    differ = [i for i, (r, o) in enumerate(pairs) if r["status"] != 200 or not same_judgement(r["judgement"], o)]
    tokens_differ = [i for i, (r, o) in enumerate(pairs)
                     if r["status"] == 200 and r["completion_tokens"] != o["completion_tokens"]]
    return {"items_compared": len(pairs), "judgements_differ": differ, "completion_tokens_differ": tokens_differ,
            "same_rewards": not differ, "items_per_s_ratio": load["items_per_s"] / offline["items_per_s"],
            "tokens_per_s_ratio": load["tokens_per_s"] / offline["tokens_per_s"]}


def table(report: dict) -> str:
    load, over, off, cmp_ = report["load"], report["overload"], report["offline"], report["compare"]
    a = report["args"]
    rows = [
        ("loadavg before / after", f"{' '.join(report['loadavg_before'])} / {' '.join(report['loadavg_after'])}"),
        ("load", f"{a['clients']} clients x {a['requests']} requests, 1 item each, k={a['k']}, "
                 f"max_new_tokens={a['max_new_tokens']}, force_scores"),
        ("statuses", json.dumps(load["statuses"])),
        ("latency p50 / p90 / p99", f"{load['latency_p50_s']:.2f} / {load['latency_p90_s']:.2f} / "
                                    f"{load['latency_p99_s']:.2f} s"),
        ("server items/s, tokens/s", f"{load['items_per_s']:.2f}, {load['tokens_per_s']:.1f} "
                                     f"({load['completion_tokens']} tokens in {load['wall_s']:.1f} s)"),
        ("offline items/s, tokens/s", f"{off['items_per_s']:.2f}, {off['tokens_per_s']:.1f} "
                                      f"({off['completion_tokens']} tokens in {off['wall_s']:.1f} s)"),
        ("server / offline (items, tokens)", f"{cmp_['items_per_s_ratio']:.3f}, {cmp_['tokens_per_s_ratio']:.3f}"),
        ("rewards equal offline", f"{cmp_['same_rewards']} ({cmp_['items_compared']} items; differ: "
                                  f"{cmp_['judgements_differ'][:8]}; completion tokens differ: "
                                  f"{cmp_['completion_tokens_differ'][:8]})"),
        ("overload", f"{over['clients']} clients x 2, --max-queue {over['max_queue']}: {over['429s']} x 429 "
                     f"(Retry-After {over['retry_after_seen']}, {over['429s_without_retry_after']} without), final "
                     f"{json.dumps(over['final_statuses'])}, same rewards {over['same_rewards_as_load']}, "
                     f"{over['wall_s']:.1f} s"),
        ("server exit codes (load, overload)", f"{load['exit_code']}, {over['exit_code']}"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=8, help="requests per client, sent back to back")
    ap.add_argument("--k", type=int, default=1, help="samples per item (1: greedy)")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--overload-clients", type=int, default=16)
    ap.add_argument("--overload-max-queue", type=int, default=4)
    ap.add_argument("--deadline-s", type=float, default=600.0, help="the most seconds one phase may take")
    ap.add_argument("--json", type=Path, help="write the report here")
    args = ap.parse_args()
    report = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "loadavg_before": load_avg()}
    serving = load_serving()
    items = make_items(args.clients * args.requests)
    t0 = time.perf_counter()
    report["load"] = run_load(serving, items, args)
    report["overload"] = run_overload(serving, items, report["load"]["results"], args)
    report["offline"] = run_offline(items, args)
    report["compare"] = compare(report["load"], report["offline"])
    report["total_s"], report["loadavg_after"] = time.perf_counter() - t0, load_avg()
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
