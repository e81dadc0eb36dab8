"""The architectures the runner takes, each one's differences from the Llama skeleton stated once (`Arch`), and the
facts of one checkpoint that the runner reads from its config.json (`LlamaConfig`).

The skeleton (`spct.engine.llama.LlamaRunner`): token embeddings; per layer an RMSNorm, attention with GQA and RoPE,
a residual add, an RMSNorm, a gated MLP, a residual add; a final RMSNorm and the LM head. What each architecture
changes:

| architecture | changes |
|---|---|
| Llama | none (attention_bias, mlp_bias off; RoPE scaling where static) |
| Mistral | a sliding window on every layer when config.json sets one |
| Qwen2 | q/k/v biases; sliding windows on the layers `layer_types` names |
| Qwen3 | RMSNorm over each head's q and k before RoPE; windows as Qwen2 |
| Qwen3-MoE | Qwen3's attention; mixture-of-experts MLPs (a router's top-k of E experts) on the layers config.json
  names (`decoder_sparse_step`, `mlp_only_layers`) |
| Phi-3 | one fused qkv_proj and one gate_up_proj weight; a window on every layer when set |
| Gemma 2 | embeddings times sqrt(hidden); RMSNorm by (1 + w); norms after attention and around the MLP; GeGLU (tanh
  GELU); attention and final logit soft-capping; the query scale from query_pre_attn_scalar; sliding and global
  layers alternating (`layer_types`) |
| Gemma 3 | Gemma 2's, and q/k RMSNorm, no soft-capping, one RoPE table per layer type (local and global bases) |

The model facts come from transformers' own config class for the checkpoint's model_type (its defaults: the layer
types Gemma 3 derives from its pattern, the RoPE parameters it standardises), so the runner reads what the
transformers model reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

__all__ = ["ARCHS", "Arch", "LlamaConfig", "check_weights", "hf_config", "load_weights", "rope_tables", "supported"]


@dataclass(frozen=True)
class Arch:
    """What an architecture changes in the skeleton (module docstring)."""

    norm_offset: float = 0.0  # RMSNorm scales by (norm_offset + w): 1 for Gemma
    qk_norm: bool = False  # RMSNorm over each head's q and k (q_norm, k_norm) before RoPE
    sandwich: bool = False  # post_attention_layernorm on the attention's output, pre/post_feedforward_layernorm
    embed_scale: bool = False  # embeddings times sqrt(hidden_size), rounded to the model dtype first
    fused: bool = False  # self_attn.qkv_proj and mlp.gate_up_proj instead of q/k/v_proj and gate/up_proj
    qkv_bias: bool = False  # q/k/v biases always (else when config.json's attention_bias says so)
    layered_rope: bool = False  # rope_parameters per layer type
    moe: bool = False  # mixture-of-experts MLPs (spct.engine.moe) on the layers config.json names


ARCHS: dict[str, Arch] = {
    "LlamaForCausalLM": Arch(),
    "MistralForCausalLM": Arch(),
    "Qwen2ForCausalLM": Arch(qkv_bias=True),
    "Qwen3ForCausalLM": Arch(qk_norm=True),
    "Qwen3MoeForCausalLM": Arch(qk_norm=True, moe=True),
    "Phi3ForCausalLM": Arch(fused=True),
    "Gemma2ForCausalLM": Arch(norm_offset=1.0, sandwich=True, embed_scale=True),
    "Gemma3ForCausalLM": Arch(norm_offset=1.0, qk_norm=True, sandwich=True, embed_scale=True, layered_rope=True),
}
ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh"}
STATIC_ROPE = ("default", "linear", "llama3", "yarn", "longrope")  # position-independent inverse frequencies
GLOBAL = "full_attention"


def _architecture(cfg: dict) -> str:
    return (cfg.get("architectures") or ["?"])[0]


def hf_config(cfg: dict):
    """transformers' config object for a config.json dict (its class for cfg["model_type"]); ValueError naming the
    field transformers refused."""
    from transformers import CONFIG_MAPPING

    try:
        return CONFIG_MAPPING[cfg["model_type"]](**{k: v for k, v in cfg.items() if k != "model_type"})
    except KeyError as e:
        raise ValueError(f"config.json: model_type {cfg.get('model_type')!r} is unknown to transformers "
                         f"({e.args[0]!r})") from None
    except (TypeError, ValueError) as e:
        raise ValueError(f"config.json: transformers refuses it ({str(e).splitlines()[0]})") from None


def _activation(hf) -> str:
    return getattr(hf, "hidden_activation", None) or getattr(hf, "hidden_act", "silu")


def _rope_params(hf, layer_type: str) -> dict:
    params = hf.rope_parameters or {}
    return params.get(layer_type) or {} if layer_type else params


def _layer_types(hf) -> list[str]:
    types = getattr(hf, "layer_types", None)
    return list(types) if types else [GLOBAL] * hf.num_hidden_layers


def supported(cfg: dict) -> str | None:
    """None when the runner handles this config.json, else why not (the engine then uses transformers)."""
    arch = _architecture(cfg)
    if arch not in ARCHS:
        return f"architecture {arch} (the runner has {', '.join(ARCHS)})"
    if "model_type" not in cfg:
        return "config.json has no model_type"
    try:
        hf = hf_config(cfg)
    except ValueError as e:
        return str(e)
    act = _activation(hf)
    if act not in ACTIVATIONS:
        return f"hidden_act {act!r} (the runner has {', '.join(ACTIVATIONS)})"
    if getattr(hf, "mlp_bias", False):
        return "mlp_bias"
    if getattr(hf, "use_bidirectional_attention", False):
        return "use_bidirectional_attention"
    for layer_type in sorted(set(_layer_types(hf))) if ARCHS[arch].layered_rope else [""]:
        params = _rope_params(hf, layer_type)
        rope = params.get("rope_type") or params.get("type") or "default"
        if rope not in STATIC_ROPE:
            return f"rope type {rope!r}"
        if params.get("partial_rotary_factor", 1.0) != 1.0:
            return f"partial_rotary_factor {params['partial_rotary_factor']} (the runner rotates whole heads)"
    return None


@dataclass(frozen=True)
class LlamaConfig:
    """The fields of a config.json that the runner uses (`from_hf`)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_positions: int
    tie_word_embeddings: bool
    qkv_bias: bool
    arch: Arch = Arch()
    activation: str = "silu"  # the MLP's gate: "silu" or "gelu_tanh"
    windows: tuple[int, ...] = ()  # per layer: its sliding window in tokens, 0 for a global layer (() all global)
    layer_types: tuple[str, ...] = ()  # per layer: its rope_parameters key where the RoPE is per layer type
    query_scale: float = 0.0  # multiplies q . k (0: head_dim ** -0.5)
    attn_softcap: float = 0.0  # attention scores become c * tanh(score / c) (0: none)
    final_softcap: float = 0.0  # the same on the logits
    moe_layers: tuple[int, ...] = ()  # the layers whose MLP is a mixture of experts
    experts: int = 0  # experts per MoE layer, each a gated MLP of expert_size
    expert_size: int = 0
    experts_per_token: int = 0
    norm_topk: bool = False  # the chosen experts' probabilities renormalised to sum to 1

    @classmethod
    def from_hf(cls, cfg: dict) -> LlamaConfig:
        """From a config.json dict with a model_type; KeyError for a missing required field, ValueError for one
        transformers refuses."""
        heads = cfg["num_attention_heads"]
        arch = ARCHS.get(_architecture(cfg), Arch())
        hf = hf_config(cfg)
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
        types = _layer_types(hf)
        window = getattr(hf, "sliding_window", None) or 0
        if getattr(hf, "layer_types", None):  # Qwen2/3, Gemma: the layers named sliding
            windows = tuple(window if t == "sliding_attention" else 0 for t in types)
        else:  # Mistral, Phi-3: every layer when config.json sets a window
            windows = (window,) * cfg["num_hidden_layers"]
        scalar = getattr(hf, "query_pre_attn_scalar", None)
        experts = getattr(hf, "num_experts", 0) if arch.moe else 0
        step, dense = getattr(hf, "decoder_sparse_step", 1) or 1, set(getattr(hf, "mlp_only_layers", None) or ())
        moe_layers = tuple(i for i in range(hf.num_hidden_layers) if experts and i not in dense and (i + 1) % step == 0)
        return cls(
            vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"], intermediate_size=cfg["intermediate_size"],
            num_layers=cfg["num_hidden_layers"], num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads") or heads, head_dim=head_dim,
            rms_norm_eps=cfg["rms_norm_eps"], max_positions=cfg.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
            qkv_bias=arch.qkv_bias or bool(cfg.get("attention_bias")), arch=arch,
            activation=ACTIVATIONS.get(_activation(hf), "silu"),
            windows=windows if any(windows) else (),
            layer_types=tuple(types) if arch.layered_rope else (),
            query_scale=(scalar or head_dim) ** -0.5,  # transformers' scaling, to the bit
            attn_softcap=float(getattr(hf, "attn_logit_softcapping", None) or 0.0),
            final_softcap=float(getattr(hf, "final_logit_softcapping", None) or 0.0), moe_layers=moe_layers,
            experts=experts, expert_size=getattr(hf, "moe_intermediate_size", 0) if experts else 0,
            experts_per_token=getattr(hf, "num_experts_per_tok", 0) if experts else 0,
            norm_topk=bool(getattr(hf, "norm_topk_prob", False)))


