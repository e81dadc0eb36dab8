"""Every architecture the runner takes (`spct.engine.arch`), on tiny random checkpoints built here from transformers
configs (tests/tiny_models.py): fp32 greedy decoding equals transformers token for token on the runner (the online
engine and the static path), with prompts longer than the sliding windows; in bfloat16 a request's k samples do not
depend on what else runs beside it, and a prompt extending a cached one (the prefix cache) gives the same samples;
GRM prompts go through a chat template without a system role (Gemma's)."""

from __future__ import annotations

import inspect
import textwrap

import pytest
import torch
import tiny_models
from transformers import AutoTokenizer

import spct
from spct.engine.arch import supported
from spct.engine.llama import DecodeStep, LlamaRunner
from spct.engine.models import read_json
from spct.items import ItemError

ARCHS = list(tiny_models.configs())
NEW = 64  # greedy tokens compared


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, default_model_dir):
    """arch -> its tiny checkpoint directory (built on first use)."""
    root = tmp_path_factory.mktemp("tiny")
    return lambda arch: tiny_models.build(arch, root / arch, default_model_dir)


@pytest.fixture(scope="module")
def text_ids(smollm2_tokenizer) -> list[int]:
    """Real text as token ids (a standard-library source: the same on every machine with this Python)."""
    return smollm2_tokenizer(inspect.getsource(textwrap)).input_ids


def hf_greedy(path, prompts: list[list[int]], new: int) -> list[list[int]]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return [model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.int64),
                           max_new_tokens=new, min_new_tokens=new, do_sample=False)[0, len(p):].tolist()
            for p in prompts]


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_equals_transformers(tiny, text_ids, arch):
    """Two prompts (40 and 57 tokens: past the 24-token windows) in one call, k = 2 each, 64 new tokens, on the
    online engine with 16-token blocks and 32-token prefill chunks: every sample is transformers' greedy text."""
    path = tiny(arch)
    prompts = [text_ids[100:140], text_ids[400:457]]
    engine = spct.Engine.from_pretrained(path, dtype="float32", kv_cache_mb=8, prefill_chunk=32)
    try:
        assert isinstance(engine.runner, LlamaRunner), supported(read_json(path / "config.json"))
        outs = engine.generate(prompts, k=2, max_new_tokens=NEW, min_new_tokens=NEW, temperature=0.0)
    finally:
        engine.shutdown()
    want = hf_greedy(path, prompts, NEW)
    for samples, tokens in zip(outs, want):
        assert [s.token_ids for s in samples] == [tokens, tokens]


@pytest.mark.parametrize("arch", ARCHS)
def test_static_path_greedy_equals_transformers(tiny, text_ids, arch):
    """The runner's prefix-shared KV path (prefill, decode: what a Meta RM's hidden states run on) likewise."""
    path, prompt = tiny(arch), text_ids[700:745]
    runner = LlamaRunner.from_dir(path, torch.float32, torch.device("cpu"))
    kv = runner.new_kv([len(prompt)], 1, NEW)
    logits, got = runner.prefill(torch.tensor(prompt), kv, 0), []
    for t in range(NEW):
        got.append(int(logits.argmax()))
        one = lambda v: torch.tensor([v])  # noqa: E731
        logits = runner.decode(DecodeStep(one(got[-1]), one(len(prompt) + t), one(0), one(0), one(t + 1)), kv)[0]
    assert got == hf_greedy(path, [prompt], NEW)[0]


def submit_all(engine: spct.Engine, reqs) -> list:
    handles = [engine.submit(p, **kw) for p, kw in reqs]
    return [h.result(timeout=300) for h in handles]


@pytest.mark.parametrize("arch", ARCHS)
def test_bf16_samples_do_not_depend_on_the_batch_or_the_prefix_cache(tiny, text_ids, arch):
    """bfloat16, k = 4 sampled at temperature 0.8: four requests (two of them extending the first one's prompt,
    which is cached by then) submitted together to one engine with 24-token prefill chunks give, sample for sample,
    what each gives alone on a fresh engine."""
    runner = LlamaRunner.from_dir(tiny(arch), torch.bfloat16, torch.device("cpu"))
    tokenizer = AutoTokenizer.from_pretrained(tiny(arch))
    base = text_ids[1000:1050]
    reqs = [(base, {"seed": 1}), (base + text_ids[2000:2021], {"seed": 2}), (text_ids[3000:3033], {"seed": 3}),
            (base + text_ids[2500:2540], {"seed": 4})]
    for _, kw in reqs:
        kw.update(k=4, max_new_tokens=12, temperature=0.8)

    def engine(chunk: int) -> spct.Engine:
        return spct.Engine(runner, tokenizer, [2], 64, kv_cache_mb=4, prefill_chunk=chunk)

    together = engine(24)
    try:
        first = together.submit(*reqs[0][:1], **reqs[0][1]).result(timeout=300)
        rest = submit_all(together, reqs[1:])
        stats = together.stats()
    finally:
        together.shutdown()
    assert stats["prefix_hit_tokens"] >= 2 * 48  # the cached prompt's three full blocks, for two requests
    for (prompt, kw), got in zip(reqs, [first, *rest]):
        alone = engine(256)
        try:
            want = alone.submit(prompt, **kw).result(timeout=300)
        finally:
            alone.shutdown()
        assert got == want
        assert len({tuple(s.token_ids) for s in got}) > 1  # the k samples differ: sampling ran


