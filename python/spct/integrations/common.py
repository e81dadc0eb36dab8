"""What the local and the remote reward functions share: a trainer's batch as GRM items and the judgements back as
one reward per completion (`BatchReward`), and compute_score's settings from verl's keyword arguments and a sample's
extra_info (`resolve_settings`)."""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence

from spct.grm.model import check_reduce

__all__ = ["JUDGING", "KINDS", "BatchReward", "all_invalid_message", "question_of", "resolve_settings", "text_of"]

MODES = ("single", "listwise")


def all_invalid_message(samples: int, invalid_reward: float) -> str:
    return (f"spct: this call's GRM samples ({samples}) held no valid score group, so its rewards are "
            f"invalid_reward = {invalid_reward}; pass force_scores=True (the scores are then decoded under the score "
            f"grammar) or use a trained GRM. (This warning is given once.)")


def text_of(x) -> str:
    """TRL passes strings, or chat messages (lists of {"role", "content"}) for conversational datasets."""
    if isinstance(x, str):
        return x
    return "\n".join(m["content"] for m in x if m.get("role") == "assistant") or "\n".join(m["content"] for m in x)


class BatchReward:
    """The TRL side of a GRM reward function: `batch` turns a call's prompts and completions into items (in mode
    "listwise" consecutive completions of one prompt form one item, as GRPO groups them; in "single" each is its own
    item) and the call's seed (seed + the call number); `spread` gives each completion its reward from the items'
    judgements, invalid_reward where no sample was valid, and warns once per instance when a whole call was
    invalid."""

    def __init__(self, *, mode: str, k: int, temperature: float | None, max_new_tokens: int, seed: int,
                 invalid_reward: float, force_scores: bool, reduce: str):
        if mode not in MODES:
            raise ValueError(f"mode must be 'single' or 'listwise', got {mode!r}")
        self.mode, self.k, self.temperature = mode, k, temperature
        self.max_new_tokens, self.seed, self.invalid_reward = max_new_tokens, seed, invalid_reward
        self.force_scores, self.reduce = force_scores, check_reduce(reduce)
        self.__name__ = f"spct_grm_{mode}"  # TRL logs reward functions by name
        self.last_num_valid: list[int] = []
        self._calls = 0
        self._warned = False

    def batch(self, prompts: Sequence, completions: Sequence) -> tuple[list[list[int]], list[tuple], int]:
        """(groups: the completion indices of each item, items: (query, responses) pairs, this call's seed)."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
        queries = [p if isinstance(p, str) else [dict(m) for m in p] for p in prompts]
        texts = [text_of(c) for c in completions]
        groups: list[list[int]] = []
        for i in range(len(texts)):
            if self.mode == "listwise" and groups and queries[groups[-1][0]] == queries[i]:
                groups[-1].append(i)
            else:
                groups.append([i])
        self._calls += 1
        return groups, [(queries[g[0]], [texts[i] for i in g]) for g in groups], self.seed + self._calls

    def spread(self, groups: list[list[int]], judged: Sequence[tuple[Sequence, int]]) -> list[float]:
        """judged: per item, (its rewards in response order, NaN or None where no sample was valid; num_valid)."""
        rewards = [self.invalid_reward] * sum(len(g) for g in groups)
        self.last_num_valid = []
        for g, (item_rewards, num_valid) in zip(groups, judged):
            self.last_num_valid.append(num_valid)
            for i, r in zip(g, item_rewards):
                rewards[i] = self.invalid_reward if r is None or math.isnan(r) else float(r)
        if judged and not any(self.last_num_valid) and not self._warned:
            self._warned = True
            warnings.warn(all_invalid_message(self.k * len(judged), self.invalid_reward), stacklevel=3)
        return rewards


# the judging settings of compute_score and remote_compute_score, and their defaults (as `score_batch`'s); verl passes
# `custom_reward_function.reward_kwargs` as keyword arguments, and a sample's extra_info may override any of them
JUDGING = {"k": 1, "force_scores": False, "temperature": None, "max_new_tokens": 512, "seed": 0, "reduce": "sum",
           "invalid_reward": 0.0}
KINDS = {"model": "str", "k": "int", "force_scores": "bool", "temperature": "float", "max_new_tokens": "int",
         "seed": "int", "reduce": "str", "invalid_reward": "float"}
ALLOWED = {"str": "a string", "int": "an int", "bool": "a bool", "float": "a number"}
_BAD = object()


def resolve_settings(name: str, defaults: dict, kwargs: dict, info: dict, warned: set,
                     also: Sequence[str] = ()) -> dict:
    """defaults overridden by the keyword arguments, then by extra_info (`info`); values cast to their `KINDS`
    (parquet gives numpy types; only "temperature" may be None). A keyword argument that is neither a setting nor in
    `also` warns, once per process (`warned` holds the warnings given)."""
    unknown = sorted(set(kwargs) - set(defaults) - set(also))
    if unknown and "kwargs" not in warned:
        warned.add("kwargs")
        warnings.warn(f"spct {name} ignores the keyword arguments {unknown}; it takes {sorted([*defaults, *also])}",
                      stacklevel=3)
    out = {}
    for key, default in defaults.items():
        value = info.get(key, kwargs.get(key, default))
        out[key] = _cast(value, KINDS[key], key == "temperature")
        if out[key] is _BAD:
            source = "extra_info" if key in info else "the keyword arguments"
            raise ValueError(f"{name}: {key} = {value!r} (from {source}) must be {ALLOWED[KINDS[key]]}"
                             f"{' or None' if key == 'temperature' else ''}")
    return out


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


def question_of(info: dict, name: str):
    """The question of a verl sample: extra_info["question"], else extra_info["prompt"] (text or chat messages)."""
    query = info.get("question") if info.get("question") is not None else info.get("prompt")
    if query is None or len(query) == 0:
        raise ValueError(f"{name} needs the question in extra_info['question'] (or extra_info['prompt'])")
    return query if isinstance(query, str) else [dict(m) for m in query]
