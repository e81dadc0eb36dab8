"""The one item type of the package and its JSONL files (docs/design.md, "Data and checkpoints").

One item, one JSON object a line:

    {"id": str, "query": str | [{"role", "content"}, ...], "responses": [str, ...], "best": int | null,
     "label": 0 | 1 (single responses), "category": str (optional)}

plus any other keys (e.g. "solution"), kept as they are. The command line, scoring, training and evaluation read it
through `check`, the single validation routine; `require` says how much a caller needs:

    "responses"  a query and a non-empty list of responses (scoring: `spct score`, `score_batch`)
    "best"       and an int "best" in [0, n) (evaluation)
    "label"      and a string or int "id", and a label: "best" in [0, n) when n >= 2, "label" 0 or 1 when n = 1
                 (training)

Errors are `ValueError`s naming where the item is (``path:line``, or ``items[i]``), its id when it has one, what is
wrong and what is allowed. This module sits at the bottom of the Python layers: it imports only `spct._atomic`.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from spct._atomic import write_bytes

__all__ = ["REQUIRE", "Item", "ItemError", "as_item", "check", "iter_jsonl", "open_text", "read_items", "turns",
           "write_items"]

REQUIRE = ("responses", "best", "label")
_KEYS = ("id", "query", "responses", "best", "label", "category")
_QUERY = "'query' must be a non-empty string or a non-empty list of {'role', 'content'} turns"


class ItemError(ValueError):
    """A ValueError about one item of a batch: `index` is its position in the batch, `detail` what is wrong with it
    (the message without the position), so a caller that knows where the item came from (a file's line, an id) can
    say so instead of the position: ``str(error)`` is "items[3]: <detail>" or the caller's own ``name``."""

    def __init__(self, index: int, detail: str, name: str | None = None):
        super().__init__(f"{name or f'items[{index}]'}: {detail}")
        self.index, self.detail, self.name = index, detail, name

    def __reduce__(self):  # picklable, so it crosses processes (a Ray worker's error reaches the driver)
        return type(self), (self.index, self.detail, self.name)


@dataclass
class Item:
    """An item. id: a string (None for an item without one, e.g. a (query, responses) pair); best: the index of the
    best response (None when unknown); label: 0/1 for a single response (best and label are checked only where
    `require` asks for them); category: a benchmark's top-level category; extra: every other key, as read."""

    id: str | None
    query: str | list[dict]
    responses: list[str]
    best: int | None = None
    category: str | None = None
    label: int | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, record: object, where: str = "item", require: str = "responses") -> Item:
        return check(record, where, require)

    def to_dict(self) -> dict:
        """The JSON record (keys that are None left out), extra keys last."""
        out = {"id": self.id, "query": self.query, "responses": list(self.responses), "best": self.best,
               "label": self.label, "category": self.category}
        return {**{k: v for k, v in out.items() if v is not None}, **self.extra}


# ---------------------------------------------------------------------------------------------- validation


def _is_int(x: object) -> bool:
    return type(x) is int  # not bool


def _check_query(query: object, name: str) -> None:
    if isinstance(query, str):
        if not query.strip():
            raise ValueError(f"{name} has an empty query: {_QUERY}")
        return
    if not isinstance(query, list):
        raise ValueError(f"{name}: {_QUERY}, got {type(query).__name__}")
    if not query:
        raise ValueError(f"{name} has an empty query: {_QUERY}")
    bad = next((i for i, t in enumerate(query) if not (isinstance(t, dict) and "role" in t and "content" in t)), None)
    if bad is not None:
        raise ValueError(f"{name}: {_QUERY}; turn {bad} is {query[bad]!r}")


def _check_responses(responses: object, name: str, who: str) -> None:
    allowed = "'responses' must be a non-empty list of strings"
    if not isinstance(responses, (list, tuple)) or not responses:
        raise ValueError(f"{name}: {allowed}, but {who} has no responses")
    bad = next((i for i, r in enumerate(responses) if not isinstance(r, str)), None)
    if bad is not None:
        raise ValueError(f"{name}: {allowed}; every response must be a string, but response {bad} is "
                         f"{responses[bad]!r}")


def _check_label(record: dict, n: int, name: str, require: str) -> tuple[int | None, int | None]:
    """(best, label) as the level asks: "best" needs an int best; "label" a best (n >= 2) or a 0/1 label (n = 1)."""
    best, label = record.get("best"), record.get("label")
    if require == "label" and n == 1:
        if not _is_int(label) or label not in (0, 1):
            raise ValueError(f"{name} has no label: an item with one response needs 'label' 0 or 1, got {label!r}")
    elif require != "responses" and best is None:
        who = "an evaluation item" if require == "best" else f"an item with {n} responses"
        raise ValueError(f"{name} has no label: {who} needs 'best' (an int in [0, {n}))")
    if best is not None and require != "responses" and (not _is_int(best) or not 0 <= best < n):
        raise ValueError(f"{name}: 'best' = {best!r} is out of range; it must be an int in [0, {n})")
    return best, label