GEMMA2_TEMPLATE = (  # Gemma 2's chat template: no system role, the assistant is "model"
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")


def test_grm_prompts_go_through_a_template_without_a_system_role(tiny):
    """A GRM prompt and a Meta RM input (the judgement as the assistant turn) in Gemma 2's template; a chat prompt
    with a system turn is one line about that prompt, naming the template's refusal."""
    from spct.grm.model import prompt_ids
    from spct.grm.templates import messages

    engine = spct.Engine.from_pretrained(tiny("gemma2"), dtype="float32")
    tokenizer = engine.tokenizer
    tokenizer.chat_template = GEMMA2_TEMPLATE
    try:
        text = tokenizer.decode(prompt_ids(tokenizer, "What is 2 + 2?", ["4", "5"]))
        assert text.startswith(tokenizer.bos_token + "<start_of_turn>user\n")
        assert text.endswith("<end_of_turn>\n<start_of_turn>model\n") and "[The Begin of Response 2]" in text
        meta = messages("What is 2 + 2?", ["4", "5"], judgement="Scores: \\boxed{10, 1}")
        ids = tokenizer.apply_chat_template(meta, tokenize=True)
        assert "<start_of_turn>model\nScores: \\boxed{10, 1}<end_of_turn>" in tokenizer.decode(ids["input_ids"])
        out = engine.generate([[{"role": "user", "content": "Hi"}]], max_new_tokens=2, temperature=0.0)
        assert len(out[0][0].token_ids) == 2
        with pytest.raises(ItemError, match=r"prompts\[1\].*System role not supported"):
            engine.generate(["x", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]],
                            max_new_tokens=2)
    finally:
        engine.shutdown()


@pytest.mark.parametrize("change, why", [
    ({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}, "architecture GPT2LMHeadModel"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "rope type 'dynamic'"),
])
def test_supported_says_why_not(change, why):
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 32, "hidden_size": 64,
           "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2, "rms_norm_eps": 1e-6}
    assert supported(cfg) is None
    assert why in supported({**cfg, **change})


def test_partial_rotary_is_refused_with_its_factor():
    cfg = tiny_models.configs()["phi3"].to_dict() | {"architectures": ["Phi3ForCausalLM"]}
    assert supported(cfg) is None
    del cfg["rope_parameters"]  # as Phi-4-mini's config.json has it: top-level fields
    cfg.update(partial_rotary_factor=0.75, rope_theta=10000.0)
    assert "partial_rotary_factor 0.75" in supported(cfg)


@pytest.mark.parametrize("arch", ARCHS)
def test_with_weights_takes_a_transformers_state_dict(tiny, text_ids, arch):
    """A training model's state_dict (transformers' names and layouts in memory: Qwen3-MoE's experts fused, where
    the checkpoint holds one tensor per expert) gives the runner from_dir builds: the same logits, bit for bit."""
    from transformers import AutoModelForCausalLM

    path = tiny(arch)
    runner = LlamaRunner.from_dir(path, torch.float32, torch.device("cpu"))
    other = runner.with_weights(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).state_dict())
    prompt = torch.tensor(text_ids[50:90])
    assert torch.equal(other.prefill(prompt, other.new_kv([40], 1, 1), 0), runner.prefill(prompt,
                                                                                          runner.new_kv([40], 1, 1), 0))


@pytest.mark.parametrize("arch", ARCHS)
def test_meta_rm_hidden_states_share_prefixes(tiny, text_ids, arch):
    """last_hidden_shared (the Meta RM's pass: each prefix once, the suffixes of all rows as one step) gives each
    sequence's last_hidden, suffix tokens crossing the windows included."""
    from conftest import TOLERANCES

    runner = LlamaRunner.from_dir(tiny(arch), torch.float32, torch.device("cpu"))
    prefixes = [torch.tensor(text_ids[:30]), torch.tensor(text_ids[200:245])]
    suffixes = [torch.tensor(text_ids[300:305]), torch.tensor(text_ids[400:430]), torch.tensor(text_ids[500:501])]
    index = [1, 0, 1]
    shared = runner.last_hidden_shared(prefixes, suffixes, index)
    each = torch.stack([runner.last_hidden(torch.cat([prefixes[p], s])) for p, s in zip(index, suffixes)])
    torch.testing.assert_close(shared, each, **TOLERANCES[torch.float32])
