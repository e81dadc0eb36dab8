"""spct.train.checkpoint: exact resume (AdamW + scheduler + RNG), tied weights, atomicity, pruning, NaN guard."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch import nn

from spct.train.checkpoint import (NonFiniteLossError, check_finite, latest_checkpoint, load_checkpoint,
                                   save_checkpoint)


class TiedLM(nn.Module):
    """A tiny language model whose lm_head shares the embedding's weight; dropout makes training draw from the
    torch RNG, so a resumed run matches only if the RNG state is restored too."""

    def __init__(self, vocab: int = 11, dim: int = 8):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 16), nn.GELU(), nn.Dropout(0.2), nn.Linear(16, dim))
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: (B, T) int64; returns: (B, T, vocab) float32."""
        h = self.embed(ids)
        return self.lm_head(h + self.mlp(h))


def _setup(seed: int):
    torch.manual_seed(seed)
    model = TiedLM()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0, end_factor=0.1, total_iters=10)
    return model, optimizer, scheduler


def _train(model, optimizer, scheduler, steps: int) -> None:
    """Batches come from the torch RNG (and a python/numpy-drawn offset), so they depend on the restored state."""
    for _ in range(steps):
        ids = (torch.randint(0, 11, (4, 6)) + random.randrange(3) + int(np.random.randint(3))) % 11
        logits = model(ids[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def test_resume_is_bit_identical(tmp_path):
    _seed_all(0)
    model, optimizer, scheduler = _setup(0)
    _train(model, optimizer, scheduler, 3)
    saved = save_checkpoint(tmp_path, 3, model, optimizer, scheduler=scheduler, extra={"epoch": 1, "seen": [4, 8]})
    _train(model, optimizer, scheduler, 2)  # A

    _seed_all(123)  # a fresh process: other RNG states, other initial weights
    model_b, optimizer_b, scheduler_b = _setup(1)
    assert latest_checkpoint(tmp_path) == saved
    info = load_checkpoint(saved, model_b, optimizer_b, scheduler=scheduler_b)
    assert info == {"step": 3, "extra": {"epoch": 1, "seen": [4, 8]}}
    assert model_b.lm_head.weight is model_b.embed.weight  # still tied after loading
    _train(model_b, optimizer_b, scheduler_b, 2)  # B

    for (name, a), (_, b) in zip(model.named_parameters(), model_b.named_parameters()):
        assert torch.equal(a, b), name
    for a, b in zip(optimizer.state.values(), optimizer_b.state.values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert scheduler.get_last_lr() == scheduler_b.get_last_lr()
    assert optimizer.param_groups[0]["betas"] == optimizer_b.param_groups[0]["betas"] == (0.9, 0.999)


def test_rng_states_are_restored(tmp_path):
    _seed_all(7)
    model, optimizer, scheduler = _setup(0)
    path = save_checkpoint(tmp_path, 0, model, optimizer)
    expected = (torch.rand(5), random.random(), np.random.rand(3), np.random.randn())
    _seed_all(99)
    load_checkpoint(path, *_setup(1)[:2])
    actual = (torch.rand(5), random.random(), np.random.rand(3), np.random.randn())
    assert torch.equal(actual[0], expected[0])
    assert actual[1] == expected[1]
    assert np.array_equal(actual[2], expected[2]) and actual[3] == expected[3]


def test_layout(tmp_path):
    model, optimizer, scheduler = _setup(0)
    _train(model, optimizer, scheduler, 1)
    path = save_checkpoint(tmp_path, 12, model, optimizer, scheduler=scheduler)
    assert path == tmp_path / "checkpoint-00000012"
    assert (tmp_path / "latest").read_text().strip() == "checkpoint-00000012"
    assert sorted(p.name for p in path.iterdir()) == ["model.safetensors", "optimizer.safetensors",
                                                       "rng.safetensors", "trainer_state.json"]
    with safe_open(path / "model.safetensors", "pt") as f:
        weights = set(f.keys())
    assert len({"embed.weight", "lm_head.weight"} & weights) == 1  # the tied tensor is stored once
    with safe_open(path / "optimizer.safetensors", "pt") as f:
        assert {"state.0.exp_avg", "state.0.exp_avg_sq", "state.0.step"} <= set(f.keys())
    with safe_open(path / "rng.safetensors", "pt") as f:
        assert "torch" in f.keys()
    state = json.loads((path / "trainer_state.json").read_text())
    assert state["step"] == 12 and state["optimizer"]["param_groups"][0]["weight_decay"] == 0.1
    assert state["scheduler"]["last_epoch"] == 1


def test_a_killed_save_is_ignored_and_cleaned(tmp_path):
    model, optimizer, _ = _setup(0)
    good = save_checkpoint(tmp_path, 3, model, optimizer)
    crashed = tmp_path / ".tmp-checkpoint-00000004-abc123"  # a run killed while writing step 4
    crashed.mkdir()
    (crashed / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    (tmp_path / ".tmp-latest-xyz").write_text("checkpoint-0000")
    assert latest_checkpoint(tmp_path) == good
    (tmp_path / "latest").unlink()  # killed before `latest` was ever written: the highest complete one wins
    incomplete = tmp_path / "checkpoint-00000009"  # not produced by save_checkpoint: missing files
    incomplete.mkdir()
    (incomplete / "model.safetensors").write_bytes(b"")
    assert latest_checkpoint(tmp_path) == good
    save_checkpoint(tmp_path, 5, model, optimizer)
    assert not list(tmp_path.glob(".tmp-*"))
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-00000005"


def test_a_failed_save_leaves_the_previous_checkpoint(tmp_path):
    model, optimizer, _ = _setup(0)
    good = save_checkpoint(tmp_path, 1, model, optimizer)
    with pytest.raises(TypeError, match="extra.note.*object"):
        save_checkpoint(tmp_path, 2, model, optimizer, extra={"note": object()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-00000001", "latest"]
    assert latest_checkpoint(tmp_path) == good


def test_keep_prunes_the_oldest(tmp_path):
    model, optimizer, _ = _setup(0)
    for step in (10, 20, 30, 40):
        save_checkpoint(tmp_path, step, model, optimizer)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-00000030", "checkpoint-00000040", "latest"]
    save_checkpoint(tmp_path, 40, model, optimizer, keep=1)  # the same step again replaces it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-00000040", "latest"]
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-00000040"


def test_nothing_to_resume(tmp_path):
    assert latest_checkpoint(tmp_path / "missing") is None
    assert latest_checkpoint(tmp_path) is None
    with pytest.raises(FileNotFoundError, match="trainer_state.json"):
        load_checkpoint(tmp_path, *_setup(0)[:2])


def test_bad_arguments(tmp_path):
    model, optimizer, scheduler = _setup(0)
    with pytest.raises(ValueError, match="step = -1"):
        save_checkpoint(tmp_path, -1, model, optimizer)
    with pytest.raises(ValueError, match="keep = 0"):
        save_checkpoint(tmp_path, 1, model, optimizer, keep=0)
    path = save_checkpoint(tmp_path, 1, model, optimizer)
    with pytest.raises(ValueError, match="no scheduler state"):
        load_checkpoint(path, model, optimizer, scheduler=scheduler)


def test_check_finite():
    assert check_finite(torch.tensor(0.25), 3) == 0.25
    assert check_finite(1.5, 3) == 1.5
    for bad in (torch.tensor(float("nan")), float("inf"), torch.tensor([float("-inf")])):
        with pytest.raises(NonFiniteLossError, match=r"step 7 is (nan|inf|-inf).*last good checkpoint is kept"):
            check_finite(bad, 7)
    assert issubclass(NonFiniteLossError, RuntimeError)


def test_training_progress_bar_is_opt_in_off_a_terminal(tmp_path, capsys):
    """loop.train's bar over optimizer steps goes to stderr with the loss as postfix when asked; by default
    (progress=None) it shows only on a terminal (pytest's captured stderr is none); metrics.jsonl is the same."""
    from types import SimpleNamespace

    from spct.train import loop

    def micro_loss(model, examples):
        ids = torch.tensor(examples)
        logits = model(ids[:, :-1])
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)), {}

    lines = {}
    for progress in (True, None):
        torch.manual_seed(0)
        out = tmp_path / str(progress)
        out.mkdir()
        cfg = SimpleNamespace(output_dir=str(out), batch_size=2, micro_batch_size=1, learning_rate=1e-2, max_steps=3,
                              grad_clip=1.0, log_every=1, save_every=10, keep_checkpoints=1)
        loop.train(cfg, TiedLM(), lambda step: [[step % 11, 1, 2, 3]] * 2, micro_loss, d=loop.Dist(), resume=False,
                   progress=progress)
        err = capsys.readouterr().err
        assert ("training" in err and "3/3" in err and "loss=" in err) == bool(progress), err
        lines[progress] = [{k: v for k, v in json.loads(line).items() if k != "seconds"}
                           for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines[True] == lines[None] and [r["step"] for r in lines[True]] == [1, 2, 3]
