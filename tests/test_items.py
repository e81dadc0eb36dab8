"""The one item model (spct.items) and the atomic writers under it (spct._atomic): validation messages that name
file:line and the item's id, .jsonl.gz round trips, and writes that leave no temporary file behind."""

from __future__ import annotations

import gzip
import json

import pytest

from spct import _atomic, items
from spct.items import Item, as_item, check, iter_jsonl, read_items, write_items


def _write(path, rows):
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text, encoding="utf-8")
    return path


GOOD = {"id": "a", "query": "What is 2 + 2?", "responses": ["4", "5"], "best": 0, "solution": "4"}


# ---------------------------------------------------------------------------------------------- the item type


def test_from_dict_to_dict_keeps_every_key():
    item = Item.from_dict({**GOOD, "id": 7, "category": "math"}, "x", require="best")
    assert item == Item("7", GOOD["query"], ["4", "5"], 0, "math", None, {"solution": "4"})
    assert item.to_dict() == {**GOOD, "id": "7", "category": "math"}
    single = check({"id": "s", "query": [{"role": "user", "content": "hi"}], "responses": ["yo"], "label": 1},
                   "x", "label")
    assert single.to_dict() == {"id": "s", "query": [{"role": "user", "content": "hi"}], "responses": ["yo"],
                                "label": 1}


@pytest.mark.parametrize("record, require, message", [
    ("not a dict", "responses", r"^f\.jsonl:3 must be a dict \(a JSON object\)"),
    ({"id": "q1", "query": "", "responses": ["a"]}, "responses", r"^f\.jsonl:3: item 'q1' has an empty query"),
    ({"id": "q1", "query": [], "responses": ["a"]}, "responses", r"item 'q1' has an empty query"),
    ({"id": "q1", "query": [{"role": "user"}], "responses": ["a"]}, "responses", r"item 'q1': 'query' must be.*turn 0"),
    ({"id": "q1", "query": 3, "responses": ["a"]}, "responses", r"item 'q1': 'query' must be.*got int"),
    ({"id": "q1", "query": "q"}, "responses", r"^f\.jsonl:3: item 'q1': 'responses' must be a non-empty list.*"
                                              r"item 'q1' has no responses"),
    ({"query": "q", "responses": ["a", 2]}, "responses", r"^f\.jsonl:3: 'responses'.*response 1 is 2$"),
    ({"id": "q1", "query": "q", "responses": ["a", "b"]}, "best", r"item 'q1' has no label: an evaluation item "
                                                                   r"needs 'best' \(an int in \[0, 2\)\)"),
    ({"id": "q1", "query": "q", "responses": ["a", "b"], "best": 2}, "best", r"item 'q1': 'best' = 2 is out of range"),
    ({"query": "q", "responses": ["a"], "label": 1}, "label", r"^f\.jsonl:3: an item needs a string 'id', got None"),
    ({"id": "q1", "query": "q", "responses": ["a"]}, "label", r"item 'q1' has no label.*'label' 0 or 1"),
    ({"id": "q1", "query": "q", "responses": ["a"], "label": 1, "solution": 4}, "label", r"'solution' must be"),
])
def test_check_names_where_the_id_and_what_is_allowed(record, require, message):
    with pytest.raises(ValueError, match=message):
        check(record, "f.jsonl:3", require)


def test_require_levels():
    loose = {"query": "q", "responses": ["a", "b"], "best": "not checked when scoring"}
    assert check(loose, "x").id is None  # scoring needs a query and responses only
    with pytest.raises(ValueError, match="require must be one of"):
        check(loose, "x", "everything")


def test_as_item_takes_a_pair_or_a_dict():
    assert as_item(("q", ["a", "b"]), "items[0]").responses == ["a", "b"]
    assert as_item({"query": "q", "responses": ("a",)}, "items[1]").query == "q"
    for obj, message in [(("", ["a"]), r"items\[0\] has an empty query"), (("q", []), r"items\[0\] has no responses"),
                         ({"query": "q"}, r"items\[0\] has no responses"), ("q", r"items\[0\] must be a dict"),
                         (("q", ["a", None]), r"items\[0\].*every response must be a string")]:
        with pytest.raises(ValueError, match=message):
            as_item(obj, "items[0]")


