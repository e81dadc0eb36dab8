"""Evaluation: the readers on small fixtures written here, the strict accuracy rule, `spct eval` end to end."""

from __future__ import annotations

import gzip
import json
import math
import subprocess
import sys

import pytest

from spct.eval import datasets
from spct.eval.run import correct, table


def _turns(text):
    return [{"role": "user", "content": text, "language": "English"}]


@pytest.fixture
def fixtures(tmp_path):
    bon = tmp_path / "bon.jsonl.gz"
    with gzip.open(bon, "wt") as f:
        for i in range(3):
            f.write(json.dumps({"bon_uid": f"b{i}", "conversation_input": _turns(f"question {i}"),
                                "bon_best": {"llm_name": "x", "answer": f"good {i}"},
                                "loser_list": [{"llm_name": "y", "answer": f"bad {i}.{j}"} for j in range(3)],
                                "category_path": "BoN_set/Helpfulness/Chat"}) + "\n")
    pair = tmp_path / "pair.jsonl"
    pair.write_text(json.dumps({"pair_uid": "p0", "conversation_input": _turns("q"), "chosen": {"answer": "yes"},
                                "reject": {"answer": "no"}, "category_path": "Pairwise_set/Harmlessness/S1"}) + "\n")
    bar = tmp_path / "llmbar"
    bar.mkdir()
    (bar / "Natural.json").write_text(json.dumps([{"input": "i", "output_1": "a", "output_2": "b", "label": 2}]))
    rb = tmp_path / "rb.jsonl"
    rb.write_text(json.dumps({"id": 7, "prompt": "p", "chosen": "c", "rejected": "r", "subset": "math"}) + "\n")
    own = tmp_path / "own.jsonl"
    own.write_text("".join(json.dumps({"id": f"o{i}", "query": "What is 2 + 2?", "responses": ["4", "5"], "best": 0,
                                       "category": "math"}) + "\n" for i in range(2)))
    return {"bon": bon, "pair": pair, "llmbar": bar, "rb": rb, "own": own}


def test_readers(fixtures):
    bon = datasets.read(fixtures["bon"], "rmb-bon")
    assert len(bon) == 3 and all(len(it.responses) == 4 and it.category == "Helpfulness" for it in bon)
    assert all(it.responses[it.best] == f"good {i}" for i, it in enumerate(bon))
    assert len({it.best for it in datasets.read(fixtures["bon"], "rmb-bon")}) >= 1
    assert datasets.read(fixtures["bon"], "rmb-bon", limit=2)[1].id == "b1"
    (p,) = datasets.read(fixtures["pair"], "rmb-pairwise")
    assert p.responses[p.best] == "yes" and p.category == "Harmlessness" and p.query[0]["content"] == "q"
    (b,) = datasets.read(fixtures["llmbar"], "llmbar")
    assert b.responses[b.best] == "b" and b.category == "Natural"
    (r,) = datasets.read(fixtures["rb"], "rewardbench")
    assert r.responses[r.best] == "c" and r.category == "math" and r.id == "7"
    own = datasets.read(fixtures["own"], "jsonl")
    assert own[0].responses == ["4", "5"] and own[0].best == 0
    with pytest.raises(ValueError, match="format must be one of"):
        datasets.read(fixtures["own"], "csv")


def test_the_best_is_not_always_shown_first(tmp_path):
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps({"id": i, "prompt": "p", "chosen": "c", "rejected": "r"}) + "\n"
                            for i in range(40)))
    bests = [it.best for it in datasets.read(path, "rewardbench")]
    assert 5 < sum(bests) < 35 and bests == [it.best for it in datasets.read(path, "rewardbench")]


def test_strict_accuracy_rule():
    assert correct([9.0, 3.0], 0) and not correct([9.0, 9.0], 0) and not correct([3.0, 9.0], 0)
    assert not correct([math.nan, math.nan], 0) and not correct([math.nan, 1.0], 0)
    assert correct([5.0, math.nan, 1.0], 0) is False  # NaN is not below: an unscored response voids the item
    t = table({"k": {"1": {"overall": 0.5, "categories": {"math": 0.5}, "valid_rate": 0.25, "items": 2}}})
    assert "overall" in t and "50.0%" in t and "25.0%" in t


def test_cli_eval(tmp_path, fixtures, default_model_dir):
    out = tmp_path / "eval"
    proc = subprocess.run([sys.executable, "-m", "spct", "eval", "--model", str(default_model_dir), "--data",
                           str(fixtures["own"]), "--format", "jsonl", "--k", "1,2", "--max-new-tokens", "4",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    assert set(results["k"]) == {"1", "2"} and results["config"]["items"] == 2
    for r in results["k"].values():
        assert 0 <= r["overall"] <= 1 and set(r["categories"]) == {"math"} and 0 <= r["valid_rate"] <= 1
    assert (out / "accuracy_vs_k.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "overall" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "spct", "eval", "--data", str(fixtures["own"]), "--format",
                           "jsonl", "--k", "1,x", "--out", str(out)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "--k must be comma-separated integers" in proc.stderr


def test_wilson_interval():
    from spct.eval.run import wilson

    lo, hi = wilson(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    assert wilson(0, 20)[0] == 0.0 and 0.13 < wilson(0, 20)[1] < 0.17  # not the degenerate (0, 0)
    assert wilson(20, 20)[1] == 1.0 and all(math.isnan(x) for x in wilson(0, 0))


def test_evaluate_resumes_from_its_sample_cache(tmp_path, fixtures, default_model_dir):
    """An interrupted evaluation keeps its judged batches: a rerun scores only what is missing (a torn last line
    included) and gives the same results; a cache made with other settings is refused by name."""
    import spct
    from spct.eval.run import evaluate

    grm = spct.GenerativeRewardModel.from_pretrained(default_model_dir)
    items = datasets.read(fixtures["bon"], "rmb-bon")
    calls = []

    class Counting:
        def score_batch(self, batch, **kw):
            calls.append(len(batch))
            return grm.score_batch(batch, **kw)

    cache = tmp_path / "samples"
    kw = dict(seed=3, max_new_tokens=6, batch_size=1, force_scores=True, cache_dir=cache, settings={"model": "m"})
    first = evaluate(Counting(), items, [1, 2], **kw)
    assert calls == [1] * 6  # 3 items, greedy pass and k = 2 pass
    lines = (cache / "k2.jsonl").read_text().splitlines()
    (cache / "k2.jsonl").write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])  # killed mid-write
    calls.clear()
    again = evaluate(Counting(), items, [1, 2], **kw)
    assert calls == [1, 1] and again == first  # items 1 and 2 of the k = 2 pass, nothing else
    assert len((cache / "k2.jsonl").read_text().splitlines()) == 3
    with pytest.raises(ValueError, match=r"other settings \(max_new_tokens, model\)"):
        evaluate(Counting(), items, [1, 2], **{**kw, "max_new_tokens": 7, "settings": {"model": "other"}})
