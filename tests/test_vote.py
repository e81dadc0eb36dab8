"""vote: the rules by hand, native == reference exactly on random inputs, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from extract_helpers import native_lib
from hypothesis import given, settings
from hypothesis import strategies as st

import spct

NAN = math.nan


def assert_votes_equal(got: spct.Vote, want: spct.Vote) -> None:
    """Exact: rewards bit for bit (NaN where NaN), num_used and best equal."""
    assert got.rewards.shape == want.rewards.shape and got.rewards.dtype == want.rewards.dtype == torch.float32
    assert torch.equal(got.rewards.view(torch.int32), want.rewards.view(torch.int32)), (got.rewards, want.rewards)
    assert got.num_used.dtype == torch.int32 and torch.equal(got.num_used, want.num_used)
    assert got.best.dtype == torch.int64 and torch.equal(got.best, want.best), (got.best, want.best)


def both(*args, **kwargs) -> spct.Vote:
    native_lib()
    want = spct.vote(*args, **kwargs, backend="reference")
    assert_votes_equal(spct.vote(*args, **kwargs, backend="native"), want)
    return want


def test_sum_of_valid_samples():
    scores = torch.tensor([[[7, 4], [6, 5], [1, 9]]], dtype=torch.float32)
    v = both(scores, torch.tensor([[True, True, False]]))
    assert v.rewards.tolist() == [[13.0, 9.0]] and v.num_used.tolist() == [2] and v.best.tolist() == [0]


def test_all_invalid_item_has_no_reward():
    scores = torch.ones((2, 3, 2))
    v = both(scores, torch.tensor([[False] * 3, [True, False, False]]))
    assert np.isnan(v.rewards[0].numpy()).all() and v.best.tolist() == [-1, v.best[1].item()]
    assert v.num_used.tolist() == [0, 1]


def test_shuffled_samples_are_mapped_back():
    original = torch.tensor([[[9, 2, 5], [8, 3, 4]]], dtype=torch.float32)  # per original response
    perm = torch.tensor([[[2, 0, 1], [1, 2, 0]]])  # position p showed original response perm[p]
    shown = torch.gather(original, 2, perm)  # what each sample wrote, in position order
    v = both(shown, torch.ones((1, 2), dtype=torch.bool), perm=perm)
    assert v.rewards.tolist() == [[17.0, 5.0, 9.0]] and v.best.tolist() == [0]


def test_meta_rm_keeps_the_k_meta_best():
    scores = torch.tensor([[[1, 9], [9, 1], [8, 2], [2, 8]]], dtype=torch.float32)
    valid = torch.tensor([[True, True, False, True]])
    meta = torch.tensor([[0.1, 2.0, 5.0, 1.5]])  # sample 2 has the top meta score but is invalid
    assert both(scores, valid, meta_scores=meta, k_meta=1).rewards.tolist() == [[9.0, 1.0]]
    assert both(scores, valid, meta_scores=meta, k_meta=2).rewards.tolist() == [[11.0, 9.0]]
    v = both(scores, valid, meta_scores=meta, k_meta=10)  # more than valid: all valid
    assert v.rewards.tolist() == [[12.0, 18.0]] and v.num_used.tolist() == [3]
    tied = torch.tensor([[1.0, 1.0, 1.0, 1.0]])  # equal meta scores: the lower sample index first
    assert both(scores, valid, meta_scores=tied, k_meta=2).rewards.tolist() == [[10.0, 10.0]]


def test_ragged_items_pad_with_nan():
    scores = torch.tensor([[[3, 4, 0]], [[5, 5, 5]]], dtype=torch.float32)
    scores[0, 0, 2] = NAN  # padding may hold anything
    perm = torch.tensor([[[1, 0, 2]], [[2, 0, 1]]])
    v = both(scores, torch.ones((2, 1), dtype=torch.bool), perm=perm, num_responses=torch.tensor([2, 3]))
    assert v.rewards[0, :2].tolist() == [4.0, 3.0] and math.isnan(v.rewards[0, 2])
    assert v.best[0].item() == 0


def test_ties_are_broken_uniformly_and_deterministically():
    items = 6000
    scores = torch.full((items, 2, 3), 5.0)
    valid = torch.ones((items, 2), dtype=torch.bool)
    v = both(scores, valid, seed=7)
    counts = torch.bincount(v.best, minlength=3).tolist()
    sigma = math.sqrt(items * (1 / 3) * (2 / 3))
    assert all(abs(c - items / 3) < 5 * sigma for c in counts), counts
    assert torch.equal(v.best, spct.vote(scores, valid, seed=7).best)
    assert not torch.equal(v.best, spct.vote(scores, valid, seed=8).best)
    # a tie only among the top: never a lower response
    scores[:, :, 2] = 1.0
    assert set(both(scores, valid, seed=3).best.tolist()) == {0, 1}


def _backends_here() -> list[str]:
    """Every backend that runs on this machine (native: CPU, or CUDA when there is a device; Triton when
    installed, on CUDA or in its interpreter)."""
    import importlib.util

    found = ["reference", "native"]
    if importlib.util.find_spec("triton") is not None:
        found.append("triton")
    return found


def _devices_here() -> list[str]:
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


@pytest.mark.parametrize("device", _devices_here())
@pytest.mark.parametrize("backend", _backends_here())
def test_ties_follow_the_item_number_not_its_position(backend, device):
    """An item's tie-break is keyed by indices[b] (its number): the same item, numbered the same, gets the same best
    whatever its position and batch; without indices the number is the position."""
    if backend == "native":
        native_lib()
    items, seed = 64, 11
    scores = torch.full((items, 2, 5), 3.0)
    scores[::3, :, 4] = 1.0  # some items tie among four responses only
    valid = torch.ones((items, 2), dtype=torch.bool)
    numbers = torch.arange(1000, 1000 + items, dtype=torch.int64)
    run = lambda s, v, i: spct.vote(s.to(device), v.to(device), seed=seed, indices=i.to(device),  # noqa: E731
                                    backend=backend).best.cpu()
    whole = run(scores, valid, numbers)
    want = spct.vote(scores, valid, seed=seed, indices=numbers, backend="reference").best
    assert torch.equal(whole, want)
    assert len(set(whole.tolist())) == 5  # the draw really picks among the tied responses
    order = torch.randperm(items, generator=torch.Generator().manual_seed(1))
    assert torch.equal(run(scores[order], valid[order], numbers[order]), whole[order])  # shuffled batch
    for start, size in [(0, 1), (5, 4), (17, 16), (40, 24)]:  # re-batched: each item alone or in a smaller batch
        part = slice(start, start + size)
        assert torch.equal(run(scores[part], valid[part], numbers[part]), whole[part])
    by_position = spct.vote(scores.to(device), valid.to(device), seed=seed, backend=backend).best.cpu()
    assert torch.equal(by_position, run(scores, valid, torch.arange(items)))  # default: indices = 0..B-1
    assert not torch.equal(by_position, whole)


@pytest.mark.parametrize(("batch", "k", "n"), [(1, 1, 1), (7, 3, 6), (989, 32, 2), (0, 4, 2)])
def test_awkward_shapes(batch, k, n):
    g = torch.Generator().manual_seed(batch + k + n)
    scores = torch.randint(1, 11, (batch, k, n), generator=g).float()
    valid = torch.rand((batch, k), generator=g) > 0.2
    v = both(scores, valid)
    assert v.rewards.shape == (batch, n) and v.best.shape == (batch,)


@st.composite
def vote_inputs(draw):
    batch, k, n = draw(st.integers(1, 12)), draw(st.integers(1, 9)), draw(st.integers(1, 10))
    seed = draw(st.integers(0, 2**63 - 1))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    if draw(st.booleans()):
        scores = torch.randint(1, 4, (batch, k, n), generator=g).float()  # few values: many ties
    else:
        scores = (torch.rand((batch, k, n), generator=g) * 10).round(decimals=2)
    valid = torch.rand((batch, k), generator=g) < draw(st.sampled_from([0.0, 0.5, 0.9, 1.0]))
    n_item = torch.randint(1, n + 1, (batch,), generator=g) if draw(st.booleans()) else None
    kwargs = {"seed": seed}
    if draw(st.booleans()):
        live = n if n_item is None else None
        perm = torch.stack([torch.stack([torch.cat([torch.randperm(int(live or n_item[b]), generator=g),
                                                    torch.arange(int(live or n_item[b]), n)]) for _ in range(k)])
                            for b in range(batch)])
        kwargs["perm"] = perm
    if draw(st.booleans()):
        kwargs["meta_scores"] = torch.randint(0, 3, (batch, k), generator=g).float()  # ties in meta scores
        kwargs["k_meta"] = draw(st.integers(1, k + 2))
    if n_item is not None:
        kwargs["num_responses"] = n_item
    return scores, valid, kwargs


@settings(deadline=None)
@given(vote_inputs())
def test_native_equals_reference(inputs):
    scores, valid, kwargs = inputs
    both(scores, valid, **kwargs)


BAD_PERM_VALUES = [-1, -(2**32), 2**32, 2**32 + 1, 2**63 - 1, -(2**63)]


@settings(deadline=None)
@given(st.data())
def test_a_corrupted_item_is_found_by_both(data):
    """One bad value (a perm entry duplicated, out of range or off by 2^32; a non-finite score) in one sample of
    one item, valid or not: both backends raise the same error, naming the first bad item."""
    batch, k, n = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 5)), data.draw(st.integers(1, 10))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31)))
    scores = torch.randint(1, 11, (batch, k, n), generator=g).float()
    valid = torch.rand((batch, k), generator=g) < 0.7
    perm = torch.rand((batch, k, n), generator=g).argsort(-1)
    b, j, pos = data.draw(st.integers(0, batch - 1)), data.draw(st.integers(0, k - 1)), data.draw(st.integers(0, n - 1))
    what = data.draw(st.sampled_from(["duplicate", "value", "score"]))
    if what == "duplicate" and n > 1:
        other = data.draw(st.integers(0, n - 2))
        perm[b, j, pos] = perm[b, j, other if other < pos else other + 1]
    elif what == "value" or what == "duplicate":
        perm[b, j, pos] = data.draw(st.sampled_from([n, n + 1, *BAD_PERM_VALUES]))
    else:
        scores[b, j, pos] = data.draw(st.sampled_from([NAN, math.inf, -math.inf]))
    native_lib()
    errors = []
    for backend in ("reference", "native"):
        try:
            spct.vote(scores, valid, perm=perm, backend=backend)
            errors.append(None)
        except ValueError as e:
            errors.append(str(e))
    assert errors[0] == errors[1]
    assert (errors[0] is None) == (what == "score" and not valid[b, j]), errors[0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"valid": torch.ones((2, 4), dtype=torch.bool)}, r"valid must have shape \(2, 3\)"),
        ({"valid": torch.ones((2, 3))}, "valid must be a bool tensor"),
        ({"scores": torch.ones((2, 3))}, r"scores must be a float32 tensor \(B, k, n\), got \(2, 3\)"),
        ({"scores": torch.ones((2, 3, 2), dtype=torch.float64)}, "float64"),
        ({"meta_scores": torch.ones(2, 3), "k_meta": 0}, "k_meta must be an int >= 1 .* got 0"),
        ({"k_meta": 2}, "without meta_scores"),
        ({"meta_scores": torch.ones(2, 2), "k_meta": 1}, r"meta_scores must have shape \(2, 3\)"),
        ({"num_responses": torch.tensor([2, 3])}, r"num_responses\[1\] = 3 is outside \[1, n = 2\]"),
        ({"num_responses": torch.tensor([0, 2])}, r"num_responses\[0\] = 0"),
        ({"perm": torch.zeros((2, 3, 2), dtype=torch.int64)}, r"perm\[0, 0\] = \[0, 0\] is not a permutation"),
        ({"perm": torch.ones((2, 3, 2))}, "perm must be an integer tensor"),
        ({"seed": -1}, "seed must be an int in"),
        ({"indices": torch.tensor([0, -3])}, r"indices\[1\] = -3 is negative"),
        ({"indices": torch.arange(3)}, r"indices must have shape \(2,\)"),
        ({"indices": torch.zeros(2)}, "indices must be an integer tensor"),
        ({"backend": "cuda"}, "backend must be one of"),
        ({"perm": torch.tensor([[[0, 1], [1, 0], [1, 1]], [[0, 1]] * 3])}, r"perm\[0, 2\] = \[1, 1\] is not a"),
        ({"perm": torch.tensor([[[0, 2]] * 3] * 2)}, r"perm\[0, 0\] = \[0, 2\] is not a permutation of range\(2\)"),
        ({"meta_scores": torch.tensor([[0.0, NAN, 1.0]] * 2), "k_meta": 1}, r"meta_scores\[0, 1\] is NaN"),
        ({"perm": torch.tensor([[[0, 1]] * 3, [[0, 1], [0, 1], [3, 0]]]), "valid": torch.tensor([[True] * 3,
          [True, True, False]])}, r"perm\[1, 2\] = \[3, 0\]"),  # an invalid sample's perm is checked too
    ],
)
@pytest.mark.parametrize("backend", ["native", "reference"])
def test_bad_input(kwargs, match, backend):
    args = {"scores": torch.ones((2, 3, 2)), "valid": torch.ones((2, 3), dtype=torch.bool), "backend": backend,
            **kwargs}
    with pytest.raises(ValueError, match=match):
        spct.vote(args.pop("scores"), args.pop("valid"), **args)


@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize("bad", [NAN, math.inf, -math.inf])
def test_non_finite_score_in_a_valid_sample_is_an_error(backend, bad):
    scores = torch.ones((2, 3, 2))
    scores[1, 2, 0] = bad
    with pytest.raises(ValueError, match=rf"scores\[1, 2, 0\] = {bad} is not finite in a valid sample"):
        spct.vote(scores, torch.ones((2, 3), dtype=torch.bool), backend=backend)
    valid = torch.ones((2, 3), dtype=torch.bool)
    valid[1, 2] = False  # invalid samples may hold NaN (as extract_scores gives them)
    assert spct.vote(scores, valid, backend=backend).rewards[1].tolist() == [2.0, 2.0]


def test_registered_op_passes_opcheck():
    scores = torch.randint(1, 11, (5, 4, 3)).float()
    args = (scores, torch.ones((5, 4), dtype=torch.bool), None, torch.randn(5, 4), 2, None, 0, "auto")
    torch.library.opcheck(torch.ops.spct.vote.default, args, test_utils=("test_schema", "test_faketensor"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_equals_reference():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(1, 4, (300, 8, 4), generator=g).float()
    valid = torch.rand((300, 8), generator=g) > 0.3
    perm = torch.stack([torch.stack([torch.randperm(4, generator=g) for _ in range(8)]) for _ in range(300)])
    meta = torch.randint(0, 3, (300, 8), generator=g).float()
    want = spct.vote(scores, valid, perm=perm, meta_scores=meta, k_meta=3, seed=5, backend="reference")
    got = spct.vote(scores.cuda(), valid.cuda(), perm=perm.cuda(), meta_scores=meta.cuda(), k_meta=3, seed=5)
    assert_votes_equal(spct.Vote(*(t.cpu() for t in (got.rewards, got.num_used, got.best))), want)


@settings(deadline=None, max_examples=40)
@given(vote_inputs())
def test_triton_equals_reference(inputs):
    pytest.importorskip("triton", reason="triton is not installed (pip install 'spct[triton]')")
    scores, valid, kwargs = inputs
    assert_votes_equal(spct.vote(scores, valid, **kwargs, backend="triton"),
                       spct.vote(scores, valid, **kwargs, backend="reference"))


@pytest.mark.parametrize("seed", [0, 12345, 2**40 + 7])
def test_triton_tie_breaks_match(seed):
    pytest.importorskip("triton", reason="triton is not installed (pip install 'spct[triton]')")
    scores, valid = torch.full((150, 2, 5), 3.0), torch.ones((150, 2), dtype=torch.bool)
    want = spct.vote(scores, valid, seed=seed, backend="reference")
    assert len(set(want.best.tolist())) == 5  # the draw really picks among the five tied responses
    assert_votes_equal(spct.vote(scores, valid, seed=seed, backend="triton"), want)
    assert_votes_equal(spct.vote(scores, valid, seed=seed, backend="native"), want)


def test_triton_philox_matches_for_64_bit_seeds():
    pytest.importorskip("triton", reason="triton is not installed (pip install 'spct[triton]')")
    scores, valid = torch.full((40, 1, 6), 2.0), torch.ones((40, 1), dtype=torch.bool)
    for seed in [1, 2**31 - 1, 2**31, 3_449_720_149, 2**32 - 1, 2**32, 2**63 - 1]:
        assert_votes_equal(spct.vote(scores, valid, seed=seed, backend="triton"),
                           spct.vote(scores, valid, seed=seed, backend="reference"))
