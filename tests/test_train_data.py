"""Training items: the item reader/writer and its errors, the GSM8K / MATH / RMB sources on small fixtures written
here and on the real files in ../shared/data (skipped when absent), and the programmatic RFT teacher."""

from __future__ import annotations

import gzip
import json
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spct.ops import extract_scores
from spct.train import data

# ---------------------------------------------------------------------------------------------- fixtures


def _jsonl(path, rows):
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


GSM8K_ROWS = [
    {"question": "Ann has 48 clips and sells half. How many are left?",
     "answer": "Half of 48 is 48/2 = <<48/2=24>>24.\nShe has 48-24 = <<48-24=24>>24 left.\n#### 24"},
    {"question": "A farm sells 1200 eggs a day for 30 days. How many eggs?",
     "answer": "1200 * 30 = <<1200*30=36000>>36000 eggs.\n#### 36,000"},
    {"question": "What is 3 - 3?", "answer": "3 - 3 = <<3-3=0>>0\n#### 0"},
    {"question": "What is 2 - 9?", "answer": "2 - 9 = <<2-9=-7>>-7\n#### -7"},
]

MATH_ROWS = [
    {"problem": "What is $2+2$?", "solution": "We add: $2+2=\\boxed{4}$."},
    {"problem": "Simplify $\\frac{2}{4}$.", "solution": "It is $\\boxed{\\frac{1}{2}}$."},  # not an integer
    {"problem": "In MATH-500: what is $1+1$?", "solution": "$\\boxed{2}$"},  # excluded
    {"problem": "Compute $\\{3\\}$.", "solution": "First $\\boxed{1}$, then\n\nfinally $\\boxed{{12}}$."},
    {"problem": "Negative?", "solution": "$\\boxed{ -5 }$"},
]


def _turn(role, text):
    return {"role": role, "content": text, "language": "English"}


def _rmb_fixture(tmp_path):
    bon = _jsonl(tmp_path / "bon.jsonl.gz", [
        {"bon_uid": "b0", "conversation_input": [_turn("user", "shared prompt")], "bon_best": {"answer": "x"},
         "loser_list": [{"answer": "y"}], "category_path": "BoN_set/Helpfulness/Chat"}])
    multi = [_turn("user", "first"), _turn("assistant", "reply"), _turn("user", "second")]
    pairs = [
        {"pair_uid": "1", "conversation_input": [_turn("user", "fresh prompt")], "chosen": {"answer": "good"},
         "reject": {"answer": "bad"}, "category_path": "Pairwise_set/Helpfulness/Chat"},
        {"pair_uid": "2", "conversation_input": [_turn("user", "shared prompt")], "chosen": {"answer": "a"},
         "reject": {"answer": "b"}, "category_path": "Pairwise_set/Helpfulness/Chat"},
        {"pair_uid": "3", "conversation_input": [_turn("user", "shared prompt"), _turn("assistant", "r"),
                                                 _turn("user", "more")],
         "chosen": {"answer": "a"}, "reject": {"answer": "b"}, "category_path": "Pairwise_set/Harmlessness/S1"},
        {"pair_uid": "4", "conversation_input": multi, "chosen": {"answer": "c"}, "reject": {"answer": "d"},
         "category_path": "Pairwise_set/Harmlessness/S1"},
    ]
    return _jsonl(tmp_path / "pairwise.jsonl.gz", pairs), bon


def _gold(item):
    return item["responses"][item["best"]]


def _wrong(item):
    return item["responses"][1 - item["best"]]


# ---------------------------------------------------------------------------------------------- read / write

ITEMS = [
    {"id": "a", "query": "What is 2 + 2?", "responses": ["4", "5"], "best": 0, "solution": "2 + 2 = 4"},
    {"id": "b", "query": [{"role": "user", "content": "hi"}], "responses": ["x", "y", "z"], "best": 2},
    {"id": "c", "query": "Is the sky blue?", "responses": ["Yes."], "label": 1},
]


@pytest.mark.parametrize("name", ["items.jsonl", "items.jsonl.gz"])
def test_write_read_round_trip(tmp_path, name):
    path = data.write_items(tmp_path / name, ITEMS)
    assert data.read_items(path) == ITEMS
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left behind


def test_write_is_atomic_and_checks_first(tmp_path):
    path = data.write_items(tmp_path / "items.jsonl", ITEMS)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"items\[1\]: item 'b'.*'best' = 3"):
        data.write_items(path, [ITEMS[0], {**ITEMS[1], "best": 3}])
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["items.jsonl"]


