"""`spct.MetaRewardModel`: a Llama-family backbone plus a scalar head that rates GRM judgements (docs/method.md
sections 2-3). Guided voting keeps the k_meta samples with the highest meta scores (`spct.vote`).

A checkpoint directory holds `meta_rm.json` ({"base": the backbone's alias or directory, "hidden_size"}) and
`meta_rm_head.safetensors` (the head in float32), written atomically. `from_pretrained` on a plain backbone (an alias
or checkpoint directory without meta_rm.json) starts a fresh head (seeded), as training does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from spct._atomic import atomic_file, write_text
from spct.grm.templates import messages

__all__ = ["MetaRewardModel"]

CONFIG, HEAD = "meta_rm.json", "meta_rm_head.safetensors"


def _load_head(path: Path) -> tuple[str, torch.Tensor, torch.Tensor]:
    """(base, weight, bias) of the Meta RM checkpoint in `path`; ValueError naming the broken file."""
    from safetensors import SafetensorError

    from spct.engine.models import read_json

    meta = read_json(path / CONFIG)
    if not isinstance(meta, dict) or not isinstance(meta.get("base"), str):
        raise ValueError(f'{path / CONFIG}: no "base" string (expected {{"base": the backbone\'s alias or directory, '
                         '"hidden_size": n})')
    try:
        head = load_file(path / HEAD)
    except (SafetensorError, OSError) as e:
        reason = str(e).removeprefix("Error while deserializing header: ")
        raise ValueError(f"{path / HEAD} is not a readable safetensors file ({reason})") from None
    if {"weight", "bias"} - set(head) or head["weight"].dim() != 1 or head["bias"].numel() != 1:
        shapes = {name: tuple(t.shape) for name, t in head.items()}
        raise ValueError(f"{path / HEAD}: holds {shapes}, expected weight (hidden,) and bias ()")
    return meta["base"], head["weight"], head["bias"].reshape(())


class MetaRewardModel:
    """backbone: an `spct.engine.llama.LlamaRunner`; head: weight (hidden,) and bias () in float32."""

    def __init__(self, runner, tokenizer, weight: torch.Tensor, bias: torch.Tensor, base: str):
        self.runner, self.tokenizer, self.base = runner, tokenizer, base
        self.weight, self.bias = weight.float(), bias.float()

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike = "smollm2-135m", *, dtype: str = "bfloat16",
                        device: str = "cpu", seed: int = 0) -> MetaRewardModel:
        """A Meta RM checkpoint directory (meta_rm.json and its head), or a backbone (alias, model directory, .gguf
        file, Hugging Face id) with a fresh head. A broken checkpoint is a ValueError naming the file."""
        from transformers import AutoTokenizer

        from spct.engine.engine import DTYPES
        from spct.engine.llama import LlamaRunner
        from spct.engine.models import fetch

        path = Path(name_or_path)
        saved = path / CONFIG if path.is_dir() else None
        if saved is not None and saved.is_file():
            base, weight, bias = _load_head(path)
            try:
                model_dir = fetch(base)
            except ValueError as e:
                raise ValueError(f"{saved}: base {base!r}: {e}") from None
        else:
            base, weight, bias = str(name_or_path), None, None
            model_dir = fetch(base)
        runner = LlamaRunner.from_dir(model_dir, DTYPES[dtype], torch.device(device))
        hidden = runner.config.hidden_size
        if weight is None:  # a fresh head: small random weights, zero bias
            g = torch.Generator().manual_seed(seed)
            weight, bias = torch.randn(hidden, generator=g) / hidden**0.5, torch.zeros(())
        elif weight.shape != (hidden,):
            raise ValueError(f"{path / HEAD}: weight has shape {tuple(weight.shape)}, but the base {base!r} has "
                             f"hidden size {hidden}")
        return cls(runner, AutoTokenizer.from_pretrained(model_dir), weight, bias, base)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Writes meta_rm.json and the head into `path`, each atomically (`spct._atomic`)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with atomic_file(path / HEAD) as tmp:
            save_file({"weight": self.weight.contiguous(), "bias": self.bias.reshape(())}, str(tmp))
        write_text(path / CONFIG, json.dumps({"base": self.base, "hidden_size": int(self.weight.shape[0])}, indent=2))

    def input_ids(self, query, shown: Sequence[str], judgement: str) -> list[int]:
        turns = messages(query, shown, format="meta", judgement=judgement)
        if getattr(self.tokenizer, "chat_template", None):
            ids = self.tokenizer.apply_chat_template(turns, tokenize=True)
            return list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        return self.tokenizer(turns[0]["content"] + "\n" + judgement).input_ids

    def features(self, query, shown_orders: Sequence[Sequence[str]], judgements: Sequence[str]) -> torch.Tensor:
        """The backbone's final hidden state at the end of each Meta RM input (query, responses as shown, judgement):
        (k, hidden) float32. The judgements of one response order share their prompt: it runs once
        (`LlamaRunner.last_hidden_shared`), and only each judgement's own tokens run per judgement."""
        if len(shown_orders) != len(judgements):
            raise ValueError(f"one response order per judgement: {len(shown_orders)} orders, {len(judgements)} "
                             "judgements")
        ids = [self.input_ids(query, shown, text) for shown, text in zip(shown_orders, judgements)]
        groups: dict[tuple, list[int]] = {}
        for j, shown in enumerate(shown_orders):
            groups.setdefault(tuple(shown), []).append(j)
        prefixes, suffixes, index = [], [None] * len(ids), [0] * len(ids)
        for members in groups.values():
            # the tokens every judgement of this order starts with, leaving each at least one token of its own
            n = min(len(ids[j]) for j in members) - 1
            first = ids[members[0]]
            for j in members[1:]:
                n = next((t for t in range(n) if ids[j][t] != first[t]), n)
            if n == 0:  # nothing shared: each judgement is its own prefix (its first token) and suffix
                for j in members:
                    suffixes[j], index[j] = torch.tensor(ids[j][1:]), len(prefixes)
                    prefixes.append(torch.tensor(ids[j][:1]))
                continue
            for j in members:
                suffixes[j], index[j] = torch.tensor(ids[j][n:]), len(prefixes)
            prefixes.append(torch.tensor(first[:n]))
        return self.runner.last_hidden_shared(prefixes, suffixes, index).float().cpu()

    def score(self, query, shown_orders: Sequence[Sequence[str]], judgements: Sequence[str]) -> torch.Tensor:
        """Meta scores of k judgements of one item: shown_orders[j] the responses as sample j saw them,
        judgements[j] its principles + critique. returns: (k,) float32, unbounded."""
        return self.features(query, shown_orders, judgements) @ self.weight + self.bias
