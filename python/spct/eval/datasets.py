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


# format -> the fields each of its records must have (what a reader given the wrong file says it expected)
FIELDS = {
    "rmb-bon": ("bon_uid", "conversation_input", "bon_best", "loser_list", "category_path"),
    "rmb-pairwise": ("pair_uid", "conversation_input", "chosen", "reject", "category_path"),
    "llmbar": ("input", "output_1", "output_2", "label"),
    "rewardbench": ("prompt", "chosen", "rejected"),
}


def _wrong_format(where: str, format: str, record: object, problem: str) -> ValueError:
    has = f"the fields {', '.join(sorted(record))}" if isinstance(record, dict) else f"a {type(record).__name__}"
    hint = " (an items file: use --format jsonl)" if isinstance(record, dict) and "responses" in record else ""
    return ValueError(f"{where}: --format {format} expects records with the fields {', '.join(FIELDS[format])}; "
                      f"{problem}, and the record has {has}{hint}")


def _parse(where: str, format: str, record: object, make) -> Item:
    """make(record) -> Item, with a record of the wrong shape (a missing field, a field of the wrong type) turned
    into a ValueError naming where it is, what the format expects and what the record has."""
    if not isinstance(record, dict):
        raise _wrong_format(where, format, record, "this is not a JSON object")
    missing = [f for f in FIELDS[format] if f not in record]
    if missing:
        gone = "none of them is there" if len(missing) == len(FIELDS[format]) else f"{', '.join(missing)} missing"
        raise _wrong_format(where, format, record, gone)
    try:
        return make(record)
    except (KeyError, TypeError, IndexError, AttributeError) as exc:
        raise _wrong_format(where, format, record, f"a field is malformed ({type(exc).__name__}: {exc})") from None


def _rmb_bon(r: dict) -> Item:
    return _item(str(r["bon_uid"]), turns(r["conversation_input"]), r["bon_best"]["answer"],
                 [x["answer"] for x in r["loser_list"]], _rmb_category(r["category_path"]))


def _rmb_pairwise(r: dict) -> Item:
    return _item(str(r["pair_uid"]), turns(r["conversation_input"]), r["chosen"]["answer"],
                 [r["reject"]["answer"]], _rmb_category(r["category_path"]))


def read_rmb_bon(path: Path) -> Iterator[Item]:
    for lineno, r in iter_jsonl(path):
        yield _parse(f"{path}:{lineno}", "rmb-bon", r, _rmb_bon)


def read_rmb_pairwise(path: Path) -> Iterator[Item]:
    for lineno, r in iter_jsonl(path):
        yield _parse(f"{path}:{lineno}", "rmb-pairwise", r, _rmb_pairwise)


def _llmbar_records(f: Path) -> list:
    try:
        records = json.loads(f.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{f}: not a UTF-8 JSON file ({exc}); --format llmbar reads LLMBar's JSON lists") from None
    if not isinstance(records, list):
        raise ValueError(f"{f}: --format llmbar expects a JSON list of records, the file holds a "
                         f"{type(records).__name__}")
    return records


def read_llmbar(path: Path) -> Iterator[Item]:
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    if not files:
        raise ValueError(f"{path}: --format llmbar expects an LLMBar .json file or a folder of them; none found")
    for f in files:
        for i, r in enumerate(_llmbar_records(f)):
            def make(r: dict, i: int = i, f: Path = f) -> Item:
                if str(r["label"]) not in ("1", "2"):
                    raise TypeError(f"label must be 1 or 2 (the better output), got {r['label']!r}")
                good, bad = (r["output_1"], r["output_2"]) if str(r["label"]) == "1" else (r["output_2"], r["output_1"])
                return _item(f"{f.stem}-{i}", r["input"], good, [bad], f.stem.split("__")[0])
            yield _parse(f"{f}[{i}]", "llmbar", r, make)


def read_rewardbench(path: Path) -> Iterator[Item]:
    for lineno, r in iter_jsonl(path):
        yield _parse(f"{path}:{lineno}", "rewardbench", r, lambda r, n=lineno: _item(
            str(r.get("id", n)), r["prompt"], r["chosen"], [r["rejected"]], str(r.get("subset", "all"))))


def read_jsonl(path: Path) -> Iterator[Item]:
    """docs/design.md's item format with "best" set (`spct.items.check`, require="best"); an item without an id is named
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