def test_read_bad_json_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ITEMS[0]) + "\n\n{not json\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:3: not valid JSON"):
        data.read_items(path)


@pytest.mark.parametrize("item, message", [
    ({"id": "q7", "query": "q", "responses": ["a", "b"]}, r":2: item 'q7' has no label.*'best'"),
    ({"id": "q7", "query": "q", "responses": ["a", "b"], "best": None}, r":2: item 'q7' has no label"),
    ({"id": "q7", "query": "q", "responses": ["a"]}, r":2: item 'q7' has no label.*'label' 0 or 1"),
    ({"id": "q7", "query": "q", "responses": ["a"], "label": 2}, r":2: item 'q7' has no label.*got 2"),
    ({"id": "q7", "query": "q", "responses": ["a", "b"], "best": 2}, r":2: item 'q7': 'best' = 2 is out of range"),
    ({"id": "q7", "query": "q", "responses": ["a", "b"], "best": -1}, r":2: item 'q7': 'best' = -1 is out of"),
    ({"id": "q7", "query": "q", "responses": ["a", "b"], "best": True}, r"item 'q7': 'best' = True"),
    ({"id": "q7", "query": "q", "responses": []}, r"item 'q7': 'responses' must be a non-empty list"),
    ({"id": "q7", "query": 3, "responses": ["a", "b"], "best": 0}, r"item 'q7': 'query' must be"),
    ({"query": "q", "responses": ["a", "b"], "best": 0}, r":2: an item needs a string 'id'"),
])
def test_read_bad_items_name_line_and_id(tmp_path, item, message):
    for name in ("items.jsonl", "items.jsonl.gz"):
        path = _jsonl(tmp_path / name, [ITEMS[0], item])
        with pytest.raises(ValueError, match=message):
            data.read_items(path)


# ---------------------------------------------------------------------------------------------- wrong answers


@given(st.integers(-10**6, 10**9), st.integers(0, 2**32))
def test_perturb_never_gold_and_keeps_sign(value, seed):
    wrong = data.perturb_answer(value, random.Random(seed))
    assert wrong != value
    assert value < 0 or wrong >= 0


def test_perturb_uses_every_kind():
    kinds = set()
    for seed in range(400):
        w = data.perturb_answer(48, random.Random(seed))
        kinds.add("double" if w == 96 else "halve" if w == 24 else "near" if abs(w - 48) <= 3 else "digit")
    assert kinds == {"double", "halve", "near", "digit"}


# ---------------------------------------------------------------------------------------------- sources (fixtures)


def test_gsm8k_pairs(tmp_path):
    path = _jsonl(tmp_path / "train.jsonl", GSM8K_ROWS)
    items = data.gsm8k_pairs(path, seed=1)
    assert [i["id"] for i in items] == ["gsm8k-1", "gsm8k-2", "gsm8k-3", "gsm8k-4"]
    for item, row in zip(items, GSM8K_ROWS):
        gold = row["answer"].split("#### ")[1]
        assert item["query"] == row["question"] and len(item["responses"]) == 2
        assert _gold(item).endswith(gold) or _gold(item).endswith(gold + ".")
        assert "<<" not in item["solution"] and item["solution"].endswith("#### " + gold)
        assert data._final_number(_wrong(item)) != data._final_number(_gold(item))
    assert items[0]["solution"] == "Half of 48 is 48/2 = 24.\nShe has 48-24 = 24 left.\n#### 24"
    assert "," in _wrong(items[1]) or data._final_number(_wrong(items[1])) < 1000  # keeps "36,000"-style numbers
    assert data._final_number(_wrong(items[2])) > 0  # gold 0: the wrong one stays non-negative
    assert data.gsm8k_pairs(path, seed=1, limit=2) == items[:2]
    assert data.gsm8k_pairs(path, seed=1) == items
    data.write_items(tmp_path / "out.jsonl", items)
    assert data.read_items(tmp_path / "out.jsonl") == items


def test_gsm8k_pairs_without_gold_marker(tmp_path):
    path = _jsonl(tmp_path / "train.jsonl", [GSM8K_ROWS[0], {"question": "q", "answer": "no marker"}])
    with pytest.raises(ValueError, match=r"train\.jsonl:2: .*'#### <gold>'"):
        data.gsm8k_pairs(path)


def test_last_boxed():
    assert data.last_boxed("a \\boxed{1} b \\boxed{\\frac{1}{2}} c") == "\\frac{1}{2}"
    assert data.last_boxed("\\boxed{{12}}") == "{12}"
    assert data.last_boxed("no box") is None
    assert data.last_boxed("\\boxed{open") is None


