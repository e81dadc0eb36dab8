"""Pure loss functions of SPCT training (docs/method.md section 4); no model, no optimizer, no state.

Stage 1, rejective fine-tuning:  loss = -mean over completion tokens of log p(token | prefix).
Stage 2, rule-based GRPO, per prompt G generations o_1..o_G with rewards r_i = +1 (correct) / -1 (not):
    A_i     = (r_i - mean(r)) / (std(r) + eps)                          (0 when all r_i are equal)
    rho_i,t = exp(logp(o_i,t) - logp_old(o_i,t))
    kl_i,t  = exp(ref - logp) - (ref - logp) - 1                        (k3 estimator, DeepSeekMath)
    loss    = -1/G sum_i 1/|o_i| sum_t [min(rho A_i, clip(rho, 1-e, 1+e) A_i) - beta kl_i,t]
Meta RM:  binary cross-entropy with logits on generations labelled correct (1) / incorrect (0);
          judged by ROC-AUC (Mann-Whitney, ties count half).

Losses are picked by name from `LOSSES`, GRPO's token aggregation from `AGGREGATIONS`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "AGGREGATIONS",
    "LOSSES",
    "group_advantages",
    "grpo_loss",
    "meta_rm_loss",
    "roc_auc",
    "sft_loss",
    "token_logprobs",
]


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _check_tensor(name: str, t: object, ndim: int, kind: str) -> torch.Tensor:
    """Check that `t` is a tensor with `ndim` dims of kind "float", "real" (float or integer), "int" or "bool"."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dims, got shape {_shape(t)}")
    integer = not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool
    ok = {
        "float": t.is_floating_point(),
        "real": t.is_floating_point() or integer,
        "int": integer,
        "bool": t.dtype == torch.bool,
    }[kind]
    if not ok:
        allowed = {"float": "a floating dtype", "real": "a floating or integer dtype", "int": "an integer dtype",
                   "bool": "torch.bool"}[kind]
        raise ValueError(f"{name} must have {allowed}, got {t.dtype}")
    return t


