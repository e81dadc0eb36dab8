"""`spct.GenerativeRewardModel`: rewards for responses from k sampled judgements, voted (grm-method.md section 3).

    grm = spct.GenerativeRewardModel.from_pretrained("smollm2-135m")
    j = grm.score("What is 2 + 2?", ["4", "5"], k=8)
    j.rewards, j.best, j.num_valid, j.samples[0].text

Each sample sees the responses in its own seeded order; samples that share an order share one prompt, so the engine
prefills it once for all of them. Scores are extracted from the generated token ids natively and mapped back to the
original order by `spct.vote`, which also sums the valid samples and breaks ties (seeded by the item's number).
Extraction, the mapping and the vote call live in `spct.grm.judge`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from spct.grm.grammar import PREFIX, ForceScores
from spct.grm.judge import cast_votes, check_k, extract, judgement_text, to_original
from spct.grm.templates import Template, messages
from spct.items import ItemError, as_item
from spct.ops.token_bytes import TokenBytes

__all__ = ["REDUCE", "SHUFFLES", "GenerativeRewardModel", "Judgement", "PendingScores", "SampleJudgement",
           "check_reduce"]

REDUCE = ("sum", "mean")  # how score_batch turns the voted samples' scores into a reward


@dataclass
class SampleJudgement:
    """One sampled judgement. scores: per response in the ORIGINAL order (NaN when invalid); order[p]: the original
    index of the response shown at position p; meta_score: set by Meta-RM guided voting; num_tokens: its length;
    rated_text: what a Meta RM rates (the text up to the end of its critique), so training sees what scoring does."""

    text: str
    scores: list[float]
    valid: bool
    principles: list[tuple[str, float | None]]
    critique: str
    order: list[int]
    meta_score: float | None = None
    num_tokens: int = 0  # generated tokens (a forced score group included)
    rated_text: str = ""


@dataclass
class Judgement:
    """rewards: per response (original order), the sum over the valid samples (NaN when none is valid), or with
    reduce="mean" that sum divided by num_valid; best: the argmax (-1 when no valid sample); num_valid: the samples
    voted (the valid ones, or those a Meta RM kept); samples: all k."""

    rewards: list[float]
    best: int
    num_valid: int
    samples: list[SampleJudgement] = field(default_factory=list)


def _item(item, i: int) -> tuple[object, list[str]]:
    """An item's (query, responses), checked by `spct.items.as_item`; an error is an `ItemError` at position i."""
    if isinstance(item, dict):
        item = {key: v for key, v in item.items() if key != "id"}  # scoring ignores ids; the caller names the item
    try:
        checked = as_item(item, "the item")
    except ValueError as error:
        raise ItemError(i, str(error)) from None
    return checked.query, checked.responses


def check_reduce(reduce: object) -> str:
    """reduce: "sum" (the method's rule) or "mean" (per sample voted)."""
    if reduce not in REDUCE:
        raise ValueError(f"reduce must be one of {', '.join(map(repr, REDUCE))}, got {reduce!r}")
    return reduce


def _mean(j: Judgement) -> Judgement:
    """The judgement with each reward divided by the samples voted (NaN stays NaN: no sample voted)."""
    if j.num_valid == 0:
        return j
    return replace(j, rewards=[r / j.num_valid for r in j.rewards])


SHUFFLES = (False, True, "random", "balanced")


def orders(n: int, k: int, seed: int, item: int, shuffle: bool | str) -> list[list[int]]:
    """The response order of each of the k samples of an item: order[p] = original index shown at position p.

    shuffle False: the original order for every sample; True or "random": a seeded permutation per sample, keyed
    by (seed, item, sample); "balanced": one seeded permutation per item, keyed by (seed, item), rotated by the
    sample's number (sample j shows base[(p + j) % n] at position p), so with k a multiple of n every response sits
    in every position k / n times and the k samples need only n distinct prompts (n prefills instead of up to k).
    Either way sample j's order depends only on (seed, item, j): the first k of K samples are a run with k alone."""
    if shuffle not in SHUFFLES:
        raise ValueError(f"shuffle must be one of {SHUFFLES} (or None), got {shuffle!r}")
    if not shuffle:
        return [list(range(n)) for _ in range(k)]
    if shuffle == "balanced":
        base = np.random.default_rng([seed, item]).permutation(n).tolist()
        return [[base[(p + j) % n] for p in range(n)] for j in range(k)]
    return [np.random.default_rng([seed, item, j]).permutation(n).tolist() for j in range(k)]


