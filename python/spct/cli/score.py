"""`spct score`: GRM rewards per item, appended to the output a batch at a time; a rerun skips finished items.

Each output line: {"key", "id" (when the item has one), "rewards", "best", "num_valid", "k"}. `key` is the item's
id, or "line:N" for an item without one (N: its line in the input); it is what a rerun matches to skip finished
items. `rewards` are in the item's response order, null where no sample was valid.

With --ray the items go in shards to Ray actors (`spct.ray`), each shard's lines are appended as it finishes, and
the file is put back in input order at the end: the same bytes as a run in one process.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from spct._atomic import append_lines, complete_lines, write_text
from spct.cli import checks
from spct.items import ItemError, check, iter_jsonl


def _key(lineno: int, item: dict) -> str:
    return str(item.get("id", f"line:{lineno}"))


def _where(path: Path, lineno: int, item: dict) -> str:
    return f"{path}:{lineno}" + (f": item {item['id']!r}" if "id" in item else "")


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
        raise ValueError(f"{exc} (--skip-invalid skips such lines)") from None
    if not items:
        raise ValueError(f"input {path}: no items (one JSON object a line: {{'id', 'query', 'responses'}})")
    return items


def _done_keys(path: Path) -> set[str]:
    """Keys of the items already in an output file; a torn last line (the job was killed mid-write) is cut off."""
    done = set()
    for n, line in enumerate(complete_lines(path), 1):
        try:
            done.add(json.loads(line)["key"])
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"--output {path}: line {n} is not a line `spct score` writes (no 'key'); give another "
                             "--output, or remove the file to start over") from None
    return done


def _check(args: argparse.Namespace) -> tuple[Path, Path, bool]:
    """Numbers, then paths: (input, output, whether the output exists already)."""
    checks.at_least("--k", args.k, 1)
    checks.judging(args, args.k)
    checks.ray_options(args)
    inp = checks.readable(args.input, "--input")
    out = Path(args.output)
    return inp, out, checks.writable_file(out, "--output")


def _bar(total_items: int):
    """A token counter (prefill and decode: a batch of long prompts moves too) with finished items beside it."""
    from tqdm import tqdm

    bar = tqdm(unit="tok", unit_scale=True, file=sys.stderr, desc="scoring", dynamic_ncols=True)
    bar.set_postfix_str(f"items 0/{total_items}")
    return bar


def _json_float(x: float) -> float | None:
    return None if x != x else x  # NaN -> null


def cmd_score(args: argparse.Namespace) -> None:
    import spct

    inp, out, existed = _check(args)
    items = _read_items(inp, args.skip_invalid)
    done = _done_keys(out) if existed else set()
    todo = [(n, lineno, item) for n, (lineno, item) in enumerate(items) if _key(lineno, item) not in done]
    print(f"{len(items)} items, {len(items) - len(todo)} already in {out}, {len(todo)} to score", file=sys.stderr)
    if not todo:
        return
    checks.model(args.model, "--model")
    if args.meta_rm is not None:
        checks.model(args.meta_rm, "--meta-rm")
    if args.ray:
        try:
            _score_on_ray(args, inp, out, todo, [_key(lineno, item) for lineno, item in items])
        finally:
            if not existed and out.is_file() and out.stat().st_size == 0:
                out.unlink()
        return
    grm = spct.GenerativeRewardModel.from_pretrained(args.model, dtype=args.dtype)
    meta_rm = None if args.meta_rm is None else spct.MetaRewardModel.from_pretrained(args.meta_rm, dtype=args.dtype)
    try:
        _score(args, grm, meta_rm, inp, out, todo)
    finally:
        if not existed and out.is_file() and out.stat().st_size == 0:
            out.unlink()  # nothing was finished: leave nothing behind


def _score(args, grm, meta_rm, inp: Path, out: Path, todo: list) -> None:
    bar, written = _bar(len(todo)), 0
    try:
        for start in range(0, len(todo), args.batch_size):
            chunk = todo[start: start + args.batch_size]
            try:
                judged = grm.score_batch([item for _, _, item in chunk], k=args.k, seed=args.seed,
                                         max_new_tokens=args.max_new_tokens, indices=[n for n, _, _ in chunk],
                                         meta_rm=meta_rm, k_meta=args.k_meta, force_scores=args.force_scores,
                                         reduce=args.reduce, progress=bar.update,
                                         shuffle="balanced" if args.orders == "balanced" else None)
            except ItemError as exc:
                _, lineno, item = chunk[exc.index]
                raise ValueError(f"{_where(inp, lineno, item)}: {exc.detail}") from None
            _append(out, [_line(args, lineno, item, j.rewards, j.best, j.num_valid)
                          for (_, lineno, item), j in zip(chunk, judged)], written, len(todo))
            written += len(chunk)
            bar.set_postfix_str(f"items {written}/{len(todo)}")
    finally:
        bar.close()


def _line(args, lineno: int, item: dict, rewards, best: int | None, num_valid: int) -> str:
    return json.dumps({"key": _key(lineno, item), **({"id": item["id"]} if "id" in item else {}),
                       "rewards": [_json_float(r) for r in rewards], "best": best, "num_valid": num_valid,
                       "k": args.k})


def _append(out: Path, lines: list[str], written: int, total: int) -> None:
    try:
        append_lines(out, lines)  # all of the batch's lines or none
    except OSError as exc:
        raise ValueError(f"could not write to --output {out} ({exc.strerror}); the {written} items scored before "
                         f"are kept there: fix it and rerun the same command to score the other "
                         f"{total - written}") from None


def _score_on_ray(args, inp: Path, out: Path, todo: list, keys: list[str]) -> None:
    """The items in shards on Ray actors; each shard's lines appended as it finishes, then the file in input
    order. An item that failed on every try is named on stderr, and the command fails after the others are written."""
    from spct.ray import ScoreJob, Shard, connect, disconnect

    workers = connect(args.address, args.workers, args.cpus_per_worker)
    try:
        size = max(1, min(args.batch_size, -(-len(todo) // (4 * workers))))  # about 4 shards per worker
        shards = [Shard([n for n, _, _ in todo[i: i + size]], [it for _, _, it in todo[i: i + size]])
                  for i in range(0, len(todo), size)]
        where = {n: (lineno, item) for n, lineno, item in todo}
        failed = []

        def on_failed(n: int, item: dict, reason: str) -> None:
            failed.append(_key(where[n][0], item))
            print(f"{_where(inp, where[n][0], item)}: not scored: {reason}", file=sys.stderr)

        params = {"k": args.k, "seed": args.seed, "max_new_tokens": args.max_new_tokens, "k_meta": args.k_meta,
                  "force_scores": args.force_scores, "reduce": args.reduce,
                  "shuffle": "balanced" if args.orders == "balanced" else None}
        job = ScoreJob(args.model, args.dtype, workers, params, meta_rm=args.meta_rm,
                       cpus_per_worker=args.cpus_per_worker)
        bar, written = _bar(len(todo)), 0
        try:
            for shard, results, tokens in job.run(shards, on_failed):
                _append(out, [_line(args, *where[n], *r) for n, r in zip(shard.numbers, results)], written,
                        len(todo))
                written += len(shard.numbers)
                bar.update(tokens)
                bar.set_postfix_str(f"items {written}/{len(todo)}")
        finally:
            bar.close()
            _in_input_order(out, keys)
    finally:
        disconnect()
    if failed:
        raise ValueError(f"{len(failed)} of {len(todo)} items failed on every try ({', '.join(failed[:5])}"
                         f"{', ...' if len(failed) > 5 else ''}; each named above); the other {written} are in "
                         f"{out}, and the same command tries the failed ones again")


def _in_input_order(out: Path, keys: list[str]) -> None:
    """Rewrites the output (atomically) with its lines in the input's order, where they are not."""
    lines = complete_lines(out)
    keyed = [(json.loads(line)["key"], line) for line in lines]
    by_key, known = dict(keyed), set(keys)
    ordered = [by_key[k] for k in keys if k in by_key] + [line for key, line in keyed if key not in known]
    if ordered != lines:
        write_text(out, "".join(line + "\n" for line in ordered))


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("score", parents=[common], help="GRM rewards for the responses of each item (resumable)")
    p.add_argument("--input", required=True, help="JSONL items: {'id', 'query', 'responses': [str, ...]}")
    p.add_argument("--output", required=True, help="JSONL, one line per item (null reward: no valid sample); "
                   "lines are appended per batch, and a rerun skips the items already there")
    p.add_argument("--model", default="smollm2-135m", help="alias, checkpoint folder, .gguf or Hugging Face id")
    p.add_argument("--k", type=int, default=1, help="samples per item (1: greedy)")
    p.add_argument("--reduce", default="sum", choices=["sum", "mean"], help="sum: the method's rule, the sum of "
                   "the voted samples' scores; mean: that sum over the number of samples voted (compares across k)")
    p.add_argument("--orders", default="random", choices=["random", "balanced"], help="the response order each "
                   "sample sees (k > 1): a seeded random one per sample, or rotations of one seeded order (each "
                   "response in each position equally often; n prompts to prefill instead of up to k)")
    p.add_argument("--seed", type=int, default=0, help="samples depend only on the item, its position in the input "
                   "and this seed")
    p.add_argument("--max-new-tokens", type=int, default=512, help="tokens per judgement, at most")
    p.add_argument("--batch-size", type=int, default=16, help="items decoded together (results do not depend on it)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="weights and activations")
    p.add_argument("--skip-invalid", action="store_true", help="report and skip malformed input lines")
    p.add_argument("--meta-rm", help="a Meta RM checkpoint (or a backbone, for a fresh head): guided voting")
    p.add_argument("--k-meta", type=int, help="samples kept by the Meta RM (default k // 2)")
    p.add_argument("--force-scores", action="store_true", help="append a grammar-constrained score group to "
                   "samples that end without one")
    checks.add_ray_options(p, "score")
    p.set_defaults(func=cmd_score)
