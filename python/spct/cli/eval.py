"""`spct eval`: GRM accuracy on a benchmark for several k (results.json, a printed table, a plot)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spct.cli import checks


def _ks(text: str) -> list[int]:
    try:
        ks = [int(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"--k must be comma-separated integers such as 1,4,16, got {text!r}") from None
    if min(ks) < 1:
        raise ValueError(f"--k values must be >= 1, got {text!r}")
    return ks


def _check(args: argparse.Namespace) -> list[int]:
    ks = _ks(args.k)
    checks.at_least("--limit", args.limit, 1)
    checks.ray_options(args)
    checks.judging(args, max(ks))
    checks.readable(args.data, "--data", folder_ok=args.format == "llmbar")
    checks.writable_dir(args.out, "--out")
    return ks


class _Bar:
    """Tokens prefilled and decoded (a batch of long prompts moves too), with the judged items beside them."""

    def __init__(self, total_items: int):
        from tqdm import tqdm

        self.bar = tqdm(unit="tok", unit_scale=True, file=sys.stderr, desc="evaluating", dynamic_ncols=True)
        self.items, self.total = 0, total_items
        self.bar.set_postfix_str(f"items 0/{total_items}")

    def judged(self, items: int) -> None:
        self.items += items
        self.bar.set_postfix_str(f"items {self.items}/{self.total}")


def cmd_eval(args: argparse.Namespace) -> None:
    import spct
    from spct.eval import datasets

    ks = _check(args)
    items = datasets.read(args.data, args.format, args.limit)
    if not items:
        raise ValueError(f"--data {args.data}: no items")
    checks.model(args.model, "--model")
    if args.meta_rm is not None:
        checks.model(args.meta_rm, "--meta-rm")
    out = Path(args.out)
    with checks.cleanup_on_failure(out):
        if args.ray:
            _evaluate_on_ray(args, items, ks, out)
            return
        grm = spct.GenerativeRewardModel.from_pretrained(args.model, dtype=args.dtype)
        meta_rm = None if args.meta_rm is None else spct.MetaRewardModel.from_pretrained(args.meta_rm,
                                                                                         dtype=args.dtype)
        out.mkdir(parents=True, exist_ok=True)
        _evaluate(args, grm, meta_rm, items, ks, out)


def _evaluate_on_ray(args, items: list, ks: list[int], out: Path) -> None:
    """The batches on Ray actors (spct.ray), judged as in one process; the driver votes and writes."""
    from spct.eval.run import as_record
    from spct.ray import ScoreJob, Shard, connect, disconnect

    workers = connect(args.address, args.workers, args.cpus_per_worker)
    job = ScoreJob(args.model, args.dtype, workers, {}, meta_rm=args.meta_rm, cpus_per_worker=args.cpus_per_worker)
    bar = _Bar(len(items) * _passes(ks))

    def judge(kpass: int, batches: list, params: dict):
        failed = []
        shards = [Shard(list(range(start, start + len(chunk))), [(it.query, it.responses) for it in chunk])
                  for start, chunk in batches]
        for shard, results, tokens in job.run(shards, lambda n, _, why: failed.append((items[n].id, why)), params,
                                              method="judge", keep=True):
            bar.bar.update(tokens)
            yield shard.numbers, [as_record(r) for r in results]
        if failed:
            raise ValueError(f"{len(failed)} items could not be judged (item {failed[0][0]!r}: {failed[0][1]}); "
                             f"the judged batches are kept in {out / 'samples'}, and the same command resumes")

    try:
        out.mkdir(parents=True, exist_ok=True)
        _evaluate(args, None, args.meta_rm, items, ks, out, judge=judge, bar=bar)
    finally:
        job.close()
        disconnect()


def _passes(ks: list[int]) -> int:
    return (1 in ks) + any(k > 1 for k in ks)  # greedy k = 1, then the largest k (smaller ks reuse its samples)


def _evaluate(args, grm, meta_rm, items: list, ks: list[int], out: Path, judge=None, bar: _Bar | None = None) -> None:
    """Evaluates with grm (or `judge`, spct.eval.run.evaluate), then writes results.json and the plot and prints the
    table."""
    from spct.eval import run

    bar = _Bar(len(items) * _passes(ks)) if bar is None else bar
    try:
        results = run.evaluate(grm, items, ks, seed=args.seed, max_new_tokens=args.max_new_tokens, judge=judge,
                               batch_size=args.batch_size, meta_rm=meta_rm, k_meta=args.k_meta, progress=bar.judged,
                               token_progress=bar.bar.update,
                               shuffle="balanced" if args.orders == "balanced" else None,
                               force_scores=args.force_scores, cache_dir=out / "samples",
                               settings={"model": args.model, "dtype": args.dtype, "data": Path(args.data).name,
                                         "format": args.format, "meta_rm": args.meta_rm})
    finally:
        bar.bar.close()
    results["config"] = {"model": args.model, "data": Path(args.data).name, "format": args.format,
                         "limit": args.limit, "items": len(items), "ks": ks, "seed": args.seed,
                         "max_new_tokens": args.max_new_tokens, "meta_rm": args.meta_rm, "k_meta": args.k_meta,
                         "dtype": args.dtype, "force_scores": args.force_scores, "orders": args.orders}
    run.write_json(out / "results.json", results)
    run.plot(results, out / "accuracy_vs_k.png", f"{Path(args.model).name} on {Path(args.data).name} "
             f"({len(items)} items)")
    print(run.table(results))
    if "k_plain" in results:
        print("without the Meta RM (plain voting over the same samples):")
        print(run.table({"k": results["k_plain"]}))
    print(f"wrote {out / 'results.json'} and {out / 'accuracy_vs_k.png'}", file=sys.stderr)


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    from spct.eval.datasets import FORMATS

    p = sub.add_parser("eval", parents=[common], help="GRM accuracy on a benchmark for several k (JSON, table, plot)")
    p.add_argument("--data", required=True, help="the benchmark file (or LLMBar folder); formats: docs/data.md")
    p.add_argument("--format", required=True, choices=list(FORMATS), help="how to read --data")
    p.add_argument("--k", default="1", help="comma-separated sample counts, e.g. 1,8,32 (1: greedy)")
    p.add_argument("--out", required=True, help="folder for results.json, accuracy_vs_k.png and samples/ (the "
                   "judged batches, so a rerun resumes)")
    p.add_argument("--model", default="smollm2-135m", help="alias, checkpoint folder, .gguf or Hugging Face id")
    p.add_argument("--limit", type=int, help="the first N items only")
    p.add_argument("--orders", default="random", choices=["random", "balanced"], help="the response order each "
                   "sampled judgement sees: a seeded random one per sample, or rotations of one seeded order")
    p.add_argument("--seed", type=int, default=0, help="samples depend only on the item and this seed")
    p.add_argument("--max-new-tokens", type=int, default=512, help="tokens per judgement, at most")
    p.add_argument("--batch-size", type=int, default=16, help="items decoded together")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="weights and activations")
    p.add_argument("--meta-rm", help="a Meta RM checkpoint for guided voting")
    p.add_argument("--k-meta", type=int, help="samples kept by the Meta RM (default k // 2)")
    p.add_argument("--force-scores", action="store_true", help="force a score group where a sample has none")
    checks.add_ray_options(p, "judge")
    p.set_defaults(func=cmd_eval)
