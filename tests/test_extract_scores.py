"""extract_scores on texts: every grammar rule by hand, native == reference exactly, API shapes and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from extract_helpers import GRM_SAMPLE, assert_packed_equal, both, span_text

import spct

NAN = math.nan

# (generation, num_responses, expected scores or None when invalid); score_range (1, 10).
SCORE_CASES = [
    ("Scores: \\boxed{7, 4}", 2, [7, 4]),
    ("Final Scores: [[7, 4]]", 2, [7, 4]),
    ("**Scores: \\boxed{8, 8}**", 2, [8, 8]),
    ("### Scores:\n\\boxed{ 1 ,\n 10 }", 2, [1, 10]),  # whitespace and newlines inside the group
    ("\\boxed{7}", 1, [7]),
    ("\\boxed{7.5, 2.25}", 2, [7.5, 2.25]),  # plain decimals
    ("\\boxed{007, 3.50}", 2, [7, 3.5]),  # leading and trailing zeros
    ("\\boxed{1, 2} then [[5, 6]]", 2, [5, 6]),  # the last group wins, either kind
    ("[[5, 6]] then \\boxed{1, 2}", 2, [1, 2]),
    ("\\boxed{1, 2} and an unterminated \\boxed{3, 4", 2, [1, 2]),  # an opener without closer is no group
    ("[[5, 6]] and [[7, 8]", 2, [5, 6]),
    ("\\boxed{[[3, 4]]}", 2, [3, 4]),  # "[[" starts after "\boxed{": it is the last group
    ("[[[3, 4]]]", 2, [3, 4]),
    ("\\\\boxed{9, 9}", 2, [9, 9]),  # JSON-escaped backslash still contains \boxed{
    ("\\boxed{7, 4, 2}", 2, None),  # too many
    ("\\boxed{7}", 2, None),  # too few
    ("\\boxed{}", 1, None),
    ("\\boxed{0, 5}", 2, None),  # below the range
    ("\\boxed{5, 11}", 2, None),  # above the range
    ("\\boxed{10.0001}", 1, None),
    ("\\boxed{7.}", 1, None),
    ("\\boxed{.5}", 1, None),
    ("\\boxed{1e1}", 1, None),
    ("\\boxed{seven}", 1, None),
    ("\\boxed{7/10}", 1, None),
    ("\\boxed{7, 4,}", 2, None),  # trailing comma
    ("\\boxed{7,, 4}", 2, None),
    ("\\boxed{7 4}", 2, None),  # no separator
    ("\\boxed{\\text{7}, 4}", 2, None),  # content ends at the first "}"
    ("\\boxed{7, 4} but finally \\boxed{x}", 2, None),  # the last group is invalid: no fallback
    ("Scores: 7, 4", 2, None),  # no group
    ("", 1, None),
    ("\\boxed{+7, 4}", 2, None),  # no plus sign
    ("\\boxed{1_0}", 1, None),  # no underscores (Python's float would take them)
    ("\\boxed{\uff17}", 1, None),  # a full-width digit is no DIGIT
]


@pytest.mark.parametrize(("text", "n", "expected"), SCORE_CASES)
def test_score_rules(text, n, expected):
    packed = both([text], n)
    if expected is None:
        assert not packed.valid[0]
        assert np.isnan(packed.scores[0]).all()
    else:
        assert packed.valid[0]
        np.testing.assert_array_equal(packed.scores[0], np.asarray(expected, dtype=np.float32))


def test_custom_range_and_signs():
    packed = both(["\\boxed{-3, 2.5}", "\\boxed{-6, 0}", "[[-0, 5]]", "[[- 1, 2]]"], 2, lo=-5.0, hi=5.0)
    assert packed.valid.tolist() == [True, False, True, False]
    np.testing.assert_array_equal(packed.scores[0], [-3, 2.5])
    assert math.copysign(1.0, packed.scores[2, 0]) == -1.0  # -0 stays -0.0 in both backends


def test_long_numbers_take_the_exact_path():
    # More digits than a double holds: the C++ kernel falls back to std::from_chars, and must equal float().
    texts = [
        "\\boxed{" + "9" * 40 + "}",
        "\\boxed{7." + "3" * 60 + "}",
        "\\boxed{0." + "0" * 400 + "1}",
        "\\boxed{1" + "0" * 400 + "}",
        "\\boxed{9007199254740993}",
        "\\boxed{5.0000000000000000000000000000001}",
    ]
    packed = both(texts, 1, lo=0.0, hi=1e300)
    assert packed.valid.tolist() == [True, True, True, False, True, True]
    assert packed.scores[2, 0] == 0.0


def test_per_row_num_responses_pads_with_nan():
    packed = both(["\\boxed{3}", "\\boxed{3, 4, 5}", "\\boxed{1, 2}", "nothing"], [1, 3, 2, 6])
    assert packed.scores.shape == (4, 6)
    np.testing.assert_array_equal(packed.scores[0], [3, NAN, NAN, NAN, NAN, NAN])
    np.testing.assert_array_equal(packed.scores[1, :3], [3, 4, 5])
    assert np.isnan(packed.scores[1, 3:]).all() and np.isnan(packed.scores[3]).all()
    assert packed.valid.tolist() == [True, True, True, False]


def test_sections_of_a_grm_generation():
    packed = both([GRM_SAMPLE], 2)
    assert span_text(packed, 0, packed.principle_span[0]).startswith(b"1. Factual accuracy")
    assert span_text(packed, 0, packed.principle_span[0]).endswith(b"addresses the question.")
    assert span_text(packed, 0, packed.critique_span[0]) == (
        b"- **Response 1** is accurate and clear.\n- **Response 2** has an arithmetic error."
    )


@pytest.mark.parametrize(
    ("text", "principles", "critique"),
    [
        ("### Specific Criteria\nA\n### Analysis\nB\n### Scores\n\\boxed{1}", b"A", b"B"),
        ("**Specific Criteria:**\nA\n**Analysis:** B\nScores: [[1]]", b"A", b"B"),
        ("SPECIFIC CRITERIA: A\nanalysis:\nB", b"A", b"B"),  # any case
        ("Analysis of the responses: B\nScores: \\boxed{1}", None, None),  # a sentence, not a header
        ("Specific Criteria:\n\nAnalysis:\n", b"", b""),  # present but empty
        ("Analysis: B is fine \\boxed{1} trailing", None, b"B is fine"),  # ends at the score group
        ("Specific Criteria: A\nSpecific Criteria: C\nAnalysis: B", b"A", b"B"),  # the first header counts
        ("Analysis: B\nSpecific Criteria: A", b"A", b"B"),  # order is free
        ("no headers at all \\boxed{1}", None, None),
        ("Specific Criteria: A\r\nAnalysis: B\r\n", b"A", b"B"),
        ("> - Analysis : B", None, b"B"),
    ],
)
def test_section_rules(text, principles, critique):
    packed = both([text], 1)
    assert span_text(packed, 0, packed.principle_span[0]) == principles
    assert span_text(packed, 0, packed.critique_span[0]) == critique


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (GRM_SAMPLE, [("Factual accuracy", 0.4), ("Clarity", 0.3), ("Helpfulness", None)]),
        ("Specific Criteria:\n- Accuracy (30%)\n- Style (Weight = 2)\n* Tone: 25 %", [("Accuracy", 0.3),
                                                                                   ("Style", 2.0), ("Tone", None)]),
        ("Specific Criteria:\n1) **Safety (Weight: 12.5%)**: no harm", [("Safety", 0.125)]),
        ("Specific Criteria:\nAccuracy weight: 50%\n\nCompleteness (weight 50 %)", [("Accuracy weight", 0.5),
                                                                                  ("Completeness", 0.5)]),
        ("Specific Criteria:\n  - indented first (10%)\n- shallower (20%)\n    - deeper (5%)",
         [("indented first", 0.1), ("shallower", 0.2)]),
        ("Specific Criteria:\n-no space after the dash\n1.5 is not a marker", [("-no space after the dash", None),
                                                                              ("1.5 is not a marker", None)]),
        ("Specific Criteria:\n- \u00c9l\u00e9gance (Weight: 5%)", [("\u00c9l\u00e9gance", 0.05)]),
        ("no principles", []),
    ],
)
def test_principle_items(body, expected):
    both([body], 2)
    assert spct.extract_scores([body], num_responses=2).principles[0] == expected


def test_invalid_utf8_is_data_not_a_crash():
    raw = [b"\xff\xfe Specific Criteria: \xc3(Weight: 5%)\n\\boxed{\xe2\x82, 4}", b"\x80\\boxed{3}\xc0", b"\xed\xa0\x80"]
    packed = both(raw, 1)
    assert packed.valid.tolist() == [False, True, False]
    ex = spct.extract_scores(raw, num_responses=1)
    assert ex.valid.tolist() == [False, True, False]
    assert "\ufffd" in ex.texts[0]
    lone_surrogate = "\ud800 \\boxed{2}"  # str that is no valid UTF-8
    assert spct.extract_scores([lone_surrogate], num_responses=1).scores.tolist() == [[2.0]]


@pytest.mark.parametrize("rows", [0, 1, 7, 989])
def test_awkward_row_counts(rows):
    texts = [GRM_SAMPLE.replace("8, 3", f"{1 + i % 10}, {1 + (i * 7) % 10}") for i in range(rows)]
    packed = both(texts, 2)
    assert packed.scores.shape == (rows, 2 if rows else 0)
    assert packed.valid.all()


def test_api_types_and_shapes():
    ex = spct.extract_scores(["\\boxed{7, 4}", "x"], num_responses=2, score_range=(1, 10))
    assert ex.scores.dtype == torch.float32 and ex.scores.shape == (2, 2)
    assert ex.valid.dtype == torch.bool and ex.valid.tolist() == [True, False]
    assert ex.principle_span.dtype == torch.int64 and ex.principle_span.shape == (2, 2)
    assert ex.critique_span.shape == (2, 2) and len(ex) == 2
    assert ex.texts == ["\\boxed{7, 4}", "x"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_responses": 0}, "num_responses must be >= 1, got 0 at row 0"),
        ({"num_responses": [2, -1]}, "got -1 at row 1"),
        ({"num_responses": [2]}, "1 entries for 2 rows"),
        ({"num_responses": 2, "score_range": (5, 1)}, "lo <= hi"),
        ({"num_responses": 2, "score_range": (1, math.inf)}, "finite"),
        ({"num_responses": 2, "score_range": "ab"}, "pair"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        spct.extract_scores(["a", "b"], **kwargs)


def test_backend_argument():
    texts = [GRM_SAMPLE, "\\boxed{7.5}", b"\xff[[1, 2]]"]
    native = spct.extract_scores(texts, num_responses=2, backend="native")
    assert_packed_equal(native._packed, spct.extract_scores(texts, num_responses=2, backend="reference")._packed)
    assert native.principles == spct.extract_scores(texts, num_responses=2, backend="reference").principles
    with pytest.raises(ValueError, match="backend must be one of .* got 'triton'"):
        spct.extract_scores(texts, num_responses=2, backend="triton")


def test_bad_texts():
    with pytest.raises(TypeError, match="texts\\[1\\] must be str or bytes, got int"):
        spct.extract_scores(["a", 3], num_responses=1)
    with pytest.raises(TypeError, match="single str"):
        spct.extract_scores("\\boxed{1}", num_responses=1)
    with pytest.raises(TypeError, match="exactly one"):
        spct.extract_scores(num_responses=1)


# ---- property tests: native == reference on random and mutated generations, never a crash ----

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FRAGMENTS = [
    "\\boxed{", "}", "[[", "]]", "[", "]", "{", ",", ", ", " ", "\n", "\r\n", "\t", "7", "10", "0", "3.5", "-",
    "+", ".", "e", "Specific Criteria", "specific criteria:", "Analysis", "Analysis:", "Scores:", "Final Scores",
    "###", "**", "*", "_", ">", ":", "(", ")", "%", "Weight", "weight: ", "1. ", "2) ", "- ", "* ", "  ",
    "Response 1", "\u00e9", "\u2581", "\ud7ff", "\x00", "\\", "=",
]
RAW_BYTES = [b"\xff", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\xf0\x9f\x98"]

fragment_text = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS).map(str.encode), st.sampled_from(RAW_BYTES)), max_size=60
).map(b"".join)
any_bytes = st.binary(max_size=300)


@st.composite
def mutated_sample(draw):
    data = bytearray(GRM_SAMPLE.encode())
    for _ in range(draw(st.integers(0, 8))):
        pos = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = draw(st.one_of(st.sampled_from(FRAGMENTS).map(str.encode), st.binary(min_size=1, max_size=3)))
        if op == "insert":
            data[pos:pos] = piece
        elif op == "delete":
            del data[pos : pos + len(piece)]
        else:
            data[pos : pos + len(piece)] = piece
    return bytes(data)


generation = st.one_of(fragment_text, any_bytes, mutated_sample())


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    texts=st.lists(generation, min_size=1, max_size=8),
    n=st.integers(1, 6),
    lo=st.sampled_from([0.0, 1.0, -5.0]),
    width=st.sampled_from([1.0, 9.0, 100.0]),
)
def test_native_equals_reference(texts, n, lo, width):
    both(texts, n, lo, lo + width)
