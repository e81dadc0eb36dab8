"""Engine: greedy decoding equals transformers token for token (fp32), seeded sampling is batch-invariant,
logprobs match transformers' log-softmax, stop / min_new_tokens / constraints, bad input.

Prompts are real text: GRM judging prompts whose responses are Python standard-library sources, cut to lengths from
20 to 1,500 tokens (the same on every machine with this Python, nothing to download)."""

from __future__ import annotations

import inspect
import json
import math

import pytest
import torch
from conftest import TOLERANCES

import spct
from spct.engine import Allow, Force
from spct.items import ItemError

NEW_TOKENS = 24
LENGTHS = [20, 35, 60, 120, 250, 400, 600, 800, 1000, 1200, 1350, 1500]
MODULES = ["textwrap", "shlex", "heapq", "bisect", "fractions", "statistics", "json.encoder", "string", "calendar",
           "difflib", "queue", "copy"]
QUERIES = ["Review this code for correctness and clarity.", "Which implementation is easier to maintain?",
           "Explain what this module does to a beginner.", "Find a bug in the following code, if there is one."]


def _grm_prompt(i: int) -> str:
    import importlib

    a = inspect.getsource(importlib.import_module(MODULES[i % len(MODULES)]))
    b = inspect.getsource(importlib.import_module(MODULES[(i + 5) % len(MODULES)]))
    return (f"You are a skilled judge. Read the query and both responses, write your principles and a critique, "
            f"then score each response from 1 to 10.\n\n[Query]\n{QUERIES[i % len(QUERIES)]}\n\n"
            f"[Response 1]\n{a[:2500]}\n\n[Response 2]\n{b[:4000]}\n")


@pytest.fixture(scope="module")
def tokenizer(default_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_dir)


@pytest.fixture(scope="module")
def prompts(tokenizer) -> list[list[int]]:
    out = []
    for i, n in enumerate(LENGTHS):
        ids = tokenizer(_grm_prompt(i)).input_ids
        assert len(ids) >= n, (i, len(ids))
        out.append(ids[:n])
    return out


@pytest.fixture(scope="module")
def hf_model(default_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def engine32(default_model_dir):
    return spct.Engine.from_pretrained(default_model_dir, dtype="float32")


@pytest.fixture(scope="module")
def engine16(default_model_dir):
    return spct.Engine.from_pretrained(default_model_dir, dtype="bfloat16")


@pytest.fixture(scope="module")
def hf_greedy(hf_model, prompts) -> list[list[int]]:
    outs = []
    with torch.no_grad():
        for ids in prompts:
            gen = hf_model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=NEW_TOKENS,
                                    min_new_tokens=NEW_TOKENS, pad_token_id=2)
            outs.append(gen[0, len(ids):].tolist())
    return outs


def test_greedy_equals_transformers_one_by_one(engine32, prompts, hf_greedy):
    for ids, want in zip(prompts, hf_greedy):
        got = engine32.generate([ids], max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, temperature=0.0)
        assert got[0][0].token_ids == want, len(ids)
        assert got[0][0].finish_reason == "length"


def test_greedy_equals_transformers_batched(engine32, prompts, hf_greedy):
    got = engine32.generate(prompts, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, temperature=0.0)
    assert [g[0].token_ids for g in got] == hf_greedy


