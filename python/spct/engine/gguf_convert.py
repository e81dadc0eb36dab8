"""Convert a Llama-architecture GGUF file into a Hugging Face model directory.

The output directory holds ``config.json``, ``generation_config.json``, a
float32 ``model.safetensors`` and the tokenizer files, and loads with
``transformers.AutoModelForCausalLM.from_pretrained(out_dir)``.

Layout notes
------------
* GGUF lists tensor dimensions fastest-varying first, i.e. reversed relative to
  torch: a linear layer with torch shape ``(out_features, in_features)`` is
  ``[in_features, out_features]`` in GGUF.  The raw data is row-major in the
  torch order, so only the shape needs reversing.
* llama.cpp's converter permutes the rows of ``attn_q`` / ``attn_k`` so that its
  RoPE kernel can rotate adjacent pairs; :func:`unpermute_rope_rows` undoes it.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from pathlib import Path

import numpy as np

from spct._atomic import atomic_file, write_json

__all__ = ["SUPPORTED_ARCHITECTURES", "convert_gguf", "hf_tensor_name", "llama_config", "unpermute_rope_rows"]

SUPPORTED_ARCHITECTURES = ("llama",)

_REQUIRED = object()

# GGUF tensor base name -> Hugging Face Llama module path.
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
# Present in some Llama GGUFs but with no Llama-config equivalent we can write.
_SKIPPED = {"rope_freqs.weight"}


def _field(reader, key: str, default=_REQUIRED):
    """Return a GGUF metadata value as a Python scalar, str, or list of those."""
    field = reader.fields.get(key)
    if field is None:
        if default is _REQUIRED:
            raise ValueError(f"GGUF metadata key {key!r} is missing")
        return default
    import gguf

    # field.data indexes the parts that hold the value(s); strings are uint8 arrays.
    parts = [field.parts[i] for i in field.data]
    if field.types[-1] == gguf.GGUFValueType.STRING:
        values = [bytes(p).decode("utf-8") for p in parts]
    else:
        values = [p.tolist()[0] for p in parts]
    return values if field.types[0] == gguf.GGUFValueType.ARRAY else values[0]


def _f32(x: float) -> float:
    """Shortest decimal that rounds to the same float32 (GGUF stores float32)."""
    return float(str(np.float32(x)))


def _check_architecture(reader) -> str:
    arch = _field(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"unsupported GGUF architecture {arch!r}: spct converts only {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    if _field(reader, f"{arch}.expert_count", 0):
        raise ValueError(f"GGUF architecture {arch!r} with experts (MoE) is not supported")
    return arch


def _rope_scaling(reader, arch: str) -> dict | None:
    kind = _field(reader, f"{arch}.rope.scaling.type", "none")
    if kind == "none":
        return None
    if kind == "linear":
        return {"rope_type": "linear", "factor": _f32(_field(reader, f"{arch}.rope.scaling.factor"))}
    raise ValueError(f"GGUF rope scaling type {kind!r} is not supported (only 'linear')")


def llama_config(reader) -> dict:
    """Build a ``LlamaConfig``-style dict from the metadata of a ``gguf.GGUFReader``."""
    arch = _check_architecture(reader)

    def meta(key, default=_REQUIRED):
        return _field(reader, f"{arch}.{key}", default)

    tensors = {t.name: t for t in reader.tensors}
    hidden, n_head = meta("embedding_length"), meta("attention.head_count")
    n_kv = meta("attention.head_count_kv", n_head)
    if isinstance(n_kv, list):
        raise ValueError("per-layer attention.head_count_kv is not supported")
    head_dim = meta("attention.key_length", hidden // n_head)
    if meta("rope.dimension_count", head_dim) != head_dim:
        raise ValueError("partial rotary embeddings (rope.dimension_count != head_dim) are not supported")
    tok = lambda key: _field(reader, f"tokenizer.ggml.{key}", None)  # noqa: E731
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        # token_embd is [hidden, vocab] in GGUF order: the vocab is its last dim.
        "vocab_size": int(tensors["token_embd.weight"].shape[-1]),
        "hidden_size": hidden,
        "intermediate_size": meta("feed_forward_length"),
        "num_hidden_layers": meta("block_count"),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": meta("context_length", 4096),
        "rms_norm_eps": _f32(meta("attention.layer_norm_rms_epsilon")),
        "rope_theta": _f32(meta("rope.freq_base", 10000.0)),
        "rope_scaling": _rope_scaling(reader, arch),
        "attention_bias": "blk.0.attn_q.bias" in tensors,
        "mlp_bias": False,
        "tie_word_embeddings": "output.weight" not in tensors,
        "bos_token_id": tok("bos_token_id"),
        "eos_token_id": tok("eos_token_id"),
        "pad_token_id": tok("padding_token_id"),
        "torch_dtype": "float32",
        "use_cache": True,
    }


def hf_tensor_name(gguf_name: str) -> str | None:
    """``blk.0.attn_q.weight`` -> ``model.layers.0.self_attn.q_proj.weight``; None if unknown."""
    base, _, suffix = gguf_name.rpartition(".")
    if base in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[base]}.{suffix}"
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)", base)
    if m and m[2] in _BLOCK_NAMES:
        return f"model.layers.{m[1]}.{_BLOCK_NAMES[m[2]]}.{suffix}"
    return None


def unpermute_rope_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's RoPE row permutation of a q/k projection.

    ``w``: ``(n_head * head_dim, ...)`` (a weight ``(rows, in_features)`` or a bias ``(rows,)``).
    Returns the same shape, rows in Hugging Face order.

    Hugging Face's ``rotate_half`` RoPE pairs dimension ``i`` of a head with
    ``i + head_dim/2``: per head the rows are ``[a_0..a_{d/2-1}, b_0..b_{d/2-1}]``.
    llama.cpp rotates adjacent pairs, so its converter stored them interleaved,
    ``[a_0, b_0, a_1, b_1, ...]``. Viewing each head as ``(d/2, 2)`` and
    transposing to ``(2, d/2)`` restores the split-halves order.
    """
    rows = w.shape[0]
    head_dim = rows // n_head
    if n_head * head_dim != rows or head_dim % 2:
        raise ValueError(f"cannot split {rows} rows into {n_head} heads of even size")
    per_head = w.reshape(n_head, head_dim // 2, 2, *w.shape[1:])
    return np.ascontiguousarray(per_head.swapaxes(1, 2).reshape(w.shape))


def _tensor_f32(tensor) -> np.ndarray:
    """Dequantize one ``ReaderTensor`` to float32 in torch layout (GGUF shape reversed)."""
    from gguf.quants import dequantize

    out = dequantize(tensor.data, tensor.tensor_type)
    return np.ascontiguousarray(out, dtype=np.float32).reshape(tuple(int(d) for d in reversed(tensor.shape)))


def convert_tensors(reader, config: dict, progress: bool = False) -> dict[str, np.ndarray]:
    """All GGUF tensors as float32 arrays keyed by Hugging Face parameter name (progress: a bar over tensors on
    stderr)."""
    from tqdm import tqdm

    heads = {"attn_q": config["num_attention_heads"], "attn_k": config["num_key_value_heads"]}
    out: dict[str, np.ndarray] = {}
    for tensor in tqdm(reader.tensors, desc="converting tensors", unit="tensor", disable=not progress,
                       file=sys.stderr):
        if tensor.name in _SKIPPED:
            warnings.warn(f"GGUF tensor {tensor.name!r} has no Llama equivalent and is dropped", stacklevel=2)
            continue
        name = hf_tensor_name(tensor.name)
        if name is None:
            raise ValueError(f"unexpected tensor {tensor.name!r} in a Llama GGUF file")
        try:
            w = _tensor_f32(tensor)
        except (ValueError, NotImplementedError, IndexError) as e:  # an unknown quant type or a short data block
            raise ValueError(f"GGUF tensor {tensor.name!r} cannot be read ({e})") from None
        kind = tensor.name.split(".")[-2]
        if kind in heads:  # q/k rows are stored permuted for llama.cpp's RoPE
            w = unpermute_rope_rows(w, heads[kind])
        out[name] = w
    return out


def _write_tokenizer(gguf_path: Path, out_dir: Path) -> None:
    """Convert the GGUF tokenizer (vocab, merges, special tokens, chat template) with transformers."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, local_files_only=True)
    tok.save_pretrained(str(out_dir))


def _say(progress: bool, line: str) -> None:
    if progress:
        print(line, file=sys.stderr, flush=True)


def _reader(gguf_path: Path):
    """A ``gguf.GGUFReader`` of ``gguf_path``, or ValueError naming the file."""
    import gguf

    try:
        return gguf.GGUFReader(str(gguf_path))
    except Exception as e:  # noqa: BLE001 - the reader fails on a bad file in many ways (ValueError, IndexError, ...)
        raise ValueError(f"{gguf_path} is not a readable GGUF file ({type(e).__name__}: {e})") from None


def convert_gguf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike, *, progress: bool = False) -> Path:
    """Write a Hugging Face Llama model directory for ``gguf_path`` into ``out_dir``.

    Weights are dequantized to float32 (``model.safetensors``). Raises ValueError naming the file for a file the
    GGUF reader cannot parse, architectures other than Llama and missing metadata or tensors. progress: a bar over
    the tensors on stderr. Returns ``out_dir`` as a Path.
    """
    from safetensors.numpy import save_file

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    # the reader (~7 s for the default model's 49k-token vocab) and the tokenizer (~14 s: transformers reads the
    # file again) take longer than the tensors; a line each says what is running
    _say(progress, f"reading {gguf_path.name} ...")
    reader = _reader(gguf_path)
    try:
        config = llama_config(reader)
        tensors = convert_tensors(reader, config, progress)
    except KeyError as e:  # a tensor llama_config reads (token_embd.weight) is absent
        raise ValueError(f"{gguf_path}: GGUF tensor {e.args[0]!r} is missing") from None
    except ValueError as e:
        raise ValueError(f"{gguf_path}: {e}") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_file(out_dir / "model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    del tensors, reader
    _say(progress, "converting the tokenizer ...")
    _write_tokenizer(gguf_path, out_dir)
    write_json(out_dir / "generation_config.json", {k: config[k] for k in ("bos_token_id", "eos_token_id",
                                                                        "pad_token_id")})
    write_json(out_dir / "config.json", config)  # last: a directory with config.json is complete
    return out_dir
