"""A mixture-of-experts MLP (Qwen3-MoE): a router picks each token's top-k experts, each expert is a gated MLP, the
token's output is their sum weighted by the router's probabilities.

Numerics follow transformers' `Qwen3MoeSparseMoeBlock`: router logits in the model dtype, softmax in float32, top-k,
the k probabilities renormalised when `norm_topk_prob`, rounded to the model dtype; experts visited in ascending
order, each adding its weighted output to its tokens (so a token's sum runs in expert order, whatever the batch).
Every matmul goes through the runner's `linear` (fixed tiles where row bits depend on the row count), so a token's
output never depends on the other tokens of the step: the engine's batch invariance holds.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from spct.ops.linear import Linear

__all__ = ["Experts", "fuse_experts"]


def fuse_experts(weights: dict[str, torch.Tensor], layers: int, experts: int) -> None:
    """Per-expert tensors (model.layers.{i}.mlp.experts.{e}.{gate,up,down}_proj.weight, as checkpoints on the Hub
    hold them) stacked in place into transformers' fused layout: mlp.experts.gate_up_proj (E, 2I, H) and
    mlp.experts.down_proj (E, H, I). Layers already fused, or dense, are left as they are."""
    for i in range(layers):
        p = f"model.layers.{i}.mlp.experts."
        if p + "0.gate_proj.weight" not in weights:
            continue
        gate = [weights.pop(f"{p}{e}.gate_proj.weight") for e in range(experts)]
        up = [weights.pop(f"{p}{e}.up_proj.weight") for e in range(experts)]
        weights[p + "gate_up_proj"] = torch.stack([torch.cat([g, u]) for g, u in zip(gate, up)])
        weights[p + "down_proj"] = torch.stack([weights.pop(f"{p}{e}.down_proj.weight") for e in range(experts)])


class Experts:
    """One layer's router and experts (fused weights: gate_up (E, 2I, H), down (E, H, I))."""

    def __init__(self, router: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, top_k: int,
                 norm_topk: bool):
        self.router = Linear(router)
        self.experts = [(Linear(gate_up[e]), Linear(down[e])) for e in range(gate_up.shape[0])]
        self.top_k, self.norm_topk = top_k, norm_topk

    def __call__(self, h: torch.Tensor, linear: Callable[[Linear, torch.Tensor], torch.Tensor],
                 act: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """h (N, H) -> (N, H); linear(m, x) runs a matmul as the runner does, act([gate | up]) the gated unit."""
        logits = linear(self.router, h)
        probs, chosen = torch.topk(torch.softmax(logits, dim=-1, dtype=torch.float), self.top_k, dim=-1)
        if self.norm_topk:
            probs /= probs.sum(dim=-1, keepdim=True)
        probs = probs.to(logits.dtype)
        out = torch.zeros_like(h)
        for e in torch.unique(chosen).tolist():  # ascending
            rows, slot = torch.where(chosen == e)
            gate_up, down = self.experts[e]
            y = linear(down, act(linear(gate_up, h[rows]))) * probs[rows, slot, None]
            out.index_add_(0, rows, y.to(out.dtype))
        return out