def test_math_pairs(tmp_path):
    path = _jsonl(tmp_path / "math.jsonl", MATH_ROWS)
    exclude = _jsonl(tmp_path / "math500.jsonl", [{"problem": MATH_ROWS[2]["problem"] + "\n", "answer": "2"}])
    items = data.math_pairs(path, exclude_path=exclude, seed=0)
    # line 2 is a fraction, line 3 is in MATH-500, line 4's last box is "{12}" (not a plain integer)
    assert [i["id"] for i in items] == ["math-1", "math-5"]
    assert _gold(items[0]).rstrip(".").endswith("4") and items[0]["solution"] == MATH_ROWS[0]["solution"]
    assert data._final_number(_gold(items[1])) == -5 and data._final_number(_wrong(items[1])) != -5
    assert data.math_pairs(path, exclude_path=exclude, limit=1) == items[:1]


def test_rmb_pairwise_train(tmp_path):
    pairwise, bon = _rmb_fixture(tmp_path)
    items = data.rmb_pairwise_train(pairwise, bon, seed=0)
    assert [i["id"] for i in items] == ["rmb-1", "rmb-4"]  # 2 and 3 start with a BoN prompt
    assert items[0]["query"] == [{"role": "user", "content": "fresh prompt"}]
    assert [t["content"] for t in items[1]["query"]] == ["first", "reply", "second"]
    assert {_gold(items[0]), _wrong(items[0])} == {"good", "bad"} and _gold(items[0]) == "good"
    assert _gold(items[1]) == "c"
    assert data.rmb_pairwise_train(pairwise, bon, limit=1) == items[:1]
    assert set(data.SOURCES) == {"gsm8k", "math", "rmb-pairwise"}


def test_orders_follow_the_seed(tmp_path):
    rows = [{"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}"} for i in range(1, 41)]
    path = _jsonl(tmp_path / "train.jsonl", rows)
    bests = {seed: [i["best"] for i in data.gsm8k_pairs(path, seed=seed)] for seed in (0, 1)}
    assert bests[0] != bests[1]
    assert 10 <= sum(bests[0]) <= 30


# ---------------------------------------------------------------------------------------------- teacher


def _check_judgements(items, texts, score_range=(1, 10), criteria=(2, 3)):
    ex = extract_scores(texts, num_responses=[len(i["responses"]) for i in items], score_range=score_range,
                        backend="reference")
    assert bool(ex.valid.all()), [t for t, v in zip(texts, ex.valid.tolist()) if not v][:1]
    for row, item in enumerate(items):
        scores = ex.scores[row].tolist()
        best = item["best"]
        assert all(scores[best] > s for i, s in enumerate(scores) if i != best), (item["id"], scores)
        principles = ex.principles[row]
        assert criteria[0] <= len(principles) <= criteria[1] and all(w is not None for _, w in principles), principles
        assert sum(w for _, w in principles) == pytest.approx(1.0)
        assert int(ex.principle_span[row, 0]) >= 0 and int(ex.critique_span[row, 0]) >= 0


def test_teacher_on_fixtures(tmp_path):
    items = data.gsm8k_pairs(_jsonl(tmp_path / "train.jsonl", GSM8K_ROWS))
    items += data.math_pairs(_jsonl(tmp_path / "math.jsonl", MATH_ROWS),
                             exclude_path=_jsonl(tmp_path / "ex.jsonl", [{"problem": "none"}]))
    texts = [data.teacher_judgement(item, seed=3) for item in items]
    _check_judgements(items, texts)
    assert "\\boxed" not in texts[-1].split("Scores:")[0]  # the MATH answer box is unwrapped in the analysis
    assert texts == [data.teacher_judgement(item, seed=3) for item in items]
    assert texts != [data.teacher_judgement(item, seed=4) for item in items]
    _check_judgements(items, [data.teacher_judgement(item, score_range=(0, 1)) for item in items], (0, 1))
    brief = [data.teacher_judgement(item, seed=3, brief=True) for item in items]
    _check_judgements(items, brief, criteria=(1, 1))
    assert all(len(b) < len(t) / 2 for b, t in zip(brief, texts))
    assert all(f"{data._final_number(r)}, {'correct' if i == item['best'] else 'wrong'}." in b
               for item, b in zip(items, brief) for i, r in enumerate(item["responses"]))