def test_greedy_with_k_samples_all_equal(engine32, prompts, hf_greedy):
    picks = [0, 4, 11]
    got = engine32.generate([prompts[i] for i in picks], k=3, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                            temperature=0.0)
    for i, samples in zip(picks, got):
        assert len(samples) == 3
        assert all(s.token_ids == hf_greedy[i] for s in samples), i


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_seeded_sampling_is_the_same_alone_and_in_a_batch(request, prompts, dtype):
    engine = request.getfixturevalue("engine32" if dtype == "float32" else "engine16")
    kw = {"max_new_tokens": 20, "temperature": 0.9, "top_p": 0.95, "top_k": 100}
    alone = engine.generate([prompts[3]], k=3, seed=[77], **kw)[0]
    batch = engine.generate([prompts[1], prompts[3], prompts[6]], k=3, seed=[5, 77, 9], **kw)
    assert [s.token_ids for s in batch[1]] == [s.token_ids for s in alone]
    assert len({tuple(s.token_ids) for s in alone}) > 1  # the k samples differ: each has its own stream
    again = engine.generate([prompts[3]], k=3, seed=77, **kw)[0]
    assert [s.token_ids for s in again] == [s.token_ids for s in alone]
    other = engine.generate([prompts[3]], k=3, seed=78, **kw)[0]
    assert [s.token_ids for s in other] != [s.token_ids for s in alone]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("lo, rows", [(0, 1), (0, 256), (300, 256), (512, 37)])
def test_native_chunk_attention_equals_sdpa(engine32, dtype, lo, rows):
    """Prefill's causal chunk attention through the native kernel equals torch's SDPA with the same mask."""
    if not spct.ops.prefix_attention.native_cpu():
        pytest.skip("the native CPU module is not built")
    runner, c = engine32.runner, engine32.runner.config
    g = torch.Generator().manual_seed(lo + rows)
    q = torch.randn(rows, c.num_heads, c.head_dim, generator=g).to(dtype)
    keys = torch.randn(lo + rows, c.num_kv_heads, c.head_dim, generator=g).to(dtype)
    values = torch.randn(lo + rows, c.num_kv_heads, c.head_dim, generator=g).to(dtype)
    got = runner._chunk_attention_native(q, keys, values, lo)
    want = runner._chunk_attention_sdpa(q.float(), keys.float(), values.float(), lo)
    torch.testing.assert_close(got.float(), want, **TOLERANCES[dtype])


def test_logprobs_match_transformers_log_softmax(engine32, hf_model, prompts):
    ids = prompts[2]
    out = engine32.generate([ids], max_new_tokens=12, temperature=0.7, seed=3, return_logprobs=True)[0][0]
    with torch.no_grad():
        logits = hf_model(torch.tensor([ids + out.token_ids])).logits[0].float()
    want = torch.log_softmax(logits, -1)[len(ids) - 1: -1].gather(1, torch.tensor(out.token_ids)[:, None])[:, 0]
    torch.testing.assert_close(torch.tensor(out.logprobs), want, **TOLERANCES[torch.float32])


def test_strings_are_tokenized_like_transformers(engine32, tokenizer):
    text = "The capital of France is"
    a = engine32.generate([text], max_new_tokens=5, temperature=0.0)
    b = engine32.generate([tokenizer(text).input_ids], max_new_tokens=5, temperature=0.0)
    assert a[0][0].token_ids == b[0][0].token_ids
    assert a[0][0].text == tokenizer.decode(a[0][0].token_ids, skip_special_tokens=True)


def test_stop_strings_and_min_new_tokens(engine32, prompts, tokenizer):
    free = engine32.generate([prompts[0]], max_new_tokens=30, temperature=0.0)[0][0]
    text = free.text
    assert len(text) > 6
    stop = text[3:6]  # a string the greedy continuation holds
    got = engine32.generate([prompts[0]], max_new_tokens=30, temperature=0.0, stop=[stop, "\x00never"])[0][0]
    assert got.finish_reason == "stop" and stop not in got.text and text.startswith(got.text)
    assert got.token_ids == free.token_ids[: len(got.token_ids)]
    assert stop in tokenizer.decode(got.token_ids)
    # min_new_tokens: no stop before it, and EOS is masked out
    long = engine32.generate([prompts[0]], max_new_tokens=40, min_new_tokens=40, temperature=0.0)[0][0]
    assert len(long.token_ids) == 40 and long.finish_reason == "length"
    assert all(t not in engine32.eos_token_ids for t in long.token_ids)


