"""`spct fetch`, `spct extract` and `spct generate`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from spct._atomic import write_text
from spct.cli import checks
from spct.items import ItemError, iter_jsonl

TEXT_KEYS = ("generation", "text", "output")


def _where(path: Path, lineno: int, record: dict) -> str:
    """path:line, and the record's id when it has one."""
    return f"{path}:{lineno}" + (f": item {record['id']!r}" if "id" in record else "")


def _records(path: Path) -> list[tuple[int, dict]]:
    records = list(iter_jsonl(path))
    for lineno, r in records:
        if not isinstance(r, dict):
            raise ValueError(f"{path}:{lineno}: expected a JSON object, got a {type(r).__name__}")
    if not records:
        raise ValueError(f"{path}: no records (one JSON object a line)")
    return records


def _write_lines(path: str | None, lines: list[str]) -> None:
    if path:
        write_text(Path(path), "".join(line + "\n" for line in lines))  # atomic: never half a file
    else:
        print("\n".join(lines))


def cmd_fetch(args: argparse.Namespace) -> None:
    from spct.engine.models import fetch

    print(fetch(args.model, progress=True))


def _generation(path: Path, lineno: int, r: dict, default_n: int) -> tuple[str, int]:
    """(text, number of responses) of one `extract` record."""
    text = next((r[key] for key in TEXT_KEYS if isinstance(r.get(key), str)), None)
    if text is None:
        raise ValueError(f"{_where(path, lineno, r)}: no text under any of the keys {', '.join(TEXT_KEYS)}")
    n = r.get("num_responses", default_n)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{_where(path, lineno, r)}: num_responses must be an integer >= 1, got {n!r}")
    return text, n


def cmd_extract(args: argparse.Namespace) -> None:
    import spct

    checks.at_least("--num-responses", args.num_responses, 1)
    lo, hi = args.score_range
    if lo > hi:
        raise ValueError(f"--score-range must be LO <= HI, got {lo:g} {hi:g}")
    path = checks.readable(args.input, "input")
    if args.output:
        checks.writable_file(args.output, "--output")
    records = _records(path)
    parsed = [_generation(path, lineno, r, args.num_responses) for lineno, r in records]
    counts = [n for _, n in parsed]
    ex = spct.extract_scores([t for t, _ in parsed], num_responses=counts, score_range=(lo, hi))
    lines = []
    for i, ((_, r), n) in enumerate(zip(records, counts)):
        row = {"valid": bool(ex.valid[i]), "scores": ex.scores[i, :n].tolist() if ex.valid[i] else None,
               "principles": [{"name": name, "weight": w} for name, w in ex.principles[i]],
               "principle_span": ex.principle_span[i].tolist(), "critique_span": ex.critique_span[i].tolist()}
        lines.append(json.dumps({**({"id": r["id"]} if "id" in r else {}), **row}))
    _write_lines(args.output, lines)
    print(f"{int(ex.valid.sum())}/{len(parsed)} generations valid", file=sys.stderr)


def _prompt(path: Path, lineno: int, r: dict):
    """A `generate` record's prompt: "messages" (chat turns), "prompt" (text or chat turns) or "token_ids"."""
    key = next((k for k in ("messages", "prompt", "token_ids") if k in r), None)
    prompt = r.get(key)
    if key == "token_ids":
        ok = isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    else:
        ok = (key == "prompt" and isinstance(prompt, str) and prompt
              or isinstance(prompt, list) and prompt and all(isinstance(t, dict) for t in prompt))
    if not ok:
        raise ValueError(f"{_where(path, lineno, r)}: needs 'prompt' (a non-empty string), 'messages' (a list of "
                         "{'role', 'content'} turns) or 'token_ids' (a list of ints)"
                         + (f"; its {key!r} is {prompt!r:.60}" if key else ""))
    if key != "token_ids" and isinstance(prompt, list):
        for t in prompt:
            if not (isinstance(t.get("role"), str) and isinstance(t.get("content"), str)):
                raise ValueError(f"{_where(path, lineno, r)}: every chat turn needs a string 'role' and 'content', "
                                 f"got {t!r:.80}")
    return prompt


