"""What decides a sample's tokens, for both of the engine's loops (the online scheduler and the transformers slow
path): the sampled or constrained choice of each next token, the stop rules, and the finished `Sample`.

Randomness: sample j of a request draws its token at step t through `spct.sample` keyed by (the request's seed,
offset j * 2^32 + t) and nothing else, so a request gives the same samples whatever else is in flight.

Choices where the usual engines differ, spelled out:
- `logprobs` are the model's own: log_softmax of the raw logits (before temperature, masks and constraints), as
  vLLM returns by default; one per generated token.
- A stop string ends the sample; `text` is cut just before it, `token_ids` keep the token that completed it. EOS
  ends a sample too, kept in `token_ids`, not in `text` (special tokens are skipped).
- Before `min_new_tokens` tokens, EOS is masked out and stop strings are not matched.
- A prompt that fits the context but leaves fewer than `max_new_tokens` positions stops at the context with
  finish_reason "length".
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from spct.ops.sample import sample

__all__ = ["Allow", "Constraint", "Force", "Live", "Request", "Sample", "Settings", "TokenRules", "check_settings",
           "extra_tokens", "int64s", "is_int"]


@dataclass
class Sample:
    """One generated sample: token ids (generated only), decoded text, "stop" or "length", optional logprobs, and
    its index j among its request's k samples."""

    token_ids: list[int]
    text: str
    finish_reason: str
    logprobs: list[float] | None = None
    index: int = 0


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
# the sample may run max_extra_tokens tokens past max_new_tokens (within the context).
Constraint = Callable[[int, Sequence[int]], "Allow | Force | None"]


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def extra_tokens(constraint) -> int:
    """Tokens past max_new_tokens that a constraint's on_end may add to a sample."""
    if constraint is None or not hasattr(constraint, "on_end"):
        return 0
    n = getattr(constraint, "max_extra_tokens", None)
    if not is_int(n) or n < 0:
        raise ValueError(f"a constraint with on_end needs max_extra_tokens, an int >= 0; got {n!r}")
    return n


@dataclass(frozen=True)
class Settings:
    """The sampling settings of one request (`Engine.generate`'s keyword arguments)."""

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


def check_settings(max_new_tokens, min_new_tokens, temperature, top_k, top_p, min_p, stop,
                   return_logprobs) -> Settings:
    """The settings, or a ValueError naming the first bad one and what is allowed."""
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
    return Settings(max_new_tokens, min_new_tokens, float(temperature), top_k, float(top_p), float(min_p), stops,
                    bool(return_logprobs))


@dataclass(eq=False)
class Request:
    """One prompt and how to sample it: k samples, a seed, settings, an optional constraint. `error` is set when
    its constraint raised; the loop then fails this request alone."""

    ids: list[int]
    k: int
    seed: int
    settings: Settings
    constraint: Constraint | None = None
    error: BaseException | None = None


@dataclass(eq=False)
class Live:
    """Bookkeeping of one sample while it generates."""

    req: Request
    j: int  # sample index within its request
    limit: int  # max tokens (max_new_tokens, or fewer near the context)
    room: int = 1 << 62  # positions left in the context after the prompt
    extended: bool = False  # on_end was called
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    forced: deque = field(default_factory=deque)
    finish: str | None = None


def int64s(values: list[int], device: torch.device) -> torch.Tensor:
    """A list of ints as an int64 tensor (through numpy: a few us where torch.tensor takes 20-80 us right after a
    step's layer loop has streamed the weights through the caches)."""
    return torch.from_numpy(np.array(values, dtype=np.int64)).to(device)


def _sampling(rows: Sequence[Live], device: torch.device) -> dict:
    """sample()'s parameters for the rows: a scalar where every row has the same value (one request's k samples:
    fewer tensors to make and check each step), else one value per row."""
    def param(values: list, dtype: torch.dtype):
        return values[0] if values.count(values[0]) == len(values) else torch.tensor(values, dtype=dtype,
                                                                                      device=device)
    st = [s.req.settings for s in rows]
    return {"temperature": param([x.temperature for x in st], torch.float32),
            "top_k": param([x.top_k for x in st], torch.int64), "top_p": param([x.top_p for x in st], torch.float32),
            "min_p": param([x.min_p for x in st], torch.float32),
            "seed": param([s.req.seed for s in rows], torch.int64),
            "offset": int64s([(s.j << 32) | len(s.tokens) for s in rows], device)}


