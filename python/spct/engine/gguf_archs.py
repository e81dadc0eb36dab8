"""The GGUF architectures spct converts: what llama.cpp's ``convert_hf_to_gguf.py`` writes for each, and how that
maps back to a Hugging Face ``config.json`` and parameter names (used by :mod:`spct.engine.gguf_convert`).

| GGUF ``general.architecture`` | Hugging Face class | llama.cpp's changes to the weights, undone here |
|---|---|---|
| ``llama`` | ``LlamaForCausalLM``, or ``MistralForCausalLM`` when ``llama.attention.sliding_window`` is set | q/k rows
  permuted for its RoPE |
| ``qwen2`` | ``Qwen2ForCausalLM`` | none |
| ``qwen3`` | ``Qwen3ForCausalLM`` | none |
| ``phi3`` | ``Phi3ForCausalLM`` | none (``attn_qkv`` and ``ffn_up`` are the fused ``qkv_proj`` / ``gate_up_proj``) |
| ``gemma2`` | ``Gemma2ForCausalLM`` | every RMSNorm weight stored as ``1 + w`` |
| ``gemma3`` | ``Gemma3ForCausalLM`` (``model_type`` ``gemma3_text``: the text model) | every RMSNorm weight stored as
  ``1 + w`` |
| ``qwen3moe`` | ``Qwen3MoeForCausalLM`` | each layer's experts stacked into 3-D ``ffn_{gate,up,down}_exps``
  (torch order ``(E, rows, cols)``), split here into one ``mlp.experts.{e}.{gate,up,down}_proj`` per expert (the
  Hub's layout); the router ``ffn_gate_inp`` is ``mlp.gate`` |

Metadata that llama.cpp does not write but that some files carry, read when present: ``attention.sliding_window``
for llama (Mistral) and qwen2/qwen3; ``attention.sliding_window_pattern`` (a period ``n``: layer ``i`` slides when
``i % n < n - 1``, as llama.cpp's ``set_swa_pattern``; or one bool per layer, true for a sliding layer);
``attention.scale`` for Gemma (the factor on q . k, ``query_pre_attn_scalar ** -0.5``). Without them the values
are llama.cpp's: Gemma 2 alternates sliding and global layers (period 2), Gemma 3 has period 6 and a local RoPE base
of 10000, and Gemma's query scale comes from ``key_length`` (the 27B models: ``embedding_length / head_count``).

Qwen3-MoE: llama.cpp writes ``expert_count``, ``expert_used_count`` and ``expert_feed_forward_length`` (without it,
llama.cpp's ``feed_forward_length / expert_used_count``), and no key for ``norm_topk_prob``: its qwen3moe graph always
renormalises the top-k weights of a softmax router, so ``norm_topk_prob`` is true unless a file carries
``expert_weights_norm``; ``expert_gating_func`` other than softmax, and ``expert_weights_scale`` other than 1, are
refused. llama.cpp's qwen3moe has experts on every layer; a layer with dense ``ffn_gate``/``ffn_up``/``ffn_down``
(the names of qwen3) instead of a router and experts is listed in ``mlp_only_layers``.

Any other architecture, and any other file with experts (MoE: qwen2moe, deepseek2, ...), is a one-line ValueError.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

_REQUIRED = object()

# GGUF block tensor base name -> module under model.layers.N, shared by every architecture below.
_COMMON = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "ffn_norm": "post_attention_layernorm",
}
_QK_NORM = {"attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}
# Gemma's four norms per layer: ffn_norm is the norm before the MLP there.
_SANDWICH = {"post_attention_norm": "post_attention_layernorm", "ffn_norm": "pre_feedforward_layernorm",
             "post_ffw_norm": "post_feedforward_layernorm"}
# Phi-3: fused q/k/v and gate/up (no ffn_gate); separate attn_q/k/v, which some files have, are fused here.
_PHI3 = {**{k: v for k, v in _COMMON.items() if k != "ffn_gate"}, "attn_qkv": "self_attn.qkv_proj",
         "ffn_up": "mlp.gate_up_proj"}
# Qwen3-MoE: the router, and each stacked experts tensor -> the projection under mlp.experts.E it is split into.
_ROUTER = {"ffn_gate_inp": "mlp.gate"}
_EXPERTS = {"ffn_gate_exps": "gate_proj", "ffn_up_exps": "up_proj", "ffn_down_exps": "down_proj"}
_DENSE_FFN = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


@dataclass(frozen=True)
class GGUFArch:
    """How one GGUF architecture's tensors map to a Hugging Face checkpoint."""

    hf_arch: str  # the architectures entry of config.json
    model_type: str
    blocks: dict  # GGUF block tensor base name -> module under model.layers.N
    permute_qk: bool = False  # q/k rows stored permuted for llama.cpp's RoPE (unpermute_rope_rows)
    norm_offset: float = 0.0  # llama.cpp stores each RMSNorm weight as norm_offset + w
    fused: bool = False  # qkv_proj / gate_up_proj; separate attn_q/k/v tensors are concatenated into qkv_proj
    dropped: tuple = ()  # tensors with no Hugging Face equivalent: dropped with a warning
    consumed: tuple = ()  # tensors read into config.json instead (Phi-3's long-context RoPE factors)
    experts: dict | None = None  # MoE: stacked GGUF experts tensor base -> projection under mlp.experts.E