def _check_sampling(args: argparse.Namespace) -> None:
    checks.at_least("-k", args.k, 1)
    checks.at_least("--max-new-tokens", args.max_new_tokens, 1)
    checks.at_least("--temperature", args.temperature, 0)
    checks.at_least("--top-k", args.top_k, 0)
    checks.between("--top-p", args.top_p, 0, 1, low_open=True)
    checks.between("--min-p", args.min_p, 0, 1)
    checks.at_least("--seed", args.seed, 0)


def cmd_generate(args: argparse.Namespace) -> None:
    import spct

    _check_sampling(args)
    path = checks.readable(args.input, "input")
    if args.output:
        checks.writable_file(args.output, "--output")
    records = _records(path)
    prompts = [_prompt(path, lineno, r) for lineno, r in records]
    checks.model(args.model, "--model")
    engine = spct.Engine.from_pretrained(args.model, dtype=args.dtype)
    from tqdm import tqdm

    with tqdm(unit="tok", unit_scale=True, file=sys.stderr, desc="generating", dynamic_ncols=True) as bar:
        try:
            outs = engine.generate(prompts, k=args.k, max_new_tokens=args.max_new_tokens,
                                   temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                                   seed=args.seed, stop=args.stop, progress=bar.update)
        except ItemError as exc:
            lineno, r = records[exc.index]
            raise ValueError(f"{_where(path, lineno, r)}: {exc.detail}") from None
    lines = [json.dumps({**({"id": r["id"]} if "id" in r else {}),
                         "samples": [{"text": s.text, "token_ids": s.token_ids, "finish_reason": s.finish_reason}
                                     for s in samples]}) for (_, r), samples in zip(records, outs)]
    _write_lines(args.output, lines)


def add_parsers(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("fetch", parents=[common], help="fetch and convert a model alias (or check a local model)")
    p.add_argument("model", help="alias such as smollm2-135m, a checkpoint folder, a .gguf file, or a Hugging Face "
                   "id in the local Hugging Face cache")
    p.set_defaults(func=cmd_fetch)
    p = sub.add_parser("extract", parents=[common], help="principles, critique spans and scores of GRM generations")
    p.add_argument("input", help=f"JSONL, one generation per line under one of the keys {', '.join(TEXT_KEYS)}")
    p.add_argument("-o", "--output", help="write JSONL here (atomically) instead of standard output")
    p.add_argument("-n", "--num-responses", type=int, default=2, help="responses per generation unless the record "
                   "has 'num_responses'")
    p.add_argument("--score-range", type=float, nargs=2, default=(1.0, 10.0), metavar=("LO", "HI"),
                   help="allowed scores, inclusive")
    p.set_defaults(func=cmd_extract)
    p = sub.add_parser("generate", parents=[common], help="k samples per prompt with the prefix-shared engine")
    p.add_argument("input", help="JSONL, one prompt per line: {'prompt': str}, {'messages': [{'role', 'content'}, "
                   "...]} (put through the chat template) or {'token_ids': [int, ...]}")
    p.add_argument("-o", "--output", help="write JSONL here (atomically) instead of standard output")
    p.add_argument("-m", "--model", default="smollm2-135m", help="alias, checkpoint folder, .gguf or Hugging Face id")
    p.add_argument("-k", type=int, default=1, help="samples per prompt")
    p.add_argument("--max-new-tokens", type=int, default=256, help="tokens generated per sample, at most")
    p.add_argument("--temperature", type=float, default=1.0, help="0: greedy")
    p.add_argument("--top-k", type=int, default=0, help="0: no top-k")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus mass kept, in (0, 1]")
    p.add_argument("--min-p", type=float, default=0.0, help="in [0, 1]")
    p.add_argument("--seed", type=int, default=0, help="samples depend only on the prompt and this seed")
    p.add_argument("--stop", action="append", default=[], help="a stop string (repeatable)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="weights and activations")
    p.set_defaults(func=cmd_generate)
