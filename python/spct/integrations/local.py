"""The GRM in this process as the reward inside other trainers.

TRL (`GRPOTrainer(reward_funcs=[reward])`):

    reward = spct.integrations.GRMReward(spct.GenerativeRewardModel.from_pretrained("smollm2-135m"), k=4)

verl (a custom reward function): `compute_score`, its settings from `custom_reward_function.reward_kwargs`:

    custom_reward_function.path=<spct>/integrations/local.py custom_reward_function.name=compute_score
    +custom_reward_function.reward_kwargs.k=4 +custom_reward_function.reward_kwargs.force_scores=true

A judgement with no valid sample has no reward; trainers need a number, so it becomes `invalid_reward` (default
0.0), and `last_num_valid` keeps the counts for logging. Small or untrained GRMs rarely write a score group: a call
whose samples are all invalid warns once (pass force_scores=True, or use a trained GRM).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

from spct.grm.model import check_reduce
from spct.integrations.common import JUDGING, BatchReward, all_invalid_message, question_of, resolve_settings

__all__ = ["SETTINGS", "GRMReward", "compute_score"]


class GRMReward(BatchReward):
    """A TRL reward function: `reward(prompts, completions, **kwargs) -> list[float]`.

    mode "single": each completion is its own item (one response, scored in the pointwise range);
    "listwise": the completions of one prompt (consecutive equal prompts, as GRPO groups them) form one item, so the
    GRM compares them side by side. k, temperature, max_new_tokens, seed, force_scores, reduce: as `score_batch`
    (each call draws with seed + the call number). A call whose samples are all invalid warns, once per instance."""

    def __init__(self, grm, *, mode: str = "listwise", k: int = 1, temperature: float | None = None,
                 max_new_tokens: int = 512, seed: int = 0, invalid_reward: float = 0.0, force_scores: bool = False,
                 reduce: str = "sum"):
        super().__init__(mode=mode, k=k, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed,
                         invalid_reward=invalid_reward, force_scores=force_scores, reduce=reduce)
        self.grm = grm

    def __call__(self, prompts: Sequence, completions: Sequence, **kwargs) -> list[float]:
        groups, items, seed = self.batch(prompts, completions)
        judged = self.grm.score_batch(items, k=self.k, temperature=self.temperature,
                                      max_new_tokens=self.max_new_tokens, seed=seed,
                                      force_scores=self.force_scores, reduce=self.reduce)
        return self.spread(groups, [(j.rewards, j.num_valid) for j in judged])


# compute_score's settings and their defaults: the model, and the judging settings (`JUDGING`)
SETTINGS = {"model": "smollm2-135m", **JUDGING}
_LOADED: dict = {}  # model name -> GenerativeRewardModel, loaded once per process
_WARNED: set = set()  # the warnings compute_score gave in this process


def compute_score(data_source: str, solution_str: str, ground_truth=None, extra_info: dict | None = None,
                  **kwargs) -> float:
    """verl's custom reward signature: the GRM's reward for one response. The question comes from
    extra_info["question"] (or "prompt"). Settings (`SETTINGS`: model, k, force_scores, temperature,
    max_new_tokens, seed, reduce, invalid_reward, as `score_batch`) come from the keyword arguments (verl's
    `custom_reward_function.reward_kwargs`), and extra_info overrides them per sample. The model is loaded once per
    process. A call whose samples are all invalid returns invalid_reward, and warns once per process."""
    info = dict(extra_info or {})
    query = question_of(info, "compute_score")
    st = resolve_settings("compute_score", SETTINGS, kwargs, info, _WARNED)
    check_reduce(st["reduce"])
    if st["model"] not in _LOADED:
        from spct.grm import GenerativeRewardModel

        _LOADED[st["model"]] = GenerativeRewardModel.from_pretrained(st["model"])
    j = _LOADED[st["model"]].score(query, [solution_str],
                                   k=st["k"], force_scores=st["force_scores"], temperature=st["temperature"],
                                   max_new_tokens=st["max_new_tokens"], seed=st["seed"], reduce=st["reduce"])
    if j.num_valid == 0 and "invalid" not in _WARNED:
        _WARNED.add("invalid")
        warnings.warn(all_invalid_message(st["k"], st["invalid_reward"]), stacklevel=2)
    return st["invalid_reward"] if math.isnan(j.rewards[0]) else float(j.rewards[0])
