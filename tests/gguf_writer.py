"""A GGUF file from a Hugging Face model directory, written with the `gguf` package the way llama.cpp's
`convert_hf_to_gguf.py` writes it, for the architectures spct converts back (`spct.engine.gguf_archs`): its metadata
keys per architecture, tensor names from `gguf.TensorNameMap`, Llama's q/k RoPE row permutation, Gemma's norms
stored as 1 + w, Phi-3's fused qkv_proj / gate_up_proj as they are, Qwen3-MoE's experts stacked per layer into 3-D
ffn_{gate,up,down}_exps (its Qwen2MoeModel), and a "gpt2" (byte-level BPE) tokenizer. All tensors are float32 (no
quantization), so a converter that undoes llama.cpp's changes gets the weights back.

Beyond llama.cpp, where it has no key for a fact the tiny test models (tests/tiny_models.py) have: a Mistral or
Qwen2/Qwen3 sliding window (`attention.sliding_window`, and `attention.sliding_window_pattern` as one bool per
layer), a Gemma layer pattern other than llama.cpp's fixed one, and a Gemma query_pre_attn_scalar other than the
one llama.cpp derives from the head size (`attention.scale`, the factor on q . k); for Qwen3-MoE, a dense
layer (mlp_only_layers: ffn_gate/ffn_up/ffn_down, qwen3's names) and norm_topk_prob false (`expert_weights_norm`)."""

from __future__ import annotations

import functools
import hashlib
import json
import re
from pathlib import Path

import gguf
import numpy as np

GGUF_ARCH = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2",
             "Qwen3ForCausalLM": "qwen3", "Phi3ForCausalLM": "phi3", "Gemma2ForCausalLM": "gemma2",
             "Gemma3ForCausalLM": "gemma3", "Qwen3MoeForCausalLM": "qwen3moe"}
GEMMA_PERIOD = {"gemma2": 2, "gemma3": 6}  # llama.cpp's fixed layer patterns: layer i global when i % n == n - 1


def write_gguf(model_dir: str | Path, out: str | Path, *, pre: str = "smollm") -> Path:
    """Writes `out` from `model_dir` (config.json, model.safetensors, tokenizer files); returns `out`. pre: the
    tokenizer.ggml.pre name (llama.cpp's for the default model's tokenizer)."""
    from transformers import AutoConfig

    model_dir, out = Path(model_dir), Path(out)
    raw = json.loads((model_dir / "config.json").read_text())
    arch = GGUF_ARCH[raw["architectures"][0]]
    hf = AutoConfig.from_pretrained(model_dir)  # with transformers' defaults (rope_parameters, layer_types)
    writer = gguf.GGUFWriter(str(out), arch)
    writer.add_name(model_dir.name)
    _hparams(writer, arch, hf, raw)
    _vocab(writer, model_dir, hf.vocab_size, pre)
    for name, data in _tensors(model_dir, arch, hf):
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def _hparams(w: gguf.GGUFWriter, arch: str, hf, raw: dict) -> None:
    """llama.cpp's TextModel.set_gguf_parameters, then the architecture's own keys."""
    w.add_block_count(hf.num_hidden_layers)
    w.add_context_length(hf.max_position_embeddings)
    w.add_embedding_length(hf.hidden_size)
    w.add_feed_forward_length(hf.intermediate_size)
    w.add_head_count(hf.num_attention_heads)
    w.add_head_count_kv(hf.num_key_value_heads)
    w.add_layer_norm_rms_eps(hf.rms_norm_eps)
    params = hf.rope_parameters or {}
    full = params.get("full_attention", params)
    if arch != "gemma2":  # llama.cpp's Gemma 2 writes no RoPE base (its 10000 is the default)
        w.add_rope_freq_base(full["rope_theta"])
    if "sliding_attention" in params:
        w.add_rope_freq_base_swa(params["sliding_attention"]["rope_theta"])
    if full.get("rope_type") == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(full["factor"])
    if raw.get("head_dim"):
        w.add_key_length(raw["head_dim"])
        w.add_value_length(raw["head_dim"])
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    {"llama": _llama, "qwen2": _qwen, "qwen3": _qwen, "phi3": _phi3, "gemma2": _gemma, "gemma3": _gemma,
     "qwen3moe": _qwen3moe}[arch](w, arch, hf)


def _head_dim(hf) -> int:
    return getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads


def _sliding(hf) -> list[bool]:
    return [t == "sliding_attention" for t in (getattr(hf, "layer_types", None) or [])]


def _llama(w, arch, hf) -> None:
    w.add_vocab_size(hf.vocab_size)
    w.add_rope_dimension_count(_head_dim(hf))
    if getattr(hf, "sliding_window", None):  # Mistral: beyond llama.cpp
        w.add_sliding_window(hf.sliding_window)


def _qwen(w, arch, hf) -> None:
    if getattr(hf, "use_sliding_window", False) and any(_sliding(hf)):  # beyond llama.cpp
        w.add_sliding_window(hf.sliding_window)
        w.add_sliding_window_pattern(_sliding(hf))


