"""The slow path: architectures the runner lacks, through the `transformers` model itself.

Same `generate` interface and the same sampling (`spct.sample` keyed by prompt seed, sample and step), but the
prompt's KV is copied k times (transformers' cache has no sharing) and prompts run one after another.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from spct.engine.engine import Engine, _eos_ids, _Live, _Settings

log = logging.getLogger(__name__)


class HFEngine(Engine):
    """`Engine` on a transformers causal LM (`from_pretrained` returns one when the runner cannot take the model)."""

    def __init__(self, model, tokenizer, eos_token_ids, why: str = ""):
        self.model, self.tokenizer, self.why = model, tokenizer, why
        self.runner = None
        self.eos_token_ids = sorted(set(eos_token_ids))
        self.max_batch = 1  # one prompt at a time
        self.context = getattr(model.config, "max_position_embeddings", None) or 2048
        self.vocab_size = model.config.vocab_size
        self.last_kv_bytes = 0  # transformers keeps its own cache

    @classmethod
    def load(cls, path: Path, tokenizer, dtype: torch.dtype, device: torch.device, why: str) -> HFEngine:
        from transformers import AutoModelForCausalLM

        log.warning("spct.Engine: %s is not supported by the runner; using transformers (slow path)", why)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
        cfg = json.loads((Path(path) / "config.json").read_text())
        return cls(model, tokenizer, _eos_ids(path, cfg, tokenizer), why)

    @torch.inference_mode()
    def _generate_group(self, ids: list[list[int]], ks: list[int], seeds: list[int], constraints: list,
                        st: _Settings):
        dev = self.model.device
        outs = []
        for p, prompt in enumerate(ids):
            k = ks[p]
            room = self.context - len(prompt)
            samples = [_Live(p, j, j, seeds[p], min(st.max_new_tokens, room), room) for j in range(k)]
            out = self.model(input_ids=torch.tensor([prompt], device=dev), use_cache=True)
            cache = out.past_key_values
            cache.batch_repeat_interleave(k)  # the k copies of the prompt's KV: what the runner avoids
            logits = out.logits[0, -1:].expand(k, -1)
            live = samples
            step = 0
            while True:
                self._choose(logits, live, step, constraints, st)
                keep = [r for r, s in enumerate(live) if s.finish is None]
                if not keep:
                    break
                if len(keep) < len(live):
                    cache.batch_select_indices(torch.tensor(keep, device=dev))
                live = [live[r] for r in keep]
                step += 1
                tokens = torch.tensor([[s.tokens[-1]] for s in live], device=dev)
                logits = self.model(input_ids=tokens, past_key_values=cache, use_cache=True).logits[:, -1]
            outs.append([self._output(s, st) for s in samples])
        return outs
