"""SPCT at small scale on this machine: teach the default model to judge which of two short answers to a one-step
arithmetic word problem is right, then scale it with votes.

    python examples/demo_arithmetic.py --out runs/demo

1. Items: `spct.train.data.arithmetic_pairs` (generated, seeded; operands up to --max-operand): the first --train
   for training, the next --test held out.
2. The untrained model judges the held-out items (greedy; a judgement without a valid score group counts as wrong),
   and again with forced score groups (`force_scores`): its judging ability apart from the output format.
3. Cold start: supervised fine-tuning on brief teacher judgements written from each item's solution
   (`RFTConfig(sampler="teacher", teacher_brief=True)`): a 135M model writes no score groups on its own.
4. Rejective fine-tuning on the model's own samples (the method): N_RFT = 3 samples per item plus one hinted,
   incorrect ones rejected, items it always gets right dropped as too easy; then fine-tuning on the kept ones.
5. GRPO on the model's own judgements, reward +1 / -1 by the correctness rule.
6. A Meta RM head on the trained GRM's labelled judgements of the first --meta-items training items.
7. The trained GRM on the held-out items: voting@1 (greedy), @4, @16 and Meta-RM voting@16 (k_meta = 8) over the same
   samples, each with its 95% interval; then voting@4 and @16 with balanced response orders (rotations of one
   seeded order, `score_batch(shuffle="balanced")`) instead of random ones.

Training runs in bfloat16 (about 2.2x fp32 on an AVX-512 BF16 CPU) at learning rates large enough for bf16 weights.
Every stage resumes (rerun the command); the results go to OUT/results.json, the voting curve to OUT/voting.png,
and the README's table is printed at the end. The defaults ran in about 40 minutes on a 2-core AVX-512 CPU
(150 held-out items: 71% greedy, 77% Meta-RM voting@16; README, Training).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import spct
from spct._atomic import write_json
from spct.eval.datasets import EvalItem
from spct.eval.run import evaluate, plot
from spct.train import grpo, meta_rm, rft
from spct.train.config import MetaRMConfig, RFTConfig, RLConfig
from spct.train.data import arithmetic_pairs, write_items


def held_out(model: str, items: list[dict], ks: list[int], max_new_tokens: int, out: Path, meta=None,
             force_scores: bool = False, shuffle: str | None = None) -> dict:
    """{"k": ...} accuracies (with meta: the Meta-RM guided votes under "k", the plain ones under "k_plain");
    shuffle: the sampled votes' response orders (None: random, "balanced": rotations of one order)."""
    grm = spct.GenerativeRewardModel.from_pretrained(model)
    eval_items = [EvalItem(it["id"], it["query"], it["responses"], it["best"], "arithmetic") for it in items]
    return evaluate(grm, eval_items, ks, max_new_tokens=max_new_tokens, meta_rm=meta, batch_size=50,
                    force_scores=force_scores, shuffle=shuffle, cache_dir=out, settings={"model": model})


