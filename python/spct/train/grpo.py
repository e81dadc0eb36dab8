"""Stage 2, rule-based online RL: GRPO on the GRM's own judgements (docs/method.md section 4).

    spct train rl --config rl.toml             # or spct.train.grpo.run(RLConfig(...))

Each step takes batch_size / group_size labelled items (seeded epochs). For each, the policy's current weights
(handed to `spct.Engine`, which prefills the item's prompt once for the whole group) write group_size judgements
of the item with the responses in one seeded order. The reward is +1 when a judgement is correct by the rule
(`spct.grm.judge`; scores extracted natively from the token ids, invalid = incorrect) and -1 otherwise, with no
format reward. Advantages are normalized within each group; the loss (`spct.train.losses.grpo_loss`) is the
clipped policy-ratio surrogate minus beta times the k3 KL to the reference model (the starting model unless
ref_model is set), averaged per token. One optimizer step per batch of rollouts, so the sampling policy is the
policy of the step (ratio 1 in value, its gradient that of the log-probabilities), as TRL with num_iterations=1.

Every rank generates the step's whole batch (the same seeded rollouts) and trains on its share of micro-batches.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from spct.grm.judge import extract, is_correct, to_original
from spct.grm.model import orders, prompt_ids
from spct.ops.token_bytes import TokenBytes
from spct.train import loop
from spct.train.config import RLConfig, save_config
from spct.train.data import read_items
from spct.train.losses import group_advantages, grpo_loss, token_logprobs
from spct.train.policy import load_policy, save_policy, window_logits

__all__ = ["Rollouts", "rollouts", "run"]


class Rollouts:
    """One step's groups: examples (token ids, first judgement index, advantage, reward) and their counts."""

    def __init__(self, examples: list[tuple[list[int], int, float, float]], valid: int, correct: int):
        self.examples, self.valid, self.correct = examples, valid, correct


def rollouts(engine, vocab: TokenBytes, items: list[dict], numbers: list[int], cfg: RLConfig, step: int,
             score_range=(1, 10)) -> Rollouts:
    """group_size judgements per item (numbers: the items' indices, for seeding), rewarded by the rule."""
    g = cfg.group_size
    shown_orders = [orders(len(it["responses"]), 1, cfg.seed + step, n, True)[0] for it, n in zip(items, numbers)]
    prompts = [prompt_ids(engine.tokenizer, it["query"], [it["responses"][o] for o in order])
               for it, order in zip(items, shown_orders)]
    seeds = [int(np.random.default_rng([cfg.seed, step, n]).integers(2**63)) for n in numbers]
    outs = engine.generate(prompts, k=g, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, seed=seeds)
    rows = [s for group in outs for s in group]
    ex = extract([s.token_ids for s in rows], engine.eos_token_ids, vocab,
                 [len(it["responses"]) for it in items for _ in range(g)], score_range)
    rewards = []
    for r in range(len(rows)):
        it = items[r // g]
        scores = to_original(ex.scores[r], shown_orders[r // g], bool(ex.valid[r]))
        rewards.append(1.0 if is_correct(scores, it.get("best"), it.get("label")) else -1.0)
    advantages = group_advantages(torch.tensor(rewards), g).tolist()
    examples = [(prompts[r // g] + rows[r].token_ids, len(prompts[r // g]), advantages[r], rewards[r])
                for r in range(len(rows))]
    return Rollouts(examples, int(ex.valid.sum()), sum(x > 0 for x in rewards))


def run(cfg: RLConfig, *, resume: bool = False, progress: bool = True) -> dict:
    """Trains the policy from cfg.model; returns the last step's rollout counts."""
    from spct.engine import Engine

    d = loop.init_distributed()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if d.main:
        save_config(cfg, out / "config.json")
    items = read_items(cfg.data)
    if any(len(it["responses"]) < 2 for it in items):
        raise ValueError("RL here takes items with n >= 2 responses and a 'best' label")
    torch.manual_seed(cfg.seed)
    policy, tokenizer = load_policy(cfg, d.device)
    ref = None
    if cfg.beta > 0:
        ref, _ = load_policy(cfg, d.device, cfg.ref_model or cfg.model)
        ref.eval().requires_grad_(False)
    engine = Engine.from_pretrained(cfg.model, dtype=cfg.dtype, device=d.device)
    vocab = TokenBytes.from_tokenizer(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    per_step = cfg.batch_size // cfg.group_size
    last: dict = {}

    def make_batch(step: int):
        numbers = loop.batch_indices(len(items), step, per_step, cfg.seed)
        engine.load_weights(policy.state_dict())  # the policy as it is before this step's update
        r = rollouts(engine, vocab, [items[n] for n in numbers], numbers, cfg, step)
        last.update(step=step + 1, valid_rate=r.valid / len(r.examples), accuracy=r.correct / len(r.examples))
        return r.examples

    def micro_loss(m, batch):
        examples = [(x[0], x[1]) for x in batch]
        logits, ids, completion = window_logits(m, examples, pad, d.device)
        lp = token_logprobs(logits, ids)
        ref_lp = None
        if ref is not None:
            with torch.no_grad():
                ref_lp = token_logprobs(window_logits(ref, examples, pad, d.device)[0], ids)
        advantages = torch.tensor([x[2] for x in batch], dtype=lp.dtype, device=lp.device)
        loss, metrics = grpo_loss(lp, lp.detach(), ref_lp, advantages, completion[:, 1:], clip_eps=cfg.clip_eps,
                                  beta=cfg.beta, aggregation=cfg.aggregation)
        metrics = {k: v for k, v in metrics.items() if not math.isnan(v)}
        return loss, {**metrics, "reward": sum(x[3] for x in batch) / len(batch)}

    loop.train(cfg, policy, make_batch, micro_loss, d=d, resume=resume, progress=progress)
    if d.main:
        save_policy(policy, tokenizer, out / "model")
    loop.barrier(d)
    return last
