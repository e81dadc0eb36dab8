"""`spct score --ray` scaling on this machine (a script: `python bench/bench_ray.py [--items 96] [--k 4]`).

One process, in turn, on the same items (short GRM items, `--max-new-tokens` tokens and a forced score group,
as the tests score them), each shard as `spct score --ray` cuts it:
- local: the GRM in this process on all the machine's threads, scoring the shards one after another (what `spct
  score` without --ray does, a batch at a time);
- Ray, 1 worker with all the CPUs: the same work through one actor, so the difference to local is the Ray path's
  cost per item (transfer, scheduling, the driver's loop);
- Ray, 1 worker of 1 CPU and 2 workers of 1 CPU each: items/s, and their ratio (the scaling).

Each Ray run's connect and actor start (the model loaded) are timed apart from its scoring, which its items/s
counts. Prints a table and writes `--json` (default bench_ray.json). On a 2-core machine two 1-CPU workers share the
machine's memory bandwidth, which decode is bound by, so their scaling stays below 2x.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

import spct
from spct.engine.models import fetch
from spct.ray import ScoreJob, Shard, connect, disconnect


def items(n: int) -> list[dict]:
    return [{"id": f"item-{i}", "query": f"What is {i} + {i}?", "responses": [str(2 * i), str(2 * i + 1)]}
            for i in range(n)]


def shards(todo: list[dict], workers: int, batch: int = 16) -> list[Shard]:
    size = max(1, min(batch, -(-len(todo) // (4 * workers))))  # as spct score --ray cuts them
    return [Shard(list(range(i, min(i + size, len(todo)))), todo[i: i + size]) for i in range(0, len(todo), size)]


def local(model: str, todo: list[dict], params: dict) -> dict:
    grm = spct.GenerativeRewardModel.from_pretrained(model, dtype="bfloat16")
    grm.score_batch(todo[:2], indices=[0, 1], **params)  # warm-up
    start = time.perf_counter()
    for shard in shards(todo, 1):
        grm.score_batch(shard.items, indices=shard.numbers, **params)
    return {"seconds": time.perf_counter() - start, "threads": torch.get_num_threads()}


def on_ray(model: str, todo: list[dict], params: dict, workers: int, cpus: int) -> dict:
    t0 = time.perf_counter()
    connect(None, workers, cpus)
    t1 = time.perf_counter()
    job = ScoreJob(model, "bfloat16", workers, params, cpus_per_worker=cpus)
    job.start()  # the actors, their models loaded
    t2 = time.perf_counter()
    failed = []
    done = list(job.run(shards(todo, workers), lambda n, item, why: failed.append((n, why))))
    t3 = time.perf_counter()
    disconnect()
    assert not failed and sum(len(s.numbers) for s, _, _ in done) == len(todo), failed
    return {"connect_seconds": t1 - t0, "start_seconds": t2 - t1, "seconds": t3 - t2, "workers": workers,
            "cpus_per_worker": cpus}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=96)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--json", default="bench_ray.json")
    args = parser.parse_args()
    model, todo = str(fetch("smollm2-135m")), items(args.items)
    params = {"k": args.k, "seed": 3, "max_new_tokens": args.max_new_tokens, "force_scores": True}
    cpus = os.cpu_count() or 1
    runs = {"local": local(model, todo, params),
            "ray_1x_all": on_ray(model, todo, params, 1, cpus),
            "ray_1x1": on_ray(model, todo, params, 1, 1),
            "ray_2x1": on_ray(model, todo, params, 2, 1)}
    n = len(todo)
    for name, r in runs.items():
        r["items_per_s"] = n / r["seconds"]
        print(f"{name:11s} {r['seconds']:7.2f} s  {r['items_per_s']:6.2f} items/s  {json.dumps(r)}")
    # seconds: the scoring alone (the Ray runs' connect and actor start, with the model load, apart)
    summary = {"items": n, "k": args.k, "loadavg": os.getloadavg(),
               "scaling_2_workers_over_1": runs["ray_2x1"]["items_per_s"] / runs["ray_1x1"]["items_per_s"],
               "ray_overhead_ms_per_item": 1e3 * (runs["ray_1x_all"]["seconds"] - runs["local"]["seconds"]) / n,
               "runs": runs}
    print(f"2 workers / 1 worker: {summary['scaling_2_workers_over_1']:.2f}x; Ray path overhead "
          f"{summary['ray_overhead_ms_per_item']:.1f} ms per item against local (load {os.getloadavg()[0]:.2f})")
    with open(args.json, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
