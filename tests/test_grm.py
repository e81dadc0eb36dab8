"""GenerativeRewardModel and MetaRewardModel: k samples with seeded shuffles through the engine, extraction from
token ids, (Meta-RM guided) voting."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TOLERANCES

import spct
from spct.engine import Sample
from spct.items import ItemError
from spct.grm.model import orders


@pytest.fixture(scope="module")
def grm(default_model_dir):
    return spct.GenerativeRewardModel.from_pretrained(str(default_model_dir))


def test_orders_are_seeded_permutations():
    a = orders(4, 8, seed=1, item=0, shuffle=True)
    assert all(sorted(o) == [0, 1, 2, 3] for o in a) and len({tuple(o) for o in a}) > 1
    assert a == orders(4, 8, seed=1, item=0, shuffle=True) and a != orders(4, 8, seed=2, item=0, shuffle=True)
    assert orders(3, 2, seed=1, item=0, shuffle=False) == [[0, 1, 2], [0, 1, 2]]


@pytest.mark.parametrize("n, k", [(1, 3), (2, 4), (3, 6), (4, 8), (4, 6), (5, 2)])
def test_balanced_orders_rotate_one_seeded_order(n, k):
    a = orders(n, k, seed=1, item=7, shuffle="balanced")
    assert all(sorted(o) == list(range(n)) for o in a)
    assert len({tuple(o) for o in a}) == min(n, k)  # n prompts, not up to k
    for p in range(n):  # each response sits at each position k // n or k // n + 1 times
        counts = [sum(o[p] == r for o in a) for r in range(n)]
        assert max(counts) - min(counts) <= 1 and (k % n or min(counts) == k // n)
    assert a[:2] == orders(n, 2, seed=1, item=7, shuffle="balanced")  # sample j depends on j only
    assert a == orders(n, k, seed=1, item=7, shuffle="balanced")
    if n > 2:
        assert a != orders(n, k, seed=1, item=8, shuffle="balanced")
    with pytest.raises(ValueError, match="shuffle must be one of"):
        orders(n, k, seed=1, item=7, shuffle="sorted")


def test_balanced_orders_prefill_one_prompt_per_rotation(grm):
    items = [("Name a color.", ["Blue", "Seven", "Red"])]
    calls = []
    j = grm.score_batch(items, k=6, max_new_tokens=2, seed=3, shuffle="balanced", progress=calls.append,
                        force_scores=True)[0]
    shown = [tuple(s.order) for s in j.samples]
    assert len(set(shown)) == 3 and shown == [tuple(o) for o in orders(3, 6, 3, 0, "balanced")]
    prompt_lengths = sorted({len(grm.prompt_ids(items[0][0], [items[0][1][x] for x in o])) for o in shown})
    assert len([c for c in calls if c in prompt_lengths and c > 20]) == 3  # three prefills, one per rotation


def test_scores_are_mapped_back_and_voted(grm):
    """Judgements written as a GRM would write them (tokenized by the real tokenizer): each sample's scores are in
    the order it was shown; the rewards are per original response."""
    tok = grm.tokenizer
    shown = [[1, 0], [0, 1], [1, 0]]
    texts = ["Specific Criteria:\n- Accuracy (Weight: 60%)\n\nAnalysis:\nResponse 1 is wrong.\n\nScores: \\boxed{2, 9}",
             "Specific Criteria:\n- Accuracy\n\nAnalysis:\nFine.\n\nScores: \\boxed{8, 3}",
             "Analysis: no group here"]
    samples = [[Sample(tok(t, add_special_tokens=False).input_ids, t, "stop") for t in texts]]
    (j,) = grm._judge([("q", ["right", "wrong"])], samples, [shown], k=3, seed=0)
    assert j.num_valid == 2
    assert j.rewards == [9.0 + 8.0, 2.0 + 3.0] and j.best == 0
    assert j.samples[0].scores == [9.0, 2.0] and j.samples[0].order == [1, 0]
    assert j.samples[0].principles == [("Accuracy", 0.6)] and "Response 1 is wrong." in j.samples[0].critique
    assert not j.samples[2].valid and all(math.isnan(x) for x in j.samples[2].scores)


def test_an_exact_tie_is_broken_by_the_item_number_not_its_batch_position(grm):
    """Crafted judgements that tie exactly: the best response is drawn by (seed, item number) wherever the item
    sits in the batch, and the draw does depend on the number (so the tie-break is not a constant)."""
    tok = grm.tokenizer

    def sample(text):
        return Sample(tok(text, add_special_tokens=False).input_ids + [tok.eos_token_id], text, "stop")

    tie = ("q", ["a", "b"])
    tie_samples = [sample("Scores: \\boxed{4, 7}"), sample("Scores: \\boxed{7, 4}")]  # 11 = 11 in original order
    other = ("q", ["a", "b", "c"])
    other_samples = [sample("Scores: \\boxed{1, 2, 3}"), sample("Scores: \\boxed{1, 2, 9}")]
    shown = [[0, 1], [0, 1]]
    alone = {n: grm._judge([tie], [tie_samples], [shown], k=2, seed=4, indices=[n])[0] for n in range(8)}
    assert all(j.rewards == [11.0, 11.0] and j.num_valid == 2 for j in alone.values())
    assert {j.best for j in alone.values()} == {0, 1}  # the draw follows the number
    for n in (0, 5, 7):
        for pos in range(3):  # the tied item at position pos of a batch of three
            items, samples, orders_ = [other, other], [other_samples, other_samples], [[[0, 1, 2]] * 2] * 2
            items.insert(pos, tie)
            samples.insert(pos, tie_samples)
            orders_.insert(pos, shown)
            numbers = [n + 1 + i for i in range(2)]
            numbers.insert(pos, n)
            judged = grm._judge(items, samples, orders_, k=2, seed=4, indices=numbers)
            assert judged[pos].rewards == [11.0, 11.0] and judged[pos].best == alone[n].best
            assert [j.rewards for i, j in enumerate(judged) if i != pos] == [[2.0, 4.0, 12.0]] * 2


def test_score_batch_end_to_end_is_seeded(grm):
    items = [{"query": "What is 2 + 2?", "responses": ["4", "5"]}, ("Name a color.", ["Blue", "Seven", "Red"])]
    a = grm.score_batch(items, k=3, max_new_tokens=24, seed=5)
    b = grm.score_batch(items, k=3, max_new_tokens=24, seed=5)
    assert [[s.text for s in j.samples] for j in a] == [[s.text for s in j.samples] for j in b]
    for j, n in zip(a, (2, 3)):
        assert len(j.rewards) == n and len(j.samples) == 3
        assert all(sorted(s.order) == list(range(n)) for s in j.samples)
        assert j.num_valid == sum(s.valid for s in j.samples)
        if j.num_valid == 0:  # the 135M model rarely writes a score group: then no reward
            assert all(math.isnan(r) for r in j.rewards) and j.best == -1
    greedy = grm.score("What is 2 + 2?", ["4", "5"], max_new_tokens=16)
    assert len(greedy.samples) == 1 and greedy.samples[0].order == [0, 1]


def test_submit_batch_result_equals_score_batch(grm):
    """submit_batch returns at once; its result() is score_batch's judgements, and a cancelled one raises."""
    from spct.engine.online import RequestCancelled

    items = [{"query": "What is 2 + 2?", "responses": ["4", "5"]}, ("Name a color.", ["Blue", "Seven"])]
    settings = dict(k=2, max_new_tokens=12, seed=3, force_scores=True)
    pending = grm.submit_batch(items, **settings)
    assert pending.prompt_tokens > 0 and len(pending.handles) >= 2
    got, want = pending.result(), grm.score_batch(items, **settings)
    assert [(j.rewards, j.best, j.num_valid) for j in got] == [(j.rewards, j.best, j.num_valid) for j in want]
    assert [[s.text for s in j.samples] for j in got] == [[s.text for s in j.samples] for j in want]
    stopped = grm.submit_batch(items, **{**settings, "max_new_tokens": 1000})
    stopped.cancel()
    with pytest.raises(RequestCancelled):
        stopped.result(timeout=60)


