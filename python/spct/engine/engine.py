"""`spct.Engine`: k samples per prompt, each prompt prefilled once and its KV shared by its samples.

    engine = spct.Engine.from_pretrained("smollm2-135m")
    outs = engine.generate(["Rate these answers ..."], k=8, max_new_tokens=256, temperature=0.5, seed=7)
    outs[0][3].text  # sample 3 of prompt 0

Randomness: sample j of a prompt draws its token at step t through `spct.sample` keyed by (the prompt's seed,
offset j * 2^32 + t) and nothing else, so a prompt with its seed gives the same samples alone or beside any other
prompts (the runner's arithmetic per row does not depend on the batch either; see `Runner.row_multiple`).

The engine runs one generation loop over a runner (`spct.engine.runner.Runner`): `LlamaRunner` for the Llama family,
`HFRunner` (any `transformers` causal LM, the slow path) for other architectures.

A prompt is a string, token ids or a chat conversation (messages through the tokenizer's chat template, as vLLM's
`LLM.chat`): `spct.engine.prompts`. `spct.pad_samples(outs)` turns the samples into the padded ids that
`spct.extract_scores` takes.

Choices where the usual engines differ, spelled out:
- `logprobs` are the model's own: log_softmax of the raw logits (before temperature, masks and constraints), as
  vLLM returns by default; one per generated token.
- A stop string ends the sample; `text` is cut just before it, `token_ids` keep the token that completed it. EOS
  ends a sample too, kept in `token_ids`, not in `text` (special tokens are skipped).
- Before `min_new_tokens` tokens, EOS is masked out and stop strings are not matched.
- A prompt longer than the model's context is an error; a prompt that fits but leaves fewer than
  `max_new_tokens` positions stops at the context with finish_reason "length".
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from spct.engine.hf import HFRunner
from spct.engine.llama import DecodeStep, LlamaRunner, supported
from spct.engine.models import fetch
from spct.engine.prompts import prompt_token_ids
from spct.engine.runner import KV, Runner
from spct.ops.sample import sample

__all__ = ["Allow", "Constraint", "Engine", "Force", "Sample"]

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass
class Sample:
    """One generated sample: token ids (generated only), decoded text, "stop" or "length", optional logprobs."""

    token_ids: list[int]
    text: str
    finish_reason: str
    logprobs: list[float] | None = None


@dataclass(frozen=True)
class Allow:
    """A constraint's answer: the next token must be one of these ids."""

    token_ids: Sequence[int]


@dataclass(frozen=True)
class Force:
    """A constraint's answer: append these ids next, without sampling (logprobs still scored)."""

    token_ids: Sequence[int]


# A constraint is called before each token a sample chooses (not while forced tokens are pending) with the sample's
# index j among its prompt's k and its generated ids so far; None leaves the choice free.
# A constraint may also extend samples: with a method on_end(j, ids) -> ids | None and an int attribute
# max_extra_tokens, it is called once per sample when the sample ends by EOS or by its token budget (not by a stop
# string), with the ids so far (a final EOS included). Ids it returns are forced next, in place of that EOS, and
# the sample may run max_extra_tokens tokens past max_new_tokens (within the context); the KV for them is reserved.
Constraint = Callable[[int, Sequence[int]], "Allow | Force | None"]


def _extra_tokens(constraints: Sequence) -> int:
    """Tokens past max_new_tokens that the constraints' on_end may add to a sample."""
    extra = 0
    for c in constraints:
        if c is not None and hasattr(c, "on_end"):
            n = getattr(c, "max_extra_tokens", None)
            if not _is_int(n) or n < 0:
                raise ValueError(f"a constraint with on_end needs max_extra_tokens, an int >= 0; got {n!r}")
            extra = max(extra, n)
    return extra


@dataclass
class _Live:
    """Bookkeeping of one sample while it generates."""

    prompt: int  # index in the group
    j: int  # sample index within its prompt
    slot: int  # own-KV slot
    seed: int
    limit: int  # max tokens (max_new_tokens, or fewer near the context)
    room: int = 1 << 62  # positions left in the context after the prompt
    extended: bool = False  # on_end was called
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    forced: deque = field(default_factory=deque)
    finish: str | None = None


