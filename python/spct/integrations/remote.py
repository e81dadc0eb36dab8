"""The GRM of a `spct serve` server as the reward inside other trainers (the server's API: docs/serve.md).

TRL (`GRPOTrainer(reward_funcs=[reward])`):

    reward = spct.integrations.RemoteGRMReward("http://127.0.0.1:8000", k=4, force_scores=True)
    reward = spct.integrations.AsyncRemoteGRMReward(["http://gpu0:8000", "http://gpu1:8000"], api_key=KEY)

The trainer's whole batch is one `POST /v1/score` request (in mode "listwise" the consecutive completions of one
prompt form one item); `AsyncRemoteGRMReward` is the same as an async callable, which TRL awaits on its own event
loop, concurrently with its other async reward functions.

verl (a custom reward function): `remote_compute_score`, one sample per request:

    custom_reward_function.path=<spct>/integrations/remote.py custom_reward_function.name=remote_compute_score
    +custom_reward_function.reward_kwargs.url=http://HOST:8000 +custom_reward_function.reward_kwargs.k=4

The server seeds an item by its position in the request, as `score_batch` does, so with the same model and settings
the rewards are GRMReward's and compute_score's, bit for bit. Settings, invalid_reward, `last_num_valid` and the
all-invalid warning are as in spct.integrations.local; the HTTP side (retries, backoff, balancing over several URLs,
errors) is spct.integrations.transport's. The key (api_key, else the environment variable SPCT_API_KEY) is sent as
`Authorization: Bearer KEY`.
"""

from __future__ import annotations

import math
import numbers
import os
import threading
import warnings
from collections.abc import Sequence

from numpy import bool_ as np_bool

from spct.grm.model import check_reduce
from spct.integrations.common import JUDGING, BatchReward, all_invalid_message, question_of, resolve_settings
from spct.integrations.transport import Transport, check_urls

__all__ = ["CONNECTION", "AsyncRemoteGRMReward", "RemoteGRMReward", "remote_compute_score"]

SCORE = "/v1/score"


def check_judging(*, k, temperature, max_new_tokens, seed, force_scores, reduce, invalid_reward) -> dict:
    """The judging settings a request carries, as plain Python values (numpy scalars included); each refused in one
    line naming its value."""
    def is_int(x):
        return isinstance(x, numbers.Integral) and not isinstance(x, bool)

    def is_number(x):
        return isinstance(x, numbers.Real) and not isinstance(x, bool)

    checks = [("k", k, is_int(k) and k >= 1, "an int >= 1"),
              ("temperature", temperature, temperature is None or is_number(temperature) and temperature >= 0,
               "None or a number >= 0"),
              ("max_new_tokens", max_new_tokens, is_int(max_new_tokens) and max_new_tokens >= 1, "an int >= 1"),
              ("seed", seed, is_int(seed) and seed >= 0, "an int >= 0"),
              ("force_scores", force_scores, isinstance(force_scores, (bool, np_bool)), "a bool"),
              ("invalid_reward", invalid_reward, is_number(invalid_reward), "a number")]
    for name, value, ok, allowed in checks:
        if not ok:
            raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return {"k": int(k), "temperature": None if temperature is None else float(temperature),
            "max_new_tokens": int(max_new_tokens), "seed": int(seed), "force_scores": bool(force_scores),
            "reduce": check_reduce(reduce), "invalid_reward": float(invalid_reward)}


def score_body(items: Sequence[tuple], *, k: int, seed: int, temperature: float | None, max_new_tokens: int,
               force_scores: bool, reduce: str) -> dict:
    """The /v1/score request for (query, responses) items."""
    return {"items": [{"query": q, "responses": list(r)} for q, r in items], "k": k, "seed": seed,
            "temperature": None if temperature is None else float(temperature), "max_new_tokens": max_new_tokens,
            "force_scores": force_scores, "reduce": reduce}


def read_judgements(reply, sizes: Sequence[int]) -> list[tuple[list, int]]:
    """A /v1/score reply -> per item (its rewards, None where no sample was valid; num_valid), checked against the
    items' sizes (their numbers of responses)."""
    judgements = reply.get("judgements") if isinstance(reply, dict) else None
    if not isinstance(judgements, list) or len(judgements) != len(sizes):
        got = len(judgements) if isinstance(judgements, list) else "no"
        raise RuntimeError(f"spct server: {got} judgements in the reply to a request of {len(sizes)} items")
    out = []
    for i, (j, size) in enumerate(zip(judgements, sizes)):
        rewards = j.get("rewards") if isinstance(j, dict) else None
        if not isinstance(rewards, list) or len(rewards) != size or not isinstance(j.get("num_valid"), int):
            raise RuntimeError(f"spct server: judgement {i} of the reply is not {{'rewards': [{size} numbers or "
                               f"null], 'num_valid': int}}: {str(j)[:200]}")
        out.append((rewards, j["num_valid"]))
    return out