def _check_same_shape(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if t.shape != ref.shape:
        raise ValueError(f"{name} has shape {_shape(t)}, but {ref_name} has shape {_shape(ref)}; they must match")


# ---------------------------------------------------------------------------------------------------------- SFT


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Log-probability of each next token under `logits`, computed in (at least) float32.

    logits: (B, T, V) float, logits[:, t] predicts input_ids[:, t + 1]
    input_ids: (B, T) integer
    returns: (B, T - 1) float32 (float64 for float64 logits); out[b, t] = log p(input_ids[b, t + 1] | prefix)

    One row at a time, so at most one (T - 1, V) float32 copy of the logits exists at once (not a (B, T, V) one),
    as TRL's `selective_log_softmax` does; under autograd each row's log-softmax is still kept for backward.
    """
    _check_tensor("logits", logits, 3, "float")
    _check_tensor("input_ids", input_ids, 2, "int")
    if logits.shape[:2] != input_ids.shape:
        raise ValueError(f"logits (B, T, V) = {_shape(logits)} and input_ids (B, T) = {_shape(input_ids)} disagree")
    if logits.shape[1] > 1 and logits.shape[2] == 0:
        raise ValueError(f"logits has an empty vocabulary, shape {_shape(logits)}")
    dtype = torch.promote_types(logits.dtype, torch.float32)
    targets = input_ids[:, 1:].long()
    vocab = logits.shape[2]
    if targets.numel() and (targets.min() < 0 or targets.max() >= vocab):
        bad = targets[(targets < 0) | (targets >= vocab)][0].item()
        raise ValueError(f"input_ids holds token id {bad}, outside the vocabulary [0, {vocab})")
    rows = [
        torch.log_softmax(row[:-1].to(dtype), dim=-1).gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
        for row, tgt in zip(logits, targets)
    ]
    if not rows:  # B == 0
        return logits.new_zeros((0, targets.shape[1]), dtype=dtype)
    return torch.stack(rows)


def sft_loss(logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on the completion (generated) tokens only, averaged over all of them in the batch.

    logits: (B, T, V) float
    input_ids: (B, T) integer
    completion_mask: (B, T) bool, True on the generated tokens of input_ids (prompt and padding False)
    returns: () float32, -sum log p(completion tokens) / number of completion tokens (token-level mean, as TRL's
        SFTTrainer: long completions weigh more than short ones)

    Token t is predicted by logits[:, t - 1]; a True at t = 0 has no prefix and is ignored.
    """
    _check_tensor("completion_mask", completion_mask, 2, "bool")
    _check_same_shape("completion_mask", completion_mask, "input_ids", input_ids)
    logp = token_logprobs(logits, input_ids)
    target_mask = completion_mask[:, 1:]
    n = int(target_mask.sum())
    if n == 0:
        raise ValueError(
            f"completion_mask {_shape(completion_mask)} selects no predictable token (a True at position 0 has no"
            " prefix); mark at least one generated token at position >= 1"
        )
    return -torch.where(target_mask, logp, 0.0).sum() / n


# --------------------------------------------------------------------------------------------------------- GRPO


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """GRPO advantages, normalized within each group of `group_size` generations of one prompt.

    rewards: (B * G,) real, group after group: rewards[g * G:(g + 1) * G] belong to prompt g
    returns: (B * G,) float32 (float64 for float64 rewards), (r - mean(group)) / (std(group) + eps)

    std is the sample standard deviation (Bessel's correction, divide by G - 1), as TRL's GRPOTrainer
    (trl 1.16 `trainer/utils.py::nanstd`, `grpo_trainer.py` with scale_rewards="group"; earlier TRL used
    `Tensor.std`, also unbiased); eps = 1e-4 is TRL's too. A group whose rewards are all equal (and any group of
    G = 1) gets advantage exactly 0: it carries no learning signal.
    """
    _check_tensor("rewards", rewards, 1, "real")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    if rewards.numel() % group_size:
        raise ValueError(
            f"rewards has {rewards.numel()} entries, not a multiple of group_size {group_size};"
            " give group_size rewards per prompt, group after group"
        )
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    r = rewards.to(torch.promote_types(rewards.dtype, torch.float32)).reshape(-1, group_size)
    mean = r.mean(dim=1, keepdim=True)
    std = r.std(dim=1, keepdim=True, correction=1) if group_size > 1 else torch.zeros_like(mean)
    flat = r.amax(dim=1, keepdim=True) == r.amin(dim=1, keepdim=True)
    # The mean of equal floats can differ from them by an ulp; force the exact 0 the docstring promises.
    return torch.where(flat, 0.0, (r - mean) / (std + eps)).view(-1)


def _sequence_mean(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over each sequence's masked tokens, then over the sequences that have any (empty ones are skipped)."""
    counts = mask.sum(dim=1)
    per_seq = per_token.sum(dim=1) / counts.clamp(min=1)
    return per_seq.sum() / (counts > 0).sum()


def _token_mean(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over all masked tokens of the batch / their number."""
    return per_token.sum() / mask.sum()


# How per-token losses (already zero off the mask) become one number: (B, T), (B, T) bool -> ().
AGGREGATIONS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "sequence": _sequence_mean,  # GRPO paper: 1/G sum_i 1/|o_i| sum_t
    "token": _token_mean,  # DAPO / TRL "dapo": every token weighs the same
}


def _check_grpo_inputs(logprobs, old_logprobs, ref_logprobs, advantages, mask, clip_eps, beta, aggregation):
    _check_tensor("logprobs", logprobs, 2, "float")
    _check_tensor("old_logprobs", old_logprobs, 2, "float")
    _check_same_shape("old_logprobs", old_logprobs, "logprobs", logprobs)
    _check_tensor("mask", mask, 2, "bool")
    _check_same_shape("mask", mask, "logprobs", logprobs)
    _check_tensor("advantages", advantages, 1, "float")
    if advantages.shape[0] != logprobs.shape[0]:
        raise ValueError(
            f"advantages has shape {_shape(advantages)}; logprobs {_shape(logprobs)} needs ({logprobs.shape[0]},)"
        )
    if ref_logprobs is None:
        if beta != 0:
            raise ValueError(f"beta = {beta} needs ref_logprobs; pass them or set beta = 0")
    else:
        _check_tensor("ref_logprobs", ref_logprobs, 2, "float")
        _check_same_shape("ref_logprobs", ref_logprobs, "logprobs", logprobs)
    if not 0 < clip_eps < 1:
        raise ValueError(f"clip_eps must be in (0, 1), got {clip_eps!r}")
    if not beta >= 0:
        raise ValueError(f"beta must be >= 0, got {beta!r}")
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {sorted(AGGREGATIONS)}, got {aggregation!r}")
    if not mask.any():
        raise ValueError(f"mask {_shape(mask)} selects no completion token; there is nothing to learn from")


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps: float = 0.2,
    beta: float = 0.0,
    aggregation: str = "sequence",
) -> tuple[torch.Tensor, dict[str, float]]:
    """GRPO clipped-surrogate loss with a k3 KL penalty to the reference model.

    logprobs: (B, T) float, log-probs of the sampled completion tokens under the current policy (requires grad)
    old_logprobs: (B, T) float, the same under the policy that sampled them (treated as constants)
    ref_logprobs: (B, T) float or None, the same under the reference model (treated as constants); None only when
        beta == 0
    advantages: (B,) float, one per sequence (see `group_advantages`)
    mask: (B, T) bool, True on completion tokens; other positions are ignored whatever they hold
    aggregation: "sequence" (mean per sequence, then over sequences; sequences without a masked token are skipped)
        or "token" (mean over all masked tokens of the batch); see `AGGREGATIONS`
    returns: (loss () in at least float32, metrics) with metrics as python floats over the masked tokens:
        "kl" mean k3 KL (nan when ref_logprobs is None), "clip_fraction" share of tokens whose clipped term is
        the active one (zero gradient: ratio > 1 + eps with A > 0 or ratio < 1 - eps with A < 0), "ratio_mean"
    """
    _check_grpo_inputs(logprobs, old_logprobs, ref_logprobs, advantages, mask, clip_eps, beta, aggregation)
    dtype = torch.promote_types(logprobs.dtype, torch.float32)
    # Zero the unmasked positions first: padding may hold -inf or garbage, and 0 * inf would poison the gradient.
    lp = torch.where(mask, logprobs.to(dtype), 0.0)
    old = torch.where(mask, old_logprobs.detach().to(dtype), 0.0)
    adv = advantages.detach().to(dtype).unsqueeze(1)
    ratio = torch.exp(lp - old)
    surrogate = torch.min(ratio * adv, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv)
    kl = None
    if ref_logprobs is not None:
        ref = torch.where(mask, ref_logprobs.detach().to(dtype), 0.0)
        kl = torch.exp(ref - lp) - (ref - lp) - 1
    per_token = -surrogate if kl is None or beta == 0 else -(surrogate - beta * kl)
    loss = AGGREGATIONS[aggregation](torch.where(mask, per_token, 0.0), mask)
    with torch.no_grad():
        clipped = ((ratio > 1 + clip_eps) & (adv > 0)) | ((ratio < 1 - clip_eps) & (adv < 0))
        metrics = {
            "kl": float("nan") if kl is None else kl[mask].mean().item(),
            "clip_fraction": clipped[mask].float().mean().item(),
            "ratio_mean": ratio[mask].mean().item(),
        }
    return loss, metrics


# ------------------------------------------------------------------------------------------------------ Meta RM


def meta_rm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with logits, mean over the batch.

    logits: (B,) float, the Meta RM's score of each generation
    labels: (B,) bool / integer / float holding only 0 and 1 (1 = the generation is correct)
    returns: () float32 (float64 for float64 logits)
    """
    _check_tensor("logits", logits, 1, "float")
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1:
        got = _shape(labels) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"labels must be a 1-D tensor, got {got}")
    _check_same_shape("labels", labels, "logits", logits)
    if logits.numel() == 0:
        raise ValueError("logits and labels are empty; give at least one labelled generation")
    bad = (labels != 0) & (labels != 1)
    if bad.any():
        raise ValueError(f"labels must hold only 0 and 1, got {labels[bad][0].item()!r}")
    dtype = torch.promote_types(logits.dtype, torch.float32)
    return F.binary_cross_entropy_with_logits(logits.to(dtype), labels.to(dtype))


def roc_auc(scores: torch.Tensor | Sequence[float], labels: torch.Tensor | Sequence[int]) -> float:
    """ROC-AUC = P(score of a positive > score of a negative) + 1/2 P(tie), by the Mann-Whitney rank statistic.

    scores: (N,) real; labels: (N,) 0/1 (1 = positive); returns: a python float in [0, 1].
    AUC = (sum of the positives' ranks - P (P + 1) / 2) / (P N_neg), tied scores sharing their average rank.
    """
    s = torch.as_tensor(scores).detach().cpu()
    y = torch.as_tensor(labels).detach().cpu()
    if s.dim() != 1 or y.dim() != 1 or s.shape != y.shape:
        raise ValueError(f"scores and labels must be 1-D of one length, got shapes {_shape(s)} and {_shape(y)}")
    if s.dtype == torch.bool or s.is_complex():
        raise ValueError(f"scores must be real numbers, got {s.dtype}")
    s = s.to(torch.float64)
    if torch.isnan(s).any():
        raise ValueError(f"scores hold NaN at index {int(torch.isnan(s).nonzero()[0])}; ROC-AUC needs ordered scores")
    bad = (y != 0) & (y != 1)
    if bad.any():
        raise ValueError(f"labels must hold only 0 and 1, got {y[bad][0].item()!r}")
    pos = y == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"ROC-AUC needs both classes, got {n_pos} positives and {n_neg} negatives")
    _, inverse, counts = torch.unique(s, return_inverse=True, return_counts=True)
    counts = counts.to(torch.float64)
    ends = counts.cumsum(0)  # 1-based rank of the last member of each tied group
    ranks = (ends - (counts - 1) / 2)[inverse]  # average rank of each score's tied group
    u = ranks[pos].sum().item() - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


# Training stages pick their loss by name.
LOSSES: dict[str, Callable[..., object]] = {"sft": sft_loss, "grpo": grpo_loss, "meta_rm": meta_rm_loss}
