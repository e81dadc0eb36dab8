"""score_group_allowed: the native token masks equal the reference exactly (on the default tokenizer's byte table
and on synthetic tables), a sampler restricted to them always completes a valid group, bad arguments."""

from __future__ import annotations

import random

import numpy as np
import pytest

from spct.ops import extract_scores
from spct.ops.ref.score_group import viable
from spct.ops.score_group import score_group_allowed
from spct.ops.token_bytes import TokenBytes

RANGES = [(1, 0, 1), (2, 1, 10), (3, 1, 10), (4, 0, 100), (2, 5, 7), (1, 10, 10), (3, 0, 9), (2, 90, 1200)]


@pytest.fixture(scope="module")
def vocab(smollm2_tokenizer):
    return TokenBytes.from_tokenizer(smollm2_tokenizer)


def _texts(rng: random.Random, n: int, lo: int, hi: int) -> list[str]:
    """Prefixes of valid groups, and near misses (wrong separators, leading zeros, out of range, too many)."""
    out = []
    for _ in range(25):
        group = ", ".join(str(rng.randint(lo, hi)) for _ in range(n)) + "}"
        out.append(group[: rng.randint(0, len(group))])
    out += ["0", "00", "01", f"{hi + 1}", f"{hi}0", ",", " ", "}", "1,2", "1 ,", "1,  2", f"{lo}, " * (n + 1),
            f"{lo}}}", f"{lo}}} ", "x", "1a", f"{lo}, {lo}}}"]
    return out


def _group_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids if text else []


@pytest.mark.parametrize("n,lo,hi", RANGES)
def test_native_equals_reference_on_the_default_vocabulary(vocab, smollm2_tokenizer, n, lo, hi):
    rng = random.Random(n * 1000 + hi)
    for text in _texts(rng, n, lo, hi):
        ids = _group_ids(smollm2_tokenizer, text)
        got = score_group_allowed(vocab, ids, n=n, lo=lo, hi=hi, backend="native")
        want = score_group_allowed(vocab, ids, n=n, lo=lo, hi=hi, backend="reference")
        assert got[1:] == want[1:], text
        assert got[0].dtype == np.int32 and got[0].tolist() == want[0].tolist(), text
        assert got[1] == viable(smollm2_tokenizer.decode(ids), n, lo, hi), text


def test_native_equals_reference_on_synthetic_tables():
    rng = random.Random(7)
    alphabet = b"0123456789, }x\n"
    for _ in range(20):
        pieces = [b""] + [bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 4))) for _ in range(300)]
        vocab = TokenBytes.from_pieces(pieces)
        n, lo, hi = rng.choice(RANGES)
        for _ in range(30):
            ids = [rng.randrange(len(pieces)) for _ in range(rng.randint(0, 4))]
            got = score_group_allowed(vocab, ids, n=n, lo=lo, hi=hi, backend="native")
            want = score_group_allowed(vocab, ids, n=n, lo=lo, hi=hi, backend="reference")
            assert got[0].tolist() == want[0].tolist() and got[1:] == want[1:], (pieces, ids)
        assert 0 not in score_group_allowed(vocab, [], n=n, lo=lo, hi=hi)[0]  # no bytes: never allowed


@pytest.mark.parametrize("n,lo,hi", RANGES)
def test_a_restricted_sampler_always_completes_a_valid_group(vocab, n, lo, hi):
    rng = random.Random(hi)
    budget = (len(str(hi)) + 2) * n + 1
    for _ in range(20):
        ids: list[int] = []
        while True:
            allowed, ok, closed = score_group_allowed(vocab, ids, n=n, lo=lo, hi=hi)
            assert ok
            if closed:
                break
            assert len(allowed) and len(ids) < budget
            ids.append(int(rng.choice(allowed.tolist())))
        text = b"".join(vocab[t] for t in ids).decode()
        ex = extract_scores(["Scores: \\boxed{" + text], num_responses=[n], score_range=(lo, hi))
        assert bool(ex.valid[0]), text
        assert [int(x) for x in text[:-1].split(", ")] == ex.scores[0, :n].int().tolist()


def test_bad_arguments(vocab):
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        score_group_allowed(vocab, [], n=0, lo=1, hi=10)
    with pytest.raises(ValueError, match="lo = 5, hi = 4"):
        score_group_allowed(vocab, [], n=1, lo=5, hi=4)
    with pytest.raises(ValueError, match="lo = -1"):
        score_group_allowed(vocab, [], n=1, lo=-1, hi=4)
    with pytest.raises(ValueError, match=f"group token id {len(vocab)} outside"):
        score_group_allowed(vocab, [len(vocab)], n=1, lo=1, hi=4)
    with pytest.raises(TypeError, match="TokenBytes"):
        score_group_allowed([b"1"], [], n=1, lo=1, hi=4)
