"""The model being trained: loaded with transformers (optionally wrapped in LoRA adapters), batched for the
losses, saved as a Hugging Face checkpoint that `spct.Engine` and `spct.GenerativeRewardModel` load."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from spct._atomic import atomic_dir

__all__ = ["collate", "load_policy", "save_policy", "window_logits"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def load_policy(cfg, device: torch.device, name_or_path: str | None = None):
    """(model in train mode, tokenizer) from cfg.model (or name_or_path); LoRA adapters when cfg.lora."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from spct.engine.models import fetch

    path = fetch(name_or_path or cfg.model)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[cfg.dtype]).to(device)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if getattr(cfg, "lora", False):
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise RuntimeError("lora = true needs peft: pip install 'spct[train]'") from None
        model = get_peft_model(model, LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
                                                 target_modules=LORA_TARGETS, lora_dropout=0.0))
    model.train()
    return model, tokenizer


def save_policy(model, tokenizer, path: str | os.PathLike, *, lora: bool = False) -> Path:
    """A Hugging Face checkpoint directory (safetensors), written beside `path` and renamed into place; LoRA
    adapters are merged into a copy of the weights first."""
    path = Path(path)
    with atomic_dir(path) as tmp:
        to_save = model.merge_and_unload() if lora else model
        to_save.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return path


def collate(examples, pad: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """examples: (token ids, index of the first generated token) -> input_ids (B, T) right-padded with `pad`,
    attention mask (B, T) bool, completion mask (B, T) bool (the generated tokens)."""
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad, dtype=torch.int64)
    attention = torch.zeros((len(examples), width), dtype=torch.bool)
    completion = torch.zeros((len(examples), width), dtype=torch.bool)
    for r, (seq, start) in enumerate(examples):
        ids[r, : len(seq)] = torch.tensor(seq)
        attention[r, : len(seq)] = True
        completion[r, start: len(seq)] = True
    return ids.to(device), attention.to(device), completion.to(device)


def window_logits(model, examples, pad: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits, input_ids, completion mask) over the window from the token before the earliest generated token to
    the end: the model computes the LM head only there (`logits_to_keep`), which is what the losses read. The
    prompt before it costs no (B, T, vocabulary) logits. Shapes: (B, W, V), (B, W), (B, W)."""
    ids, attention, completion = collate(examples, pad, device)
    keep = ids.shape[1] - min(start for _, start in examples) + 1
    logits = model(input_ids=ids, attention_mask=attention, logits_to_keep=keep).logits
    return logits, ids[:, -keep:], completion[:, -keep:]