def test_teacher_rejects_what_it_cannot_judge():
    item = {"id": "t", "query": "q", "responses": ["The answer is 4.", "The answer is 5."], "best": 0,
            "solution": "2 + 2 = 4\n#### 4"}
    with pytest.raises(ValueError, match="'t'.*do not single out response 1"):
        data.teacher_judgement({**item, "best": 1})
    with pytest.raises(ValueError, match="'t'.*needs n >= 2 responses"):
        data.teacher_judgement({k: v for k, v in item.items() if k != "solution"})
    with pytest.raises(ValueError, match="'t'.*not an integer"):
        data.teacher_judgement({**item, "solution": "$\\boxed{\\frac12}$"})
    with pytest.raises(ValueError, match="score_range"):
        data.teacher_judgement(item, score_range=(5, 5))


# ---------------------------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def gsm8k(shared_data):
    return data.gsm8k_pairs(shared_data / "gsm8k" / "train.jsonl", seed=0)


def _check_pairs(items):
    for item in items:
        gold, wrong = data._final_number(_gold(item)), data._final_number(_wrong(item))
        assert wrong != gold, item
        assert gold < 0 or wrong >= 0, item
    share = sum(i["best"] for i in items) / len(items)
    assert 0.45 <= share <= 0.55, share  # the gold answer is first about half the time


def test_gsm8k_real(shared_data, gsm8k):
    assert len(gsm8k) == 7473
    _check_pairs(gsm8k)
    assert all("<<" not in i["solution"] for i in gsm8k)
    again = data.gsm8k_pairs(shared_data / "gsm8k" / "train.jsonl", seed=0, limit=500)
    assert again == gsm8k[:500]
    other = data.gsm8k_pairs(shared_data / "gsm8k" / "train.jsonl", seed=1, limit=500)
    assert [i["best"] for i in other] != [i["best"] for i in again]
    assert [i["query"] for i in other] == [i["query"] for i in again]


def test_math_real(shared_data):
    folder = shared_data / "math"
    items = data.math_pairs(folder / "math_test_5000.jsonl", exclude_path=folder / "math500_test.jsonl")
    excluded = {json.loads(line)["problem"].strip() for line in (folder / "math500_test.jsonl").open()}
    assert len(items) == 2786  # of the 4,500 problems outside MATH-500, those with a plain-integer answer
    assert not any(i["query"].strip() in excluded for i in items)
    _check_pairs(items)


def test_rmb_pairwise_train_real(shared_data):
    folder = shared_data / "rmb"
    items = data.rmb_pairwise_train(folder / "rmb_pairwise.jsonl.gz", folder / "rmb_bon.jsonl.gz")
    with gzip.open(folder / "rmb_bon.jsonl.gz", "rt", encoding="utf-8") as f:
        bon = {json.loads(line)["conversation_input"][0]["content"] for line in f}
    prompts = {i["query"][0]["content"] for i in items}
    # README: "about 741 prompts, 2,204 pairs"; the first-user-turn rule it states gives one prompt (two
    # multi-turn pairs that open with a BoN prompt) fewer.
    assert (len(items), len(prompts)) == (2202, 740)
    assert not prompts & bon
    assert 0.45 <= sum(i["best"] for i in items) / len(items) <= 0.55
    assert all(i["query"][-1]["role"] == "user" for i in items)


def test_teacher_real_gsm8k(gsm8k):
    items = gsm8k[:200]
    _check_judgements(items, [data.teacher_judgement(item, seed=7) for item in items])


def test_arithmetic_pairs_are_seeded_correct_and_taught():
    arithmetic_pairs = data.arithmetic_pairs
    items = arithmetic_pairs(200, seed=3)
    assert items == arithmetic_pairs(200, seed=3) and items != arithmetic_pairs(200, seed=4)
    assert len({it["query"] for it in items}) > 150 and 70 <= sum(it["best"] for it in items) <= 130
    for it in items:
        expr, gold = it["solution"].split("\n#### ")
        a, op, b, _, c = expr.split()
        assert int(c) == {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op] == int(gold) >= 0
        assert it["responses"][it["best"]].rstrip(".").endswith(gold)
        assert not it["responses"][1 - it["best"]].rstrip(".").endswith(" " + gold)
        ex = extract_scores([data.teacher_judgement(it)], num_responses=2, backend="reference")
        s = ex.scores[0].tolist()
        assert bool(ex.valid[0]) and s[it["best"]] > s[1 - it["best"]]
    with pytest.raises(ValueError, match="max_operand = 1"):
        arithmetic_pairs(3, max_operand=1)