def prompt_ids(tokenizer, query, shown: Sequence[str], *, format: str | Template = "pointwise",
               score_range: tuple[int, int] = (1, 10), hint: int | None = None) -> list[int]:
    """Token ids of a GRM prompt (`spct.grm.templates.messages`) in the tokenizer's chat template, ready for the
    judgement to follow (the generation prompt added); without a chat template, the bare text."""
    turns = messages(query, shown, format=format, score_range=score_range, hint=hint)
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
    return tokenizer(turns[0]["content"]).input_ids


class GenerativeRewardModel:
    """A GRM on the engine. format: "pointwise" (default), "single" or a `Template`; score_range: inclusive;
    vocab: the tokenizer's byte table (`TokenBytes`) that scores are extracted over."""

    def __init__(self, engine, *, format: str | Template = "pointwise", score_range: tuple[int, int] = (1, 10)):
        self.engine, self.format = engine, format
        self.score_range = (0, 1) if format == "single" else tuple(score_range)
        self.tokenizer = engine.tokenizer
        self.vocab = TokenBytes.from_tokenizer(self.tokenizer)

    @classmethod
    def from_pretrained(cls, name_or_path: str = "smollm2-135m", *, dtype: str = "bfloat16", device: str = "cpu",
                        **kwargs) -> GenerativeRewardModel:
        from spct.engine import Engine

        return cls(Engine.from_pretrained(name_or_path, dtype=dtype, device=device), **kwargs)

    def prompt_ids(self, query, shown: Sequence[str], *, hint: int | None = None) -> list[int]:
        """Token ids of the GRM prompt for responses in the order shown, in the tokenizer's chat template.
        hint: the 1-based position of the best response, named in the prompt (hinted sampling for RFT)."""
        return prompt_ids(self.tokenizer, query, shown, format=self.format, score_range=self.score_range, hint=hint)

    def score(self, query, responses: Sequence[str], **kwargs) -> Judgement:
        """One item; keyword arguments as `score_batch`."""
        return self.score_batch([(query, responses)], **kwargs)[0]

    def score_batch(self, items: Sequence, *, k: int = 1, temperature: float | None = None, seed: int = 0,
                    max_new_tokens: int = 512, shuffle: bool | str | None = None,
                    indices: Sequence[int] | None = None,
                    meta_rm=None, k_meta: int | None = None, force_scores: bool = False, reduce: str = "sum",
                    progress: Callable[[int], object] | None = None) -> list[Judgement]:
        """items: dicts {"query", "responses"} (design.md's item format) or (query, responses) pairs.
        temperature: None = greedy for k = 1, 0.5 for k > 1; shuffle: None = a seeded random order of the responses
        per sample when k > 1; "balanced": rotations of one seeded order, so each response sits in each position
        equally often and an item needs n prompts, not up to k (`orders`); False: the given order; indices: each item's number (default its position) in the seeding and in the vote's
        tie-break, so a job split into batches or resumed draws the same samples and writes the same results;
        meta_rm: a `MetaRewardModel` whose k_meta (default k // 2, at least 1) best-rated valid samples alone are
        voted; force_scores: a sample that ends (or reaches max_new_tokens) without a valid score group gets
        "\nScores: \\boxed{" appended and its group decoded under the score grammar (n integers in range, then
        "}"), continuing the sample in place (`spct.grm.grammar`; it may run past max_new_tokens by the few tokens
        that takes); reduce: "sum" (the method's rule: the sum over the voted samples) or "mean" (that sum divided
        by the samples voted, so rewards compare across k); progress: called with token counts as the engine
        prefills and decodes (`Engine.generate`), forced score groups included. All samples of all items are decoded
        together. An error about one item is an `ItemError` whose index is its position in items."""
        plan = self._plan(items, k=k, temperature=temperature, seed=seed, max_new_tokens=max_new_tokens,
                          shuffle=shuffle, indices=indices, meta_rm=meta_rm, k_meta=k_meta, force_scores=force_scores,
                          reduce=reduce)
        outs = self._generate(plan, progress)
        return plan.finish(outs)

    def submit_batch(self, items: Sequence, *, k: int = 1, temperature: float | None = None, seed: int = 0,
                     max_new_tokens: int = 512, shuffle: bool | str | None = None,
                     indices: Sequence[int] | None = None, meta_rm=None, k_meta: int | None = None,
                     force_scores: bool = False, reduce: str = "sum") -> PendingScores:
        """`score_batch` without waiting: the prompts go to the online engine at once (`Engine.submit`, one
        request per distinct prompt) and a `PendingScores` comes back; its result() is score_batch's list, equal
        to it for the same arguments whatever else the engine runs. Needs the paged runner (the Llama family)."""
        plan = self._plan(items, k=k, temperature=temperature, seed=seed, max_new_tokens=max_new_tokens,
                          shuffle=shuffle, indices=indices, meta_rm=meta_rm, k_meta=k_meta, force_scores=force_scores,
                          reduce=reduce)
        handles = []
        try:
            for p, ids in enumerate(plan.prompts):
                handles.append(self.engine.submit(ids, k=plan.ks[p], seed=plan.seeds[p],
                                                  constraint=None if plan.constraints is None else plan.constraints[p],
                                                  temperature=plan.temperature, max_new_tokens=max_new_tokens))
        except BaseException:
            for h in handles:
                self.engine.cancel(h)
            raise
        return PendingScores(plan, handles, self.engine)

    def _plan(self, items: Sequence, *, k: int, temperature: float | None, seed: int, max_new_tokens: int,
              shuffle, indices, meta_rm, k_meta: int | None, force_scores: bool, reduce: str) -> _Plan:
        """Checks the arguments and builds every prompt of the batch (`score_batch`'s rules)."""
        if k_meta is not None and (meta_rm is None or not isinstance(k_meta, int) or k_meta < 1):
            raise ValueError(f"k_meta must be an int >= 1 used with meta_rm, got {k_meta!r}")
        check_k(k)
        check_reduce(reduce)
        temperature = (0.0 if k == 1 else 0.5) if temperature is None else temperature
        shuffle = k > 1 if shuffle is None else shuffle
        parsed = [_item(it, i) for i, it in enumerate(items)]
        numbers = list(range(len(parsed))) if indices is None else [int(x) for x in indices]
        if len(numbers) != len(parsed):
            raise ValueError(f"indices must have one entry per item ({len(parsed)}), got {len(numbers)}")
        all_orders = [orders(len(r), k, seed, numbers[i], shuffle) for i, (_, r) in enumerate(parsed)]
        prompts, ks, seeds, where = self._prompts(parsed, all_orders, numbers, seed, max_new_tokens)
        constraints = None
        if force_scores:
            n_of = {p: len(parsed[i][1]) for i, w in enumerate(where) for p, _ in w}
            constraints = [self._force_scores(n_of[p]) for p in range(len(prompts))]
        return _Plan(self, parsed, all_orders, numbers, prompts, ks, seeds, where, constraints, k=k, seed=seed,
                     temperature=temperature, max_new_tokens=max_new_tokens, meta_rm=meta_rm, k_meta=k_meta,
                     reduce=reduce)

    def _generate(self, plan: _Plan, progress) -> list:
        """The engine's samples of every prompt of the plan. The prompts were checked against the context
        (`_prompts`), so no engine error is about one item."""
        if not plan.prompts:
            return []
        return self.engine.generate(plan.prompts, k=plan.ks, seed=plan.seeds, constraints=plan.constraints,
                                    progress=progress, temperature=plan.temperature,
                                    max_new_tokens=plan.max_new_tokens)

    def _prompts(self, parsed, all_orders, numbers: list[int], seed: int, max_new_tokens: int):
        """One prompt per distinct response order of an item: (prompt ids, samples per prompt, seed per prompt,
        where[i][j] = (prompt, sample within it) of item i's sample j)."""
        prompts, ks, seeds, where = [], [], [], []
        for i, (query, responses) in enumerate(parsed):
            by_order: dict[tuple[int, ...], int] = {}
            where.append([])
            for order in all_orders[i]:
                key = tuple(order)
                if key not in by_order:
                    ids = self.prompt_ids(query, [responses[o] for o in order])
                    if len(ids) + max_new_tokens > self.engine.context:
                        raise ItemError(i, f"the prompt has {len(ids)} tokens; with max_new_tokens = "
                                           f"{max_new_tokens} it needs {len(ids) + max_new_tokens}, but the model's "
                                           f"context is {self.engine.context} tokens")
                    by_order[key] = len(prompts)
                    prompts.append(ids)
                    ks.append(0)
                    seeds.append(int(np.random.default_rng([seed, numbers[i], len(by_order)]).integers(2**63)))
                p = by_order[key]
                where[-1].append((p, ks[p]))
                ks[p] += 1
        return prompts, ks, seeds, where

    def _force_scores(self, n: int) -> ForceScores:
        """The forced-scores constraint of a prompt judging n responses (integer scores in the score range)."""
        lo, hi = int(math.ceil(self.score_range[0])), int(math.floor(self.score_range[1]))
        prefix = self.tokenizer(PREFIX, add_special_tokens=False).input_ids
        return ForceScores(self.vocab, prefix, self._eos_ids(), n, lo, hi, self.score_range)

    def _judge(self, parsed, samples, all_orders, *, k: int, seed: int, indices: Sequence[int] | None = None,
               meta_rm=None, k_meta: int | None = None) -> list[Judgement]:
        """Extract every sample's scores from its token ids and vote per item (ties keyed by indices)."""
        rows = [s for item in samples for s in item]
        if not rows:
            return []
        counts = [len(r) for _, r in parsed for _ in range(k)]
        ex = extract([s.token_ids for s in rows], self.engine.eos_token_ids, self.vocab, counts, self.score_range)
        scores, valid = ex.scores.reshape(len(parsed), k, -1), ex.valid.reshape(len(parsed), k)
        meta = None
        if meta_rm is not None:  # rate each judgement (principles + critique: the text before its score group)
            meta = torch.stack([meta_rm.score(query, [[responses[o] for o in order] for order in all_orders[i]],
                                              [judgement_text(ex, i * k + j) for j in range(k)])
                                for i, (query, responses) in enumerate(parsed)])
        v = cast_votes(scores, valid, [len(r) for _, r in parsed], seed=seed, indices=indices, orders=all_orders,
                       meta_scores=meta, k_meta=k_meta)
        out = []
        for i, (_, responses) in enumerate(parsed):
            judged = [self._sample(ex, i * k + j, all_orders[i][j], rows[i * k + j],
                                   None if meta is None else float(meta[i, j])) for j in range(k)]
            out.append(Judgement(v.rewards[i, : len(responses)].tolist(), int(v.best[i]), int(v.num_used[i]),
                                 judged))
        return out

    @staticmethod
    def _sample(ex, row: int, order: list[int], sample, meta_score: float | None) -> SampleJudgement:
        b, e = (int(x) for x in ex.critique_span[row])
        critique = ex.text_bytes(row)[b:e].decode("utf-8", "replace") if b >= 0 else ""
        valid = bool(ex.valid[row])
        return SampleJudgement(ex.texts[row], to_original(ex.scores[row], order, valid), valid, ex.principles[row],
                               critique, order, meta_score, len(sample.token_ids), judgement_text(ex, row))

    def _eos_ids(self) -> list[int]:
        """The engine's EOS ids, the tokenizer's own first (the one a forced group ends with)."""
        eos = list(self.engine.eos_token_ids)
        own = self.tokenizer.eos_token_id
        return ([own] if own in eos else []) + [t for t in eos if t != own]



