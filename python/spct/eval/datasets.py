"""Readers of reward-model benchmarks into one item type: a query, its responses, the index of the best one and a
top-level category. Each reader shows the responses in a seeded random order per item, so the best one is not
always first (a judge with a position bias would otherwise look good)."""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FORMATS", "EvalItem", "read"]


@dataclass
class EvalItem:
    id: str
    query: object  # a string or chat turns
    responses: list[str]
    best: int
    category: str


def _open(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


def _jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    with _open(path) as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield lineno, json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None


def _item(id_: str, query, best: str, others: list[str], category: str) -> EvalItem:
    responses = [best, *others]
    order = list(range(len(responses)))
    random.Random(id_).shuffle(order)  # seeded by the item's id
    return EvalItem(id_, query, [responses[o] for o in order], order.index(0), category)


def _rmb_category(path: str) -> str:
    parts = path.split("/")
    return parts[1] if len(parts) > 1 and parts[0].endswith("_set") else parts[0]


def _turns(conversation: list[dict]) -> list[dict]:
    return [{"role": t["role"], "content": t["content"]} for t in conversation]


def read_rmb_bon(path: Path) -> Iterator[EvalItem]:
    for _, r in _jsonl(path):
        yield _item(str(r["bon_uid"]), _turns(r["conversation_input"]), r["bon_best"]["answer"],
                    [x["answer"] for x in r["loser_list"]], _rmb_category(r["category_path"]))


def read_rmb_pairwise(path: Path) -> Iterator[EvalItem]:
    for _, r in _jsonl(path):
        yield _item(str(r["pair_uid"]), _turns(r["conversation_input"]), r["chosen"]["answer"],
                    [r["reject"]["answer"]], _rmb_category(r["category_path"]))


def read_llmbar(path: Path) -> Iterator[EvalItem]:
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    for f in files:
        for i, r in enumerate(json.loads(f.read_text(encoding="utf-8"))):
            good, bad = (r["output_1"], r["output_2"]) if r["label"] == 1 else (r["output_2"], r["output_1"])
            yield _item(f"{f.stem}-{i}", r["input"], good, [bad], f.stem.split("__")[0])


def read_rewardbench(path: Path) -> Iterator[EvalItem]:
    for lineno, r in _jsonl(path):
        yield _item(str(r.get("id", lineno)), r["prompt"], r["chosen"], [r["rejected"]], str(r.get("subset", "all")))


def read_jsonl(path: Path) -> Iterator[EvalItem]:
    """design.md's item format with "best" set; the responses are kept in the file's order."""
    for lineno, r in _jsonl(path):
        if not isinstance(r.get("best"), int):
            raise ValueError(f"{path}:{lineno}: an evaluation item needs an int 'best'")
        yield EvalItem(str(r.get("id", lineno)), r["query"], list(r["responses"]), r["best"],
                       str(r.get("category", "all")))


FORMATS = {"rmb-bon": read_rmb_bon, "rmb-pairwise": read_rmb_pairwise, "llmbar": read_llmbar,
           "rewardbench": read_rewardbench, "jsonl": read_jsonl}


def read(path: str | Path, format: str, limit: int | None = None) -> list[EvalItem]:
    if format not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}, got {format!r}")
    items = []
    for item in FORMATS[format](Path(path)):
        if limit is not None and len(items) >= limit:
            break
        items.append(item)
    return items
