"""SPCT at small scale on this machine: teach the default model to judge which of two short answers to a one-step
arithmetic word problem is right, then scale it with votes.

    python examples/demo_arithmetic.py --out runs/demo [--train 400] [--test 200] [--rft-steps 150] [--rl-steps 20]

1. Items: `spct.train.data.arithmetic_pairs` (generated, seeded): the first --train for training, the next --test
   held out. 2. The untrained model judges the held-out items (greedy; invalid counts as wrong). 3. Rejective
   fine-tuning on teacher judgements (the cold start: a 135M model writes no score groups on its own).
   4. GRPO on the model's own judgements. 5. A Meta RM head on its labelled judgements. 6. The trained GRM on the
   held-out items: voting@1 (greedy), @4, @16 ("k_plain") and Meta-RM voting (k_meta = k // 2, "k") over the same
   samples, each with its 95% interval.
Every stage resumes (rerun the command); the results go to OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import spct
from spct.eval.datasets import EvalItem
from spct.eval.run import evaluate
from spct.train import grpo, meta_rm, rft
from spct.train.config import MetaRMConfig, RFTConfig, RLConfig
from spct.train.data import arithmetic_pairs, write_items
from spct.train.policy import write_json


def held_out_accuracy(model: str, items: list[dict], ks: list[int], max_new_tokens: int, meta=None) -> dict:
    """{"k": ...} (with meta: the Meta-RM guided votes, and "k_plain" the plain ones over the same samples)."""
    grm = spct.GenerativeRewardModel.from_pretrained(model)
    eval_items = [EvalItem(it["id"], it["query"], it["responses"], it["best"], "arithmetic") for it in items]
    return evaluate(grm, eval_items, ks, max_new_tokens=max_new_tokens, meta_rm=meta)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--train", type=int, default=400)
    p.add_argument("--test", type=int, default=200)
    p.add_argument("--rft-steps", type=int, default=150)
    p.add_argument("--rl-steps", type=int, default=20)
    p.add_argument("--max-new-tokens", type=int, default=160)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    items = arithmetic_pairs(args.train + args.test, seed=args.seed)
    train, test = items[: args.train], items[args.train:]
    write_items(out / "train.jsonl", train)
    results: dict = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
    clock = results.setdefault("seconds", {})

    def stage(name, fn):
        if name not in results:
            began = time.perf_counter()
            results[name] = fn()
            clock[name] = round(time.perf_counter() - began, 1)
            write_json(out / "results.json", results)
        return results[name]

    common = dict(data=str(out / "train.jsonl"), seed=args.seed, max_new_tokens=args.max_new_tokens,
                  batch_size=8, micro_batch_size=4, log_every=5)
    stage("untrained", lambda: held_out_accuracy("smollm2-135m", test, [1], args.max_new_tokens))
    stage("rft", lambda: rft.run(RFTConfig(output_dir=str(out / "rft"), sampler="teacher", hinted=False,
                                           max_steps=args.rft_steps, save_every=50, learning_rate=5e-5, **common),
                                 resume=True))
    rft_model = str(out / "rft" / "model")
    stage("rl", lambda: grpo.run(RLConfig(output_dir=str(out / "rl"), model=rft_model, group_size=4,
                                          max_steps=args.rl_steps, save_every=5, learning_rate=1e-6, **common),
                                 resume=True))
    grm_model = str(out / "rl" / "model")
    stage("meta_rm", lambda: meta_rm.run(MetaRMConfig(output_dir=str(out / "meta"), model=grm_model,
                                                      samples_per_item=3, max_steps=100, save_every=50,
                                                      **{**common, "batch_size": 32, "micro_batch_size": 32}),
                                         resume=True))
    meta = spct.MetaRewardModel.from_pretrained(out / "meta" / "meta_rm")
    stage("trained", lambda: held_out_accuracy(grm_model, test, [1, 4, 16], args.max_new_tokens, meta=meta))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