ARCHS = {
    "llama": GGUFArch("LlamaForCausalLM", "llama", _COMMON, permute_qk=True, dropped=("rope_freqs.weight",)),
    "qwen2": GGUFArch("Qwen2ForCausalLM", "qwen2", _COMMON),
    "qwen3": GGUFArch("Qwen3ForCausalLM", "qwen3", {**_COMMON, **_QK_NORM}),
    "phi3": GGUFArch("Phi3ForCausalLM", "phi3", _PHI3, fused=True,
                     consumed=("rope_factors_long.weight", "rope_factors_short.weight")),
    "gemma2": GGUFArch("Gemma2ForCausalLM", "gemma2", {**_COMMON, **_SANDWICH}, norm_offset=1.0),
    "gemma3": GGUFArch("Gemma3ForCausalLM", "gemma3_text", {**_COMMON, **_QK_NORM, **_SANDWICH}, norm_offset=1.0),
    # ffn_gate/ffn_up/ffn_down: a dense layer (mlp_only_layers), beyond llama.cpp's qwen3moe
    "qwen3moe": GGUFArch("Qwen3MoeForCausalLM", "qwen3_moe", {**_COMMON, **_QK_NORM, **_ROUTER}, experts=_EXPERTS),
}
MISTRAL = GGUFArch("MistralForCausalLM", "mistral", _COMMON, permute_qk=True, dropped=("rope_freqs.weight",))
BY_HF_ARCH = {a.hf_arch: a for a in (*ARCHS.values(), MISTRAL)}
SUPPORTED_ARCHITECTURES = tuple(ARCHS)
_MOE_ARCHITECTURES = ", ".join(name for name, a in ARCHS.items() if a.experts)
_GEMMA_27B_LAYERS = {"gemma2": 46, "gemma3": 62}  # llama.cpp's 27B size, whose query scale is hidden / heads


def field(reader, key: str, default=_REQUIRED):
    """A GGUF metadata value as a Python scalar, str, or list of those; ValueError naming a missing required key."""
    f = reader.fields.get(key)
    if f is None:
        if default is _REQUIRED:
            raise ValueError(f"GGUF metadata key {key!r} is missing")
        return default
    import gguf

    # f.data indexes the parts that hold the value(s); strings are uint8 arrays.
    parts = [f.parts[i] for i in f.data]
    if f.types[-1] == gguf.GGUFValueType.STRING:
        values = [bytes(p).decode("utf-8") for p in parts]
    else:
        values = [p.tolist()[0] for p in parts]
    return values if f.types[0] == gguf.GGUFValueType.ARRAY else values[0]


def f32(x: float) -> float:
    """Shortest decimal that rounds to the same float32 (GGUF stores float32)."""
    return float(str(np.float32(x)))


