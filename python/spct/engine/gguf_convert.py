"""Convert a GGUF file (llama, qwen2, qwen3, phi3, gemma2, gemma3, qwen3moe: :mod:`spct.engine.gguf_archs`) into a
Hugging Face model directory.

The output directory holds ``config.json``, ``generation_config.json``, a
float32 ``model.safetensors`` and the tokenizer files, and loads with
``transformers.AutoModelForCausalLM.from_pretrained(out_dir)``.

Layout notes
------------
* GGUF lists tensor dimensions fastest-varying first, i.e. reversed relative to
  torch: a linear layer with torch shape ``(out_features, in_features)`` is
  ``[in_features, out_features]`` in GGUF.  The raw data is row-major in the
  torch order, so only the shape needs reversing.
* llama.cpp's converter permutes the rows of ``attn_q`` / ``attn_k`` of llama models so that its
  RoPE kernel can rotate adjacent pairs; :func:`unpermute_rope_rows` undoes it.
* It stores Gemma's RMSNorm weights as ``1 + w`` (Gemma's norm scales by ``1 + w``); 1 is subtracted here, in
  float32, so a norm weight comes back to within one float32 rounding of ``1 + w`` (the other tensors exactly).
* It stacks a Qwen3-MoE layer's experts into one 3-D tensor per projection (``ffn_gate_exps`` ...: torch order
  ``(E, rows, cols)``); :func:`convert_tensors` splits them into the Hub's ``mlp.experts.{e}.gate_proj.weight`` ...
  (one 2-D tensor per expert: what Qwen3-MoE checkpoints on the Hub hold and transformers loads).
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from pathlib import Path

import numpy as np

from spct._atomic import atomic_file, write_json
from spct.engine.gguf_archs import (ARCHS, BY_HF_ARCH, GLOBAL_NAMES, SUPPORTED_ARCHITECTURES, GGUFArch,
                                    expected_parameters, gguf_tensor_name, model_config)

__all__ = ["SUPPORTED_ARCHITECTURES", "convert_gguf", "convert_tensors", "hf_tensor_name", "model_config",
           "unpermute_rope_rows"]


def hf_tensor_name(gguf_name: str, arch: str = "llama") -> str | None:
    """``blk.0.attn_q.weight`` -> ``model.layers.0.self_attn.q_proj.weight`` for GGUF architecture ``arch``; None
    if unknown."""
    return _hf_name(gguf_name, ARCHS[arch])


def _hf_name(gguf_name: str, arch: GGUFArch) -> str | None:
    base, _, suffix = gguf_name.rpartition(".")
    if base in GLOBAL_NAMES:
        return f"{GLOBAL_NAMES[base]}.{suffix}"
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)", base)
    blocks = arch.blocks
    if m and m[2] in blocks:
        return f"model.layers.{m[1]}.{blocks[m[2]]}.{suffix}"
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
    """All GGUF tensors as float32 arrays keyed by Hugging Face parameter name, llama.cpp's changes undone (stacked
    experts split per expert) (``config``: the :func:`model_config` dict; without ``architectures``, Llama's)
    (progress: a bar over tensors on stderr)."""
    from tqdm import tqdm

    arch = BY_HF_ARCH[(config.get("architectures") or ["LlamaForCausalLM"])[0]]
    heads = {"attn_q": config["num_attention_heads"], "attn_k": config["num_key_value_heads"]}
    out: dict[str, np.ndarray] = {}
    for tensor in tqdm(reader.tensors, desc="converting tensors", unit="tensor", disable=not progress,
                       file=sys.stderr):
        if tensor.name in arch.consumed:
            continue
        if tensor.name in arch.dropped:
            warnings.warn(f"GGUF tensor {tensor.name!r} has no {arch.hf_arch} equivalent and is dropped",
                          stacklevel=2)
            continue
        if arch.experts and (stacked := re.fullmatch(r"blk\.(\d+)\.(\w+)\.weight", tensor.name)) and (
                stacked[2] in arch.experts):
            out.update(_split_experts(tensor, int(stacked[1]), arch.experts[stacked[2]], config))
            continue
        name = _hf_name(tensor.name, arch)
        if name is None:
            blocks = ",".join([*arch.blocks, *(arch.experts or ())])
            raise ValueError(f"unexpected tensor {tensor.name!r} in a GGUF file of {arch.hf_arch} (expected "
                             f"{', '.join(GLOBAL_NAMES)} and blk.N.{{{blocks}}})")
        w = _read(tensor)
        kind = tensor.name.split(".")[-2]
        if arch.permute_qk and kind in heads:  # q/k rows are stored permuted for llama.cpp's RoPE
            w = unpermute_rope_rows(w, heads[kind])
        if arch.norm_offset and tensor.name.endswith("norm.weight"):  # stored as norm_offset + w
            w = w - np.float32(arch.norm_offset)
        out[name] = w
    if arch.fused:
        _fuse_qkv(out, config["num_hidden_layers"])
    return out


def _read(tensor) -> np.ndarray:
    """:func:`_tensor_f32`, or a ValueError naming the tensor."""
    try:
        return _tensor_f32(tensor)
    except (ValueError, NotImplementedError, IndexError) as e:  # an unknown quant type or a short data block
        raise ValueError(f"GGUF tensor {tensor.name!r} cannot be read ({e})") from None


def _split_experts(tensor, layer: int, proj: str, config: dict) -> dict[str, np.ndarray]:
    """A stacked experts tensor ``blk.N.ffn_{gate,up,down}_exps`` (torch order ``(E, rows, cols)``) as one tensor
    per expert, ``model.layers.N.mlp.experts.{e}.{gate,up,down}_proj.weight``."""
    e, hidden, size = config["num_experts"], config["hidden_size"], config["moe_intermediate_size"]
    want = (e, hidden, size) if proj == "down_proj" else (e, size, hidden)
    w = _read(tensor)
    if w.shape != want:
        raise ValueError(f"GGUF tensor {tensor.name!r} has torch shape {w.shape}, expected {want} (expert_count, "
                         "embedding_length, expert_feed_forward_length)")
    return {f"model.layers.{layer}.mlp.experts.{i}.{proj}.weight": w[i] for i in range(e)}


def _fuse_qkv(out: dict[str, np.ndarray], n_layers: int) -> None:
    """Phi-3 files with separate attn_q/k/v tensors: concatenated (rows q, k, v) into ``qkv_proj`` in place."""
    for i in range(n_layers):
        prefix = f"model.layers.{i}.self_attn."
        parts = [out.pop(f"{prefix}{p}_proj.weight", None) for p in "qkv"]
        if all(p is None for p in parts):
            continue
        if any(p is None for p in parts) or f"{prefix}qkv_proj.weight" in out:
            raise ValueError(f"GGUF layer {i} needs either attn_qkv or all of attn_q, attn_k, attn_v (not a mix)")
        out[f"{prefix}qkv_proj.weight"] = np.concatenate(parts, axis=0)


def _check_complete(tensors: dict, config: dict) -> None:
    """ValueError naming the first GGUF tensor the model needs that the file lacks."""
    arch = BY_HF_ARCH[config["architectures"][0]]
    for name in expected_parameters(config):
        if name not in tensors:
            raise ValueError(f"GGUF tensor {gguf_tensor_name(name, arch)!r} is missing (a {arch.hf_arch} needs "
                             f"it for {name})")


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
    """Write a Hugging Face model directory for ``gguf_path`` into ``out_dir``.

    Weights are dequantized to float32 (``model.safetensors``). Raises ValueError naming the file for a file the
    GGUF reader cannot parse, architectures other than ``SUPPORTED_ARCHITECTURES`` and missing metadata or
    tensors. progress: a bar over the tensors on stderr. Returns ``out_dir`` as a Path.
    """
    from safetensors.numpy import save_file

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    # the reader (~7 s for the default model's 49k-token vocab) and the tokenizer (~14 s: transformers reads the
    # file again) take longer than the tensors; a line each says what is running
    _say(progress, f"reading {gguf_path.name} ...")
    reader = _reader(gguf_path)
    try:
        config = model_config(reader)
        tensors = convert_tensors(reader, config, progress)
        _check_complete(tensors, config)
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
