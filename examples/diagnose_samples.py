"""Why voting gains little in the arithmetic demo: k sampled judgements of a trained GRM on held-out items,
measured per sample rather than voted.

    python examples/diagnose_samples.py --run runs/demo          # the --out of examples/demo_arithmetic.py

For each temperature: the accuracy of a single sample (its own argmax is the best response; invalid counts as
wrong), the valid rate, how many distinct principle lists the k samples of an item write (1 = every sample writes
the same principles), the mean pairwise Jaccard similarity of the samples' principle words, and how many items
every sample gets right or every sample gets wrong (voting helps when samples err independently and are right more
often than not). The items are the demo's held-out split (its --train, --test, --max-operand and --seed).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics

import spct
from spct.train.data import arithmetic_pairs


def measure(grm, items: list[dict], k: int, temperature: float, seed: int, max_new_tokens: int) -> dict:
    judged = grm.score_batch([{"query": it["query"], "responses": it["responses"]} for it in items], k=k,
                             temperature=temperature, seed=seed, max_new_tokens=max_new_tokens)
    right, valid, distinct, similar, per_item = [], [], [], [], []
    for item, judgement in zip(items, judged):
        ok = [s.valid and max(range(len(s.scores)), key=s.scores.__getitem__) == item["best"]
              for s in judgement.samples]
        right += ok
        valid += [s.valid for s in judgement.samples]
        per_item.append(sum(ok) / len(ok))
        words = [frozenset(w.lower() for p, _ in s.principles for w in p.split()) for s in judgement.samples]
        distinct.append(len({tuple(sorted(p for p, _ in s.principles)) for s in judgement.samples}))
        similar += [len(a & b) / len(a | b) for a, b in itertools.combinations(words, 2) if a | b]
    return {"temperature": temperature, "k": k, "items": len(items), "sample_accuracy": statistics.mean(right),
            "valid_rate": statistics.mean(valid), "distinct_principle_lists": statistics.mean(distinct),
            "principle_jaccard": statistics.mean(similar) if similar else None,
            "items_all_right": sum(p == 1 for p in per_item), "items_all_wrong": sum(p == 0 for p in per_item),
            "example_principles": [s.principles for s in judged[0].samples[:3]]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="the --out folder of examples/demo_arithmetic.py")
    p.add_argument("--stage", default="rl", help="the trained model: OUT/STAGE/model (default rl)")
    p.add_argument("--items", type=int, default=40, help="held-out items measured")
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.5, 1.0])
    p.add_argument("--train", type=int, default=400)
    p.add_argument("--test", type=int, default=150)
    p.add_argument("--max-operand", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=96)
    args = p.parse_args()
    items = arithmetic_pairs(args.train + args.test, seed=args.seed, max_operand=args.max_operand)[args.train:]
    grm = spct.GenerativeRewardModel.from_pretrained(f"{args.run}/{args.stage}/model")
    for temperature in args.temperatures:
        print(json.dumps(measure(grm, items[: args.items], args.k, temperature, args.seed + 3,
                                 args.max_new_tokens)))


if __name__ == "__main__":
    main()