class RemoteGRMReward(BatchReward):
    """A TRL reward function over `spct serve`: `reward(prompts, completions, **kwargs) -> list[float]`.

    url: a server's root URL ("http://HOST:PORT", a trailing slash allowed), several in a list (or one string,
    comma-separated): each call starts at the next one, and a failed attempt moves on to the next. mode, k,
    temperature, max_new_tokens, seed, force_scores, reduce, invalid_reward: as `GRMReward` (each call is one
    request with seed + the call number). timeout (seconds per request), max_retries, backoff: as
    spct.integrations.transport. `close()` closes the connections."""

    def __init__(self, url: str | Sequence[str], *, api_key: str | None = None, mode: str = "listwise", k: int = 1,
                 temperature: float | None = None, max_new_tokens: int = 512, seed: int = 0,
                 force_scores: bool = False, reduce: str = "sum", invalid_reward: float = 0.0,
                 timeout: float = 600.0, max_retries: int = 5, backoff: float = 0.5):
        super().__init__(mode=mode, **check_judging(k=k, temperature=temperature, max_new_tokens=max_new_tokens,
                                                    seed=seed, force_scores=force_scores, reduce=reduce,
                                                    invalid_reward=invalid_reward))
        key = os.environ.get("SPCT_API_KEY") if api_key is None else api_key
        self.transport = Transport(url, api_key=key, timeout=timeout, max_retries=max_retries, backoff=backoff)

    def request(self, prompts: Sequence, completions: Sequence) -> tuple[list[list[int]], dict | None]:
        """(groups: the completion indices of each item, the /v1/score body, None for an empty batch)."""
        groups, items, seed = self.batch(prompts, completions)
        body = score_body(items, k=self.k, seed=seed, temperature=self.temperature,
                          max_new_tokens=self.max_new_tokens, force_scores=self.force_scores, reduce=self.reduce)
        return groups, body if items else None

    def __call__(self, prompts: Sequence, completions: Sequence, **kwargs) -> list[float]:
        groups, body = self.request(prompts, completions)
        reply = self.transport.post(SCORE, body) if body else {"judgements": []}
        return self.spread(groups, read_judgements(reply, [len(g) for g in groups]))

    def close(self) -> None:
        self.transport.close()


class AsyncRemoteGRMReward(RemoteGRMReward):
    """`RemoteGRMReward` as an async callable: `await reward(prompts, completions)`. TRL runs async reward functions
    on its own event loop, concurrently. `await aclose()` closes the connections."""

    async def __call__(self, prompts: Sequence, completions: Sequence, **kwargs) -> list[float]:
        groups, body = self.request(prompts, completions)
        reply = await self.transport.apost(SCORE, body) if body else {"judgements": []}
        return self.spread(groups, read_judgements(reply, [len(g) for g in groups]))

    async def aclose(self) -> None:
        await self.transport.aclose()


# remote_compute_score's connection settings: from the keyword arguments only (verl's reward_kwargs), never from a
# sample's extra_info, so no data set can send the key to another host
CONNECTION = ("url", "api_key", "timeout", "max_retries", "backoff")
_TRANSPORTS: dict = {}  # (urls, key, timeout, max_retries, backoff) -> Transport, one per process
_LOCK = threading.Lock()
_WARNED: set = set()  # the warnings remote_compute_score gave in this process


def _transport(kwargs: dict) -> Transport:
    url = kwargs.get("url") if kwargs.get("url") is not None else os.environ.get("SPCT_URL")
    if not url:
        raise ValueError("remote_compute_score needs the server's url: reward_kwargs.url=http://HOST:PORT (or a "
                         "list of them), or the environment variable SPCT_URL")
    key = kwargs.get("api_key") if kwargs.get("api_key") is not None else os.environ.get("SPCT_API_KEY")
    options = (kwargs.get("timeout", 600.0), kwargs.get("max_retries", 5), kwargs.get("backoff", 0.5))
    cache_key = (check_urls(url), key, *options)
    with _LOCK:
        if cache_key not in _TRANSPORTS:
            _TRANSPORTS[cache_key] = Transport(cache_key[0], api_key=key, timeout=options[0],
                                               max_retries=options[1], backoff=options[2])
        return _TRANSPORTS[cache_key]


def remote_compute_score(data_source: str, solution_str: str, ground_truth=None, extra_info: dict | None = None,
                         **kwargs) -> float:
    """verl's custom reward signature over a `spct serve` server: the reward of one response, as `compute_score`
    (the question from extra_info["question"] or "prompt"; the judging settings `JUDGING` from the keyword
    arguments, overridden per sample by extra_info), but judged by the server at url (a keyword argument, else the
    environment variable SPCT_URL; a list, or a comma-separated string, balances over several). api_key (else
    SPCT_API_KEY), timeout, max_retries, backoff: as `RemoteGRMReward`; one connection pool per (urls, key, ...)
    per process. A call whose samples are all invalid returns invalid_reward, and warns once per process."""
    info = dict(extra_info or {})
    query = question_of(info, "remote_compute_score")
    st = check_judging(**resolve_settings("remote_compute_score", JUDGING, kwargs, info, _WARNED, also=CONNECTION))
    transport = _transport(kwargs)
    body = score_body([(query, [solution_str])], **{k: v for k, v in st.items() if k != "invalid_reward"})
    [(rewards, num_valid)] = read_judgements(transport.post(SCORE, body), [1])
    if num_valid == 0 and "invalid" not in _WARNED:
        _WARNED.add("invalid")
        warnings.warn(all_invalid_message(st["k"], st["invalid_reward"]), stacklevel=2)
    r = rewards[0]
    return st["invalid_reward"] if r is None or math.isnan(r) else float(r)
