"""Accuracy of a GRM on a benchmark for several k: an item is right only if its best response's reward is strictly
above every other response's (a tie, or no valid sample, is wrong). Results by top-level category and overall."""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import torch

from spct._atomic import append_lines, atomic_file, complete_lines, write_json
from spct.eval.datasets import EvalItem
from spct.grm.judge import cast_votes, check_k, is_correct

__all__ = ["as_record", "correct", "evaluate", "plot", "revote", "table", "wilson", "write_json"]

correct = is_correct  # the rule of `spct.grm.judge`, under the name the tests import: correct(rewards, best)


def _tally(tally: SimpleNamespace, chunk: list, judged: list, k: int, kpass: int, seed: int, meta_rm, k_meta,
           numbers: Sequence[int]) -> None:
    """Count one batch's right answers at k (voting the first k of the pass's kpass samples) by kind and category,
    and its valid samples."""
    votes = {"k": [j.rewards for j in judged] if k == kpass else
             revote(judged, k, seed, meta_rm, k_meta, indices=numbers)}
    if meta_rm is not None:
        votes["k_plain"] = revote(judged, k, seed, indices=numbers)
    for kind, rewards in votes.items():
        for it, r in zip(chunk, rewards):
            ok = is_correct(r, it.best)
            for name in (it.category, "overall"):
                tally.right[kind, k][name] += ok
                tally.count[kind, k, name] += 1
    tally.valid[k] += sum(s.valid for j in judged for s in j.samples[:k])


