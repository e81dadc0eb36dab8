"""generate throughput at k = 16 on architectures other than Llama: spct.Engine vs transformers.generate
(num_return_sequences = 16), same model, dtype, prompt and threads, in the same run.

The models are random checkpoints at the default model's size (SmolLM2-135M: hidden 576, 30 layers, 9 query and 3
KV heads of 64, MLP 1536, vocabulary 49152, tied embeddings), the closest the tests can build offline, in each
architecture: Gemma 2 (GeGLU, sandwich norms, soft-capping, sliding-window and global layers alternating), Qwen3
(q/k norms) and Llama (the skeleton, for reference). The prompt is bench_generate's GRM prompt (about 1,000
tokens), NEW_TOKENS new tokens at temperature 0.5; each timed round changes the prompt's first token, so spct
prefills it every time, as transformers does. Random weights do not change the work: min_new_tokens =
max_new_tokens.

    python -m pytest bench/bench_architectures.py --benchmark-enable -s
    SPCT_BENCH_NEW_TOKENS=128 python -m pytest bench/bench_architectures.py --benchmark-enable -s -k gemma2

Each line also gives spct's decode tokens/s as a fraction of the decode roofline measured in the same run
(bench_generate.roofline_tokens_per_s).
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

import pytest
import torch
from bench_generate import decode_tokens_per_s, grm_prompt, roofline_tokens_per_s

import spct
from spct.engine.models import cache_dir

K = 16
NEW_TOKENS = int(os.environ.get("SPCT_BENCH_NEW_TOKENS", "256"))
SIZE = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
            num_key_value_heads=3, head_dim=64, max_position_embeddings=8192, rms_norm_eps=1e-5,
            tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
ARCHS = ["gemma2", "qwen3", "llama"]


def config(arch: str):
    from transformers import Gemma2Config, LlamaConfig, Qwen3Config

    if arch == "gemma2":
        return Gemma2Config(**SIZE, query_pre_attn_scalar=64, sliding_window=4096, attn_logit_softcapping=50.0,
                            final_logit_softcapping=30.0, hidden_activation="gelu_pytorch_tanh")
    return {"qwen3": Qwen3Config, "llama": LlamaConfig}[arch](**SIZE)


def model_dir(arch: str, tokenizer) -> Path:
    """The random `arch` checkpoint at the default model's size, made once under the spct cache."""
    from transformers import AutoModelForCausalLM

    path = cache_dir() / "bench" / f"{arch}-135m-random"
    if not (path / "config.json").is_file():
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config(arch), dtype=torch.bfloat16).save_pretrained(path)
        tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("arch", ARCHS)
def test_architecture_throughput(benchmark, smollm2_tokenizer, arch):
    path = model_dir(arch, smollm2_tokenizer)
    engine = spct.Engine.from_pretrained(path, dtype="bfloat16")
    assert type(engine.runner).__name__ == "LlamaRunner"  # the runner, not transformers' slow path
    source, ids = grm_prompt(engine.tokenizer)
    settings = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "temperature": 0.5}
    if benchmark.disabled:  # a short validation, not timed
        out = engine.generate([ids[:64]], k=2, max_new_tokens=4, min_new_tokens=4, temperature=0.5)
        assert all(len(s.token_ids) == 4 for s in out[0])
        return
    fresh = itertools.count(1)

    def run():  # a new first token each round: the prompt is prefilled every time
        prompt = [(ids[0] + next(fresh)) % engine.vocab_size, *ids[1:]]
        return engine.generate([prompt], k=K, seed=1, **settings)

    benchmark.pedantic(run, rounds=int(os.environ.get("SPCT_BENCH_ROUNDS", "2")), warmup_rounds=1)
    spct_s, tokens = benchmark.stats.stats.median, K * NEW_TOKENS
    decode = decode_tokens_per_s(engine, ids, K, 1)
    roof, bound = roofline_tokens_per_s(engine.runner, K, len(ids) + NEW_TOKENS // 2)
    engine.shutdown()
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        gen = model.generate(torch.tensor([ids]), do_sample=True, top_k=0, top_p=1.0, num_return_sequences=K,
                             pad_token_id=2, **settings)
    hf_s = time.perf_counter() - t0
    assert gen.shape == (K, len(ids) + NEW_TOKENS)
    info = {"arch": arch, "k": K, "prompt": source, "prompt_tokens": len(ids), "new_tokens": NEW_TOKENS,
            "threads": torch.get_num_threads(), "load": os.getloadavg()[0], "spct_tokens_per_s": tokens / spct_s,
            "transformers_tokens_per_s": tokens / hf_s, "ratio_vs_transformers": hf_s / spct_s,
            "spct_decode_tokens_per_s": decode, "roofline_decode_tokens_per_s": roof, "roofline_bound": bound,
            "fraction_of_roofline": decode / roof}
    benchmark.extra_info.update(info)
    print(f"\n{arch:7s} k={K} bf16: spct {tokens / spct_s:7.1f} tok/s, transformers {tokens / hf_s:6.1f} tok/s, "
          f"ratio {hf_s / spct_s:5.2f}x; decode {decode:7.1f} tok/s = {decode / roof:4.0%} of the {bound} roofline "
          f"{roof:6.0f} (load {os.getloadavg()[0]:.2f})")
