"""`spct serve --replicas` on this machine against plain `spct serve` (a script, loopback only, bounded in count).

    python bench/bench_serve_replicas.py [--clients 8] [--requests 4] [--sequential 16] [--json out.json]

Three servers, one after another (never two at once), on the same items (bench_serve.py's arithmetic items, one per
request, forced score groups, greedy k = 1 by default):
- `spct serve` (one process, all the machine's threads);
- `--replicas 1 --cpus-per-replica 2`: the same engine behind Ray Serve's proxy, the ingress and the router, so the
  difference in a lone request's latency to plain `spct serve` is the Ray path's cost per request;
- `--replicas 2` (1 CPU each): the scaling.

For each: --sequential requests one at a time (the median latency), then --clients concurrent clients of --requests
requests each (items/s from the first send to the last answer). A warm-up of 8 distinct prompts first, so every
replica has run once. Prints a table and writes --json; `/proc/loadavg` before and after is in the report.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import httpx

from bench_serve import load_avg, load_clients, load_serving, make_items, score_body, serve_args

CONFIGS = [("spct serve", []), ("1 replica of 2 CPUs", ["--replicas", "1", "--cpus-per-replica", "2"]),
           ("2 replicas of 1 CPU", ["--replicas", "2"])]


def run(serving, name: str, extra: list[str], items: list[dict], args) -> dict:
    srv = serving.start(args.model, *serve_args(args), *extra, timeout=600)
    try:
        with httpx.Client(timeout=args.deadline_s) as http:
            for item in make_items(8):
                http.post(f"{srv.url}/v1/score", json=score_body({**item, "query": "Warm: " + item["query"]},
                                                                   args)).raise_for_status()
            latencies = []
            for item in items[: args.sequential]:
                t0 = time.perf_counter()
                http.post(f"{srv.url}/v1/score", json=score_body(item, args)).raise_for_status()
                latencies.append(time.perf_counter() - t0)
        results, wall = asyncio.run(load_clients(srv.url, items[args.sequential:], args))
    finally:
        code = srv.stop(timeout=120)
    ok = sum(r["status"] == 200 for r in results)
    return {"name": name, "median_latency_s": statistics.median(latencies), "items_per_s": ok / wall,
            "ok": ok, "requests": len(results), "exit_code": code}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=4)
    p.add_argument("--sequential", type=int, default=16)
    p.add_argument("--k", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--deadline-s", type=float, default=600.0)
    p.add_argument("--json", default="bench_serve_replicas.json")
    args = p.parse_args()
    serving = load_serving()
    items = make_items(args.sequential + args.clients * args.requests)
    report = {"load_before": load_avg(), "runs": []}
    for name, extra in CONFIGS:
        report["runs"].append(run(serving, name, extra, items, args))
    report["load_after"] = load_avg()
    plain, one, two = report["runs"]
    report["ray_cost_per_request_s"] = one["median_latency_s"] - plain["median_latency_s"]
    report["two_over_one_replica"] = two["items_per_s"] / one["items_per_s"]
    report["two_replicas_over_plain"] = two["items_per_s"] / plain["items_per_s"]
    print(f"load {' '.join(report['load_before'])} -> {' '.join(report['load_after'])}")
    print(f"{'server':<24}{'median latency, 1 at a time':>30}{'items/s, concurrent':>22}")
    for r in report["runs"]:
        print(f"{r['name']:<24}{r['median_latency_s'] * 1000:>27.0f} ms{r['items_per_s']:>22.2f}")
    print(f"Ray path per request: {report['ray_cost_per_request_s'] * 1000:+.0f} ms; 2 replicas / 1 replica of 2 CPUs "
          f"= {report['two_over_one_replica']:.2f}x; 2 replicas / spct serve = {report['two_replicas_over_plain']:.2f}x")
    with open(args.json, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
