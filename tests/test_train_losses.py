"""spct.train.losses against plain-Python loop references (floats, math, statistics), plus gradients and errors."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from conftest import TOLERANCES

from spct.train.losses import (
    AGGREGATIONS,
    LOSSES,
    group_advantages,
    grpo_loss,
    meta_rm_loss,
    roc_auc,
    sft_loss,
    token_logprobs,
)

F32 = TOLERANCES[torch.float32]


def close(actual: torch.Tensor, expected) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), **F32)


# ------------------------------------------------------------------------------------ references: loops over floats


def ref_token_logprobs(logits: list, ids: list) -> list:
    out = []
    for row, row_ids in zip(logits, ids):
        out_row = []
        for t in range(len(row_ids) - 1):
            m = max(row[t])
            lse = m + math.log(sum(math.exp(x - m) for x in row[t]))
            out_row.append(row[t][row_ids[t + 1]] - lse)
        out.append(out_row)
    return out


def ref_sft(logits: list, ids: list, cmask: list) -> float:
    lps = ref_token_logprobs(logits, ids)
    total, n = 0.0, 0
    for b in range(len(ids)):
        for t in range(1, len(ids[b])):
            if cmask[b][t]:
                total -= lps[b][t - 1]
                n += 1
    return total / n


def ref_grpo(lp, old, ref, adv, mask, clip_eps, beta, aggregation):
    """Returns (loss, kl, clip_fraction, ratio_mean)."""
    per_seq, all_tokens, kls, clips, ratios = [], [], [], [], []
    for b in range(len(lp)):
        seq = []
        for t in range(len(lp[b])):
            if not mask[b][t]:
                continue
            ratio = math.exp(lp[b][t] - old[b][t])
            clipped_ratio = min(max(ratio, 1 - clip_eps), 1 + clip_eps)
            surrogate = min(ratio * adv[b], clipped_ratio * adv[b])
            kl = 0.0
            if ref is not None:
                d = ref[b][t] - lp[b][t]
                kl = math.exp(d) - d - 1
                kls.append(kl)
            seq.append(-(surrogate - beta * kl))
            clips.append(surrogate != ratio * adv[b])
            ratios.append(ratio)
        all_tokens += seq
        if seq:
            per_seq.append(sum(seq) / len(seq))
    loss = sum(per_seq) / len(per_seq) if aggregation == "sequence" else sum(all_tokens) / len(all_tokens)
    kl = sum(kls) / len(kls) if kls else float("nan")
    return loss, kl, sum(clips) / len(clips), sum(ratios) / len(ratios)


def ref_bce(logits: list, labels: list) -> float:
    return sum(max(x, 0.0) - x * y + math.log1p(math.exp(-abs(x))) for x, y in zip(logits, labels)) / len(logits)


def ref_auc(scores: list, labels: list) -> float:
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


# ---------------------------------------------------------------------------------------------- token log-probs


@pytest.mark.parametrize(("B", "T", "V"), [(1, 1, 111), (1, 5, 111), (3, 4, 111), (7, 6, 111), (1, 3, 49_152)])
def test_token_logprobs_matches_loops(B, T, V):
    g = torch.Generator().manual_seed(B * 100 + T + V)
    logits = torch.randn(B, T, V, generator=g) * 3
    ids = torch.randint(0, V, (B, T), generator=g)
    got = token_logprobs(logits, ids)
    assert got.shape == (B, T - 1) and got.dtype == torch.float32
    close(got, ref_token_logprobs(logits.double().tolist(), ids.tolist()))


def test_token_logprobs_bf16_upcasts_and_int32_ids():
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 5, 111, generator=g) * 3).bfloat16()
    ids = torch.randint(0, 111, (3, 5), generator=g, dtype=torch.int32)
    got = token_logprobs(logits, ids)
    assert got.dtype == torch.float32
    close(got, ref_token_logprobs(logits.double().tolist(), ids.tolist()))


@pytest.mark.parametrize(
    ("logits", "ids", "match"),
    [
        (torch.zeros(2, 4), torch.zeros(2, 4, dtype=torch.long), "logits must have 3 dims"),
        (torch.zeros(2, 4, 5), torch.zeros(2, 4), "input_ids must have an integer dtype"),
        (torch.zeros(2, 4, 5), torch.zeros(2, 3, dtype=torch.long), r"disagree"),
        (torch.zeros(1, 3, 5), torch.tensor([[0, 5, 1]]), "token id 5, outside the vocabulary"),
    ],
)
def test_token_logprobs_errors(logits, ids, match):
    with pytest.raises(ValueError, match=match):
        token_logprobs(logits, ids)


# ---------------------------------------------------------------------------------------------------------- SFT


@pytest.mark.parametrize(("B", "T"), [(1, 2), (3, 5), (7, 9)])
def test_sft_loss_matches_loops(B, T):
    V = 111
    g = torch.Generator().manual_seed(B * 10 + T)
    logits = torch.randn(B, T, V, generator=g) * 2
    ids = torch.randint(0, V, (B, T), generator=g)
    # A prompt of random length per row, then the completion, then padding; some rows have no completion.
    cmask = torch.zeros(B, T, dtype=torch.bool)
    for b in range(B):
        start = int(torch.randint(0, T, (1,), generator=g))
        stop = int(torch.randint(start, T + 1, (1,), generator=g))
        cmask[b, start:stop] = True
    cmask[0, -1] = True  # at least one predictable token
    got = sft_loss(logits, ids, cmask)
    assert got.shape == () and got.dtype == torch.float32
    close(got, ref_sft(logits.double().tolist(), ids.tolist(), cmask.tolist()))


def test_sft_loss_ignores_position_zero_and_prompt():
    logits = torch.randn(1, 3, 7)
    ids = torch.tensor([[1, 2, 3]])
    only_last = sft_loss(logits, ids, torch.tensor([[False, False, True]]))
    with_first = sft_loss(logits, ids, torch.tensor([[True, False, True]]))  # position 0 has no prefix
    torch.testing.assert_close(only_last, with_first, rtol=0, atol=0)
    close(only_last, -token_logprobs(logits, ids)[0, 1].item())


def test_sft_loss_gradcheck():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(0, 5, (2, 4), generator=g)
    cmask = torch.tensor([[False, True, True, False], [False, False, True, True]])
    assert torch.autograd.gradcheck(lambda x: sft_loss(x, ids, cmask), (logits,))


def test_sft_loss_errors():
    logits, ids = torch.zeros(2, 3, 5), torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="selects no predictable token"):
        sft_loss(logits, ids, torch.tensor([[True, False, False], [True, False, False]]))
    with pytest.raises(ValueError, match="completion_mask must have torch.bool"):
        sft_loss(logits, ids, torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"completion_mask has shape \(2, 2\), but input_ids has shape \(2, 3\)"):
        sft_loss(logits, ids, torch.ones(2, 2, dtype=torch.bool))


# ---------------------------------------------------------------------------------------------- advantages


def test_group_advantages_hand_example():
    # Group 1: [1, -1, -1, -1]: mean -0.5, sample std 1 -> [1.5, -0.5, -0.5, -0.5] / (1 + 1e-4).
    # Group 2: all equal -> exactly 0.  Group 3: [1, 1, -1, -1]: std = sqrt(4/3).
    r = torch.tensor([1.0, -1, -1, -1, 1, 1, 1, 1, 1, 1, -1, -1])
    s = math.sqrt(4 / 3) + 1e-4
    expected = [1.5 / 1.0001, -0.5 / 1.0001, -0.5 / 1.0001, -0.5 / 1.0001, 0, 0, 0, 0, 1 / s, 1 / s, -1 / s, -1 / s]
    got = group_advantages(r, 4)
    close(got, expected)
    assert (got[4:8] == 0).all()


@pytest.mark.parametrize(("B", "G"), [(1, 2), (3, 4), (7, 3), (3, 1)])
def test_group_advantages_matches_statistics(B, G):
    g = torch.Generator().manual_seed(B * 10 + G)
    r = torch.randn(B * G, generator=g)
    r[:G] = 0.1  # one flat group (0.1 is not exactly representable; its mean may miss it by an ulp)
    expected = []
    for i in range(B):
        grp = r[i * G:(i + 1) * G].double().tolist()
        if len(set(grp)) == 1:
            expected += [0.0] * G
        else:
            m, s = statistics.mean(grp), statistics.stdev(grp)
            expected += [(x - m) / (s + 1e-4) for x in grp]
    got = group_advantages(r, G)
    assert got.shape == (B * G,)
    close(got, expected)
    assert (got[:G] == 0).all()


def test_group_advantages_integer_rewards_and_errors():
    close(group_advantages(torch.tensor([1, -1]), 2), [1 / (math.sqrt(2) + 1e-4), -1 / (math.sqrt(2) + 1e-4)])
    with pytest.raises(ValueError, match="rewards has 5 entries, not a multiple of group_size 4"):
        group_advantages(torch.zeros(5), 4)
    with pytest.raises(ValueError, match="group_size must be a positive int, got 0"):
        group_advantages(torch.zeros(4), 0)
    with pytest.raises(ValueError, match="rewards must have 1 dims"):
        group_advantages(torch.zeros(2, 4), 4)


# ---------------------------------------------------------------------------------------------------------- GRPO


def grpo_inputs(B, T, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    lp = -torch.rand(B, T, generator=g, dtype=dtype) * 3
    old = lp + torch.randn(B, T, generator=g, dtype=dtype) * 0.3  # ratios on both sides of the clip range
    ref = lp + torch.randn(B, T, generator=g, dtype=dtype) * 0.5
    adv = torch.randn(B, generator=g, dtype=dtype)
    mask = torch.rand(B, T, generator=g) < 0.7
    if B > 1:
        mask[1] = False  # a sequence without completion tokens
    mask[0, 0] = True
    return lp, old, ref, adv, mask


@pytest.mark.parametrize("aggregation", ["sequence", "token"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize(("B", "T"), [(1, 1), (1, 6), (3, 5), (7, 11)])
def test_grpo_loss_matches_loops(B, T, beta, aggregation):
    lp, old, ref, adv, mask = grpo_inputs(B, T, seed=B * 100 + T)
    lp.requires_grad_(True)
    loss, metrics = grpo_loss(lp, old, ref, adv, mask, clip_eps=0.2, beta=beta, aggregation=aggregation)
    e_loss, e_kl, e_clip, e_ratio = ref_grpo(
        lp.tolist(), old.tolist(), ref.tolist(), adv.tolist(), mask.tolist(), 0.2, beta, aggregation
    )
    assert loss.shape == () and loss.requires_grad
    close(loss, e_loss)
    assert set(metrics) == {"kl", "clip_fraction", "ratio_mean"}
    assert all(isinstance(v, float) for v in metrics.values())
    close(torch.tensor([metrics["kl"], metrics["clip_fraction"], metrics["ratio_mean"]]), [e_kl, e_clip, e_ratio])


def test_grpo_sequence_aggregation_skips_empty_rows():
    lp, old, ref, adv, mask = grpo_inputs(3, 5, seed=3)
    lp[1], old[1] = float("-inf"), float("nan")  # padding garbage in the empty row must not leak in
    lp.requires_grad_(True)
    loss, _ = grpo_loss(lp, old, ref, adv, mask, beta=0.04)
    keep = torch.tensor([0, 2])
    loss_kept, _ = grpo_loss(lp[keep], old[keep], ref[keep], adv[keep], mask[keep], beta=0.04)
    torch.testing.assert_close(loss, loss_kept, **F32)
    loss.backward()
    assert torch.isfinite(lp.grad).all() and (lp.grad[1] == 0).all() and (lp.grad[~mask] == 0).all()


def test_grpo_on_policy_gradient_by_hand():
    # ratio == 1, beta = 0: loss = -mean_i A_i, d loss / d lp[i, t] = -A_i / |o_i| / (number of non-empty rows)
    mask = torch.tensor([[True, True, False], [True, False, False], [False, False, False]])
    lp = torch.tensor([[-1.0, -2, 0], [-0.5, 0, 0], [0, 0, 0]], requires_grad=True)
    adv = torch.tensor([0.5, -2.0, 7.0])
    loss, metrics = grpo_loss(lp, lp.detach(), None, adv, mask)
    loss.backward()
    close(loss, -(0.5 - 2.0) / 2)
    close(lp.grad, [[-0.5 / 2 / 2, -0.5 / 2 / 2, 0], [2.0 / 1 / 2, 0, 0], [0, 0, 0]])
    assert math.isnan(metrics["kl"]) and metrics["clip_fraction"] == 0.0 and metrics["ratio_mean"] == 1.0
    # "token": every masked token weighs 1/3.
    lp.grad = None
    loss, _ = grpo_loss(lp, lp.detach(), None, adv, mask, aggregation="token")
    loss.backward()
    close(lp.grad, [[-0.5 / 3, -0.5 / 3, 0], [2.0 / 3, 0, 0], [0, 0, 0]])


@pytest.mark.parametrize(
    ("ratio", "adv", "clipped", "grad"),
    [
        (1.5, 1.0, True, 0.0),  # above 1 + eps, positive advantage: clipped, no gradient
        (1.5, -1.0, False, 1.5),  # above 1 + eps, negative advantage: unclipped, loss = -ratio * A
        (0.5, -1.0, True, 0.0),  # below 1 - eps, negative advantage: clipped
        (0.5, 1.0, False, -0.5),  # below 1 - eps, positive advantage: unclipped
        (1.1, 1.0, False, -1.1),  # inside the range
    ],
)
def test_grpo_clip_one_token(ratio, adv, clipped, grad):
    lp = torch.tensor([[math.log(ratio)]], requires_grad=True)
    mask = torch.ones(1, 1, dtype=torch.bool)
    loss, metrics = grpo_loss(lp, torch.zeros(1, 1), None, torch.tensor([adv]), mask, clip_eps=0.2)
    loss.backward()
    close(loss, -min(ratio * adv, min(max(ratio, 0.8), 1.2) * adv))
    close(lp.grad, [[grad]])
    assert metrics["clip_fraction"] == (1.0 if clipped else 0.0)


@pytest.mark.parametrize("aggregation", sorted(AGGREGATIONS))
def test_grpo_loss_gradcheck(aggregation):
    lp, old, ref, adv, mask = grpo_inputs(3, 4, seed=7, dtype=torch.float64)
    lp.requires_grad_(True)

    def f(x):
        return grpo_loss(x, old, ref, adv, mask, beta=0.1, aggregation=aggregation)[0]

    assert torch.autograd.gradcheck(f, (lp,))


def test_grpo_loss_errors():
    lp, old, ref, adv, mask = grpo_inputs(3, 4, seed=0)
    with pytest.raises(ValueError, match=r"aggregation must be one of \['sequence', 'token'\], got 'mean'"):
        grpo_loss(lp, old, ref, adv, mask, aggregation="mean")
    with pytest.raises(ValueError, match="beta = 0.1 needs ref_logprobs"):
        grpo_loss(lp, old, None, adv, mask, beta=0.1)
    with pytest.raises(ValueError, match=r"old_logprobs has shape \(3, 3\), but logprobs has shape \(3, 4\)"):
        grpo_loss(lp, old[:, :3], ref, adv, mask)
    with pytest.raises(ValueError, match=r"advantages has shape \(2,\)"):
        grpo_loss(lp, old, ref, adv[:2], mask)
    with pytest.raises(ValueError, match="mask must have torch.bool"):
        grpo_loss(lp, old, ref, adv, mask.float())
    with pytest.raises(ValueError, match="mask .* selects no completion token"):
        grpo_loss(lp, old, ref, adv, torch.zeros_like(mask))
    with pytest.raises(ValueError, match="clip_eps must be in"):
        grpo_loss(lp, old, ref, adv, mask, clip_eps=1.5)


# ------------------------------------------------------------------------------------------------------- Meta RM


@pytest.mark.parametrize("B", [1, 3, 7])
def test_meta_rm_loss_matches_loops(B):
    g = torch.Generator().manual_seed(B)
    logits = torch.randn(B, generator=g) * 4
    labels = torch.randint(0, 2, (B,), generator=g)
    got = meta_rm_loss(logits, labels)
    assert got.shape == ()
    close(got, ref_bce(logits.double().tolist(), labels.tolist()))
    torch.testing.assert_close(meta_rm_loss(logits, labels.bool()), got, rtol=0, atol=0)


def test_meta_rm_loss_errors():
    with pytest.raises(ValueError, match="labels must hold only 0 and 1, got 2"):
        meta_rm_loss(torch.zeros(3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"labels has shape \(2,\), but logits has shape \(3,\)"):
        meta_rm_loss(torch.zeros(3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="logits must have 1 dims"):
        meta_rm_loss(torch.zeros(3, 1), torch.tensor([0, 1, 1]))


# --------------------------------------------------------------------------------------------------------- ROC-AUC


@pytest.mark.parametrize(
    ("scores", "labels", "auc"),
    [
        ([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], 0.75),
        ([0.1, 0.2, 0.3], [0, 1, 1], 1.0),
        ([0.3, 0.2, 0.1], [0, 1, 1], 0.0),
        ([0.5, 0.5], [0, 1], 0.5),  # a tie counts half
        ([0.1, 0.5, 0.5, 0.5, 0.9], [0, 0, 1, 1, 1], (2 + 2 * 1.5) / 6),
        ([1, 1, 1, 2], [1, 0, 1, 0], (0.5 + 0.5) / 4),
    ],
)
def test_roc_auc_hand_examples(scores, labels, auc):
    assert roc_auc(scores, labels) == pytest.approx(auc, abs=1e-12)
    assert roc_auc(torch.tensor(scores), torch.tensor(labels)) == pytest.approx(auc, abs=1e-12)


@pytest.mark.parametrize("n", [2, 7, 989])
def test_roc_auc_matches_pairwise_loop(n):
    g = torch.Generator().manual_seed(n)
    scores = torch.randint(0, 5, (n,), generator=g).float() / 4  # many ties
    labels = torch.arange(n) % 2
    assert roc_auc(scores, labels) == pytest.approx(ref_auc(scores.tolist(), labels.tolist()), abs=1e-12)


def test_roc_auc_errors():
    with pytest.raises(ValueError, match="needs both classes, got 3 positives and 0 negatives"):
        roc_auc([0.1, 0.2, 0.3], [1, 1, 1])
    with pytest.raises(ValueError, match="got 0 positives and 2 negatives"):
        roc_auc([0.1, 0.2], [0, 0])
    with pytest.raises(ValueError, match="labels must hold only 0 and 1, got 3"):
        roc_auc([0.1, 0.2], [0, 3])
    with pytest.raises(ValueError, match=r"got shapes \(2,\) and \(3,\)"):
        roc_auc([0.1, 0.2], [0, 1, 1])
    with pytest.raises(ValueError, match="scores hold NaN at index 1"):
        roc_auc([0.1, float("nan")], [0, 1])


def test_losses_dict():
    assert LOSSES == {"sft": sft_loss, "grpo": grpo_loss, "meta_rm": meta_rm_loss}