def wilson(right: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The 95% Wilson score interval of an accuracy of right / n (valid near 0 and 1, unlike the normal one)."""
    if n <= 0:
        return (math.nan, math.nan)
    p = right / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def evaluate(grm, items: list[EvalItem], ks: list[int], *, seed: int = 0, max_new_tokens: int = 512,
             batch_size: int = 16, meta_rm=None, k_meta: int | None = None, progress=None, token_progress=None,
             force_scores: bool = False, shuffle: bool | str | None = None, cache_dir: str | os.PathLike | None = None,
             settings: dict | None = None, judge=None) -> dict:
    """{"k": {k: {"overall": acc, "overall_ci95": (lo, hi), "categories": {name: acc}, "valid_rate": ...,
    "items": n}}}; with meta_rm, "k" holds the Meta-RM guided votes and "k_plain" the plain votes over the same
    samples.

    k = 1 is one greedy sample. The sampled ks share their samples: each item is judged once with the largest k and
    every smaller k votes over the first k of those samples, which are the samples a run with that k alone draws
    (orders and seeds depend on the sample's number only). With meta_rm, k_meta defaults to k // 2 for each k.
    shuffle: the sampled passes' response orders, as `score_batch` (None: random, "balanced": rotations).
    progress(items) is called after each batch of each pass (batches resumed from the cache included);
    token_progress(tokens) as the engine prefills and decodes (`GenerativeRewardModel.score_batch`'s progress).

    judge(kpass, batches, params) judges elsewhere (`spct eval --ray`): batches are (first item's number, items),
    params score_batch's keyword arguments; it yields (item numbers, records) as they are judged, in any order,
    records as `as_record` makes them. Then grm is not used, and meta_rm only says whether voting is guided.

    cache_dir: each batch's sample scores are appended there (one JSONL file per pass) as soon as they are judged,
    and a rerun with the same settings reuses them, so an interrupted evaluation resumes where it stopped. settings
    (what else decides the samples: model, data, dtype) is stored beside them; a cache made with other settings is
    an error naming the ones that differ."""
    if not ks:
        raise ValueError("ks must hold at least one k")
    ks = sorted({check_k(k) for k in ks})
    sampled = [k for k in ks if k > 1]
    passes = ([1] if 1 in ks else []) + ([max(sampled)] if sampled else [])
    kinds = ["k"] + (["k_plain"] if meta_rm is not None else [])
    tally = SimpleNamespace(right={(kind, k): defaultdict(int) for kind in kinds for k in ks},
                            count=defaultdict(int), valid=defaultdict(int))
    settings = {**(settings or {}), "seed": seed, "max_new_tokens": max_new_tokens, "force_scores": force_scores,
                "k_meta": k_meta, "guided": meta_rm is not None, **({"shuffle": shuffle} if shuffle else {}),
                "items": [it.id for it in items]}
    cache = None if cache_dir is None else _SampleCache(Path(cache_dir), settings)
    if judge is None:
        judge = _local_judge(grm, meta_rm, token_progress)
    batches = [(start, items[start: start + batch_size]) for start in range(0, len(items), batch_size)]
    for kpass in passes:
        params = {"k": kpass, "seed": seed, "max_new_tokens": max_new_tokens, "k_meta": k_meta,
                  "force_scores": force_scores, "shuffle": shuffle if kpass > 1 else None}
        done = _judge_pass(judge, kpass, batches, params, cache, progress)
        for start, chunk in batches:
            numbers = range(start, start + len(chunk))  # the items' numbers: their seeds and tie-breaks
            for k in ([1] if kpass == 1 else sampled):
                _tally(tally, chunk, [done[n] for n in numbers], k, kpass, seed, meta_rm, k_meta, numbers)
    right, count, valid = tally.right, tally.count, tally.valid
    return {kind: {str(k): _accuracy(right[kind, k], count, (kind, k), valid[k] / max(1, k * len(items)),
                                     len(items)) for k in ks} for kind in kinds}


def _local_judge(grm, meta_rm, token_progress):
    """The judge of `evaluate` in this process: the batches in order, on grm."""
    def judge(kpass: int, batches: list, params: dict):
        for start, chunk in batches:
            scored = grm.score_batch([(it.query, it.responses) for it in chunk],
                                     indices=range(start, start + len(chunk)), meta_rm=meta_rm,
                                     progress=token_progress, **params)
            yield range(start, start + len(chunk)), [_record(j) for j in scored]
    return judge


def _judge_pass(judge, kpass: int, batches: list, params: dict, cache, progress) -> dict:
    """{item number: record} of one pass: from the cache where it has the batch, else judged (and cached)."""
    done = {} if cache is None else cache.load(kpass)
    todo = []
    for start, chunk in batches:
        if all(n in done for n in range(start, start + len(chunk))):
            if progress is not None:
                progress(len(chunk))
        else:
            todo.append((start, chunk))
    for numbers, judged in judge(kpass, todo, params):
        if cache is not None:
            cache.append(kpass, numbers, judged)
        done.update(zip(numbers, judged))
        if progress is not None:
            progress(len(judged))
    return done


def _accuracy(tally: dict, count: dict, key: tuple, valid_rate: float, num_items: int) -> dict:
    """One (kind, k)'s results from its right answers per category (and "overall") and the counts."""
    n = count[(*key, "overall")]
    cats = {c: tally[c] / count[(*key, c)] for c in sorted(tally) if c != "overall"}
    return {"overall": tally["overall"] / max(1, n), "overall_ci95": wilson(tally["overall"], n),
            "categories": cats, "valid_rate": valid_rate, "items": num_items}


def _record(judgement) -> SimpleNamespace:
    """What voting reads from a Judgement: rewards, and per sample its scores, validity and meta score."""
    return SimpleNamespace(rewards=list(judgement.rewards), samples=[
        SimpleNamespace(scores=list(s.scores), valid=bool(s.valid), meta_score=s.meta_score)
        for s in judgement.samples])


def as_record(row: dict) -> SimpleNamespace:
    """A judged item as voting reads it, from {"rewards", "samples": [{"scores", "valid", "meta_score"}]}."""
    return SimpleNamespace(rewards=row["rewards"], samples=[SimpleNamespace(**s) for s in row["samples"]])


class _SampleCache:
    """Per-pass JSONL files of judged batches under one directory, with the settings that produced them."""

    def __init__(self, root: Path, settings: dict):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        stored = root / "settings.json"
        if stored.exists():
            old = json.loads(stored.read_text(encoding="utf-8"))
            differ = sorted(key for key in old.keys() | settings.keys() if old.get(key) != settings.get(key))
            if differ:
                raise ValueError(f"{root} holds samples made with other settings ({', '.join(differ)}); "
                                 f"remove it or evaluate into another --out directory")
        else:
            write_json(stored, settings)

    def load(self, kpass: int) -> dict[int, SimpleNamespace]:
        out = {}
        for line in complete_lines(self.root / f"k{kpass}.jsonl"):
            row = json.loads(line)
            out[row["index"]] = as_record(row)
        return out

    def append(self, kpass: int, numbers: Sequence[int], judged: list[SimpleNamespace]) -> None:
        append_lines(self.root / f"k{kpass}.jsonl", [json.dumps(
            {"index": n, "rewards": j.rewards, "samples": [vars(s) for s in j.samples]})
            for n, j in zip(numbers, judged)])


def revote(judged, k: int, seed: int, meta_rm=None, k_meta: int | None = None,
           indices: Sequence[int] | None = None) -> list[list[float]]:
    """Rewards from the first k samples of each judgement, voted as score_batch votes them. indices: the items'
    numbers, as score_batch was given them (default 0..B-1): exact ties are broken by the item's number."""
    n = max(len(j.rewards) for j in judged)
    scores = torch.full((len(judged), k, n), math.nan)
    for b, j in enumerate(judged):
        for s, sample in enumerate(j.samples[:k]):
            scores[b, s, : len(sample.scores)] = torch.tensor(sample.scores)
    valid = torch.tensor([[s.valid for s in j.samples[:k]] for j in judged])
    meta = None
    if meta_rm is not None:
        meta = torch.tensor([[s.meta_score for s in j.samples[:k]] for j in judged], dtype=torch.float32)
    v = cast_votes(scores, valid, [len(j.rewards) for j in judged], seed=seed, indices=indices, meta_scores=meta,
                   k_meta=k_meta)
    return [v.rewards[b, : len(j.rewards)].tolist() for b, j in enumerate(judged)]


def table(results: dict) -> str:
    ks = list(results["k"])
    cats = sorted({c for r in results["k"].values() for c in r["categories"]})
    rows = [["k", *ks]]
    for c in [*cats, "overall", "valid samples"]:
        get = {"overall": lambda r: r["overall"], "valid samples": lambda r: r["valid_rate"]}.get(
            c, lambda r, c=c: r["categories"].get(c, math.nan))
        rows.append([c, *(f"{100 * get(results['k'][k]):.1f}%" for k in ks)])
        if c == "overall" and all("overall_ci95" in results["k"][k] for k in ks):
            ci = [results["k"][k]["overall_ci95"] for k in ks]
            rows.append(["  95% interval", *(f"{100 * lo:.1f}-{100 * hi:.1f}%" for lo, hi in ci)])
    width = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, width)) for r in rows)


def plot(results: dict, path: Path, title: str) -> None:
    """Accuracy vs k, overall and per category (PNG)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("the plot needs matplotlib: pip install 'spct[eval]'") from None
    ks = [int(k) for k in results["k"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    overall = [100 * results["k"][str(k)]["overall"] for k in ks]
    ax.plot(ks, overall, marker="o", linewidth=2, label="overall")
    if all("overall_ci95" in results["k"][str(k)] for k in ks):  # the 95% intervals as a band
        ci = [results["k"][str(k)]["overall_ci95"] for k in ks]
        ax.fill_between(ks, [100 * lo for lo, _ in ci], [100 * hi for _, hi in ci], alpha=0.15,
                        label="overall, 95% interval")
    for c in sorted({c for r in results["k"].values() for c in r["categories"]}):
        ax.plot(ks, [100 * results["k"][str(k)]["categories"].get(c, math.nan) for k in ks], marker=".",
                linestyle="--", label=c)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("k (samples voted)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
