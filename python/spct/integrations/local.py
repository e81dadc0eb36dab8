"""The GRM as the reward inside other trainers.

TRL (`GRPOTrainer(reward_funcs=[reward])`):

    reward = spct.integrations.GRMReward(spct.GenerativeRewardModel.from_pretrained("smollm2-135m"), k=4)

verl (a custom reward function): `compute_score`, its settings from `custom_reward_function.reward_kwargs`:

    custom_reward_function.path=<spct>/integrations.py custom_reward_function.name=compute_score
    +custom_reward_function.reward_kwargs.k=4 +custom_reward_function.reward_kwargs.force_scores=true

A judgement with no valid sample has no reward; trainers need a number, so it becomes `invalid_reward` (default
0.0), and `last_num_valid` keeps the counts for logging. Small or untrained GRMs rarely write a score group: a call
whose samples are all invalid warns once (pass force_scores=True, or use a trained GRM).
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence

from spct.grm.model import check_reduce

__all__ = ["SETTINGS", "GRMReward", "compute_score"]


def _all_invalid(samples: int, invalid_reward: float) -> str:
    return (f"spct: this call's GRM samples ({samples}) held no valid score group, so its rewards are "
            f"invalid_reward = {invalid_reward}; pass force_scores=True (the scores are then decoded under the score "
            f"grammar) or use a trained GRM. (This warning is given once.)")


def _text(x) -> str:
    """TRL passes strings, or chat messages (lists of {"role", "content"}) for conversational datasets."""
    if isinstance(x, str):
        return x
    return "\n".join(m["content"] for m in x if m.get("role") == "assistant") or "\n".join(m["content"] for m in x)


class GRMReward:
    """A TRL reward function: `reward(prompts, completions, **kwargs) -> list[float]`.

    mode "single": each completion is its own item (one response, scored in the pointwise range);
    "listwise": the completions of one prompt (consecutive equal prompts, as GRPO groups them) form one item, so the
    GRM compares them side by side. k, temperature, max_new_tokens, seed, force_scores, reduce: as `score_batch`
    (each call draws with seed + the call number). A call whose samples are all invalid warns, once per instance."""

    def __init__(self, grm, *, mode: str = "listwise", k: int = 1, temperature: float | None = None,
                 max_new_tokens: int = 512, seed: int = 0, invalid_reward: float = 0.0, force_scores: bool = False,
                 reduce: str = "sum"):
        if mode not in ("single", "listwise"):
            raise ValueError(f"mode must be 'single' or 'listwise', got {mode!r}")
        self.grm, self.mode, self.k, self.temperature = grm, mode, k, temperature
        self.max_new_tokens, self.seed, self.invalid_reward = max_new_tokens, seed, invalid_reward
        self.force_scores, self.reduce = force_scores, check_reduce(reduce)
        self.__name__ = f"spct_grm_{mode}"  # TRL logs reward functions by name
        self.last_num_valid: list[int] = []
        self._calls = 0
        self._warned = False

    def __call__(self, prompts: Sequence, completions: Sequence, **kwargs) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
        queries = [p if isinstance(p, str) else [dict(m) for m in p] for p in prompts]
        texts = [_text(c) for c in completions]
        groups: list[list[int]] = []
        for i in range(len(texts)):
            if self.mode == "listwise" and groups and queries[groups[-1][0]] == queries[i]:
                groups[-1].append(i)
            else:
                groups.append([i])
        items = [(queries[g[0]], [texts[i] for i in g]) for g in groups]
        self._calls += 1
        judged = self.grm.score_batch(items, k=self.k, temperature=self.temperature,
                                      max_new_tokens=self.max_new_tokens, seed=self.seed + self._calls,
                                      force_scores=self.force_scores, reduce=self.reduce)
        rewards = [self.invalid_reward] * len(texts)
        self.last_num_valid = []
        for g, j in zip(groups, judged):
            self.last_num_valid.append(j.num_valid)
            for i, r in zip(g, j.rewards):
                rewards[i] = self.invalid_reward if math.isnan(r) else float(r)
        if judged and not any(self.last_num_valid) and not self._warned:
            self._warned = True
            warnings.warn(_all_invalid(self.k * len(judged), self.invalid_reward), stacklevel=2)
        return rewards


# compute_score's settings and their defaults; verl passes `custom_reward_function.reward_kwargs` as keyword arguments,
# and a sample's extra_info may override any of them
SETTINGS = {"model": "smollm2-135m", "k": 1, "force_scores": False, "temperature": None, "max_new_tokens": 512,
            "seed": 0, "reduce": "sum", "invalid_reward": 0.0}
_KINDS = {"model": "str", "k": "int", "force_scores": "bool", "temperature": "float", "max_new_tokens": "int",
          "seed": "int", "reduce": "str", "invalid_reward": "float"}
_ALLOWED = {"str": "a string", "int": "an int", "bool": "a bool", "float": "a number"}
_LOADED: dict = {}  # model name -> GenerativeRewardModel, loaded once per process
_WARNED: set = set()  # the warnings compute_score gave in this process


def _settings(kwargs: dict, info: dict) -> dict:
    """SETTINGS overridden by the keyword arguments, then by extra_info; values cast (parquet gives numpy types)."""
    unknown = sorted(set(kwargs) - set(SETTINGS))
    if unknown and "kwargs" not in _WARNED:
        _WARNED.add("kwargs")
        warnings.warn(f"spct compute_score ignores the keyword arguments {unknown}; it takes {sorted(SETTINGS)}",
                      stacklevel=3)
    out = {}
    for key, default in SETTINGS.items():
        value = info.get(key, kwargs.get(key, default))
        out[key] = _cast(value, _KINDS[key], key == "temperature")
        if out[key] is _BAD:
            source = "extra_info" if key in info else "the keyword arguments"
            raise ValueError(f"compute_score: {key} = {value!r} (from {source}) must be {_ALLOWED[_KINDS[key]]}"
                             f"{' or None' if key == 'temperature' else ''}")
    return out


_BAD = object()


def _cast(value, kind: str, none_ok: bool):
    """value as a Python str, int, bool or float (numpy scalars from parquet included), or _BAD."""
    if value is None:
        return None if none_ok else _BAD
    is_bool = isinstance(value, bool) or getattr(getattr(value, "dtype", None), "kind", "") == "b"
    if kind == "bool":
        return bool(value) if is_bool else _BAD
    if kind == "str":
        return value if isinstance(value, str) else _BAD
    if is_bool:
        return _BAD
    if kind == "int":
        return int(value) if isinstance(value, numbers.Integral) else _BAD
    return float(value) if isinstance(value, numbers.Real) else _BAD


def compute_score(data_source: str, solution_str: str, ground_truth=None, extra_info: dict | None = None,
                  **kwargs) -> float:
    """verl's custom reward signature: the GRM's reward for one response. The question comes from
    extra_info["question"] (or "prompt"). Settings (`SETTINGS`: model, k, force_scores, temperature,
    max_new_tokens, seed, reduce, invalid_reward, as `score_batch`) come from the keyword arguments (verl's
    `custom_reward_function.reward_kwargs`), and extra_info overrides them per sample. The model is loaded once per
    process. A call whose samples are all invalid returns invalid_reward, and warns once per process."""
    info = dict(extra_info or {})
    query = info.get("question") if info.get("question") is not None else info.get("prompt")
    if query is None or len(query) == 0:
        raise ValueError("compute_score needs the question in extra_info['question'] (or extra_info['prompt'])")
    st = _settings(kwargs, info)
    check_reduce(st["reduce"])
    if st["model"] not in _LOADED:
        from spct.grm import GenerativeRewardModel

        _LOADED[st["model"]] = GenerativeRewardModel.from_pretrained(st["model"])
    j = _LOADED[st["model"]].score(query if isinstance(query, str) else [dict(m) for m in query], [solution_str],
                                   k=st["k"], force_scores=st["force_scores"], temperature=st["temperature"],
                                   max_new_tokens=st["max_new_tokens"], seed=st["seed"], reduce=st["reduce"])
    if j.num_valid == 0 and "invalid" not in _WARNED:
        _WARNED.add("invalid")
        warnings.warn(_all_invalid(st["k"], st["invalid_reward"]), stacklevel=2)
    return st["invalid_reward"] if math.isnan(j.rewards[0]) else float(j.rewards[0])
