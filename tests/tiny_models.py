"""Tiny random checkpoints of every architecture the runner has, built offline from a transformers config: 2-4
layers, hidden 64, heads of 32, the default model's tokenizer (a real one, so text prompts and chat templates work). Saved as a
Hugging Face directory (config.json, model.safetensors, tokenizer files) that `spct.Engine.from_pretrained` and
`transformers` both load.

Windows are small (24 tokens, not a multiple of the engine's 16-token blocks) so that prompts of 40+ tokens cross
them; weights are drawn with a wide initializer so that greedy choices are clear (logits far from ties)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

WINDOW = 24
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                   "vocab.json", "merges.txt", "chat_template.jinja")
COMMON = dict(vocab_size=49152, hidden_size=64, intermediate_size=128, num_attention_heads=2, num_key_value_heads=1,
              max_position_embeddings=512, rms_norm_eps=1e-6, initializer_range=0.08, bos_token_id=1,
              eos_token_id=2, pad_token_id=2, tie_word_embeddings=False)


def configs() -> dict:
    """Architecture name -> transformers config of its tiny model."""
    from transformers import (Gemma2Config, Gemma3TextConfig, LlamaConfig, MistralConfig, Phi3Config, Qwen2Config,
                              Qwen3Config, Qwen3MoeConfig)

    wide = dict(num_attention_heads=4, num_key_value_heads=2, head_dim=32)  # q and k wider than hidden
    gemma = dict(COMMON, **wide, query_pre_attn_scalar=24, sliding_window=WINDOW, tie_word_embeddings=True,
                 hidden_activation="gelu_pytorch_tanh")
    return {
        "llama": LlamaConfig(**COMMON, num_hidden_layers=2),
        "qwen2": Qwen2Config(**COMMON, num_hidden_layers=3, use_sliding_window=True, sliding_window=WINDOW,
                             max_window_layers=1),
        "mistral": MistralConfig(**COMMON, num_hidden_layers=2, sliding_window=WINDOW),
        "qwen3": Qwen3Config(**dict(COMMON, **wide), num_hidden_layers=2),
        "qwen3_moe": Qwen3MoeConfig(**dict(COMMON, **wide), num_hidden_layers=2, num_experts=8,
                                    num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True,
                                    mlp_only_layers=[1]),
        "phi3": Phi3Config(**dict(COMMON, pad_token_id=None), num_hidden_layers=2, sliding_window=WINDOW),
        "gemma2": Gemma2Config(**gemma, num_hidden_layers=4, attn_logit_softcapping=50.0,
                               final_logit_softcapping=30.0),
        "gemma3": Gemma3TextConfig(**gemma, num_hidden_layers=4, layer_types=["sliding_attention",
                                   "sliding_attention", "full_attention", "sliding_attention"],
                                   rope_scaling={"rope_type": "linear", "factor": 8.0}),
    }


def build(arch: str, dest: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """The tiny `arch` checkpoint in `dest` (made once: an existing directory is kept)."""
    from transformers import AutoModelForCausalLM

    if (dest / "config.json").is_file():
        return dest
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(configs()[arch], dtype=torch.float32)
    with torch.no_grad():  # norms' weights away from their init so that a wrong (1 + w) or w would show
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(dest)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy(tokenizer_dir / name, dest / name)
    return dest
