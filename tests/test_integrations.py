"""The GRM as a reward function for TRL and verl, called as those trainers call it."""

from __future__ import annotations

import math
import warnings

import pytest

import spct
from spct.integrations import local
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


def _invalid_warnings(caught) -> int:
    return sum("pass force_scores=True" in str(w.message) for w in caught)


def test_verl_settings_come_from_reward_kwargs_and_extra_info(default_model_dir, monkeypatch):
    """verl passes custom_reward_function.reward_kwargs as keyword arguments; extra_info overrides them per sample
    (numpy scalars, as parquet gives them, included). A call with no valid sample warns, once per process."""
    import numpy as np

    monkeypatch.setattr(local, "_WARNED", set())
    kw = {"model": str(default_model_dir), "max_new_tokens": 8, "invalid_reward": -1.0}
    info = {"question": "What is 2 + 2?"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        free = [compute_score("gsm8k", "4", None, info, **kw) for _ in range(2)]
    assert free == [-1.0, -1.0] and _invalid_warnings(caught) == 1  # 8 free tokens never hold a score group
    forced = compute_score("gsm8k", "4", None, info, force_scores=True, **kw)
    assert 1 <= forced <= 10  # one forced sample: a valid score
    per_sample = compute_score("gsm8k", "4", None, {**info, "force_scores": np.bool_(True), "k": np.int64(2)}, **kw)
    assert 2 <= per_sample <= 20  # extra_info turned forcing on, with k = 2 samples summed
    mean = compute_score("gsm8k", "4", None, {**info, "force_scores": True, "k": 2, "reduce": "mean"}, **kw)
    assert mean == per_sample / 2  # the same seeded samples, averaged
    assert compute_score("gsm8k", "4", None, {**info, "force_scores": False}, force_scores=True, **kw) == -1.0
    with pytest.raises(ValueError, match=r"compute_score: k = 'two' \(from extra_info\) must be an int"):
        compute_score("gsm8k", "4", None, {**info, "k": "two"}, **kw)
    with pytest.raises(ValueError, match="reduce must be one of 'sum', 'mean', got 'max'"):
        compute_score("gsm8k", "4", None, info, reduce="max", **kw)
    with pytest.warns(UserWarning, match=r"ignores the keyword arguments \['force_score'\]"):
        compute_score("gsm8k", "4", None, info, force_score=True, **kw)


def test_trl_reward_warns_once_and_takes_reduce(grm):
    free = GRMReward(grm, mode="listwise", k=2, max_new_tokens=8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            assert free(["What is 2 + 2?"] * 2, ["4", "5"]) == [0.0, 0.0] and free.last_num_valid == [0]
    assert _invalid_warnings(caught) == 1
    total = GRMReward(grm, k=2, max_new_tokens=8, force_scores=True)(["What is 2 + 2?"] * 2, ["4", "5"])
    mean = GRMReward(grm, k=2, max_new_tokens=8, force_scores=True, reduce="mean")(["What is 2 + 2?"] * 2, ["4", "5"])
    assert mean == [r / 2 for r in total] and all(1 <= r <= 10 for r in mean)
    with pytest.raises(ValueError, match="reduce must be one of"):
        GRMReward(grm, reduce="median")


def run_grpo(reward_func, tokenizer, output_dir):
    """TRL's real GRPOTrainer, 2 optimizer steps on the CPU: a tiny Llama policy built here (the tokenizer's vocab),
    4 prompts, 2 completions each. Returns (the trainer, the policy, its parameters before training)."""
    import torch
    import trl
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = tokenizer
    policy = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                          max_position_embeddings=512, bos_token_id=tok.bos_token_id,
                                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    data = Dataset.from_dict({"prompt": ["What is 2 + 2?", "Name a primary color.", "Say hello in French.",
                                         "What is the capital of Italy?"]})
    args = trl.GRPOConfig(output_dir=str(output_dir), max_steps=2, per_device_train_batch_size=2,
                          num_generations=2, max_completion_length=8, learning_rate=1e-2, use_cpu=True,
                          report_to="none", save_strategy="no", logging_steps=1, seed=0, bf16=False)
    trainer = trl.GRPOTrainer(model=policy, reward_funcs=[reward_func], args=args, train_dataset=data,
                              processing_class=tok)
    trainer.train()
    return trainer, policy, before


def check_grpo_run(trainer, policy, before, calls) -> None:
    """2 steps; each call's rewards finite, from k = 2 forced samples of one listwise item per prompt; the reward
    logged; the policy trained. calls: (prompts, completions, rewards, last_num_valid) per reward call."""
    import torch

    assert trainer.state.global_step == 2
    assert calls, "the trainer never called the reward function"
    for prompts, completions, rewards, num_valid in calls:
        assert len(rewards) == len(prompts) == len(completions)
        assert all(math.isfinite(r) and r >= 2 for r in rewards)  # k = 2 forced samples, each score in 1..10
        assert num_valid == [2] * (len(prompts) // 2)  # one listwise item per prompt's 2 completions
    logged_rewards = [h for h in trainer.state.log_history if "reward" in h]
    assert logged_rewards and all(math.isfinite(h["reward"]) for h in logged_rewards)
    assert any(not torch.equal(before[n], p) for n, p in policy.named_parameters())  # it trained


def test_trl_grpo_trainer_runs_two_steps_with_the_grm_reward(grm, smollm2_tokenizer, tmp_path):
    """TRL's real GRPOTrainer for 2 steps (`run_grpo`), the default model as the listwise GRM reward with forced
    score groups."""
    reward = GRMReward(grm, mode="listwise", k=2, max_new_tokens=16, force_scores=True)
    calls = []

    def logged(prompts, completions, **kwargs):
        out = reward(prompts, completions, **kwargs)
        calls.append((list(prompts), list(completions), out, list(reward.last_num_valid)))
        return out

    logged.__name__ = reward.__name__
    check_grpo_run(*run_grpo(logged, smollm2_tokenizer, tmp_path / "grpo"), calls)