# ---------------------------------------------------------------------------------------------- JSONL files


@pytest.mark.parametrize("name", ["items.jsonl", "items.jsonl.gz"])
def test_read_names_file_line_and_id(tmp_path, name):
    path = _write(tmp_path / name, [GOOD, "", {**GOOD, "id": "b7", "best": 5}])
    with pytest.raises(ValueError, match=rf"{name}:3: item 'b7': 'best' = 5 is out of range"):
        read_items(path, require="best")
    _write(path, [GOOD, "{not json"])
    with pytest.raises(ValueError, match=rf"{name}:2: not valid JSON \("):
        read_items(path)


def test_on_error_skips_and_reports(tmp_path):
    path = _write(tmp_path / "items.jsonl", [GOOD, "{not json", {"id": "c", "query": "q", "responses": []}, GOOD])
    errors = []
    got = read_items(path, on_error=errors.append)
    assert [n for n, _ in got] == [1, 4]
    assert [str(e).split(": ")[0] for e in errors] == [f"{path}:2", f"{path}:3"]
    assert [n for n, _ in iter_jsonl(path, on_error=errors.append)] == [1, 3, 4]


@pytest.mark.parametrize("name", ["items.jsonl", "items.jsonl.gz"])
def test_gz_round_trip(tmp_path, name):
    rows = [GOOD, {"id": "t", "query": [{"role": "user", "content": "héllo"}], "responses": ["x"], "label": 0}]
    path = write_items(tmp_path / name, rows, require="label")
    assert [it.to_dict() for _, it in read_items(path, require="label")] == rows
    raw = path.read_bytes()
    assert (raw[:2] == b"\x1f\x8b") == name.endswith(".gz")
    assert write_items(tmp_path / name, rows).read_bytes() == raw  # same items, same bytes (no gzip timestamp)
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_write_checks_every_item_before_writing(tmp_path):
    path = write_items(tmp_path / "items.jsonl", [GOOD])
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"items\[1\]: item 'b': 'best' = 3"):
        write_items(path, [GOOD, {**GOOD, "id": "b", "best": 3}], require="best")
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["items.jsonl"]


def test_items_sits_at_the_bottom():
    source = open(items.__file__, encoding="utf-8").read()
    imports = [line for line in source.splitlines() if line.startswith(("import spct", "from spct"))]
    assert imports == ["from spct._atomic import write_bytes"]


# ---------------------------------------------------------------------------------------------- atomic writes


class Boom(Exception):
    pass


def test_a_failing_file_writer_leaves_nothing(tmp_path):
    target = _atomic.write_text(tmp_path / "out.txt", "old\n")
    with pytest.raises(Boom), _atomic.atomic_file(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".tmp-out.txt.") and tmp.suffix == ".txt"
        tmp.write_text("half")
        raise Boom
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]
    _atomic.write_json(tmp_path / "sub" / "r.json", {"a": 1})  # the folder is made
    assert json.loads((tmp_path / "sub" / "r.json").read_text()) == {"a": 1}
    assert oct((tmp_path / "sub" / "r.json").stat().st_mode & 0o777) == oct(0o644)


def test_atomic_dir_replaces_or_leaves_the_old(tmp_path):
    target = tmp_path / "ckpt"
    with _atomic.atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(Boom), _atomic.atomic_dir(target) as tmp:
        (tmp / "a").write_text("2")
        raise Boom
    assert (target / "a").read_text() == "1" and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    with _atomic.atomic_dir(target) as tmp:
        (tmp / "b").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["b"] and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    _atomic.remove_tree(target)
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_keep_existing_keeps_the_first_finished_copy(tmp_path):
    target = tmp_path / "model"
    with _atomic.atomic_dir(target, keep_existing=True) as tmp:
        (tmp / "config.json").write_text("first")
    with _atomic.atomic_dir(target, keep_existing=True) as tmp:  # another process finished it meanwhile
        (tmp / "config.json").write_text("second")
    assert (target / "config.json").read_text() == "first" and [p.name for p in tmp_path.iterdir()] == ["model"]
    with _atomic.scratch_dir() as scratch:
        (scratch / "x").write_text("1")
    assert not scratch.exists()