def test_eos_ends_a_sample(engine32):
    eos = engine32.eos_token_ids[0]
    force_eos = lambda j, toks: Force([eos]) if len(toks) == 3 else None  # noqa: E731
    got = engine32.generate(["Hello"], k=2, max_new_tokens=10, temperature=0.0, constraints=[force_eos])[0]
    for s in got:
        assert s.finish_reason == "stop" and len(s.token_ids) == 4 and s.token_ids[-1] == eos


def test_constraints_allow_and_force(engine16, tokenizer):
    digits = [tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)]
    forced = tokenizer("Score: ", add_special_tokens=False).input_ids
    seen = []

    def constraint(j, tokens):
        seen.append((j, len(tokens)))
        if len(tokens) == 0:
            return Force(forced)
        if len(tokens) >= len(forced):
            return Allow(digits)
        return None

    got = engine16.generate(["Rate the answer."], k=3, max_new_tokens=len(forced) + 4, temperature=1.0, seed=1,
                            constraints=[constraint], return_logprobs=True)[0]
    for s in got:
        assert s.token_ids[: len(forced)] == forced
        assert all(t in digits for t in s.token_ids[len(forced):])
        assert len(s.logprobs) == len(s.token_ids) and all(lp <= 0 for lp in s.logprobs)
    # while forced tokens are pending the constraint is not asked
    assert sorted({n for _, n in seen}) == [0, *range(len(forced), len(forced) + 4)]
    free = engine16.generate(["Rate the answer."], k=3, max_new_tokens=4, temperature=1.0, seed=1,
                             constraints=[None])
    assert len(free[0]) == 3


class _Extend:
    """A constraint that extends each sample once, when it ends, by forced ids."""

    def __init__(self, extra, max_extra_tokens, eos_at=None, eos=None):
        self.extra, self.max_extra_tokens, self.eos_at, self.eos = extra, max_extra_tokens, eos_at, eos
        self.ended = []

    def on_end(self, j, ids):
        self.ended.append((j, list(ids)))
        return self.extra

    def __call__(self, j, ids):
        return Force([self.eos]) if self.eos_at is not None and len(ids) == self.eos_at else None


def test_on_end_continues_a_sample_with_its_kv(engine32, prompts):
    free = engine32.generate([prompts[1]], max_new_tokens=8, min_new_tokens=8, temperature=0.0)[0][0]
    extra = [28, 216]
    c = _Extend(extra, max_extra_tokens=6)
    got = engine32.generate([prompts[1]], max_new_tokens=8, min_new_tokens=8, temperature=0.0, constraints=[c])[0][0]
    assert c.ended == [(0, free.token_ids)]  # called once, at the budget
    assert got.token_ids[:10] == free.token_ids + extra and len(got.token_ids) == 14 and got.finish_reason == "length"
    # the tokens after the forced ones are the greedy continuation of everything so far: the KV is right
    cont = engine32.generate([prompts[1] + free.token_ids + extra], max_new_tokens=4, min_new_tokens=4,
                             temperature=0.0)[0][0]
    assert got.token_ids[10:] == cont.token_ids


def test_on_end_replaces_the_eos(engine32, prompts):
    eos = engine32.eos_token_ids[0]
    c = _Extend([28, 216, 33], max_extra_tokens=3, eos_at=3, eos=eos)
    got = engine32.generate([prompts[0]], k=2, max_new_tokens=10, temperature=0.0, constraints=[c])[0]
    assert sorted(j for j, _ in c.ended) == [0, 1] and all(ids[-1] == eos and len(ids) == 4 for _, ids in c.ended)
    for s in got:  # the EOS is gone; 3 free + 3 forced, then the budget (3 + 1 + 3 extra = max 13) or EOS
        assert s.token_ids[3:6] == [28, 216, 33] and eos not in s.token_ids[:6]
    none = _Extend(None, max_extra_tokens=3, eos_at=3, eos=eos)
    kept = engine32.generate([prompts[0]], max_new_tokens=10, temperature=0.0, constraints=[none])[0][0]
    assert kept.token_ids[-1] == eos and len(kept.token_ids) == 4 and kept.finish_reason == "stop"
    with pytest.raises(ValueError, match="max_extra_tokens, an int >= 0"):
        engine32.generate([prompts[0]], max_new_tokens=4, constraints=[_Extend([1], max_extra_tokens=None)])


