"""GGUF round trip for every architecture the converter takes (`spct.engine.gguf_archs`): a tiny random checkpoint
(tests/tiny_models.py) written as llama.cpp writes a GGUF (tests/gguf_writer.py: float32, its q/k permutation, Gemma's
1 + w norms, Phi-3's fused tensors, Qwen3-MoE's stacked experts) and converted back by
`spct.engine.models.fetch(path.gguf)` gives the same weights, a config transformers reads as the source's, and the
same fp32 greedy tokens on transformers and on `spct.Engine`. Architectures the converter refuses give a one-line ValueError naming them."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
import tiny_models
import torch
from gguf_writer import write_gguf
from safetensors.numpy import load_file
from transformers import AutoConfig

import spct
from spct.engine import gguf_archs, gguf_convert, llama, models

# llama, qwen2, mistral, qwen3, qwen3_moe (an MoE layer and a dense one), phi3, gemma2, gemma3
ARCHS = list(tiny_models.configs())
NEW = 16
PROMPT = np.random.default_rng(7).integers(100, 49000, size=40).tolist()  # past the 24-token windows
# What transformers builds the model from: equal on the source and the converted config.
FIELDS = ("architectures", "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
          "num_attention_heads", "num_key_value_heads", "rms_norm_eps", "max_position_embeddings",
          "rope_parameters", "tie_word_embeddings", "attention_bias", "sliding_window", "use_sliding_window",
          "layer_types", "query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping",
          "hidden_activation", "hidden_act", "original_max_position_embeddings", "bos_token_id", "eos_token_id",
          "num_experts", "num_experts_per_tok", "moe_intermediate_size", "norm_topk_prob", "mlp_only_layers",
          "decoder_sparse_step")


@pytest.fixture(scope="module")
def spct_cache(tmp_path_factory, default_model_dir):
    """SPCT_CACHE in a temporary folder for this module (after the default model is in the user's cache)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPCT_CACHE", str(tmp_path_factory.mktemp("spct-cache")))
        yield


@pytest.fixture(scope="module", params=ARCHS)
def pair(request, tmp_path_factory, default_model_dir, spct_cache):
    """(arch, the tiny source checkpoint, its conversion through GGUF)."""
    arch = request.param
    root = tmp_path_factory.mktemp(arch)
    source = tiny_models.build(arch, root / "hf", default_model_dir)
    converted = models.fetch(write_gguf(source, root / f"tiny-{arch}.gguf"))
    assert converted.parent.parent.parent == models.cache_dir()  # <cache>/models/local/<stem>-<key>
    return arch, source, converted


def test_weights_and_config_come_back(pair):
    """Every tensor exactly, except Gemma's norms: llama.cpp stores 1 + w in float32, so w comes back within half
    a float32 step of 1 + w (an exact subtraction of 1 from the rounded 1 + w)."""
    arch, source, converted = pair
    want, got = load_file(str(source / "model.safetensors")), load_file(str(converted / "model.safetensors"))
    assert sorted(got) == sorted(want)
    for name, w in want.items():
        assert got[name].dtype == np.float32 and got[name].shape == w.shape, name
        if arch.startswith("gemma") and name.endswith("norm.weight"):
            assert np.all(np.abs(got[name] - w) <= np.spacing(np.float32(1) + w) / 2), name
        else:
            np.testing.assert_array_equal(got[name], w, err_msg=name)
    src, conv = AutoConfig.from_pretrained(source), AutoConfig.from_pretrained(converted)
    for key in FIELDS:
        assert getattr(conv, key, None) == getattr(src, key, None), key
    head_dim = [getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads for c in (src, conv)]
    assert head_dim[1] == head_dim[0]


def _hf_greedy(path) -> list[int]:
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    mask = torch.ones(1, len(PROMPT), dtype=torch.int64)
    with torch.no_grad():
        out = model.eval().generate(torch.tensor([PROMPT]), attention_mask=mask, max_new_tokens=NEW,
                                    min_new_tokens=NEW, do_sample=False)
    return out[0, len(PROMPT):].tolist()


def test_transformers_greedy_is_the_sources(pair):
    _, source, converted = pair
    assert _hf_greedy(converted) == _hf_greedy(source)


def test_engine_greedy_is_the_sources(pair):
    """On spct's runner (where it takes the architecture): the converted model decodes as the source does."""
    arch, source, converted = pair
    why = llama.supported(json.loads((converted / "config.json").read_text()))
    if why is not None:
        pytest.skip(f"spct's runner does not take the converted {arch} yet: {why}")
    outs = []
    for path in (source, converted):
        engine = spct.Engine.from_pretrained(path, dtype="float32")
        try:
            outs.append(engine.generate([PROMPT], max_new_tokens=NEW, min_new_tokens=NEW, temperature=0.0)[0][0])
        finally:
            engine.shutdown()
    assert outs[1].token_ids == outs[0].token_ids and len(outs[0].token_ids) == NEW


def test_tensor_names_are_the_gguf_packages():
    """Every GGUF tensor name the converter maps is one gguf.MODEL_TENSORS lists for that architecture (but a
    qwen3moe dense layer's ffn_gate/ffn_up/ffn_down, beyond llama.cpp: qwen3's names)."""
    for arch, spec in gguf_archs.ARCHS.items():
        known = {gguf.TENSOR_NAMES[t] for t in gguf.MODEL_TENSORS[gguf.MODEL_ARCH[arch.upper()]]}
        bases = {*spec.blocks, *(spec.experts or ())} - ({"ffn_gate", "ffn_up", "ffn_down"} if spec.experts else set())
        assert {f"blk.{{bid}}.{base}" for base in bases} <= known, arch
        assert set(gguf_archs.GLOBAL_NAMES) - {"output"} <= known and set(spec.dropped + spec.consumed) <= {
            f"{name}.weight" for name in known}, arch


def _tiny_gguf(path, arch: str, **uints) -> None:
    writer = gguf.GGUFWriter(str(path), arch)
    for key, value in uints.items():
        writer.add_uint32(f"{arch}.{key}", value)
    writer.add_tensor("token_embd.weight", np.zeros((4, 2), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("arch, uints, words", [
    ("qwen2moe", {"expert_count": 8}, ("'qwen2moe'", "mixture of experts (MoE)", "only qwen3moe")),
    ("llama", {"expert_count": 8}, ("'llama'", "experts (MoE)", "only for qwen3moe")),
    ("gemma", {}, ("'gemma'", "converts only llama, qwen2, qwen3, phi3, gemma2, gemma3")),
])
def test_refused_architectures_are_one_line(tmp_path, arch, uints, words):
    path = tmp_path / f"{arch}.gguf"
    _tiny_gguf(path, arch, **uints)
    with pytest.raises(ValueError) as err:
        gguf_convert.convert_gguf(path, tmp_path / "out")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{path}: ") and all(w in msg for w in words), msg
    assert not (tmp_path / "out").exists()


def _synthetic(path, arch: str, meta: dict, tensors: dict) -> gguf.GGUFReader:
    """A GGUF of `arch` with metadata `meta` ({arch}.key -> int, float or list of bools) and float32 `tensors`
    (torch-order shapes); returns its reader."""
    writer = gguf.GGUFWriter(str(path), arch)
    for key, value in meta.items():
        add = writer.add_array if isinstance(value, list) else writer.add_float32 if isinstance(
            value, float) else writer.add_uint32
        add(f"{arch}.{key}", value)
    for name, shape in tensors.items():
        writer.add_tensor(name, np.arange(np.prod(shape), dtype=np.float32).reshape(shape))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return gguf.GGUFReader(str(path))


SHAPE = {"embedding_length": 64, "feed_forward_length": 128, "attention.head_count": 4,
         "attention.head_count_kv": 2, "attention.layer_norm_rms_epsilon": 1e-6}


@pytest.mark.parametrize("arch, meta, want", [
    ("gemma2", {"block_count": 4, "attention.key_length": 32},  # llama.cpp's Gemma 2: period 2, 4096, 50, 30
     {"query_pre_attn_scalar": 32, "sliding_window": 4096, "attn_logit_softcapping": 50.0,
      "final_logit_softcapping": 30.0, "layer_types": ["sliding_attention", "full_attention"] * 2}),
    ("gemma2", {"block_count": 46, "attention.key_length": 32}, {"query_pre_attn_scalar": 16}),  # 27B: hidden/heads
    ("gemma3", {"block_count": 7, "attention.sliding_window": 512},  # period 6, local RoPE base 10000
     {"layer_types": ["sliding_attention"] * 5 + ["full_attention", "sliding_attention"],
      "sliding_window_pattern": 6, "rope_local_base_freq": 10000.0, "final_logit_softcapping": None}),
    ("gemma3", {"block_count": 2, "context_length": 512}, {"layer_types": ["full_attention"] * 2,
                                                            "sliding_window": 512}),
    ("qwen2", {"block_count": 3, "attention.sliding_window": 24, "attention.sliding_window_pattern": [0, 1, 1]},
     {"use_sliding_window": True, "sliding_window": 24, "max_window_layers": 1,
      "layer_types": ["full_attention"] + ["sliding_attention"] * 2}),
    ("llama", {"block_count": 2, "attention.sliding_window": 24}, {"architectures": ["MistralForCausalLM"],
                                                                    "sliding_window": 24}),
])
def test_metadata_llama_cpp_leaves_out(tmp_path, arch, meta, want):
    """Facts with no GGUF key take llama.cpp's values; the keys some files add are read."""
    reader = _synthetic(tmp_path / "m.gguf", arch, {**SHAPE, **meta}, {"token_embd.weight": (8, 64)})
    cfg = gguf_archs.model_config(reader)
    assert {k: cfg.get(k) for k in want} == want
    AutoConfig.for_model(**cfg)  # transformers takes it


def test_phi3_long_context_rope(tmp_path):
    """Phi-3's longrope: factors from the rope_factors_* tensors, the attention factor checked against longrope's."""
    meta = {**SHAPE, "block_count": 1, "context_length": 131072, "rope.scaling.original_context_length": 4096,
            "rope.scaling.attn_factor": float(np.float32(np.sqrt(1 + np.log(32) / np.log(4096))))}
    tensors = {"token_embd.weight": (8, 64), "rope_factors_long.weight": (8,), "rope_factors_short.weight": (8,)}
    cfg = gguf_archs.model_config(_synthetic(tmp_path / "long.gguf", "phi3", meta, tensors))
    assert cfg["rope_scaling"] == {"rope_type": "longrope", "long_factor": [float(i) for i in range(8)],
                                   "short_factor": [float(i) for i in range(8)]}
    assert cfg["original_max_position_embeddings"] == 4096 and cfg["max_position_embeddings"] == 131072
    AutoConfig.for_model(**cfg)
    meta["rope.scaling.attn_factor"] = 1.5  # yarn's, not longrope's
    reader = _synthetic(tmp_path / "yarn.gguf", "phi3", meta, tensors)
    with pytest.raises(ValueError, match=r"^GGUF phi3.rope.scaling.attn_factor 1.5 is not the longrope one"):
        gguf_archs.model_config(reader)


def test_phi3_separate_qkv_are_fused_and_a_missing_tensor_is_named(tmp_path):
    layer = {"attn_norm": (64,), "attn_q": (64, 64), "attn_k": (32, 64), "attn_v": (32, 64), "attn_output": (64, 64),
             "ffn_norm": (64,), "ffn_up": (256, 64), "ffn_down": (64, 128)}
    tensors = {"token_embd.weight": (8, 64), "output_norm.weight": (64,),
               **{f"blk.0.{k}.weight": shape for k, shape in layer.items()}}
    reader = _synthetic(tmp_path / "phi3.gguf", "phi3", {**SHAPE, "block_count": 1}, tensors)
    got = gguf_convert.convert_tensors(reader, gguf_archs.model_config(reader))
    parts = [np.arange(np.prod(s), dtype=np.float32).reshape(s) for s in (layer["attn_q"], layer["attn_k"],
                                                                           layer["attn_v"])]
    np.testing.assert_array_equal(got["model.layers.0.self_attn.qkv_proj.weight"], np.concatenate(parts))
    assert "model.layers.0.self_attn.q_proj.weight" not in got
    del tensors["blk.0.ffn_down.weight"]
    path = tmp_path / "short.gguf"
    _synthetic(path, "phi3", {**SHAPE, "block_count": 1}, tensors)
    with pytest.raises(ValueError, match=r"^\S+short.gguf: GGUF tensor 'blk.0.ffn_down.weight' is missing "):
        gguf_convert.convert_gguf(path, tmp_path / "out")


def test_qwen3moe_metadata_llama_cpp_leaves_out(tmp_path):
    """No norm_topk_prob key (llama.cpp's qwen3moe always renormalises), expert_feed_forward_length defaulting to
    feed_forward_length / expert_used_count as llama.cpp's, a layer without router or experts dense; a router other
    than softmax is refused."""
    meta = {**SHAPE, "block_count": 2, "expert_count": 4, "expert_used_count": 2}
    tensors = {"token_embd.weight": (8, 64), "blk.0.ffn_gate_inp.weight": (4, 64)}
    cfg = gguf_archs.model_config(_synthetic(tmp_path / "moe.gguf", "qwen3moe", meta, tensors))
    want = {"architectures": ["Qwen3MoeForCausalLM"], "num_experts": 4, "num_experts_per_tok": 2,
            "moe_intermediate_size": 64, "norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": [1]}
    assert {k: cfg.get(k) for k in want} == want
    hf = AutoConfig.for_model(**cfg)
    assert (hf.num_experts, hf.norm_topk_prob, hf.mlp_only_layers) == (4, True, [1])
    reader = _synthetic(tmp_path / "sigmoid.gguf", "qwen3moe", {**meta, "expert_gating_func": 2}, tensors)
    with pytest.raises(ValueError, match=r"^GGUF qwen3moe.expert_gating_func 2 is not supported \(only 1: softmax\)$"):
        gguf_archs.model_config(reader)