class Meta:
    """One file's metadata: ``m(key)`` reads ``{arch}.{key}``, ``m.top(key)`` a full key, ``m.has(name)`` asks for
    a tensor."""

    def __init__(self, reader, arch: str):
        self.reader, self.arch = reader, arch
        self.tensors = {t.name: t for t in reader.tensors}

    def __call__(self, key: str, default=_REQUIRED):
        return field(self.reader, f"{self.arch}.{key}", default)

    def top(self, key: str, default=_REQUIRED):
        return field(self.reader, key, default)

    def has(self, name: str) -> bool:
        return name in self.tensors

    def uint(self, key: str, default=_REQUIRED):
        """One integer (a per-layer list is refused: spct converts models whose layers have one shape)."""
        value = self(key, default)
        if isinstance(value, list):
            raise ValueError(f"GGUF metadata key {self.arch}.{key} is per layer ({value[:4]}...); spct converts "
                             "only models with one value for all layers")
        return value


def check_architecture(reader) -> str:
    """``general.architecture``, or a one-line ValueError naming it and what is converted."""
    arch = field(reader, "general.architecture")
    supported = ", ".join(SUPPORTED_ARCHITECTURES)
    if arch not in ARCHS:
        if "moe" in arch or field(reader, f"{arch}.expert_count", 0):
            raise ValueError(f"GGUF architecture {arch!r} is a mixture of experts (MoE), which spct does not convert "
                             f"(it converts {supported}; of the MoE ones only {_MOE_ARCHITECTURES})")
        raise ValueError(f"unsupported GGUF architecture {arch!r}: spct converts only {supported}")
    if field(reader, f"{arch}.expert_count", 0) and not ARCHS[arch].experts:
        raise ValueError(f"GGUF architecture {arch!r} with experts (MoE) is not supported (spct converts experts "
                         f"only for {_MOE_ARCHITECTURES})")
    return arch


def model_config(reader) -> dict:
    """The Hugging Face ``config.json`` dict for the metadata of a ``gguf.GGUFReader``."""
    m = Meta(reader, check_architecture(reader))
    cfg = _base_config(m)
    cfg.update(_EXTRA[m.arch](m, cfg))
    return cfg