def check(record: object, where: str, require: str = "responses") -> Item:
    """The one validation of an item record (a dict, e.g. one JSONL line); `where` names it in errors
    ("path:line", "items[3]"). require: "responses", "best" or "label" (see the module docstring). Returns the
    `Item`; its id is made a string."""
    if require not in REQUIRE:
        raise ValueError(f"require must be one of {REQUIRE}, got {require!r}")
    if not isinstance(record, dict):
        raise ValueError(f"{where} must be a dict (a JSON object) with 'query' and 'responses', "
                         f"got {type(record).__name__}")
    id_ = record.get("id")
    if require == "label" and (not isinstance(id_, (str, int)) or isinstance(id_, bool) or id_ == ""):
        raise ValueError(f"{where}: an item needs a string 'id', got {id_!r}")
    name = where if id_ is None else f"{where}: item {str(id_)!r}"
    _check_query(record.get("query"), name)
    responses = record.get("responses")
    _check_responses(responses, name, where if id_ is None else f"item {str(id_)!r}")
    best, label = _check_label(record, len(responses), name, require)
    if not isinstance(record.get("solution", ""), str):
        raise ValueError(f"{name}: 'solution' must be a string")
    category = record.get("category")
    return Item(None if id_ is None else str(id_), record["query"], list(responses), best,
                None if category is None else str(category), label,
                {k: v for k, v in record.items() if k not in _KEYS})


def as_item(obj: object, where: str) -> Item:
    """An item given to the scoring API: a dict with "query" and "responses", or a (query, responses) pair; checked
    as `check(..., require="responses")`."""
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        obj = {"query": obj[0], "responses": obj[1]}
    elif not isinstance(obj, dict):
        raise ValueError(f"{where} must be a dict with 'query' and 'responses' or a (query, responses) pair, got "
                         f"{type(obj).__name__}")
    return check(obj, where, "responses")


def turns(conversation: Sequence[dict]) -> list[dict]:
    """Chat turns reduced to their "role" and "content" (benchmarks add keys such as "language")."""
    return [{"role": t["role"], "content": t["content"]} for t in conversation]


# ---------------------------------------------------------------------------------------------- JSONL files


def open_text(path: str | os.PathLike) -> TextIO:
    """A text file for reading, gunzipped when the name ends in .gz."""
    path = Path(path)
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of each line; a .gz file that is not gzip, or ends early, is a ValueError naming it."""
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")) as f:
            yield from enumerate(f, 1)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise ValueError(f"{path}: not a complete gzip file ({exc}); a .gz name means gzip-compressed JSONL") from None


def _record(path: Path, lineno: int, raw: bytes) -> object:
    """The JSON value of one line, or a ValueError naming path:line (bytes that are not UTF-8, text not JSON)."""
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
                         "JSONL files must be UTF-8") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg}, column {exc.colno})") from None


def iter_jsonl(path: str | os.PathLike, on_error: Callable[[ValueError], None] | None = None
               ) -> Iterator[tuple[int, object]]:
    """(line number, record) of each non-blank line of a .jsonl or .jsonl.gz file. A line that is not UTF-8 JSON
    raises ValueError("path:line: ..."), or with on_error is passed to it and skipped. A .gz file that is not gzip
    raises ValueError naming the file."""
    path = Path(path)
    for lineno, raw in _lines(path):
        if not raw.strip():
            continue
        try:
            yield lineno, _record(path, lineno, raw)
        except ValueError as error:
            if on_error is None:
                raise
            on_error(error)


def read_items(path: str | os.PathLike, require: str = "responses",
               on_error: Callable[[ValueError], None] | None = None) -> list[tuple[int, Item]]:
    """(line number, item) of each item of a .jsonl or .jsonl.gz file, checked with `check(require=...)`; the first
    bad line raises ValueError naming path:line (and the item's id), or with on_error is passed to it and skipped."""
    out = []
    for lineno, record in iter_jsonl(path, on_error):
        try:
            out.append((lineno, check(record, f"{path}:{lineno}", require)))
        except ValueError as error:
            if on_error is None:
                raise
            on_error(error)
    return out


def write_items(path: str | os.PathLike, items: Iterable[Item | dict], require: str = "responses") -> Path:
    """Write items as JSONL (gzipped when the name ends in .gz), atomically (`spct._atomic`). Every item is checked
    (`check`, named items[i]) before anything is written."""
    path = Path(path)
    records = [(it if isinstance(it, Item) else check(it, f"items[{i}]", require)).to_dict()
               for i, it in enumerate(items)]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    return write_bytes(path, gzip.compress(text, mtime=0) if path.suffix == ".gz" else text)