@dataclass(frozen=True)
class _Settings:
    max_new_tokens: int
    min_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    min_p: float
    stop: tuple[str, ...]
    return_logprobs: bool

    @property
    def stop_window(self) -> int:
        return max(len(x.encode()) for x in self.stop) + 2


class Engine:
    """Generation with prefix-shared KV on a runner (`LlamaRunner`, or `HFRunner` for other architectures) for any
    device torch runs on."""

    def __init__(self, runner: Runner, tokenizer, eos_token_ids: Sequence[int], max_batch: int = 256):
        self.runner, self.tokenizer = runner, tokenizer
        self.eos_token_ids = sorted(set(eos_token_ids))
        self.max_batch = max_batch
        self.context = runner.config.max_positions
        self.vocab_size = runner.config.vocab_size
        self.last_kv_bytes = 0

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, *, dtype: str | torch.dtype = "bfloat16",
                        device: str | torch.device = "cpu", max_batch: int = 256):
        """name_or_path: a model alias (`spct.models.MODELS`), a Hugging Face checkpoint directory or a .gguf file.
        dtype: "bfloat16" or "float32"; max_batch: sample rows decoded together (more prompts wait their turn).
        Llama, Mistral and Qwen2 run on `LlamaRunner`; other architectures on `HFRunner` (transformers, the slow
        path: each prompt's KV copied per sample)."""
        if isinstance(dtype, str):
            if dtype not in DTYPES:
                raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
            dtype = DTYPES[dtype]
        if not isinstance(max_batch, int) or max_batch < 1:
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
        return cls(runner, tokenizer, _eos_ids(path, cfg, tokenizer), max_batch)

    # -- public -------------------------------------------------------------------------------------------------

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Generate with new weights of the same model from now on, e.g. the policy's `state_dict()` between
        reinforcement-learning steps (Hugging Face names; copied into the runner's dtype and layout)."""
        self.runner = self.runner.with_weights(weights)

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
        string or strings that end a sample;
        constraints: one per prompt (or None), see `Constraint`. Sampling as `spct.sample` (temperature 0 =
        greedy). Semantics of logprobs, stop strings, min_new_tokens and the context: module docstring.
        progress: called with a number of tokens processed: a prompt's length after its prefill, and after each
        step the tokens it generated (one per sample still running); the calls add up to the prompts' tokens plus
        the samples' tokens. An error about one prompt is a `spct.items.ItemError` named prompts[i]."""
        settings = _check_settings(max_new_tokens, min_new_tokens, temperature, top_k, top_p, min_p, stop,
                                   return_logprobs)
        if progress is not None and not callable(progress):
            raise ValueError(f"progress must be a callable taking a token count, or None; got {progress!r}")
        ids = prompt_token_ids(self.tokenizer, prompts, self.vocab_size, self.context)
        ks = _ks(k, len(ids))
        seeds = _seeds(seed, len(ids))
        if constraints is not None and len(constraints) != len(ids):
            raise ValueError(f"constraints must have one entry per prompt ({len(ids)}), got {len(constraints)}")
        outs: list[list[Sample]] = []
        group: list[int] = []
        for i in range(len(ids) + 1):  # prompts in groups of at most max_batch samples (one prompt at least)
            if i == len(ids) or (group and sum(ks[g] for g in group) + ks[i] > self.max_batch):
                outs += self._generate_group([ids[g] for g in group], [ks[g] for g in group], [seeds[g] for g in group],
                                             [None if constraints is None else constraints[g] for g in group],
                                             settings, progress)
                group = []
            if i < len(ids):
                group.append(i)
        return outs

    # -- internals ----------------------------------------------------------------------------------------------

    def _generate_group(self, ids: list[list[int]], ks: list[int], seeds: list[int], constraints: list,
                        st: _Settings, progress: Callable[[int], object] | None):
        runner = self.runner
        device = runner.device
        samples = []
        for p in range(len(ids)):
            room = self.context - len(ids[p])
            samples += [_Live(p, j, len(samples) + j, seeds[p], min(st.max_new_tokens, room), room)
                        for j in range(ks[p])]
        live = samples
        multiple = runner.row_multiple
        own = st.max_new_tokens + _extra_tokens(constraints)
        kv = runner.new_kv([len(p) for p in ids], len(samples) + multiple - 1, own)  # + slots for padding rows
        self.last_kv_bytes = kv.nbytes  # the KV of the last group generated (prompt KV once + the samples' own)
        first = []
        for i, p in enumerate(ids):
            first.append(runner.prefill(torch.tensor(p, device=device), kv, i))
            if progress is not None:
                progress(len(p))
        logits = torch.stack(first)[torch.tensor([s.prompt for s in live], device=device)]
        step = 0
        while True:
            self._choose(logits, live, step, constraints, st)
            if progress is not None:
                progress(len(live))  # one token per live sample
            live_next = [s for s in live if s.finish is None]
            if not live_next:
                break
            step += 1
            logits = self._decode(live_next, ids, kv, step, multiple, len(samples))
            live = live_next
        outs: list[list[Sample]] = [[] for _ in ids]
        for s in samples:
            outs[s.prompt].append(self._output(s, st))
        return outs

    def _decode(self, live: list[_Live], ids, kv: KV, step: int, multiple: int, base: int) -> torch.Tensor:
        """The live samples' next logits (rows padded to `multiple`; padding rows use the slots from `base` on)."""
        rows = len(live)
        pad = -rows % multiple
        tokens = [s.tokens[-1] for s in live] + [0] * pad
        positions = [len(ids[s.prompt]) + step - 1 for s in live] + [0] * pad
        prompts = [s.prompt for s in live] + [0] * pad
        slots = [s.slot for s in live] + [base + i for i in range(pad)]
        own_len = [step] * rows + [1] * pad
        dev = self.runner.device
        as_t = lambda v: torch.tensor(v, dtype=torch.int64, device=dev)  # noqa: E731
        dstep = DecodeStep(as_t(tokens), as_t(positions), as_t(prompts), as_t(slots), as_t(own_len))
        return self.runner.decode(dstep, kv)[:rows]

    def _choose(self, logits: torch.Tensor, live: list[_Live], step: int, constraints: list, st: _Settings) -> None:
        """Picks each live sample's next token from its logits row, appends it and marks finished samples."""
        logprobs = torch.log_softmax(logits.float(), -1) if st.return_logprobs else None
        masked = logits
        if step < st.min_new_tokens and self.eos_token_ids:
            masked = masked.clone()
            masked[:, self.eos_token_ids] = -math.inf
        for r, s in enumerate(live):
            c = constraints[s.prompt]
            if c is None or s.forced:
                continue
            action = c(s.j, tuple(s.tokens))
            if isinstance(action, Force) and len(action.token_ids):
                s.forced.extend(int(t) for t in action.token_ids)
            elif isinstance(action, Allow):
                if masked is logits:
                    masked = masked.clone()
                keep = torch.full_like(masked[r], -math.inf)
                allowed = torch.as_tensor(np.asarray(action.token_ids, dtype=np.int64), device=masked.device)
                keep[allowed] = masked[r, allowed]
                masked[r] = keep
            elif action is not None and not isinstance(action, Force):
                raise TypeError(f"a constraint must return Allow, Force or None, got {type(action).__name__}")
        dev = logits.device
        seeds = torch.tensor([s.seed for s in live], dtype=torch.int64, device=dev)
        offsets = torch.tensor([(s.j << 32) | step for s in live], dtype=torch.int64, device=dev)
        chosen = sample(masked, temperature=st.temperature, top_k=st.top_k, top_p=st.top_p, min_p=st.min_p,
                        seed=seeds, offset=offsets).tolist()
        for r, s in enumerate(live):
            token = s.forced.popleft() if s.forced else chosen[r]
            s.tokens.append(token)
            if logprobs is not None:
                s.logprobs.append(float(logprobs[r, token]))
            s.finish = self._finish_reason(s, st)
            if s.finish is not None and not s.extended and hasattr(constraints[s.prompt], "on_end"):
                self._extend(s, constraints[s.prompt], logprobs, r, st)

    def _extend(self, s: _Live, c, logprobs, r: int, st: _Settings) -> None:
        """Calls c.on_end for a sample that ended by EOS or its budget; forced ids it returns continue it."""
        eos = s.tokens[-1] in self.eos_token_ids
        if not eos and s.finish == "stop":  # a stop string
            return
        s.extended = True
        more = [int(t) for t in (c.on_end(s.j, tuple(s.tokens)) or ())]
        if not more:
            return
        if eos:  # the first forced id takes the EOS's place
            s.tokens[-1] = more.pop(0)
            if logprobs is not None:
                s.logprobs[-1] = float(logprobs[r, s.tokens[-1]])
        s.forced.extend(more)
        s.limit = min(s.limit + c.max_extra_tokens, s.room)
        s.finish = self._finish_reason(s, st)

    def _finish_reason(self, s: _Live, st: _Settings) -> str | None:
        n = len(s.tokens)
        if n >= st.min_new_tokens:
            if s.tokens[-1] in self.eos_token_ids:
                return "stop"
            if st.stop and self._stop_index(s.tokens, st) is not None:
                return "stop"
        return "length" if n >= s.limit else None

    def _stop_index(self, tokens: list[int], st: _Settings) -> int | None:
        """Whether a stop string occurs in the text of the last few tokens (enough tokens for the longest stop
        string: every token holds at least one byte). Called after each token, so an occurrence is new."""
        window = self.tokenizer.decode(tokens[-st.stop_window:], skip_special_tokens=True)
        found = [i for i in (window.find(x) for x in st.stop) if i >= 0]
        return min(found) if found else None

    def _output(self, s: _Live, st: _Settings) -> Sample:
        text = self.tokenizer.decode(s.tokens, skip_special_tokens=True)
        if st.stop and s.finish == "stop" and s.tokens[-1] not in self.eos_token_ids:
            # the stop string that ended the sample: the first one that ends past the min_new_tokens text
            floor = len(self.tokenizer.decode(s.tokens[: st.min_new_tokens], skip_special_tokens=True))
            ends = [(e, x) for x in st.stop for e in _ends(text, x) if e > floor]
            if ends:
                end, x = min(ends)
                text = text[: end - len(x)]
        return Sample(s.tokens, text, s.finish or "length", s.logprobs if st.return_logprobs else None)


def _ends(text: str, x: str) -> list[int]:
    """End offsets of every occurrence of x in text."""
    ends, i = [], text.find(x)
    while i >= 0:
        ends.append(i + len(x))
        i = text.find(x, i + 1)
    return ends


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _ks(k, prompts: int) -> list[int]:
    if _is_int(k):
        if k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        return [k] * prompts
    ks = list(k) if isinstance(k, Sequence) else [k]
    if len(ks) != prompts or not all(_is_int(x) and x >= 1 for x in ks):
        raise ValueError(f"k must be an int >= 1 or one per prompt ({prompts}), got {k!r}")
    return ks


def _check_settings(max_new_tokens, min_new_tokens, temperature, top_k, top_p, min_p, stop,
                    return_logprobs) -> _Settings:
    is_int = _is_int
    if not is_int(max_new_tokens) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if not is_int(min_new_tokens) or not 0 <= min_new_tokens <= max_new_tokens:
        raise ValueError(f"min_new_tokens must be an int in [0, max_new_tokens = {max_new_tokens}], "
                         f"got {min_new_tokens!r}")
    if not isinstance(temperature, (int, float)) or not temperature >= 0 or math.isinf(temperature):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if not is_int(top_k) or top_k < 0:
        raise ValueError(f"top_k must be an int >= 0 (0 = off), got {top_k!r}")
    if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if not isinstance(min_p, (int, float)) or not 0 <= min_p < 1:
        raise ValueError(f"min_p must be in [0, 1), got {min_p!r}")
    stops = (stop,) if isinstance(stop, str) else tuple(stop)
    for x in stops:
        if not isinstance(x, str) or not x:
            raise ValueError(f"stop strings must be non-empty strings, got {x!r}")
    return _Settings(max_new_tokens, min_new_tokens, float(temperature), top_k, float(top_p), float(min_p), stops,
                     bool(return_logprobs))


def _seeds(seed, prompts: int) -> list[int]:
    seeds = [seed] * prompts if isinstance(seed, int) and not isinstance(seed, bool) else list(seed)
    if len(seeds) != prompts:
        raise ValueError(f"seed must be an int or one int per prompt ({prompts}), got {len(seeds)} seeds")
    for i, x in enumerate(seeds):
        if not isinstance(x, int) or isinstance(x, bool) or not 0 <= x < 2**63:
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