def test_load_weights_generates_with_a_training_models_weights(default_model_dir, prompts):
    """A policy changed in place (as an optimizer does): after load_weights the engine decodes as transformers
    does with the changed model, and later in-place changes do not leak into the engine."""
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32).eval()
    engine = spct.Engine.from_pretrained(default_model_dir, dtype="float32")
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        for p in policy.model.layers[3].parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    engine.load_weights(policy.state_dict())
    ids = prompts[2]
    with torch.no_grad():
        want = policy.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=12, min_new_tokens=12,
                               pad_token_id=2)[0, len(ids):].tolist()
        got = engine.generate([ids], max_new_tokens=12, min_new_tokens=12, temperature=0.0)[0][0].token_ids
        assert got == want
        for p in policy.parameters():
            p.zero_()
    assert engine.generate([ids], max_new_tokens=12, min_new_tokens=12, temperature=0.0)[0][0].token_ids == got
    with pytest.raises(ValueError, match="weights lack"):
        engine.load_weights({"lm_head.weight": torch.zeros(2, 2)})


def test_k_per_prompt(engine16):
    outs = engine16.generate(["Hello", "The sea"], k=[1, 3], max_new_tokens=4, temperature=0.8, seed=[3, 4])
    assert [len(o) for o in outs] == [1, 3]
    alone = engine16.generate(["The sea"], k=3, max_new_tokens=4, temperature=0.8, seed=4)[0]
    assert [s.token_ids for s in outs[1]] == [s.token_ids for s in alone]


def test_prompt_kv_is_stored_once(engine16):
    from spct.engine.llama import KVCache

    cfg = engine16.runner.config
    one = KVCache(cfg, [1000], 1, 256, torch.bfloat16, torch.device("cpu"))
    many = KVCache(cfg, [1000], 32, 256, torch.bfloat16, torch.device("cpu"))
    assert one.prompt.nbytes == many.prompt.nbytes
    prompt_copy = 2 * cfg.num_layers * 1000 * cfg.num_kv_heads * cfg.head_dim * 2
    assert one.prompt.nbytes == prompt_copy
    assert many.nbytes - one.nbytes < 31 * prompt_copy / 3  # 31 more samples cost far less than 31 prompt copies


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": 0}, "k must be an int >= 1, got 0"),
        ({"k": [2, 3]}, r"k must be an int >= 1 or one per prompt \(1\), got \[2, 3\]"),
        ({"max_new_tokens": 0}, "max_new_tokens must be an int >= 1, got 0"),
        ({"temperature": -0.5}, r"temperature must be a finite number >= 0, got -0.5"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\], got 0.0"),
        ({"min_p": 1.0}, r"min_p must be in \[0, 1\), got 1.0"),
        ({"top_k": -1}, "top_k must be an int >= 0"),
        ({"min_new_tokens": 9, "max_new_tokens": 8}, "min_new_tokens must be an int in"),
        ({"seed": [1, 2]}, r"one int per prompt \(1\), got 2 seeds"),
        ({"seed": -3}, r"seed\[0\] = -3"),
        ({"stop": [""]}, "stop strings must be non-empty"),
        ({"constraints": [None, None]}, r"one entry per prompt \(1\)"),
    ],
)
def test_bad_arguments(engine16, kwargs, match):
    with pytest.raises(ValueError, match=match):
        engine16.generate(["Hello"], **kwargs)