@pytest.mark.parametrize(
    ("bad", "match"),
    [(("", ["a"]), r"^items\[1\]: the item has an empty query"),
     (("q", []), r"^items\[1\]: the item: 'responses' must be a non-empty list of strings"),
     ({"id": "x", "query": "q"}, r"^items\[1\]: the item: 'responses' must be"),
     ({"query": [{"role": "user"}], "responses": ["a"]}, r"^items\[1\]: the item: 'query' must be .* turn 0 is"),
     ("q", r"^items\[1\]: the item must be a dict")],
)
def test_bad_items(grm, bad, match):
    """An error about one item is an ItemError at its position in the batch (the CLI names its line and id)."""
    with pytest.raises(ItemError, match=match) as error:
        grm.score_batch([("q", ["a"]), bad])
    assert error.value.index == 1


def test_a_prompt_that_cannot_fit_names_the_token_counts(grm):
    with pytest.raises(ItemError, match=r"^items\[1\]: the prompt has \d+ tokens; with max_new_tokens = 7800 it "
                                        r"needs \d+, but the model's context is 8192 tokens") as error:
        grm.score_batch([("q", ["a"]), ("q", ["a b c " * 100, "b"])], max_new_tokens=7800)
    assert error.value.index == 1
    with pytest.raises(ValueError, match="k must be an int >= 1, got 0"):
        grm.score("q", ["a"], k=0)
    with pytest.raises(ValueError, match="reduce must be one of 'sum', 'mean', got 'max'"):
        grm.score("q", ["a"], reduce="max")


