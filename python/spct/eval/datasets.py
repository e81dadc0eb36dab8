"""Readers of reward-model benchmarks into the one item type, `spct.items.Item`, with "best" and a top-level
"category" always set. Each reader shows the responses in a seeded random order per item, so the best one is not
always first (a judge with a position bias would otherwise look good)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

from spct.items import Item, check, iter_jsonl, turns

__all__ = ["FORMATS", "EvalItem", "read"]

EvalItem = Item  # the name evaluation code has used for it: Item(id, query, responses, best, category)


def _item(id_: str, query, best: str, others: list[str], category: str) -> Item:
    responses = [best, *others]
    order = list(range(len(responses)))
    random.Random(id_).shuffle(order)  # seeded by the item's id
    return Item(id_, query, [responses[o] for o in order], order.index(0), category)


def _rmb_category(path: str) -> str:
    parts = path.split("/")
    return parts[1] if len(parts) > 1 and parts[0].endswith("_set") else parts[0]


def read_rmb_bon(path: Path) -> Iterator[Item]:
    for _, r in iter_jsonl(path):
        yield _item(str(r["bon_uid"]), turns(r["conversation_input"]), r["bon_best"]["answer"],
                    [x["answer"] for x in r["loser_list"]], _rmb_category(r["category_path"]))


def read_rmb_pairwise(path: Path) -> Iterator[Item]:
    for _, r in iter_jsonl(path):
        yield _item(str(r["pair_uid"]), turns(r["conversation_input"]), r["chosen"]["answer"],
                    [r["reject"]["answer"]], _rmb_category(r["category_path"]))


def read_llmbar(path: Path) -> Iterator[Item]:
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    for f in files:
        for i, r in enumerate(json.loads(f.read_text(encoding="utf-8"))):
            good, bad = (r["output_1"], r["output_2"]) if r["label"] == 1 else (r["output_2"], r["output_1"])
            yield _item(f"{f.stem}-{i}", r["input"], good, [bad], f.stem.split("__")[0])


def read_rewardbench(path: Path) -> Iterator[Item]:
    for lineno, r in iter_jsonl(path):
        yield _item(str(r.get("id", lineno)), r["prompt"], r["chosen"], [r["rejected"]], str(r.get("subset", "all")))


def read_jsonl(path: Path) -> Iterator[Item]:
    """design.md's item format with "best" set (`spct.items.check`, require="best"); an item without an id is named
    by its line number, one without a category is in "all". The responses are kept in the file's order."""
    for lineno, record in iter_jsonl(path):
        item = check(record, f"{path}:{lineno}", "best")
        item.id = str(lineno) if item.id is None else item.id
        item.category = "all" if item.category is None else item.category
        yield item


FORMATS = {"rmb-bon": read_rmb_bon, "rmb-pairwise": read_rmb_pairwise, "llmbar": read_llmbar,
           "rewardbench": read_rewardbench, "jsonl": read_jsonl}


def read(path: str | Path, format: str, limit: int | None = None) -> list[Item]:
    if format not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}, got {format!r}")
    items = []
    for item in FORMATS[format](Path(path)):
        if limit is not None and len(items) >= limit:
            break
        items.append(item)
    return items