def test_bad_prompts(engine16):
    """Errors about one prompt are ItemErrors: the prompt's position apart, the message naming it and the limit."""
    ctx = engine16.context
    cases = [(["Hello", ""], r"^prompts\[1\]: the prompt is empty$"),
             ([[]], r"^prompts\[0\]: the prompt is empty"),
             (["Hi", [1] * (ctx + 5)], rf"^prompts\[1\]: the prompt has {ctx + 5} tokens, but the model's context is "
                                       rf"{ctx} tokens"),
             ([[1, 49152]], r"^prompts\[0\]: the prompt holds token id 49152, outside \[0, 49152\)"),
             ([[1, True]], r"token id True, outside"),
             (["a", 7], r"^prompts\[1\]: the prompt is int")]
    for prompts, match in cases:
        with pytest.raises(ItemError, match=match) as error:
            engine16.generate(prompts)
        assert error.value.index == len(prompts) - 1
    with pytest.raises(ValueError, match="prompts must be a list"):
        engine16.generate("Hello")


def _templated(tokenizer, messages) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def test_chat_prompts_go_through_the_chat_template(engine16, tokenizer):
    """A chat conversation samples exactly what its templated ids (generation prompt added) sample, mixed in one call
    with a string and token ids, as vLLM's LLM.chat."""
    chat = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a primary color."}]
    ids = _templated(tokenizer, chat)
    turn = tokenizer("<|im_start|>assistant\n", add_special_tokens=False).input_ids
    assert ids[-len(turn):] == turn  # the generation prompt was added
    prefills = []
    outs = engine16.generate([chat, ids, "Hello"], k=3, max_new_tokens=8, temperature=0.8, seed=[5, 5, 6],
                             progress=prefills.append)
    hello = len(tokenizer("Hello").input_ids)
    # each prompt's length once it is prefilled, then one per generated token (in the order the steps ran them)
    assert sum(prefills) == 2 * len(ids) + hello + sum(len(s.token_ids) for row in outs for s in row)
    assert prefills.count(len(ids)) >= 2
    assert [s.token_ids for s in outs[0]] == [s.token_ids for s in outs[1]]
    alone = engine16.generate(["Hello"], k=3, max_new_tokens=8, temperature=0.8, seed=6)[0]
    assert [s.token_ids for s in outs[2]] == [s.token_ids for s in alone]


@pytest.mark.parametrize(
    ("chat", "match"),
    [([{"role": "user"}], r"^prompts\[1\]: message 0 has no 'content'; a chat message is a dict"),
     ([{"content": "hi"}], r"^prompts\[1\]: message 0 has no 'role'"),
     ([{"role": "user", "content": 3}], r"^prompts\[1\]: message 0's 'content' is int 3"),
     ([{"role": "user", "content": "hi"}, "and"], r"^prompts\[1\]: message 1 is str 'and'")],
)
def test_bad_chat_prompts(engine16, chat, match):
    with pytest.raises(ItemError, match=match) as error:
        engine16.generate(["Hello", chat])
    assert error.value.index == 1


def test_chat_prompts_need_a_chat_template(engine16, tokenizer):
    import copy

    plain = copy.copy(tokenizer)
    plain.chat_template = None
    engine = spct.engine.Engine(engine16.runner, plain, engine16.eos_token_ids)
    with pytest.raises(ItemError, match=r"^prompts\[0\]: the prompt is a chat conversation, but the tokenizer has no "
                                        r"chat template"):
        engine.generate([[{"role": "user", "content": "hi"}]])


def test_progress_adds_up_to_prompt_and_generated_tokens(engine16, prompts):
    """Calls after each prefill (the prompt's length) and after each generated token, max_batch rows at a time; samples of different lengths (stop strings), forced tokens past max_new_tokens included."""
    small = spct.engine.Engine(engine16.runner, engine16.tokenizer, engine16.eos_token_ids, max_batch=4)
    chosen = [p[:30] for p in prompts[1:4]]
    calls = []
    outs = small.generate(chosen, k=[2, 3, 2], max_new_tokens=12, temperature=1.0, seed=3, stop=["\n", " the"],
                          constraints=[None, _Extend([7, 8], 2), None], progress=calls.append)
    generated = [len(s.token_ids) for o in outs for s in o]
    assert len(set(generated)) > 1  # samples stopped at different steps
    assert sum(calls) == sum(len(p) for p in chosen) + sum(generated)
    assert calls[0] == 30 and sorted(set(calls)) == [1, 30]  # a prompt once prefilled, then each token
    with pytest.raises(ValueError, match="progress must be a callable"):
        engine16.generate(["Hi"], progress=5)


