"""The static loop, for runners without a paged KV (`HFRunner`, transformers' slow path): prompts in groups of at
most max_batch samples, each group prefilled once and decoded until its last sample ends. Token choice and stop
rules are the online engine's (`spct.engine.tokens`), so a request gives the same samples on either loop up to
the runners' arithmetic."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from spct.engine.llama import DecodeStep
from spct.engine.tokens import Live, Request, Sample, TokenRules, extra_tokens

__all__ = ["generate_static"]


def generate_static(runner, rules: TokenRules, context: int, requests: Sequence[Request], max_batch: int,
                    progress: Callable[[int], object] | None) -> list[list[Sample]]:
    outs: list[list[Sample]] = []
    group: list[Request] = []
    for i in range(len(requests) + 1):  # prompts in groups of at most max_batch samples (one prompt at least)
        if i == len(requests) or (group and sum(r.k for r in group) + requests[i].k > max_batch):
            outs += _group(runner, rules, context, group, progress)
            group = []
        if i < len(requests):
            group.append(requests[i])
    return outs


def _group(runner, rules: TokenRules, context: int, reqs: list[Request], progress) -> list[list[Sample]]:
    device = runner.device
    samples, prompt_of, slot_of = [], {}, {}
    for p, req in enumerate(reqs):
        room = context - len(req.ids)
        for j in range(req.k):
            s = Live(req, j, min(req.settings.max_new_tokens, room), room)
            prompt_of[id(s)], slot_of[id(s)] = p, len(samples)
            samples.append(s)
    multiple = runner.row_multiple
    own = max(r.settings.max_new_tokens + extra_tokens(r.constraint) for r in reqs)
    kv = runner.new_kv([len(r.ids) for r in reqs], len(samples) + multiple - 1, own)  # + slots for padding rows
    first = []
    for i, req in enumerate(reqs):
        first.append(runner.prefill(torch.tensor(req.ids, device=device), kv, i))
        if progress is not None:
            progress(len(req.ids))
    live = samples
    logits = torch.stack(first)[torch.tensor([prompt_of[id(s)] for s in live], device=device)]
    step = 0
    while True:
        rules.choose(logits, live)
        failed = next((s.req.error for s in live if s.req.error is not None), None)
        if failed is not None:
            raise failed
        if progress is not None:
            progress(len(live))  # one token per live sample
        live = [s for s in live if s.finish is None]
        if not live:
            break
        step += 1
        rows = len(live)
        pad = -rows % multiple
        as_t = lambda v: torch.tensor(v, dtype=torch.int64, device=device)  # noqa: E731
        dstep = DecodeStep(as_t([s.tokens[-1] for s in live] + [0] * pad),
                           as_t([len(s.req.ids) + step - 1 for s in live] + [0] * pad),
                           as_t([prompt_of[id(s)] for s in live] + [0] * pad),
                           as_t([slot_of[id(s)] for s in live] + [len(samples) + i for i in range(pad)]),
                           as_t([step] * rows + [1] * pad))
        logits = runner.decode(dstep, kv)[:rows]
    outs: list[list[Sample]] = [[] for _ in reqs]
    for s in samples:
        outs[prompt_of[id(s)]].append(rules.output(s))
    return outs