def summary(results: dict) -> str:
    """The README's table: held-out accuracy with 95% intervals, before and after training."""
    def row(name: str, r: dict) -> str:
        lo, hi = r["overall_ci95"]
        return f"| {name} | {100 * r['overall']:.1f}% | {100 * lo:.1f}-{100 * hi:.1f}% | {100 * r['valid_rate']:.0f}% |"

    n = results["untrained"]["k"]["1"]["items"]
    lines = [f"| held-out ({n} items, chance 50%) | accuracy | 95% interval | valid samples |", "|---|---|---|---|",
             row("untrained, greedy", results["untrained"]["k"]["1"]),
             row("untrained, greedy, forced score groups", results["untrained_forced"]["k"]["1"])]
    trained = results["trained"]
    for k in trained["k_plain"]:
        row_name = "trained, greedy" if k == "1" else f"trained, voting@{k}"
        lines.append(row(row_name, trained["k_plain"][k]))
    top = max(trained["k"], key=int)
    lines.append(row(f"trained, Meta-RM voting@{top} (k_meta = {int(top) // 2})", trained["k"][top]))
    for k, r in results.get("trained_balanced", {}).get("k", {}).items():
        lines.append(row(f"trained, voting@{k}, balanced orders", r))
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--train", type=int, default=400)
    p.add_argument("--test", type=int, default=150)
    p.add_argument("--max-operand", type=int, default=12)
    p.add_argument("--warmup-steps", type=int, default=30)
    p.add_argument("--rft-items", type=int, default=150, help="training items the policy samples for RFT")
    p.add_argument("--meta-items", type=int, default=100, help="training items the trained GRM judges for the Meta RM")
    p.add_argument("--rft-steps", type=int, default=20)
    p.add_argument("--rl-steps", type=int, default=10)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    items = arithmetic_pairs(args.train + args.test, seed=args.seed, max_operand=args.max_operand)
    train, test = items[: args.train], items[args.train:]
    write_items(out / "train.jsonl", train)
    write_items(out / "rft_items.jsonl", train[: args.rft_items])
    write_items(out / "meta_items.jsonl", train[: args.meta_items])
    results: dict = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
    clock = results.setdefault("seconds", {})

    def stage(name, fn):
        if name not in results:
            began = time.perf_counter()
            results[name] = fn()
            clock[name] = round(time.perf_counter() - began, 1)
            write_json(out / "results.json", results)
            print(f"{name}: {json.dumps(results[name])} ({clock[name]} s)", flush=True)
        return results[name]

    common = dict(seed=args.seed, max_new_tokens=args.max_new_tokens, dtype="bfloat16", log_every=5)
    stage("untrained", lambda: held_out("smollm2-135m", test, [1], args.max_new_tokens, out / "eval-untrained"))
    # the same model made to end every judgement in a score group: its judging ability without the format
    stage("untrained_forced", lambda: held_out("smollm2-135m", test, [1], args.max_new_tokens,
                                               out / "eval-untrained-forced", force_scores=True))
    stage("warmup", lambda: rft.run(RFTConfig(
        data=str(out / "train.jsonl"), output_dir=str(out / "warmup"), sampler="teacher", teacher_brief=True,
        hinted=False, max_steps=args.warmup_steps, batch_size=8, micro_batch_size=8, save_every=20,
        learning_rate=1e-4, **common), resume=True))
    stage("rft", lambda: rft.run(RFTConfig(
        data=str(out / "rft_items.jsonl"), output_dir=str(out / "rft"), model=str(out / "warmup" / "model"),
        sampler="policy", n_rft=3, hinted=True, max_steps=args.rft_steps, batch_size=8, micro_batch_size=8,
        save_every=10, learning_rate=5e-5, **common), resume=True))
    stage("rl", lambda: grpo.run(RLConfig(
        data=str(out / "train.jsonl"), output_dir=str(out / "rl"), model=str(out / "rft" / "model"), group_size=4,
        max_steps=args.rl_steps, batch_size=16, micro_batch_size=8, save_every=5, learning_rate=2e-5, **common),
        resume=True))
    grm_model = str(out / "rl" / "model")
    stage("meta_rm", lambda: meta_rm.run(MetaRMConfig(
        data=str(out / "meta_items.jsonl"), output_dir=str(out / "meta"), model=grm_model, samples_per_item=4,
        max_steps=100, save_every=50, batch_size=32, micro_batch_size=32, learning_rate=1e-3, **common),
        resume=True))
    meta = spct.MetaRewardModel.from_pretrained(out / "meta" / "meta_rm")
    stage("trained", lambda: held_out(grm_model, test, [1, 4, 16], args.max_new_tokens, out / "eval-trained",
                                      meta=meta))
    # the same trained GRM with balanced response orders (each response in each position k/n times)
    stage("trained_balanced", lambda: held_out(grm_model, test, [4, 16], args.max_new_tokens,
                                               out / "eval-trained-balanced", shuffle="balanced"))
    trained = results["trained"]
    # the plain votes as "overall" (with their interval), the Meta-RM guided votes over the same samples beside them
    curve = {"k": {k: {**r, "categories": {"Meta-RM voting, k_meta = k/2": trained["k"][k]["overall"]}}
                   for k, r in trained["k_plain"].items()}}
    plot(curve, out / "voting.png", "trained GRM, held-out arithmetic pairs: voting@k")
    print(summary(results))
    print(f"RFT: {json.dumps(results['rft'])}")
    print(f"Meta RM: {json.dumps(results['meta_rm'])}")
    print(f"seconds: {json.dumps(clock)} (total {sum(clock.values()):.0f})")


if __name__ == "__main__":
    main()
