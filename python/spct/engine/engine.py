"""`spct.Engine`: k samples per prompt, online: paged KV with a prefix cache and continuous batching.

    engine = spct.Engine.from_pretrained("smollm2-135m")
    outs = engine.generate(["Rate these answers ..."], k=8, max_new_tokens=256, temperature=0.5, seed=7)
    outs[0][3].text  # sample 3 of prompt 0

    handle = engine.submit("Rate these answers ...", k=8, seed=7)   # returns at once
    samples = handle.result()        # or: await handle; or: for sample in handle (as they finish)
    engine.cancel(handle); engine.stats()

The KV lives in blocks of `block_size` tokens within one budget (`kv_cache_mb`). A prompt is prefilled once, in
chunks, and its k samples share its blocks; a later prompt with a cached prefix computes only the rest; a step
decodes every running sample and adds prefill chunks of waiting prompts (`spct.engine.scheduler`); a finished
sample frees its blocks at once. `generate` submits its prompts and waits: the same loop.

Randomness and batch invariance: sample j of a request draws its token at step t through `spct.sample` keyed by (the
request's seed, offset j * 2^32 + t) and nothing else, and a row's arithmetic does not depend on the other rows of
a step (`spct.paged_attention`'s rule; float32 CPU matmuls in fixed tiles), so a request gives the same samples
alone or beside any other requests, whenever it arrives.

Runners: `LlamaRunner` for the architectures in `spct.engine.arch` (Llama, Mistral, Qwen2, Qwen3, Qwen3-MoE,
Phi-3, Gemma 2, Gemma 3); `HFRunner` (any `transformers` causal LM, the slow path) for other architectures, on
the static loop (`spct.engine.static`; no submit there). A prompt is a string, token ids or a chat
conversation (`spct.engine.prompts`). Token choice and stop rules: `spct.engine.tokens`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from spct.engine.hf import HFRunner
from spct.engine.kv_blocks import MIB, blocks_for_budget
from spct.engine.llama import LlamaRunner, supported
from spct.engine.models import fetch
from spct.engine.online import Handle, Online
from spct.engine.prompts import prompt_token_ids
from spct.engine.runner import Runner
from spct.engine.static import generate_static
from spct.engine.threads import release_pool
from spct.engine.tokens import (Allow, Constraint, Force, Request, Sample, TokenRules, check_settings, extra_tokens,
                                is_int)

__all__ = ["Allow", "Constraint", "Engine", "Force", "Handle", "Sample"]

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


class Engine:
    """Generation on a runner (`LlamaRunner`, or `HFRunner` for other architectures) for any device torch runs on.

    max_batch: sample rows decoded together (more requests wait their turn); kv_cache_mb: the KV budget in MiB
    (default: a quarter of the memory free when the engine first runs, at most what max_batch samples at the full
    context need); block_size: tokens per KV block; prefill_chunk: prompt tokens computed per step at most."""

    def __init__(self, runner: Runner, tokenizer, eos_token_ids: Sequence[int], max_batch: int = 256, *,
                 kv_cache_mb: float | None = None, block_size: int = 16, prefill_chunk: int = 256):
        for name, value, low in (("max_batch", max_batch, 1), ("block_size", block_size, 1),
                                 ("prefill_chunk", prefill_chunk, block_size if is_int(block_size) else 1)):
            if not is_int(value) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        self.runner, self.tokenizer = runner, tokenizer
        self.rules = TokenRules(tokenizer, eos_token_ids)
        self.eos_token_ids = self.rules.eos_token_ids
        self.max_batch, self.block_size, self.prefill_chunk = max_batch, block_size, prefill_chunk
        self.context = runner.config.max_positions
        self.vocab_size = runner.config.vocab_size
        self.kv_cache_mb = kv_cache_mb
        self.num_blocks = None if kv_cache_mb is None else self._blocks(kv_cache_mb)  # checks the budget
        self.last_kv_bytes = 0
        self._online: Online | None = None

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, *, dtype: str | torch.dtype = "bfloat16",
                        device: str | torch.device = "cpu", max_batch: int = 256, kv_cache_mb: float | None = None,
                        block_size: int = 16, prefill_chunk: int = 256):
        """name_or_path: a model alias (`spct.models.MODELS`), a Hugging Face checkpoint directory or a .gguf file.
        dtype: "bfloat16" or "float32"; the other arguments: the class docstring. Llama, Mistral and Qwen2 run on
        `LlamaRunner`; other architectures on `HFRunner` (transformers, the slow path)."""
        if isinstance(dtype, str):
            if dtype not in DTYPES:
                raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
            dtype = DTYPES[dtype]
        if not is_int(max_batch) or max_batch < 1:
            raise ValueError(f"max_batch must be an int >= 1, got {max_batch!r}")
        path = fetch(name_or_path)
        cfg = json.loads((Path(path) / "config.json").read_text())
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
        why = supported(cfg)
        if why is None:
            runner: Runner = LlamaRunner.from_dir(path, dtype, torch.device(device))
        else:
            runner = HFRunner.from_dir(path, dtype, torch.device(device), why)
        engine = cls(runner, tokenizer, _eos_ids(path, cfg, tokenizer), max_batch, kv_cache_mb=kv_cache_mb,
                     block_size=block_size, prefill_chunk=prefill_chunk)
        release_pool()  # loading made this thread an OpenMP pool; the step loop's is to be the only one (threads.py)
        return engine

    # -- public -------------------------------------------------------------------------------------------------

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Generate with new weights of the same model from now on, e.g. the policy's `state_dict()` between
        reinforcement-learning steps (Hugging Face names; copied into the runner's dtype and layout). Cached
        prefixes are dropped with the old weights; call it between requests."""
        self.runner = self.runner.with_weights(weights)
        if self._online is not None:
            self._online.shutdown()
            self._online = None

    def generate(self, prompts: Sequence[str | Sequence[int] | Sequence[dict]], *, k: int | Sequence[int] = 1,
                 max_new_tokens: int = 256, min_new_tokens: int = 0, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, min_p: float = 0.0, seed: int | Sequence[int] = 0,
                 stop: str | Sequence[str] = (), return_logprobs: bool = False,
                 constraints: Sequence[Constraint | None] | None = None,
                 progress: Callable[[int], object] | None = None) -> list[list[Sample]]:
        """k samples for each prompt -> outs[i][j], sample j of prompt i. A prompt is a string, token ids or a chat
        conversation (a list of {"role", "content"} messages, put through the tokenizer's chat template with the
        generation prompt, as vLLM's `LLM.chat`); one call may mix them (`spct.engine.prompts`).

        k: samples per prompt, one int or one per prompt; seed: one int for all prompts or one per prompt; stop: a
        string or strings that end a sample; constraints: one per prompt (or None), see `Constraint`. Sampling as
        `spct.sample` (temperature 0 = greedy). Semantics of logprobs, stop strings, min_new_tokens and the
        context: `spct.engine.tokens`. progress: called with a number of tokens processed (a prompt's length once
        it is prefilled, then one per generated token); the calls add up to the prompts' tokens plus the samples'
        tokens. An error about one prompt is a `spct.items.ItemError` named prompts[i]; a constraint's error is
        raised as it was."""
        settings = check_settings(max_new_tokens, min_new_tokens, temperature, top_k, top_p, min_p, stop,
                                  return_logprobs)
        if progress is not None and not callable(progress):
            raise ValueError(f"progress must be a callable taking a token count, or None; got {progress!r}")
        ids = prompt_token_ids(self.tokenizer, prompts, self.vocab_size, self.context)
        ks, seeds = _ks(k, len(ids)), _seeds(seed, len(ids))
        if constraints is not None and len(constraints) != len(ids):
            raise ValueError(f"constraints must have one entry per prompt ({len(ids)}), got {len(constraints)}")
        reqs = [Request(p, ks[i], seeds[i], settings, None if constraints is None else constraints[i])
                for i, p in enumerate(ids)]
        for r in reqs:
            extra_tokens(r.constraint)  # checks max_extra_tokens before anything runs
        if not isinstance(self.runner, LlamaRunner):
            return generate_static(self.runner, self.rules, self.context, reqs, self.max_batch, progress)
        online = self._engine()
        online.scheduler.peak_used = 0
        handles = [online.submit(self._checked(r), progress) for r in reqs]
        try:
            outs = [h.result() for h in handles]
        finally:
            for h in handles:
                if not h.done():
                    online.cancel(h)
        self.last_kv_bytes = online.scheduler.peak_used * online.block_bytes
        return outs

    def submit(self, prompt: str | Sequence[int] | Sequence[dict], *, k: int = 1, max_new_tokens: int = 256,
               min_new_tokens: int = 0, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
               min_p: float = 0.0, seed: int = 0, stop: str | Sequence[str] = (), return_logprobs: bool = False,
               constraint: Constraint | None = None, progress: Callable[[int], object] | None = None) -> Handle:
        """One prompt, `generate`'s keyword arguments for it -> a `Handle` at once (`spct.engine.online`):
        handle.result() blocks and returns the k samples as `generate` returns them for one prompt; `await handle`
        the same in asyncio; iterating yields the samples as they finish. A request that would not fit the whole KV
        budget alone is refused here (ValueError naming both sizes)."""
        if not isinstance(self.runner, LlamaRunner):
            raise ValueError(f"submit needs the paged runner; this model runs on transformers ({self.runner.why})")
        settings = check_settings(max_new_tokens, min_new_tokens, temperature, top_k, top_p, min_p, stop,
                                  return_logprobs)
        if not is_int(k) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        if progress is not None and not callable(progress):
            raise ValueError(f"progress must be a callable taking a token count, or None; got {progress!r}")
        ids = prompt_token_ids(self.tokenizer, [prompt], self.vocab_size, self.context)[0]
        req = Request(ids, k, _seeds(seed, 1)[0], settings, constraint)
        online = self._engine()
        return online.submit(self._checked(req), progress)

    def cancel(self, handle: Handle) -> None:
        """Stops a submitted request: its blocks go back; handle.result() raises `RequestCancelled`."""
        if self._online is not None:
            self._online.cancel(handle)

    def stats(self) -> dict:
        """Counts since the engine started: running and waiting requests, running_rows (sequences in the running
        requests: samples decoding, or a prompt prefilling), blocks_used / blocks_free /
        blocks_cached / blocks_total, prefix_hit_tokens, prefill_tokens, decode_tokens, preemptions, and
        tokens_per_s (prefill plus decode tokens per second of step time)."""
        return self._engine().stats()

    def shutdown(self) -> None:
        """Stops the step loop (unfinished requests fail with `RequestCancelled`); a later call starts a new one."""
        if self._online is not None:
            self._online.shutdown()
            self._online = None

    # -- internals ----------------------------------------------------------------------------------------------

    def _blocks(self, kv_cache_mb: float) -> int:
        c = self.runner.config
        return blocks_for_budget(kv_cache_mb, layers=c.num_layers, kv_heads=c.num_kv_heads, head_dim=c.head_dim,
                                 block_size=self.block_size, dtype=self.runner.dtype)

    def _engine(self) -> Online:
        if self._online is None:
            if self.num_blocks is None:
                self.kv_cache_mb = _default_budget(self.runner, self.max_batch, self.context)
                self.num_blocks = self._blocks(self.kv_cache_mb)
            self._online = Online(self.runner, self.rules, self.context, num_blocks=self.num_blocks,
                                  block_size=self.block_size, max_batch=self.max_batch,
                                  prefill_chunk=self.prefill_chunk)
        return self._online

    def _checked(self, req: Request) -> Request:
        """req, or a ValueError when it would not fit the KV budget alone."""
        online = self._engine()
        own = min(req.settings.max_new_tokens + extra_tokens(req.constraint), self.context - len(req.ids))
        need = online.scheduler.blocks_needed(req, own)
        if need > self.num_blocks:
            size = need * online.block_bytes / MIB
            raise ValueError(f"the request needs {need} KV blocks ({size:.1f} MiB: a {len(req.ids)}-token prompt "
                             f"and k={req.k} samples of up to {own} tokens), more than the whole KV budget of "
                             f"{self.num_blocks} blocks ({self.kv_cache_mb:g} MiB, kv_cache_mb)")
        return req