def _qwen3moe(w, arch, hf) -> None:
    """TextModel's expert_count and expert_used_count, Qwen2MoeModel's expert_feed_forward_length."""
    _qwen(w, arch, hf)
    w.add_expert_count(hf.num_experts)
    w.add_expert_used_count(hf.num_experts_per_tok)
    w.add_expert_feed_forward_length(hf.moe_intermediate_size)
    if not hf.norm_topk_prob:  # beyond llama.cpp, whose qwen3moe always renormalises the top-k weights
        w.add_expert_weights_norm(False)


def _phi3(w, arch, hf) -> None:
    rot = (hf.rope_parameters or {}).get("partial_rotary_factor", 1.0)
    w.add_rope_scaling_orig_ctx_len(hf.original_max_position_embeddings)
    w.add_rope_dimension_count(int(rot * hf.hidden_size) // hf.num_attention_heads)
    w.add_sliding_window(hf.sliding_window or 0)  # 0: none (Phi-4)


def _gemma(w, arch, hf) -> None:
    n, sliding = hf.num_hidden_layers, _sliding(hf)
    if arch == "gemma2":
        w.add_attn_logit_softcapping(hf.attn_logit_softcapping)
        w.add_final_logit_softcapping(hf.final_logit_softcapping)
        w.add_sliding_window(hf.sliding_window)
    else:
        if hf.final_logit_softcapping:
            w.add_final_logit_softcapping(hf.final_logit_softcapping)
        if any(sliding):
            w.add_sliding_window(hf.sliding_window)
    period = GEMMA_PERIOD[arch]
    if sliding != [i % period < period - 1 for i in range(n)]:  # beyond llama.cpp
        w.add_sliding_window_pattern(sliding)
    big = {"gemma2": 46, "gemma3": 62}[arch] == n  # llama.cpp's 27B: its scale from hidden / heads
    implied = hf.hidden_size // hf.num_attention_heads if big else _head_dim(hf)
    if hf.query_pre_attn_scalar != implied:  # beyond llama.cpp
        w.add_attention_scale(hf.query_pre_attn_scalar ** -0.5)


def _vocab(w: gguf.GGUFWriter, model_dir: Path, vocab_size: int, pre: str) -> None:
    """llama.cpp's _set_vocab_gpt2: the token list and types, then merges, special ids and chat template."""
    digest = hashlib.sha256((model_dir / "tokenizer.json").read_bytes()).hexdigest()
    tokens, types = _token_list(digest, str(model_dir), vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=len(tokens)).add_to_gguf(w)


@functools.lru_cache(maxsize=4)
def _token_list(digest: str, model_dir: str, vocab_size: int) -> tuple[list[str], list[int]]:
    """(tokens, types) as llama.cpp's get_vocab_base (cached by the tokenizer.json digest: every tiny model has the
    same tokenizer)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    by_id = {i: t for t, i in tok.get_vocab().items()}
    added = tok.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL if i not in added else
                         gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
    return tokens, types


def _tensors(model_dir: Path, arch: str, hf):
    """(GGUF name, float32 array) per weight, changed as llama.cpp changes it."""
    from safetensors.numpy import load_file

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], hf.num_hidden_layers)
    weights = load_file(str(model_dir / "model.safetensors"))
    if arch == "qwen3moe":
        weights = _stack_experts(weights, hf.num_experts)
        dense = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN3, hf.num_hidden_layers)  # beyond llama.cpp
    for name, data in weights.items():
        if name == "lm_head.weight" and hf.tie_word_embeddings:
            continue
        data = data.astype(np.float32)
        if arch == "llama" and name.endswith(("q_proj.weight", "q_proj.bias")):
            data = permute(data, hf.num_attention_heads)
        elif arch == "llama" and name.endswith(("k_proj.weight", "k_proj.bias")):
            data = permute(data, hf.num_key_value_heads)
        if arch.startswith("gemma") and name.endswith("norm.weight"):
            data = data + np.float32(1.0)  # Gemma's RMSNorm scales by 1 + w; llama.cpp's by the weight
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None and arch == "qwen3moe":  # a dense layer: no such tensor in llama.cpp's qwen3moe
            gguf_name = dense.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ValueError(f"{name}: no GGUF name for it in gguf.TensorNameMap of {arch}")
        yield gguf_name, data


def _stack_experts(weights: dict, n_experts: int) -> dict:
    """llama.cpp's Qwen2MoeModel.modify_tensors: a layer's mlp.experts.{e}.{gate,up,down}_proj.weight stacked on a
    new first dim into mlp.experts.{gate,up,down}_proj.weight, (E, rows, cols), which it names ffn_*_exps."""
    out, stacks = {}, {}
    for name, data in weights.items():
        m = re.fullmatch(r"(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(\w+\.weight)", name)
        if m is None:
            out[name] = data
        else:
            stacks.setdefault(f"{m[1]}.{m[3]}", {})[int(m[2])] = data
    for name, per_expert in stacks.items():
        out[name] = np.stack([per_expert[e] for e in range(n_experts)])
    return out


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's LlamaModel.permute: per head, rows [a_0..a_{d/2-1}, b_0..] become [a_0, b_0, a_1, b_1, ...]."""
    return np.ascontiguousarray(w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2)
                                .reshape(w.shape))