def rope_tables(cfg: dict, config: LlamaConfig) -> dict[str, tuple[torch.Tensor, float]]:
    """RoPE inverse frequencies and attention factor, as transformers computes them: {"": ...} for one table, or
    one per layer type (Gemma 3)."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf = hf_config(cfg)
    tables = {}
    for layer_type in sorted(set(config.layer_types)) or [""]:
        params = _rope_params(hf, layer_type)
        rope = params.get("rope_type") or params.get("type") or "default"
        if rope == "default":
            base, dim = params.get("rope_theta", 10000.0), config.head_dim
            tables[layer_type] = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim)), 1.0
        elif layer_type:
            tables[layer_type] = ROPE_INIT_FUNCTIONS[rope](hf, None, layer_type=layer_type)
        else:
            tables[layer_type] = ROPE_INIT_FUNCTIONS[rope](hf, None)
    return tables


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint in `path` (its *.safetensors, else its pytorch_model*.bin), on the CPU;
    ValueError naming a file that cannot be read."""
    weights: dict[str, torch.Tensor] = {}
    files = sorted(path.glob("*.safetensors"))
    for f in files:
        try:
            weights.update(load_file(f))
        except (SafetensorError, OSError) as e:
            reason = str(e).removeprefix("Error while deserializing header: ")
            raise ValueError(f"{f} is not a valid safetensors file ({reason})") from None
    for f in [] if files else sorted(path.glob("pytorch_model*.bin")):
        try:  # weights_only: tensors and containers, no arbitrary pickled code
            weights.update(torch.load(f, map_location="cpu", weights_only=True))
        except Exception as e:  # noqa: BLE001 - pickle and zip readers fail in many ways on a bad file
            raise ValueError(f"{f} is not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from None
    return weights


def _expected_shapes(c: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor the runner reads, with the shape config.json implies (lm_head is optional: tied or absent, the
    embedding serves)."""
    q, kv, hidden, inter = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim, c.hidden_size, c.intermediate_size
    shapes = {"model.embed_tokens.weight": (c.vocab_size, hidden), "model.norm.weight": (hidden,)}
    per_layer = {"input_layernorm.weight": (hidden,), "post_attention_layernorm.weight": (hidden,),
                 "self_attn.o_proj.weight": (hidden, q), "mlp.down_proj.weight": (hidden, inter)}
    if c.arch.fused:
        per_layer.update({"self_attn.qkv_proj.weight": (q + 2 * kv, hidden), "mlp.gate_up_proj.weight":
                          (2 * inter, hidden)})
    else:
        per_layer.update({"self_attn.q_proj.weight": (q, hidden), "self_attn.k_proj.weight": (kv, hidden),
                          "self_attn.v_proj.weight": (kv, hidden), "mlp.gate_proj.weight": (inter, hidden),
                          "mlp.up_proj.weight": (inter, hidden)})
    if c.qkv_bias:
        per_layer.update({"self_attn.q_proj.bias": (q,), "self_attn.k_proj.bias": (kv,),
                          "self_attn.v_proj.bias": (kv,)})
    if c.arch.qk_norm:
        per_layer.update({"self_attn.q_norm.weight": (c.head_dim,), "self_attn.k_norm.weight": (c.head_dim,)})
    if c.arch.sandwich:
        per_layer.update({"pre_feedforward_layernorm.weight": (hidden,),
                          "post_feedforward_layernorm.weight": (hidden,)})
    dense = ("mlp.gate_up_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight")
    e, size = c.experts, c.expert_size
    moe = {name: shape for name, shape in per_layer.items() if name not in dense}
    moe.update({"mlp.gate.weight": (e, hidden), "mlp.experts.gate_up_proj": (e, 2 * size, hidden),
                "mlp.experts.down_proj": (e, hidden, size)})
    for i in range(c.num_layers):
        layer = moe if i in c.moe_layers else per_layer
        shapes.update({f"model.layers.{i}.{name}": shape for name, shape in layer.items()})
    return shapes


def check_weights(path: Path, config: LlamaConfig, weights: dict[str, torch.Tensor]) -> None:
    """ValueError naming the first tensor that is missing or whose shape differs from what config.json implies."""
    for name, shape in _expected_shapes(config).items():
        if name not in weights:
            raise ValueError(f"{path}: tensor {name!r} is missing from the weights (config.json has "
                             f"{config.num_layers} layers; the files hold {len(weights)} tensors)")
        if tuple(weights[name].shape) != shape:
            raise ValueError(f"{path}: tensor {name!r} has shape {tuple(weights[name].shape)}, config.json implies "
                             f"{shape}")
