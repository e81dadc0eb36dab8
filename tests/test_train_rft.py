"""Rejective fine-tuning end to end on a tiny Llama built here (the default tokenizer): the RFT set and its
statistics, exact resume after SIGKILL, 2-process torchrun = 1 process, a NaN loss, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TOLERANCES
from safetensors.torch import load_file

from spct.train.checkpoint import latest_checkpoint
from spct.train.config import RFTConfig
from spct.train.data import write_items


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, smollm2_tokenizer) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = smollm2_tokenizer
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=True)
    path = tmp_path_factory.mktemp("tiny")
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def items(tmp_path_factory) -> Path:
    rows = []
    for i in range(8):
        a, b = 3 + i, 11 + 2 * i
        good, bad = f"The answer is {a + b}.", f"The answer is {a + b + 1 + i % 3}."
        best = i % 2
        rows.append({"id": f"add-{i}", "query": f"What is {a} + {b}?", "responses": [good, bad][::1 - 2 * best],
                     "best": best, "solution": f"{a} + {b} = {a + b}\n#### {a + b}"})
    path = tmp_path_factory.mktemp("items") / "items.jsonl"
    write_items(path, rows)
    return path


def _args(tiny, items, out, **fields) -> list[str]:
    base = {"data": items, "output_dir": out, "model": tiny, "sampler": "teacher", "hinted": "false",
            "batch_size": 4, "micro_batch_size": 2, "max_steps": 4, "save_every": 1, "log_every": 1}
    base.update(fields)
    return [x for k, v in base.items() for x in (f"--{k.replace('_', '-')}", str(v))]


def _spct(*args, env=None, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "spct", *args], capture_output=True, text=True, env=env, **kwargs)


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "model" / "model.safetensors")


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], **TOLERANCES[torch.float32], msg=name)


@pytest.fixture(scope="module")
def uninterrupted(tiny, items, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rft") / "run"
    proc = _spct("train", "rft", *_args(tiny, items, out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_rft_run_writes_the_set_stats_metrics_and_model(uninterrupted):
    stats = json.loads((uninterrupted / "rft_stats.json").read_text())
    assert stats == {"items": 8, "sampled": 8, "kept": 8, "too_long": 0}
    rows = [json.loads(x) for x in (uninterrupted / "rft_set.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all(r["source"] == "teacher" and "\\boxed{" in r["judgement"] for r in rows)
    metrics = [json.loads(x) for x in (uninterrupted / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4] and all(m["loss"] > 0 for m in metrics)
    assert (uninterrupted / "model" / "config.json").is_file()
    assert not list(uninterrupted.glob(".tmp-*"))


def test_sigkill_then_resume_ends_with_the_same_weights(tiny, items, uninterrupted, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "spct", "train", "rft", *_args(tiny, items, out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 600
    while latest_checkpoint(out) is None or latest_checkpoint(out).name < "checkpoint-00000002":
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    found = latest_checkpoint(out)
    assert found is not None and not (out / "model").exists()  # killed before the end
    again = _spct("train", "rft", *_args(tiny, items, out))
    assert again.returncode != 0 and "--resume" in again.stderr  # no silent restart over a run
    resumed = _spct("train", "rft", "--resume", *_args(tiny, items, out))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_weights(_weights(uninterrupted), _weights(out))
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 4


def test_two_process_torchrun_matches_one_process(tiny, items, uninterrupted, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "spct", "train", "rft", *_args(tiny, items, out)],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same_weights(_weights(uninterrupted), _weights(out))


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny, items, tmp_path):
    out = tmp_path / "nan"
    proc = _spct("train", "rft", *_args(tiny, items, out, learning_rate="1e12", grad_clip="0", max_steps=6))
    assert proc.returncode != 0
    assert "is nan" in proc.stderr or "is inf" in proc.stderr, proc.stderr[-2000:]
    found = latest_checkpoint(out)
    assert found is not None and not list(out.glob(".tmp-*"))
    step = int(found.name.split("-")[1])
    assert f"loss at step {step + 1} is" in proc.stderr  # the checkpoint before the bad step is the last


def test_bad_config_and_items(tiny, items, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('learning_rate = 1e-5\ngroup_sise = 4\n')
    proc = _spct("train", "rft", "--config", str(bad), *_args(tiny, items, tmp_path / "x"))
    assert proc.returncode != 0 and "unknown rft config field 'group_sise'" in proc.stderr
    proc = _spct("train", "rft", *_args(tiny, items, tmp_path / "x", n_rft=0))
    assert proc.returncode != 0 and "n_rft" in proc.stderr
    unlabelled = tmp_path / "unlabelled.jsonl"
    unlabelled.write_text(json.dumps({"id": "q7", "query": "2+2?", "responses": ["4", "5"]}) + "\n")
    proc = _spct("train", "rft", *_args(tiny, unlabelled, tmp_path / "y"))
    assert proc.returncode != 0 and "'q7'" in proc.stderr and "label" in proc.stderr
    with pytest.raises(ValueError, match="micro_batch_size"):
        RFTConfig(data="d", output_dir="o", batch_size=6, micro_batch_size=4)


def test_policy_sampling_counts_every_outcome(tiny, tmp_path):
    from spct.grm import GenerativeRewardModel
    from spct.train.rft import build_rft_set

    grm = GenerativeRewardModel.from_pretrained(str(tiny), dtype="float32")
    rows = [{"id": f"i{i}", "query": f"What is {i} + 1?", "responses": [str(i + 1), str(i + 2)], "best": 0}
            for i in range(3)]
    cfg = RFTConfig(data="d", output_dir=str(tmp_path), n_rft=2, max_new_tokens=8)
    kept, stats = build_rft_set(rows, cfg, grm)
    # a random tiny model never writes a valid score group: every sample is rejected as wrong (and invalid)
    assert kept == [] and stats == {"items": 3, "sampled": 6, "kept": 0, "invalid": 6, "wrong": 6,
                                    "too_easy_items": 0, "hinted_sampled": 3, "hinted_kept": 0, "hinted_wrong": 3}


def test_lora_trains_adapters_and_saves_a_merged_model(tiny, items, tmp_path):
    out = tmp_path / "lora"
    proc = _spct("train", "rft", *_args(tiny, items, out, lora="true", lora_rank=4, learning_rate="1e-2",
                                        max_steps=2, save_every=2))
    assert proc.returncode == 0, proc.stderr[-3000:]
    base, tuned = load_file(tiny / "model.safetensors"), _weights(out)
    assert base.keys() == tuned.keys()  # merged: plain Llama weights, no adapter tensors
    changed = {n for n in base if not torch.equal(base[n], tuned[n])}
    assert changed and all(n.endswith("_proj.weight") for n in changed)  # only the adapted projections
    import spct

    engine = spct.Engine.from_pretrained(out / "model", dtype="float32")
    assert len(engine.generate(["2 + 2 ="], max_new_tokens=3)[0][0].token_ids) == 3


def test_window_logits_give_the_full_sequence_losses(tiny):
    from transformers import AutoModelForCausalLM

    from spct.train.losses import sft_loss, token_logprobs
    from spct.train.policy import collate, window_logits

    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    g = torch.Generator().manual_seed(1)
    examples = [(torch.randint(0, 1000, (n,), generator=g).tolist(), start)
                for n, start in ((30, 12), (21, 9), (40, 25))]
    ids, attention, completion = collate(examples, 0, torch.device("cpu"))
    full = model(input_ids=ids, attention_mask=attention).logits
    window, wids, wcompletion = window_logits(model, examples, 0, torch.device("cpu"))
    assert window.shape[1] == ids.shape[1] - 9 + 1 and torch.equal(wids, ids[:, -window.shape[1]:])
    torch.testing.assert_close(sft_loss(window, wids, wcompletion), sft_loss(full, ids, completion),
                               **TOLERANCES[torch.float32])
    lp_full, lp_window = token_logprobs(full, ids), token_logprobs(window, wids)
    mask = completion[:, 1:]
    torch.testing.assert_close(lp_window[wcompletion[:, 1:]], lp_full[mask], **TOLERANCES[torch.float32])
