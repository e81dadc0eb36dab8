"""The GRM as a reward function for TRL and verl, called as those trainers call it."""

from __future__ import annotations

import math

import pytest

import spct
from spct.integrations import GRMReward, compute_score


@pytest.fixture(scope="module")
def grm(default_model_dir):
    return spct.GenerativeRewardModel.from_pretrained(str(default_model_dir))


def test_listwise_groups_the_completions_of_a_prompt(grm):
    reward = GRMReward(grm, mode="listwise", k=2, max_new_tokens=8)
    out = reward(["What is 2 + 2?", "What is 2 + 2?", "Name a color."], ["4", "5", "Blue"])
    assert len(out) == 3 and all(isinstance(x, float) and math.isfinite(x) for x in out)
    assert len(reward.last_num_valid) == 2 and reward.__name__ == "spct_grm_listwise"


def test_single_mode_and_chat_messages(grm):
    reward = GRMReward(grm, mode="single", max_new_tokens=8, invalid_reward=-1.0)
    prompts = [[{"role": "user", "content": "Say hi."}]] * 2
    completions = [[{"role": "assistant", "content": "Hi!"}], [{"role": "assistant", "content": "No."}]]
    out = reward(prompts, completions)
    assert len(out) == 2 and len(reward.last_num_valid) == 2
    assert all(x == -1.0 for x, n in zip(out, reward.last_num_valid) if n == 0)
    with pytest.raises(ValueError, match="mode must be"):
        GRMReward(grm, mode="pairwise")
    with pytest.raises(ValueError, match="2 prompts for 1 completions"):
        reward(["a", "b"], ["c"])


def test_verl_compute_score(default_model_dir):
    score = compute_score("gsm8k", "The answer is 4.", "4",
                          {"question": "What is 2 + 2?", "model": str(default_model_dir), "max_new_tokens": 8})
    assert isinstance(score, float) and math.isfinite(score)
    with pytest.raises(ValueError, match="needs the question"):
        compute_score("gsm8k", "4", "4", {})
