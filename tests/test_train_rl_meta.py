"""GRPO and Meta RM training end to end: the rollouts' rewards follow the rule, a run trains and logs; the Meta RM
learns labels of real judgements (the default model with forced score groups) and reports held-out ROC-AUC."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from spct.train.config import MetaRMConfig, RLConfig
from spct.train.data import write_items


def _items(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        a, b = 2 + i, 5 + i
        best = i % 2
        rows.append({"id": f"add-{i}", "query": f"What is {a} + {b}?",
                     "responses": [f"{a + b}", f"{a + b + 2}"][::1 - 2 * best], "best": best})
    return rows


@pytest.fixture(scope="module")
def grm(default_model_dir):
    from spct.grm import GenerativeRewardModel

    return GenerativeRewardModel.from_pretrained(str(default_model_dir), dtype="float32")


def test_rollout_rewards_follow_the_rule(grm, tmp_path):
    from spct.train.grpo import rollouts
    from spct.grm.judge import is_correct

    items = _items(3)
    cfg = RLConfig(data="d", output_dir=str(tmp_path), group_size=4, batch_size=12, micro_batch_size=4,
                   max_new_tokens=24, temperature=1.0)
    r = rollouts(grm.engine, grm.vocab, items, [0, 1, 2], cfg, step=0)
    assert len(r.examples) == 12
    again = rollouts(grm.engine, grm.vocab, items, [0, 1, 2], cfg, step=0)
    assert [e[0] for e in again.examples] == [e[0] for e in r.examples]  # seeded by (seed, step, item)
    for g in range(3):
        group = r.examples[4 * g: 4 * g + 4]
        assert len({tuple(e[0][: e[1]]) for e in group}) == 1  # one prompt per group
        rewards = [e[3] for e in group]
        assert set(rewards) <= {1.0, -1.0}
        adv = [e[2] for e in group]
        if len(set(rewards)) == 1:
            assert adv == [0.0] * 4
        else:
            assert all((a > 0) == (x > 0) for a, x in zip(adv, rewards)) and abs(sum(adv)) < 1e-5
    # the reward is the rule applied to the judgement's text, scores mapped back through the group's order
    from spct.grm.model import orders
    from spct.ops.extract_scores import extract_scores

    for n, e in enumerate(r.examples):
        item = items[n // 4]
        order = orders(2, 1, cfg.seed, n // 4, True)[0]
        ex = extract_scores([grm.tokenizer.decode(e[0][e[1]:], skip_special_tokens=True)], num_responses=2)
        scores = [math.nan, math.nan]
        for p, o in enumerate(order):
            scores[o] = float(ex.scores[0, p]) if bool(ex.valid[0]) else math.nan
        assert (e[3] > 0) == is_correct(scores, item["best"])


def test_rl_run_trains_logs_and_saves(tmp_path, default_model_dir):
    data = tmp_path / "items.jsonl"
    write_items(data, _items(4))
    out = tmp_path / "rl"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "spct", "train", "rl", "--data", str(data), "--output-dir", str(out),
                           "--model", str(default_model_dir), "--group-size", "2", "--batch-size", "4",
                           "--micro-batch-size", "2", "--max-steps", "2", "--max-new-tokens", "12",
                           "--beta", "0.05", "--learning-rate", "1e-4", "--log-every", "1"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(m["reward"] in (-1.0, -0.5, 0.0, 0.5, 1.0) and math.isfinite(m["loss"]) for m in metrics)
    assert metrics[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # step 1: the policy is the reference
    assert (out / "model" / "model.safetensors").is_file() and (out / "checkpoint-00000002").is_dir()


def test_meta_rm_training_reports_held_out_auc(grm, tmp_path, default_model_dir):
    from spct.grm import MetaRewardModel
    from spct.train import meta_rm

    data = tmp_path / "items.jsonl"
    write_items(data, _items(10))
    cfg = MetaRMConfig(data=str(data), output_dir=str(tmp_path / "meta"), model=str(default_model_dir),
                       samples_per_item=4, max_new_tokens=16, force_scores=True, eval_fraction=0.3,
                       batch_size=8, micro_batch_size=8, max_steps=30, save_every=30, log_every=10,
                       learning_rate=1e-2)
    report = meta_rm.run(cfg, progress=False)
    rows = [json.loads(x) for x in (tmp_path / "meta" / "meta_rm_set.jsonl").read_text().splitlines()]
    assert len(rows) == 40 and {r["label"] for r in rows} == {0, 1}  # forced groups: right and wrong judgements
    assert sum(r["held_out"] for r in rows) == 12  # 3 of 10 items, all 4 judgements each
    assert report["judgements"] == 40 and report["held_out_judgements"] == 12
    assert report["train_auc"] is not None and report["train_auc"] > 0.5  # the head fits its training labels
    assert report["held_out_auc"] is None or 0.0 <= report["held_out_auc"] <= 1.0
    loaded = MetaRewardModel.from_pretrained(tmp_path / "meta" / "meta_rm", dtype="float32")
    r = rows[0]
    s = loaded.score(r["query"], [r["shown"]], [r["judgement"]])
    assert s.shape == (1,) and torch.isfinite(s).all()
