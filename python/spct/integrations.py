"""The GRM as the reward inside other trainers.

TRL (`GRPOTrainer(reward_funcs=[reward])`):

    reward = spct.integrations.GRMReward(spct.GenerativeRewardModel.from_pretrained("smollm2-135m"), k=4)

verl (a custom reward function, `custom_reward_function.path=... name=compute_score`): `compute_score`.

A judgement with no valid sample has no reward; trainers need a number, so it becomes `invalid_reward` (default
0.0), and `last_num_valid` keeps the counts for logging.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["GRMReward", "compute_score"]


def _text(x) -> str:
    """TRL passes strings, or chat messages (lists of {"role", "content"}) for conversational datasets."""
    if isinstance(x, str):
        return x
    return "\n".join(m["content"] for m in x if m.get("role") == "assistant") or "\n".join(m["content"] for m in x)


class GRMReward:
    """A TRL reward function: `reward(prompts, completions, **kwargs) -> list[float]`.

    mode "single": each completion is its own item (one response, scored in the pointwise range);
    "listwise": the completions of one prompt (consecutive equal prompts, as GRPO groups them) form one item, so the
    GRM compares them side by side. k, temperature, max_new_tokens, seed, force_scores: as `score_batch` (each
    call draws with seed + the call number)."""

    def __init__(self, grm, *, mode: str = "listwise", k: int = 1, temperature: float | None = None,
                 max_new_tokens: int = 512, seed: int = 0, invalid_reward: float = 0.0, force_scores: bool = False):
        if mode not in ("single", "listwise"):
            raise ValueError(f"mode must be 'single' or 'listwise', got {mode!r}")
        self.grm, self.mode, self.k, self.temperature = grm, mode, k, temperature
        self.max_new_tokens, self.seed, self.invalid_reward = max_new_tokens, seed, invalid_reward
        self.force_scores = force_scores
        self.__name__ = f"spct_grm_{mode}"  # TRL logs reward functions by name
        self.last_num_valid: list[int] = []
        self._calls = 0

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
                                      force_scores=self.force_scores)
        rewards = [self.invalid_reward] * len(texts)
        self.last_num_valid = []
        for g, j in zip(groups, judged):
            self.last_num_valid.append(j.num_valid)
            for i, r in zip(g, j.rewards):
                rewards[i] = self.invalid_reward if math.isnan(r) else float(r)
        return rewards


_DEFAULT: dict = {}


def compute_score(data_source: str, solution_str: str, ground_truth=None, extra_info: dict | None = None) -> float:
    """verl's custom reward signature: the GRM's reward for one response. The question comes from
    extra_info["question"] (or "prompt"); extra_info may also set "model" (default smollm2-135m), "k" and
    "max_new_tokens". The model is loaded once per process."""
    info = extra_info or {}
    query = info.get("question") or info.get("prompt")
    if not query:
        raise ValueError("compute_score needs the question in extra_info['question'] (or extra_info['prompt'])")
    model = info.get("model", "smollm2-135m")
    if model not in _DEFAULT:
        from spct.grm import GenerativeRewardModel

        _DEFAULT[model] = GenerativeRewardModel.from_pretrained(model)
    j = _DEFAULT[model].score(query, [solution_str], k=int(info.get("k", 1)),
                              max_new_tokens=int(info.get("max_new_tokens", 512)))
    return 0.0 if math.isnan(j.rewards[0]) else float(j.rewards[0])
