"""The `spct` command line: thin wrappers over the Python API.

  spct fetch smollm2-135m                  fetch + convert a model alias, print its directory
  spct extract generations.jsonl [-o out]  principles, critique spans and scores of GRM generations
  spct generate prompts.jsonl -k 4         k samples per prompt (one JSON line per prompt)
  spct score --input items.jsonl --output out.jsonl --k 8    GRM rewards per item (resumable)
  spct eval --data rmb_bon.jsonl.gz --format rmb-bon --k 1,4,16 --out DIR   accuracy vs k (JSON, table, plot)
  spct train rft|rl|meta-rm --config FILE [--resume] [--FIELD VALUE ...]   SPCT training stages
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from spct._atomic import append_lines, complete_lines, write_text
from spct.items import check, iter_jsonl

TEXT_KEYS = ("generation", "text", "output")


def _generation(record: dict, lineno: int) -> str:
    for key in TEXT_KEYS:
        if isinstance(record.get(key), str):
            return record[key]
    raise SystemExit(f"record {lineno} has none of the text keys {TEXT_KEYS}")


def _write_lines(path: Path, lines: list[str]) -> None:
    write_text(path, "".join(line + "\n" for line in lines))  # atomic: readers never see half a file


def cmd_fetch(args: argparse.Namespace) -> None:
    from spct.engine.models import fetch

    print(fetch(args.model))


def cmd_extract(args: argparse.Namespace) -> None:
    import spct

    records = [r for _, r in iter_jsonl(Path(args.input))]
    texts = [_generation(r, i + 1) for i, r in enumerate(records)]
    counts = [int(r.get("num_responses", args.num_responses)) for r in records]
    ex = spct.extract_scores(texts, num_responses=counts, score_range=tuple(args.score_range))
    lines = []
    for i, n in enumerate(counts):
        row = {
            "valid": bool(ex.valid[i]),
            "scores": ex.scores[i, :n].tolist() if ex.valid[i] else None,
            "principles": [{"name": name, "weight": w} for name, w in ex.principles[i]],
            "principle_span": ex.principle_span[i].tolist(),
            "critique_span": ex.critique_span[i].tolist(),
        }
        lines.append(json.dumps({**({"id": records[i]["id"]} if "id" in records[i] else {}), **row}))
    if args.output:
        _write_lines(Path(args.output), lines)
    else:
        print("\n".join(lines))
    valid = int(ex.valid.sum())
    print(f"{valid}/{len(texts)} generations valid", file=sys.stderr)


def cmd_generate(args: argparse.Namespace) -> None:
    import spct

    records = [r for _, r in iter_jsonl(Path(args.input))]
    prompts = []
    for i, r in enumerate(records, 1):
        prompt = r.get("prompt", r.get("token_ids"))
        if not isinstance(prompt, (str, list)):
            raise SystemExit(f"record {i} has neither 'prompt' (a string) nor 'token_ids' (a list)")
        prompts.append(prompt)
    engine = spct.Engine.from_pretrained(args.model, dtype=args.dtype)
    outs = engine.generate(prompts, k=args.k, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                           top_k=args.top_k, top_p=args.top_p, min_p=args.min_p, seed=args.seed, stop=args.stop)
    lines = [json.dumps({**({"id": r["id"]} if "id" in r else {}),
                         "samples": [{"text": s.text, "token_ids": s.token_ids, "finish_reason": s.finish_reason}
                                     for s in samples]}) for r, samples in zip(records, outs)]
    if args.output:
        _write_lines(Path(args.output), lines)
    else:
        print("\n".join(lines))


def _read_items(path: Path, skip_invalid: bool) -> list[tuple[int, dict]]:
    """(line number, item record) for each item line (`spct.items.check`: a query and responses); a malformed line
    stops the job, or with skip_invalid is reported and skipped."""
    def skip(error: ValueError) -> None:
        print(f"skipped {error}", file=sys.stderr)

    items = []
    try:
        for lineno, record in iter_jsonl(path, skip if skip_invalid else None):
            try:
                check(record, f"{path}:{lineno}", "responses")
            except ValueError as error:
                if not skip_invalid:
                    raise
                skip(error)
                continue
            items.append((lineno, record))
    except ValueError as exc:
        raise SystemExit(f"{exc} (--skip-invalid skips such lines)") from None
    return items


def _done_keys(path: Path) -> set[str]:
    """Keys of the items already in an output file; a torn last line (the job was killed mid-write) is cut off."""
    return {json.loads(line)["key"] for line in complete_lines(path)}


def _json_float(x: float) -> float | None:
    return None if x != x else x  # NaN -> null


def cmd_score(args: argparse.Namespace) -> None:
    import spct

    items = _read_items(Path(args.input), args.skip_invalid)
    out = Path(args.output)
    done = _done_keys(out)
    key = lambda lineno, item: str(item.get("id", f"line:{lineno}"))  # noqa: E731
    todo = [(n, lineno, item) for n, (lineno, item) in enumerate(items) if key(lineno, item) not in done]
    print(f"{len(items)} items, {len(items) - len(todo)} already in {out}, {len(todo)} to score", file=sys.stderr)
    if not todo:
        return
    grm = spct.GenerativeRewardModel.from_pretrained(args.model, dtype=args.dtype)
    meta_rm = None if args.meta_rm is None else spct.MetaRewardModel.from_pretrained(args.meta_rm, dtype=args.dtype)
    try:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="item", file=sys.stderr)
    except ImportError:
        bar = None
    for start in range(0, len(todo), args.batch_size):
        chunk = todo[start: start + args.batch_size]
        judged = grm.score_batch([item for _, _, item in chunk], k=args.k, seed=args.seed,
                                 max_new_tokens=args.max_new_tokens, indices=[n for n, _, _ in chunk],
                                 meta_rm=meta_rm, k_meta=args.k_meta, force_scores=args.force_scores)
        lines = [json.dumps({"key": key(lineno, item), **({"id": item["id"]} if "id" in item else {}),
                             "rewards": [_json_float(r) for r in j.rewards], "best": j.best,
                             "num_valid": j.num_valid, "k": args.k}) for (_, lineno, item), j in zip(chunk, judged)]
        append_lines(out, lines)
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()


def cmd_eval(args: argparse.Namespace) -> None:
    import spct
    from spct.eval import datasets, run

    try:
        ks = [int(x) for x in args.k.split(",")]
    except ValueError:
        raise SystemExit(f"--k must be comma-separated ints, got {args.k!r}") from None
    if not ks or min(ks) < 1:
        raise SystemExit(f"--k values must be >= 1, got {args.k!r}")
    items = datasets.read(args.data, args.format, args.limit)
    if not items:
        raise SystemExit(f"no items in {args.data}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    grm = spct.GenerativeRewardModel.from_pretrained(args.model, dtype=args.dtype)
    meta_rm = None if args.meta_rm is None else spct.MetaRewardModel.from_pretrained(args.meta_rm, dtype=args.dtype)
    try:
        from tqdm import tqdm

        passes = (1 in ks) + any(k > 1 for k in ks)  # greedy k = 1, then the largest k (smaller ks reuse its samples)
        bar = tqdm(total=len(items) * passes, unit="item", file=sys.stderr)
        progress = bar.update
    except ImportError:
        bar, progress = None, None
    results = run.evaluate(grm, items, ks, seed=args.seed, max_new_tokens=args.max_new_tokens,
                           batch_size=args.batch_size, meta_rm=meta_rm, k_meta=args.k_meta, progress=progress,
                           force_scores=args.force_scores, cache_dir=out / "samples",
                           settings={"model": args.model, "dtype": args.dtype, "data": Path(args.data).name,
                                     "format": args.format, "meta_rm": args.meta_rm})
    if bar is not None:
        bar.close()
    results["config"] = {"model": args.model, "data": Path(args.data).name, "format": args.format,
                         "limit": args.limit, "items": len(items), "ks": ks, "seed": args.seed,
                         "max_new_tokens": args.max_new_tokens, "meta_rm": args.meta_rm, "k_meta": args.k_meta,
                         "dtype": args.dtype, "force_scores": args.force_scores}
    run.write_json(out / "results.json", results)
    run.plot(results, out / "accuracy_vs_k.png", f"{Path(args.model).name} on {Path(args.data).name} "
             f"({len(items)} items)")
    print(run.table(results))
    if "k_plain" in results:
        print("without the Meta RM (plain voting over the same samples):")
        print(run.table({"k": results["k_plain"]}))
    print(f"wrote {out / 'results.json'} and {out / 'accuracy_vs_k.png'}", file=sys.stderr)


# stage -> the module whose run(cfg, resume=...) trains it
TRAINERS = {"rft": "spct.train.rft", "rl": "spct.train.grpo", "meta-rm": "spct.train.meta_rm"}


def cmd_train(args: argparse.Namespace) -> None:
    import importlib

    from spct.train.config import config_overrides, load_config

    cfg = load_config(args.stage, args.config, config_overrides(args, args.stage))
    stats = importlib.import_module(TRAINERS[args.stage]).run(cfg, resume=args.resume)
    print(json.dumps(stats))


def _add_model_commands(sub) -> None:
    """fetch, extract, generate."""
    p = sub.add_parser("fetch", help="fetch and convert a model alias (or pass a local checkpoint through)")
    p.add_argument("model", help="alias such as smollm2-135m, a checkpoint directory or a .gguf file")
    p.set_defaults(func=cmd_fetch)
    p = sub.add_parser("extract", help="extract principles, critique spans and scores from GRM generations")
    p.add_argument("input", help=f"JSONL, one generation per line under one of the keys {TEXT_KEYS}")
    p.add_argument("-o", "--output", help="write JSONL here (atomically) instead of standard output")
    p.add_argument("-n", "--num-responses", type=int, default=2, help="responses per generation unless the record "
                   "has 'num_responses' (default 2)")
    p.add_argument("--score-range", type=float, nargs=2, default=(1.0, 10.0), metavar=("LO", "HI"))
    p.set_defaults(func=cmd_extract)
    p = sub.add_parser("generate", help="k samples per prompt with the prefix-shared engine")
    p.add_argument("input", help="JSONL, one prompt per line: {'prompt': str} or {'token_ids': [int, ...]}")
    p.add_argument("-o", "--output", help="write JSONL here (atomically) instead of standard output")
    p.add_argument("-m", "--model", default="smollm2-135m", help="alias, checkpoint directory or .gguf")
    p.add_argument("-k", type=int, default=1, help="samples per prompt (default 1)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop", action="append", default=[], help="a stop string (repeatable)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.set_defaults(func=cmd_generate)


def _add_judging_commands(sub) -> None:
    """score, eval."""
    p = sub.add_parser("score", help="GRM rewards for the responses of each item (resumable)")
    p.add_argument("--input", required=True, help="JSONL items: {'id', 'query', 'responses': [str, ...]}")
    p.add_argument("--output", required=True, help="JSONL, one line per item (null reward: no valid sample); "
                   "lines are appended per batch, and a rerun skips the items already there")
    p.add_argument("--model", default="smollm2-135m", help="alias, checkpoint directory or .gguf")
    p.add_argument("--k", type=int, default=1, help="samples per item (default 1: greedy)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=16, help="items decoded together (default 16)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--skip-invalid", action="store_true", help="report and skip malformed input lines")
    p.add_argument("--meta-rm", help="a Meta RM checkpoint (or a backbone, for a fresh head): guided voting")
    p.add_argument("--k-meta", type=int, help="samples kept by the Meta RM (default k // 2)")
    p.add_argument("--force-scores", action="store_true", help="append a grammar-constrained score group to "
                   "samples that end without one")
    p.set_defaults(func=cmd_score)
    p = sub.add_parser("eval", help="GRM accuracy on a benchmark for several k (JSON, table, plot)")
    p.add_argument("--data", required=True, help="the benchmark file (or LLMBar folder)")
    p.add_argument("--format", required=True, choices=["rmb-bon", "rmb-pairwise", "llmbar", "rewardbench", "jsonl"])
    p.add_argument("--k", default="1", help="comma-separated sample counts, e.g. 1,8,32 (default 1)")
    p.add_argument("--out", required=True, help="folder for results.json, accuracy_vs_k.png and samples/ (the "
                   "judged batches, so a rerun resumes)")
    p.add_argument("--model", default="smollm2-135m", help="alias, checkpoint directory or .gguf")
    p.add_argument("--limit", type=int, help="the first N items only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--meta-rm", help="a Meta RM checkpoint for guided voting")
    p.add_argument("--k-meta", type=int, help="samples kept by the Meta RM (default k // 2)")
    p.add_argument("--force-scores", action="store_true", help="force a score group where a sample has none")
    p.set_defaults(func=cmd_eval)


def _add_train_command(sub) -> None:
    p = sub.add_parser("train", help="SPCT training stages (rejective fine-tuning, GRPO, Meta RM)")
    stages = p.add_subparsers(dest="stage", required=True)
    from spct.train.config import add_config_arguments

    helps = {"rft": "rejective fine-tuning: sample, reject, fine-tune on the kept judgements",
             "rl": "rule-based online RL (GRPO) on the model's own judgements",
             "meta-rm": "train a Meta RM head on labelled judgements, report held-out ROC-AUC"}
    for stage in TRAINERS:
        q = stages.add_parser(stage, help=helps[stage])
        q.add_argument("--config", help="a .toml or .yaml file of config fields (the command line overrides it)")
        q.add_argument("--resume", action="store_true", help="continue the run in output_dir from its last checkpoint")
        add_config_arguments(q, stage)
        q.set_defaults(func=cmd_train)


def build_parser() -> argparse.ArgumentParser:
    import spct

    parser = argparse.ArgumentParser(prog="spct", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"spct {spct.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_model_commands(sub)
    _add_judging_commands(sub)
    _add_train_command(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise SystemExit(f"spct {args.command}: {exc}") from None


if __name__ == "__main__":
    main()