def _default_budget(runner: Runner, max_batch: int, context: int) -> float:
    """MiB: a quarter of the free memory of the runner's device, at most max_batch samples at the full context."""
    c = runner.config
    per_token = 2 * c.num_layers * c.num_kv_heads * c.head_dim * runner.dtype.itemsize
    if runner.device.type == "cuda":
        free = torch.cuda.mem_get_info(runner.device)[0]
    else:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return max(min(free / 4, per_token * max_batch * context), per_token * 64) / MIB


def _ks(k, prompts: int) -> list[int]:
    if is_int(k):
        if k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        return [k] * prompts
    ks = list(k) if isinstance(k, Sequence) else [k]
    if len(ks) != prompts or not all(is_int(x) and x >= 1 for x in ks):
        raise ValueError(f"k must be an int >= 1 or one per prompt ({prompts}), got {k!r}")
    return ks


def _seeds(seed, prompts: int) -> list[int]:
    seeds = [seed] * prompts if is_int(seed) else list(seed)
    if len(seeds) != prompts:
        raise ValueError(f"seed must be an int or one int per prompt ({prompts}), got {len(seeds)} seeds")
    for i, x in enumerate(seeds):
        if not is_int(x) or not 0 <= x < 2**63:
            raise ValueError(f"seed[{i}] = {x!r} must be an int in [0, 2**63)")
    return seeds


def _eos_ids(path: Path, cfg: dict, tokenizer) -> list[int]:
    """End-of-sequence ids: generation_config.json's, else config.json's, plus the tokenizer's."""
    ids: list[int] = []
    gen = Path(path) / "generation_config.json"
    for source in ((json.loads(gen.read_text()) if gen.is_file() else {}), cfg):
        eos = source.get("eos_token_id")
        if eos is not None:
            ids += eos if isinstance(eos, list) else [eos]
            break
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return ids