def test_reduce_mean_divides_by_the_samples_voted(grm):
    """reduce="mean": each reward over the samples voted (num_valid), so rewards compare across k; an item with no
    valid sample keeps NaN rewards and best -1 under both."""
    items = [("What is 2 + 2?", ["4", "5"]), ("Name a color.", ["Blue", "Seven", "Red"])]
    for k in (2, 3):
        total = grm.score_batch(items, k=k, max_new_tokens=8, seed=1, force_scores=True)
        mean = grm.score_batch(items, k=k, max_new_tokens=8, seed=1, force_scores=True, reduce="mean")
        for t, m in zip(total, mean):
            assert t.num_valid == m.num_valid == k and t.best == m.best
            assert m.rewards == pytest.approx([r / k for r in t.rewards]) and all(1 <= r <= 10 for r in m.rewards)
    free = grm.score_batch(items, k=2, max_new_tokens=4, seed=1, reduce="mean")
    assert [j.num_valid for j in free] == [0, 0]  # 4 tokens are too few for a score group
    assert all(math.isnan(r) for j in free for r in j.rewards) and [j.best for j in free] == [-1, -1]


def test_score_batch_reports_every_token_to_progress(grm):
    """The prompts' tokens (each distinct response order prefilled once) plus every sample's tokens, forced score
    groups included."""
    items = [("What is 2 + 2?", ["4", "5"]), ("Name a color.", ["Blue", "Seven", "Red"])]
    calls = []
    judged = grm.score_batch(items, k=3, max_new_tokens=6, seed=2, force_scores=True, progress=calls.append)
    prompts = {(i, tuple(o)): len(grm.prompt_ids(q, [r[x] for x in o]))
               for i, (q, r) in enumerate(items) for o in orders(len(r), 3, 2, i, True)}
    generated = [s.num_tokens for j in judged for s in j.samples]
    assert max(generated) > 6  # forced groups ran past max_new_tokens
    assert calls[: len(prompts)] == list(prompts.values())
    assert sum(calls) == sum(prompts.values()) + sum(generated)


