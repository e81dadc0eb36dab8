"""What `Engine` needs of a runner: the interface `LlamaRunner` (the architectures of `spct.engine.arch`,
prefix-shared KV) and `HFRunner` (any `transformers` causal LM, the slow path) both implement.

The engine owns everything that decides a sample's tokens (sampling keyed by prompt seed, sample and step,
constraints, stop rules); a runner only turns tokens into logits:

    kv = runner.new_kv(prompt_lengths, slots, capacity)      # the KV of one group of prompts and their samples
    logits = runner.prefill(tokens, kv, i)                    # prompt i once -> its last token's logits (V,)
    logits = runner.decode(step, kv)                          # one token for each of S rows -> (S, V)

A decode row is a sample: it feeds `step.tokens[r]` at `step.positions[r]` and attends to its prompt's KV
(`step.prompt_index[r]`) plus its own KV in slot `step.slots[r]`, `step.own_len[r]` tokens long with this one.
Rows are padded by the engine to a multiple of `row_multiple` (padding rows use slots past the samples' own, so a
KV needs `slots` = samples + row_multiple - 1). A runner returns, for each row, logits that do not depend on the
other rows of the step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from spct.engine.llama import DecodeStep

__all__ = ["KV", "Runner", "RunnerConfig"]


class RunnerConfig(Protocol):
    """The model facts the engine reads (`LlamaConfig` has them among others)."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def max_positions(self) -> int:
        """The context: prompt plus generated tokens."""


class KV(Protocol):
    """The keys and values of one group of prompts and their samples, made by `Runner.new_kv`."""

    @property
    def nbytes(self) -> int:
        """Bytes it holds (what `Engine.last_kv_bytes` reports)."""


class Runner(Protocol):
    """A model's forward passes for the engine; no state between calls besides the KV it is handed."""

    config: RunnerConfig
    dtype: torch.dtype
    device: torch.device

    @property
    def row_multiple(self) -> int:
        """Decode steps are padded to a multiple of this many rows, so that a row's logits do not depend on how
        many rows the step has (1: no padding needed)."""

    def new_kv(self, prompt_lengths: Sequence[int], slots: int, capacity: int) -> KV:
        """An empty KV for prompts of these lengths and `slots` samples of up to `capacity` tokens each."""

    def prefill(self, tokens: torch.Tensor, kv: KV, prompt: int) -> torch.Tensor:
        """tokens: (L,) int64, prompt number `prompt` of the KV -> its last token's logits (V,)."""

    def decode(self, step: DecodeStep, kv: KV) -> torch.Tensor:
        """One token per row (S rows) -> logits (S, V); each row's key and value are kept in its slot."""

    def with_weights(self, weights: dict[str, torch.Tensor]) -> Runner:
        """A runner of the same model on other weights (Hugging Face names), copied."""
