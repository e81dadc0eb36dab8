"""Stage 1, rejective fine-tuning (docs/method.md section 4).

    spct train rft --config rft.toml            # or spct.train.rft.run(RFTConfig(...))

1. The RFT set, `output_dir/rft_set.jsonl` (+ `rft_stats.json`, every outcome counted): for each labelled item,
   `n_rft` judgements from the sampler, each shown the responses in its own seeded order. A judgement that is
   incorrect by the rule (`spct.grm.judge.is_correct`; invalid counts as incorrect) is rejected; an item whose `n_rft`
   judgements are all correct is dropped as too easy. With `hinted`, one more judgement per item with the best
   response named in the prompt, kept if correct (no too-easy filter). sampler "policy" samples the model being
   trained (the method); "teacher" takes one `teacher_judgement` per item, written from the gold solution (a cold
   start for a model too small to judge at all: a teacher is always right, so the too-easy filter is skipped).
2. Supervised fine-tuning on the kept trajectories: the GRM prompt in the chat template, then the judgement and
   EOS; the loss on the judgement tokens only (`spct.train.losses.sft_loss`). Full fine-tuning, or LoRA (peft).

The finished model is written to `output_dir/model` (a Hugging Face checkpoint the engine and the GRM load).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from spct._atomic import write_json, write_jsonl
from spct.grm.judge import extract, is_correct, to_original
from spct.grm.model import orders, prompt_ids
from spct.train import loop
from spct.train.config import RFTConfig, save_config
from spct.train.data import read_items, teacher_judgement
from spct.train.losses import sft_loss
from spct.train.policy import load_policy, save_policy, window_logits

__all__ = ["build_rft_set", "run", "sft_examples"]

CHUNK = 64  # items sampled together: 64 x k rows keep the decode batch large (samples do not depend on it)


def _policy_samples(grm, items: list[dict], cfg: RFTConfig, stats: Counter) -> list[dict]:
    kept = []
    for start in range(0, len(items), CHUNK):
        chunk = items[start: start + CHUNK]
        judged = grm.score_batch([(it["query"], it["responses"]) for it in chunk], k=cfg.n_rft,
                                 temperature=cfg.temperature, seed=cfg.seed, max_new_tokens=cfg.max_new_tokens,
                                 shuffle=True, indices=range(start, start + len(chunk)))
        for it, j in zip(chunk, judged):
            right = [s for s in j.samples if is_correct(s.scores, it.get("best"), it.get("label"))]
            stats["sampled"] += len(j.samples)
            stats["invalid"] += sum(not s.valid for s in j.samples)
            stats["wrong"] += len(j.samples) - len(right)
            if len(right) == len(j.samples):
                stats["too_easy_items"] += 1
                continue
            stats["kept"] += len(right)
            kept += [_trajectory(it, s.order, s.text, "policy") for s in right]
    return kept


def _hinted_samples(grm, items: list[dict], cfg: RFTConfig, stats: Counter) -> list[dict]:
    """One judgement per item with the best response named; its order drawn from a seed stream of its own."""
    shown_orders = [orders(len(it["responses"]), 1, cfg.seed + 1, i, True)[0] for i, it in enumerate(items)]
    prompts = [prompt_ids(grm.tokenizer, it["query"], [it["responses"][o] for o in order], format=grm.format,
                          score_range=grm.score_range, hint=order.index(it["best"]) + 1)
               for it, order in zip(items, shown_orders)]
    seeds = [int(np.random.default_rng([cfg.seed, i, 7]).integers(2**63)) for i in range(len(items))]
    outs = grm.engine.generate(prompts, k=1, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                               seed=seeds)
    ex = extract([o[0].token_ids for o in outs], grm.engine.eos_token_ids, grm.vocab,
                 [len(it["responses"]) for it in items], grm.score_range)
    kept = []
    for i, (it, order) in enumerate(zip(items, shown_orders)):
        scores = to_original(ex.scores[i], order, bool(ex.valid[i]))
        stats["hinted_sampled"] += 1
        if is_correct(scores, it.get("best"), it.get("label")):
            stats["hinted_kept"] += 1
            kept.append(_trajectory(it, order, outs[i][0].text, "hinted"))
        else:
            stats["hinted_wrong"] += 1
    return kept


def _teacher_samples(items: list[dict], cfg: RFTConfig, stats: Counter) -> list[dict]:
    kept = []
    for it in items:
        text = teacher_judgement(it, seed=cfg.seed, brief=cfg.teacher_brief)
        stats["sampled"] += 1
        kept.append(_trajectory(it, list(range(len(it["responses"]))), text, "teacher"))
        stats["kept"] += 1
    return kept


def _trajectory(item: dict, order: list[int], judgement: str, source: str) -> dict:
    return {"id": item["id"], "query": item["query"], "shown": [item["responses"][o] for o in order],
            "order": list(order), "judgement": judgement, "source": source}


def build_rft_set(items: list[dict], cfg: RFTConfig, grm=None) -> tuple[list[dict], dict]:
    """(kept trajectories, counts). grm: the GenerativeRewardModel to sample (sampler "policy", and the hinted
    samples); built from cfg.model when None."""
    if any(len(it["responses"]) < 2 for it in items):
        bad = next(it["id"] for it in items if len(it["responses"]) < 2)
        raise ValueError(f"item {bad!r} has one response: RFT here takes items with n >= 2 and a 'best' label")
    keys = ["sampled", "kept"] + (["invalid", "wrong", "too_easy_items"] if cfg.sampler == "policy" else [])
    keys += ["hinted_sampled", "hinted_kept", "hinted_wrong"] if cfg.hinted else []
    stats: Counter = Counter(items=len(items), **dict.fromkeys(keys, 0))  # every outcome, zeros included
    if grm is None and (cfg.sampler == "policy" or cfg.hinted):
        from spct.grm import GenerativeRewardModel

        grm = GenerativeRewardModel.from_pretrained(cfg.model, dtype="bfloat16")
    kept = _policy_samples(grm, items, cfg, stats) if cfg.sampler == "policy" else _teacher_samples(items, cfg, stats)
    if cfg.hinted:
        kept += _hinted_samples(grm, items, cfg, stats)
    return kept, dict(stats)


def sft_examples(tokenizer, trajectories: list[dict], context: int) -> tuple[list[tuple[list[int], int]], int]:
    """((token ids, index of the first judgement token) per trajectory, number skipped as longer than context)."""
    out, skipped = [], 0
    eos = tokenizer.eos_token_id
    for t in trajectories:
        prompt = prompt_ids(tokenizer, t["query"], t["shown"])
        ids = prompt + tokenizer(t["judgement"], add_special_tokens=False).input_ids + [eos]
        if len(ids) > context:
            skipped += 1
            continue
        out.append((ids, len(prompt)))
    return out, skipped


def run(cfg: RFTConfig, *, resume: bool = False, progress: bool = True) -> dict:
    """Builds (or, resuming, reads back) the RFT set, then fine-tunes; returns the RFT statistics."""
    d = loop.init_distributed()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    set_path, stats_path = out / "rft_set.jsonl", out / "rft_stats.json"
    if d.main:
        save_config(cfg, out / "config.json")
        if not (resume and set_path.exists() and stats_path.exists()):
            kept, stats = build_rft_set(read_items(cfg.data), cfg)
            write_jsonl(set_path, kept)
            write_json(stats_path, stats)
    loop.barrier(d)
    kept = [json.loads(line) for line in set_path.read_text().splitlines()]
    stats = json.loads(stats_path.read_text())
    if not kept:
        raise ValueError(f"the RFT set is empty (statistics: {stats}): no judgement was kept to fine-tune on")
    torch.manual_seed(cfg.seed)
    model, tokenizer = load_policy(cfg, d.device)
    examples, stats["too_long"] = sft_examples(tokenizer, kept, model.config.max_position_embeddings)
    if d.main:
        write_json(stats_path, stats)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def make_batch(step: int):
        return [examples[i] for i in loop.batch_indices(len(examples), step, cfg.batch_size, cfg.seed)]

    def micro_loss(m, batch):
        logits, ids, completion = window_logits(m, batch, pad, d.device)
        return sft_loss(logits, ids, completion), {"tokens": float(completion[:, 1:].sum())}

    loop.train(cfg, model, make_batch, micro_loss, d=d, resume=resume, progress=progress)
    if d.main:
        save_policy(model, tokenizer, out / "model", lora=cfg.lora)
    loop.barrier(d)
    return stats
