"""llama.cpp for bench_llama_cpp.py, through llama-cpp-python's low-level ctypes API (`llama_cpp.llama_decode` and
friends, not its `Llama` class): a bf16 GGUF of a local Hugging Face Llama folder, a prompt prefilled once, and k
sequences decoded in one batch that share the prompt's KV, as a llama.cpp user serves k samples of one prompt.

The GGUF is written with the `gguf` package (llama-cpp-python's wheel does not ship convert_hf_to_gguf.py); the
layout is that script's for Llama: the rows of q and k permuted for llama.cpp's RoPE (`_rope_permute`), 2-D weights
in bf16, norms in float32, the GPT-2 BPE vocab with its merges and special tokens. It is cached under the spct cache,
`<cache>/gguf/<model folder>-<key>.bf16.gguf` (key: the folder's path and its files' sizes and times), written
through `spct._atomic`, so a killed conversion leaves no half file.

Sharing: one context with `kv_unified` (one KV buffer for every sequence), the prompt decoded in sequence 0, then
`llama_memory_seq_cp` tags its cells with sequences 1..k-1 as well (no copy); each step is one `llama_decode` of k
tokens, one per sequence, each sampled by one sampler chain (EOS banned, as min_new_tokens = max_new_tokens,
temperature, then a seeded draw; greedy at temperature 0).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import sys
import time
from pathlib import Path

import llama_cpp as lc
import numpy as np

from spct._atomic import atomic_file
from spct.engine.models import cache_dir

GGML_LOG_LEVEL_ERROR = 3
N_BATCH = 2048  # llama.cpp's default n_batch: the ~1,000-token prompt is one llama_decode (ubatches of 512 inside)


def bf16_gguf(model_dir: str | Path) -> Path:
    """The bf16 GGUF of the Llama Hugging Face folder `model_dir`, converted once into the spct cache."""
    model_dir = Path(model_dir).resolve()
    stamp = [str(model_dir)] + [f"{p.name}\0{p.stat().st_size}\0{p.stat().st_mtime_ns}"
                                for p in sorted(model_dir.iterdir()) if p.is_file()]
    key = hashlib.sha256("\0".join(stamp).encode()).hexdigest()[:16]
    dest = cache_dir() / "gguf" / f"{model_dir.name}-{key}.bf16.gguf"
    if not dest.is_file():
        with atomic_file(dest) as tmp:
            _write_gguf(model_dir, tmp)
    return dest


def _rope_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute: Hugging Face rotates the two halves of a head, llama.cpp
    adjacent pairs, so the rows of each head are interleaved."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _write_gguf(model_dir: Path, out: Path) -> None:
    import gguf
    import torch
    from safetensors import safe_open

    cfg = json.loads((model_dir / "config.json").read_text())
    if cfg.get("model_type") != "llama":
        raise ValueError(f"{model_dir}: model_type {cfg.get('model_type')!r}, the llama.cpp bench converts 'llama'")
    heads, kv_heads, layers = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["num_hidden_layers"]
    writer = gguf.GGUFWriter(out, "llama")
    writer.add_name(model_dir.name)
    writer.add_block_count(layers)
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(cfg.get("rope_theta", 10000.0))
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_vocab_size(cfg["vocab_size"])
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_BF16)
    _add_vocab(writer, model_dir, cfg["vocab_size"])
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, layers)
    for file in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                t = f.get_tensor(name).float()
                if name.endswith("q_proj.weight"):
                    t = torch.from_numpy(_rope_permute(t.numpy(), heads))
                elif name.endswith("k_proj.weight"):
                    t = torch.from_numpy(_rope_permute(t.numpy(), kv_heads))
                gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
                if gguf_name is None:
                    raise ValueError(f"{file}: no llama.cpp name for tensor {name!r}")
                if t.ndim == 1:  # norms stay float32, as convert_hf_to_gguf.py keeps them
                    writer.add_tensor(gguf_name, t.numpy())
                else:
                    bits = t.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
                    writer.add_tensor(gguf_name, bits, raw_dtype=gguf.GGMLQuantizationType.BF16)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _add_vocab(writer, model_dir: Path, vocab_size: int) -> None:
    """convert_hf_to_gguf.py's GPT-2 BPE vocab (get_vocab_base). The pre-tokenizer is 'default': the bench passes
    token ids, so llama.cpp never tokenizes text."""
    import gguf
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    by_id = {i: t for t, i in tok.vocab.items()}
    added, decoder = tok.get_added_vocab(), tok.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif by_id[i] in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if decoder[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    gguf.SpecialVocab(model_dir, load_merges=True).add_to_gguf(writer)


class LlamaCpp:
    """A llama.cpp model on the CPU; `context(k, tokens)` for one run of k sequences."""

    def __init__(self, gguf_path: str | Path, threads: int):
        lc.llama_backend_init()
        params = lc.llama_model_default_params()
        params.n_gpu_layers = 0
        self.model = lc.llama_model_load_from_file(str(gguf_path).encode(), params)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {gguf_path}")
        self.threads = threads
        vocab = lc.llama_model_get_vocab(self.model)
        self.n_vocab = lc.llama_vocab_n_tokens(vocab)
        self.eos = lc.llama_vocab_eos(vocab)
        self.weight_bytes = lc.llama_model_size(self.model)  # every tensor's bytes: what a decode step reads
        self.n_params = lc.llama_model_n_params(self.model)
        self.n_embd, self.n_layer = lc.llama_model_n_embd(self.model), lc.llama_model_n_layer(self.model)

    def context(self, k: int, tokens: int) -> Context:
        """A context for k sequences and `tokens` KV cells in all (the prompt once plus every sequence's new
        tokens)."""
        return Context(self, k, tokens)

    def close(self) -> None:
        lc.llama_model_free(self.model)


class Context:
    """One llama.cpp context: k sequences in one unified KV buffer. Free it with close()."""

    def __init__(self, model: LlamaCpp, k: int, tokens: int):
        params = lc.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_seq_max = tokens, N_BATCH, k
        params.n_threads = params.n_threads_batch = model.threads
        params.kv_unified = True  # the prompt's cells are shared by the k sequences, not copied per sequence
        params.no_perf = True
        self.ctx = lc.llama_init_from_model(model.model, params)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp could not create a context of {tokens} cells for {k} sequences")
        self.model, self.k = model, k
        self.mem = lc.llama_get_memory(self.ctx)
        self.batch = lc.llama_batch_init(max(N_BATCH, k), 0, 1)

    def close(self) -> None:
        lc.llama_batch_free(self.batch)
        lc.llama_free(self.ctx)

    def _decode(self, tokens, positions, seqs, every_logit: bool) -> None:
        """One llama_decode of len(tokens) tokens; logits for every token (a decode step) or the last only (a
        prompt chunk)."""
        b, n = self.batch, len(tokens)
        for i in range(n):
            b.token[i], b.pos[i], b.n_seq_id[i], b.seq_id[i][0] = tokens[i], positions[i], 1, seqs[i]
            b.logits[i] = every_logit or i == n - 1
        b.n_tokens = n
        rc = lc.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc} for a batch of {n} tokens")

    def prefill(self, ids: list[int]) -> None:
        """The prompt in sequence 0 of an emptied KV, in chunks of n_batch tokens; logits of its last token."""
        lc.llama_memory_clear(self.mem, True)
        for start in range(0, len(ids), N_BATCH):
            chunk = ids[start:start + N_BATCH]
            self._decode(chunk, range(start, start + len(chunk)), [0] * len(chunk), False)
        lc.llama_synchronize(self.ctx)

    def _sampler(self, temperature: float, seed: int):
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        bias = (lc.llama_logit_bias * 1)()
        bias[0].token, bias[0].bias = self.model.eos, float("-inf")  # min_new_tokens = max_new_tokens
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_logit_bias(self.model.n_vocab, 1, bias))
        if temperature == 0:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_greedy())
        else:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp(temperature))
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(seed))
        return chain

    def generate(self, ids: list[int], new_tokens: int, temperature: float,
                 seed: int = 1) -> tuple[list[list[int]], float]:
        """k samples of `new_tokens` tokens of the prompt `ids` -> (the k token lists, the perf_counter time at
        which the prompt was prefilled, before the first k tokens are drawn)."""
        chain = self._sampler(temperature, seed)
        try:
            self.prefill(ids)
            prefilled = time.perf_counter()
            for s in range(1, self.k):
                lc.llama_memory_seq_cp(self.mem, 0, s, -1, -1)
            last = [lc.llama_sampler_sample(chain, self.ctx, -1) for _ in range(self.k)]
            out = [[t] for t in last]
            seqs = list(range(self.k))
            for step in range(1, new_tokens):
                self._decode(last, [len(ids) + step - 1] * self.k, seqs, True)
                last = [lc.llama_sampler_sample(chain, self.ctx, i) for i in range(self.k)]
                for row, t in zip(out, last):
                    row.append(t)
            return out, prefilled
        finally:
            lc.llama_sampler_free(chain)


@lc.llama_log_callback
def _errors_only(level: int, text: bytes, user_data) -> None:
    if level == GGML_LOG_LEVEL_ERROR:
        sys.stderr.write(text.decode("utf-8", "replace"))


def quiet_logs() -> None:
    """llama.cpp's errors only on stderr: llama-cpp-python's own callback prints every info line (model loading,
    context sizes) unless its Llama class was made quiet."""
    lc.llama_log_set(_errors_only, ctypes.c_void_p(0))