def _base_config(m: Meta) -> dict:
    hidden, n_head = m.uint("embedding_length"), m.uint("attention.head_count")
    n_kv = m.uint("attention.head_count_kv", n_head)
    head_dim = m.uint("attention.key_length", hidden // n_head)
    if m.uint("attention.value_length", head_dim) != head_dim:
        raise ValueError(f"GGUF attention.value_length {m('attention.value_length')} differs from key_length "
                         f"{head_dim}; spct converts models with one head size")
    if "token_embd.weight" not in m.tensors:
        raise ValueError("GGUF tensor 'token_embd.weight' is missing")
    tok = lambda key: m.top(f"tokenizer.ggml.{key}", None)  # noqa: E731
    return {
        # token_embd is [hidden, vocab] in GGUF order: the vocab is its last dim.
        "vocab_size": int(m.tensors["token_embd.weight"].shape[-1]),
        "hidden_size": hidden,
        "intermediate_size": m.uint("feed_forward_length"),
        "num_hidden_layers": m.uint("block_count"),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": head_dim,
        "max_position_embeddings": m("context_length", 4096),
        "rms_norm_eps": f32(m("attention.layer_norm_rms_epsilon")),
        "rope_theta": f32(m("rope.freq_base", 10000.0)),
        "tie_word_embeddings": "output.weight" not in m.tensors,
        "bos_token_id": tok("bos_token_id"),
        "eos_token_id": tok("eos_token_id"),
        "pad_token_id": tok("padding_token_id"),
        "torch_dtype": "float32",
        "use_cache": True,
    }


def _names(arch: GGUFArch) -> dict:
    return {"architectures": [arch.hf_arch], "model_type": arch.model_type}


def _whole_rope(m: Meta, cfg: dict) -> None:
    rope_dim = m.uint("rope.dimension_count", cfg["head_dim"])
    if rope_dim != cfg["head_dim"]:
        raise ValueError(f"GGUF {m.arch}.rope.dimension_count {rope_dim} is not the head size {cfg['head_dim']}: "
                         f"partial rotary embeddings are converted only for phi3")


def rope_scaling(m: Meta) -> dict | None:
    """``rope_scaling`` from ``rope.scaling.*``: none, linear or yarn (for Gemma 3: its global layers')."""
    kind = m("rope.scaling.type", "none")
    if kind == "none":
        return None
    if kind == "linear":
        return {"rope_type": "linear", "factor": f32(m("rope.scaling.factor"))}
    if kind == "yarn":
        out = {"rope_type": "yarn", "factor": f32(m("rope.scaling.factor")),
               "original_max_position_embeddings": m("rope.scaling.original_context_length")}
        for key, name in (("yarn_beta_fast", "beta_fast"), ("yarn_beta_slow", "beta_slow"),
                          ("yarn_attn_factor", "attention_factor")):
            if (value := m(f"rope.scaling.{key}", None)) is not None:
                out[name] = f32(value)
        return out
    raise ValueError(f"GGUF {m.arch}.rope.scaling.type {kind!r} is not supported (only none, linear, yarn)")


def sliding_layers(m: Meta, n_layers: int, period: int) -> list[bool]:
    """Per layer: does it use the sliding window? ``attention.sliding_window_pattern`` (a period or one bool per
    layer), else ``period`` (0: every layer), read as llama.cpp's ``set_swa_pattern``."""
    value = m("attention.sliding_window_pattern", period)
    if isinstance(value, list):
        if len(value) != n_layers:
            raise ValueError(f"GGUF {m.arch}.attention.sliding_window_pattern has {len(value)} entries for "
                             f"{n_layers} layers")
        return [bool(v) for v in value]
    return [value == 0 or i % value < value - 1 for i in range(n_layers)]


def _layer_types(sliding: list[bool]) -> list[str]:
    return ["sliding_attention" if s else "full_attention" for s in sliding]


def _period(sliding: list[bool]) -> int | None:
    """The n of transformers' sliding_window_pattern (layer i global when (i + 1) % n == 0) that gives `sliding`."""
    for n in range(1, len(sliding) + 1):
        if sliding == [(i + 1) % n != 0 for i in range(len(sliding))]:
            return n
    return None


def _llama(m: Meta, cfg: dict) -> dict:
    _whole_rope(m, cfg)
    window = m.uint("attention.sliding_window", 0)
    bias = m.has("blk.0.attn_q.bias")
    common = {"hidden_act": "silu", "rope_scaling": rope_scaling(m)}
    if not window:
        return {**_names(ARCHS["llama"]), **common, "attention_bias": bias, "mlp_bias": False}
    if bias:
        raise ValueError("GGUF llama model with both attention.sliding_window (Mistral) and q/k/v biases is not "
                         "supported")
    return {**_names(MISTRAL), **common, "sliding_window": window}


def _qwen(m: Meta, cfg: dict) -> dict:
    _whole_rope(m, cfg)
    n = cfg["num_hidden_layers"]
    out = {**_names(ARCHS[m.arch]), "hidden_act": "silu", "rope_scaling": rope_scaling(m),
           "use_sliding_window": False, "sliding_window": None, "max_window_layers": n}
    if m.arch in ("qwen3", "qwen3moe"):
        out["attention_bias"] = m.has("blk.0.attn_q.bias")
    window = m.uint("attention.sliding_window", 0)
    sliding = sliding_layers(m, n, 0) if window else [False] * n
    if any(sliding):
        # transformers < 4.53 has no layer_types: the window starts at layer max_window_layers.
        first = sliding.index(True)
        out.update(use_sliding_window=True, sliding_window=window, layer_types=_layer_types(sliding),
                   max_window_layers=first if all(sliding[first:]) else n)
    return out


def _phi3(m: Meta, cfg: dict) -> dict:
    head_dim = cfg["head_dim"]
    rope_dim = m.uint("rope.dimension_count", head_dim)
    original = m("rope.scaling.original_context_length", cfg["max_position_embeddings"])
    out = {**_names(ARCHS["phi3"]), "hidden_act": "silu", "original_max_position_embeddings": original,
           "sliding_window": m.uint("attention.sliding_window", 0) or None,  # 0: none (Phi-4)
           "rope_scaling": _phi3_rope_scaling(m, cfg) or rope_scaling(m)}
    if rope_dim != head_dim:
        out["partial_rotary_factor"] = rope_dim / head_dim
    return out


def _phi3_rope_scaling(m: Meta, cfg: dict) -> dict | None:
    """Phi-3's long-context RoPE ("longrope"): llama.cpp stores its factors as tensors and the attention factor,
    which must be the longrope one, sqrt(1 + ln(scale) / ln(original context))."""
    if not m.has("rope_factors_long.weight"):
        return None
    factors = {name: [f32(x) for x in np.asarray(m.tensors[f"rope_factors_{name}.weight"].data, np.float32)]
               for name in ("long", "short")}
    orig = m("rope.scaling.original_context_length")
    scale = cfg["max_position_embeddings"] / orig
    want = math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1 else 1.0
    got = m("rope.scaling.attn_factor", want)
    if not math.isclose(got, want, rel_tol=1e-5):
        raise ValueError(f"GGUF phi3.rope.scaling.attn_factor {got} is not the longrope one ({want:.6f}); only "
                         "longrope scaling is converted for phi3")
    return {"rope_type": "longrope", "long_factor": factors["long"], "short_factor": factors["short"]}


def _query_pre_attn_scalar(m: Meta, cfg: dict) -> float:
    """Gemma's query_pre_attn_scalar: from attention.scale when the file has it, else llama.cpp's rule."""
    scale = m("attention.scale", None)
    if scale:
        x = 1.0 / float(scale) ** 2
        return round(x) if abs(x - round(x)) < 1e-4 * x else f32(x)  # float32 noise on the integers they are
    if cfg["num_hidden_layers"] == _GEMMA_27B_LAYERS[m.arch]:
        return cfg["hidden_size"] // cfg["num_attention_heads"]
    return cfg["head_dim"]


def _gemma(m: Meta, cfg: dict) -> dict:
    _whole_rope(m, cfg)
    gemma3, n = m.arch == "gemma3", cfg["num_hidden_layers"]
    window = m.uint("attention.sliding_window", 0 if gemma3 else 4096)
    sliding = sliding_layers(m, n, 6 if gemma3 else 2) if window else [False] * n
    out = {**_names(ARCHS[m.arch]), "hidden_activation": "gelu_pytorch_tanh",
           "query_pre_attn_scalar": _query_pre_attn_scalar(m, cfg),
           # transformers' Gemma builds a sliding mask even with no sliding layer: a window as long as the context
           "sliding_window": window or cfg["max_position_embeddings"],
           "layer_types": _layer_types(sliding), "rope_scaling": rope_scaling(m)}
    local_base = m("rope.freq_base_swa", 10000.0 if gemma3 else cfg["rope_theta"])
    if gemma3:
        out.update(rope_local_base_freq=f32(local_base), attn_logit_softcapping=None,
                   final_logit_softcapping=_softcap(m("final_logit_softcapping", None)))
        if (period := _period(sliding)) is not None:
            out["sliding_window_pattern"] = period  # what transformers < 4.53 reads instead of layer_types
        return out
    if f32(local_base) != cfg["rope_theta"]:
        raise ValueError(f"GGUF gemma2.rope.freq_base_swa {local_base} differs from rope.freq_base "
                         f"{cfg['rope_theta']}; Gemma 2 has one RoPE base")
    out.update(attn_logit_softcapping=_softcap(m("attn_logit_softcapping", 50.0)),
               final_logit_softcapping=_softcap(m("final_logit_softcapping", 30.0)))
    return out


def _softcap(value) -> float | None:
    return f32(value) if value else None


def _qwen3moe(m: Meta, cfg: dict) -> dict:
    """Qwen3's keys and the experts' (see the module docstring for what llama.cpp leaves out)."""
    out = _qwen(m, cfg)
    experts, used = m.uint("expert_count"), m.uint("expert_used_count")
    if not 0 < used <= experts:
        raise ValueError(f"GGUF qwen3moe.expert_used_count {used} is not in 1..expert_count ({experts})")
    if (gating := m("expert_gating_func", 1)) != 1:
        raise ValueError(f"GGUF qwen3moe.expert_gating_func {gating} is not supported (only 1: softmax)")
    if (scale := m("expert_weights_scale", 0.0)) not in (0.0, 1.0):
        raise ValueError(f"GGUF qwen3moe.expert_weights_scale {scale} is not supported (only 1, or 0: none)")
    n = cfg["num_hidden_layers"]
    moe = [any(m.has(f"blk.{i}.{base}.weight") for base in (*_ROUTER, *_EXPERTS)) for i in range(n)]
    out.update(num_experts=experts, num_experts_per_tok=used,
               moe_intermediate_size=m.uint("expert_feed_forward_length", cfg["intermediate_size"] // used),
               norm_topk_prob=bool(m("expert_weights_norm", True)), decoder_sparse_step=1,
               mlp_only_layers=[i for i in range(n) if not moe[i]])
    return out


_EXTRA = {"llama": _llama, "qwen2": _qwen, "qwen3": _qwen, "phi3": _phi3, "gemma2": _gemma, "gemma3": _gemma,
          "qwen3moe": _qwen3moe}


def expected_parameters(cfg: dict) -> list[str]:
    """The Hugging Face parameter names a checkpoint of ``cfg`` (a :func:`model_config` dict) has."""
    arch = BY_HF_ARCH[cfg["architectures"][0]]
    names = ["model.embed_tokens.weight", "model.norm.weight"]
    if not cfg["tie_word_embeddings"]:
        names.append("lm_head.weight")
    modules = [v for k, v in arch.blocks.items() if not (arch.fused and k in ("attn_q", "attn_k", "attn_v"))]
    # Qwen2: q/k/v biases always; Llama, Qwen3: q/k/v/o biases when attention_bias
    biases = "qkv" if arch.hf_arch == "Qwen2ForCausalLM" else "qkvo" if cfg.get("attention_bias") else ""
    for i in range(cfg["num_hidden_layers"]):
        names += [f"model.layers.{i}.{module}.weight" for module in _layer_modules(arch, cfg, i, modules)]
        names += [f"model.layers.{i}.self_attn.{p}_proj.bias" for p in biases]
    return names


def _layer_modules(arch: GGUFArch, cfg: dict, i: int, modules: list[str]) -> list[str]:
    """The modules of layer i: with experts, a dense layer has no router, an MoE layer a router and E experts."""
    if not arch.experts:
        return modules
    if i in (cfg.get("mlp_only_layers") or ()):
        return [m for m in modules if m not in _ROUTER.values()]
    experts = [f"mlp.experts.{e}.{p}" for e in range(cfg["num_experts"]) for p in arch.experts.values()]
    return [m for m in modules if m not in _DENSE_FFN] + experts


def gguf_tensor_name(hf_name: str, arch: GGUFArch) -> str:
    """The GGUF name llama.cpp gives a Hugging Face parameter of ``arch`` (for messages)."""
    module, _, suffix = hf_name.rpartition(".")
    for gguf_base, hf_base in GLOBAL_NAMES.items():
        if module == hf_base:
            return f"{gguf_base}.{suffix}"
    _, _, layer, rest = module.split(".", 3)
    if arch.experts and (expert := re.fullmatch(r"mlp\.experts\.\d+\.(\w+)", rest)):
        return f"blk.{layer}.{next(k for k, v in arch.experts.items() if v == expert[1])}.{suffix}"
    base = next(k for k, v in arch.blocks.items() if v == rest)
    return f"blk.{layer}.{base}.{suffix}"