def test_bad_engine_arguments(default_model_dir):
    with pytest.raises(ValueError, match="dtype must be one of"):
        spct.Engine.from_pretrained(default_model_dir, dtype="float64")


def test_generation_near_the_context_stops_with_length(engine16):
    small = spct.engine.Engine(engine16.runner, engine16.tokenizer, engine16.eos_token_ids)
    small.context = 40  # a short context, so the test does not prefill 8,000 tokens
    out = small.generate([[1] * 37], max_new_tokens=10, temperature=0.0)[0][0]
    assert len(out.token_ids) == 3 and out.finish_reason == "length"
    with pytest.raises(ValueError, match="the prompt has 40 tokens, but the model's context is 40"):
        small.generate([[1] * 40])


def test_a_sample_serializes(engine16):
    out = engine16.generate(["Hi"], max_new_tokens=3, temperature=0.0, return_logprobs=True)[0][0]
    json.dumps(out.__dict__)
    assert all(math.isfinite(x) for x in out.logprobs)


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory, default_model_dir):
    """A small randomly initialized GPT-2 (an architecture the runner lacks) with the default tokenizer."""
    import shutil

    from transformers import GPT2Config, GPT2LMHeadModel

    path = tmp_path_factory.mktemp("gpt2")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=49152, n_positions=256, n_embd=64, n_layer=2, n_head=2,
                                       bos_token_id=1, eos_token_id=2))
    model.save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(default_model_dir / name, path / name)
    return path


def test_other_architectures_run_on_transformers(gpt2_dir):
    from transformers import AutoModelForCausalLM

    from spct.engine.hf import HFRunner

    engine = spct.Engine.from_pretrained(gpt2_dir, dtype="float32")
    assert isinstance(engine.runner, HFRunner) and "GPT2LMHeadModel" in engine.runner.why
    prompt = list(range(100, 130))
    hf = AutoModelForCausalLM.from_pretrained(gpt2_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        want = hf.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=10, min_new_tokens=10,
                           pad_token_id=2)[0, 30:].tolist()
    got = engine.generate([prompt], k=2, max_new_tokens=10, min_new_tokens=10, temperature=0.0)[0]
    assert [s.token_ids for s in got] == [want, want]
    kw = {"max_new_tokens": 8, "temperature": 1.0, "seed": 4}
    a = engine.generate([prompt], k=3, **kw)[0]
    b = engine.generate([[5, 6, 7], prompt], k=3, **{**kw, "seed": [1, 4]})[1]
    assert [s.token_ids for s in a] == [s.token_ids for s in b]


def test_load_weights_on_the_slow_path(gpt2_dir):
    """The transformers runner takes new weights too (its model's state_dict names), copied."""
    from transformers import AutoModelForCausalLM

    engine = spct.Engine.from_pretrained(gpt2_dir, dtype="float32")
    hf = AutoModelForCausalLM.from_pretrained(gpt2_dir, dtype=torch.float32).eval()
    weights = {name: t.clone() for name, t in hf.state_dict().items()}
    weights["transformer.h.0.mlp.c_fc.weight"] *= 3.0  # other weights, other tokens
    hf.load_state_dict(weights)
    prompt = list(range(100, 130))
    with torch.no_grad():
        want = hf.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=10, min_new_tokens=10,
                           pad_token_id=2)[0, 30:].tolist()
    before = engine.generate([prompt], max_new_tokens=10, min_new_tokens=10, temperature=0.0)[0][0].token_ids
    engine.load_weights(weights)
    weights["transformer.h.0.mlp.c_fc.weight"].zero_()  # copied: later changes do not reach the engine
    got = engine.generate([prompt], max_new_tokens=10, min_new_tokens=10, temperature=0.0)[0][0].token_ids
    assert got == want and got != before
