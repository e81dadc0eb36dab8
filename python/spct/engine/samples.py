"""`pad_samples`: generated samples as the padded id tensor that `spct.extract_scores` takes.

    outs = engine.generate(prompts, k=8, max_new_tokens=256)
    ids, lengths = spct.pad_samples(outs)  # rows prompt by prompt: outs[0][0], outs[0][1], ..., outs[1][0], ...
    ex = spct.extract_scores(token_ids=ids, lengths=lengths, vocab=spct.TokenBytes.from_tokenizer(tokenizer),
                             num_responses=2)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["pad_samples"]


def _rows(samples: object) -> list[Sequence[int]]:
    """The token ids of each sample: `generate`'s output (a list per prompt) flattened, or a flat list."""
    if isinstance(samples, (str, bytes)) or not isinstance(samples, Sequence):
        raise ValueError(f"samples must be generate's output (a list of lists of Sample) or a list of Sample, got "
                         f"{type(samples).__name__}")
    rows = []
    for i, s in enumerate(samples):
        group = s if isinstance(s, (list, tuple)) else [s]
        for j, one in enumerate(group):
            ids = getattr(one, "token_ids", None)
            if ids is None:
                where = f"samples[{i}]" if group is not s else f"samples[{i}][{j}]"
                raise ValueError(f"{where} is {type(one).__name__}, not a Sample (an object with token_ids)")
            rows.append(ids)
    return rows


def pad_samples(samples: Sequence, *, pad_id: int = 0, device: str | torch.device = "cpu"
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """samples: `Engine.generate`'s output (outs[i][j], sample j of prompt i) or a flat list of `Sample`s.
    returns: token_ids (N, T) int64, one row per sample in order (prompt by prompt), padded with pad_id to
    T = max(1, the longest sample); lengths (N,) int64, each sample's token count (a final EOS included:
    `TokenBytes` gives special tokens no bytes, so extraction reads past it)."""
    rows = _rows(samples)
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.int64)
    ids = torch.full((len(rows), max([1, *lengths.tolist()])), pad_id, dtype=torch.int64)
    for r, row in enumerate(rows):
        if len(row):
            ids[r, : len(row)] = torch.as_tensor(list(row), dtype=torch.int64)
    return ids.to(device), lengths.to(device)
