"""extract_scores: every grammar rule by hand on texts, native == reference exactly (texts and token ids, CPU and
CUDA), API shapes and errors, the torch op, real critiques."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from extract_helpers import (GRM_SAMPLE, TEXTS, assert_packed_equal, both, native_lib, pad, reference_text,
                             span_text)

import spct
from spct.ops.extract_scores import extract_from_tokens
from spct.ops.ref import extract_scores as ref

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


# ---- token ids: native == reference, errors, the CUDA kernel, the torch op, real data ----


@pytest.fixture(scope="module")
def smol_table(smollm2_tokenizer):
    return spct.TokenBytes.from_tokenizer(smollm2_tokenizer)


@settings(deadline=None)
@given(data=st.data())
def test_token_path_native_equals_reference(smol_table, data):
    native_lib()
    vocab = len(smol_table)
    rows = data.draw(st.integers(1, 6))
    cols = data.draw(st.integers(0, 40))
    ids = torch.tensor(
        data.draw(st.lists(st.lists(st.integers(0, vocab - 1), min_size=cols, max_size=cols), min_size=rows,
                           max_size=rows)),
        dtype=torch.int64,
    ).reshape(rows, cols)
    lengths = torch.tensor(data.draw(st.lists(st.integers(0, cols), min_size=rows, max_size=rows)))
    counts = np.asarray(data.draw(st.lists(st.integers(1, 6), min_size=rows, max_size=rows)), dtype=np.int64)
    got = extract_from_tokens(ids, lengths, smol_table, counts, 1.0, 10.0)
    texts = ref.detokenize(ids.numpy(), lengths.numpy(), smol_table, smol_table.strip_leading_space)
    assert_packed_equal(got, reference_text(texts, counts))


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_backend_argument_on_tokens(smollm2_tokenizer, smol_table, dtype):
    ids, lengths = pad([smollm2_tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS], 0, dtype)
    got = {b: spct.extract_scores(token_ids=ids, lengths=lengths, vocab=smol_table, num_responses=2, backend=b)
           for b in ("auto", "native", "reference")}
    assert_packed_equal(got["native"]._packed, got["reference"]._packed)
    assert_packed_equal(got["auto"]._packed, got["reference"]._packed)


@pytest.mark.parametrize("bad_id", [49152, 10**9, -1])
def test_token_id_outside_vocab(smol_table, bad_id):
    ids = torch.zeros((3, 5), dtype=torch.int64)
    ids[2, 3] = bad_id
    with pytest.raises(ValueError, match=rf"token id {bad_id} at row 2, position 3 is outside the vocabulary"):
        spct.extract_scores(token_ids=ids, vocab=smol_table, num_responses=1)
    # beyond lengths, anything goes (padding)
    spct.extract_scores(token_ids=ids, lengths=[5, 5, 3], vocab=smol_table, num_responses=1)


@pytest.mark.parametrize(("lengths", "match"), [([2, 6], r"lengths\[1\] = 6 is outside \[0, T = 5\]"),
                                                ([-1, 2], r"lengths\[0\] = -1"), ([1], "1 entries for 2 rows")])
def test_bad_lengths(smol_table, lengths, match):
    with pytest.raises(ValueError, match=match):
        spct.extract_scores(token_ids=torch.zeros((2, 5), dtype=torch.int64), lengths=lengths, vocab=smol_table,
                            num_responses=1)


def test_bad_token_arguments(smol_table):
    with pytest.raises(ValueError, match="2-D int32/int64"):
        spct.extract_scores(token_ids=torch.zeros(5, dtype=torch.int64), vocab=smol_table, num_responses=1)
    with pytest.raises(ValueError, match="2-D int32/int64"):
        spct.extract_scores(token_ids=torch.zeros((1, 5)), vocab=smol_table, num_responses=1)
    with pytest.raises(TypeError, match="TokenBytes.from_tokenizer"):
        spct.extract_scores(token_ids=torch.zeros((1, 5), dtype=torch.int64), num_responses=1)
    with pytest.raises(ValueError, match="num_responses must be >= 1, got 0"):
        spct.extract_scores(token_ids=torch.zeros((1, 5), dtype=torch.int64), vocab=smol_table, num_responses=0)


def test_device_slow_rows_are_redone_on_the_host():
    # The CUDA kernel parses numbers with over 15 significant digits as NaN and flags the row; the launcher's
    # host re-parse must then restore exactly what the C++ kernel gives. Exercised here on CPU tensors.
    from spct.ops.extract_scores import _reparse_slow_rows

    texts = [GRM_SAMPLE, "Specific Criteria:\n- A (Weight: 33.33333333333333333%)\n\\boxed{7.0000000000000000001, 2}",
             "\\boxed{3, 4}", "\\boxed{1." + "1" * 30 + ", 5}"]
    counts = np.asarray([2, 2, 2, 2])
    want = reference_text(texts, counts)
    device_like = ref.Packed(*(torch.from_numpy(np.array(a)) for a in want))
    device_like.scores[[1, 3]] = float("nan")
    device_like.valid[[1, 3]] = False
    device_like.item_weights[-1] = float("nan")
    slow = torch.tensor([0, 1, 0, 1], dtype=torch.int32)
    fixed = _reparse_slow_rows(device_like, slow, counts, 1.0, 10.0)
    assert_packed_equal(ref.Packed(*(a.numpy() for a in fixed)), want)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_cuda_equals_cpu(smollm2_tokenizer, smol_table, dtype):
    tok = smollm2_tokenizer
    texts = TEXTS + ["\\boxed{7.00000000000000000001, 3}", "Specific Criteria:\n- x (Weight: 1.0000000000000000001)"]
    rows = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    ids, lengths = pad(rows, 0, dtype)
    gen = torch.Generator().manual_seed(1)
    noise = torch.randint(0, len(smol_table), (64, 300), generator=gen, dtype=dtype)
    for host_ids, host_lens in [(ids, lengths), (noise, torch.randint(0, 301, (64,), generator=gen))]:
        counts = np.full(host_ids.shape[0], 2, dtype=np.int64)
        want = extract_from_tokens(host_ids, host_lens, smol_table, counts, 1.0, 10.0)
        got = extract_from_tokens(host_ids.cuda(), host_lens, smol_table, counts, 1.0, 10.0)
        assert_packed_equal(ref.Packed(*(a.cpu().numpy() for a in got)), want)
    bad = ids.clone().cuda()
    bad[1, 2] = len(smol_table)
    with pytest.raises(ValueError, match=f"token id {len(smol_table)} at row 1, position 2"):
        extract_from_tokens(bad, lengths, smol_table, np.full(len(rows), 2), 1.0, 10.0)


def test_registered_op_passes_opcheck(smollm2_tokenizer, smol_table):
    # spct::extract_scores_tokens is a torch custom op with a fake (meta) implementation for torch.compile.
    ids, lengths = pad([smollm2_tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS], 0)
    args = (ids, lengths, *smol_table.on("cpu"), smol_table.strip_leading_space, torch.full((len(TEXTS),), 2), 1.0, 10.0,
            "auto")
    torch.library.opcheck(torch.ops.spct.extract_scores_tokens.default, args,
                          test_utils=("test_schema", "test_faketensor"))


def test_autoj_critiques_real_data(shared_data, smollm2_tokenizer, smol_table):
    # 960 real Auto-J critiques ending in "Rating: [[x]]": every one parses to its recorded score, from text and
    # from SmolLM2 token ids alike, and the native kernel agrees with the reference row by row.
    import json

    rows = [json.loads(line) for line in (shared_data / "autoj" / "single_traindata.jsonl").open(encoding="utf-8")]
    texts = [r["target_output"] for r in rows]
    assert_packed_equal(spct.extract_scores(texts, num_responses=1)._packed, reference_text(texts, 1))
    ids, lengths = pad([smollm2_tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts], 0)
    ex = spct.extract_scores(token_ids=ids, lengths=lengths, vocab=smol_table, num_responses=1)
    assert ex.texts == texts
    assert ex.valid.all()
    assert ex.scores[:, 0].tolist() == [r["pred_score"] for r in rows]
