"""Meta RM training (docs/method.md sections 3-4): a scalar head that rates the GRM's judgements.

    spct train meta-rm --config meta.toml      # or spct.train.meta_rm.run(MetaRMConfig(...))

1. The GRM (cfg.model, normally the trained one) samples `samples_per_item` judgements per labelled item, each
   with its own seeded response order (temperature 0.5, as k > 1 scoring); each is labelled 1 when correct by the
   rule (`spct.grm.judge.is_correct`) and 0 otherwise (invalid included), both kinds kept. The items are split
   (seeded) into training and held-out items (`eval_fraction`); every judgement of an item goes to the same side.
   Written to `output_dir/meta_rm_set.jsonl`.
2. The Meta RM reads what `score_batch` hands it at inference: the judgement up to the end of its critique, after
   the item in the meta prompt format. Its backbone (cfg.model) stays frozen: the final hidden state of each input
   is computed once, and a linear head is trained on it with binary cross-entropy
   (`spct.train.losses.meta_rm_loss`) through the shared loop (checkpoints, resume, DDP).
3. `output_dir/meta_rm` is the trained `spct.MetaRewardModel`; `output_dir/meta_rm_eval.json` its ROC-AUC on the
   held-out judgements (and on the training ones).
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import torch

from spct._atomic import write_json, write_jsonl
from spct.grm.judge import is_correct
from spct.train import loop
from spct.train.config import MetaRMConfig, save_config
from spct.train.data import read_items
from spct.train.losses import meta_rm_loss, roc_auc

__all__ = ["label_judgements", "run"]

CHUNK = 64  # items sampled together: 64 x k rows keep the decode batch large (samples do not depend on it)


def label_judgements(grm, items: list[dict], cfg: MetaRMConfig) -> list[dict]:
    """samples_per_item judgements per item, each {"item", "query", "shown", "judgement", "label"}."""
    out = []
    for start in range(0, len(items), CHUNK):
        chunk = items[start: start + CHUNK]
        judged = grm.score_batch([(it["query"], it["responses"]) for it in chunk], k=cfg.samples_per_item,
                                 seed=cfg.seed, max_new_tokens=cfg.max_new_tokens, shuffle=True,
                                 indices=range(start, start + len(chunk)), force_scores=cfg.force_scores)
        for i, (it, j) in enumerate(zip(chunk, judged)):
            for s in j.samples:  # rated_text: what score_batch hands the Meta RM at inference
                out.append({"item": start + i, "query": it["query"], "shown": [it["responses"][o] for o in s.order],
                            "judgement": s.rated_text,
                            "label": int(is_correct(s.scores, it.get("best"), it.get("label")))})
    return out


def _split(num_items: int, fraction: float, seed: int) -> set[int]:
    """The held-out item indices."""
    perm = torch.randperm(num_items, generator=torch.Generator().manual_seed(seed)).tolist()
    return set(perm[: math.ceil(fraction * num_items)])


def _features(meta, rows: list[dict]) -> torch.Tensor:
    """(N, hidden) float32: the frozen backbone's final hidden state of each Meta RM input, the judgements of one
    query (consecutive rows) rated together so that their shared prompt runs once."""
    groups = [list(group) for _, group in itertools.groupby(rows, key=lambda r: r["query"])]
    feats = [meta.features(g[0]["query"], [r["shown"] for r in g], [r["judgement"] for r in g]) for g in groups]
    return torch.cat(feats) if feats else torch.zeros((0, meta.weight.shape[0]))


def run(cfg: MetaRMConfig, *, resume: bool = False, progress: bool = True) -> dict:
    """Samples and labels (or, resuming, reads back), trains the head; returns the evaluation."""
    from spct.grm import GenerativeRewardModel, MetaRewardModel

    d = loop.init_distributed()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    set_path = out / "meta_rm_set.jsonl"
    if d.main:
        save_config(cfg, out / "config.json")
        if not (resume and set_path.exists()):
            items = read_items(cfg.data)
            held = _split(len(items), cfg.eval_fraction, cfg.seed)
            rows = label_judgements(GenerativeRewardModel.from_pretrained(cfg.model), items, cfg)
            write_jsonl(set_path, [{**r, "held_out": r["item"] in held} for r in rows])
    loop.barrier(d)
    rows = [json.loads(line) for line in set_path.read_text().splitlines()]
    train_rows = [r for r in rows if not r["held_out"]]
    if not train_rows:
        raise ValueError(f"no training judgements in {set_path}: lower eval_fraction or add items")
    # the frozen backbone runs in cfg.dtype (bfloat16: the features scoring will see); the head trains in float32
    meta = MetaRewardModel.from_pretrained(cfg.model, dtype=cfg.dtype, device=str(d.device), seed=cfg.seed)
    with torch.inference_mode():
        feats = _features(meta, rows)
    labels = torch.tensor([float(r["label"]) for r in rows])
    train_idx = [i for i, r in enumerate(rows) if not r["held_out"]]
    head = torch.nn.Linear(feats.shape[1], 1).to(d.device)
    with torch.no_grad():  # start from the fresh head MetaRewardModel draws for this seed
        head.weight.copy_(meta.weight[None])
        head.bias.copy_(meta.bias.reshape(1))

    def make_batch(step: int):
        return [train_idx[i] for i in loop.batch_indices(len(train_idx), step, cfg.batch_size, cfg.seed)]

    def micro_loss(m, batch):
        logits = m(feats[batch].to(d.device)).squeeze(-1)
        return meta_rm_loss(logits, labels[batch].to(d.device)), {}

    loop.train(cfg, head, make_batch, micro_loss, d=d, resume=resume, progress=progress)
    meta.weight, meta.bias = head.weight.detach()[0].cpu().clone(), head.bias.detach()[0].cpu().clone()
    scores = feats @ meta.weight + meta.bias
    report = {"judgements": len(rows), "positives": int(labels.sum())}
    for name, keep in (("held_out", [r["held_out"] for r in rows]), ("train", [not r["held_out"] for r in rows])):
        idx = [i for i, k in enumerate(keep) if k]
        both = 0 < int(labels[idx].sum()) < len(idx)  # an AUC needs both labels
        report[f"{name}_judgements"] = len(idx)
        report[f"{name}_auc"] = roc_auc(scores[idx], labels[idx]) if both else None
    if d.main:
        meta.save_pretrained(out / "meta_rm")
        write_json(out / "meta_rm_eval.json", report)
    loop.barrier(d)
    return report
