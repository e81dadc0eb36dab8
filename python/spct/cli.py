"""The `spct` command line: thin wrappers over the Python API.

  spct fetch smollm2-135m                  fetch + convert a model alias, print its directory
  spct extract generations.jsonl [-o out]  principles, critique spans and scores of GRM generations
  spct generate prompts.jsonl -k 4         k samples per prompt (one JSON line per prompt)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

TEXT_KEYS = ("generation", "text", "output")


def _read_jsonl(path: Path) -> Iterator[dict]:
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise SystemExit(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None


def _generation(record: dict, lineno: int) -> str:
    for key in TEXT_KEYS:
        if isinstance(record.get(key), str):
            return record[key]
    raise SystemExit(f"record {lineno} has none of the text keys {TEXT_KEYS}")


def _write_atomic(path: Path, lines: list[str]) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)
    os.replace(tmp, path)


def cmd_fetch(args: argparse.Namespace) -> None:
    from spct.engine.models import fetch

    print(fetch(args.model))


def cmd_extract(args: argparse.Namespace) -> None:
    import spct

    records = list(_read_jsonl(Path(args.input)))
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
        _write_atomic(Path(args.output), lines)
    else:
        print("\n".join(lines))
    valid = int(ex.valid.sum())
    print(f"{valid}/{len(texts)} generations valid", file=sys.stderr)


def cmd_generate(args: argparse.Namespace) -> None:
    import spct

    records = list(_read_jsonl(Path(args.input)))
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
        _write_atomic(Path(args.output), lines)
    else:
        print("\n".join(lines))


def build_parser() -> argparse.ArgumentParser:
    import spct

    parser = argparse.ArgumentParser(prog="spct", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"spct {spct.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
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
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise SystemExit(f"spct {args.command}: {exc}") from None


if __name__ == "__main__":
    main()