class TokenRules:
    """Token choice, stop rules and outputs, for a tokenizer and its end-of-sequence ids."""

    def __init__(self, tokenizer, eos_token_ids: Sequence[int]):
        self.tokenizer = tokenizer
        self.eos_token_ids = sorted(set(eos_token_ids))
        self._eos_on: dict[torch.device, torch.Tensor] = {}

    def _eos(self, device: torch.device) -> torch.Tensor:
        """The EOS ids as an int64 tensor on device, made once. Why: made each step, after the layer loop has
        streamed the weights through the caches, it cost 15-95 us."""
        eos = self._eos_on.get(device)
        if eos is None:
            eos = self._eos_on[device] = torch.tensor(self.eos_token_ids, dtype=torch.int64, device=device)
        return eos

    def choose(self, logits: torch.Tensor, rows: Sequence[Live]) -> None:
        """logits: (R, V), row r the next-token logits of sample rows[r]. Picks each sample's next token, appends it
        and marks finished samples. A constraint that raises (or answers something else than Allow, Force or None)
        sets its request's `error`; that row then chooses nothing."""
        wants_logprobs = any(s.req.settings.return_logprobs for s in rows)
        logprobs = torch.log_softmax(logits.float(), -1) if wants_logprobs else None
        masked = logits
        short = [r for r, s in enumerate(rows) if len(s.tokens) < s.req.settings.min_new_tokens]
        if short and self.eos_token_ids:  # EOS is masked for every row below its minimum length in one op
            eos = self._eos(logits.device)
            if len(short) == len(rows):
                masked = logits.index_fill(1, eos, -math.inf)
            else:
                masked = logits.clone()
                masked[int64s(short, logits.device)[:, None], eos] = -math.inf
        for r, s in enumerate(rows):
            masked = self._constrain(masked, logits, r, s)
        chosen = sample(masked, **_sampling(rows, logits.device)).tolist()
        for r, s in enumerate(rows):
            if s.req.error is not None:
                continue
            token = s.forced.popleft() if s.forced else chosen[r]
            s.tokens.append(token)
            if s.req.settings.return_logprobs:
                s.logprobs.append(float(logprobs[r, token]))
            s.finish = self.finish_reason(s)
            if s.finish is not None and not s.extended and hasattr(s.req.constraint, "on_end"):
                self._call(s, self._extend, s, logprobs, r)

    def _constrain(self, masked: torch.Tensor, logits: torch.Tensor, r: int, s: Live) -> torch.Tensor:
        c = s.req.constraint
        if c is None or s.forced or s.req.error is not None:
            return masked
        action = self._call(s, c, s.j, tuple(s.tokens))
        if isinstance(action, Force) and len(action.token_ids):
            s.forced.extend(int(t) for t in action.token_ids)
        elif isinstance(action, Allow):
            masked = masked.clone() if masked is logits else masked
            keep = torch.full_like(masked[r], -math.inf)
            allowed = torch.as_tensor(np.asarray(action.token_ids, dtype=np.int64), device=masked.device)
            keep[allowed] = masked[r, allowed]
            masked[r] = keep
        elif action is not None and not isinstance(action, Force) and s.req.error is None:
            s.req.error = TypeError(f"a constraint must return Allow, Force or None, got {type(action).__name__}")
        return masked

    @staticmethod
    def _call(s: Live, fn, *args):
        """fn(*args), or None with the request's error set when it raises."""
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001 - a user's constraint fails its own request, never the others
            s.req.error = e
            return None

    def _extend(self, s: Live, logprobs, r: int) -> None:
        """Calls on_end for a sample that ended by EOS or its budget; forced ids it returns continue it."""
        c = s.req.constraint
        eos = s.tokens[-1] in self.eos_token_ids
        if not eos and s.finish == "stop":  # a stop string
            return
        s.extended = True
        more = [int(t) for t in (c.on_end(s.j, tuple(s.tokens)) or ())]
        if not more:
            return
        if eos:  # the first forced id takes the EOS's place
            s.tokens[-1] = more.pop(0)
            if s.req.settings.return_logprobs:
                s.logprobs[-1] = float(logprobs[r, s.tokens[-1]])
        s.forced.extend(more)
        s.limit = min(s.limit + c.max_extra_tokens, s.room)
        s.finish = self.finish_reason(s)

    def finish_reason(self, s: Live) -> str | None:
        st = s.req.settings
        n = len(s.tokens)
        if n >= st.min_new_tokens:
            if s.tokens[-1] in self.eos_token_ids:
                return "stop"
            if st.stop and self._stop_found(s.tokens, st):
                return "stop"
        return "length" if n >= s.limit else None

    def _stop_found(self, tokens: list[int], st: Settings) -> bool:
        """Whether a stop string occurs in the text of the last few tokens (enough tokens for the longest stop
        string: every token holds at least one byte). Called after each token, so an occurrence is new."""
        window = self.tokenizer.decode(tokens[-st.stop_window:], skip_special_tokens=True)
        return any(x in window for x in st.stop)

    def output(self, s: Live) -> Sample:
        st = s.req.settings
        text = self.tokenizer.decode(s.tokens, skip_special_tokens=True)
        if st.stop and s.finish == "stop" and s.tokens[-1] not in self.eos_token_ids:
            # the stop string that ended the sample: the first one that ends past the min_new_tokens text
            floor = len(self.tokenizer.decode(s.tokens[: st.min_new_tokens], skip_special_tokens=True))
            ends = [(e, x) for x in st.stop for e in _ends(text, x) if e > floor]
            if ends:
                end, x = min(ends)
                text = text[: end - len(x)]
        return Sample(s.tokens, text, s.finish or "length", s.logprobs if st.return_logprobs else None, s.j)


def _ends(text: str, x: str) -> list[int]:
    """End offsets of every occurrence of x in text."""
    ends, i = [], text.find(x)
    while i >= 0:
        ends.append(i + len(x))
        i = text.find(x, i + 1)
    return ends
