"""The slow path: architectures `LlamaRunner` lacks, through the `transformers` model itself, as a runner behind
the same interface (`spct.engine.runner.Runner`), so the engine's one generation loop and its sampling (keyed by
prompt seed, sample and step) drive it.

What differs from the Llama runner stays inside this one: transformers' cache has no sharing, so a prompt's KV is
copied once per sample at its first decode step, and the rows of each prompt run as their own batch (all at the same
position, so neither padding nor masks; positions come from the cache).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from spct.engine.llama import DecodeStep
from spct.engine.models import fetch

__all__ = ["HFConfig", "HFKV", "HFRunner"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HFConfig:
    """The model facts the engine reads, taken from the transformers config."""

    vocab_size: int
    max_positions: int


class HFKV:
    """Per prompt of a group: its transformers cache (one row after prefill, then one row per live sample) and the
    own-KV slots of those rows in row order (None before the prompt's first decode step)."""

    nbytes = 0  # transformers allocates and grows its cache itself

    def __init__(self, prompts: int):
        self.caches: list = [None] * prompts
        self.slots: list[list[int] | None] = [None] * prompts


class HFRunner:
    """A transformers causal LM as a runner (`Engine.from_pretrained` builds one when `LlamaRunner` cannot take
    the model; `why` says why not)."""

    # Each prompt's rows run as one batch of exactly its live samples (as the slow path always did); padding them
    # would need cache rows for the padding too.
    row_multiple = 1

    def __init__(self, model, why: str = ""):
        self.model, self.why = model, why
        self.dtype, self.device = model.dtype, model.device
        c = model.config
        self.config = HFConfig(c.vocab_size, getattr(c, "max_position_embeddings", None) or 2048)

    @classmethod
    def from_dir(cls, path: str | Path, dtype: torch.dtype, device: torch.device, why: str) -> HFRunner:
        """A Hugging Face checkpoint directory, loaded with `AutoModelForCausalLM`; ValueError naming the directory
        (and transformers' reason, its first line) when the directory is broken or transformers cannot load it."""
        from safetensors import SafetensorError
        from transformers import AutoModelForCausalLM

        path = fetch(path, progress=False)  # checks the directory: config.json, weights' headers, tokenizer
        log.warning("spct.Engine: %s is not supported by the runner; using transformers (slow path)", why)
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as e:
            reason = (str(e).strip().splitlines() or [""])[0]
            raise ValueError(f"{path}: transformers cannot load this model ({type(e).__name__}: {reason})") from None
        return cls(model.to(device).eval(), why)

    def with_weights(self, weights: dict[str, torch.Tensor]) -> HFRunner:
        """The same model on other weights (its own state_dict names), copied into the model's dtype and device."""
        model = copy.deepcopy(self.model)
        model.load_state_dict(weights)
        return HFRunner(model, self.why)

    def new_kv(self, prompt_lengths: Sequence[int], slots: int, capacity: int) -> HFKV:
        return HFKV(len(prompt_lengths))

    @torch.inference_mode()
    def prefill(self, tokens: torch.Tensor, kv: HFKV, prompt: int) -> torch.Tensor:
        """tokens: (L,) int64 -> the last token's logits (V,); the prompt's cache is kept in kv."""
        out = self.model(input_ids=tokens[None].to(self.device), use_cache=True)
        kv.caches[prompt] = out.past_key_values
        return out.logits[0, -1]

    @torch.inference_mode()
    def decode(self, step: DecodeStep, kv: HFKV) -> torch.Tensor:
        """One token per row -> logits (S, V), the rows of each prompt as one batch. A prompt none of whose rows
        is in the step has ended: its cache is freed."""
        prompts, slots = step.prompt_index.tolist(), step.slots.tolist()
        out = None
        for p in sorted(set(prompts)):
            rows = [r for r, q in enumerate(prompts) if q == p]
            cache = self._cache_for(kv, p, [slots[r] for r in rows])
            tokens = step.tokens[rows][:, None].to(self.device)
            logits = self.model(input_ids=tokens, past_key_values=cache, use_cache=True).logits[:, -1]
            if out is None:
                out = logits.new_empty((len(prompts), logits.shape[-1]))
            out[rows] = logits
        for p in set(range(len(kv.caches))) - set(prompts):
            kv.caches[p] = kv.slots[p] = None
        return out

    def _cache_for(self, kv: HFKV, prompt: int, slots: list[int]):
        """The prompt's cache with one row per slot, in this order: the prompt's KV copied for each sample at its
        first step (what the Llama runner avoids), then the rows of samples that ended dropped."""
        cache = kv.caches[prompt]
        if kv.slots[prompt] is None:
            cache.batch_repeat_interleave(len(slots))
        elif kv.slots[prompt] != slots:
            row = {s: i for i, s in enumerate(kv.slots[prompt])}
            cache.batch_select_indices(torch.tensor([row[s] for s in slots], device=self.device))
        kv.slots[prompt] = slots
        return cache