def test_pad_samples_feed_extract_scores(grm):
    """Real samples (forced score groups, so some scores exist) padded by spct.pad_samples: extract_scores on the
    tensor equals extraction from their texts and the GRM's own extraction; the nested and flat forms agree."""
    from spct.grm.judge import extract

    prompts = [grm.prompt_ids("What is 2 + 2?", ["4", "5"]), grm.prompt_ids("Name a color.", ["Blue", "7"])]
    outs = grm.engine.generate(prompts, k=[2, 3], max_new_tokens=10, temperature=0.8, seed=4,
                               constraints=[grm._force_scores(2)] * 2)
    flat = [s for o in outs for s in o]
    ids, lengths = spct.pad_samples(outs)
    assert ids.dtype == lengths.dtype == torch.int64 and ids.shape == (5, max(len(s.token_ids) for s in flat))
    assert lengths.tolist() == [len(s.token_ids) for s in flat] and len(set(lengths.tolist())) > 1
    assert all(ids[r, : len(s.token_ids)].tolist() == s.token_ids and not ids[r, len(s.token_ids):].any()
               for r, s in enumerate(flat))
    flat_ids, flat_lengths = spct.pad_samples(flat, pad_id=7)
    assert torch.equal(flat_lengths, lengths) and torch.equal(flat_ids[ids != 0], ids[ids != 0])
    ex = spct.extract_scores(token_ids=ids, lengths=lengths, vocab=grm.vocab, num_responses=2)
    assert ex.valid.all()
    from_texts = spct.extract_scores([s.text for s in flat], num_responses=2)
    own = extract([s.token_ids for s in flat], grm.engine.eos_token_ids, grm.vocab, 2, (1, 10))
    for other in (from_texts, own):
        assert torch.equal(ex.valid, other.valid) and torch.equal(ex.scores, other.scores)
    with pytest.raises(ValueError, match=r"samples\[0\]\[1\] is int, not a Sample"):
        spct.pad_samples([[flat[0], 3]])


@pytest.fixture(scope="module")
def meta_rm(default_model_dir):
    return spct.MetaRewardModel.from_pretrained(str(default_model_dir), seed=3)


def test_meta_rm_fresh_head_scores_and_round_trips(meta_rm, tmp_path):
    shown = [["4", "5"], ["5", "4"]]
    a = meta_rm.score("What is 2 + 2?", shown, ["Specific Criteria: accuracy. Analysis: 4 is right.", "Analysis: ?"])
    assert a.shape == (2,) and a.dtype == torch.float32 and torch.isfinite(a).all() and a[0] != a[1]
    meta_rm.save_pretrained(tmp_path / "meta")
    again = spct.MetaRewardModel.from_pretrained(tmp_path / "meta")
    assert torch.equal(again.weight, meta_rm.weight) and again.base == meta_rm.base
    b = again.score("What is 2 + 2?", shown, ["Specific Criteria: accuracy. Analysis: 4 is right.", "Analysis: ?"])
    # the same head on the same backbone; bf16 prefill matmuls may round differently between two loads (allocation
    # alignment picks the BLAS kernel), so the scores agree to bf16 tolerance, not bit for bit
    torch.testing.assert_close(a, b, **TOLERANCES[torch.bfloat16])
    with pytest.raises(ValueError, match="one response order per judgement"):
        meta_rm.score("q", shown, ["only one"])


def test_meta_rm_guided_scoring(grm, meta_rm):
    j = grm.score("What is 2 + 2?", ["4", "5"], k=4, max_new_tokens=12, seed=2, meta_rm=meta_rm)
    assert all(s.meta_score is not None and math.isfinite(s.meta_score) for s in j.samples)
    assert j.num_valid <= 2  # k_meta = k // 2
    with pytest.raises(ValueError, match="k_meta must be an int >= 1 used with meta_rm"):
        grm.score("q", ["a"], k=2, k_meta=1)