@dataclass(eq=False)
class _Plan:
    """One batch's prompts and how its samples map back to items (`GenerativeRewardModel._plan`)."""

    grm: GenerativeRewardModel
    parsed: list
    all_orders: list
    numbers: list[int]
    prompts: list[list[int]]
    ks: list[int]
    seeds: list[int]
    where: list  # where[i][j] = (prompt, sample within it) of item i's sample j
    constraints: list | None
    k: int
    seed: int
    temperature: float
    max_new_tokens: int
    meta_rm: object
    k_meta: int | None
    reduce: str

    def finish(self, outs: list) -> list[Judgement]:
        """outs[p]: the samples of prompt p -> the judgements, one per item."""
        samples = [[outs[p][s] for p, s in w] for w in self.where]
        judged = self.grm._judge(self.parsed, samples, self.all_orders, k=self.k, seed=self.seed,
                                 indices=self.numbers, meta_rm=self.meta_rm, k_meta=self.k_meta)
        return judged if self.reduce == "sum" else [_mean(j) for j in judged]


class PendingScores:
    """A submitted batch (`GenerativeRewardModel.submit_batch`).

    result(timeout) blocks and returns the judgements; `handles` are the engine's requests (one per prompt; await
    them in asyncio, then call finish(outs) with their samples, off the event loop when a Meta RM rates them);
    cancel() stops them all. prompt_tokens: the prompts' tokens (each prefilled once)."""

    def __init__(self, plan: _Plan, handles: list, engine):
        self.plan, self.handles, self.engine = plan, handles, engine
        self.prompt_tokens = sum(len(p) for p in plan.prompts)

    def result(self, timeout: float | None = None) -> list[Judgement]:
        try:
            outs = [h.result(timeout) for h in self.handles]
        except BaseException:
            self.cancel()
            raise
        return self.finish(outs)

    def finish(self, outs: list) -> list[Judgement]:
        return self.plan.finish(outs)

    def cancel(self) -> None:
        for h in self.handles:
            if not h.done():
                self.engine.cancel(h)