def test_forced_scores_make_every_sample_valid(grm):
    items = [("What is 2 + 2?", ["4", "5"]), ("Name a color.", ["Blue", "Seven", "Red"])]
    free = grm.score_batch(items, k=2, max_new_tokens=12, seed=1)
    forced = grm.score_batch(items, k=2, max_new_tokens=12, seed=1, force_scores=True)
    for f, j, n in zip(free, forced, (2, 3)):
        assert j.num_valid == 2 and all(math.isfinite(r) for r in j.rewards) and 0 <= j.best < n
        for a, b in zip(f.samples, j.samples):
            assert b.valid and all(1 <= x <= 10 and x == int(x) for x in b.scores)
            assert "Scores: \\boxed{" in b.text and b.text.rstrip().endswith("}")
            if a.valid:  # a sample that already had a group is left alone
                assert a.text == b.text
        assert j.rewards == [sum(s.scores[r] for s in j.samples) for r in range(n)]


def test_the_first_k_samples_are_a_run_with_that_k(grm, meta_rm):
    from spct.eval.run import revote

    items = [("What is 2 + 2?", ["4", "5", "22"]), ("Name a color.", ["Blue", "Seven"])]
    four = grm.score_batch(items, k=4, max_new_tokens=16, seed=3, force_scores=True)
    two = grm.score_batch(items, k=2, max_new_tokens=16, seed=3, force_scores=True)
    for a, b in zip(four, two):
        assert [(s.text, s.order) for s in a.samples[:2]] == [(s.text, s.order) for s in b.samples]
    assert revote(four, 2, 3) == [j.rewards for j in two]
    assert revote(four, 4, 3) == [j.rewards for j in four]
    guided = grm.score_batch(items, k=4, max_new_tokens=16, seed=3, force_scores=True, meta_rm=meta_rm)
    assert revote(guided, 4, 3, meta_rm) == [j.rewards for j in guided]  # k_meta = 2 on both sides


def test_evaluate_with_a_meta_rm_reports_guided_and_plain_votes(grm, meta_rm):
    from spct.eval.datasets import EvalItem
    from spct.eval.run import evaluate

    items = [EvalItem("a", "What is 2 + 2?", ["4", "5"], 0, "math"),
             EvalItem("b", "Name a color.", ["Seven", "Blue", "Dog"], 1, "words")]
    guided = evaluate(grm, items, [2, 4], max_new_tokens=12, seed=5, meta_rm=meta_rm, force_scores=True)
    plain = evaluate(grm, items, [2, 4], max_new_tokens=12, seed=5, force_scores=True)
    assert set(guided) == {"k", "k_plain"} and set(plain) == {"k"}
    assert guided["k_plain"] == plain["k"]  # the same samples, voted without the Meta RM
    for k in ("2", "4"):
        lo, hi = guided["k"][k]["overall_ci95"]
        assert 0 <= lo <= guided["k"][k]["overall"] <= hi <= 1 and guided["k"][k]["items"] == 2


def test_meta_rm_features_share_the_prompt_and_equal_one_by_one(default_model_dir):
    # fp32 so that the shared-prompt path and the one-by-one path are compared at the tight tolerance
    meta = spct.MetaRewardModel.from_pretrained(str(default_model_dir), dtype="float32", seed=3)
    shown = [["4", "5"], ["5", "4"], ["4", "5"], ["4", "5"]]  # order ("4", "5") shared by three, one alone
    judgements = ["Analysis: 4 is right.", "Analysis: 5 is wrong, 4 is right.", "Analysis: 4 is", "A"]
    got = meta.features("What is 2 + 2?", shown, judgements)
    want = torch.stack([meta.runner.last_hidden(torch.tensor(meta.input_ids("What is 2 + 2?", s, j))).float()
                        for s, j in zip(shown, judgements)])
    torch.testing.assert_close(got, want, **TOLERANCES[torch.float32])
    torch.testing.assert_close(meta.score("What is 2 + 2?", shown, judgements), want @ meta.weight + meta.bias,
                               **TOLERANCES[torch.float32])
    with pytest.raises(ValueError, match="every prefix and suffix needs at least one token"):
        meta.runner.last_hidden_shared([torch.tensor([1, 2])], [torch.tensor([], dtype=torch.int64)], [0])
